package peer

import (
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// conn is a dialed peer stream as a net.Conn.
//
// tunnel/server has the same small type for tunnel streams; by the import
// rules the two packages share no code, and this is too small to deserve a
// package of its own.
type conn struct {
	st            *quic.Stream
	local, remote net.Addr
	metrics       *metrics
	closeOnce     sync.Once
	onClose       func()
}

var _ interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
} = (*conn)(nil)

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.st.Read(p)
	c.metrics.bytesIn.Add(float64(n))
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	n, err := c.st.Write(p)
	c.metrics.bytesOut.Add(float64(n))
	return n, err
}

// CloseWrite half-closes the connection: the node reads EOF, and this side
// can still read what the node sends (ssh and scp rely on it).
func (c *conn) CloseWrite() error { return c.st.Close() }

// CloseRead tells the holder to stop sending.
func (c *conn) CloseRead() error {
	c.st.CancelRead(streamClosed)
	return nil
}

// Close ends both directions. Data already written is still delivered; data
// still arriving is discarded.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.st.CancelRead(streamClosed)
		c.st.Close()
		c.onClose()
	})
	return nil
}

// LocalAddr is this proxy's UDP address (its peer port).
func (c *conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the holding peer's UDP address.
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }
