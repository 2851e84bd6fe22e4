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
}

// ClientLocation is where GeoIP places the client.
type ClientLocation struct {
	Known         bool
	Lat, Lon      float64
	City, Country string
}

// Ranked is a candidate in its place, with why it is there.
type Ranked struct {
	Candidate
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
// by its RTT to them. Ties go by id, so the order is stable.
func Rank(client ClientLocation, cands []Candidate) []Ranked {
	out := make([]Ranked, 0, len(cands))
	for _, c := range cands {
		if c.Health == Gone {
			continue
		}
		r := Ranked{Candidate: c, DistanceKm: -1}
		if client.Known && c.HasCoords {
			r.DistanceKm = Distance(client.Lat, client.Lon, c.Lat, c.Lon)
		}
		out = append(out, r)
	}
	band := func(r Ranked) float64 {
		if r.DistanceKm < 0 {
			return math.Inf(1)
		}
		return math.Floor(r.DistanceKm / BandKm)
	}
	slices.SortFunc(out, func(a, b Ranked) int {
		if a.Draining != b.Draining {
			if a.Draining {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(a.Health, b.Health); c != 0 {
			return c
		}
		if client.Known {
			if c := cmp.Compare(band(a), band(b)); c != 0 {
				return c
			}
			if c := cmp.Compare(a.Load, b.Load); c != 0 {
				return c
			}
			if c := cmp.Compare(a.DistanceKm, b.DistanceKm); c != 0 {
				return c
			}
		} else {
			if a.Self != b.Self {
				if a.Self {
					return -1
				}
				return 1
			}
			if c := compareRTT(a.RTT, b.RTT); c != 0 {
				return c
			}
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for i := range out {
		out[i].Reason = reason(client, out, i)
	}
	return out
}

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
