package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/mesh/gossip"
)

// meshCollector reports, at scrape time, what an SRE's alerts name: each
// peer as this proxy sees it (up, RTT) and each known node without a
// tunnel to any proxy of the mesh. Read at scrape time from gossip, the
// peer links and the cache, so nothing is kept twice.
type meshCollector struct {
	pm    *proxyMesh
	cache *authapi.Hub

	peerUp, peerRTT, noTunnel *prometheus.Desc
}

func newMeshCollector(pm *proxyMesh, cache *authapi.Hub) *meshCollector {
	return &meshCollector{pm: pm, cache: cache,
		peerUp:   prometheus.NewDesc("jumpgate_mesh_peer_up", "1 when this proxy's gossip sees the peer alive, 0 when suspect or dead (left proxies are not listed).", []string{"peer"}, nil),
		peerRTT:  prometheus.NewDesc("jumpgate_mesh_peer_rtt_seconds", "Round-trip time from this proxy to the peer: the QUIC peer link's smoothed RTT, else gossip's probes.", []string{"peer"}, nil),
		noTunnel: prometheus.NewDesc("jumpgate_mesh_node_without_tunnel", "1 for a node known to the cluster that holds no reverse tunnel to any proxy of the mesh (it cannot be reached), 0 for a node that holds one.", []string{"node"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *meshCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.peerUp
	ch <- c.peerRTT
	ch <- c.noTunnel
}

// Collect implements prometheus.Collector.
func (c *meshCollector) Collect(ch chan<- prometheus.Metric) {
	if c.pm.gossip != nil {
		for _, m := range c.pm.gossip.Members() {
			if m.Self || m.Health == gossip.HealthLeft {
				continue
			}
			up := 0.0
			if m.Health == gossip.HealthAlive {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(c.peerUp, prometheus.GaugeValue, up, m.ID)
			rtt := m.RTT
			if c.pm.peers != nil {
				if r, ok := c.pm.peers.RTT(m.ID); ok && r > 0 {
					rtt = r
				}
			}
			if rtt > 0 {
				ch <- prometheus.MustNewConstMetric(c.peerRTT, prometheus.GaugeValue, rtt.Seconds(), m.ID)
			}
		}
	}
	select {
	case <-c.cache.Ready():
	default:
		return // the inventory is not known yet: say nothing rather than something wrong
	}
	held := c.pm.held()
	for _, n := range c.cache.Nodes() {
		v := 1.0
		if held[n.ID] {
			v = 0
		}
		ch <- prometheus.MustNewConstMetric(c.noTunnel, prometheus.GaugeValue, v, n.ID)
	}
}

// watchLag registers jumpgate_watch_lag_seconds: how long since this
// process last heard from its upstream watch stream (events or heartbeats
// every 10 s), so an alert sees a proxy or node whose view of users, roles
// and locks has gone stale.
func watchLag(reg prometheus.Registerer, cache *authapi.Hub) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "jumpgate_watch_lag_seconds",
		Help: "Seconds since this process last heard from its upstream watch stream (users, roles, locks, CAs); heartbeats arrive every 10 s.",
	}, func() float64 {
		t := cache.LastHeard()
		if t.IsZero() {
			return 0
		}
		return time.Since(t).Seconds()
	}))
}
