package meshtest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// GossipTransport wraps memberlist's transport with the WAN's latency; it
// is a gossip.Config.WrapTransport. Packets (probes, acks, gossip) are
// delayed like a PacketConn's; push/pull and TCP probes go through a
// Conn dialed from the transport's IP, taking a round trip to connect.
// The transport must be bound to one IP (its region). Traffic is counted
// under the gossip address.
func (w *WAN) GossipTransport(nt *memberlist.NetTransport) memberlist.NodeAwareTransport {
	ip, port, err := nt.FinalAdvertiseAddr("", 0)
	t := &gossipTransport{wan: w, inner: nt, conns: make(map[*Conn]struct{})}
	if a, ok := netip.AddrFromSlice(ip); err == nil && ok {
		t.local = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	t.count = w.counter(t.local)
	t.line = newDelayLine(w.queueLimit, t.count, func(b []byte, to memberlist.Address) {
		_, _ = nt.WriteToAddress(b, to) // UDP: a failed send is a lost packet
	})
	return t
}

type gossipTransport struct {
	wan   *WAN
	inner *memberlist.NetTransport
	local netip.AddrPort
	count *counter
	line  *delayLine[memberlist.Address]

	mu     sync.Mutex // guards following
	conns  map[*Conn]struct{}
	closed bool
}

var _ memberlist.NodeAwareTransport = (*gossipTransport)(nil)

func (t *gossipTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *gossipTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	to, err := netip.ParseAddrPort(a.Addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("meshtest: gossip to %s: want ip:port: %w", a.Addr, err)
	}
	t.count.packet(len(b))
	d := t.wan.Latency(t.local.Addr(), to.Addr())
	if d == 0 {
		return t.inner.WriteToAddress(b, a)
	}
	// The time returned is when the packet left memberlist: its probe
	// RTT then includes the emulated delay both ways.
	t.line.push(b, a, d)
	return time.Now(), nil
}

func (t *gossipTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *gossipTransport) PacketCh() <-chan *memberlist.Packet { return t.inner.PacketCh() }

func (t *gossipTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := t.wan.dial(ctx, t.local.Addr(), a.Addr, t.count)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: net.ErrClosed}
	}
	t.conns[c] = struct{}{}
	t.mu.Unlock()
	return &trackedConn{Conn: c, t: t}, nil
}

func (t *gossipTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *gossipTransport) StreamCh() <-chan net.Conn { return t.inner.StreamCh() }

// Shutdown drops the packets in flight, closes the streams this proxy
// dialed (a dead process's sockets close) and shuts memberlist's
// transport down.
func (t *gossipTransport) Shutdown() error {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = map[*Conn]struct{}{}
	t.mu.Unlock()
	t.line.close()
	for c := range conns {
		c.Close()
	}
	return t.inner.Shutdown()
}

// trackedConn forgets itself in its transport when closed.
type trackedConn struct {
	*Conn
	t *gossipTransport
}

func (c *trackedConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c.Conn)
	c.t.mu.Unlock()
	return c.Conn.Close()
}
