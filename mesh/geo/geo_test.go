package geo

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
	"github.com/oschwald/geoip2-golang/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"jumpgate.dev/jumpgate/mesh/geo/geotest"
)

// logBuffer is a goroutine-safe log sink for checking what a DB logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func open(t *testing.T, cfg Config) *DB {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	db, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// wantLoc checks that ip is at e.
func wantLoc(t *testing.T, db *DB, ip netip.Addr, e geotest.Entry) {
	t.Helper()
	loc, ok := db.Lookup(ip)
	want := Location{Lat: e.Lat, Lon: e.Lon, City: e.City, Country: e.Country, Continent: e.Continent}
	if !ok || loc != want {
		t.Errorf("Lookup(%s) = %+v, %v; want %+v, true", ip, loc, ok, want)
	}
}

func wantMiss(t *testing.T, db *DB, ip netip.Addr) {
	t.Helper()
	if loc, ok := db.Lookup(ip); ok {
		t.Errorf("Lookup(%s) = %+v, true; want a miss", ip, loc)
	}
}

// checkLoopback3 checks lookups against geotest.Loopback3.
func checkLoopback3(t *testing.T, db *DB) {
	t.Helper()
	entries := geotest.Loopback3()
	for _, e := range entries {
		wantLoc(t, db, e.Addr(), e)
		// The last address of the network too.
		p := netip.MustParsePrefix(e.CIDR)
		last := p.Addr()
		for i := 0; i < last.BitLen()-p.Bits(); i++ {
			b := last.AsSlice()
			b[len(b)-1-i/8] |= 1 << (i % 8)
			last, _ = netip.AddrFromSlice(b)
		}
		wantLoc(t, db, last, e)
	}
	tokyo, frankfurt := entries[0], entries[1]
	// A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6.
	wantLoc(t, db, addr("::ffff:127.2.3.4"), frankfurt)
	// A zone does not matter.
	wantLoc(t, db, addr("2001:218::1%eth0"), entries[7])
	wantLoc(t, db, addr("127.1.200.7"), tokyo)

	for _, s := range []string{
		"127.0.0.1",   // loopback outside the three regions
		"127.4.0.1",   // next to them
		"8.8.8.8",     // public, not in the file
		"81.2.70.1",   // next to London's /24
		"2001:db8::1", // documentation range
		"2a01:4f9::1", // next to Nuremberg's /32
		"::1",
	} {
		wantMiss(t, db, addr(s))
	}
	wantMiss(t, db, netip.Addr{})
}

func TestLookupGeoLite2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	geotest.WriteTestDB(t, path, geotest.Loopback3())
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := open(t, Config{Path: path, Now: func() time.Time { return now }})

	checkLoopback3(t, db)

	want := Info{Path: path, Type: "GeoLite2-City", Layout: LayoutGeoIP2, Built: time.Unix(geotest.BuildEpoch, 0), Loaded: now}
	if got := db.Info(); got != want {
		t.Errorf("Info() = %+v\nwant %+v", got, want)
	}
}

func TestLookupFlat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dbip-city.mmdb")
	geotest.WriteFlatTestDB(t, path, geotest.Loopback3())
	db := open(t, Config{Path: path})

	// The same answers: the continent comes from the country code.
	checkLoopback3(t, db)

	info := db.Info()
	if info.Type != geotest.Flat.DatabaseType() || info.Layout != LayoutFlat || info.Err != "" {
		t.Errorf("Info() = %+v; want type %q, layout %q, no error", info, geotest.Flat.DatabaseType(), LayoutFlat)
	}
}

// TestAgreesWithGeoIP2 checks the single-pass decoder against
// geoip2-golang's own City decoding of the same file.
func TestAgreesWithGeoIP2(t *testing.T) {
	data, err := geotest.Encode(geotest.GeoLite2, geotest.Loopback3())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := geoip2.OpenBytes(data)
	if err != nil {
		t.Fatalf("geoip2.OpenBytes: %v", err)
	}
	path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	db := open(t, Config{Path: path})
	for _, e := range geotest.Loopback3() {
		c, err := ref.City(e.Addr())
		if err != nil || !c.Location.HasCoordinates() {
			t.Fatalf("geoip2 City(%s) = %+v, %v", e.Addr(), c, err)
		}
		want := Location{Lat: *c.Location.Latitude, Lon: *c.Location.Longitude, City: c.City.Names.English, Country: c.Country.ISOCode, Continent: c.Continent.Code}
		if got, ok := db.Lookup(e.Addr()); !ok || got != want {
			t.Errorf("Lookup(%s) = %+v, %v; geoip2 says %+v", e.Addr(), got, ok, want)
		}
	}
}

// writeMMDB writes records (CIDR → record) as an .mmdb file of the given
// database type.
func writeMMDB(t *testing.T, path, dbType string, records map[string]mmdbtype.Map) {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            dbType,
		Description:             map[string]string{"en": "test"},
		IncludeReservedNetworks: true,
		RecordSize:              24,
	})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rec := range records {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Insert(n, rec); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := tree.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if err := geotest.WriteFileAtomic(path, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// TestFlatVariants covers how third-party flat files encode coordinates.
func TestFlatVariants(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flat.mmdb")
	writeMMDB(t, path, "some-converter-city", map[string]mmdbtype.Map{
		"10.1.0.0/16": {"city": mmdbtype.String("Osaka"), "country_code": mmdbtype.String("JP"),
			"latitude": mmdbtype.Float32(34.75), "longitude": mmdbtype.Float32(135.5)},
		"10.2.0.0/16": {"city": mmdbtype.String("Quito"), "country_code": mmdbtype.String("EC"),
			"latitude": mmdbtype.String("-0.25"), "longitude": mmdbtype.String("-78.5")},
		"10.3.0.0/16": {"country_code": mmdbtype.String("SG"), "continent_code": mmdbtype.String("XX"),
			"latitude": mmdbtype.Int32(1), "longitude": mmdbtype.Uint16(104)},
		"10.4.0.0/16": {"city": mmdbtype.String("Nowhere"), "country_code": mmdbtype.String("ZZ"),
			"latitude": mmdbtype.Float64(0), "longitude": mmdbtype.Float64(0)},
		"10.5.0.0/16": {"city": mmdbtype.String("Nocoords"), "country_code": mmdbtype.String("FR")},
		"10.6.0.0/16": {"city": mmdbtype.String("Off the map"), "latitude": mmdbtype.Float64(91), "longitude": mmdbtype.Float64(0)},
		"10.7.0.0/16": {"city": mmdbtype.String("Words"), "latitude": mmdbtype.String("north"), "longitude": mmdbtype.Float64(1)},
		"10.8.0.0/16": {"city": mmdbtype.String("Blank"), "latitude": mmdbtype.String(""), "longitude": mmdbtype.Map{}},
		// Sorts first in the tree: a record without usable coordinates does
		// not stop Open, which looks further for one that has them.
		"1.0.0.0/24": {"city": mmdbtype.String("Words"), "latitude": mmdbtype.String("north"), "longitude": mmdbtype.Bool(true)},
	})
	db := open(t, Config{Path: path})
	if got := db.Info().Layout; got != LayoutFlat {
		t.Errorf("layout %q, want %q", got, LayoutFlat)
	}
	for _, c := range []struct {
		ip   string
		want Location
	}{
		{"10.1.0.1", Location{Lat: 34.75, Lon: 135.5, City: "Osaka", Country: "JP", Continent: "AS"}},
		{"10.2.0.1", Location{Lat: -0.25, Lon: -78.5, City: "Quito", Country: "EC", Continent: "SA"}},
		{"10.3.0.1", Location{Lat: 1, Lon: 104, Country: "SG", Continent: "XX"}}, // a continent in the file wins
	} {
		if got, ok := db.Lookup(addr(c.ip)); !ok || got != c.want {
			t.Errorf("Lookup(%s) = %+v, %v; want %+v", c.ip, got, ok, c.want)
		}
	}
	for _, ip := range []string{"10.4.0.1", "10.5.0.1", "10.6.0.1", "10.7.0.1", "10.8.0.1", "1.0.0.1"} {
		wantMiss(t, db, addr(ip))
	}
}

// geoIP2Record is a GeoIP2-layout record; loc false leaves out location.
func geoIP2Record(city, country, continent string, lat, lon float64, loc bool) mmdbtype.Map {
	m := mmdbtype.Map{
		"city":      mmdbtype.Map{"names": mmdbtype.Map{"en": mmdbtype.String(city), "de": mmdbtype.String(city + "-de")}},
		"country":   mmdbtype.Map{"iso_code": mmdbtype.String(country)},
		"continent": mmdbtype.Map{"code": mmdbtype.String(continent)},
	}
	if loc {
		m["location"] = mmdbtype.Map{"latitude": mmdbtype.Float64(lat), "longitude": mmdbtype.Float64(lon), "accuracy_radius": mmdbtype.Uint16(100)}
	}
	return m
}

// TestGeoIP2LayoutAnyType: the GeoIP2 layout reads whatever the type string
// says, including DB-IP's and types geoip2-golang/v2 refuses to open.
func TestGeoIP2LayoutAnyType(t *testing.T) {
	for _, dbType := range []string{"DBIP-City-Lite", "Acme-Geo-City"} {
		t.Run(dbType, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "city.mmdb")
			writeMMDB(t, path, dbType, map[string]mmdbtype.Map{
				"10.1.0.0/16": geoIP2Record("Singapore", "SG", "AS", 1.29, 103.85, true),
				"10.2.0.0/16": geoIP2Record("Lyon", "FR", "EU", 0, 0, false), // country-level record without coordinates
				"10.3.0.0/16": geoIP2Record("Accra", "GH", "AF", 0, 0, true), // GeoIP2: present coordinates count, even (0, 0)
			})
			db := open(t, Config{Path: path})
			if info := db.Info(); info.Type != dbType || info.Layout != LayoutGeoIP2 {
				t.Errorf("Info() = %+v; want type %q, layout %q", info, dbType, LayoutGeoIP2)
			}
			want := Location{Lat: 1.29, Lon: 103.85, City: "Singapore", Country: "SG", Continent: "AS"}
			if got, ok := db.Lookup(addr("10.1.2.3")); !ok || got != want {
				t.Errorf("Lookup = %+v, %v; want %+v", got, ok, want)
			}
			wantMiss(t, db, addr("10.2.0.1"))
			want = Location{City: "Accra", Country: "GH", Continent: "AF"}
			if got, ok := db.Lookup(addr("10.3.0.1")); !ok || got != want {
				t.Errorf("Lookup = %+v, %v; want %+v", got, ok, want)
			}
		})
	}
	// The reason for reading the layout rather than trusting the type:
	// geoip2-golang/v2 refuses types it does not know.
	path := filepath.Join(t.TempDir(), "acme.mmdb")
	writeMMDB(t, path, "Acme-Geo-City", map[string]mmdbtype.Map{"10.1.0.0/16": geoIP2Record("X", "SG", "AS", 1, 2, true)})
	if r, err := geoip2.Open(path); err == nil {
		r.Close()
		t.Errorf("geoip2.Open accepted type Acme-Geo-City; the workaround may be unnecessary now")
	}
}

func TestOpenCountryDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "GeoLite2-Country.mmdb")
	writeMMDB(t, path, "GeoLite2-Country", map[string]mmdbtype.Map{
		"10.1.0.0/16": geoIP2Record("", "SG", "AS", 0, 0, false),
		"10.2.0.0/16": geoIP2Record("", "FR", "EU", 0, 0, false),
	})
	_, err := Open(Config{Path: path})
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "GeoLite2-Country") || !strings.Contains(err.Error(), "use a city database") {
		t.Errorf("Open(country database) error = %v; want one naming the file and type and asking for a city database", err)
	}
}

func TestOpenMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope", "GeoLite2-City.mmdb")
	db, err := Open(Config{Path: path})
	if err == nil {
		db.Close()
		t.Fatal("Open(missing file) succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "latency") {
		t.Errorf("error = %q; want ErrNotExist, naming %s and the latency-only fallback", err, path)
	}
	// A failed Open leaves the registry as it was.
	reg := prometheus.NewRegistry()
	if _, err := Open(Config{Path: path, Metrics: reg}); err == nil {
		t.Fatal("Open(missing file) succeeded")
	}
	good := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	geotest.WriteTestDB(t, good, geotest.Loopback3())
	open(t, Config{Path: good, Metrics: reg})

	if _, err := Open(Config{}); err == nil || !strings.Contains(err.Error(), "Path is required") {
		t.Errorf("Open(no path) error = %v; want Path is required", err)
	}
}

// TestOpenBadFiles: empty files, directories, random bytes and truncated
// databases give errors naming the file, and never a panic.
func TestOpenBadFiles(t *testing.T) {
	dir := t.TempDir()
	good, err := geotest.Encode(geotest.GeoLite2, geotest.Loopback3())
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	flipped := bytes.Clone(good)
	for i := 0; i < len(flipped)/2; i += 7 { // garbage in the search tree and data, metadata intact
		flipped[i] ^= 0x5a
	}
	cases := map[string][]byte{
		"empty":         {},
		"random-16":     random(16),
		"random-4k":     random(4096),
		"random-1m":     random(1 << 20),
		"text":          []byte("<html>403 Forbidden</html>\n"),
		"truncated":     good[:len(good)/2],
		"no-metadata":   good[:len(good)-40],
		"metadata-only": good[bytes.LastIndex(good, []byte("\xab\xcd\xefMaxMind.com")):],
		"flipped":       flipped,
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".mmdb")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			db, err := Open(Config{Path: path})
			if err == nil {
				// A file whose damage the probe did not reach may open;
				// lookups must then still not panic.
				defer db.Close()
				for _, e := range geotest.Loopback3() {
					db.Lookup(e.Addr())
				}
				if name != "flipped" {
					t.Fatalf("Open(%s) succeeded", name)
				}
				return
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if name == "empty" && !strings.Contains(err.Error(), "empty") {
				t.Errorf("error %q does not say the file is empty", err)
			}
			t.Logf("%s: %v", name, err)
		})
	}
	t.Run("directory", func(t *testing.T) {
		_, err := Open(Config{Path: dir})
		if err == nil || !strings.Contains(err.Error(), "directory") {
			t.Errorf("Open(directory) error = %v", err)
		}
	})
}

// TestReload is the real thing, real clock: a new file appears, and within
// a few ReloadEvery the new answer is served.
func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	entries := geotest.Loopback3()
	geotest.WriteTestDB(t, path, entries)
	reg := prometheus.NewRegistry()
	db := open(t, Config{Path: path, ReloadEvery: 50 * time.Millisecond, Metrics: reg})
	loaded := db.Info().Loaded
	wantLoc(t, db, addr("127.1.0.1"), entries[0])

	// Tokyo's region moves to Osaka.
	entries[0] = geotest.Entry{CIDR: geotest.TokyoCIDR, City: "Osaka", Country: "JP", Continent: "AS", Lat: 34.69, Lon: 135.5}
	geotest.WriteTestDB(t, path, entries)
	future := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, future, future); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "the new database", func() bool {
		loc, _ := db.Lookup(addr("127.1.0.1"))
		return loc.City == "Osaka"
	})
	t.Logf("new answer after %v", time.Since(start))
	wantLoc(t, db, addr("127.1.0.1"), entries[0])
	wantLoc(t, db, addr("127.2.0.1"), entries[1])
	if info := db.Info(); !info.Loaded.After(loaded) || info.Err != "" {
		t.Errorf("Info() after reload = %+v", info)
	}
	if got := counter(t, reg, "jumpgate_geoip_reloads_total", "ok"); got != 1 {
		t.Errorf("reloads ok = %v, want 1", got)
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// inBubble runs f in a synctest bubble with a DB that checks the file
// every second of fake time; tick advances to just after the next check.
func inBubble(t *testing.T, f func(t *testing.T, path string, db *DB, reg *prometheus.Registry, logs *logBuffer, tick func())) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
		geotest.WriteTestDB(t, path, geotest.Loopback3())
		reg := prometheus.NewRegistry()
		logs := &logBuffer{}
		db, err := Open(Config{Path: path, ReloadEvery: time.Second, Metrics: reg, Logger: logs.logger()})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		tick := func() {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		f(t, path, db, reg, logs, tick)
	})
}

func TestReloadCorruptKeepsOld(t *testing.T) {
	inBubble(t, func(t *testing.T, path string, db *DB, reg *prometheus.Registry, logs *logBuffer, tick func()) {
		old := db.Info()
		if err := geotest.WriteFileAtomic(path, []byte("not a database, just an HTML error page")); err != nil {
			t.Fatal(err)
		}
		tick()
		checkLoopback3(t, db) // still the old data
		info := db.Info()
		if info.Err == "" || !strings.Contains(info.Err, path) || !strings.Contains(info.Err, "still serving") {
			t.Errorf("Info().Err = %q; want the reason, the path, and that the old version still serves", info.Err)
		}
		if info.Loaded != old.Loaded || info.Type != old.Type {
			t.Errorf("Info() = %+v; want the old version %+v", info, old)
		}
		if !strings.Contains(logs.String(), "geoip database reload failed") {
			t.Errorf("no reload failure in the log:\n%s", logs)
		}
		// The same bad file is not reported again at every check.
		tick()
		tick()
		if got := counter(t, reg, "jumpgate_geoip_reloads_total", "error"); got != 1 {
			t.Errorf("reloads error = %v, want 1", got)
		}
		if n := strings.Count(logs.String(), "reload failed"); n != 1 {
			t.Errorf("reload failure logged %d times, want once", n)
		}

		// A good file again: in service, error cleared.
		entries := geotest.Loopback3()
		entries[1].City = "Offenbach"
		geotest.WriteTestDB(t, path, entries)
		tick()
		wantLoc(t, db, addr("127.2.0.1"), entries[1])
		if info := db.Info(); info.Err != "" {
			t.Errorf("Info().Err = %q after a good reload", info.Err)
		}
		if got := counter(t, reg, "jumpgate_geoip_reloads_total", "ok"); got != 1 {
			t.Errorf("reloads ok = %v, want 1", got)
		}
	})
}

func TestReloadFileGone(t *testing.T) {
	inBubble(t, func(t *testing.T, path string, db *DB, reg *prometheus.Registry, logs *logBuffer, tick func()) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		tick()
		tick()
		checkLoopback3(t, db)
		if info := db.Info(); !strings.Contains(info.Err, "is gone") || !strings.Contains(info.Err, path) {
			t.Errorf("Info().Err = %q; want that %s is gone", info.Err, path)
		}
		if n := strings.Count(logs.String(), "is gone"); n != 1 {
			t.Errorf("disappearance logged %d times, want once:\n%s", n, logs)
		}
		// An empty file in its place is an error too, and old data stays.
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		tick()
		checkLoopback3(t, db)
		if info := db.Info(); !strings.Contains(info.Err, "empty") {
			t.Errorf("Info().Err = %q; want empty file", info.Err)
		}
		// The file is back.
		geotest.WriteFlatTestDB(t, path, geotest.Loopback3())
		tick()
		if info := db.Info(); info.Err != "" || info.Layout != LayoutFlat {
			t.Errorf("Info() = %+v; want the flat file in service", info)
		}
		checkLoopback3(t, db)
		if got := counter(t, reg, "jumpgate_geoip_reloads_total", "error"); got != 2 {
			t.Errorf("reloads error = %v, want 2 (gone, empty)", got)
		}
	})
}

// TestReloadInPlace: a file overwritten in place (cp rather than mv), with
// the same size and modification time as before, as a careless script may
// leave it. Only a different size or time is noticed then, so the test
// bumps the time, like touch would.
func TestReloadInPlace(t *testing.T) {
	inBubble(t, func(t *testing.T, path string, db *DB, reg *prometheus.Registry, logs *logBuffer, tick func()) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		entries := geotest.Loopback3()
		entries[2].Lat, entries[2].Lon = 38.96, -77.36 // doubles: the same file size
		data, err := geotest.Encode(geotest.GeoLite2, entries)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
		if fi2, _ := os.Stat(path); fi2.Size() == fi.Size() {
			t.Log("same size: checking that a same-size, same-time rewrite goes unnoticed")
			tick()
			wantLoc(t, db, addr("127.3.0.1"), geotest.Loopback3()[2]) // unnoticed: same file, size and time
		}
		later := fi.ModTime().Add(time.Second)
		if err := os.Chtimes(path, later, later); err != nil {
			t.Fatal(err)
		}
		tick()
		wantLoc(t, db, addr("127.3.0.1"), entries[2])
	})
}

func TestMetrics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	geotest.WriteTestDB(t, path, geotest.Loopback3())
	reg := prometheus.NewRegistry()
	db := open(t, Config{Path: path, Metrics: reg, ReloadEvery: -1})
	db.Lookup(addr("127.1.0.1"))
	db.Lookup(addr("81.2.69.142"))
	db.Lookup(addr("2a01:4f8::1"))
	db.Lookup(addr("192.0.2.1"))
	if got := counter(t, reg, "jumpgate_geoip_lookups_total", "hit"); got != 3 {
		t.Errorf("hits = %v, want 3", got)
	}
	if got := counter(t, reg, "jumpgate_geoip_lookups_total", "miss"); got != 1 {
		t.Errorf("misses = %v, want 1", got)
	}
	if got := counter(t, reg, "jumpgate_geoip_reloads_total", "error"); got != 0 {
		t.Errorf("reload errors = %v, want 0", got)
	}
	if got := gauge(t, reg, "jumpgate_geoip_database_build_timestamp_seconds"); got != geotest.BuildEpoch {
		t.Errorf("build timestamp = %v, want %v", got, geotest.BuildEpoch)
	}

	// One registry, one DB at a time: a second one is refused with a clear
	// error, and after Close the name is free again.
	if _, err := Open(Config{Path: path, Metrics: reg}); err == nil || !strings.Contains(err.Error(), "register geoip metrics") {
		t.Errorf("second Open on the same registry: error = %v", err)
	}
	db.Close()
	db.Close() // idempotent
	wantMiss(t, db, addr("127.1.0.1"))
	db2 := open(t, Config{Path: path, Metrics: reg})
	wantLoc(t, db2, addr("127.1.0.1"), geotest.Loopback3()[0])
}

// TestConcurrentReload runs lookups while versions are swapped under them
// (meant for -race).
func TestConcurrentReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "GeoLite2-City.mmdb")
	entries := geotest.Loopback3()
	geotest.WriteTestDB(t, path, entries)
	db := open(t, Config{Path: path, ReloadEvery: time.Millisecond})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				loc, ok := db.Lookup(addr("127.1.0.1"))
				if !ok || (loc.City != "Tokyo" && !strings.HasPrefix(loc.City, "Tokyo-")) {
					t.Errorf("Lookup during reload = %+v, %v", loc, ok)
					return
				}
				db.Info()
			}
		})
	}
	for i := range 5 {
		entries[0].City = fmt.Sprintf("Tokyo-%d", i)
		geotest.WriteTestDB(t, path, entries)
		waitFor(t, 5*time.Second, entries[0].City, func() bool {
			loc, _ := db.Lookup(addr("127.1.0.1"))
			return loc.City == entries[0].City
		})
	}
	close(stop)
	wg.Wait()
}

// TestManyRecords looks up thousands of distinct records twice, so that
// record cache slots are shared and replaced: every answer must still be
// its own network's.
func TestManyRecords(t *testing.T) {
	var entries []geotest.Entry
	for i := range 6000 {
		entries = append(entries, geotest.Entry{
			CIDR: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), City: fmt.Sprintf("City %d", i),
			Country: "NZ", Continent: "OC", Lat: -float64(i%90) - 0.5, Lon: float64(i%180) + 0.25,
		})
	}
	path := filepath.Join(t.TempDir(), "many.mmdb")
	geotest.WriteTestDB(t, path, entries)
	db := open(t, Config{Path: path})
	for range 2 {
		for _, e := range entries {
			wantLoc(t, db, e.Addr(), e)
		}
	}
}

func TestContinentOf(t *testing.T) {
	for cc, want := range map[string]string{
		"JP": "AS", "DE": "EU", "US": "NA", "BR": "SA", "AU": "OC", "ZA": "AF", "AQ": "AN",
		"RU": "EU", "TR": "AS", "MX": "NA", "NZ": "OC", "EG": "AF", "": "", "ZZ": "", "jp": "",
	} {
		if got := continentOf(cc); got != want {
			t.Errorf("continentOf(%q) = %q, want %q", cc, got, want)
		}
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name, result string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if result == "" {
				return m
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m
				}
			}
		}
	}
	t.Fatalf("no metric %s{result=%q}", name, result)
	return nil
}

func counter(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	return metric(t, reg, name, result).GetCounter().GetValue()
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metric(t, reg, name, "").GetGauge().GetValue()
}

// BenchmarkLookup measures one Lookup (tree walk, record cache or decode,
// hit/miss counter) in each layout:
//
//   - hit-ipv4, hit-ipv6: one address again and again (its record cached);
//   - miss: an address not in the file;
//   - cold: a database of 50,000 networks, each its own city, looked up in
//     turn, so that every lookup misses the record cache and decodes: the
//     cost of the first client from a place;
//   - warm: the same database, clients from 256 places: the usual case.
func BenchmarkLookup(b *testing.B) {
	const networks = 50_000
	large := make([]geotest.Entry, 0, networks)
	for i := range networks {
		large = append(large, geotest.Entry{
			CIDR:      fmt.Sprintf("%d.%d.%d.0/24", 11+i/65536, (i/256)%256, i%256),
			City:      fmt.Sprintf("City %d", i),
			Country:   "US",
			Continent: "NA",
			Lat:       float64(i%180) - 89.5,
			Lon:       float64(i%360) - 179.5,
		})
	}
	rng := rand.New(rand.NewPCG(3, 4))
	all := make([]netip.Addr, networks)
	for i, j := range rng.Perm(networks) {
		all[i] = large[j].Addr()
	}
	warm := all[:256]
	for _, layout := range []geotest.Layout{geotest.GeoLite2, geotest.Flat} {
		name := map[geotest.Layout]string{geotest.GeoLite2: "geolite2", geotest.Flat: "flat"}[layout]
		dir := b.TempDir()
		small := filepath.Join(dir, "small.mmdb")
		bigPath := filepath.Join(dir, "large.mmdb")
		for path, entries := range map[string][]geotest.Entry{small: geotest.Loopback3(), bigPath: large} {
			data, err := geotest.Encode(layout, entries)
			if err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(path, data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		quiet := slog.New(slog.DiscardHandler)
		smallDB, err := Open(Config{Path: small, ReloadEvery: -1, Metrics: prometheus.NewRegistry(), Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer smallDB.Close()
		largeDB, err := Open(Config{Path: bigPath, ReloadEvery: -1, Metrics: prometheus.NewRegistry(), Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer largeDB.Close()
		for _, c := range []struct {
			name string
			db   *DB
			ips  []netip.Addr
			hit  bool
		}{
			{"hit-ipv4", smallDB, []netip.Addr{addr("127.2.0.1")}, true},
			{"hit-ipv6", smallDB, []netip.Addr{addr("2a01:4f8::1")}, true},
			{"miss", smallDB, []netip.Addr{addr("8.8.8.8")}, false},
			{"cold", largeDB, all, true},
			{"warm", largeDB, warm, true},
		} {
			b.Run(name+"/"+c.name, func(b *testing.B) {
				if _, ok := c.db.Lookup(c.ips[0]); ok != c.hit {
					b.Fatalf("Lookup(%s) ok = %v", c.ips[0], ok)
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					c.db.Lookup(c.ips[i%len(c.ips)])
					i++
				}
			})
		}
		for _, c := range []struct {
			name string
			ips  []netip.Addr
		}{{"cold-parallel", all}, {"warm-parallel", warm}} {
			b.Run(name+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				var worker atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					i := int(worker.Add(1)) * 997
					for pb.Next() {
						largeDB.Lookup(c.ips[i%len(c.ips)])
						i++
					}
				})
			})
		}
	}
}

// BenchmarkGeoIP2City is the reference: geoip2-golang/v2's City, which
// decodes the whole record (all names, registered country, ...).
func BenchmarkGeoIP2City(b *testing.B) {
	data, err := geotest.Encode(geotest.GeoLite2, geotest.Loopback3())
	if err != nil {
		b.Fatal(err)
	}
	r, err := geoip2.OpenBytes(data)
	if err != nil {
		b.Fatal(err)
	}
	ip := addr("127.2.0.1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.City(ip); err != nil {
			b.Fatal(err)
		}
	}
}
