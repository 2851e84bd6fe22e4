package transport

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/tunnel/proto"
)

// quicConn is a Conn over a QUIC connection: a thin layer, since Conn is
// modelled on QUIC.
type quicConn struct{ qc *quic.Conn }

var _ Conn = quicConn{}

// NewQUIC returns qc as a Conn. Closing the Conn closes qc.
func NewQUIC(qc *quic.Conn) Conn { return quicConn{qc} }

func (quicConn) Transport() string { return QUIC }

func (c quicConn) OpenStream(ctx context.Context) (Stream, error) {
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{st}, nil
}

func (c quicConn) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := c.qc.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{st}, nil
}

func (c quicConn) Close(code uint64, reason string) {
	c.qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
}

func (c quicConn) Done() <-chan struct{} { return c.qc.Context().Done() }

func (c quicConn) Err() error {
	if c.qc.Context().Err() == nil {
		return nil
	}
	return context.Cause(c.qc.Context())
}

func (c quicConn) LocalAddr() net.Addr      { return c.qc.LocalAddr() }
func (c quicConn) RemoteAddr() net.Addr     { return c.qc.RemoteAddr() }
func (c quicConn) TLS() tls.ConnectionState { return c.qc.ConnectionState().TLS }

// quicStream is a Stream over a QUIC stream.
type quicStream struct{ st *quic.Stream }

var _ Stream = quicStream{}

func (s quicStream) Read(p []byte) (int, error)  { return s.st.Read(p) }
func (s quicStream) Write(p []byte) (int, error) { return s.st.Write(p) }
func (s quicStream) CloseWrite() error           { return s.st.Close() }
func (s quicStream) CloseRead()                  { s.st.CancelRead(quic.StreamErrorCode(proto.StreamClosed)) }

func (s quicStream) Close() error {
	s.st.CancelRead(quic.StreamErrorCode(proto.StreamClosed))
	return s.st.Close()
}

func (s quicStream) Abort(code uint64) {
	s.st.CancelWrite(quic.StreamErrorCode(code))
	s.st.CancelRead(quic.StreamErrorCode(code))
}

func (s quicStream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s quicStream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s quicStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }
