package main

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/identity"
)

// lockWatcher measures how long each new lock took to reach this process
// (from its creation on the auth server to being in force here) and hands
// every lock set to enforce. The delay uses the auth server's clock for
// the start: across machines it includes their clock offset.
type lockWatcher struct {
	role    string // "proxy" or "node"
	log     *slog.Logger
	delay   prometheus.Observer
	seen    map[string]bool
	started bool // the first lock set (a snapshot) has been seen
	enforce func([]identity.Lock) int
}

func newLockWatcher(p *process, role string, enforce func([]identity.Lock) int) *lockWatcher {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "jumpgate_lock_propagation_seconds",
		Help:    "Time from a lock's creation on an auth server to its being in force in this process (auth server clock to local clock).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"role"})
	if err := p.reg.Register(h); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			h = are.ExistingCollector.(*prometheus.HistogramVec)
		}
	}
	return &lockWatcher{role: role, log: p.log, delay: h.WithLabelValues(role), seen: map[string]bool{}, enforce: enforce}
}

// update is the WatchLocks callback.
func (w *lockWatcher) update(locks []identity.Lock) {
	now := time.Now()
	first := !w.started
	w.started = true
	var fresh []identity.Lock
	for _, l := range locks {
		if !w.seen[l.ID] {
			w.seen[l.ID] = true
			if l.Active(now) {
				fresh = append(fresh, l)
			}
		}
	}
	n := w.enforce(locks)
	if first {
		return // the locks of the first snapshot were made before we were here
	}
	for _, l := range fresh {
		d := time.Since(l.Created)
		w.delay.Observe(d.Seconds())
		w.log.Info("lock in force", "lock", l.ID, "target", l.Target(), "role", w.role, "delay_ms", float64(d.Microseconds())/1000, "ended", n)
	}
}
