package sshd

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// failReason is the bounded label value of jumpgate_node_auth_failures_total.
type failReason string

const (
	reasonExpired      failReason = "expired"       // certificate expired or not yet valid
	reasonUnknownCA    failReason = "unknown_ca"    // not signed by a trusted user CA
	reasonWrongCluster failReason = "wrong_cluster" // cluster extension differs
	reasonPrincipal    failReason = "principal"     // login not among the principals
	reasonDenied       failReason = "denied"        // roles deny the login on this node
	reasonMFA          failReason = "mfa"           // roles require a per-session MFA certificate
	reasonOther        failReason = "other"         // plain keys, malformed certificates, OS login problems
)

// metrics are the server's Prometheus collectors. They always exist, and are
// registered only when Config.Metrics is set.
type metrics struct {
	active       prometheus.Gauge
	total        prometheus.Counter
	authFailures *prometheus.CounterVec
	locked       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_node_sessions_active",
			Help: "SSH session channels open on this node.",
		}),
		total: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_node_sessions_total",
			Help: "SSH session channels opened on this node.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_node_auth_failures_total",
			Help: "SSH logins refused by this node, by reason.",
		}, []string{"reason"}),
		locked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_node_connections_locked_total",
			Help: "Live SSH connections this node ended because a lock applied to them.",
		}),
	}
	for _, r := range []failReason{reasonExpired, reasonUnknownCA, reasonWrongCluster, reasonPrincipal, reasonDenied, reasonMFA, reasonOther} {
		m.authFailures.WithLabelValues(string(r)) // export zeros so rates work from the start
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.active, m.total, m.authFailures, m.locked} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register ssh server metrics: %w", err)
		}
	}
	return m, nil
}
