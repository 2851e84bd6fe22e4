package route

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"
)

// Candidate is a proxy as discovery ranks it.
type Candidate struct {
	ID, Region, PublicAddr string
	Lat, Lon               float64
	HasCoords              bool
	Health                 Health
	Draining               bool
	Load                   uint32
	// RTT from the proxy answering discovery (0: itself, or unknown);
	// used only when the client's location is unknown.
	RTT  time.Duration
	Self bool // the proxy answering discovery
	// Point is Lat, Lon on the unit sphere (PointOf), if the caller keeps
	// it from one request to the next; zero: Rank works it out.
	Point Point
}

// Point is a position on the unit sphere.
type Point struct{ X, Y, Z float64 }

// PointOf is the point at lat, lon (degrees).
func PointOf(lat, lon float64) Point {
	x, y, z := unitVector(lat, lon)
	return Point{x, y, z}
}

// ClientLocation is where GeoIP places the client.
type ClientLocation struct {
	Known         bool
	Lat, Lon      float64
	City, Country string
}

// Ranked is a candidate in its place, with why it is there.
type Ranked struct {
	*Candidate // into the slice given to Rank
	// DistanceKm from the client; -1 when either location is unknown.
	DistanceKm float64
	Reason     string
}

// BandKm is the distance within which proxies count as equally near:
// between them, the less loaded comes first. 300 km is a few milliseconds
// of fibre: less than the difference load makes.
const BandKm = 300

// Rank orders the proxies a client should use, best first. Dead and left
// proxies are left out; draining ones come last (still listed, so a client
// whose only choice is draining is told so). Then alive before suspect;
// then, when the client's location is known, nearest first by
// great-circle distance in bands of BandKm, the less loaded first within a
// band, proxies without coordinates after those with; when it is not
// known, the answering proxy first (the client reached it) and the others
// by its RTT to them. Ties keep the order of cands.
//
// Rank leaves Reason empty: Explain writes it for the entries a caller
// shows (a sentence for each of 50 proxies would cost several times the
// ranking; see BenchmarkRank50).
func Rank(client ClientLocation, cands []Candidate) []Ranked {
	// Each candidate's place is one 64-bit key, most significant first:
	// draining (1 bit), health (2), then with a location distance band
	// (16), load (24) and distance in 0.1 km (21); without one, "not the
	// answering proxy" (1) and RTT in microseconds (40). Ties keep the
	// input's order: pass candidates sorted by id (gossip.Members is) for
	// a stable answer. Sorting 16-byte integer keys rather than the
	// candidates is what keeps 50 proxies at a few microseconds.
	type key struct {
		k   uint64
		idx int32
	}
	var cx, cy, cz float64
	if client.Known {
		cx, cy, cz = unitVector(client.Lat, client.Lon)
	}
	ks := make([]key, 0, len(cands))
	dist := make([]float64, len(cands))
	for i := range cands {
		c := &cands[i]
		if c.Health == Gone {
			continue
		}
		var k uint64
		if c.Draining {
			k |= 1 << 63
		}
		k |= uint64(min(c.Health, 3)) << 61
		dist[i] = -1
		switch {
		case client.Known:
			band, load, d := uint64(1<<16-1), uint64(min(c.Load, 1<<24-1)), uint64(1<<21-1)
			if c.HasCoords {
				p := c.Point
				if p == (Point{}) {
					p = PointOf(c.Lat, c.Lon)
				}
				km := chordKm(cx-p.X, cy-p.Y, cz-p.Z)
				dist[i] = km
				band = uint64(km / BandKm)
				d = uint64(min(km*10, 1<<21-1))
			}
			k |= band<<45 | load<<21 | d
		default:
			if !c.Self {
				k |= 1 << 60
			}
			rtt := uint64(1<<40 - 1) // unmeasured: last
			if c.RTT > 0 {
				rtt = uint64(min(c.RTT.Microseconds(), 1<<40-2))
			}
			k |= rtt
		}
		ks = append(ks, key{k: k, idx: int32(i)})
	}
	slices.SortFunc(ks, func(a, b key) int {
		if a.k != b.k {
			return cmp.Compare(a.k, b.k)
		}
		return cmp.Compare(a.idx, b.idx)
	})
	out := make([]Ranked, len(ks))
	for i, k := range ks {
		out[i] = Ranked{Candidate: &cands[k.idx], DistanceKm: dist[k.idx]}
	}
	return out
}

// unitVector is the point at lat, lon (degrees) on the unit sphere.
func unitVector(lat, lon float64) (x, y, z float64) {
	la, lo := lat*math.Pi/180, lon*math.Pi/180
	cl := math.Cos(la)
	return cl * math.Cos(lo), cl * math.Sin(lo), math.Sin(la)
}

// chordKm turns the difference of two unit vectors into the great-circle
// distance between their points (equal to Distance, cheaper when one
// point is fixed).
func chordKm(dx, dy, dz float64) float64 {
	chord := math.Sqrt(dx*dx + dy*dy + dz*dz)
	return 2 * EarthRadiusKm * math.Asin(math.Min(1, chord/2))
}

// Explain says why rs[i] (from Rank) is where it is.
func Explain(client ClientLocation, rs []Ranked, i int) string { return reason(client, rs, i) }

func reason(client ClientLocation, rs []Ranked, i int) string {
	r := rs[i]
	where := "the client"
	if client.City != "" || client.Country != "" {
		where = fmt.Sprintf("the client (%s)", joinNonEmpty(client.City, client.Country))
	}
	var s string
	switch {
	case r.Draining:
		s = "draining: listed last, use only if nothing else answers"
	case r.Health == Suspect:
		s = "suspect: other proxies cannot reach it reliably"
	case r.DistanceKm >= 0:
		s = fmt.Sprintf("%.0f km from %s", r.DistanceKm, where)
		if i > 0 && rs[i-1].DistanceKm >= 0 && !rs[i-1].Draining && rs[i-1].DistanceKm > r.DistanceKm {
			s += fmt.Sprintf("; after %s, which is as near (within %d km) and less loaded", rs[i-1].ID, BandKm)
		}
	case client.Known:
		s = "its location is not configured"
	case r.Self:
		s = "no GeoIP location for the client: the proxy it reached; measure RTT to choose"
	default:
		s = "no GeoIP location for the client: ordered by RTT from " + selfID(rs)
	}
	return fmt.Sprintf("%s; load %d", s, r.Load)
}

func selfID(rs []Ranked) string {
	for _, r := range rs {
		if r.Self {
			return r.ID
		}
	}
	return "the answering proxy"
}

func joinNonEmpty(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + ", " + b
}

// Hysteresis: a client changes its home proxy only for one that is
// clearly better, as Tailscale's DERP home selection does: more than
// SwitchMinGain faster and faster by more than a third.
const SwitchMinGain = 10 * time.Millisecond

// ChooseHome picks a client's home proxy from RTTs it measured (failed
// probes absent). current is the home it has ("" for none). It keeps the
// current home unless another proxy is more than SwitchMinGain faster and
// at most two thirds of its RTT, or the current one did not answer.
func ChooseHome(current string, rtts map[string]time.Duration) (home string, switched bool, why string) {
	best := ""
	for id, d := range rtts {
		if best == "" || d < rtts[best] || (d == rtts[best] && id < best) {
			best = id
		}
	}
	if best == "" {
		return current, false, "no proxy answered: keeping " + orNone(current)
	}
	cur, ok := rtts[current]
	switch {
	case current == "":
		return best, true, fmt.Sprintf("lowest RTT (%s)", best)
	case !ok:
		return best, true, fmt.Sprintf("%s did not answer; %s has the lowest RTT", current, best)
	case best == current:
		return current, false, fmt.Sprintf("%s still has the lowest RTT", current)
	}
	gain := cur - rtts[best]
	if gain > SwitchMinGain && rtts[best]*3 < cur*2 {
		return best, true, fmt.Sprintf("%s is %s faster than %s (%s vs %s)", best, gain.Round(time.Microsecond), current, rtts[best].Round(time.Microsecond), cur.Round(time.Microsecond))
	}
	return current, false, fmt.Sprintf("keeping %s (%s): %s at %s is not clearly better (needs > %s and a third faster)", current, cur.Round(time.Microsecond), best, rtts[best].Round(time.Microsecond), SwitchMinGain)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
