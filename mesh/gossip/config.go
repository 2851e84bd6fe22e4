package gossip

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Cluster.
type Config struct {
	// BindAddr is the host:port gossip listens on, TCP and UDP on the same
	// port; port 0 picks a free one (see Cluster.LocalAddr). With host
	// 0.0.0.0 memberlist advertises the first private IPv4 address, and
	// fails without one: set AdvertiseAddr then. Required.
	BindAddr string
	// AdvertiseAddr, if set, is the ip:port other proxies use to reach
	// this one (behind NAT, or bound to 0.0.0.0).
	AdvertiseAddr string
	// Seeds are gossip addresses (host:port) of other proxies. New joins
	// through them in the background, retrying with jittered exponential
	// backoff (up to 30s) until one answers or a peer joins this proxy
	// first. This proxy's own address may be among them.
	Seeds []string
	// Keys is the gossip keyring: each key 16, 24 or 32 bytes (AES-128,
	// -192, -256); the first is the primary, used to encrypt; all are
	// tried to decrypt. Required: gossip is always encrypted.
	Keys [][]byte
	// Meta is this proxy's initial metadata. Meta.ID is required and is
	// the memberlist node name; State defaults to active. Tunnels is kept
	// by the Cluster (AddTunnel, RemoveTunnel) and ignored here.
	Meta Meta
	// Timing sets memberlist's probe and gossip timings. A zero field
	// takes DefaultTiming's value.
	Timing Timing
	// Logger receives the Cluster's logs and memberlist's own (with
	// lib=memberlist), mapped to levels by their [DEBUG]/[INFO]/[WARN]/
	// [ERR] prefixes. Remote proxies are logged under the key proxy, this
	// one under self. Default: slog.Default().
	Logger *slog.Logger
	// Metrics, if set, registers the Cluster's metrics (a per-instance
	// registry, never the global one).
	Metrics prometheus.Registerer
	// OnChange, if set, is called after membership, metadata or the
	// tunnel directory changed. Calls are coalesced (one call may stand
	// for many changes), never concurrent, and made without holding any
	// lock, from a goroutine of the Cluster: it may call the Cluster's
	// read methods, SetMeta, AddTunnel and RemoveTunnel, but not Leave or
	// Shutdown (Shutdown waits for it).
	OnChange func()

	// WrapTransport, if set, wraps the memberlist transport this Cluster
	// binds on BindAddr (UDP and TCP): every probe, gossip packet and
	// push/pull stream goes through what it returns, whose Shutdown
	// memberlist calls at Shutdown. It is for tests and emulators
	// (mesh/meshtest adds WAN latency on loopback with it); leave it nil
	// in production. Default: memberlist's NetTransport, unwrapped.
	WrapTransport func(*memberlist.NetTransport) memberlist.NodeAwareTransport
}

// Timing holds memberlist's probe and gossip timings (memberlist.Config
// documents each). DefaultTiming explains the values; FastTiming is for
// tests on loopback.
type Timing struct {
	ProbeInterval, ProbeTimeout, GossipInterval, PushPullInterval time.Duration
	SuspicionMult, IndirectChecks, RetransmitMult, GossipNodes    int
	// SuspicionMaxTimeoutMult bounds how long a suspicion may last without
	// confirmations from other members (memberlist.Config). Not in the
	// original API sketch: without it memberlist's default of 6 would
	// make an unconfirmed suspicion last 6×, which breaks the 3 s bound.
	SuspicionMaxTimeoutMult int
}

// DefaultTiming is tuned for proxies in several regions: a proxy that
// dies is marked dead everywhere in under 3 s, and a proxy 200 ms away is
// not marked dead by a lost packet or two. memberlist's DefaultWANConfig
// takes about 44 s to notice a death (5 s probes, 6× suspicion), its LAN
// config about 5 s.
//
// How death is noticed with these values, N proxies:
//
//  1. Each proxy probes one peer per ProbeInterval, round robin, so
//     between them the N-1 live proxies probe the dead one about once per
//     interval: ≤ 0.4 s to the first probe, usually less.
//  2. The probe waits ProbeTimeout for a direct ack, then asks
//     IndirectChecks peers to try and tries TCP, all until the end of the
//     ProbeInterval: 0.4 s, then the prober marks the proxy suspect and
//     gossips it.
//  3. The suspicion lasts SuspicionMult×ProbeInterval×max(1, log10 N):
//     0.8 s up to 10 proxies, 1.2 s at 30, 1.6 s at 100. With
//     SuspicionMult 2 memberlist waits for no confirmation from other
//     probers (it wants SuspicionMult-2), so SuspicionMaxTimeoutMult
//     never stretches it. With SuspicionMult 3 a 100-proxy mesh took
//     3.2-3.9 s to agree on a death.
//  4. The dead message spreads at GossipInterval: ~0.1 s per hop, a few
//     hops at 100 proxies.
//
// That is ≤ 0.4 + 0.4 + 0.8 + 0.2 ≈ 1.8 s at 10 proxies and about 2.9 s
// at 100. TestDefaultTimingWAN measures it with 200 ms RTT between all
// proxies; BenchmarkGossipConvergence (mesh/meshtest) measured 1.4-2.4 s
// at 10 proxies, 2.1-2.4 s at 50, 2.4-3.4 s (mean 2.9 s) at 100.
//
// Why 200 ms of RTT does not cause false deaths: a direct ack is awaited
// for the whole 0.4 s interval (2 RTTs), not only ProbeTimeout, and
// IndirectChecks other proxies try before anyone is suspected; a proxy
// that is suspected anyway refutes by gossiping a newer alive message,
// which takes about two gossip hops across regions (2 × (0.1 s + 0.1 s
// one-way) ≈ 0.4 s), inside the shortest (0.8 s) suspicion. The
// benchmark counted no false death and no suspicion at all in 12 runs of
// 10 to 100 proxies.
func DefaultTiming() Timing {
	return Timing{
		// One probe per proxy per 0.4 s: 2.5 pings and acks a second,
		// under 1 KB/s, whatever N is.
		ProbeInterval: 400 * time.Millisecond,
		// Above the 200 ms inter-region RTT with room for jitter; after it
		// memberlist starts indirect and TCP probes but still accepts the
		// direct ack until the interval ends.
		ProbeTimeout: 300 * time.Millisecond,
		// Broadcasts (suspect, dead, alive, directory deltas) go out every
		// 0.1 s while any are queued, and not at all when none are.
		GossipInterval: 100 * time.Millisecond,
		// Anti-entropy: one full exchange with a random peer every 30 s.
		// It repairs missed deltas and carries big directory changes; see
		// doc.go for its bandwidth at 10,000 nodes a proxy.
		PushPullInterval: 30 * time.Second,
		// See step 3 above.
		SuspicionMult:           2,
		SuspicionMaxTimeoutMult: 4,
		// Three proxies try a suspect for us: a path problem between two
		// regions does not look like a death.
		IndirectChecks: 3,
		// Each broadcast is sent 8·⌈log10(N+1)⌉ times by each proxy that
		// learns it (8 times up to N = 8, 16 at N = 10). With 4, meshtest
		// measured 0.2-0.4% of directory deltas never reaching some proxy
		// of a 6-8 proxy mesh until the next push/pull (30 s); deltas are
		// a few bytes, so sending them twice as often costs little.
		RetransmitMult: 8,
		// Three peers per gossip round, memberlist's LAN value: 30 packets
		// a second at most while broadcasts are queued.
		GossipNodes: 3,
	}
}

// FastTiming is for tests on loopback: deaths are noticed in about a
// second, push/pull runs every second.
func FastTiming() Timing {
	return Timing{
		ProbeInterval:           200 * time.Millisecond,
		ProbeTimeout:            100 * time.Millisecond,
		GossipInterval:          20 * time.Millisecond,
		PushPullInterval:        time.Second,
		SuspicionMult:           2,
		SuspicionMaxTimeoutMult: 2,
		IndirectChecks:          2,
		RetransmitMult:          3,
		GossipNodes:             3,
	}
}

func (t *Timing) setDefaults() {
	d := DefaultTiming()
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setDur(&t.ProbeInterval, d.ProbeInterval)
	setDur(&t.ProbeTimeout, d.ProbeTimeout)
	setDur(&t.GossipInterval, d.GossipInterval)
	setDur(&t.PushPullInterval, d.PushPullInterval)
	setInt(&t.SuspicionMult, d.SuspicionMult)
	setInt(&t.SuspicionMaxTimeoutMult, d.SuspicionMaxTimeoutMult)
	setInt(&t.IndirectChecks, d.IndirectChecks)
	setInt(&t.RetransmitMult, d.RetransmitMult)
	setInt(&t.GossipNodes, d.GossipNodes)
}

func (t *Timing) check() error {
	switch {
	case t.ProbeInterval < 0, t.ProbeTimeout < 0, t.GossipInterval < 0, t.PushPullInterval < 0:
		return errors.New("durations must not be negative")
	case t.SuspicionMult < 0, t.SuspicionMaxTimeoutMult < 0, t.IndirectChecks < 0, t.RetransmitMult < 0, t.GossipNodes < 0:
		return errors.New("multipliers and counts must not be negative")
	case t.ProbeTimeout >= t.ProbeInterval:
		return fmt.Errorf("ProbeTimeout %v must be less than ProbeInterval %v", t.ProbeTimeout, t.ProbeInterval)
	}
	return nil
}

// Derived timings.
const (
	// batchWindow: AddTunnel and RemoveTunnel calls within this window
	// go out as one delta.
	batchWindow = 50 * time.Millisecond
	// maxJoinBackoff caps the wait between attempts to join through Seeds.
	maxJoinBackoff = 30 * time.Second
	// DefaultLeaveTimeout is what Leave waits when given no timeout.
	DefaultLeaveTimeout = 5 * time.Second
	// maxQueuedBroadcasts bounds the delta broadcast queue (own and
	// relayed, ~1.3 KB each at most): past it the most-sent are dropped,
	// and receivers fill the gap from push/pull.
	maxQueuedBroadcasts = 512
)

// forgetAfter is how long a dead or left proxy, and its directory set,
// are remembered: as long as memberlist keeps gossiping about it
// (GossipToTheDeadTime, which we set to the push/pull interval as
// memberlist's LAN config does). A proxy back within it (a healed
// partition) counts again at once, with no resync.
func (t *Timing) forgetAfter() time.Duration { return t.PushPullInterval }

// tcpTimeout bounds a push/pull: 25 probe intervals, 10 s by default,
// enough to move a few MB of full state across regions.
func (t *Timing) tcpTimeout() time.Duration { return 25 * t.ProbeInterval }

// metaEvery is how often, at most, a changed tunnel count is gossiped in
// the node meta: 10 probe intervals (4 s by default).
func (t *Timing) metaEvery() time.Duration { return 10 * t.ProbeInterval }

// joinBackoff is the first wait between join attempts: 2 probe intervals.
func (t *Timing) joinBackoff() time.Duration { return 2 * t.ProbeInterval }

func (c *Config) checkAndSetDefaults() error {
	switch {
	case c.Meta.ID == "":
		return errors.New("gossip config: Meta.ID is required")
	case c.BindAddr == "":
		return errors.New("gossip config: BindAddr is required (host:port; port 0 picks a free one)")
	case len(c.Keys) == 0:
		return errors.New("gossip config: Keys is required: gossip is always encrypted; give every proxy the same 32 random bytes")
	}
	for i, k := range c.Keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("gossip config: Keys[%d] is %d bytes: want 16, 24 or 32", i, len(k))
		}
	}
	if _, _, err := splitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("gossip config: BindAddr: %w", err)
	}
	if c.AdvertiseAddr != "" {
		host, _, err := splitHostPort(c.AdvertiseAddr)
		if err != nil {
			return fmt.Errorf("gossip config: AdvertiseAddr: %w", err)
		}
		if net.ParseIP(host) == nil {
			return fmt.Errorf("gossip config: AdvertiseAddr %q: the host must be an IP address", c.AdvertiseAddr)
		}
	}
	for _, s := range c.Seeds {
		if _, _, err := splitHostPort(s); err != nil {
			return fmt.Errorf("gossip config: Seeds: %w", err)
		}
	}
	if c.Meta.State == "" {
		c.Meta.State = StateActive
	}
	c.Meta.Tunnels = 0
	if err := checkLocalMeta(&c.Meta); err != nil {
		return fmt.Errorf("gossip config: Meta.%w", err)
	}
	c.Timing.setDefaults()
	if err := c.Timing.check(); err != nil {
		return fmt.Errorf("gossip config: Timing: %w", err)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q: want host:port: %w", addr, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("%q: bad port %q", addr, p)
	}
	return host, int(port), nil
}

// memberlistConfig translates c for memberlist.
func (c *Config) memberlistConfig(kr *memberlist.Keyring, d *delegate) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.Meta.ID
	host, port, _ := splitHostPort(c.BindAddr)
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if c.AdvertiseAddr != "" {
		mc.AdvertiseAddr, mc.AdvertisePort, _ = splitHostPort(c.AdvertiseAddr)
	}
	mc.Keyring = kr
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true

	t := c.Timing
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.GossipInterval = t.GossipInterval
	mc.PushPullInterval = t.PushPullInterval
	mc.SuspicionMult = t.SuspicionMult
	mc.SuspicionMaxTimeoutMult = t.SuspicionMaxTimeoutMult
	mc.IndirectChecks = t.IndirectChecks
	mc.RetransmitMult = t.RetransmitMult
	mc.GossipNodes = t.GossipNodes
	mc.GossipToTheDeadTime = t.forgetAfter()
	mc.TCPTimeout = t.tcpTimeout()

	mc.Delegate = d
	mc.DelegateProtocolVersion = wireVersion
	mc.DelegateProtocolMin = wireVersion
	mc.DelegateProtocolMax = wireVersion
	mc.Events = d
	mc.Alive = d
	mc.Ping = d
	mc.Logger = log.New(logWriter{c.Logger.With("lib", "memberlist")}, "", 0)
	return mc
}
