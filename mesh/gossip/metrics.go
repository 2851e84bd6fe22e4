package gossip

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Join outcomes (label values of jumpgate_gossip_join_attempts_total).
const (
	joinOK     = "ok"
	joinFailed = "failed"
)

type metrics struct {
	members          *prometheus.GaugeVec
	directoryEntries prometheus.Gauge
	messages         *prometheus.CounterVec
	queue            prometheus.GaugeFunc
	probeRTT         prometheus.Histogram
	joins            *prometheus.CounterVec
	fullStateBytes   prometheus.Gauge
}

// newMetrics makes the Cluster's metrics; queueLen reads the broadcast
// queue when scraped.
func newMetrics(reg prometheus.Registerer, queueLen func() float64) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "jumpgate_gossip_members",
			Help: "Proxies this proxy knows, itself included, by health (alive, suspect, dead, left).",
		}, []string{"health"}),
		directoryEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_gossip_directory_entries",
			Help: "Node-to-proxy entries in the tunnel directory that count (this proxy's and those of live proxies); a node held by two proxies counts twice.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_gossip_messages_received_total",
			Help: "Gossip messages received, by type (delta, full_state, leave, meta, unknown) and outcome (applied, gap, stale, ignored, invalid). meta counts refused members only.",
		}, []string{"type", "outcome"}),
		queue: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "jumpgate_gossip_broadcast_queue_messages",
			Help: "Directory deltas waiting in the gossip broadcast queue.",
		}, queueLen),
		probeRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "jumpgate_gossip_probe_rtt_seconds",
			Help:    "Round-trip time of this proxy's direct gossip probes to peers, in seconds.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .15, .2, .3, .5, 1},
		}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_gossip_join_attempts_total",
			Help: "Attempts to join the mesh through Config.Seeds, by outcome (ok, failed).",
		}, []string{"outcome"}),
		fullStateBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_gossip_full_state_bytes",
			Help: "Size of the last tunnel-directory full state this proxy sent in a push/pull, in bytes (before memberlist's compression).",
		}),
	}
	// Every series exists from the start, so rate() and alerts see zeros.
	for _, h := range []Health{HealthAlive, HealthSuspect, HealthDead, HealthLeft} {
		m.members.WithLabelValues(string(h))
	}
	for _, t := range []string{typeDelta, typeFullState, typeLeave, typeMeta, typeUnknown} {
		for _, o := range []string{outcomeApplied, outcomeGap, outcomeStale, outcomeIgnored, outcomeInvalid} {
			m.messages.WithLabelValues(t, o)
		}
	}
	for _, o := range []string{joinOK, joinFailed} {
		m.joins.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.members, m.directoryEntries, m.messages, m.queue, m.probeRTT, m.joins, m.fullStateBytes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register gossip metrics: %w", err)
			}
		}
	}
	return m, nil
}
