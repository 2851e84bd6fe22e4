package agent

import (
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/tunnel/proto"
)

// Addr is the address of an Agent as a net.Listener, and the local address
// of the connections it accepts: the node, reached through its tunnels.
type Addr struct {
	NodeID string
}

// Network returns "jumpgate-tunnel".
func (Addr) Network() string { return "jumpgate-tunnel" }

// String returns the node ID.
func (a Addr) String() string { return a.NodeID }

// Conn is a connection accepted from a proxy's dial: one QUIC stream of a
// tunnel. Besides net.Conn it has CloseWrite (half-close) and the proxy's
// DialRequest.
//
// tunnel/server has the same small type for its side of the stream; see the
// note there.
type Conn struct {
	st            *quic.Stream
	req           proto.DialRequest
	version       int
	local, remote net.Addr
	closeOnce     sync.Once
	// release, if set, is called once when the Conn is closed, refused or
	// aborted: the agent counts open dials per tunnel, so that a tunnel
	// being replaced closes only when nothing uses it.
	release     func()
	releaseOnce sync.Once
}

var _ interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
} = (*Conn)(nil)

// DialRequest returns what the proxy said about the dial: the user, the
// client's address, the session and request IDs.
func (c *Conn) DialRequest() proto.DialRequest { return c.req }

func (c *Conn) Read(p []byte) (int, error)  { return c.st.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.st.Write(p) }

// CloseWrite half-closes the connection: the user's side reads EOF and this
// side can still read.
func (c *Conn) CloseWrite() error { return c.st.Close() }

// CloseRead tells the proxy to stop sending.
func (c *Conn) CloseRead() error {
	c.st.CancelRead(quic.StreamErrorCode(proto.StreamClosed))
	return nil
}

// Close ends both directions. Data already written is still delivered.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.st.CancelRead(quic.StreamErrorCode(proto.StreamClosed))
		c.st.Close()
	})
	c.done()
	return nil
}

// done calls release once.
func (c *Conn) done() {
	c.releaseOnce.Do(func() {
		if c.release != nil {
			c.release()
		}
	})
}

// LocalAddr is the agent's Addr.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the user's address from the DialRequest (a *net.TCPAddr)
// when it parses, else the proxy's UDP address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

// answerTimeout bounds writing a DialResponse: a few dozen bytes on a fresh
// stream, which only a dead tunnel can stall.
const answerTimeout = 5 * time.Second

// answer accepts the dial. It is written before the Conn is handed out, so
// it never interleaves with the SSH server's first bytes.
func (c *Conn) answer() error {
	c.st.SetWriteDeadline(time.Now().Add(answerTimeout))
	err := proto.WriteMessage(c.st, proto.DialResponse{Version: c.version, OK: true})
	c.st.SetWriteDeadline(time.Time{})
	return err
}

// refuse declines the dial with a reason the user will see.
func (c *Conn) refuse(reason string) {
	c.st.SetWriteDeadline(time.Now().Add(answerTimeout))
	proto.WriteMessage(c.st, proto.DialResponse{Version: c.version, Error: reason})
	c.st.CancelRead(quic.StreamErrorCode(proto.StreamRefused))
	c.st.Close()
	c.done()
}

// abort drops the stream without an answer.
func (c *Conn) abort() {
	c.st.CancelRead(quic.StreamErrorCode(proto.StreamCanceled))
	c.st.CancelWrite(quic.StreamErrorCode(proto.StreamCanceled))
	c.done()
}
