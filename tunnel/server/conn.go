package server

import (
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/tunnel/proto"
)

// conn is a dialed tunnel stream as a net.Conn.
//
// tunnel/agent has the same small type for its side of the stream: the two
// packages share no code but proto, by the import rules, and this is too
// small to deserve a package of its own.
type conn struct {
	st            *quic.Stream
	local, remote net.Addr
	closeOnce     sync.Once
	onClose       func()
}

var _ interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
} = (*conn)(nil)

func (c *conn) Read(p []byte) (int, error)  { return c.st.Read(p) }
func (c *conn) Write(p []byte) (int, error) { return c.st.Write(p) }

// CloseWrite half-closes the connection: the node reads EOF, and this side
// can still read what the node sends (ssh and scp rely on it).
func (c *conn) CloseWrite() error { return c.st.Close() }

// CloseRead tells the node to stop sending.
func (c *conn) CloseRead() error {
	c.st.CancelRead(quic.StreamErrorCode(proto.StreamClosed))
	return nil
}

// Close ends both directions. Data already written is still delivered; data
// still arriving is discarded.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.st.CancelRead(quic.StreamErrorCode(proto.StreamClosed))
		c.st.Close()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return nil
}

// LocalAddr is the proxy's UDP address the tunnel arrived on.
func (c *conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the agent's UDP address, as the proxy sees it (after NAT).
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }
