package meshtest

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// PacketConn is a net.PacketConn whose datagrams reach their destination
// after the WAN's one-way delay from this socket's region to the
// destination's (by IP), in the order sent to each destination. A full
// queue drops datagrams (counted in Traffic.Dropped). quic-go accepts it
// as a quic.Transport's Conn, without its UDP optimizations (GSO, ECN).
type PacketConn struct {
	inner net.PacketConn
	wan   *WAN
	local netip.Addr
	count *counter
	line  *delayLine[net.Addr]
	dark  atomic.Bool // Blackhole was called
}

var _ net.PacketConn = (*PacketConn)(nil)

// ListenPacket opens a UDP socket on addr ("ip:port"; port 0 picks one)
// and wraps it (WrapPacketConn).
func (w *WAN) ListenPacket(addr string) (*PacketConn, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	return w.WrapPacketConn(pc)
}

// WrapPacketConn wraps pc, which must be bound to a specific IP (its
// region is that IP's). Closing the PacketConn closes pc.
func (w *WAN) WrapPacketConn(pc net.PacketConn) (*PacketConn, error) {
	la, ok := addrOf(pc.LocalAddr())
	if !ok || la.Addr().IsUnspecified() {
		return nil, fmt.Errorf("meshtest: wrap packet conn: bound to %v: bind it to one IP, whose region it is", pc.LocalAddr())
	}
	c := &PacketConn{inner: pc, wan: w, local: la.Addr(), count: w.counter(la)}
	c.line = newDelayLine(w.queueLimit, c.count, func(b []byte, to net.Addr) {
		_, _ = pc.WriteTo(b, to) // UDP: a failed send is a lost datagram
	})
	return c, nil
}

// WriteTo sends b to addr after the WAN's delay. It returns at once, like
// a UDP send into the kernel's buffer.
func (c *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.dark.Load() {
		return len(b), nil
	}
	to, ok := addrOf(addr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.inner.LocalAddr(), Addr: addr, Err: fmt.Errorf("meshtest: not a UDP address")}
	}
	c.count.packet(len(b))
	d := c.wan.Latency(c.local, to.Addr())
	if d == 0 {
		return c.inner.WriteTo(b, addr)
	}
	c.line.push(b, addr, d)
	return len(b), nil
}

// ReadFrom reads the next datagram (after Blackhole: the next one, never).
func (c *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.inner.ReadFrom(b)
		if err != nil || !c.dark.Load() {
			return n, addr, err
		}
	}
}

// Blackhole makes the socket silent both ways until it is closed:
// datagrams queued or sent from now on are dropped, and datagrams that
// arrive are discarded. It is how a proxy is killed: whatever its QUIC
// stack says on the way down (CONNECTION_CLOSE) never leaves the host.
func (c *PacketConn) Blackhole() {
	c.dark.Store(true)
	c.line.close()
}

// Close drops the datagrams still in flight, stops the delay goroutine and
// closes the socket.
func (c *PacketConn) Close() error {
	c.line.close()
	return c.inner.Close()
}

// LocalAddr returns the socket's address.
func (c *PacketConn) LocalAddr() net.Addr { return c.inner.LocalAddr() }

// SetDeadline sets the socket's deadlines. Writes never block, so only
// the read deadline matters.
func (c *PacketConn) SetDeadline(t time.Time) error { return c.inner.SetDeadline(t) }

// SetReadDeadline sets the socket's read deadline.
func (c *PacketConn) SetReadDeadline(t time.Time) error { return c.inner.SetReadDeadline(t) }

// SetWriteDeadline sets the socket's write deadline.
func (c *PacketConn) SetWriteDeadline(t time.Time) error { return c.inner.SetWriteDeadline(t) }

// SetReadBuffer sets the socket's receive buffer. quic-go calls it; with
// it present, quic-go does not warn that it cannot size the buffer.
func (c *PacketConn) SetReadBuffer(n int) error {
	if s, ok := c.inner.(interface{ SetReadBuffer(int) error }); ok {
		return s.SetReadBuffer(n)
	}
	return nil
}

// SetWriteBuffer sets the socket's send buffer (see SetReadBuffer).
func (c *PacketConn) SetWriteBuffer(n int) error {
	if s, ok := c.inner.(interface{ SetWriteBuffer(int) error }); ok {
		return s.SetWriteBuffer(n)
	}
	return nil
}

// Traffic returns what this socket's address has sent (see
// WAN.TrafficFrom).
func (c *PacketConn) Traffic() Traffic {
	la, _ := addrOf(c.inner.LocalAddr())
	return c.wan.TrafficFrom(la)
}
