package geotest

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Entry is one network of a test database and where it is.
type Entry struct {
	CIDR      string  // network, e.g. "127.1.0.0/16" or "2a01:4f8::/32"
	City      string  // English city name
	Country   string  // ISO 3166-1 alpha-2 code, e.g. "JP"
	Continent string  // continent code: AF, AN, AS, EU, NA, OC or SA
	Lat, Lon  float64 // degrees
}

// Addr returns an address inside e's network: the first one after the
// network address (127.1.0.1 for 127.1.0.0/16), or the only one of a /32
// or /128. It panics on a malformed CIDR, which is a bug in the test.
func (e Entry) Addr() netip.Addr {
	p := netip.MustParsePrefix(e.CIDR).Masked()
	if p.IsSingleIP() {
		return p.Addr()
	}
	return p.Addr().Next()
}

// The loopback regions of Loopback3. End-to-end tests bind each simulated
// region's proxies and clients to addresses in its range.
const (
	TokyoCIDR     = "127.1.0.0/16" // Tokyo, JP, AS
	FrankfurtCIDR = "127.2.0.0/16" // Frankfurt, DE, EU
	AshburnCIDR   = "127.3.0.0/16" // Ashburn (Virginia, us-east), US, NA
)

// Loopback3 returns the three loopback regions (Tokyo, Frankfurt, Ashburn)
// and a few real public networks, IPv4 and IPv6, in both hemispheres:
//
//	127.1.0.0/16    Tokyo      JP AS  35.68  139.69
//	127.2.0.0/16    Frankfurt  DE EU  50.11    8.68
//	127.3.0.0/16    Ashburn    US NA  39.04  -77.49
//	81.2.69.0/24    London     GB EU  51.51   -0.13
//	1.128.0.0/11    Sydney     AU OC -33.87  151.21
//	200.160.0.0/20  São Paulo  BR SA -23.55  -46.63
//	2a01:4f8::/32   Nuremberg  DE EU  49.45   11.08
//	2001:218::/32   Tokyo      JP AS  35.68  139.69
//
// The slice is new on every call: callers may change it.
func Loopback3() []Entry {
	return []Entry{
		{CIDR: TokyoCIDR, City: "Tokyo", Country: "JP", Continent: "AS", Lat: 35.68, Lon: 139.69},
		{CIDR: FrankfurtCIDR, City: "Frankfurt", Country: "DE", Continent: "EU", Lat: 50.11, Lon: 8.68},
		{CIDR: AshburnCIDR, City: "Ashburn", Country: "US", Continent: "NA", Lat: 39.04, Lon: -77.49},
		{CIDR: "81.2.69.0/24", City: "London", Country: "GB", Continent: "EU", Lat: 51.51, Lon: -0.13},
		{CIDR: "1.128.0.0/11", City: "Sydney", Country: "AU", Continent: "OC", Lat: -33.87, Lon: 151.21},
		{CIDR: "200.160.0.0/20", City: "São Paulo", Country: "BR", Continent: "SA", Lat: -23.55, Lon: -46.63},
		{CIDR: "2a01:4f8::/32", City: "Nuremberg", Country: "DE", Continent: "EU", Lat: 49.45, Lon: 11.08},
		{CIDR: "2001:218::/32", City: "Tokyo", Country: "JP", Continent: "AS", Lat: 35.68, Lon: 139.69},
	}
}

// Layout is the shape of a database's records.
type Layout int

const (
	// GeoLite2 records are nested maps, as in MaxMind GeoIP2/GeoLite2 City
	// and DB-IP's own dbip-city-lite.mmdb: city.names.en,
	// country.iso_code, continent.code, location.latitude and
	// location.longitude, plus the usual neighbours (geoname ids, names in
	// several languages, registered_country, accuracy radius, time zone),
	// so that decoding costs what it costs on a real file.
	GeoLite2 Layout = iota
	// Flat records are one map of scalars, as in ip-location-db's
	// dbip-city / geolite2-city mmdb files: city, country_code, state1,
	// state2, postcode, latitude, longitude, timezone.
	Flat
)

// DatabaseType is the metadata database_type Encode writes for each layout:
// "GeoLite2-City" (which geoip2-golang/v2 accepts) and, for Flat, a type
// that names no MaxMind product, as third-party files do.
func (l Layout) DatabaseType() string {
	if l == Flat {
		return "ip-location-db-dbip-city"
	}
	return "GeoLite2-City"
}

// BuildEpoch is the build time, in Unix seconds, that Encode writes into
// every database's metadata (2026-11-01T00:00:00Z), so tests can check it.
const BuildEpoch = 1793491200

// Encode returns entries as an .mmdb file (IPv6 tree, IPv4 included) in
// the given layout. Later entries override earlier ones where networks
// overlap.
func Encode(layout Layout, entries []Entry) ([]byte, error) {
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            layout.DatabaseType(),
		Description:             map[string]string{"en": "Jumpgate test database"},
		Languages:               []string{"en"},
		IncludeReservedNetworks: true,
		IPVersion:               6,
		RecordSize:              28,
		BuildEpoch:              BuildEpoch,
	})
	if err != nil {
		return nil, fmt.Errorf("new mmdb tree: %w", err)
	}
	for _, e := range entries {
		_, network, err := net.ParseCIDR(e.CIDR)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.City, err)
		}
		var rec mmdbtype.Map
		if layout == Flat {
			rec = flatRecord(e)
		} else {
			rec = geoLite2Record(e)
		}
		if err := tree.Insert(network, rec); err != nil {
			return nil, fmt.Errorf("insert %s: %w", e.CIDR, err)
		}
	}
	var buf bytes.Buffer
	if _, err := tree.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("write mmdb: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteTestDB writes entries to path as a GeoLite2-City database, replacing
// any file there atomically. It fails the test on error.
func WriteTestDB(t testing.TB, path string, entries []Entry) {
	t.Helper()
	write(t, path, GeoLite2, entries)
}

// WriteFlatTestDB writes entries to path in the flat ip-location-db layout,
// replacing any file there atomically. It fails the test on error.
func WriteFlatTestDB(t testing.TB, path string, entries []Entry) {
	t.Helper()
	write(t, path, Flat, entries)
}

func write(t testing.TB, path string, layout Layout, entries []Entry) {
	t.Helper()
	data, err := Encode(layout, entries)
	if err != nil {
		t.Fatalf("geotest: %v", err)
	}
	if err := WriteFileAtomic(path, data); err != nil {
		t.Fatalf("geotest: %v", err)
	}
}

// WriteFileAtomic writes data to a new file beside path and renames it over
// path, as geoipupdate does.
func WriteFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".geotest-*.mmdb")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// names returns a GeoLite2 names map: the same name in the eight locales
// GeoLite2 carries.
func names(name string) mmdbtype.Map {
	m := mmdbtype.Map{}
	for _, l := range [...]string{"de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"} {
		m[mmdbtype.String(l)] = mmdbtype.String(name)
	}
	return m
}

// geonameID makes up a stable id for a name.
func geonameID(name string) mmdbtype.Uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return mmdbtype.Uint32(h.Sum32() % 10_000_000)
}

func geoLite2Record(e Entry) mmdbtype.Map {
	country := mmdbtype.Map{
		"geoname_id": geonameID("country " + e.Country),
		"iso_code":   mmdbtype.String(e.Country),
		"names":      names(e.Country),
	}
	return mmdbtype.Map{
		"city": mmdbtype.Map{
			"geoname_id": geonameID(e.City),
			"names":      names(e.City),
		},
		"continent": mmdbtype.Map{
			"code":       mmdbtype.String(e.Continent),
			"geoname_id": geonameID("continent " + e.Continent),
			"names":      names(e.Continent),
		},
		"country":            country,
		"registered_country": country,
		"location": mmdbtype.Map{
			"accuracy_radius": mmdbtype.Uint16(20),
			"latitude":        mmdbtype.Float64(e.Lat),
			"longitude":       mmdbtype.Float64(e.Lon),
			"time_zone":       mmdbtype.String("Etc/UTC"),
		},
	}
}

func flatRecord(e Entry) mmdbtype.Map {
	return mmdbtype.Map{
		"city":         mmdbtype.String(e.City),
		"country_code": mmdbtype.String(e.Country),
		"state1":       mmdbtype.String(""),
		"state2":       mmdbtype.String(""),
		"postcode":     mmdbtype.String(""),
		"latitude":     mmdbtype.Float64(e.Lat),
		"longitude":    mmdbtype.Float64(e.Lon),
		"timezone":     mmdbtype.String("Etc/UTC"),
	}
}
