package server

import (
	"errors"
	"fmt"
)

var (
	// ErrNodeOffline: the node holds no tunnel to this proxy. Another proxy
	// may hold one.
	ErrNodeOffline = errors.New("node is offline")
	// ErrDialRefused: the node's agent refused the dial; the DialError says
	// why.
	ErrDialRefused = errors.New("the node refused the connection")
	// ErrShuttingDown: the proxy no longer accepts dials or tunnels.
	ErrShuttingDown = errors.New("proxy is shutting down")
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("tunnel server closed")
)

// DialError is the error of every failed Dial.
type DialError struct {
	// Node is the node that was dialed.
	Node string
	// Retryable says whether trying again (here a little later, or through
	// another proxy) can help: true when the tunnel broke, timed out or the
	// proxy is shutting down; false when the node is not connected here, the
	// node refused, or the caller canceled.
	Retryable bool
	// Err is the cause: ErrNodeOffline, ErrDialRefused, ErrShuttingDown,
	// a context error or a transport error, possibly wrapped.
	Err error
}

func (e *DialError) Error() string {
	if errors.Is(e.Err, ErrNodeOffline) {
		return fmt.Sprintf("node %s is offline: it has no tunnel to this proxy", e.Node)
	}
	return fmt.Sprintf("dial node %s: %v", e.Node, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }
