package main

import (
	"testing"
	"time"

	"jumpgate.dev/jumpgate/mesh/route"
)

// TestPickRedirect: a draining proxy spreads its clients over the proxies
// as good as the best for them, never itself, a draining or a suspect one.
func TestPickRedirect(t *testing.T) {
	picks := func(client route.ClientLocation, cands []route.Candidate) map[string]int {
		t.Helper()
		got := map[string]int{}
		ranked := route.Rank(client, cands)
		for n := range uint64(60) {
			rp, ok := pickRedirect(ranked, "self", n)
			if !ok {
				t.Fatal("no redirect")
			}
			got[rp.ID]++
		}
		return got
	}
	// Located client in Paris: two proxies in Paris (one loaded), one in
	// Frankfurt (another band), one draining in Paris, one suspect.
	paris := route.ClientLocation{Known: true, Lat: 48.86, Lon: 2.35}
	cands := []route.Candidate{
		{ID: "self", Lat: 48.86, Lon: 2.35, HasCoords: true, Self: true},
		{ID: "par1", Lat: 48.85, Lon: 2.35, HasCoords: true, Load: 10},
		{ID: "par2", Lat: 48.87, Lon: 2.30, HasCoords: true, Load: 500},
		{ID: "fra1", Lat: 50.11, Lon: 8.68, HasCoords: true},
		{ID: "par3", Lat: 48.86, Lon: 2.35, HasCoords: true, Draining: true},
		{ID: "par4", Lat: 48.86, Lon: 2.35, HasCoords: true, Health: route.Suspect},
	}
	if got := picks(paris, cands); got["par1"] != 30 || got["par2"] != 30 || len(got) != 2 {
		t.Errorf("Paris client sent to %v, want par1 and par2 evenly", got)
	}
	// Without Paris, Frankfurt is the best: all go there.
	if got := picks(paris, []route.Candidate{cands[0], cands[3], cands[4]}); got["fra1"] != 60 {
		t.Errorf("got %v, want everyone to fra1", got)
	}
	// No location: by RTT from here, within 5 ms of the nearest.
	lat := []route.Candidate{
		{ID: "self", Self: true},
		{ID: "a", RTT: 2 * time.Millisecond},
		{ID: "b", RTT: 6 * time.Millisecond},
		{ID: "c", RTT: 80 * time.Millisecond},
		{ID: "d"}, // unmeasured
	}
	if got := picks(route.ClientLocation{}, lat); got["a"] != 30 || got["b"] != 30 || len(got) != 2 {
		t.Errorf("got %v, want a and b evenly", got)
	}
	// Only unmeasured ones left: those, evenly.
	if got := picks(route.ClientLocation{}, []route.Candidate{lat[0], lat[4], {ID: "e"}}); got["d"] != 30 || got["e"] != 30 {
		t.Errorf("got %v, want d and e evenly", got)
	}
	if _, ok := pickRedirect(route.Rank(paris, []route.Candidate{cands[0], cands[4], cands[5]}), "self", 0); ok {
		t.Error("a redirect to a draining or suspect proxy")
	}
}
