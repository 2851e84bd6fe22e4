package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// Transport names, as NodeInfo.Transport, TunnelStatus.Transport and the
// transport label of metrics show them.
const (
	QUIC = "quic"
	TCP  = "tcp"
)

// Conn is one tunnel connection between an agent and a proxy.
//
// It is larger than the one or two methods the style guide asks of an
// interface because it stands for a whole transport: tunnel/server and
// tunnel/agent run the tunnel protocol over it once instead of once per
// transport. It is not a seam for fakes; tests use both real transports on
// loopback.
type Conn interface {
	// Transport is QUIC or TCP.
	Transport() string
	// OpenStream opens a bidirectional stream. The peer learns of it when
	// the first bytes (or a FIN) arrive.
	OpenStream(ctx context.Context) (Stream, error)
	// AcceptStream waits for the next stream the peer opens. Once the
	// connection has ended it returns Err.
	AcceptStream(ctx context.Context) (Stream, error)
	// Close ends the connection with code (proto.Close*) and a reason the
	// peer sees as a *CloseError. It returns without waiting for the peer;
	// Done is closed once the connection is gone. Later calls do nothing.
	Close(code uint64, reason string)
	// Done is closed when the connection has ended, whichever side ended it.
	Done() <-chan struct{}
	// Err says why the connection ended; nil while it is up.
	Err() error
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// TLS is the connection's TLS state: the peer's certificates, ALPN.
	TLS() tls.ConnectionState
}

// Stream is one bidirectional stream of a Conn. Read and Write may be
// called from different goroutines; the deadlines are those of net.Conn.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite sends a FIN: the peer reads EOF after the data written so
	// far, and this side can still read (TCP's shutdown(SHUT_WR)).
	CloseWrite() error
	// CloseRead stops receiving: QUIC sends STOP_SENDING; over TCP what
	// still arrives is discarded. Pending and later Reads fail.
	CloseRead()
	// Close is CloseRead and CloseWrite: data already written is still
	// delivered, data still arriving is discarded.
	Close() error
	// Abort drops the stream in both directions with code (proto.Stream*):
	// QUIC resets it; over TCP it is Close (yamux cannot reset a stream).
	Abort(code uint64)
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// CloseError says that a side closed the connection with a code and a
// reason (CONNECTION_CLOSE over QUIC, a proto.Close over TCP).
type CloseError struct {
	// Remote: the peer closed the connection; else this side did.
	Remote bool
	Code   uint64
	Reason string
}

func (e *CloseError) Error() string {
	who := "closed by this side"
	if e.Remote {
		who = "closed by the peer"
	}
	if e.Reason == "" {
		return fmt.Sprintf("tunnel %s with code %d", who, e.Code)
	}
	return fmt.Sprintf("tunnel %s: %s", who, e.Reason)
}

// AsClose finds a close with a code and a reason in err, from either
// transport: a *CloseError or a *quic.ApplicationError.
func AsClose(err error) (*CloseError, bool) {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce, true
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) {
		return &CloseError{Remote: ae.Remote, Code: uint64(ae.ErrorCode), Reason: ae.ErrorMessage}, true
	}
	return nil, false
}

// ErrIdleTimeout (wrapped) ends a connection whose peer stopped answering:
// nothing arrived for QUIC's idle timeout, or a yamux keepalive went
// unanswered.
var ErrIdleTimeout = errors.New("no answer from the peer within the idle timeout")

// IsIdleTimeout reports whether err says the peer stopped answering.
func IsIdleTimeout(err error) bool {
	var idle *quic.IdleTimeoutError
	return errors.As(err, &idle) || errors.Is(err, ErrIdleTimeout)
}

// Ended reports whether c has ended.
func Ended(c Conn) bool {
	select {
	case <-c.Done():
		return true
	default:
		return false
	}
}

// Tuning is what the agent's and the server's configs say about their
// connections, turned here into quic-go's and yamux's settings, so that both
// ends and both transports are tuned from one place.
type Tuning struct {
	HandshakeTimeout        time.Duration
	KeepAlivePeriod         time.Duration
	MaxIdleTimeout          time.Duration
	StreamReceiveWindow     uint64
	ConnectionReceiveWindow uint64
	// MaxIncomingStreams is how many streams the peer may have open at once
	// over QUIC; MuxAcceptBacklog the same bound's counterpart over yamux.
	MaxIncomingStreams int64
	MuxAcceptBacklog   int
}

// QUIC returns the quic-go configuration for t. Unidirectional streams are
// not used by the tunnel protocol, so none are allowed.
func (t Tuning) QUIC() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       t.HandshakeTimeout,
		MaxIdleTimeout:             t.MaxIdleTimeout,
		KeepAlivePeriod:            t.KeepAlivePeriod,
		MaxStreamReceiveWindow:     t.StreamReceiveWindow,
		MaxConnectionReceiveWindow: t.ConnectionReceiveWindow,
		MaxIncomingStreams:         t.MaxIncomingStreams,
		MaxIncomingUniStreams:      -1,
	}
}

// Mux returns the yamux configuration for t, logging to log.
func (t Tuning) Mux(log *slog.Logger) MuxConfig {
	return MuxConfig{
		StreamWindow:    uint32(min(t.StreamReceiveWindow, math.MaxUint32)),
		KeepAlivePeriod: t.KeepAlivePeriod,
		IdleTimeout:     t.MaxIdleTimeout,
		AcceptBacklog:   t.MuxAcceptBacklog,
		Logger:          log,
	}
}
