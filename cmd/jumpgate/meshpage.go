package main

import (
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/mesh/gossip"
	"jumpgate.dev/jumpgate/mesh/ingress"
	"jumpgate.dev/jumpgate/mesh/meshpage"
	tserver "jumpgate.dev/jumpgate/tunnel/server"
)

// meshSnapshot is what the proxy's mesh page shows: every proxy its
// gossip knows (state, health, tunnels held, gossiped load), its own peer
// links with their RTT, the nodes without a tunnel anywhere, and its own
// drain progress.
func meshSnapshot(self, region, cluster string, pm *proxyMesh, cache *authapi.Hub, tsrv *tserver.Server, ing *ingress.Server, dr *drainer) meshpage.Snapshot {
	s := meshpage.Snapshot{Self: self, Cluster: cluster, GeneratedAt: time.Now()}
	selfDrain := func() *meshpage.Drain {
		st := dr.Status()
		if st == nil {
			return nil
		}
		return &meshpage.Drain{Phase: st.Phase, Sessions: st.Sessions, Resumable: st.Resumable, Tunnels: st.Tunnels, Deadline: st.Deadline}
	}
	if pm.gossip == nil {
		state := "active"
		if dr.Status() != nil {
			state = "draining"
		}
		s.Proxies = []meshpage.Proxy{{ID: self, Region: region, Version: version, State: state, Health: "alive",
			Tunnels: len(tsrv.Nodes()), Sessions: ing.Sessions(), Drain: selfDrain()}}
	} else {
		held := map[string]int{} // tunnels per proxy
		for _, holders := range pm.gossip.Directory() {
			for _, h := range holders {
				held[h]++
			}
		}
		for _, m := range pm.gossip.Members() {
			p := meshpage.Proxy{ID: m.ID, Region: m.Region, Version: m.Version, Lat: m.Lat, Lon: m.Lon, HasCoords: m.HasCoords,
				State: string(m.State), Health: string(m.Health), Tunnels: held[m.ID], Sessions: int(m.Load)}
			if m.Self {
				p.Sessions, p.Drain = ing.Sessions(), selfDrain()
			} else if m.Health != gossip.HealthLeft {
				rtt := m.RTT
				if pm.peers != nil {
					if r, ok := pm.peers.RTT(m.ID); ok && r > 0 {
						rtt = r
					}
				}
				s.Links = append(s.Links, meshpage.Link{From: self, To: m.ID, RTT: rtt, Health: string(m.Health)})
			}
			s.Proxies = append(s.Proxies, p)
		}
	}
	select {
	case <-cache.Ready():
		nodes := cache.Nodes()
		s.Nodes = len(nodes)
		online := pm.held()
		for _, n := range nodes {
			if !online[n.ID] {
				s.NodesWithoutTunnel = append(s.NodesWithoutTunnel, n.ID)
			}
		}
	default:
	}
	return s
}
