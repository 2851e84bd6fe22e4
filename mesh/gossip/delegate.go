package gossip

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate is the Cluster as memberlist sees it. memberlist calls these
// methods from its goroutines, some with its node lock held: they take
// only Cluster.mu (a leaf lock) and never call back into memberlist.
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate  = (*delegate)(nil)
)

// NodeMeta returns the encoded own meta (never longer than
// memberlist.MetaMaxSize: encodeMeta checks).
func (d *delegate) NodeMeta(limit int) []byte {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.metaBytes
}

// NotifyMsg handles a gossiped message: a directory delta, or a type
// from a newer version, which is counted and ignored.
func (d *delegate) NotifyMsg(b []byte) {
	c := d.c
	typ := messageType(b)
	switch typ {
	case typeDelta:
	case typeLeave:
		c.leaveNotice(b)
		return
	default:
		// Full states only travel by push/pull; anything else is from a
		// newer version (or garbage, which the key makes unlikely).
		c.metrics.messages.WithLabelValues(typ, outcomeIgnored).Inc()
		c.log.Debug("ignoring gossip message of unknown type", "type_byte", firstByte(b), "bytes", len(b))
		return
	}
	m, err := decodeDelta(b)
	if err != nil {
		c.metrics.messages.WithLabelValues(typ, outcomeInvalid).Inc()
		c.warnInvalid(typ, b, err)
		return
	}
	c.mu.Lock()
	outcome := c.dir.applyDelta(m, c.minIncLocked(m.Origin))
	c.mu.Unlock()
	c.metrics.messages.WithLabelValues(typ, outcome).Inc()
	switch outcome {
	case outcomeApplied, outcomeGap:
		// Pass it on: memberlist only retransmits what a proxy queues
		// itself, so without relaying, a delta would reach each peer with
		// a fair chance of missing some (8 sends among 9 peers misses one
		// of them about a third of the time).
		c.queueBroadcasts(bytes.Clone(b))
		c.notify()
	case outcomeInvalid:
		c.warnInvalid(typ, b, fmt.Errorf("delta from %s would exceed %d nodes", m.Origin, MaxNodesPerOrigin))
	}
}

// leaveNotice handles a proxy's notice that it is leaving: the
// memberlist death that follows (or came just before) counts as left.
func (c *Cluster) leaveNotice(b []byte) {
	l, err := decodeLeave(b)
	if err != nil {
		c.metrics.messages.WithLabelValues(typeLeave, outcomeInvalid).Inc()
		c.warnInvalid(typeLeave, b, err)
		return
	}
	outcome := outcomeStale
	var addr, region string
	c.mu.Lock()
	r := c.members[l.Origin]
	switch {
	case l.Origin == c.cfg.Meta.ID || r == nil || l.Inc < r.dirInc:
		outcome = outcomeIgnored
	case r.health == HealthDead:
		r.health = HealthLeft
		outcome = outcomeApplied
	case r.health == HealthAlive && !r.leaving:
		r.leaving = true
		outcome = outcomeApplied
	}
	if r != nil {
		addr, region = r.addr, r.meta.Region
	}
	c.mu.Unlock()
	c.metrics.messages.WithLabelValues(typeLeave, outcome).Inc()
	if outcome == outcomeApplied {
		c.log.Info("proxy is leaving", "proxy", l.Origin, "region", region, "addr", addr)
		c.queueBroadcasts(bytes.Clone(b))
		c.notify()
	}
}

// GetBroadcasts hands memberlist queued deltas for a gossip packet.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

// LocalState is the directory's full state for a push/pull. Pending
// tunnel changes are flushed first, so that the version sent names
// exactly the set sent.
func (d *delegate) LocalState(join bool) []byte {
	c := d.c
	c.mu.Lock()
	msgs, jumped := c.dir.flush(c.maxDelta)
	fs, leftOut := c.dir.fullState(c.countsLocked)
	c.mu.Unlock()
	c.queueBroadcasts(msgs...)
	if jumped {
		c.requestSync()
	}
	c.metrics.fullStateBytes.Set(float64(len(fs)))
	if len(leftOut) > 0 {
		c.log.Warn("tunnel directory full state too large: some proxies' sets left out of push/pull",
			"left_out", len(leftOut), "bytes", len(fs), "max_entries", maxFullStateEntries)
	}
	return fs
}

// MergeRemoteState applies a peer's full state.
func (d *delegate) MergeRemoteState(b []byte, join bool) {
	c := d.c
	if len(b) == 0 {
		return
	}
	typ := messageType(b)
	if typ != typeFullState {
		c.metrics.messages.WithLabelValues(typ, outcomeIgnored).Inc()
		c.log.Debug("ignoring push/pull state of unknown type", "type_byte", firstByte(b), "bytes", len(b))
		return
	}
	fs, err := decodeFullState(b)
	if err != nil {
		c.metrics.messages.WithLabelValues(typ, outcomeInvalid).Inc()
		c.warnInvalid(typ, b, err)
		return
	}
	changed := false
	c.mu.Lock()
	for i := range fs.Origins {
		o := &fs.Origins[i]
		if c.dir.applyFull(o, c.minIncLocked(o.Origin)) {
			changed = true
		}
	}
	c.mu.Unlock()
	if changed {
		c.metrics.messages.WithLabelValues(typ, outcomeApplied).Inc()
		c.notify()
	} else {
		c.metrics.messages.WithLabelValues(typ, outcomeStale).Inc()
	}
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// warnInvalid logs a message that did not decode. memberlist does not
// tell a delegate who sent a message, so the log names the proxy the
// message claims to come from (a delta's origin, a full state's first
// set, which is its sender's own) and that proxy's gossip address, when
// those can be read. A delta may have been relayed by another proxy.
func (c *Cluster) warnInvalid(typ string, b []byte, err error) {
	origin := claimedOrigin(b)
	addr := ""
	if origin != "" {
		c.mu.Lock()
		if r := c.members[origin]; r != nil {
			addr = r.addr
		}
		c.mu.Unlock()
	}
	c.log.Warn("invalid tunnel directory message", "type", typ, "proxy", origin, "addr", addr, "bytes", len(b), "err", err)
}

// claimedOrigin reads the first proxy name of a delta or full state, or
// returns "".
func claimedOrigin(b []byte) string {
	if len(b) < 2 {
		return ""
	}
	r := reader{b: b[2:]}
	if b[0] == msgFullState {
		r.uvarint()
	}
	name := r.name()
	if r.err != nil {
		return ""
	}
	return name
}

// NotifyAlive refuses a member whose meta does not decode or names
// another proxy than its gossip node name. memberlist calls it for every
// alive message, including repeats, so each refusal is logged at Warn
// once and counted every time.
func (d *delegate) NotifyAlive(peer *memberlist.Node) error {
	c := d.c
	m, _, err := decodeMeta(peer.Meta)
	if err == nil && m.ID != peer.Name {
		err = fmt.Errorf("its meta names proxy %q", m.ID)
	}
	if err == nil {
		return nil
	}
	c.metrics.messages.WithLabelValues(typeMeta, outcomeInvalid).Inc()
	key := peer.Name + "\x00" + err.Error()
	c.mu.Lock()
	logged := c.refused[key]
	if !logged {
		if len(c.refused) >= 256 {
			clear(c.refused)
		}
		c.refused[key] = true
	}
	c.mu.Unlock()
	if !logged {
		c.log.Warn("refusing gossip member with bad metadata", "proxy", peer.Name, "addr", nodeAddr(peer), "err", err)
	}
	return fmt.Errorf("refused by proxy %s: %w", c.cfg.Meta.ID, err)
}

func nodeAddr(n *memberlist.Node) string {
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// NotifyJoin: a proxy came alive (new, or back from dead or left).
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	d.c.memberAlive(n, true)
}

// NotifyUpdate: an alive proxy's meta changed.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	d.c.memberAlive(n, false)
}

func (c *Cluster) memberAlive(n *memberlist.Node, joined bool) {
	if n.Name == c.cfg.Meta.ID {
		return
	}
	m, inc, err := decodeMeta(n.Meta)
	if err != nil {
		// NotifyAlive refuses such members, so this is not expected.
		c.log.Warn("gossip member with bad metadata", "proxy", n.Name, "addr", nodeAddr(n), "err", err)
		return
	}
	addr := nodeAddr(n)
	now := time.Now()
	c.mu.Lock()
	r := c.members[n.Name]
	if r == nil {
		r = &memberRec{}
		c.members[n.Name] = r
	}
	oldState, oldInc := r.meta.State, r.dirInc
	r.meta, r.dirInc, r.addr = m, inc, addr
	if r.health != HealthAlive {
		r.health, r.since, r.lastAck, r.suspect, r.leaving = HealthAlive, now, now, false, false
		c.numAlive.Add(1)
	}
	// A set from an older process of this proxy is gone with it: older
	// by start time, or (when the meta names a new process) any other
	// than the one it names. A set of a newer process that arrived before
	// its meta stays.
	if s := c.dir.others[n.Name]; s != nil && (s.ver.Inc < inc || oldInc != 0 && oldInc != inc && s.ver.Inc != inc) {
		delete(c.dir.others, n.Name)
	}
	c.mu.Unlock()
	switch {
	case joined:
		c.log.Info("proxy joined", "proxy", m.ID, "region", m.Region, "addr", addr, "state", m.State, "version", m.Version)
	case oldState != m.State:
		c.log.Info("proxy state changed", "proxy", m.ID, "region", m.Region, "addr", addr, "state", m.State)
	default:
		c.log.Debug("proxy metadata changed", "proxy", m.ID, "region", m.Region, "addr", addr)
	}
	c.notify()
}

// NotifyLeave: a proxy died or left.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	c := d.c
	if n.Name == c.cfg.Meta.ID {
		return
	}
	// n.State is not filled in by memberlist v0.6.0 (nodeState's own
	// State field shadows it), so a graceful leave is known from the
	// proxy's leave notice.
	c.mu.Lock()
	r := c.members[n.Name]
	if r == nil {
		c.mu.Unlock()
		return
	}
	h := HealthDead
	if r.leaving {
		h = HealthLeft
	}
	if r.health == HealthAlive {
		c.numAlive.Add(-1)
	}
	r.health, r.since, r.suspect, r.leaving = h, time.Now(), false, false
	region := r.meta.Region
	c.mu.Unlock()
	if h == HealthLeft {
		c.log.Info("proxy left", "proxy", n.Name, "region", region, "addr", nodeAddr(n))
	} else {
		c.log.Info("proxy failed", "proxy", n.Name, "region", region, "addr", nodeAddr(n))
	}
	c.notify()
}

// AckPayload: nothing rides on acks.
func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete records a direct probe's round trip.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	c := d.c
	rtt = max(rtt, time.Nanosecond) // 0 means unknown
	c.metrics.probeRTT.Observe(rtt.Seconds())
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.members[other.Name]
	if r == nil {
		return
	}
	if r.rtt == 0 {
		r.rtt = rtt
	} else {
		r.rtt = (3*r.rtt + rtt) / 4
	}
	r.lastAck = time.Now()
}
