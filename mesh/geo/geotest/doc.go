// Package geotest builds small GeoIP databases (.mmdb files) for tests, so
// that mesh/geo, the discovery endpoint and the end-to-end tests all rank
// proxies against the same map of the world.
//
// End-to-end tests give each simulated region its own loopback sub-range;
// [Loopback3] maps three of them to Tokyo, Frankfurt and Ashburn (Virginia)
// and adds a few real public networks, and [WriteTestDB] writes entries as a
// GeoLite2-City database (the layout MaxMind and the official DB-IP Lite City
// files use). [WriteFlatTestDB] writes the same entries in the flat layout
// of ip-location-db's DB-IP / GeoLite2 city files.
//
// The databases are written with github.com/maxmind/mmdbwriter with
// IncludeReservedNetworks set (loopback and other reserved ranges are
// refused otherwise). Files are replaced atomically (written beside the
// target, then renamed), the way geoipupdate does, so a reader that notices
// the change never sees half a file.
package geotest
