package meshtest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Conn is a stream connection with the WAN's latency, emulated at this
// end only: what it writes leaves after the one-way delay, what arrives
// is readable after the one-way delay, so the far end (a plain accepted
// connection) sees a whole round trip too. Wrap one end of a connection,
// never both. Order is kept; a Write returns once its bytes are queued
// (like a socket buffer) and blocks only when 1 MiB is queued.
type Conn struct {
	inner net.Conn
	delay time.Duration // one way
	count *counter

	wDone chan struct{} // closed when writeLoop returns
	rDone chan struct{} // closed when readLoop returns

	mu      sync.Mutex    // guards following
	changed chan struct{} // closed and replaced on every change below
	closed  bool
	wq      []chunk // written, waiting to be sent
	wqBytes int
	werr    error   // a send failed: every later Write fails with it
	rq      []chunk // received, waiting to be readable; an error ends it
	rqBytes int
	rdead   time.Time
	wdead   time.Time
}

var _ net.Conn = (*Conn)(nil)

type chunk struct {
	b   []byte
	due time.Time
	err error // the end of the stream (read side)
}

// connBuffer bounds the bytes queued each way before Write blocks and
// before the far end's data is left in the kernel.
const connBuffer = 1 << 20

// closeFlush bounds how long Close waits, beyond the one-way delay, for
// queued bytes to go out before it closes the connection under them.
const closeFlush = time.Second

// WrapConn wraps c, whose local and remote addresses decide the delay.
// Streams and bytes are counted under c's local address.
func (w *WAN) WrapConn(c net.Conn) (*Conn, error) {
	la, ok1 := addrOf(c.LocalAddr())
	ra, ok2 := addrOf(c.RemoteAddr())
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("meshtest: wrap conn %v -> %v: not IP addresses", c.LocalAddr(), c.RemoteAddr())
	}
	cnt := w.counter(la)
	cnt.stream()
	return w.wrapConn(c, w.Latency(la.Addr(), ra.Addr()), cnt), nil
}

func (w *WAN) wrapConn(c net.Conn, delay time.Duration, cnt *counter) *Conn {
	wc := &Conn{inner: c, delay: delay, count: cnt, changed: make(chan struct{}), wDone: make(chan struct{}), rDone: make(chan struct{})}
	go wc.writeLoop()
	go wc.readLoop()
	return wc
}

// Dial connects over TCP from the IP from (port chosen by the kernel) to
// addr ("ip:port"), taking one round trip for the handshake, and wraps
// the connection. Streams and bytes are counted under from with port 0.
func (w *WAN) Dial(ctx context.Context, from netip.Addr, addr string) (*Conn, error) {
	return w.dial(ctx, from, addr, w.counter(netip.AddrPortFrom(from, 0)))
}

func (w *WAN) dial(ctx context.Context, from netip.Addr, addr string, cnt *counter) (*Conn, error) {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("meshtest: dial %s: want ip:port: %w", addr, err)
	}
	delay := w.Latency(from, to.Addr())
	if delay > 0 {
		// SYN out, SYN-ACK back: the dialer may send after one round trip.
		t := time.NewTimer(2 * delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(to), Err: ctx.Err()}
		case <-t.C:
		}
	}
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cnt.stream()
	return w.wrapConn(c, delay, cnt), nil
}

// notifyLocked wakes everyone waiting on a change.
func (c *Conn) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait waits, with c.mu held, for a change, for d (if ≥ 0) to pass, or
// both; it returns with c.mu held.
func (c *Conn) wait(d time.Duration) {
	ch := c.changed
	c.mu.Unlock()
	if d >= 0 {
		t := time.NewTimer(d)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	} else {
		<-ch
	}
	c.mu.Lock()
}

// writeLoop sends queued writes when due; after Close it sends what is
// left, then returns.
func (c *Conn) writeLoop() {
	defer close(c.wDone)
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if len(c.wq) == 0 {
			if c.closed || c.werr != nil {
				return
			}
			c.wait(-1)
			continue
		}
		if d := time.Until(c.wq[0].due); d > 0 {
			c.wait(d)
			continue
		}
		b := c.wq[0].b
		c.wq[0] = chunk{}
		c.wq = c.wq[1:]
		c.wqBytes -= len(b)
		c.notifyLocked()
		c.mu.Unlock()
		_, err := c.inner.Write(b)
		c.mu.Lock()
		if err != nil {
			c.werr, c.wq, c.wqBytes = err, nil, 0
			c.notifyLocked()
			return
		}
	}
}

// readLoop reads what arrives and queues it, readable after the delay.
func (c *Conn) readLoop() {
	defer close(c.rDone)
	for {
		c.mu.Lock()
		for c.rqBytes >= connBuffer && !c.closed {
			c.wait(-1)
		}
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
		buf := make([]byte, 32<<10)
		n, err := c.inner.Read(buf)
		due := time.Now().Add(c.delay)
		c.mu.Lock()
		if n > 0 {
			c.rq = append(c.rq, chunk{b: buf[:n], due: due})
			c.rqBytes += n
		}
		if err != nil {
			c.rq = append(c.rq, chunk{err: err, due: due})
		}
		c.notifyLocked()
		c.mu.Unlock()
		c.count.streamBytes(n)
		if err != nil {
			return
		}
	}
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.inner.LocalAddr(), Addr: c.inner.RemoteAddr(), Err: err}
}

// Read reads bytes that arrived at least one one-way delay ago.
func (c *Conn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return 0, c.opError("read", net.ErrClosed)
		}
		now := time.Now()
		wait := time.Duration(-1)
		if len(c.rq) > 0 {
			h := &c.rq[0]
			if !h.due.After(now) {
				if h.err != nil {
					return 0, h.err // left in place: later reads get it too
				}
				n := copy(b, h.b)
				h.b = h.b[n:]
				c.rqBytes -= n
				if len(h.b) == 0 {
					c.rq[0] = chunk{}
					c.rq = c.rq[1:]
				}
				c.notifyLocked()
				return n, nil
			}
			wait = h.due.Sub(now)
		}
		if !c.rdead.IsZero() {
			left := c.rdead.Sub(now)
			if left <= 0 {
				return 0, c.opError("read", os.ErrDeadlineExceeded)
			}
			if wait < 0 || left < wait {
				wait = left
			}
		}
		c.wait(wait)
	}
}

// Write queues b to be sent after the one-way delay.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.closed:
			return 0, c.opError("write", net.ErrClosed)
		case c.werr != nil:
			return 0, c.werr
		case c.wqBytes < connBuffer:
			c.wq = append(c.wq, chunk{b: append([]byte(nil), b...), due: time.Now().Add(c.delay)})
			c.wqBytes += len(b)
			c.notifyLocked()
			c.count.streamBytes(len(b))
			return len(b), nil
		}
		wait := time.Duration(-1)
		if !c.wdead.IsZero() {
			if wait = time.Until(c.wdead); wait <= 0 {
				return 0, c.opError("write", os.ErrDeadlineExceeded)
			}
		}
		c.wait(wait)
	}
}

// Close sends what was written (within the one-way delay and a second:
// a FIN follows the data), closes the connection and waits for the
// Conn's goroutines. Bytes not yet read are dropped.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.notifyLocked()
	c.mu.Unlock()
	t := time.NewTimer(c.delay + closeFlush)
	select {
	case <-c.wDone:
	case <-t.C:
	}
	t.Stop()
	err := c.inner.Close()
	<-c.wDone
	<-c.rDone
	return err
}

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() net.Addr { return c.inner.LocalAddr() }

// RemoteAddr returns the remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.inner.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rdead, c.wdead = t, t
	c.notifyLocked()
	return nil
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rdead = t
	c.notifyLocked()
	return nil
}

// SetWriteDeadline sets the write deadline: how long a Write may wait for
// room in the queue.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wdead = t
	c.notifyLocked()
	return nil
}
