package peer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"jumpgate.dev/jumpgate/auth/identity"
)

// ALPN is the TLS application protocol of peer connections. Its suffix is
// the transport generation: a change old proxies cannot parse at all gets a
// new ALPN; everything else is negotiated with DialRequest.Version.
const ALPN = "jumpgate-peer/1"

// Versions of the per-stream protocol this implementation speaks.
const (
	Version    = 1
	MinVersion = 1
)

// Frame layout and limits.
const (
	headerLen  = 5        // type (1 byte) + body length (uint32, big endian)
	maxBodyLen = 16 << 10 // a DialRequest is a few hundred bytes

	// MaxHops bounds DialRequest.Hops. Version 1 never forwards a dial
	// further than one peer, so two hops is the most a valid request
	// carries; the bound leaves room for a later version that forwards.
	MaxHops = 8
	// maxFieldLen bounds DialRequest.User and ClientAddr.
	maxFieldLen = 256
)

// frameType is the first byte of a frame. Zero is never valid.
type frameType byte

const (
	typeDialRequest  frameType = 1 // dialer → holder, first frame of every stream
	typeDialResponse frameType = 2 // holder → dialer, answer to the DialRequest
)

func (t frameType) String() string {
	switch t {
	case typeDialRequest:
		return "DialRequest"
	case typeDialResponse:
		return "DialResponse"
	}
	return fmt.Sprintf("frame type %d", byte(t))
}

// QUIC application error codes for CONNECTION_CLOSE, each sent with a
// reason in words.
const (
	closeNormal    = 0 // orderly close
	closeRefused   = 1 // the peer's certificate was refused; the reason says why
	closeShutdown  = 2 // the closing proxy is shutting down
	closeDuplicate = 3 // a second connection between the same two proxies
	closeProtocol  = 4 // the peer broke the protocol
)

// QUIC stream error codes (RESET_STREAM, STOP_SENDING).
const (
	streamClosed   = 0 // the conn was closed while data still flowed
	streamCanceled = 1 // the dial was canceled, timed out or failed midway
	streamRefused  = 2 // the dial was refused after its response
	streamTimeout  = 3 // no DialRequest within the request timeout
)

// Wire errors; decode errors wrap them with details.
var (
	errFrameTooLarge = errors.New("frame too large")
	errMalformed     = errors.New("malformed message")
	errNewerVersion  = errors.New("newer peer protocol version")
)

// DialRequest asks the peer to connect this stream to a node whose tunnel
// it holds. It is the first frame on every stream.
type DialRequest struct {
	// Version is the protocol version of the sender; Dial fills in
	// Version when it is zero.
	Version int `json:"version"`
	// Node is the node id.
	Node string `json:"node"`
	// User is the user name, for the holder's audit log.
	User string `json:"user,omitempty"`
	// ClientAddr is the user's address as the first proxy saw it.
	ClientAddr string `json:"client_addr,omitempty"`
	// MFACert is the user's per-session MFA certificate, if the client
	// sent one, for the node (see ingress.DialRequest.MFA).
	MFACert string `json:"mfa_cert,omitempty"`
	// Hops are the proxy ids the request has passed through, first =
	// origin. Dial appends this proxy's id. A proxy refuses a request that
	// already names it (CodeLoop); in version 1 the holder never forwards a
	// dial further.
	Hops []string `json:"hops,omitempty"`
}

// response answers a DialRequest. After OK the stream carries raw bytes.
type response struct {
	// Version is the version the holder used for the stream, or, with
	// CodeVersion, the highest version it speaks.
	Version int    `json:"version"`
	OK      bool   `json:"ok,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// appendFrame appends a frame of type t carrying body to dst.
func appendFrame(dst []byte, t frameType, body []byte) ([]byte, error) {
	if len(body) > maxBodyLen {
		return dst, fmt.Errorf("%w: %s body is %d bytes, a frame carries at most %d", errFrameTooLarge, t, len(body), maxBodyLen)
	}
	dst = append(dst, byte(t))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...), nil
}

// readFrame reads exactly one frame and nothing more: the stream carries raw
// bytes right after it. It returns io.EOF if r ends before the frame starts
// and checks the length before allocating anything.
func readFrame(r io.Reader) (frameType, []byte, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("read frame header: %w", err)
	}
	t := frameType(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxBodyLen {
		return t, nil, fmt.Errorf("%w: %s announces %d bytes, a frame carries at most %d", errFrameTooLarge, t, n, maxBodyLen)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, fmt.Errorf("read %s body (%d bytes): %w", t, n, err)
	}
	return t, body, nil
}

// encodeRequest returns req as a complete frame.
func encodeRequest(req DialRequest) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode DialRequest: %w", err)
	}
	return appendFrame(make([]byte, 0, headerLen+len(body)), typeDialRequest, body)
}

// encodeResponse returns resp as a complete frame.
func encodeResponse(resp response) ([]byte, error) {
	body, err := json.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("encode DialResponse: %w", err)
	}
	return appendFrame(make([]byte, 0, headerLen+len(body)), typeDialResponse, body)
}

// decodeRequest parses and checks the first frame of a stream. Its error
// says which code the answer carries: errNewerVersion (CodeVersion) or
// errMalformed (CodeBadRequest).
func decodeRequest(t frameType, body []byte) (DialRequest, error) {
	switch t {
	case typeDialRequest:
	case typeDialResponse, 0:
		return DialRequest{}, fmt.Errorf("%w: expected a DialRequest, got %s", errMalformed, t)
	default:
		// A type this side does not know comes from a newer peer.
		return DialRequest{}, fmt.Errorf("%w: unknown %s; this proxy speaks peer protocol %d through %d", errNewerVersion, t, MinVersion, Version)
	}
	var req DialRequest
	if err := json.Unmarshal(body, &req); err != nil {
		// A newer version may change the shape of the body; if its version
		// is readable, say that rather than "malformed".
		var v struct {
			Version int `json:"version"`
		}
		if json.Unmarshal(body, &v) == nil && v.Version > Version {
			return DialRequest{}, versionError(v.Version)
		}
		return DialRequest{}, fmt.Errorf("%w: DialRequest: %v", errMalformed, err)
	}
	if err := req.check(); err != nil {
		return DialRequest{}, err
	}
	return req, nil
}

func versionError(v int) error {
	return fmt.Errorf("%w: DialRequest has version %d, this proxy speaks peer protocol %d through %d", errNewerVersion, v, MinVersion, Version)
}

// check validates a request as the holder receives it: version first, so
// that a newer peer learns to fall back even if it changed other fields.
func (r DialRequest) check() error {
	switch {
	case r.Version > Version:
		return versionError(r.Version)
	case r.Version < MinVersion:
		return fmt.Errorf("%w: DialRequest has version %d, the lowest is %d", errMalformed, r.Version, MinVersion)
	case len(r.User) > maxFieldLen:
		return fmt.Errorf("%w: user name is %d bytes, at most %d", errMalformed, len(r.User), maxFieldLen)
	case len(r.ClientAddr) > maxFieldLen:
		return fmt.Errorf("%w: client address is %d bytes, at most %d", errMalformed, len(r.ClientAddr), maxFieldLen)
	case len(r.Hops) > MaxHops:
		return fmt.Errorf("%w: %d hops, at most %d", errMalformed, len(r.Hops), MaxHops)
	}
	if err := identity.CheckName(r.Node); err != nil {
		return fmt.Errorf("%w: node: %v", errMalformed, err)
	}
	for _, h := range r.Hops {
		if err := identity.CheckName(h); err != nil {
			return fmt.Errorf("%w: hop: %v", errMalformed, err)
		}
	}
	return nil
}

// decodeResponse parses the holder's answer.
func decodeResponse(t frameType, body []byte) (response, error) {
	if t != typeDialResponse {
		return response{}, fmt.Errorf("%w: expected a DialResponse, got %s", errMalformed, t)
	}
	var resp response
	if err := json.Unmarshal(body, &resp); err != nil {
		return response{}, fmt.Errorf("%w: DialResponse: %v", errMalformed, err)
	}
	switch {
	case resp.Version < MinVersion:
		return response{}, fmt.Errorf("%w: DialResponse has version %d", errMalformed, resp.Version)
	case resp.OK && resp.Code != "":
		return response{}, fmt.Errorf("%w: DialResponse is OK and has code %q", errMalformed, resp.Code)
	case !resp.OK && resp.Code == "":
		return response{}, fmt.Errorf("%w: DialResponse refuses without a code", errMalformed)
	case len(resp.Code) > 64:
		return response{}, fmt.Errorf("%w: DialResponse code of %d bytes", errMalformed, len(resp.Code))
	}
	return resp, nil
}

// hopsWith returns hops with id appended, unless it is already the last.
func hopsWith(hops []string, id string) []string {
	if len(hops) > 0 && hops[len(hops)-1] == id {
		return slices.Clone(hops)
	}
	return append(slices.Clone(hops), id)
}
