package main

import (
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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

// TestDiscoveryWithoutDatabase: a missing or corrupt GeoIP database is
// reported in the answer and discovery ranks by latency; it never fails.
func TestDiscoveryWithoutDatabase(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.mmdb")
	os.WriteFile(corrupt, []byte("this is not a MaxMind database"), 0o600)
	for _, path := range []string{filepath.Join(dir, "missing.mmdb"), corrupt} {
		p := &process{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry()}
		cfg := Config{Proxy: ProxyConfig{ID: "p1", Region: "eu", Location: &Location{Lat: 50, Lon: 8}, Discovery: DiscoveryConfig{GeoIPDB: path, ProxyProtocol: "off"}}}
		d, err := newDiscovery(p, cfg, nil, "127.0.0.1:3080", func() int { return 0 })
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		r := httptest.NewRequest("GET", "/v1/discover", nil)
		r.RemoteAddr = "127.1.0.5:40000"
		ans := d.discover(r)
		if len(ans.Proxies) != 1 || ans.Proxies[0].ID != "p1" || ans.Client.Located || !strings.Contains(ans.GeoIP, filepath.Base(path)) {
			t.Fatalf("%s: %+v", path, ans)
		}
	}
}
