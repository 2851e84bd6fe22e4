package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// ALPN is the TLS application protocol of tunnel connections. Its suffix is
// the transport generation: a change that old peers cannot parse at all gets
// a new ALPN; everything else is negotiated with the message versions.
const ALPN = "jumpgate-tunnel/1"

// Versions this implementation speaks: MinVersion through Version.
const (
	Version    = 2
	MinVersion = 1
)

// Frame layout: HeaderLen bytes of header (type, length), then the body.
const (
	HeaderLen  = 5
	MaxBodyLen = 64 << 10
)

// Type is the first byte of a frame.
type Type byte

// Message types. Zero is never valid.
const (
	TypeHello        Type = 1 // agent → proxy, first stream only
	TypeHelloAck     Type = 2 // proxy → agent, answer to Hello
	TypeDialRequest  Type = 3 // proxy → agent, first frame of every later stream
	TypeDialResponse Type = 4 // agent → proxy, answer to DialRequest
	TypeClose        Type = 5 // either side, TCP transport only: why it closes the connection
	TypeDrain        Type = 6 // proxy → agent, version 2: first frame of a stream saying the proxy drains
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeHelloAck:
		return "HelloAck"
	case TypeDialRequest:
		return "DialRequest"
	case TypeDialResponse:
		return "DialResponse"
	case TypeClose:
		return "Close"
	case TypeDrain:
		return "Drain"
	}
	return fmt.Sprintf("type %d", byte(t))
}

// Application error codes used to close tunnel connections, with a
// human-readable reason next to them: QUIC's CONNECTION_CLOSE, or a Close
// message on the TCP transport's control stream.
const (
	CloseNormal   uint64 = 0 // orderly close
	CloseRefused  uint64 = 1 // the proxy refused the tunnel; the reason says why
	CloseReplaced uint64 = 2 // a newer tunnel from the same node took over
	CloseShutdown uint64 = 3 // the closing side is shutting down
	CloseProtocol uint64 = 4 // the peer broke the protocol
)

// Stream error codes: QUIC's STOP_SENDING and RESET_STREAM. The TCP
// transport cannot reset a single stream (see "Transports" in the package
// comment); there an abort is a FIN whose data the aborting side discards.
const (
	StreamClosed   uint64 = 0 // the conn was closed while data was still flowing
	StreamCanceled uint64 = 1 // the dial was canceled or timed out
	StreamRefused  uint64 = 2 // the stream was refused (unexpected stream, bad request)
)

// Errors from this package; they are wrapped with the details.
var (
	ErrFrameTooLarge      = errors.New("frame too large")
	ErrUnknownType        = errors.New("unknown message type")
	ErrUnsupportedVersion = errors.New("unsupported tunnel protocol version")
	ErrMalformed          = errors.New("malformed message")
)

// Message is one of Hello, HelloAck, DialRequest, DialResponse, Close and
// Drain.
type Message interface {
	Type() Type
	validate() error
}

// Hello opens a tunnel. The agent sends it on the first stream it opens.
type Hello struct {
	// Version is the highest protocol version the agent speaks.
	Version int `json:"version"`
	// NodeID must equal the name in the agent's certificate.
	NodeID string `json:"node_id"`
	// Labels are the node's labels, for label queries and the mesh page.
	Labels map[string]string `json:"labels,omitempty"`
	// AgentVersion is the agent's software version, for logs.
	AgentVersion string `json:"agent_version,omitempty"`
	// InstanceID is random per agent process. Slot names which of the
	// agent's tunnels this is: the proxy address it dialed, prefixed with
	// "tcp:" over the TCP transport, so that a tunnel moving between
	// transports is not mistaken for a reconnect of the old one. A proxy
	// replaces an older tunnel of the same node when it comes from another
	// instance (the agent restarted) or from the same instance and slot (the
	// agent reconnected); it keeps both when one agent reaches the same
	// proxy through two addresses, so they do not knock each other out.
	InstanceID string `json:"instance_id,omitempty"`
	Slot       string `json:"slot,omitempty"`
	// DiagAddr (optional) is where the node serves /metrics, for `jgctl
	// targets`; a wildcard host stands for the address the proxy sees.
	DiagAddr string `json:"diag_addr,omitempty"`
}

// HelloAck answers a Hello.
type HelloAck struct {
	// Version is the version chosen for this tunnel.
	Version int `json:"version"`
	// ProxyID names the proxy, for the agent's status and logs.
	ProxyID  string `json:"proxy_id"`
	Accepted bool   `json:"accepted"`
	// Error says why the tunnel was refused, in words for an operator.
	Error string `json:"error,omitempty"`
}

// DialRequest is the first frame on every stream the proxy opens.
type DialRequest struct {
	Version int `json:"version"`
	// ClientAddr is the user's address as the proxy saw it ("ip:port").
	ClientAddr string `json:"client_addr,omitempty"`
	// User is the Jumpgate user on whose behalf the proxy dials.
	User string `json:"user,omitempty"`
	// SessionID and RequestID tie the dial to audit events and logs.
	SessionID string `json:"session_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	// MFACert (optional) is the user's per-session MFA certificate
	// (authorized_keys line), for the node's SSH server; agents that do
	// not know it ignore it.
	MFACert string `json:"mfa_cert,omitempty"`
}

// DialResponse answers a DialRequest. After OK the stream carries raw bytes.
type DialResponse struct {
	Version int    `json:"version"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
}

// Close says why a side closes a tunnel connection on the TCP transport,
// which has nothing like QUIC's CONNECTION_CLOSE: the closing side sends it
// on the connection's control stream (see "Transports" in the package
// comment), then closes. Code is one of the Close* codes.
type Close struct {
	// Version is the sender's highest version: a Close may be sent before
	// a version was chosen (a refused Hello), so any version from
	// MinVersion up is accepted and the fields never change meaning.
	Version int    `json:"version"`
	Code    uint64 `json:"code"`
	Reason  string `json:"reason,omitempty"`
}

// Drain tells an agent that the proxy is draining (version 2 and later):
// it is leaving the mesh, so the agent should open a tunnel to another
// proxy now and close this one once that is up. The proxy sends it as the
// first and only frame of a stream it opens, then closes the stream; the
// agent answers nothing.
type Drain struct {
	Version int `json:"version"`
	// Reason says why, for the agent's log ("upgrade", "jgctl proxy drain").
	Reason string `json:"reason,omitempty"`
	// Deadline is when the proxy will close its remaining tunnels (RFC 3339).
	Deadline time.Time `json:"deadline,omitzero"`
}

// Type implements Message.
func (Drain) Type() Type { return TypeDrain }

// Type implements Message.
func (Hello) Type() Type { return TypeHello }

// Type implements Message.
func (HelloAck) Type() Type { return TypeHelloAck }

// Type implements Message.
func (DialRequest) Type() Type { return TypeDialRequest }

// Type implements Message.
func (DialResponse) Type() Type { return TypeDialResponse }

// Type implements Message.
func (Close) Type() Type { return TypeClose }

func (m Hello) validate() error {
	// The agent may speak a newer version than we do: Negotiate decides.
	if m.Version < MinVersion {
		return versionError(TypeHello, m.Version)
	}
	if m.NodeID == "" {
		return fmt.Errorf("%w: Hello without node_id", ErrMalformed)
	}
	return nil
}

func (m HelloAck) validate() error { return checkVersion(TypeHelloAck, m.Version) }

func (m DialRequest) validate() error { return checkVersion(TypeDialRequest, m.Version) }

func (m DialResponse) validate() error { return checkVersion(TypeDialResponse, m.Version) }

func (m Drain) validate() error {
	if err := checkVersion(TypeDrain, m.Version); err != nil {
		return err
	}
	if m.Version < 2 {
		return fmt.Errorf("%w: Drain needs version 2, the tunnel speaks %d", ErrMalformed, m.Version)
	}
	return nil
}

func (m Close) validate() error {
	if m.Version < MinVersion {
		return versionError(TypeClose, m.Version)
	}
	return nil
}

// Err returns nil when the tunnel was accepted, else an error with the
// proxy's reason.
func (m HelloAck) Err() error {
	if m.Accepted {
		return nil
	}
	if m.Error == "" {
		return errors.New("refused without a reason")
	}
	return errors.New(m.Error)
}

// Err returns nil when the dial was accepted, else an error with the agent's
// reason.
func (m DialResponse) Err() error {
	if m.OK {
		return nil
	}
	if m.Error == "" {
		return errors.New("refused without a reason")
	}
	return errors.New(m.Error)
}

func checkVersion(t Type, v int) error {
	if v < MinVersion || v > Version {
		return versionError(t, v)
	}
	return nil
}

func versionError(t Type, v int) error {
	if v == 0 {
		return fmt.Errorf("%w: %s without a version", ErrMalformed, t)
	}
	return fmt.Errorf("%w: %s has version %d, this side speaks %d through %d", ErrUnsupportedVersion, t, v, MinVersion, Version)
}

// Negotiate picks the version for a tunnel whose agent speaks up to peer.
func Negotiate(peer int) (int, error) {
	if peer < MinVersion {
		return 0, fmt.Errorf("%w: the agent speaks up to version %d, this proxy needs at least %d: upgrade the agent", ErrUnsupportedVersion, peer, MinVersion)
	}
	return min(peer, Version), nil
}

// AppendFrame appends a frame of type t carrying body to dst.
func AppendFrame(dst []byte, t Type, body []byte) ([]byte, error) {
	if len(body) > MaxBodyLen {
		return dst, fmt.Errorf("%w: %s body is %d bytes, a frame carries at most %d", ErrFrameTooLarge, t, len(body), MaxBodyLen)
	}
	dst = append(dst, byte(t))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...), nil
}

// WriteFrame writes one frame with a single Write, so that a frame is not
// split across transport packets more than it must be.
func WriteFrame(w io.Writer, t Type, body []byte) error {
	b, err := AppendFrame(make([]byte, 0, HeaderLen+len(body)), t, body)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

// ReadFrame reads exactly one frame and nothing more. It returns io.EOF if r
// ends cleanly before the frame, io.ErrUnexpectedEOF (wrapped) if it ends
// inside one, and ErrFrameTooLarge before allocating anything for a length
// above MaxBodyLen. It does not check the type: Decode does.
func ReadFrame(r io.Reader) (Type, []byte, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("read frame header: %w", err)
	}
	t := Type(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxBodyLen {
		return t, nil, fmt.Errorf("%w: %s frame announces %d bytes, a frame carries at most %d", ErrFrameTooLarge, t, n, MaxBodyLen)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, fmt.Errorf("read %s frame body (%d bytes): %w", t, n, err)
	}
	return t, body, nil
}

// Encode returns m as a complete frame.
func Encode(m Message) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.Type(), err)
	}
	return AppendFrame(make([]byte, 0, HeaderLen+len(body)), m.Type(), body)
}

// Decode parses the body of a frame of type t and checks its version and
// required fields. The concrete type is Hello, HelloAck, DialRequest,
// DialResponse or Close (values, not pointers).
func Decode(t Type, body []byte) (Message, error) {
	var (
		m   Message
		err error
	)
	switch t {
	case TypeHello:
		m, err = unmarshal[Hello](body)
	case TypeHelloAck:
		m, err = unmarshal[HelloAck](body)
	case TypeDialRequest:
		m, err = unmarshal[DialRequest](body)
	case TypeDialResponse:
		m, err = unmarshal[DialResponse](body)
	case TypeClose:
		m, err = unmarshal[Close](body)
	case TypeDrain:
		m, err = unmarshal[Drain](body)
	default:
		return nil, fmt.Errorf("%w %d: this side speaks tunnel protocol %d through %d (is the peer newer?)", ErrUnknownType, byte(t), MinVersion, Version)
	}
	if err != nil {
		return nil, err
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func unmarshal[M Message](body []byte) (Message, error) {
	var m M
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, m.Type(), err)
	}
	return m, nil
}

// WriteMessage encodes m and writes it as one frame.
func WriteMessage(w io.Writer, m Message) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", m.Type(), err)
	}
	return nil
}

// ReadMessage reads and decodes one frame.
func ReadMessage(r io.Reader) (Message, error) {
	t, body, err := ReadFrame(r)
	if err != nil {
		return nil, err
	}
	return Decode(t, body)
}

// Expect reads one message and requires it to be an M.
func Expect[M Message](r io.Reader) (M, error) {
	var want M
	m, err := ReadMessage(r)
	if err != nil {
		return want, fmt.Errorf("read %s: %w", want.Type(), err)
	}
	got, ok := m.(M)
	if !ok {
		return want, fmt.Errorf("%w: expected %s, got %s", ErrMalformed, want.Type(), m.Type())
	}
	return got, nil
}
