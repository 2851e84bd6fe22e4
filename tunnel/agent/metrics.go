package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/tunnel/internal/transport"
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

// Re-homing reasons (label values of jumpgate_tunnel_agent_rehomes_total).
const (
	rehomeDead     = "dead"     // the proxy left the candidate list
	rehomeFailing  = "failing"  // the tunnel stayed down past FailoverAfter or 3 attempts
	rehomeDraining = "draining" // the proxy is draining
	rehomeSurplus  = "surplus"  // more tunnels than ConnectionCount, or two to one proxy
)

type metrics struct {
	connectedProxies prometheus.Gauge
	tunnels          *prometheus.GaugeVec
	fallbacks        prometheus.Counter
	restores         prometheus.Counter
	desiredProxies   prometheus.Gauge
	pendingDials     prometheus.Gauge
	connects         *prometheus.CounterVec
	dials            *prometheus.CounterVec
	rehomes          *prometheus.CounterVec
	drainNotices     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connectedProxies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_agent_connected_proxies",
			Help: "Proxies this node holds a reverse tunnel to.",
		}),
		tunnels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_agent_tunnels",
			Help: "Reverse tunnels this node holds, by transport (quic, tcp). A tunnel moving from TCP to QUIC counts on both until the TCP one closes.",
		}, []string{"transport"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_transport_fallbacks_total",
			Help: "Tunnels that fell back from QUIC to TLS over TCP because the QUIC handshake got no answer (UDP blocked on the way to the proxy).",
		}),
		restores: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_transport_restores_total",
			Help: "Tunnels that moved back from TLS over TCP to QUIC once UDP to the proxy worked again.",
		}),
		desiredProxies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_agent_desired_proxies",
			Help: "Proxies this node means to hold a reverse tunnel to (ConnectionCount with discovery, else the configured addresses); compare with jumpgate_tunnel_agent_connected_proxies.",
		}),
		pendingDials: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_agent_pending_dials",
			Help: "Dials waiting for the node's SSH server to accept them; persistently above zero means the server is slow or not running.",
		}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_connects_total",
			Help: "Attempts to set up a reverse tunnel, by outcome (ok, refused, tls_error, timeout, error) and transport (quic, tcp).",
		}, []string{"outcome", "transport"}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_dials_total",
			Help: "Dials received through reverse tunnels, by outcome (accepted, refused_timeout, refused_backlog, refused_closing, bad_request, aborted).",
		}, []string{"outcome"}),
		rehomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_rehomes_total",
			Help: "Tunnels given up to move to another proxy (or closed as extra), by reason (dead, failing, draining, surplus).",
		}, []string{"reason"}),
		drainNotices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_agent_drain_notices_total",
			Help: "Drain messages received from proxies (tunnel protocol 2): each makes the agent move that tunnel to another proxy.",
		}),
	}
	for _, tr := range []string{transport.QUIC, transport.TCP} {
		m.tunnels.WithLabelValues(tr)
		for _, o := range []string{connectOK, connectRefused, connectTLS, connectTimeout, connectError} {
			m.connects.WithLabelValues(o, tr)
		}
	}
	for _, o := range []string{dialAccepted, dialTimeout, dialBacklog, dialClosing, dialBadRequest, dialAborted} {
		m.dials.WithLabelValues(o)
	}
	for _, r := range []string{rehomeDead, rehomeFailing, rehomeDraining, rehomeSurplus} {
		m.rehomes.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connectedProxies, m.tunnels, m.fallbacks, m.restores, m.desiredProxies, m.pendingDials, m.connects, m.dials, m.rehomes, m.drainNotices} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tunnel agent metrics: %w", err)
			}
		}
	}
	return m, nil
}
