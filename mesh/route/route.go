package route

import (
	"cmp"
	"context"
	"math"
	"net"
	"slices"
	"time"
)

// Health of a proxy as the gossip layer sees it.
type Health int

// Healths, best first.
const (
	Alive Health = iota
	Suspect
	Gone // dead or left: never a dial target
)

// Proxy is what routing needs to know of one proxy.
type Proxy struct {
	ID       string
	Health   Health
	Draining bool
	RTT      time.Duration // 0: not measured
	PeerAddr string
}

// Hop is one step of a dial plan.
type Hop struct {
	Proxy
	Local bool // this proxy holds the tunnel itself
}

// Plan orders the places to dial node from proxy self. holders are the ids
// of proxies holding the node's tunnel (self among them if it does);
// lookup describes a proxy, returning false for one it does not know, which
// is skipped like a dead one.
func Plan(self string, holders []string, lookup func(id string) (Proxy, bool)) []Hop {
	var local []Hop
	var peers []Hop
	seen := make(map[string]bool, len(holders))
	for _, id := range holders {
		if seen[id] {
			continue
		}
		seen[id] = true
		if id == self {
			local = append(local, Hop{Proxy: Proxy{ID: self}, Local: true})
			continue
		}
		p, ok := lookup(id)
		if !ok || p.Health == Gone || p.PeerAddr == "" {
			continue
		}
		p.ID = id
		peers = append(peers, Hop{Proxy: p})
	}
	slices.SortFunc(peers, func(a, b Hop) int {
		if c := cmp.Compare(a.Health, b.Health); c != 0 {
			return c
		}
		if a.Draining != b.Draining {
			if a.Draining {
				return 1
			}
			return -1
		}
		if c := compareRTT(a.RTT, b.RTT); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return append(local, peers...)
}

// compareRTT orders measured RTTs ascending, unmeasured (0) last.
func compareRTT(a, b time.Duration) int {
	switch {
	case a == b:
		return 0
	case a == 0:
		return 1
	case b == 0:
		return -1
	}
	return cmp.Compare(a, b)
}

// EarthRadiusKm is the Earth's mean radius.
const EarthRadiusKm = 6371.0088

// Distance returns the great-circle distance in kilometres between two
// points given in degrees.
func Distance(lat1, lon1, lat2, lon2 float64) float64 {
	rad := math.Pi / 180
	dLat := (lat2 - lat1) * rad
	dLon := (lon2 - lon1) * rad
	a := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * EarthRadiusKm * math.Asin(math.Min(1, math.Sqrt(a)))
}

// Failure is a hop that TryPlan could not dial through, and why.
type Failure struct {
	Hop Hop
	Err error
}

// DefaultHopTimeout bounds each attempt of TryPlan but the last: a cold
// peer dial takes two round trips (under half a second between continents),
// so a holder that has not answered in 3 s is most likely dead but not yet
// known dead, and the next holder deserves the time left.
const DefaultHopTimeout = 3 * time.Second

// TryPlan dials the peer hops of plan in order (local hops are the
// caller's business and are skipped) until one succeeds. Each attempt but
// the last gets at most hopTimeout of ctx's time; the last gets whatever is
// left. It returns the connection and the hop it went through (nil and the
// zero Hop when every hop failed or there was none), and the hops that
// failed before, in order.
func TryPlan(ctx context.Context, plan []Hop, hopTimeout time.Duration, dial func(ctx context.Context, h Hop) (net.Conn, error)) (net.Conn, Hop, []Failure) {
	var peers []Hop
	for _, h := range plan {
		if !h.Local {
			peers = append(peers, h)
		}
	}
	var failures []Failure
	for i, h := range peers {
		hctx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(peers)-1 && hopTimeout > 0 {
			hctx, cancel = context.WithTimeout(ctx, hopTimeout)
		}
		c, err := dial(hctx, h)
		cancel()
		if err == nil {
			return c, h, failures
		}
		failures = append(failures, Failure{Hop: h, Err: err})
		if ctx.Err() != nil {
			break
		}
	}
	return nil, Hop{}, failures
}
