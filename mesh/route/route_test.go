package route

import (
	"context"
	"errors"
	"math"
	"net"
	"strings"
	"testing"
	"time"
)

func ids(hops []Hop) (out []string) {
	for _, h := range hops {
		out = append(out, h.ID)
	}
	return out
}

func TestPlan(t *testing.T) {
	proxies := map[string]Proxy{
		"fast":     {Health: Alive, RTT: 5 * time.Millisecond, PeerAddr: "a:1"},
		"slow":     {Health: Alive, RTT: 80 * time.Millisecond, PeerAddr: "a:2"},
		"unknown":  {Health: Alive, PeerAddr: "a:3"},
		"draining": {Health: Alive, Draining: true, RTT: time.Millisecond, PeerAddr: "a:4"},
		"suspect":  {Health: Suspect, RTT: time.Millisecond, PeerAddr: "a:5"},
		"dead":     {Health: Gone, RTT: time.Millisecond, PeerAddr: "a:6"},
		"noaddr":   {Health: Alive, RTT: time.Millisecond},
	}
	lookup := func(id string) (Proxy, bool) { p, ok := proxies[id]; return p, ok }
	cases := []struct {
		name    string
		holders []string
		want    []string
	}{
		{"local first", []string{"slow", "me", "fast"}, []string{"me", "fast", "slow"}},
		{"rtt, unmeasured last", []string{"unknown", "slow", "fast"}, []string{"fast", "slow", "unknown"}},
		{"draining after active", []string{"draining", "slow"}, []string{"slow", "draining"}},
		{"suspect after alive and draining", []string{"suspect", "draining", "unknown"}, []string{"unknown", "draining", "suspect"}},
		{"dead, unknown and addressless skipped", []string{"dead", "ghost", "noaddr", "fast"}, []string{"fast"}},
		{"duplicates once", []string{"fast", "fast", "me", "me"}, []string{"me", "fast"}},
		{"nobody", nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ids(Plan("me", c.holders, lookup))
			if len(got) != len(c.want) {
				t.Fatalf("plan %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("plan %v, want %v", got, c.want)
				}
			}
		})
	}
	if h := Plan("me", []string{"me"}, lookup); len(h) != 1 || !h[0].Local {
		t.Fatalf("local hop not marked local: %+v", h)
	}
}

func TestDistance(t *testing.T) {
	// Tokyo to London is about 9,560 km; Frankfurt to Virginia (Ashburn) about 6,550 km.
	cases := []struct {
		name                   string
		lat1, lon1, lat2, lon2 float64
		want, tol              float64
	}{
		{"tokyo-london", 35.6762, 139.6503, 51.5074, -0.1278, 9560, 30},
		{"frankfurt-ashburn", 50.1109, 8.6821, 39.0438, -77.4874, 6550, 40},
		{"same point", 10, 10, 10, 10, 0, 0.001},
		{"antipodes", 0, 0, 0, 180, math.Pi * EarthRadiusKm, 0.01},
	}
	for _, c := range cases {
		if got := Distance(c.lat1, c.lon1, c.lat2, c.lon2); math.Abs(got-c.want) > c.tol {
			t.Errorf("%s: %.0f km, want %.0f±%.0f", c.name, got, c.want, c.tol)
		}
	}
}

func TestTryPlan(t *testing.T) {
	plan := []Hop{{Proxy: Proxy{ID: "me"}, Local: true}, {Proxy: Proxy{ID: "dead"}}, {Proxy: Proxy{ID: "refuses"}}, {Proxy: Proxy{ID: "good"}}}
	var tried []string
	var deadline time.Duration
	c, via, failures := TryPlan(context.Background(), plan, 50*time.Millisecond, func(ctx context.Context, h Hop) (net.Conn, error) {
		tried = append(tried, h.ID)
		switch h.ID {
		case "dead": // hangs until its hop timeout
			d, _ := ctx.Deadline()
			deadline = time.Until(d)
			<-ctx.Done()
			return nil, ctx.Err()
		case "refuses":
			return nil, errors.New("node offline here")
		}
		a, _ := net.Pipe()
		return a, nil
	})
	if c == nil || via.ID != "good" || len(failures) != 2 || failures[0].Hop.ID != "dead" || failures[1].Hop.ID != "refuses" {
		t.Fatalf("via %q, failures %+v", via.ID, failures)
	}
	c.Close()
	if strings.Join(tried, ",") != "dead,refuses,good" {
		t.Fatalf("tried %v: the local hop is the caller's", tried)
	}
	if deadline <= 0 || deadline > 50*time.Millisecond {
		t.Fatalf("a hung hop got %v, want at most the hop timeout", deadline)
	}
	// The last hop gets the caller's whole deadline, and an empty plan fails with no failures.
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	_, _, failures = TryPlan(ctx, plan[3:], time.Millisecond, func(ctx context.Context, h Hop) (net.Conn, error) {
		if d, _ := ctx.Deadline(); time.Until(d) < time.Minute {
			t.Errorf("last hop limited to %v", time.Until(d))
		}
		return nil, errors.New("no")
	})
	if len(failures) != 1 {
		t.Fatalf("failures %+v", failures)
	}
	if _, _, f := TryPlan(ctx, nil, time.Second, nil); len(f) != 0 {
		t.Fatalf("empty plan: %+v", f)
	}
}
