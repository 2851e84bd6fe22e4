package geo

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/oschwald/geoip2-golang/v2"
	"github.com/oschwald/maxminddb-golang/v2/mmdbdata"
)

// Layout names for Info.Layout.
const (
	LayoutGeoIP2 = "geoip2" // nested: city.names.en, country.iso_code, continent.code, location.latitude/longitude
	LayoutFlat   = "flat"   // flat: city, country_code, latitude, longitude (ip-location-db)
)

// Bounds on one record, checked while decoding: a GeoIP2 City record has
// about ten top-level keys and names in about ten languages; a flat one
// has eight keys. The bounds keep a corrupt or hostile file from making
// one lookup walk millions of map entries.
const (
	maxMapEntries = 256
	maxStringSize = 1024
)

var errTooManyEntries = errors.New("record map has too many entries")

// record is what Lookup decodes from one data record. It reads both
// accepted layouts in one pass over the record's top-level map and skips
// every key it does not need without decoding it:
//
//	key             GeoIP2 layout (map)            flat layout (scalar)
//	city            names.en                       the name (string)
//	country         iso_code                       -
//	country_code    -                              ISO code (string)
//	continent       code                           -
//	continent_code  -                              code (string), if present
//	location        latitude, longitude (geoip2)   -
//	latitude        -                              float, double, integer or decimal string
//	longitude       -                              same
//
// Which one a value is comes from its MMDB kind (map or scalar), not from
// the database type string, so a file with an unfamiliar database_type
// still reads.
type record struct {
	city, country, continent string
	lat, lon                 float64
	hasLat, hasLon           bool // flat layout: top-level latitude / longitude seen
	loc                      geoip2.Location
}

var _ mmdbdata.CursorUnmarshaler = (*record)(nil)

// UnmarshalMaxMindDBCursor decodes r from the record at c.
func (r *record) UnmarshalMaxMindDBCursor(c mmdbdata.Cursor) (mmdbdata.Cursor, error) {
	m, err := c.MapReader()
	if err != nil {
		return mmdbdata.Cursor{}, mmdbdata.NormalizeUnmarshalError[record](err)
	}
	if m.Len() > maxMapEntries {
		return mmdbdata.Cursor{}, errTooManyEntries
	}
	next := m.First()
	for range m.Len() {
		key, v, err := next.ReadMapKey()
		if err != nil {
			return mmdbdata.Cursor{}, err
		}
		switch string(key) {
		case "city":
			next, err = r.readCity(v)
		case "country":
			next, err = readSubkey(v, "iso_code", &r.country)
		case "country_code":
			next, err = readString(v, &r.country)
		case "continent":
			next, err = readSubkey(v, "code", &r.continent)
		case "continent_code":
			next, err = readString(v, &r.continent)
		case "location":
			// geoip2-golang's generated decoder: latitude and longitude
			// are pointers, nil when absent (Location.HasCoordinates).
			next, err = v.UnmarshalCursor(&r.loc)
		case "latitude":
			r.lat, r.hasLat, next, err = readCoordinate(v)
		case "longitude":
			r.lon, r.hasLon, next, err = readCoordinate(v)
		default:
			next, err = v.Skip()
		}
		if err != nil {
			return mmdbdata.Cursor{}, fmt.Errorf("key %q: %w", key, err)
		}
	}
	return m.End(next)
}

// layout tells which layout r was read in: GeoIP2 if it had a location
// map, flat if it had top-level coordinates, "" if neither.
func (r *record) layout() string {
	switch {
	case r.loc.HasCoordinates():
		return LayoutGeoIP2
	case r.hasLat && r.hasLon:
		return LayoutFlat
	}
	return ""
}

// location returns r as a Location, ok false when it has no usable
// coordinates. Flat-layout (0, 0) counts as none: it is a converter's zero
// value for "unknown" (nobody connects from the Gulf of Guinea). In the
// GeoIP2 layout, coordinates are either present or not (pointers).
func (r *record) location() (Location, bool) {
	var lat, lon float64
	switch {
	case r.loc.HasCoordinates():
		lat, lon = *r.loc.Latitude, *r.loc.Longitude
	case r.hasLat && r.hasLon && (r.lat != 0 || r.lon != 0):
		lat, lon = r.lat, r.lon
	default:
		return Location{}, false
	}
	if !validCoordinates(lat, lon) {
		return Location{}, false
	}
	continent := r.continent
	if continent == "" {
		continent = continentOf(r.country)
	}
	return Location{Lat: lat, Lon: lon, City: r.city, Country: r.country, Continent: continent}, true
}

// readCity reads "city": a map (GeoIP2: the English name from names.en) or
// a string (flat).
func (r *record) readCity(v mmdbdata.Cursor) (mmdbdata.Cursor, error) {
	kind, err := v.Kind()
	if err != nil {
		return mmdbdata.Cursor{}, err
	}
	switch kind {
	case mmdbdata.KindString:
		return readString(v, &r.city)
	case mmdbdata.KindMap:
		return walkMap(v, func(key []byte, v mmdbdata.Cursor) (mmdbdata.Cursor, error) {
			if string(key) != "names" {
				return v.Skip()
			}
			return readSubkey(v, "en", &r.city)
		})
	}
	return v.Skip()
}

// readSubkey reads the string at key of the map at v into dst; a value
// that is not a map, or lacks the key, leaves dst alone.
func readSubkey(v mmdbdata.Cursor, key string, dst *string) (mmdbdata.Cursor, error) {
	kind, err := v.Kind()
	if err != nil {
		return mmdbdata.Cursor{}, err
	}
	if kind != mmdbdata.KindMap {
		return v.Skip()
	}
	return walkMap(v, func(k []byte, v mmdbdata.Cursor) (mmdbdata.Cursor, error) {
		if string(k) != key {
			return v.Skip()
		}
		return readString(v, dst)
	})
}

// walkMap calls f for each entry of the map at v; f returns the entry's
// successor.
func walkMap(v mmdbdata.Cursor, f func(key []byte, v mmdbdata.Cursor) (mmdbdata.Cursor, error)) (mmdbdata.Cursor, error) {
	m, err := v.MapReader()
	if err != nil {
		return mmdbdata.Cursor{}, err
	}
	if m.Len() > maxMapEntries {
		return mmdbdata.Cursor{}, errTooManyEntries
	}
	next := m.First()
	for range m.Len() {
		key, val, err := next.ReadMapKey()
		if err != nil {
			return mmdbdata.Cursor{}, err
		}
		if next, err = f(key, val); err != nil {
			return mmdbdata.Cursor{}, err
		}
	}
	return m.End(next)
}

// readString reads a string into dst; any other kind is skipped and leaves
// dst alone.
func readString(v mmdbdata.Cursor, dst *string) (mmdbdata.Cursor, error) {
	kind, err := v.Kind()
	if err != nil {
		return mmdbdata.Cursor{}, err
	}
	if kind != mmdbdata.KindString {
		return v.Skip()
	}
	s, next, err := v.ReadStringMaxSize(maxStringSize)
	if err == nil {
		*dst = s
	}
	return next, err
}

// readCoordinate reads a flat-layout coordinate: float or double (what
// MMDB writers use), any integer kind, or a decimal string (what CSV-to-MMDB
// converters sometimes leave). ok is false for anything else (an empty or
// non-numeric string, a map), which counts as no coordinate rather than as
// a corrupt record.
func readCoordinate(v mmdbdata.Cursor) (f float64, ok bool, next mmdbdata.Cursor, err error) {
	kind, err := v.Kind()
	if err != nil {
		return 0, false, mmdbdata.Cursor{}, err
	}
	switch kind {
	case mmdbdata.KindFloat64, mmdbdata.KindFloat32:
		f, next, err = v.ReadFloat()
		return f, err == nil, next, err
	case mmdbdata.KindInt32, mmdbdata.KindUint16, mmdbdata.KindUint32, mmdbdata.KindUint64:
		u, signed, next, err := v.ReadInteger()
		if signed {
			return float64(int64(u)), err == nil, next, err
		}
		return float64(u), err == nil, next, err
	case mmdbdata.KindString:
		s, next, err := v.ReadStringMaxSize(maxStringSize)
		if err != nil {
			return 0, false, next, err
		}
		f, perr := strconv.ParseFloat(s, 64)
		return f, perr == nil, next, nil
	}
	next, err = v.Skip()
	return 0, false, next, err
}

// continentOf returns the continent code of an ISO 3166-1 alpha-2 country
// code (GeoNames' assignment, which GeoIP2 uses: Russia is EU, Turkey and
// the Caucasus are AS), or "" for a code it does not know. Flat files carry
// no continent; this fills it in.
func continentOf(country string) string {
	switch country {
	case "AO", "BF", "BI", "BJ", "BW", "CD", "CF", "CG", "CI", "CM", "CV", "DJ", "DZ", "EG", "EH",
		"ER", "ET", "GA", "GH", "GM", "GN", "GQ", "GW", "KE", "KM", "LR", "LS", "LY", "MA", "MG",
		"ML", "MR", "MU", "MW", "MZ", "NA", "NE", "NG", "RE", "RW", "SC", "SD", "SH", "SL", "SN",
		"SO", "SS", "ST", "SZ", "TD", "TG", "TN", "TZ", "UG", "YT", "ZA", "ZM", "ZW":
		return "AF"
	case "AQ", "BV", "GS", "HM", "TF":
		return "AN"
	case "AE", "AF", "AM", "AZ", "BD", "BH", "BN", "BT", "CC", "CN", "CX", "GE", "HK", "ID", "IL",
		"IN", "IO", "IQ", "IR", "JO", "JP", "KG", "KH", "KP", "KR", "KW", "KZ", "LA", "LB", "LK",
		"MM", "MN", "MO", "MV", "MY", "NP", "OM", "PH", "PK", "PS", "QA", "SA", "SG", "SY", "TH",
		"TJ", "TL", "TM", "TR", "TW", "UZ", "VN", "YE":
		return "AS"
	case "AD", "AL", "AT", "AX", "BA", "BE", "BG", "BY", "CH", "CY", "CZ", "DE", "DK", "EE", "ES",
		"FI", "FO", "FR", "GB", "GG", "GI", "GR", "HR", "HU", "IE", "IM", "IS", "IT", "JE", "LI",
		"LT", "LU", "LV", "MC", "MD", "ME", "MK", "MT", "NL", "NO", "PL", "PT", "RO", "RS", "RU",
		"SE", "SI", "SJ", "SK", "SM", "UA", "VA", "XK":
		return "EU"
	case "AG", "AI", "AW", "BB", "BL", "BM", "BQ", "BS", "BZ", "CA", "CR", "CU", "CW", "DM", "DO",
		"GD", "GL", "GP", "GT", "HN", "HT", "JM", "KN", "KY", "LC", "MF", "MQ", "MS", "MX", "NI",
		"PA", "PM", "PR", "SV", "SX", "TC", "TT", "US", "VC", "VG", "VI":
		return "NA"
	case "AS", "AU", "CK", "FJ", "FM", "GU", "KI", "MH", "MP", "NC", "NF", "NR", "NU", "NZ", "PF",
		"PG", "PN", "PW", "SB", "TK", "TO", "TV", "UM", "VU", "WF", "WS":
		return "OC"
	case "AR", "BO", "BR", "CL", "CO", "EC", "FK", "GF", "GY", "PE", "PY", "SR", "UY", "VE":
		return "SA"
	}
	return ""
}

// validCoordinates reports whether lat, lon is a point on Earth.
func validCoordinates(lat, lon float64) bool {
	return !math.IsNaN(lat) && !math.IsNaN(lon) && lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180
}
