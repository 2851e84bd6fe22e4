package meshtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

// WANConfig describes an emulated WAN.
type WANConfig struct {
	// Regions are the region names, each as identity.CheckName accepts.
	// Regions[i] gets the loopback block 127.0.(i+1).0/24, so there may be
	// at most 254. Required.
	Regions []string
	// RTT is the round-trip time between two regions, keyed by the pair in
	// either order. Every pair of distinct regions must be listed; a
	// region's RTT to itself defaults to 0.
	RTT map[[2]string]time.Duration
	// QueueLimit is how many packets one socket may have in flight (sent
	// but not yet delivered); past it packets are dropped and counted, as
	// a router's queue would. Default 4096: at 1,400 bytes a packet, a
	// 100 ms one-way delay holds 57 MB/s.
	QueueLimit int
}

// DefaultQueueLimit is WANConfig.QueueLimit's default.
const DefaultQueueLimit = 4096

// ThreeRegions is a WAN of three regions a, b and c, with 70 ms of RTT
// between a and b, 140 ms between a and c and 200 ms between b and c
// (roughly Frankfurt, Virginia and Singapore): the closest holder of a
// node is not the same from every region.
func ThreeRegions() WANConfig {
	return WANConfig{
		Regions: []string{"a", "b", "c"},
		RTT: map[[2]string]time.Duration{
			{"a", "b"}: 70 * time.Millisecond,
			{"a", "c"}: 140 * time.Millisecond,
			{"b", "c"}: 200 * time.Millisecond,
		},
	}
}

// UniformRegions is a WAN of n regions r0 … r(n-1) with rtt between every
// two of them.
func UniformRegions(n int, rtt time.Duration) WANConfig {
	cfg := WANConfig{RTT: map[[2]string]time.Duration{}}
	for i := range n {
		cfg.Regions = append(cfg.Regions, fmt.Sprintf("r%d", i))
		for j := range i {
			cfg.RTT[[2]string{cfg.Regions[j], cfg.Regions[i]}] = rtt
		}
	}
	return cfg
}

// WAN is an emulated wide-area network on loopback: each region is a /24
// of 127.0.0.0/8 (Linux routes all of it to lo with no setup), and the
// sockets wrapped by a WAN (PacketConn, Conn, GossipTransport) delay
// what they send by half the RTT between their own region and the
// destination's, so two wrapped sockets see the whole RTT between them.
// Addresses outside every region's block (127.0.0.1 among them) have no
// latency to anything. A WAN has no goroutines of its own; the wrappers
// do, and stop at Close.
type WAN struct {
	regions    []string
	index      map[string]int
	rtt        [][]time.Duration // by region index
	queueLimit int

	mu      sync.Mutex                  // guards following
	next    map[string]int              // next host number in each region
	traffic map[netip.AddrPort]*traffic // by the local address of a socket
	total   traffic
}

// NewWAN checks cfg and returns a WAN.
func NewWAN(cfg WANConfig) (*WAN, error) {
	if len(cfg.Regions) == 0 {
		return nil, errors.New("meshtest WAN: Regions is required")
	}
	if len(cfg.Regions) > 254 {
		return nil, fmt.Errorf("meshtest WAN: %d regions, at most 254 fit 127.0.0.0/8 as /24s", len(cfg.Regions))
	}
	w := &WAN{
		regions:    cfg.Regions,
		index:      make(map[string]int, len(cfg.Regions)),
		queueLimit: cfg.QueueLimit,
		next:       make(map[string]int),
		traffic:    make(map[netip.AddrPort]*traffic),
	}
	if w.queueLimit <= 0 {
		w.queueLimit = DefaultQueueLimit
	}
	for i, r := range cfg.Regions {
		if err := identity.CheckName(r); err != nil {
			return nil, fmt.Errorf("meshtest WAN: region: %w", err)
		}
		if _, dup := w.index[r]; dup {
			return nil, fmt.Errorf("meshtest WAN: region %s listed twice", r)
		}
		w.index[r] = i
	}
	w.rtt = make([][]time.Duration, len(cfg.Regions))
	for i := range w.rtt {
		w.rtt[i] = make([]time.Duration, len(cfg.Regions))
	}
	for pair, d := range cfg.RTT {
		i, ok1 := w.index[pair[0]]
		j, ok2 := w.index[pair[1]]
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("meshtest WAN: RTT between %s and %s: not both in Regions %v", pair[0], pair[1], cfg.Regions)
		}
		if d < 0 {
			return nil, fmt.Errorf("meshtest WAN: RTT between %s and %s is negative", pair[0], pair[1])
		}
		w.rtt[i][j], w.rtt[j][i] = d, d
	}
	for i, a := range cfg.Regions {
		for _, b := range cfg.Regions[:i] {
			_, ok1 := cfg.RTT[[2]string{a, b}]
			_, ok2 := cfg.RTT[[2]string{b, a}]
			if !ok1 && !ok2 {
				return nil, fmt.Errorf("meshtest WAN: no RTT between regions %s and %s", a, b)
			}
		}
	}
	return w, nil
}

// Regions returns the region names, in the order of their address blocks.
func (w *WAN) Regions() []string { return append([]string(nil), w.regions...) }

// NewHost returns the next unused address of region: 127.0.(i+1).1, .2, …
// for Regions[i].
func (w *WAN) NewHost(region string) (netip.Addr, error) {
	i, ok := w.index[region]
	if !ok {
		return netip.Addr{}, fmt.Errorf("meshtest WAN: unknown region %q (have %v)", region, w.regions)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.next[region] + 1
	if n > 254 {
		return netip.Addr{}, fmt.Errorf("meshtest WAN: region %s is full (254 hosts)", region)
	}
	w.next[region] = n
	return netip.AddrFrom4([4]byte{127, 0, byte(i + 1), byte(n)}), nil
}

// RegionOf returns the region whose block holds ip.
func (w *WAN) RegionOf(ip netip.Addr) (string, bool) {
	i, ok := w.regionIndex(ip)
	if !ok {
		return "", false
	}
	return w.regions[i], true
}

func (w *WAN) regionIndex(ip netip.Addr) (int, bool) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return 0, false
	}
	b := ip.As4()
	if b[0] != 127 || b[1] != 0 || b[2] == 0 || int(b[2]) > len(w.regions) {
		return 0, false
	}
	return int(b[2]) - 1, true
}

// RTT returns the round-trip time between two regions (0 for unknown ones).
func (w *WAN) RTT(a, b string) time.Duration {
	i, ok1 := w.index[a]
	j, ok2 := w.index[b]
	if !ok1 || !ok2 {
		return 0
	}
	return w.rtt[i][j]
}

// Latency returns the one-way delay from one address to another: half the
// RTT between their regions, 0 if either is in no region.
func (w *WAN) Latency(from, to netip.Addr) time.Duration {
	i, ok1 := w.regionIndex(from)
	j, ok2 := w.regionIndex(to)
	if !ok1 || !ok2 {
		return 0
	}
	return w.rtt[i][j] / 2
}

// Traffic counts what wrapped sockets sent. Packets are datagrams (QUIC,
// memberlist's probes and gossip); stream bytes are what a Conn carried,
// both ways (memberlist's push/pull and TCP probes), counted once, at the
// dialing end.
type Traffic struct {
	Packets     int64 // datagrams sent (including those dropped)
	PacketBytes int64 // their bytes
	Dropped     int64 // datagrams dropped because the sender's queue was full
	Streams     int64 // Conns dialed
	StreamBytes int64 // bytes written and read on them
}

// Add returns t + o.
func (t Traffic) Add(o Traffic) Traffic {
	return Traffic{t.Packets + o.Packets, t.PacketBytes + o.PacketBytes, t.Dropped + o.Dropped, t.Streams + o.Streams, t.StreamBytes + o.StreamBytes}
}

// Sub returns t - o: the traffic between two readings.
func (t Traffic) Sub(o Traffic) Traffic {
	return Traffic{t.Packets - o.Packets, t.PacketBytes - o.PacketBytes, t.Dropped - o.Dropped, t.Streams - o.Streams, t.StreamBytes - o.StreamBytes}
}

// Bytes is PacketBytes + StreamBytes.
func (t Traffic) Bytes() int64 { return t.PacketBytes + t.StreamBytes }

type traffic struct {
	packets, packetBytes, dropped, streams, streamBytes atomic.Int64
}

func (t *traffic) get() Traffic {
	return Traffic{t.packets.Load(), t.packetBytes.Load(), t.dropped.Load(), t.streams.Load(), t.streamBytes.Load()}
}

// counter returns the counters of the socket bound to local. A socket
// bound again to the same address (a restarted proxy) adds to them.
func (w *WAN) counter(local netip.AddrPort) *counter {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.traffic[local]
	if t == nil {
		t = &traffic{}
		w.traffic[local] = t
	}
	return &counter{own: t, total: &w.total}
}

// TrafficFrom returns what the wrapped sockets bound to local (ip:port)
// have sent since the WAN was made, restarts included.
func (w *WAN) TrafficFrom(local netip.AddrPort) Traffic {
	w.mu.Lock()
	t := w.traffic[local]
	w.mu.Unlock()
	if t == nil {
		return Traffic{}
	}
	return t.get()
}

// TotalTraffic returns what every wrapped socket of the WAN has sent.
func (w *WAN) TotalTraffic() Traffic { return w.total.get() }

// counter adds to a socket's counters and the WAN's total.
type counter struct{ own, total *traffic }

func (c *counter) packet(n int) {
	for _, t := range []*traffic{c.own, c.total} {
		t.packets.Add(1)
		t.packetBytes.Add(int64(n))
	}
}

func (c *counter) drop() {
	c.own.dropped.Add(1)
	c.total.dropped.Add(1)
}

func (c *counter) stream() {
	c.own.streams.Add(1)
	c.total.streams.Add(1)
}

func (c *counter) streamBytes(n int) {
	c.own.streamBytes.Add(int64(n))
	c.total.streamBytes.Add(int64(n))
}

// addrOf returns the IP and port of a UDP or TCP address.
func addrOf(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort(), true
	case *net.TCPAddr:
		return a.AddrPort(), true
	}
	if a == nil {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}
