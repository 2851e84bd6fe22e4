package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/mesh/geo"
	"jumpgate.dev/jumpgate/mesh/gossip"
	"jumpgate.dev/jumpgate/mesh/ingress/realip"
	"jumpgate.dev/jumpgate/mesh/route"
)

// discovery answers GET /v1/discover for one proxy: it locates the client
// (its real address, then GeoIP) and ranks the mesh's proxies for it.
type discovery struct {
	self       string
	region     string
	publicAddr string
	lat, lon   float64
	hasCoords  bool
	mesh       *proxyMesh
	geo        *geo.DB // nil: no database, latency-only ranking
	geoErr     string  // why there is no database
	hops       realip.Forwarded
	sessions   func() int
	// proxyProtocol: the listener takes PROXY headers from trusted load
	// balancers, so the socket address may come from one.
	proxyProtocol bool
	log           *slog.Logger
	decisions     *prometheus.CounterVec

	mu     sync.Mutex // guards points
	points map[string]cachedPoint
}

// cachedPoint keeps a proxy's position on the unit sphere between
// requests: working it out is most of what ranking 50 proxies costs.
type cachedPoint struct {
	lat, lon float64
	p        route.Point
}

func (d *discovery) point(id string, lat, lon float64) route.Point {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.points[id]; ok && c.lat == lat && c.lon == lon {
		return c.p
	}
	if d.points == nil || len(d.points) > 4096 {
		d.points = map[string]cachedPoint{}
	}
	p := route.PointOf(lat, lon)
	d.points[id] = cachedPoint{lat, lon, p}
	return p
}

func newDiscovery(p *process, cfg Config, mesh *proxyMesh, publicAddr string, sessions func() int) (*discovery, error) {
	d := &discovery{self: cfg.Proxy.ID, region: cfg.Proxy.Region, publicAddr: publicAddr, mesh: mesh, sessions: sessions, log: p.log.With("component", "discovery"),
		proxyProtocol: cfg.Proxy.Discovery.ProxyProtocol != "off"}
	if l := cfg.Proxy.Location; l != nil {
		d.lat, d.lon, d.hasCoords = l.Lat, l.Lon, true
	}
	hops, err := prefixes("trusted_hops", cfg.Proxy.Discovery.TrustedHops)
	if err != nil {
		return nil, err
	}
	d.hops = realip.Forwarded{TrustedHops: hops}
	d.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jumpgate_discovery_decisions_total",
		Help: "Discovery answers by the client's continent (as GeoIP places it; unknown without) and the region of the proxy ranked first.",
	}, []string{"client_region", "proxy_region"})
	p.reg.MustRegister(d.decisions)
	if path := cfg.Proxy.Discovery.GeoIPDB; path != "" {
		db, err := geo.Open(geo.Config{Path: path, Logger: d.log, Metrics: p.reg})
		switch {
		case err == nil:
			d.geo = db
			info := db.Info()
			d.log.Info("GeoIP database loaded", "path", path, "type", info.Type, "built", info.Built)
			p.onShutdown(func(context.Context) { db.Close() }) //nolint:errcheck
		case errors.Is(err, fs.ErrNotExist):
			d.geoErr = err.Error()
			d.log.Error("no GeoIP database: discovery ranks by latency only", "err", err)
		default:
			d.geoErr = err.Error()
			d.log.Error("GeoIP database unusable: discovery ranks by latency only", "err", err)
		}
	} else {
		d.geoErr = "no GeoIP database configured (proxy.discovery.geoip_db)"
	}
	return d, nil
}

// clientAddr is the client's address: the socket's (the PROXY protocol
// listener has already put the real one there), or from X-Forwarded-For
// when the socket peer is a trusted hop.
func (d *discovery) clientAddr(r *http.Request) (netip.Addr, string) {
	source := "socket"
	if d.proxyProtocol {
		source = "socket, or PROXY protocol from a trusted load balancer"
	}
	addr, spoofed := d.hops.ClientAddr(r)
	if spoofed {
		d.log.Warn("X-Forwarded-For from an untrusted peer: ignored", "remote", r.RemoteAddr, "x_forwarded_for", r.Header.Get("X-Forwarded-For"))
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil && addr != ap.Addr().Unmap() {
		source = "x-forwarded-for"
	}
	return addr, source
}

func (d *discovery) discover(r *http.Request) *authapi.Discovery {
	ip, source := d.clientAddr(r)
	out := &authapi.Discovery{Proxy: d.self, Client: authapi.DiscoveryClient{IP: ip.String(), Source: source}}
	var client route.ClientLocation
	switch {
	case d.geo == nil:
		out.GeoIP = d.geoErr
	default:
		info := d.geo.Info()
		out.GeoIP = info.Type + " built " + info.Built.UTC().Format(time.DateOnly)
		if loc, ok := d.geo.Lookup(ip); ok {
			client = route.ClientLocation{Known: true, Lat: loc.Lat, Lon: loc.Lon, City: loc.City, Country: loc.Country}
			out.Client.Located, out.Client.City, out.Client.Country, out.Client.Continent = true, loc.City, loc.Country, loc.Continent
			out.Client.Lat, out.Client.Lon = loc.Lat, loc.Lon
		} else {
			out.GeoIP += "; " + ip.String() + " is not in it"
		}
	}
	ranked := route.Rank(client, d.candidates())
	for i, rp := range ranked {
		health, state := "alive", "active"
		switch rp.Health {
		case route.Suspect:
			health = "suspect"
		}
		if rp.Draining {
			state = "draining"
		}
		out.Proxies = append(out.Proxies, authapi.DiscoveredProxy{ID: rp.ID, Region: rp.Region, PublicAddr: rp.PublicAddr, Health: health, State: state,
			Load: rp.Load, DistanceKm: rp.DistanceKm, RTTms: float64(rp.RTT.Microseconds()) / 1000, Reason: route.Explain(client, ranked, i)})
	}
	clientRegion, proxyRegion := "unknown", "none"
	if out.Client.Continent != "" {
		clientRegion = out.Client.Continent
	}
	if len(ranked) > 0 {
		out.Why = ranked[0].ID + ": " + out.Proxies[0].Reason
		proxyRegion = ranked[0].Region
	}
	d.decisions.WithLabelValues(clientRegion, proxyRegion).Inc()
	return out
}

// candidates are the mesh's proxies (or this one alone).
func (d *discovery) candidates() []route.Candidate {
	self := route.Candidate{ID: d.self, Region: d.region, PublicAddr: d.publicAddr, Lat: d.lat, Lon: d.lon, HasCoords: d.hasCoords, Self: true, Load: uint32(d.sessions())}
	if d.mesh == nil || d.mesh.gossip == nil {
		return []route.Candidate{self}
	}
	var out []route.Candidate
	for _, m := range d.mesh.gossip.Members() {
		if m.PublicAddr == "" {
			continue
		}
		c := route.Candidate{ID: m.ID, Region: m.Region, PublicAddr: m.PublicAddr, Lat: m.Lat, Lon: m.Lon, HasCoords: m.HasCoords,
			Draining: m.State == gossip.StateDraining, Load: m.Load, RTT: m.RTT, Self: m.Self}
		if m.HasCoords {
			c.Point = d.point(m.ID, m.Lat, m.Lon)
		}
		c.Health = routeHealth(m.Health)
		if m.Self {
			c.Load = uint32(d.sessions())
		}
		out = append(out, c)
	}
	return out
}
