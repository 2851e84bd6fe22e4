package resume

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrUnsupported means the node answered like a plain SSH server: it
	// does not speak resume (an older node). The caller dials again and
	// speaks plain SSH.
	ErrUnsupported = errors.New("the node does not support resumable connections")
	// ErrRefused means the node refused to resume the session: it is
	// unknown or expired, the proof did not match the session key, or the
	// session belongs to another user. It is final; retrying cannot help.
	ErrRefused = errors.New("the node refused to resume the session")
	// ErrGaveUp means no transport could be re-established within the
	// window (on the node: the client did not come back within it).
	ErrGaveUp = errors.New("could not resume the session in time")
)

// refusedError is the node's refusal, in its own words.
type refusedError struct {
	reason string
}

func (e *refusedError) Error() string {
	if e.reason == "" {
		return ErrRefused.Error()
	}
	return e.reason
}

func (e *refusedError) Unwrap() error { return ErrRefused }

// lostError is what Read and Write return on the client once the session
// cannot continue: it says so in words and wraps both the sentinel
// (ErrGaveUp, ErrRefused) and the cause.
type lostError struct {
	msg  string
	kind error // ErrGaveUp or ErrRefused
	last error
}

func (e *lostError) Error() string { return e.msg }

func (e *lostError) Unwrap() []error { return []error{e.kind, e.last} }

func gaveUpError(window time.Duration, last error) error {
	return &lostError{
		msg:  fmt.Sprintf("lost the connection to the node and could not resume within %v: %v (check the network, then reconnect)", window, last),
		kind: ErrGaveUp,
		last: last,
	}
}

func refusedLostError(err error) error {
	return &lostError{
		msg:  fmt.Sprintf("lost the connection to the node and could not resume: %v (reconnect to start a new session)", err),
		kind: ErrRefused,
		last: err,
	}
}

// expiredError is what a ServerConn's Read and Write return when its client
// did not come back within the window.
func expiredError(window time.Duration, last error) error {
	return &lostError{
		msg:  fmt.Sprintf("the client did not resume the session within %v after its transport broke (%v)", window, last),
		kind: ErrGaveUp,
		last: last,
	}
}

// peerError is an ERROR frame received in the data phase.
type peerError struct {
	peer   string
	code   byte
	reason string
}

func (e *peerError) Error() string {
	return fmt.Sprintf("%s ended the session: %s", e.peer, e.reason)
}
