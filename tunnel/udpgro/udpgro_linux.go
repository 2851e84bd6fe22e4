package udpgro

import (
	"encoding/binary"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// maxGRO is the largest buffer the kernel delivers for one datagram with
// GRO: a UDP payload cannot exceed 65,535 bytes less the headers.
const maxGRO = 65535

// batch is how many buffers one recvmmsg fills. Each holds up to some 45
// QUIC packets of one flow; several serve a proxy whose socket many
// agents share. 4 × 64 KiB per socket.
const batch = 4

// Conn is a *net.UDPConn that reads with GRO. It satisfies quic-go's
// OOBCapablePacketConn and its batchConn (ReadBatch), so a quic.Transport
// given a Conn reads through ReadBatch.
type Conn struct {
	*net.UDPConn
	pc *ipv4.PacketConn // recvmmsg on the same socket

	// Read state, used by ReadBatch only: quic-go reads a socket from one
	// goroutine, and ReadBatch must not be called concurrently.
	msgs []ipv4.Message // what the last recvmmsg filled
	ctl  [batch][]byte  // each message's control messages less UDP_GRO
	seg  [batch]int     // each message's segment size
	cur  int            // message being handed out
	n    int            // messages filled
	off  int            // next segment's start in msgs[cur]

	// buffers and datagrams count what the kernel delivered and what was
	// handed out (for tests: more datagrams than buffers is GRO at work).
	buffers, datagrams atomic.Uint64
}

// Wrap turns on UDP_GRO for c and returns it wrapped. enabled is false (and
// pc is c itself) when the kernel refuses the option.
func Wrap(c *net.UDPConn) (pc net.PacketConn, enabled bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return c, false
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return c, false
	}
	g := &Conn{UDPConn: c, pc: ipv4.NewPacketConn(c), msgs: make([]ipv4.Message, batch)}
	for i := range g.msgs {
		g.msgs[i].Buffers = [][]byte{make([]byte, maxGRO)}
		g.msgs[i].OOB = make([]byte, 256)
	}
	return g, true
}

// ReadBatch fills ms with the datagrams the kernel delivered: each GRO
// buffer cut into its segments, in order. It reads from the socket only
// when everything read before has been handed out. Each message gets its
// sender's address and its buffer's control messages (ECN, packet info)
// less UDP_GRO itself, as quic-go expects of recvmmsg. A message whose
// buffer is shorter than the segment gets it truncated, as the kernel
// truncates a datagram; quic-go then drops it as undecryptable. One
// goroutine at a time, as quic-go calls it.
func (c *Conn) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	if c.cur >= c.n {
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	k := 0
	for k < len(ms) && c.cur < c.n {
		src := &c.msgs[c.cur]
		size := min(c.seg[c.cur], src.N-c.off)
		m := &ms[k]
		m.N = 0
		if len(m.Buffers) > 0 {
			m.N = copy(m.Buffers[0], src.Buffers[0][c.off:c.off+size])
		}
		m.NN = copy(m.OOB, c.ctl[c.cur])
		m.Addr = src.Addr
		m.Flags = 0
		k++
		if c.off += size; c.off >= src.N {
			c.cur++
			c.off = 0
		}
	}
	c.datagrams.Add(uint64(k))
	return k, nil
}

// fill reads up to batch buffers from the socket, waiting as the socket's
// read deadline allows, and notes each one's segment size.
func (c *Conn) fill() error {
	c.cur, c.n, c.off = 0, 0, 0
	n, err := c.pc.ReadBatch(c.msgs, 0)
	if err != nil {
		return err
	}
	for i := range n {
		m := &c.msgs[i]
		if m.Flags&syscall.MSG_TRUNC != 0 {
			// Cannot happen with a buffer of the largest UDP payload;
			// drop it rather than hand quic-go a cut datagram.
			m.N = 0
		}
		seg, ctl, err := splitControl(m.OOB[:m.NN], c.ctl[i][:0])
		if err != nil {
			return &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: err}
		}
		c.ctl[i] = ctl
		if seg <= 0 {
			seg = m.N // not coalesced: one datagram
		}
		c.seg[i] = max(seg, 1)
		if m.N == 0 {
			// An empty datagram (or a dropped one) is handed out as one
			// empty message, as recvmmsg would.
			c.seg[i] = 1
		}
	}
	c.n = n
	c.buffers.Add(uint64(n))
	return nil
}

// splitControl returns the segment size from a UDP_GRO control message in
// oob (0 without one) and appends the other control messages to ctl.
func splitControl(oob, ctl []byte) (seg int, _ []byte, _ error) {
	for len(oob) > 0 {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0, ctl, err
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO {
			if len(body) >= 4 {
				seg = int(int32(binary.NativeEndian.Uint32(body)))
			}
		} else {
			ctl = append(ctl, oob[:len(oob)-len(rest)]...)
		}
		oob = rest
	}
	return seg, ctl, nil
}
