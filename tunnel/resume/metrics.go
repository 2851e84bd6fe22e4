package resume

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Resumption outcomes (label values of jumpgate_resume_resumptions_total).
const (
	outcomeOK       = "ok"       // a detached session was resumed
	outcomeRefused  = "refused"  // wrong proof or another user
	outcomeExpired  = "expired"  // unknown or expired session
	outcomeTakeover = "takeover" // resumed while its old transport was still attached; the old one was closed
)

type metrics struct {
	sessions    *prometheus.GaugeVec
	resumptions *prometheus.CounterVec
	stall       prometheus.Histogram
	replayed    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "jumpgate_resume_sessions",
			Help: "Resumable sessions on this node, by state: attached (a transport carries them) or detached (waiting for the client to resume).",
		}, []string{"state"}),
		resumptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_resume_resumptions_total",
			Help: "Attempts to resume a session, by outcome: ok, refused (wrong key or another user), expired (unknown or expired session), takeover (the old transport was still attached).",
		}, []string{"outcome"}),
		stall: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "jumpgate_resume_stall_seconds",
			Help:    "Time from a session's transport breaking to the client resuming it.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_resume_replayed_bytes_total",
			Help: "Bytes the node sent again after resumptions: sent on a transport that broke before the client received them.",
		}),
	}
	m.sessions.WithLabelValues("attached")
	m.sessions.WithLabelValues("detached")
	for _, o := range []string{outcomeOK, outcomeRefused, outcomeExpired, outcomeTakeover} {
		m.resumptions.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.sessions, m.resumptions, m.stall, m.replayed} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register resume metrics: %w", err)
			}
		}
	}
	return m, nil
}
