package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"jumpgate.dev/jumpgate/mesh/geo"
	"jumpgate.dev/jumpgate/mesh/geo/geotest"
	"jumpgate.dev/jumpgate/mesh/route"
)

// BenchmarkLookupAndRank50 is what one discovery request costs a proxy
// of a 50-proxy mesh besides HTTP and the JSON answer: a GeoIP lookup of
// the client and route.Rank of 50 candidates. Target: under 5 µs.
func BenchmarkLookupAndRank50(b *testing.B) {
	path := filepath.Join(b.TempDir(), "geo.mmdb")
	geotest.WriteTestDB(b, path, geotest.Loopback3())
	db, err := geo.Open(geo.Config{Path: path, ReloadEvery: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	cands := make([]route.Candidate, 50)
	for i := range cands {
		cands[i] = route.Candidate{ID: fmt.Sprintf("proxy-%02d", i), PublicAddr: "p:3080", Lat: float64(i%90) - 45, Lon: float64(i*7%360) - 180, HasCoords: true, Load: uint32(i % 5)}
		cands[i].Point = route.PointOf(cands[i].Lat, cands[i].Lon) // discovery caches these
	}
	clients := []netip.Addr{netip.MustParseAddr("127.1.0.5"), netip.MustParseAddr("127.2.0.5"), netip.MustParseAddr("127.3.0.5")}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		loc, ok := db.Lookup(clients[i%len(clients)])
		rs := route.Rank(route.ClientLocation{Known: ok, Lat: loc.Lat, Lon: loc.Lon, City: loc.City, Country: loc.Country}, cands)
		if len(rs) != 50 {
			b.Fatal(len(rs))
		}
	}
}
