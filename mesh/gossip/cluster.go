package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Health is how this proxy sees another.
type Health string

const (
	// HealthAlive: memberlist counts it alive and it answers our probes.
	HealthAlive Health = "alive"
	// HealthSuspect: memberlist still counts it alive, but this proxy has
	// had no direct probe ack from it within ProbeTimeout for longer than
	// two probe rounds (see Cluster.Members). Its tunnels still count.
	HealthSuspect Health = "suspect"
	// HealthDead: memberlist declared it failed.
	HealthDead Health = "dead"
	// HealthLeft: it left gracefully (Leave).
	HealthLeft Health = "left"
)

// Member is one proxy as this proxy sees it.
type Member struct {
	Meta
	Health     Health
	GossipAddr string // host:port
	// RTT is the smoothed round-trip time of this proxy's direct probes to
	// the member (EWMA, 1/4 weight to each new sample); 0 if unknown or
	// Self.
	RTT  time.Duration
	Self bool
}

// ErrClosed is returned by methods called after Shutdown.
var ErrClosed = errors.New("gossip cluster is shut down")

// Cluster is this proxy's membership in the mesh and its view of the
// tunnel directory. Create it with New; stop it with Shutdown.
type Cluster struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	ml      *memberlist.Memberlist
	keyring *memberlist.Keyring
	// queue holds directory deltas (own and relayed) for memberlist's
	// gossip rounds.
	queue *memberlist.TransmitLimitedQueue
	// localAddr is the advertised gossip address, fixed at New.
	localAddr string
	// maxDelta is the largest delta message that fits one gossip packet.
	maxDelta int

	ctx     context.Context // ends at Shutdown
	cancel  context.CancelFunc
	wg      sync.WaitGroup // run, notifier, sync and join loops
	kick    chan struct{}  // cap 1: a tunnel change opened a batch
	changed chan struct{}  // cap 1: OnChange is due
	syncReq chan struct{}  // cap 1: push/pull with every peer now
	// numAlive counts members alive or suspect, self included, for the
	// broadcast queue's retransmit limit (memberlist's NumMembers would
	// take its node lock from inside its own callbacks).
	numAlive atomic.Int64

	// lifeMu guards closed and is held around memberlist calls that must
	// not follow its Shutdown (Leave panics then).
	lifeMu  sync.Mutex
	closed  bool
	stopped chan struct{} // closed when Shutdown is done

	// mu guards the following fields. It is a leaf lock: memberlist calls
	// the delegate methods with its own locks held, so mu is never held
	// while calling into memberlist.
	mu        sync.Mutex
	meta      Meta   // own meta as last gossiped (Tunnels may lag)
	metaBytes []byte // encoded meta, returned by NodeMeta
	metaSent  time.Time
	left      bool
	members   map[string]*memberRec // other proxies, by ID
	dir       *directory
	refused   map[string]bool // refusals already logged at Warn
}

// memberRec is another proxy as memberlist's events and probes left it.
type memberRec struct {
	meta    Meta
	dirInc  uint64 // directory incarnation named in its meta
	addr    string
	health  Health    // alive, dead or left, from memberlist's events
	since   time.Time // when health last changed
	lastAck time.Time // last direct probe ack, or when it came alive
	rtt     time.Duration
	suspect bool // as of the last maintenance pass (for logs and OnChange)
	leaving bool // it sent a leave notice: its death is a leave
}

func (r *memberRec) healthAt(now time.Time, suspectAfter time.Duration) Health {
	if r.health == HealthAlive && now.Sub(r.lastAck) > suspectAfter {
		return HealthSuspect
	}
	return r.health
}

// New checks cfg, starts memberlist on cfg.BindAddr and, in the
// background, joins through cfg.Seeds. It returns without waiting for the
// join.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	// The directory incarnation is the start time: a restarted proxy's
	// counter starts again at 0 under a higher incarnation.
	inc := uint64(time.Now().UnixNano())
	metaBytes, err := encodeMeta(cfg.Meta, inc)
	if err != nil {
		return nil, err
	}
	kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip config: Keys: %w", err)
	}
	c := &Cluster{
		cfg:       cfg,
		log:       cfg.Logger.With("self", cfg.Meta.ID),
		keyring:   kr,
		kick:      make(chan struct{}, 1),
		changed:   make(chan struct{}, 1),
		syncReq:   make(chan struct{}, 1),
		stopped:   make(chan struct{}),
		meta:      cfg.Meta,
		metaBytes: metaBytes,
		metaSent:  time.Now(),
		members:   make(map[string]*memberRec),
		dir:       newDirectory(cfg.Meta.ID, inc),
		refused:   make(map[string]bool),
	}
	c.numAlive.Store(1)
	c.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(c.numAlive.Load()) },
		RetransmitMult: cfg.Timing.RetransmitMult,
	}
	c.metrics, err = newMetrics(cfg.Metrics, func() float64 { return float64(c.queue.NumQueued()) })
	if err != nil {
		return nil, err
	}
	mc := cfg.memberlistConfig(kr, &delegate{c})
	// The largest user message that fits a gossip packet: memberlist
	// puts messages in a compound packet (2 bytes of header, 2 a message)
	// with a 1-byte user-message tag, and encryption adds up to 45 bytes
	// (29 with the default encryption version).
	c.maxDelta = mc.UDPBufferSize - 2 - 45 - 2 - 1
	if cfg.WrapTransport != nil {
		// With port 0 the kernel picks a TCP port, and UDP may find it
		// taken: retry as memberlist does for its own transport (which a
		// wrapped one bypasses).
		tries := 1
		if mc.BindPort == 0 {
			tries = 10
		}
		var nt *memberlist.NetTransport
		var err error
		for range tries {
			nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort, Logger: mc.Logger})
			if err == nil || !strings.Contains(err.Error(), "address already in use") {
				break
			}
		}
		if err != nil {
			return nil, err
		}
		mc.Transport = cfg.WrapTransport(nt)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	ml, err := memberlist.Create(mc)
	if err != nil {
		c.cancel()
		if cfg.Metrics != nil {
			for _, col := range []prometheus.Collector{c.metrics.members, c.metrics.directoryEntries, c.metrics.messages, c.metrics.queue, c.metrics.probeRTT, c.metrics.joins, c.metrics.fullStateBytes} {
				cfg.Metrics.Unregister(col)
			}
		}
		return nil, fmt.Errorf("start gossip for proxy %s on %s: %w", cfg.Meta.ID, cfg.BindAddr, err)
	}
	c.ml = ml
	self := ml.LocalNode()
	c.localAddr = net.JoinHostPort(self.Addr.String(), strconv.Itoa(int(self.Port)))

	c.log.Info("gossip started", "addr", c.localAddr, "region", cfg.Meta.Region, "seeds", cfg.Seeds)
	c.wg.Add(3)
	go c.run()
	go c.notifier()
	go c.syncLoop()
	var seeds []string
	for _, s := range cfg.Seeds {
		if s != c.localAddr && s != cfg.BindAddr {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) > 0 {
		c.wg.Add(1)
		go c.joinLoop(seeds)
	}
	return c, nil
}

// LocalAddr returns the gossip address other proxies use for this one
// (host:port, the port resolved if BindAddr asked for 0).
func (c *Cluster) LocalAddr() string { return c.localAddr }

// Self returns this proxy as a Member; Tunnels is the current count.
func (c *Cluster) Self() Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.selfLocked()
}

func (c *Cluster) selfLocked() Member {
	m := Member{Meta: c.meta, Health: HealthAlive, GossipAddr: c.localAddr, Self: true}
	m.Tunnels = uint32(len(c.dir.own.nodes))
	if c.left {
		m.Health = HealthLeft
	}
	return m
}

// suspectAfter is how long without a direct probe ack makes an alive
// member suspect. memberlist probes peers round robin, shuffled each
// round, so the longest gap between two probes of one peer is about two
// rounds of N-1 intervals; one more interval lets the probe finish, and
// memberlist's health score stretches the interval when this proxy is
// itself slow.
func (c *Cluster) suspectAfter() time.Duration {
	n := max(int(c.numAlive.Load())-1, 1)
	scale := time.Duration(c.ml.GetHealthScore() + 1)
	return time.Duration(2*n+2) * c.cfg.Timing.ProbeInterval * scale
}

func (c *Cluster) member(id string, r *memberRec, now time.Time, suspectAfter time.Duration) Member {
	m := Member{Meta: r.meta, Health: r.healthAt(now, suspectAfter), GossipAddr: r.addr, RTT: r.rtt}
	m.ID = id
	return m
}

// Members returns every proxy this one knows, itself included, with the
// dead and left ones it still remembers, sorted by ID.
func (c *Cluster) Members() []Member {
	sa := c.suspectAfter()
	now := time.Now()
	c.mu.Lock()
	out := make([]Member, 0, len(c.members)+1)
	out = append(out, c.selfLocked())
	for id, r := range c.members {
		out = append(out, c.member(id, r, now, sa))
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// Member returns the proxy with this ID, if known.
func (c *Cluster) Member(id string) (Member, bool) {
	sa := c.suspectAfter()
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == c.meta.ID {
		return c.selfLocked(), true
	}
	r, ok := c.members[id]
	if !ok {
		return Member{}, false
	}
	return c.member(id, r, time.Now(), sa), true
}

// SetMeta changes this proxy's metadata with f and gossips it at once
// (if anything changed). f runs under the Cluster's lock: it must only
// edit the Meta. ID cannot change. Tunnels is kept by the Cluster from
// AddTunnel and RemoveTunnel and gossiped at most every 10 probe
// intervals; SetMeta ignores changes to it, so that calling SetMeta on
// every tunnel change costs nothing.
func (c *Cluster) SetMeta(f func(*Meta)) error {
	c.mu.Lock()
	m := c.meta
	f(&m)
	if m.ID != c.meta.ID {
		c.mu.Unlock()
		return fmt.Errorf("set gossip meta of proxy %s: ID cannot change (to %q)", c.meta.ID, m.ID)
	}
	m.Tunnels = c.meta.Tunnels
	if m == c.meta {
		c.mu.Unlock()
		return nil
	}
	if err := checkLocalMeta(&m); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("set gossip meta of proxy %s: %w", c.meta.ID, err)
	}
	b, err := encodeMeta(m, c.dir.own.ver.Inc)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	old := c.meta
	c.meta, c.metaBytes, c.metaSent = m, b, time.Now()
	c.mu.Unlock()

	if err := c.updateNode(); err != nil {
		return err
	}
	if old.State != m.State {
		c.log.Info("proxy state changed", "proxy", m.ID, "region", m.Region, "state", m.State)
	}
	c.notify()
	return nil
}

// updateNode gossips the current meta (memberlist reads it back through
// NodeMeta). memberlist's UpdateNode queues the alive broadcast, then
// waits until it has been retransmitted in full, seconds later, or the
// timeout passes; only the queuing matters here, so the wait is cut
// short and its timeout error dropped.
func (c *Cluster) updateNode() error {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.mu.Lock()
	left := c.left
	c.mu.Unlock()
	if left {
		// memberlist forgets a node that left, itself included; there is
		// no one to tell.
		return nil
	}
	// memberlist's UpdateNode dereferences its own entry without a check,
	// and panicked in a test run when that entry was gone (CI, once):
	// re-advertise only while this node is among the members, and turn a
	// panic that still slips through into an error.
	if !slices.ContainsFunc(c.ml.Members(), func(n *memberlist.Node) bool { return n.Name == c.cfg.Meta.ID }) {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("re-advertising this proxy's gossip metadata failed inside memberlist", "panic", r)
		}
	}()
	_ = c.ml.UpdateNode(time.Nanosecond)
	return nil
}

// AddTunnel records that this proxy holds a tunnel to node. Changes made
// within 50 ms go out together as one delta. An invalid node name, or a
// set already at MaxNodesPerOrigin, is logged and ignored.
func (c *Cluster) AddTunnel(node string) {
	if err := identity.CheckName(node); err != nil {
		c.log.Warn("not adding tunnel to the directory: bad node name", "node", node, "err", err)
		return
	}
	c.mu.Lock()
	changed, full := c.dir.add(node)
	c.mu.Unlock()
	if full {
		c.log.Warn("not adding tunnel to the directory: this proxy's set is full", "node", node, "max", MaxNodesPerOrigin)
	}
	if changed {
		c.kickFlush()
		c.notify()
	}
}

// RemoveTunnel records that this proxy no longer holds a tunnel to node.
func (c *Cluster) RemoveTunnel(node string) {
	c.mu.Lock()
	changed := c.dir.remove(node)
	c.mu.Unlock()
	if changed {
		c.kickFlush()
		c.notify()
	}
}

// countsLocked reports whether origin's set counts: the origin is alive
// or suspect, and the set is from its current process.
func (c *Cluster) countsLocked(origin string, s *originSet) bool {
	r := c.members[origin]
	return r != nil && r.health == HealthAlive && s.ver.Inc >= r.dirInc
}

// minIncLocked is the directory incarnation origin's meta names, 0 if
// unknown.
func (c *Cluster) minIncLocked(origin string) uint64 {
	if r := c.members[origin]; r != nil {
		return r.dirInc
	}
	return 0
}

// Holders returns the IDs of the alive or suspect proxies that hold a
// tunnel to node, this one included, sorted.
func (c *Cluster) Holders(node string) []string {
	c.mu.Lock()
	var out []string
	if _, ok := c.dir.own.nodes[node]; ok {
		out = append(out, c.meta.ID)
	}
	for o, s := range c.dir.others {
		if _, ok := s.nodes[node]; ok && c.countsLocked(o, s) {
			out = append(out, o)
		}
	}
	c.mu.Unlock()
	slices.Sort(out)
	return out
}

// Directory returns node -> IDs of the proxies holding it (as Holders),
// for status pages and tests.
func (c *Cluster) Directory() map[string][]string {
	c.mu.Lock()
	out := make(map[string][]string, len(c.dir.own.nodes))
	for n := range c.dir.own.nodes {
		out[n] = append(out[n], c.meta.ID)
	}
	for o, s := range c.dir.others {
		if !c.countsLocked(o, s) {
			continue
		}
		for n := range s.nodes {
			out[n] = append(out[n], o)
		}
	}
	c.mu.Unlock()
	for _, hs := range out {
		slices.Sort(hs)
	}
	return out
}

// InstallKey adds k to this proxy's gossip keyring (to decrypt with).
// Rotation is per proxy: install the new key everywhere, then UseKey it
// everywhere, then RemoveKey the old one everywhere.
func (c *Cluster) InstallKey(k []byte) error {
	if err := c.keyring.AddKey(k); err != nil {
		return fmt.Errorf("install gossip key: %w", err)
	}
	return nil
}

// UseKey makes an installed key the primary one (to encrypt with).
func (c *Cluster) UseKey(k []byte) error {
	if err := c.keyring.UseKey(k); err != nil {
		return fmt.Errorf("use gossip key: %w", err)
	}
	return nil
}

// RemoveKey removes a key that is not the primary one.
func (c *Cluster) RemoveKey(k []byte) error {
	if err := c.keyring.RemoveKey(k); err != nil {
		return fmt.Errorf("remove gossip key: %w", err)
	}
	return nil
}

// Leave tells the mesh this proxy is going, and waits up to timeout
// (DefaultLeaveTimeout if ≤ 0) for the message to go out. Peers mark it
// left and stop counting its tunnels at once. Call Shutdown after.
func (c *Cluster) Leave(timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultLeaveTimeout
	}
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.closed {
		return ErrClosed
	}
	deadline := time.Now().Add(timeout)
	c.mu.Lock()
	c.left = true
	notice := encodeLeave(&leaveNotice{Origin: c.meta.ID, Inc: c.dir.own.ver.Inc})
	c.mu.Unlock()
	c.notify()
	// The notice goes first, so peers know the death that follows is a
	// leave; memberlist's leave message would otherwise replace nothing
	// of ours but could arrive first. Wait until the notice has been
	// sent its full number of times, or half the timeout.
	sent := make(chan struct{})
	c.queue.QueueBroadcast(&noticeBroadcast{msg: notice, sent: sent})
	if c.numAlive.Load() > 1 {
		t := time.NewTimer(timeout / 2)
		select {
		case <-sent:
		case <-t.C:
		}
		t.Stop()
	}
	if err := c.ml.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("leave the gossip mesh as %s: %w (peers will see a failure instead)", c.cfg.Meta.ID, err)
	}
	c.log.Info("left the gossip mesh")
	return nil
}

// Shutdown stops gossip without a goodbye (peers will notice a failure;
// call Leave first for a graceful exit) and waits for the Cluster's
// goroutines. A join attempt in progress may hold it up to the TCP
// timeout (25 probe intervals). It is safe to call more than once.
func (c *Cluster) Shutdown() error {
	c.lifeMu.Lock()
	if c.closed {
		c.lifeMu.Unlock()
		<-c.stopped
		return nil
	}
	c.closed = true
	c.cancel()
	err := c.ml.Shutdown()
	// Unlock before waiting: the run loop may be about to take lifeMu to
	// gossip its meta, and will find closed set.
	c.lifeMu.Unlock()
	c.wg.Wait()
	close(c.stopped)
	c.log.Info("gossip stopped")
	if err != nil {
		return fmt.Errorf("shut down gossip of proxy %s: %w", c.cfg.Meta.ID, err)
	}
	return nil
}

func (c *Cluster) kickFlush() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Cluster) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// notifier calls OnChange, one call at a time, after changes.
func (c *Cluster) notifier() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.changed:
			if c.cfg.OnChange != nil {
				c.cfg.OnChange()
			}
		}
	}
}

// run owns the batch timer and the periodic maintenance.
func (c *Cluster) run() {
	defer c.wg.Done()
	tick := time.NewTicker(c.cfg.Timing.ProbeInterval)
	defer tick.Stop()
	batch := time.NewTimer(batchWindow)
	batch.Stop()
	defer batch.Stop()
	armed := false
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.kick:
			if !armed {
				batch.Reset(batchWindow)
				armed = true
			}
		case <-batch.C:
			armed = false
			c.flush()
		case <-tick.C:
			c.maintain()
		}
	}
}

// flush sends the batched tunnel changes as deltas.
func (c *Cluster) flush() {
	c.mu.Lock()
	n := len(c.dir.pending)
	msgs, jumped := c.dir.flush(c.maxDelta)
	c.mu.Unlock()
	if jumped {
		c.log.Info("tunnel directory change too big for deltas: pushing full state to every peer", "changes", n)
		c.requestSync()
	}
	c.queueBroadcasts(msgs...)
}

func (c *Cluster) requestSync() {
	select {
	case c.syncReq <- struct{}{}:
	default:
	}
}

// syncLoop does a push/pull with every live peer when asked: after a
// directory change too big for deltas, so that peers need not wait for
// their next periodic push/pull (and the one after, to hear it second
// hand). memberlist's Join is its way to push/pull on demand.
func (c *Cluster) syncLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.syncReq:
		}
		c.mu.Lock()
		var addrs []string
		for _, r := range c.members {
			if r.health == HealthAlive {
				addrs = append(addrs, r.addr)
			}
		}
		c.mu.Unlock()
		if len(addrs) == 0 {
			continue
		}
		start := time.Now()
		n, err := c.ml.Join(addrs)
		c.log.Debug("pushed the tunnel directory to peers", "peers", n, "of", len(addrs), "took", time.Since(start), "err", err)
	}
}

// broadcast is a directory delta in memberlist's broadcast queue. Each is
// unique (UniqueBroadcast): a newer delta never replaces an older one,
// since both are needed.
type broadcast []byte

func (b broadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b broadcast) Message() []byte                       { return b }
func (b broadcast) Finished()                             {}
func (b broadcast) UniqueBroadcast()                      {}

var _ memberlist.UniqueBroadcast = broadcast(nil)

// noticeBroadcast is a leave notice; sent is closed once it has been
// sent its full number of times.
type noticeBroadcast struct {
	msg  []byte
	sent chan struct{}
	once sync.Once
}

func (b *noticeBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *noticeBroadcast) Message() []byte                       { return b.msg }
func (b *noticeBroadcast) Finished()                             { b.once.Do(func() { close(b.sent) }) }
func (b *noticeBroadcast) UniqueBroadcast()                      {}

func (c *Cluster) queueBroadcasts(msgs ...[]byte) {
	if len(msgs) == 0 {
		return
	}
	for _, m := range msgs {
		c.queue.QueueBroadcast(broadcast(m))
	}
	if c.queue.NumQueued() > maxQueuedBroadcasts {
		c.queue.Prune(maxQueuedBroadcasts)
	}
}

// maintain runs every probe interval: it notices suspects, forgets
// proxies dead for long and their sets, refreshes the gauges and
// gossips a changed tunnel count.
func (c *Cluster) maintain() {
	now := time.Now()
	sa := c.suspectAfter()
	type event struct {
		msg string
		m   Member
	}
	var events []event
	changed, sendMeta := false, false
	health := map[Health]int{}

	c.mu.Lock()
	health[c.selfLocked().Health]++
	alive := int64(1)
	for id, r := range c.members {
		if (r.health == HealthDead || r.health == HealthLeft) && now.Sub(r.since) > c.cfg.Timing.forgetAfter() {
			delete(c.members, id)
			changed = true
			continue
		}
		h := r.healthAt(now, sa)
		health[h]++
		if r.health == HealthAlive {
			alive++
		}
		if s := h == HealthSuspect; s != r.suspect {
			r.suspect = s
			changed = true
			msg := "proxy suspect: no probe ack"
			if !s {
				msg = "proxy answers probes again"
			}
			events = append(events, event{msg, c.member(id, r, now, sa)})
		}
	}
	c.numAlive.Store(alive)
	entries := len(c.dir.own.nodes)
	for o, s := range c.dir.others {
		switch {
		case c.countsLocked(o, s):
			s.orphanSince = time.Time{}
			entries += len(s.nodes)
		case s.orphanSince.IsZero():
			s.orphanSince = now
		case now.Sub(s.orphanSince) > c.cfg.Timing.forgetAfter():
			delete(c.dir.others, o)
		}
	}
	if n := uint32(len(c.dir.own.nodes)); n != c.meta.Tunnels && now.Sub(c.metaSent) >= c.cfg.Timing.metaEvery() {
		m := c.meta
		m.Tunnels = n
		if b, err := encodeMeta(m, c.dir.own.ver.Inc); err == nil {
			c.meta, c.metaBytes, c.metaSent = m, b, now
			sendMeta = true
		}
	}
	c.mu.Unlock()

	for _, e := range events {
		c.log.Info(e.msg, "proxy", e.m.ID, "region", e.m.Region, "addr", e.m.GossipAddr)
	}
	for _, h := range []Health{HealthAlive, HealthSuspect, HealthDead, HealthLeft} {
		c.metrics.members.WithLabelValues(string(h)).Set(float64(health[h]))
	}
	c.metrics.directoryEntries.Set(float64(entries))
	if sendMeta {
		_ = c.updateNode()
	}
	if changed {
		c.notify()
	}
}

// joinLoop joins the mesh through seeds, retrying with jittered
// exponential backoff until a seed answers, a peer joins us, or Shutdown.
func (c *Cluster) joinLoop(seeds []string) {
	defer c.wg.Done()
	wait := c.cfg.Timing.joinBackoff()
	for attempt := 1; ; attempt++ {
		if c.ctx.Err() != nil {
			return
		}
		if attempt > 1 && c.ml.NumMembers() > 1 {
			c.log.Info("joined the gossip mesh through a peer that reached this proxy first", "seeds", seeds)
			return
		}
		n, err := c.ml.Join(seeds)
		if err == nil && n > 0 {
			c.metrics.joins.WithLabelValues(joinOK).Inc()
			c.log.Info("joined the gossip mesh", "seeds", seeds, "reached", n, "attempt", attempt)
			return
		}
		c.metrics.joins.WithLabelValues(joinFailed).Inc()
		if c.ctx.Err() != nil {
			return
		}
		d := wait/2 + rand.N(wait/2+1)
		c.log.Warn("cannot join the gossip mesh yet: check Seeds, the network and that every proxy has the same gossip key",
			"seeds", seeds, "attempt", attempt, "retry_in", d.Round(time.Millisecond), "err", err)
		t := time.NewTimer(d)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, maxJoinBackoff)
	}
}
