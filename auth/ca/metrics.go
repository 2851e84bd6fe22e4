package ca

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts the certificates an auth server issues and times the
// signatures, by keystore. One Metrics serves every Authority of a process
// (a CA rotation makes a new Authority; the series go on).
type Metrics struct {
	issued *prometheus.CounterVec
	sign   *prometheus.HistogramVec
}

// NewMetrics registers the CA metrics with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_ca_certs_issued_total",
			Help: "Certificates this auth server signed, by the identity kind they are for (user, node, proxy, auth, admin), format (ssh, tls) and keystore backend (software, pkcs11).",
		}, []string{"kind", "format", "keystore"}),
		sign: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "jumpgate_ca_sign_duration_seconds",
			Help:    "Time to sign one certificate, by keystore backend: an HSM's latency shows here.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"keystore"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.issued, m.sign} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("ca: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// observe records one signature; m may be nil.
func (m *Metrics) observe(kind, format, backend string, start time.Time) {
	if m == nil {
		return
	}
	m.issued.WithLabelValues(kind, format, backend).Inc()
	m.sign.WithLabelValues(backend).Observe(time.Since(start).Seconds())
}
