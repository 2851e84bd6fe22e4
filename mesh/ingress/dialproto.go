// Package ingress is the proxy's client-facing listener: one TCP port,
// TLS 1.3, routed by ALPN.
//
//   - ALPN "jumpgate-dial/1": an SSH dial for jg and `jg proxy ssh`
//     (OpenSSH's ProxyCommand). The client must present its Jumpgate user
//     certificate.
//   - ALPN "http/1.1" (or none): the HTTPS API: login and join (forwarded to
//     the auth server), node listing for users, and the watch stream that
//     feeds nodes' caches, served from this proxy's own cache.
//   - Any ALPN in Config.Protocols: handed to its handler after the TLS
//     handshake. cmd/ routes the tunnel protocol ("jumpgate-tunnel/1") to
//     the tunnel server this way, for agents whose network blocks UDP.
//
// # Dial protocol (ALPN jumpgate-dial/1)
//
//	client → proxy   one line of JSON: {"v":2,"node":"node1","login":"alice","resume":true}\n
//	proxy  → client  one line of JSON: {"v":1,"ok":true,"node":"node1","path":"local"}\n
//	                 (path "peer proxy-3" when another proxy holds the tunnel)
//	                 or {"v":1,"code":"denied","error":"access denied: ..."}\n
//	                 or, from a draining proxy, {"v":2,"code":"draining","error":"...",
//	                     "redirect":"host:port","redirect_id":"proxy-2"}\n
//	then             raw bytes both ways: the client's SSH connection, end to
//	                 end with the node. The proxy never sees inside it.
//
// A line is at most MaxLineBytes. v is the protocol version; a server
// answers a request with a newer v with code "version". Codes: "denied"
// (roles), "unknown" (no such node), "offline" (no tunnel), "version",
// "bad_request", "unavailable" (the proxy is not ready), "unreachable" (a
// proxy holds the node's tunnel but none could be reached), "draining" (the
// proxy is leaving the mesh; dial the redirect), "error".
//
// Version 2 adds "resume" to the request (the client runs tunnel/resume's
// resumable stream under SSH, so a draining proxy may end the connection
// early: the client moves to another proxy and resumes) and "redirect" to a
// draining refusal. The proxy answers in the request's version.
package ingress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ALPN protocol names.
const (
	ALPNDial = "jumpgate-dial/1"
	ALPNHTTP = "http/1.1"
)

// Dial protocol versions this package speaks: MinDialVersion through
// DialVersion. A proxy answers in the version of the request, so an older
// jg never sees a field it does not know; a jg that gets code "version"
// from an older proxy asks again in version 1.
const (
	DialVersion    = 2
	MinDialVersion = 1
)

// MaxLineBytes bounds a dial request or response line (a request may carry
// a per-session MFA certificate).
const MaxLineBytes = 16 << 10

// DialRequest is the client's first line.
type DialRequest struct {
	V     int    `json:"v"`
	Node  string `json:"node"`
	Login string `json:"login,omitempty"`
	// Resume (version 2): the client runs the resumable stream
	// (tunnel/resume) under SSH, so a draining proxy may end the
	// connection early and the client moves to another proxy without
	// losing the session.
	Resume bool `json:"resume,omitempty"`
	// MFA (optional) is a per-session MFA certificate (authorized_keys
	// line) that jg proxy ssh got for this session: the proxy passes it
	// to the node with the dial, and the node accepts it, once, in place
	// of an MFA binding in the certificate OpenSSH presents. Proxies and
	// nodes that do not know the field ignore it.
	MFA string `json:"mfa,omitempty"`
}

type mfaKey struct{}

// WithMFACert returns ctx carrying a dial's per-session MFA certificate,
// for the NodeDialer to pass on.
func WithMFACert(ctx context.Context, cert string) context.Context {
	if cert == "" {
		return ctx
	}
	return context.WithValue(ctx, mfaKey{}, cert)
}

// MFACertFrom returns the per-session MFA certificate a dial carries, if any.
func MFACertFrom(ctx context.Context) string {
	s, _ := ctx.Value(mfaKey{}).(string)
	return s
}

// DialResponse is the proxy's answer.
type DialResponse struct {
	V     int    `json:"v"`
	OK    bool   `json:"ok,omitempty"`
	Node  string `json:"node,omitempty"`
	Path  string `json:"path,omitempty"` // "local": this proxy holds the tunnel
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
	// Redirect and RedirectID (version 2, with code "draining"): a
	// healthy proxy to dial instead.
	Redirect   string `json:"redirect,omitempty"`
	RedirectID string `json:"redirect_id,omitempty"`
}

// Dial error codes.
const (
	CodeDenied      = "denied"
	CodeUnknown     = "unknown"
	CodeOffline     = "offline"
	CodeVersion     = "version"
	CodeBadRequest  = "bad_request"
	CodeUnavailable = "unavailable"
	CodeUnreachable = "unreachable"
	CodeDraining    = "draining"
	CodeError       = "error"
)

// DialError is a refused dial as the client sees it.
type DialError struct {
	Code    string
	Message string
}

func (e *DialError) Error() string { return e.Message }

// WriteLine writes v as one JSON line.
func WriteLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b)+1 > MaxLineBytes {
		return fmt.Errorf("dial line is %d bytes, limit %d", len(b)+1, MaxLineBytes)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadLine reads one JSON line of at most MaxLineBytes into v. It reads
// byte-exact from r (through a bufio.Reader the caller keeps, so bytes after
// the line are not lost).
func ReadLine(r *bufio.Reader, v any) error {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxLineBytes {
			return fmt.Errorf("dial line longer than %d bytes", MaxLineBytes)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return io.EOF
		}
		return fmt.Errorf("read dial line: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed dial line: %w", err)
	}
	return nil
}

// ParseDialRequest validates a request read with ReadLine.
func ParseDialRequest(r *bufio.Reader) (DialRequest, *DialResponse) {
	var req DialRequest
	if err := ReadLine(r, &req); err != nil {
		return req, &DialResponse{V: DialVersion, Code: CodeBadRequest, Error: "not a Jumpgate dial request: " + err.Error()}
	}
	if req.V < MinDialVersion || req.V > DialVersion {
		return req, &DialResponse{V: MinDialVersion, Code: CodeVersion, Error: fmt.Sprintf("dial protocol version %d is not supported by this proxy (it speaks %d through %d): upgrade the proxy or use a matching jg", req.V, MinDialVersion, DialVersion)}
	}
	if req.V < 2 && req.Resume {
		return req, &DialResponse{V: req.V, Code: CodeBadRequest, Error: "resume needs dial protocol version 2"}
	}
	if req.Node == "" || len(req.Node) > 255 {
		return req, &DialResponse{V: req.V, Code: CodeBadRequest, Error: "dial request names no node"}
	}
	return req, nil
}
