package peer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Dial outcomes (label values of jumpgate_peer_dials_total and
// jumpgate_peer_accepted_streams_total). The codes a peer can send are
// outcomes too.
const (
	outcomeOK       = "ok"
	outcomeTimeout  = "timeout"  // no answer in time (or, on the holder, no request in time)
	outcomeTLS      = "tls"      // a TLS handshake failed, on either side
	outcomeRefused  = "refused"  // the peer closed the connection with a reason (its identity checks)
	outcomeCanceled = "canceled" // the caller gave up first
)

var outcomes = []string{outcomeOK, CodeOffline, CodeDenied, CodeUnavailable, CodeBadRequest, CodeVersion, CodeLoop, outcomeTimeout, outcomeTLS, outcomeRefused, outcomeCanceled}

// Handshake failure reasons (label values of
// jumpgate_peer_handshake_failures_total). The set is closed: anything else
// would let a stranger mint label values.
const (
	reasonNoCert       = "no_client_cert"
	reasonUntrusted    = "untrusted_cert"
	reasonBadIdentity  = "bad_identity"
	reasonWrongKind    = "wrong_kind"
	reasonWrongCluster = "wrong_cluster"
	reasonSelf         = "self"
	reasonALPN         = "wrong_alpn"
	reasonShutdown     = "shutting_down"
)

var reasons = []string{reasonNoCert, reasonUntrusted, reasonBadIdentity, reasonWrongKind, reasonWrongCluster, reasonSelf, reasonALPN, reasonShutdown}

// Reasons for packets dropped before any connection (label values of
// jumpgate_peer_dropped_packets_total).
const (
	dropNotQUIC     = "not_quic"            // first bits say it is not QUIC at all
	dropUnknownConn = "unknown_connection"  // short header for no connection we know (also: late packets after a restart)
	dropMalformed   = "malformed"           // looked like QUIC, did not parse
	dropVersion     = "unsupported_version" // a QUIC version quic-go does not speak (answered with Version Negotiation)
	dropOverload    = "overload"            // queues full
	dropOther       = "other"
)

var drops = []string{dropNotQUIC, dropUnknownConn, dropMalformed, dropVersion, dropOverload, dropOther}

type metrics struct {
	connectedPeers    prometheus.Gauge
	connections       *prometheus.CounterVec
	openStreams       prometheus.Gauge
	dials             *prometheus.CounterVec
	dialDuration      prometheus.Histogram
	acceptedStreams   *prometheus.CounterVec
	handshakeFailures *prometheus.CounterVec
	droppedPackets    *prometheus.CounterVec
	bytesIn, bytesOut prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jumpgate_peer_bytes_total",
		Help: "Bytes of dialed connections carried over peer streams, by direction: in = received from peers, out = sent to peers (both as dialer and as holder).",
	}, []string{"direction"})
	m := &metrics{
		connectedPeers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_peer_connected_peers",
			Help: "Peer proxies with a live QUIC connection to this proxy.",
		}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_peer_connections_total",
			Help: "Peer connections established, by direction (inbound: the peer dialed; outbound: this proxy dialed).",
		}, []string{"direction"}),
		openStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_peer_open_streams",
			Help: "Peer streams open now, dialed and accepted (what Shutdown waits for).",
		}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_peer_dials_total",
			Help: "Dials through peer proxies, by outcome (ok, offline, denied, unavailable, bad_request, version, loop, timeout, tls, refused, canceled).",
		}, []string{"outcome"}),
		dialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "jumpgate_peer_dial_duration_seconds",
			Help:    "Time from Dial to the peer's answer (or failure), including a new connection when one is needed, in seconds.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		acceptedStreams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_peer_accepted_streams_total",
			Help: "Dials peers sent to this proxy, by outcome (ok, offline, denied, unavailable, bad_request, version, loop, timeout, canceled).",
		}, []string{"outcome"}),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_peer_handshake_failures_total",
			Help: "Connections to the peer port refused, by reason (no_client_cert, untrusted_cert, bad_identity, wrong_kind, wrong_cluster, self, wrong_alpn, shutting_down).",
		}, []string{"reason"}),
		droppedPackets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_peer_dropped_packets_total",
			Help: "UDP packets on the peer port that belonged to no connection and started none, by reason (not_quic, unknown_connection, malformed, unsupported_version, overload, other).",
		}, []string{"reason"}),
		bytesIn:  bytes.WithLabelValues("in"),
		bytesOut: bytes.WithLabelValues("out"),
	}
	// Every series exists from the start, so rate() and alerts see zeros.
	for _, o := range outcomes {
		m.dials.WithLabelValues(o)
		m.acceptedStreams.WithLabelValues(o)
	}
	for _, r := range reasons {
		m.handshakeFailures.WithLabelValues(r)
	}
	for _, d := range drops {
		m.droppedPackets.WithLabelValues(d)
	}
	m.connections.WithLabelValues("inbound")
	m.connections.WithLabelValues("outbound")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connectedPeers, m.connections, m.openStreams, m.dials, m.dialDuration, m.acceptedStreams, m.handshakeFailures, m.droppedPackets, bytes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register mesh peer metrics: %w", err)
			}
		}
	}
	return m, nil
}
