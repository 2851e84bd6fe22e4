package route

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var (
	tokyo     = ClientLocation{Known: true, Lat: 35.68, Lon: 139.69, City: "Tokyo", Country: "JP"}
	frankfurt = ClientLocation{Known: true, Lat: 50.11, Lon: 8.68, City: "Frankfurt", Country: "DE"}
)

func threeRegions() []Candidate {
	return []Candidate{
		{ID: "proxy-us", Region: "us-east", Lat: 39.04, Lon: -77.49, HasCoords: true, Self: true},
		{ID: "proxy-eu", Region: "eu-central", Lat: 50.11, Lon: 8.68, HasCoords: true},
		{ID: "proxy-ap", Region: "ap-northeast", Lat: 35.68, Lon: 139.69, HasCoords: true},
	}
}

// explained is Rank with every Reason filled.
func explained(c ClientLocation, cands []Candidate) []Ranked {
	rs := Rank(c, cands)
	for i := range rs {
		rs[i].Reason = Explain(c, rs, i)
	}
	return rs
}

func rankIDs(rs []Ranked) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.ID)
	}
	return strings.Join(s, ",")
}

func TestRank(t *testing.T) {
	if got := rankIDs(Rank(tokyo, threeRegions())); got != "proxy-ap,proxy-us,proxy-eu" {
		// Tokyo-Virginia 10,900 km, Tokyo-Frankfurt 9,300 km: eu second.
		if got != "proxy-ap,proxy-eu,proxy-us" {
			t.Fatalf("from Tokyo: %s", got)
		}
	}
	rs := explained(frankfurt, threeRegions())
	if rs[0].ID != "proxy-eu" || rs[0].DistanceKm > 1 || !strings.Contains(rs[0].Reason, "Frankfurt") {
		t.Fatalf("from Frankfurt: %+v", rs[0])
	}

	// The nearest draining: last. The nearest dead: gone.
	c := threeRegions()
	c[2].Draining = true
	if got := rankIDs(Rank(tokyo, c)); !strings.HasSuffix(got, "proxy-ap") || !strings.Contains(explained(tokyo, c)[2].Reason, "draining") {
		t.Fatalf("nearest draining: %s", got)
	}
	c = threeRegions()
	c[2].Health = Gone
	if got := rankIDs(Rank(tokyo, c)); strings.Contains(got, "proxy-ap") {
		t.Fatalf("nearest dead: %s", got)
	}
	// Suspect after alive.
	c = threeRegions()
	c[1].Health = Suspect
	if got := Rank(frankfurt, c); got[0].ID == "proxy-eu" {
		t.Fatalf("suspect first: %s", rankIDs(got))
	}

	// Two proxies in one city: the less loaded first.
	c = append(threeRegions(), Candidate{ID: "proxy-eu-2", Lat: 50.0, Lon: 8.5, HasCoords: true, Load: 1})
	c[1].Load = 50
	if got := explained(frankfurt, c); got[0].ID != "proxy-eu-2" || got[1].ID != "proxy-eu" || !strings.Contains(got[1].Reason, "less loaded") {
		t.Fatalf("same band by load: %s / %q", rankIDs(got), got[1].Reason)
	}

	// Unknown client: the answering proxy, then by its RTT.
	c = threeRegions()
	c[1].RTT, c[2].RTT = 90*time.Millisecond, 150*time.Millisecond
	if got := rankIDs(Rank(ClientLocation{}, c)); got != "proxy-us,proxy-eu,proxy-ap" {
		t.Fatalf("latency fallback: %s", got)
	}
	// A proxy without coordinates comes after those with them.
	c = threeRegions()
	c[2].HasCoords = false
	if got := Rank(tokyo, c); got[2].ID != "proxy-ap" || got[2].DistanceKm != -1 {
		t.Fatalf("no coordinates: %s", rankIDs(got))
	}
}

func TestChooseHome(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		cur     string
		rtts    map[string]time.Duration
		want    string
		switch_ bool
	}{
		{"", map[string]time.Duration{"a": 30 * ms, "b": 20 * ms}, "b", true},
		{"a", map[string]time.Duration{"a": 30 * ms, "b": 25 * ms}, "a", false}, // 5 ms: not enough
		{"a", map[string]time.Duration{"a": 30 * ms, "b": 21 * ms}, "a", false}, // 9 ms
		{"a", map[string]time.Duration{"a": 60 * ms, "b": 45 * ms}, "a", false}, // 15 ms but not a third faster
		{"a", map[string]time.Duration{"a": 30 * ms, "b": 15 * ms}, "b", true},  // 15 ms and half
		{"a", map[string]time.Duration{"a": 200 * ms, "b": 185 * ms}, "a", false},
		{"a", map[string]time.Duration{"b": 80 * ms}, "b", true}, // a did not answer
		{"a", map[string]time.Duration{}, "a", false},
	}
	for _, c := range cases {
		got, sw, why := ChooseHome(c.cur, c.rtts)
		if got != c.want || sw != c.switch_ || why == "" {
			t.Errorf("ChooseHome(%q, %v) = %q, %v (%s); want %q, %v", c.cur, c.rtts, got, sw, why, c.want, c.switch_)
		}
	}
}

// TestHomeDoesNotFlap: two proxies 40 and 42 ms away, each probe
// jittered by queueing (exponential, mean 5 ms, so now and then 20-30 ms
// more); the client takes the best of three probes per proxy, as jg does.
// Over 1,000 re-checks the home must stay put, where picking the lowest
// RTT each time flips it hundreds of times.
func TestHomeDoesNotFlap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	probe := func(base time.Duration) time.Duration {
		best := time.Duration(0)
		for i := 0; i < 3; i++ {
			d := base + time.Duration(rng.ExpFloat64()*float64(5*time.Millisecond))
			if i == 0 || d < best {
				best = d
			}
		}
		return best
	}
	home, switches, naive, naiveHome := "", 0, 0, ""
	for range 1000 {
		rtts := map[string]time.Duration{"a": probe(40 * time.Millisecond), "b": probe(42 * time.Millisecond)}
		next, sw, _ := ChooseHome(home, rtts)
		if sw && home != "" {
			switches++
		}
		home = next
		lowest := "a"
		if rtts["b"] < rtts["a"] {
			lowest = "b"
		}
		if naiveHome != "" && lowest != naiveHome {
			naive++
		}
		naiveHome = lowest
	}
	if switches > 0 {
		t.Fatalf("home switched %d times in 1,000 jittered re-checks", switches)
	}
	if naive < 100 {
		t.Fatalf("the jitter is too small to test anything: lowest-RTT would have switched only %d times", naive)
	}
	t.Logf("0 switches with hysteresis; %d without", naive)
}

// BenchmarkRank50: discovery's ranking for a 50-proxy mesh (with the
// proxies' points precomputed, as discovery keeps them).
func BenchmarkRank50(b *testing.B) {
	cands := make([]Candidate, 50)
	for i := range cands {
		cands[i] = Candidate{ID: "proxy-" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Lat: float64(i%90) - 45, Lon: float64(i*7%360) - 180, HasCoords: true, Load: uint32(i % 5)}
		cands[i].Point = PointOf(cands[i].Lat, cands[i].Lon) // discovery keeps these between requests
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		Rank(tokyo, cands)
	}
}
