package main

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/mesh/gossip"
	"jumpgate.dev/jumpgate/mesh/ingress"
	"jumpgate.dev/jumpgate/mesh/route"
	tserver "jumpgate.dev/jumpgate/tunnel/server"
)

// Drain defaults. A drain is bounded by its timeout; its first phase, the
// agents' move, by rehomeWait (at most half the timeout).
const (
	defaultDrainTimeout = 5 * time.Minute
	rehomeWait          = 15 * time.Second
	movedWait           = 5 * time.Second
	drainPoll           = 100 * time.Millisecond
	// Sessions on this proxy's tunnels are moved in batches (see
	// tserver.CloseStreams), as ingress moves its clients.
	moveBatch = 16
	moveGap   = 25 * time.Millisecond
)

// drainer runs a proxy's drain: `jgctl proxy drain` (POST /v1/drain) or
// SIGTERM with proxy.drain_timeout set.
//
//  1. rehoming: gossip "draining" (discovery sends no one here any more),
//     refuse new dials with a pointer to a healthy proxy, refuse new
//     tunnels, and tell agents (tunnel protocol 2) to open tunnels to
//     other proxies. Wait until every node held here is also held
//     elsewhere, or rehomeWait.
//  2. moving: ask resumable clients to move (ingress.MoveResumable); once
//     they have (or movedWait), close the tunnels, so sessions that reach
//     their node through this proxy from elsewhere move too.
//  3. waiting: until no session is left or the deadline.
//  4. done: the process exits (run's normal shutdown).
type drainer struct {
	id   string
	log  *slog.Logger
	tsrv *tserver.Server
	ing  *ingress.Server
	pm   *proxyMesh
	disc *discovery
	kick func() // report presence now
	exit func() // end the process

	phaseGauge *prometheus.GaugeVec
	remaining  *prometheus.GaugeVec

	redirects atomic.Uint64 // redirects given, to rotate among equals

	mu     sync.Mutex // guards the following
	status *authapi.DrainStatus
	done   chan struct{} // closed when the drain is over
}

func newDrainer(p *process, id string, tsrv *tserver.Server, pm *proxyMesh, disc *discovery, kick, exit func()) *drainer {
	d := &drainer{id: id, log: p.log.With("component", "drain"), tsrv: tsrv, pm: pm, disc: disc, kick: kick, exit: exit, done: make(chan struct{}),
		phaseGauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jumpgate_proxy_drain_phase", Help: "1 for the drain phase this proxy is in (rehoming, moving, waiting, done); all 0 when it is not draining."}, []string{"phase"}),
		remaining:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jumpgate_proxy_drain_remaining", Help: "What a draining proxy still holds, by kind (sessions, tunnels); 0 when it is not draining."}, []string{"kind"}),
	}
	for _, ph := range []string{"rehoming", "moving", "waiting", "done"} {
		d.phaseGauge.WithLabelValues(ph)
	}
	d.remaining.WithLabelValues("sessions")
	d.remaining.WithLabelValues("tunnels")
	p.reg.MustRegister(d.phaseGauge, d.remaining)
	return d
}

// Status returns the drain's progress, nil when not draining.
func (d *drainer) Status() *authapi.DrainStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.status == nil {
		return nil
	}
	st := *d.status
	return &st
}

// Done is closed when a drain has finished.
func (d *drainer) Done() <-chan struct{} { return d.done }

// Start begins a drain (once: a second call reports the first drain, with
// its deadline moved earlier if the new timeout ends sooner).
func (d *drainer) Start(req authapi.DrainRequest) (authapi.DrainStatus, error) {
	timeout := time.Duration(req.Timeout)
	if timeout <= 0 {
		timeout = defaultDrainTimeout
	}
	now := time.Now()
	d.mu.Lock()
	if d.status != nil {
		if dl := now.Add(timeout); dl.Before(d.status.Deadline) {
			d.status.Deadline = dl
		}
		st := *d.status
		d.mu.Unlock()
		return st, nil
	}
	d.status = &authapi.DrainStatus{Started: now, Deadline: now.Add(timeout), Reason: req.Reason, Phase: "rehoming"}
	d.mu.Unlock()
	d.update()
	go d.run()
	return *d.Status(), nil
}

func (d *drainer) deadline() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status.Deadline
}

func (d *drainer) setPhase(ph string) {
	d.mu.Lock()
	d.status.Phase = ph
	d.mu.Unlock()
	for _, p := range []string{"rehoming", "moving", "waiting", "done"} {
		v := 0.0
		if p == ph {
			v = 1
		}
		d.phaseGauge.WithLabelValues(p).Set(v)
	}
	d.update()
	d.kick() // a new phase is news even when the counts did not change
	st := d.Status()
	d.log.Info("drain phase", "phase", ph, "sessions", st.Sessions, "tunnels", st.Tunnels)
}

// update refreshes the counts in the status and the metrics, and reports
// them to auth when they changed.
func (d *drainer) update() {
	all, resumable := d.ing.SessionCounts()
	tunnels := d.tsrv.Load().Tunnels
	d.mu.Lock()
	changed := d.status.Sessions != all || d.status.Tunnels != tunnels || d.status.Resumable != resumable
	d.status.Sessions, d.status.Resumable, d.status.Tunnels = all, resumable, tunnels
	d.mu.Unlock()
	d.remaining.WithLabelValues("sessions").Set(float64(all))
	d.remaining.WithLabelValues("tunnels").Set(float64(tunnels))
	if changed {
		d.kick()
	}
}

func (d *drainer) run() {
	defer close(d.done)
	dl := d.deadline()
	st := d.Status()
	d.log.Info("draining: leaving the mesh without dropping sessions", "reason", st.Reason, "deadline", dl.Format(time.RFC3339))
	if d.pm.gossip != nil {
		if err := d.pm.gossip.SetMeta(func(m *gossip.Meta) { m.State = gossip.StateDraining }); err != nil {
			d.log.Warn("gossip the draining state", "err", err)
		}
	}
	d.ing.Drain(d.redirect)
	agents := d.tsrv.Drain(st.Reason, dl)
	d.mu.Lock()
	d.status.Agents = agents
	d.mu.Unlock()
	d.setPhase("rehoming")

	// 1. Wait for the agents to hold tunnels elsewhere.
	rehomeBy := time.Now().Add(min(rehomeWait, time.Until(dl)/2))
	for time.Now().Before(rehomeBy) && len(d.nodesOnlyHere()) > 0 {
		d.update()
		time.Sleep(drainPoll)
	}
	if only := d.nodesOnlyHere(); len(only) > 0 {
		d.log.Warn("draining: some nodes hold no tunnel to another proxy yet; their sessions move when their agents re-home (older agents do at their next discovery refresh)", "nodes", only)
	}

	// 2. Move the resumable clients, then close the tunnels.
	d.setPhase("moving")
	moved := d.ing.MoveResumable()
	d.mu.Lock()
	d.status.Moved = moved
	d.mu.Unlock()
	movedBy := time.Now().Add(min(movedWait, time.Until(dl)))
	for time.Now().Before(movedBy) {
		if _, resumable := d.ing.SessionCounts(); resumable == 0 {
			break
		}
		d.update()
		time.Sleep(drainPoll)
	}
	if n := d.tsrv.CloseStreams(moveBatch, moveGap); n > 0 {
		d.log.Info("draining: closed the connections through the tunnels held here, so that their sessions move to the nodes' other tunnels", "streams", n)
	}
	if l := d.tsrv.Load(); l.Tunnels > 0 {
		d.log.Info("draining: closing the tunnels still held here", "tunnels", l.Tunnels, "streams", l.Streams)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()             // close now, open streams included: resumable sessions move
		d.tsrv.Shutdown(ctx) //nolint:errcheck
	}

	// 3. Wait for what is left (sessions of clients that cannot resume).
	d.setPhase("waiting")
	for time.Now().Before(d.deadline()) {
		d.update()
		if all, _ := d.ing.SessionCounts(); all == 0 {
			break
		}
		time.Sleep(drainPoll)
	}
	d.update()
	if st := d.Status(); st.Sessions > 0 {
		d.log.Warn("drain timeout: exiting with sessions still open (their clients cannot resume)", "sessions", st.Sessions)
		// They had until the deadline, which has passed: end them now,
		// not after the process's --shutdown-timeout as well.
		d.ing.Close() //nolint:errcheck
	}
	d.setPhase("done")
	d.log.Info("drained: exiting", "took", time.Since(st.Started).Round(time.Millisecond))
	d.exit()
}

// nodesOnlyHere lists the nodes with a tunnel here and none on another
// proxy (at most 10, for the log).
func (d *drainer) nodesOnlyHere() []string {
	var out []string
	for _, n := range d.tsrv.Nodes() {
		elsewhere := false
		if d.pm.gossip != nil {
			for _, h := range d.pm.gossip.Holders(n.ID) {
				if h != d.id {
					elsewhere = true
					break
				}
			}
		}
		if !elsewhere {
			out = append(out, n.ID)
			if len(out) == 10 {
				break
			}
		}
	}
	return out
}

// redirect names a healthy proxy near a client, for the refusal of a dial
// while draining. Every client of a draining proxy asks within a second or
// so, and the load figures ranking uses are gossiped every few seconds: the
// best-ranked proxy would take them all, then drain them all again when its
// turn comes. So the answer rotates among the proxies as good as the best
// for this client: in the same distance band (route.BandKm) when GeoIP
// places the client, within redirectRTTSlack of the best RTT from here
// when it does not.
func (d *drainer) redirect(clientAddr string) (ingress.Redirect, bool) {
	if d.disc == nil {
		return ingress.Redirect{}, false
	}
	var client route.ClientLocation
	if ap, err := netip.ParseAddrPort(clientAddr); err == nil && d.disc.geo != nil {
		if loc, ok := d.disc.geo.Lookup(ap.Addr().Unmap()); ok {
			client = route.ClientLocation{Known: true, Lat: loc.Lat, Lon: loc.Lon}
		}
	}
	rp, ok := pickRedirect(route.Rank(client, d.disc.candidates()), d.id, d.redirects.Add(1)-1)
	if !ok {
		return ingress.Redirect{}, false
	}
	return ingress.Redirect{ID: rp.ID, Addr: rp.PublicAddr}, true
}

// pickRedirect returns the n-th (modulo their number) of the proxies in
// ranked, other than self, that are alive, not draining and as good as the
// best of them.
func pickRedirect(ranked []route.Ranked, self string, n uint64) (route.Ranked, bool) {
	var pool []route.Ranked
	for _, rp := range ranked {
		if rp.ID == self || rp.Draining || rp.Health != route.Alive {
			continue
		}
		if len(pool) > 0 && !asGood(pool[0], rp) {
			break
		}
		pool = append(pool, rp)
	}
	if len(pool) == 0 {
		return route.Ranked{}, false
	}
	return pool[n%uint64(len(pool))], true
}

// redirectRTTSlack is how much further (in RTT from the draining proxy) a
// redirect target may be than the nearest when the client's location is
// unknown.
const redirectRTTSlack = 5 * time.Millisecond

// asGood reports whether b, ranked after best, is as good a place to send
// a client: same distance band, or (no location) an RTT within the slack.
func asGood(best, b route.Ranked) bool {
	if best.DistanceKm >= 0 || b.DistanceKm >= 0 {
		return best.DistanceKm >= 0 && b.DistanceKm >= 0 && int(best.DistanceKm/route.BandKm) == int(b.DistanceKm/route.BandKm)
	}
	if best.RTT == 0 || b.RTT == 0 {
		return best.RTT == b.RTT // both unmeasured
	}
	return b.RTT <= best.RTT+redirectRTTSlack
}

// drainOnSignal drains the proxy after SIGTERM or SIGINT (proxy.drain_timeout
// set), and returns when the drain is over or a second signal asks to stop
// at once.
func drainOnSignal(p *process, timeout time.Duration) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	st, _ := p.drainer.Start(authapi.DrainRequest{Timeout: identity.Duration(timeout), Reason: "the proxy process was asked to stop (SIGTERM)"})
	p.log.Info("stop requested: draining first; signal again to stop at once", "deadline", st.Deadline.Format(time.RFC3339))
	select {
	case <-p.drainer.Done():
		return nil
	case s := <-sig:
		p.log.Warn("second stop signal: shutting down without finishing the drain", "signal", s.String())
		return nil
	}
}
