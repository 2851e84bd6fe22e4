package peer

import "errors"

// ErrClosed is returned by Serve after Shutdown or Close, and (wrapped in an
// *Error with CodeUnavailable) by Dial once Shutdown or Close has begun.
var ErrClosed = errors.New("mesh peer: closed")

// Codes of an *Error. A holder running a newer version may send a code not
// listed here; Dial reports it as CodeUnavailable, keeping the message.
const (
	// CodeOffline: the peer holds no tunnel to the node. The tunnel
	// directory was stale; another peer may hold one.
	CodeOffline = "offline"
	// CodeDenied: the holder refused the dial for this user or node.
	CodeDenied = "denied"
	// CodeUnavailable: the peer could not be reached or could not reach the
	// node: connection failed, timed out or was refused, the peer is
	// shutting down, or its handler failed.
	CodeUnavailable = "unavailable"
	// CodeBadRequest: the request was malformed (a bug in one of the two
	// proxies, not something a user can fix).
	CodeBadRequest = "bad_request"
	// CodeVersion: the peer does not speak the request's protocol version;
	// Error.PeerVersion is the highest version it does.
	CodeVersion = "version"
	// CodeLoop: the request has already passed through the proxy it was
	// sent to.
	CodeLoop = "loop"
)

// Error is a dial failure the peer reported (or a local one), with a code a
// caller can act on. Every error Dial returns has one in its chain:
// errors.As(err, &e) works.
type Error struct {
	Code    string // one of the Code constants
	Message string // what went wrong, in words for a user or an operator
	// PeerVersion is, with CodeVersion, the highest protocol version the
	// peer speaks, so that a newer proxy can retry with it during a rolling
	// upgrade. Zero otherwise.
	PeerVersion int

	err error // the local cause, if any (a timeout, a TLS error)
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "peer dial failed: " + e.Code
	}
	return e.Message
}

// Unwrap returns the local cause: context.DeadlineExceeded, a QUIC error,
// ErrClosed, or nil for codes the peer sent.
func (e *Error) Unwrap() error { return e.err }

// Retryable reports whether trying again can help: later, through another
// peer, or (CodeVersion) with PeerVersion. A denied, looping or malformed
// request fails the same way every time.
func (e *Error) Retryable() bool {
	switch e.Code {
	case CodeOffline, CodeUnavailable, CodeVersion:
		return true
	}
	return false
}

// knownCode reports whether c is one of the codes this version defines.
func knownCode(c string) bool {
	switch c {
	case CodeOffline, CodeDenied, CodeUnavailable, CodeBadRequest, CodeVersion, CodeLoop:
		return true
	}
	return false
}
