package geo

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one DB's collectors. They exist (and count) whether or not
// they are registered, so a DB without a registry needs no nil checks.
type metrics struct {
	reg                 prometheus.Registerer // nil: not registered
	collectors          []prometheus.Collector
	hits, misses        prometheus.Counter
	reloadOK, reloadErr prometheus.Counter
	built               prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jumpgate_geoip_lookups_total",
		Help: "GeoIP lookups of client addresses, by result: hit = a location with coordinates, miss = not in the database or without coordinates (the client is ranked by latency alone).",
	}, []string{"result"})
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jumpgate_geoip_reloads_total",
		Help: "Reloads of the GeoIP database after its file changed (the first load is not counted), by result: ok = the new version is in service, error = it was not (the file is gone, empty or corrupt) and the previous version still serves.",
	}, []string{"result"})
	built := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "jumpgate_geoip_database_build_timestamp_seconds",
		Help: "Build time of the GeoIP database in service, from its metadata, in Unix seconds. Alert when it gets old: the file is not being updated.",
	})
	m := &metrics{
		reg:        reg,
		collectors: []prometheus.Collector{lookups, reloads, built},
		hits:       lookups.WithLabelValues("hit"),
		misses:     lookups.WithLabelValues("miss"),
		reloadOK:   reloads.WithLabelValues("ok"),
		reloadErr:  reloads.WithLabelValues("error"),
		built:      built,
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, c := range m.collectors[:i] {
				reg.Unregister(c)
			}
			return nil, fmt.Errorf("register geoip metrics: %w", err)
		}
	}
	return m, nil
}

// unregister removes the collectors from the registry, so that another DB
// can register there (a reopened database, a test's next case).
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
