package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// Candidate is a proxy the agent may hold a tunnel to.
type Candidate struct {
	ID       string // proxy id
	Addr     string // its tunnel address host:port
	Draining bool   // the proxy is leaving: move off it
}

const (
	// discoverTimeout bounds one call of Config.Discover.
	discoverTimeout = 10 * time.Second
	// probeTimeout bounds one call of Config.Probe; a proxy that does not
	// answer within it ranks with the failed probes, last.
	probeTimeout = 2 * time.Second
	// maxProbes is how many probes run at once: a mesh of a hundred
	// proxies should not cost a node a hundred sockets at once.
	maxProbes = 16
	// failAttempts failed attempts in a row make a slot failing, whatever
	// FailoverAfter says.
	failAttempts = 3
	// maxReplaceDelay bounds the random delay before a replacement tunnel's
	// first attempt (see "Thundering herds" in the package comment).
	maxReplaceDelay = time.Second
	// minDiscoverGap is the least time between two calls of Discover (or
	// RefreshInterval, if shorter): tunnels going down in a burst, or a
	// seed refused on every retry, ask once, not once each.
	minDiscoverGap = time.Second
	// refreshJitter spreads RefreshInterval by ±20%.
	refreshJitter = 0.2
)

// ranked is a candidate with the result of its probe.
type ranked struct {
	Candidate
	rtt      time.Duration
	probeErr error // the probe failed; never set for draining candidates, which are not probed
}

// discovery is the outcome of one Discover and its probes.
type discovery struct {
	cands []ranked // nearest first
	err   error
}

// rehomer is the state of the re-homing loop (Agent.rehome). Only that
// goroutine uses it; the slots it changes are guarded by Agent.mu.
type rehomer struct {
	a  *Agent
	rs runState
	// cands are the proxies from the last successful Discover, nearest
	// first; nil until one succeeded, and until then the agent keeps its
	// seeds as they are.
	cands  []ranked
	byID   map[string]int // index in cands
	byAddr map[string]int
	// avoid holds proxies whose slot was given up as failing: until the
	// time given they rank after every other candidate, so that the agent
	// does not pick them right back.
	avoid   map[string]time.Time
	lastErr string // the Discover failure last logged at Warn level
	seenUp  bool   // a tunnel has come up during this Run
}

// rehome runs while Run does, when Config.Discover is set: it calls
// Discover (at start, as soon as a tunnel is up, every RefreshInterval and
// after a tunnel goes down) and moves the slots toward ConnectionCount
// proxies (reconcile). Tunnel goroutines wake it through a.wake.
func (a *Agent) rehome(rs runState) {
	ctx := rs.ctx
	r := &rehomer{a: a, rs: rs, avoid: make(map[string]time.Time)}
	results := make(chan discovery, 1) // one Discover in flight at most, so a send never blocks
	var discovering sync.WaitGroup
	defer discovering.Wait()
	gap := min(minDiscoverGap, a.cfg.RefreshInterval)
	want, inFlight := true, false // at start
	var lastStart time.Time
	refresh := time.NewTimer(jitter(a.cfg.RefreshInterval, refreshJitter))
	defer refresh.Stop()
	check := time.NewTimer(time.Hour)
	defer check.Stop()
	for {
		a.mu.Lock()
		up, down := a.sawUp, a.sawDown
		a.sawUp, a.sawDown = false, false
		a.mu.Unlock()
		if down || (up && !r.seenUp) {
			want = true
		}
		r.seenUp = r.seenUp || up

		// Reconcile before starting a Discover: once call n+1 has started,
		// the answer of call n has been acted on.
		next := r.reconcile()
		if want && !inFlight {
			if at := lastStart.Add(gap); time.Now().Before(at) {
				if next.IsZero() || at.Before(next) {
					next = at
				}
			} else {
				want, inFlight, lastStart = false, true, time.Now()
				discovering.Go(func() { results <- a.discover(ctx) })
			}
		}
		check.Stop()
		if !next.IsZero() {
			check.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		case <-check.C:
		case <-refresh.C:
			want = true
			refresh.Reset(jitter(a.cfg.RefreshInterval, refreshJitter))
		case d := <-results:
			inFlight = false
			r.update(d)
		}
	}
}

// update takes the outcome of a Discover. A failure keeps the candidates
// (and so the tunnels) the agent has; it is logged once per change, like
// tunnel failures.
func (r *rehomer) update(d discovery) {
	log := r.a.log
	if d.err != nil {
		if msg := d.err.Error(); msg != r.lastErr {
			log.Warn("cannot discover proxies; keeping the current tunnels", "err", d.err)
			r.lastErr = msg
		} else {
			log.Debug("cannot discover proxies; keeping the current tunnels", "err", d.err)
		}
		return
	}
	if r.lastErr != "" {
		log.Info("discovering proxies works again", "proxies", len(d.cands))
		r.lastErr = ""
	}
	r.cands = d.cands
	r.byID = make(map[string]int, len(d.cands))
	r.byAddr = make(map[string]int, len(d.cands))
	for i, c := range d.cands {
		r.byID[c.ID] = i
		if _, ok := r.byAddr[c.Addr]; !ok {
			r.byAddr[c.Addr] = i
		}
	}
	if log.Enabled(context.Background(), slog.LevelDebug) {
		var b strings.Builder
		for i, c := range d.cands {
			if i > 0 {
				b.WriteString(" ")
			}
			switch {
			case c.Draining:
				fmt.Fprintf(&b, "%s(draining)", c.ID)
			case c.probeErr != nil:
				fmt.Fprintf(&b, "%s(unreachable)", c.ID)
			default:
				fmt.Fprintf(&b, "%s(%v)", c.ID, c.rtt.Round(100*time.Microsecond))
			}
		}
		log.Debug("discovered proxies", "ranked", b.String())
	}
}

// discover calls Config.Discover, checks the answer, probes the candidates
// and ranks them.
func (a *Agent) discover(ctx context.Context) discovery {
	dctx, cancel := context.WithTimeout(ctx, discoverTimeout)
	defer cancel()
	cs, err := a.cfg.Discover(dctx)
	if err != nil {
		return discovery{err: fmt.Errorf("discover proxies: %w", err)}
	}
	var out []ranked
	seen := make(map[string]bool)
	var bad []string
	for _, c := range cs {
		if c.ID == "" {
			bad = append(bad, fmt.Sprintf("a proxy at %q has no ID", c.Addr))
			continue
		}
		if _, _, err := splitHostPort(c.Addr); err != nil {
			bad = append(bad, fmt.Sprintf("proxy %s: %v", c.ID, err))
			continue
		}
		if seen[c.ID] {
			continue // the first address listed for a proxy wins
		}
		seen[c.ID] = true
		out = append(out, ranked{Candidate: c})
	}
	if len(out) == 0 {
		// An empty list is a broken answer, not a mesh without proxies
		// (some proxy answered it): acting on it would drop every tunnel.
		if len(bad) > 0 {
			return discovery{err: fmt.Errorf("discover proxies: no usable proxy in the answer: %s", strings.Join(bad, "; "))}
		}
		return discovery{err: errors.New("discover proxies: the answer lists no proxy")}
	}
	if len(bad) > 0 {
		a.log.Debug("ignoring unusable proxies in the discovery answer", "problems", strings.Join(bad, "; "))
	}
	a.probeAll(ctx, out)
	rankCandidates(out)
	return discovery{cands: out}
}

// probeAll measures the round trip to every candidate that is not
// draining, at most maxProbes at once.
func (a *Agent) probeAll(ctx context.Context, cs []ranked) {
	sem := make(chan struct{}, maxProbes)
	var wg sync.WaitGroup
	for i := range cs {
		if cs[i].Draining {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			rtt, err := a.cfg.Probe(pctx, cs[i].Addr)
			cs[i].rtt, cs[i].probeErr = max(rtt, 0), err
		})
	}
	wg.Wait()
}

// rankCandidates sorts cs nearest first: candidates that answered their
// probe by round trip, then those whose probe failed, then the draining.
// Ties are broken at random, per agent and per refresh: agents whose probes
// all failed, or that measure the same round trip, must not all pick the
// first proxy in the list.
func rankCandidates(cs []ranked) {
	rand.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
	slices.SortStableFunc(cs, func(x, y ranked) int {
		if x.Draining != y.Draining {
			return boolCompare(x.Draining, y.Draining)
		}
		if xf, yf := x.probeErr != nil, y.probeErr != nil; xf != yf {
			return boolCompare(xf, yf)
		}
		return cmp.Compare(x.rtt, y.rtt)
	})
}

// boolCompare orders false before true.
func boolCompare(x, y bool) int {
	switch {
	case x == y:
		return 0
	case x:
		return 1
	}
	return -1
}

// jitter returns d spread uniformly by ±f.
func jitter(d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
}

// tcpProbe is the default Config.Probe: the time a TCP connect to addr
// takes. Proxies serve TLS on TCP on their tunnel port, so the connect is
// one round trip to the proxy itself, with no credentials and no TLS.
func tcpProbe(ctx context.Context, addr string) (time.Duration, error) {
	var d net.Dialer
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	rtt := time.Since(start)
	c.Close()
	return rtt, nil
}

// reconcile moves the slots toward ConnectionCount distinct, listed,
// non-draining proxies, without churn: it only fills vacancies and closes
// what is surplus (see "Re-homing" in the package comment). It returns when
// it wants to look again, the earliest FailoverAfter deadline of a slot
// without a tunnel, or zero.
func (r *rehomer) reconcile() time.Time {
	if r.cands == nil {
		return time.Time{} // nothing known beyond the seeds: keep them
	}
	a := r.a
	n := a.cfg.ConnectionCount
	now := time.Now()
	for id, until := range r.avoid {
		if !now.Before(until) {
			delete(r.avoid, id)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()

	// 0. A proxy that sent a Drain message is draining, whatever the last
	// discovery said.
	for id, until := range a.drainHints {
		if !now.Before(until) {
			delete(a.drainHints, id)
			continue
		}
		if i, ok := r.byID[id]; ok {
			r.cands[i].Draining = true
		}
	}

	// 1. Slots whose proxy left the list (dead) or is draining are
	// vacated: closed at once if they have no tunnel, else kept until a
	// replacement is up and nothing uses them (step 6).
	type vacancy struct {
		id, addr, reason string
	}
	var vacated []vacancy // to name in the re-homing log line
	for _, s := range slices.Clone(a.slots) {
		id := r.idOf(s)
		if id == "" {
			continue // a seed never connected, at an unlisted address: see failing
		}
		i, listed := r.byID[id]
		switch {
		case !listed && s.retire == "":
			r.vacateLocked(s, rehomeDead)
			vacated = append(vacated, vacancy{id, s.addr, rehomeDead})
		case listed && r.cands[i].Draining && s.retire == "":
			r.vacateLocked(s, rehomeDraining)
			vacated = append(vacated, vacancy{id, s.addr, rehomeDraining})
		case listed && r.cands[i].Draining && s.retire != "":
			s.status.Draining = true // was surplus; its proxy now drains too
		}
	}

	// 2. A slot being replaced whose tunnel is gone is done: it does not
	// reconnect (keepTunnel), and the proxy may have closed it itself.
	for _, s := range slices.Clone(a.slots) {
		if s.retire != "" && s.live == nil {
			r.removeLocked(s, s.retire)
		}
	}

	// 3. Two slots to one proxy (two addresses leading to it) count once:
	// keep the better.
	keep := make(map[string]*slot)
	for _, s := range r.activeLocked() {
		id := r.idOf(s)
		if id == "" {
			continue
		}
		k, ok := keep[id]
		if !ok {
			keep[id] = s
			continue
		}
		if r.compare(s, k, now) < 0 {
			keep[id], s, k = s, k, s
		}
		a.log.Info("closing a second tunnel to the same proxy once it is idle", "proxy", id, "proxy_addr", s.addr, "kept_addr", k.addr)
		r.vacateLocked(s, rehomeSurplus)
	}

	// 4. More slots than ConnectionCount (seeds beyond it): keep the best.
	// One still connecting is judged once it is up or failing: closing it
	// now would keep a far seed that happened to connect first over a
	// near one a moment behind.
	if act := r.activeLocked(); len(act) > n {
		slices.SortStableFunc(act, func(x, y *slot) int { return r.compare(x, y, now) })
		for _, s := range act[n:] {
			if s.live == nil && !r.failingLocked(s, now) {
				continue
			}
			a.log.Info("closing a tunnel beyond ConnectionCount once it is idle", "proxy", r.idOf(s), "proxy_addr", s.addr, "connection_count", n)
			r.vacateLocked(s, rehomeSurplus)
		}
	}

	// 5. Fill vacancies, and give a failing slot's place to another proxy
	// if there is one (else it keeps retrying). Never touch a healthy
	// slot: a nearer proxy appearing moves nothing.
	var failing []*slot
	healthy := 0
	for _, s := range r.activeLocked() {
		if r.failingLocked(s, now) {
			failing = append(failing, s)
		} else {
			healthy++
		}
	}
	slices.SortStableFunc(failing, func(x, y *slot) int { return x.downSince.Compare(y.downSince) })
	for healthy < n {
		c, holder := r.pickLocked()
		if c == nil {
			break
		}
		from := vacancy{}
		if healthy+len(failing) >= n {
			// No open place: the new tunnel takes a failing slot's. c
			// was picked while that slot still held its proxy, so it
			// is another one.
			s := failing[0]
			failing = failing[1:]
			from = vacancy{r.idOf(s), s.addr, rehomeFailing}
			a.metrics.rehomes.WithLabelValues(rehomeFailing).Inc()
			r.removeLocked(s, rehomeFailing)
			if from.id != "" {
				r.avoid[from.id] = now.Add(a.cfg.RefreshInterval)
			}
		} else if len(vacated) > 0 {
			from, vacated = vacated[0], vacated[1:]
		}
		msg, log := "adding a tunnel", a.log.With("proxy", c.ID, "proxy_addr", c.Addr)
		if from.reason != "" {
			msg, log = "re-homing tunnel", log.With("reason", from.reason, "from_proxy", from.id, "from_addr", from.addr)
		}
		if holder != nil {
			holder.retire = ""
			holder.status.Draining = false
			log.Info(msg + ": keeping the tunnel it was about to close")
		} else {
			// A random delay, so that agents leaving the same proxy
			// do not all arrive at the next one in the same instant.
			delay := time.Duration(rand.Int64N(int64(maxReplaceDelay)))
			s := a.newSlot(c.Addr, c.ID, a.cfg.Now())
			a.slots = append(a.slots, s)
			a.startLocked(r.rs, s, delay)
			log.Info(msg, "rtt", c.rtt, "delay", delay.Round(time.Millisecond))
		}
		healthy++
	}
	for _, v := range vacated {
		a.log.Warn("no other proxy to move the tunnel to; will look again at the next refresh", "reason", v.reason, "proxy", v.id, "proxy_addr", v.addr)
	}

	// 6. Close the slots being replaced once the agent holds tunnels to
	// ConnectionCount proxies (or to this slot's proxy through another
	// slot) and no dialed connection is open on them.
	up := 0
	upIDs := make(map[string]bool)
	for _, s := range r.activeLocked() {
		if s.live != nil {
			up++
			upIDs[r.idOf(s)] = true
		}
	}
	for _, s := range slices.Clone(a.slots) {
		if s.retire == "" || s.live == nil || s.openLocked() > 0 {
			continue
		}
		if up >= n || upIDs[r.idOf(s)] {
			a.log.Info("closing the tunnel being replaced: its replacement is up and no connection uses it", "reason", s.retire, "proxy", r.idOf(s), "proxy_addr", s.addr)
			r.removeLocked(s, s.retire)
		}
	}

	var next time.Time
	for _, s := range r.activeLocked() {
		if s.live != nil {
			continue
		}
		if at := s.downSince.Add(a.cfg.FailoverAfter); at.After(now) && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next
}

// idOf returns the proxy slot s leads to: the one its last HelloAck named,
// else the one it was opened for, else the listed proxy at its address; ""
// for a seed never connected at an unlisted address. a.mu is held.
func (r *rehomer) idOf(s *slot) string {
	switch {
	case s.status.ProxyID != "":
		return s.status.ProxyID
	case s.wantID != "":
		return s.wantID
	}
	if i, ok := r.byAddr[s.addr]; ok {
		return r.cands[i].ID
	}
	return ""
}

// activeLocked returns the slots the agent means to keep, oldest first.
func (r *rehomer) activeLocked() []*slot {
	var out []*slot
	for _, s := range r.a.slots {
		if s.retire == "" {
			out = append(out, s)
		}
	}
	return out
}

// failingLocked reports whether slot s should give its place to another
// proxy: it has no tunnel, and has had none for FailoverAfter or has failed
// failAttempts attempts in a row.
func (r *rehomer) failingLocked(s *slot, now time.Time) bool {
	return s.live == nil && (now.Sub(s.downSince) >= r.a.cfg.FailoverAfter || s.status.Failures >= failAttempts)
}

// compare orders slots best first, for deciding which to keep: connected,
// then not failing, then the nearer proxy, then (for two slots to one
// proxy) the one at the proxy's listed address. Equal slots keep their
// order (the older first).
func (r *rehomer) compare(x, y *slot, now time.Time) int {
	if xu, yu := x.live != nil, y.live != nil; xu != yu {
		return boolCompare(!xu, !yu)
	}
	if xf, yf := r.failingLocked(x, now), r.failingLocked(y, now); xf != yf {
		return boolCompare(xf, yf)
	}
	rank := func(s *slot) (int, int) {
		i, ok := r.byID[r.idOf(s)]
		if !ok {
			return len(r.cands), 1
		}
		if r.cands[i].Addr == s.addr {
			return i, 0
		}
		return i, 1
	}
	xi, xa := rank(x)
	yi, ya := rank(y)
	return cmp.Or(cmp.Compare(xi, yi), cmp.Compare(xa, ya))
}

// pickLocked returns the best candidate to open a tunnel to: not draining,
// not held by a slot the agent keeps, and preferably not avoided. If a slot
// being closed as surplus leads to it, that slot is returned too, to be
// kept instead of opening another tunnel.
func (r *rehomer) pickLocked() (*ranked, *slot) {
	held := make(map[string]bool)
	addrs := make(map[string]bool)
	retiring := make(map[string]*slot)
	for _, s := range r.a.slots {
		addrs[s.addr] = true
		id := r.idOf(s)
		switch {
		case id == "":
		case s.retire == "":
			held[id] = true
		case s.live != nil:
			retiring[id] = s
		}
	}
	var best *ranked
	var holder *slot
	for i := range r.cands {
		c := &r.cands[i]
		h := retiring[c.ID]
		// A slot's address is its Hello.Slot: two slots at one address
		// would replace each other at the proxy.
		if c.Draining || held[c.ID] || (h == nil && addrs[c.Addr]) {
			continue
		}
		if _, avoided := r.avoid[c.ID]; !avoided {
			return c, h
		}
		if best == nil {
			best, holder = c, h
		}
	}
	return best, holder
}

// vacateLocked gives up slot s for reason: at once if it has no tunnel,
// else once its replacement is up and it is idle (reconcile, step 6).
func (r *rehomer) vacateLocked(s *slot, reason string) {
	r.a.metrics.rehomes.WithLabelValues(reason).Inc()
	if s.live == nil {
		r.removeLocked(s, reason)
		return
	}
	s.retire = reason
	s.status.Draining = reason == rehomeDraining
}

// removeLocked stops slot s and drops it from the agent's slots.
func (r *rehomer) removeLocked(s *slot, reason string) {
	if s.cancel != nil {
		s.cancel(&rehomeCause{reason: reason})
	}
	r.a.slots = slices.DeleteFunc(r.a.slots, func(x *slot) bool { return x == s })
}
