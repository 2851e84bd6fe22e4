package server

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/tunnel/internal/transport"
)

// Dial outcomes (label values of jumpgate_tunnel_dials_total).
const (
	outcomeOK          = "ok"
	outcomeOffline     = "offline"
	outcomeRefused     = "refused"
	outcomeCanceled    = "canceled"
	outcomeTimeout     = "timeout"
	outcomeTunnelError = "tunnel_error"
	outcomeShutdown    = "shutdown"
)

// Handshake failure reasons (label values of
// jumpgate_tunnel_handshake_failures_total). The set is closed: anything
// else would let a peer mint label values.
const (
	reasonNoCert       = "no_client_cert"
	reasonUntrusted    = "untrusted_cert"
	reasonBadIdentity  = "bad_identity"
	reasonWrongKind    = "wrong_kind"
	reasonWrongCluster = "wrong_cluster"
	reasonNodeMismatch = "node_id_mismatch"
	reasonBadHello     = "bad_hello"
	reasonHelloTimeout = "hello_timeout"
	reasonVersion      = "version"
	reasonShutdown     = "shutting_down"
	reasonDraining     = "draining"
	reasonBadTransport = "bad_transport" // TCP only: not TLS 1.3 with our ALPN, or no yamux inside
)

type metrics struct {
	connectedNodes    prometheus.Gauge
	tunnels           *prometheus.GaugeVec
	dials             *prometheus.CounterVec
	dialDuration      prometheus.Histogram
	handshakeFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connectedNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_connected_nodes",
			Help: "Nodes holding at least one reverse tunnel to this proxy.",
		}),
		tunnels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "jumpgate_tunnel_tunnels",
			Help: "Reverse tunnels registered at this proxy, by transport (quic, tcp). A node holds two for a moment while it reconnects or moves between transports.",
		}, []string{"transport"}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_dials_total",
			Help: "Dials down reverse tunnels, by outcome (ok, offline, refused, canceled, timeout, tunnel_error, shutdown).",
		}, []string{"outcome"}),
		dialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "jumpgate_tunnel_dial_duration_seconds",
			Help:    "Time from Dial to the agent's answer (or failure), in seconds.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_tunnel_handshake_failures_total",
			Help: "Tunnel connections refused, by reason (no_client_cert, untrusted_cert, bad_identity, wrong_kind, wrong_cluster, node_id_mismatch, bad_hello, hello_timeout, version, shutting_down, bad_transport) and transport (quic, tcp).",
		}, []string{"reason", "transport"}),
	}
	// Every series exists from the start, so rate() and alerts see zeros.
	for _, o := range []string{outcomeOK, outcomeOffline, outcomeRefused, outcomeCanceled, outcomeTimeout, outcomeTunnelError, outcomeShutdown} {
		m.dials.WithLabelValues(o)
	}
	for _, tr := range []string{transport.QUIC, transport.TCP} {
		m.tunnels.WithLabelValues(tr)
		for _, r := range []string{reasonNoCert, reasonUntrusted, reasonBadIdentity, reasonWrongKind, reasonWrongCluster, reasonNodeMismatch, reasonBadHello, reasonHelloTimeout, reasonVersion, reasonShutdown, reasonDraining, reasonBadTransport} {
			if r == reasonBadTransport && tr == transport.QUIC {
				continue // quic-go drops what is not QUIC
			}
			m.handshakeFailures.WithLabelValues(r, tr)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connectedNodes, m.tunnels, m.dials, m.dialDuration, m.handshakeFailures} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tunnel server metrics: %w", err)
			}
		}
	}
	return m, nil
}
