package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Connect outcomes (label values of jumpgate_tunnel_agent_connects_total).
const (
	connectOK      = "ok"
	connectRefused = "refused" // the proxy refused: certificate, cluster, node name
	connectTLS     = "tls_error"
	connectTimeout = "timeout"
	connectError   = "error"
)

// Dial outcomes (label values of jumpgate_tunnel_agent_dials_total).
const (
	dialAccepted   = "accepted"
	dialTimeout    = "refused_timeout" // the SSH server did not Accept in time
	dialBacklog    = "refused_backlog"
	dialClosing    = "refused_closing"
	dialBadRequest = "bad_request"
	dialAborted    = "aborted" // the tunnel or stream ended before Accept
)

type metrics struct {
	connectedProxies prometheus.Gauge
	pendingDials     prometheus.Gauge
	connects         *prometheus.CounterVec
	dials            *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connectedProxies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_agent_connected_proxies",
			Help: "Proxies this node holds a reverse tunnel to.",
		}),
		pendingDials: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_agent_pending_dials",
			Help: "Dials waiting for the node's SSH server to accept them; persistently above zero means the server is slow or not running.",
		}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_connects_total",
			Help: "Attempts to set up a reverse tunnel, by outcome (ok, refused, tls_error, timeout, error).",
		}, []string{"outcome"}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_dials_total",
			Help: "Dials received through reverse tunnels, by outcome (accepted, refused_timeout, refused_backlog, refused_closing, bad_request, aborted).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{connectOK, connectRefused, connectTLS, connectTimeout, connectError} {
		m.connects.WithLabelValues(o)
	}
	for _, o := range []string{dialAccepted, dialTimeout, dialBacklog, dialClosing, dialBadRequest, dialAborted} {
		m.dials.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connectedProxies, m.pendingDials, m.connects, m.dials} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tunnel agent metrics: %w", err)
			}
		}
	}
	return m, nil
}
