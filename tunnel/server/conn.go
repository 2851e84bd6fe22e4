package server

import (
	"net"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/tunnel/internal/transport"
)

// conn is a dialed tunnel stream as a net.Conn.
//
// tunnel/agent has the same small type for its side of the stream: the
// transport (tunnel/internal/transport) is shared, but each side's net.Conn
// carries what only that side knows, and is too small to share.
type conn struct {
	st            transport.Stream
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
func (c *conn) CloseWrite() error { return c.st.CloseWrite() }

// CloseRead tells the node to stop sending (over TCP, what it still sends
// is discarded).
func (c *conn) CloseRead() error {
	c.st.CloseRead()
	return nil
}

// Close ends both directions. Data already written is still delivered; data
// still arriving is discarded.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.st.Close()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return nil
}

// LocalAddr is the proxy's address the tunnel arrived on (UDP for QUIC, TCP
// for the TCP transport).
func (c *conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the agent's address, as the proxy sees it (after NAT).
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }
