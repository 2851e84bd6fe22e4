// Package audit defines Jumpgate's audit events and a JSON-lines writer for
// them.
//
// Audit events are a typed stream, separate from logs: one JSON object per
// line, written by the auth server (logins, certificates, user, role and
// token changes), the proxy (dials and denials) and the node (sessions,
// exec commands, SFTP, port forwards, denials). They are not replicated
// through raft: each process appends to its own local file, which is shipped
// elsewhere by file tailing (fluent-bit, vector).
//
// The schema is stable: new fields may be added, none are renamed or
// removed. Every event has time, type and server; the rest is set when it
// applies. Schema (schema.json) describes one line as a JSON Schema, Types
// lists every event type, and docs/audit.md is the operators' reference.
// RotatingFile keeps a file within a size.
//
// This package does only local file I/O, so every package, including the
// network-facing ones, may import it.
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Event types.
const (
	Login          = "user.login"
	LoginFailed    = "user.login.failed"
	CertIssued     = "cert.issued"
	NodeJoined     = "node.joined"
	JoinFailed     = "node.join.failed"
	UserCreated    = "user.created"
	UserDeleted    = "user.deleted"
	RoleUpserted   = "role.upserted"
	RoleDeleted    = "role.deleted"
	TokenCreated   = "token.created"
	TokenDeleted   = "token.deleted"
	DialOK         = "proxy.dial"
	DialDenied     = "proxy.dial.denied"
	DialFailed     = "proxy.dial.failed"
	SessionStart   = "session.start"
	SessionEnd     = "session.end"
	Exec           = "session.exec"
	SFTP           = "session.sftp"
	PortForward    = "session.port_forward"
	SessionDenied  = "session.denied"
	AuthFailed     = "session.auth.failed"
	CertAuthorityX = "ca.changed"
	MeshKeyChanged = "mesh.key.changed"
	BackupTaken    = "backup.taken"
)

// Event is one audit record.
type Event struct {
	Time       time.Time `json:"time"`
	Type       string    `json:"type"`
	Server     string    `json:"server"`                // the process that wrote it: "auth/auth1", "proxy/p1", "node/n1"
	Cluster    string    `json:"cluster,omitempty"`     // cluster name
	User       string    `json:"user,omitempty"`        // Jumpgate user
	Login      string    `json:"login,omitempty"`       // OS login on the node
	Node       string    `json:"node,omitempty"`        // node id
	Session    string    `json:"session,omitempty"`     // session id
	RemoteAddr string    `json:"remote_addr,omitempty"` // client address as seen by the writer
	Command    string    `json:"command,omitempty"`     // exec command, SFTP operation, forward target
	Subject    string    `json:"subject,omitempty"`     // the object acted on: a user, role or token name
	Roles      []string  `json:"roles,omitempty"`
	Code       int       `json:"exit_code,omitempty"`
	BytesIn    int64     `json:"bytes_in,omitempty"`
	BytesOut   int64     `json:"bytes_out,omitempty"`
	Error      string    `json:"error,omitempty"`      // why it was denied or failed
	Request    string    `json:"request_id,omitempty"` // access request id
	Reason     string    `json:"reason,omitempty"`     // why: an access request's reason, a review's comment
	Path       string    `json:"path,omitempty"`       // SFTP: the file or directory
	Path2      string    `json:"path2,omitempty"`      // SFTP: the second path as the client sent it: a rename's new name, a link's second argument (see SFTPOp)
	MFA        bool      `json:"mfa,omitempty"`        // the session or certificate was verified with a second factor
	Expires    time.Time `json:"expires,omitzero"`     // a certificate's or an access grant's end
	Proxy      string    `json:"proxy,omitempty"`      // the proxy a request came through
}

// Sink receives audit events. Implementations must not block for long and
// must be safe for concurrent use.
type Sink interface {
	Emit(Event)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Event)

// Emit calls f(e).
func (f SinkFunc) Emit(e Event) { f(e) }

// Discard drops every event.
var Discard Sink = SinkFunc(func(Event) {})

// Writer writes events as JSON lines to w. Failures are logged, never
// returned: an audit write must not break a session, but it must not be
// silent either.
type Writer struct {
	server string
	log    *slog.Logger
	now    func() time.Time

	mu sync.Mutex // guards following
	w  io.Writer
}

var _ Sink = (*Writer)(nil)

// NewWriter returns a Writer that stamps events with server and the time.
func NewWriter(w io.Writer, server string, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Writer{w: w, server: server, log: log, now: time.Now}
}

// OpenFile opens (appending) or creates an audit file with mode 0600.
func OpenFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return f, nil
}

// Emit writes e as one line.
func (a *Writer) Emit(e Event) {
	if e.Time.IsZero() {
		e.Time = a.now().UTC()
	}
	if e.Server == "" {
		e.Server = a.server
	}
	b, err := json.Marshal(e)
	if err != nil {
		a.log.Error("audit: encode event", "type", e.Type, "err", err)
		return
	}
	b = append(b, '\n')
	a.mu.Lock()
	_, err = a.w.Write(b)
	a.mu.Unlock()
	if err != nil {
		a.log.Error("audit: write event", "type", e.Type, "err", err)
	}
}
