package meshpage

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"time"
)

// Snapshot is everything the page shows, as the proxy serving it sees the
// mesh at one moment.
type Snapshot struct {
	Self        string    `json:"self"` // the proxy serving the page
	Cluster     string    `json:"cluster"`
	GeneratedAt time.Time `json:"generated_at"` // zero: the handler sets the time of the request
	Proxies     []Proxy   `json:"proxies"`
	Links       []Link    `json:"links"` // peer links as seen by Self
	Nodes       int       `json:"nodes"` // nodes known to the cluster
	// NodesWithoutTunnel are the known nodes holding no tunnel to any
	// proxy: nobody can reach them until their agent reconnects.
	NodesWithoutTunnel []string `json:"nodes_without_tunnel"`
}

// Proxy is one proxy of the mesh.
type Proxy struct {
	ID      string `json:"id"`
	Region  string `json:"region"`
	Version string `json:"version"`
	// Lat and Lon are degrees, used when HasCoords. Coordinates that are
	// not finite or out of range are dropped (HasCoords false) rather than
	// failing the page: the proxy is then shown under the map.
	Lat       float64 `json:"lat"`
	Lon       float64 `json:"lon"`
	HasCoords bool    `json:"has_coords"`
	State     string  `json:"state"`    // "active" or "draining"
	Health    string  `json:"health"`   // "alive", "suspect", "dead", "left"
	Tunnels   int     `json:"tunnels"`  // nodes whose tunnel it holds (from the mesh directory)
	Sessions  int     `json:"sessions"` // its gossiped load; -1 unknown
	// Drain is the drain progress; only known for Self (nil otherwise, or
	// when not draining).
	Drain *Drain `json:"drain,omitempty"`
}

// Drain is the progress of a proxy's drain.
type Drain struct {
	Phase     string    `json:"phase"`     // "rehoming", "moving", "waiting", "done"
	Sessions  int       `json:"sessions"`  // sessions still on the proxy
	Resumable int       `json:"resumable"` // of those, how many can move to another proxy
	Tunnels   int       `json:"tunnels"`   // node tunnels still held
	Deadline  time.Time `json:"deadline,omitzero"`
}

// Link is a peer link from one proxy to another.
type Link struct {
	From, To string
	RTT      time.Duration // measured round-trip time; 0 when not measured yet
	Health   string        // as Proxy.Health, of the link's far end
}

// linkJSON is Link on the wire: the RTT as float milliseconds, which is what
// a person reads and what JavaScript can hold without losing precision.
type linkJSON struct {
	From   string  `json:"from"`
	To     string  `json:"to"`
	RTTms  float64 `json:"rtt_ms"`
	Health string  `json:"health"`
}

// MarshalJSON encodes the link with its RTT as "rtt_ms".
func (l Link) MarshalJSON() ([]byte, error) {
	return json.Marshal(linkJSON{From: l.From, To: l.To, RTTms: float64(l.RTT) / float64(time.Millisecond), Health: l.Health})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (l *Link) UnmarshalJSON(b []byte) error {
	var w linkJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if math.IsNaN(w.RTTms) || math.IsInf(w.RTTms, 0) {
		return fmt.Errorf("link %s->%s: rtt_ms %v is not a number of milliseconds", w.From, w.To, w.RTTms)
	}
	*l = Link{From: w.From, To: w.To, RTT: time.Duration(math.Round(w.RTTms * float64(time.Millisecond))), Health: w.Health}
	return nil
}

var (
	_ json.Marshaler   = Link{}
	_ json.Unmarshaler = (*Link)(nil)
	_ http.Handler     = (*Handler)(nil)
)

// DefaultRefresh is how often, by default, the page refetches its data:
// often enough that a proxy going suspect or a drain moving on shows within
// a couple of seconds, while a page left open costs a proxy one small
// request every two seconds.
const DefaultRefresh = 2 * time.Second

// Config configures a Handler.
type Config struct {
	// Snapshot returns what the page shows now. It is called once per page
	// load and once per data.json request, from the requests' goroutines,
	// so it must be safe for concurrent use. Required.
	Snapshot func() Snapshot
	// Refresh is how often the page refetches data.json. Default
	// DefaultRefresh.
	Refresh time.Duration
}

func (c *Config) checkAndSetDefaults() error {
	switch {
	case c.Snapshot == nil:
		return errors.New("mesh page config: Snapshot is required")
	case c.Refresh < 0:
		return fmt.Errorf("mesh page config: Refresh %v is negative: want a positive interval, or 0 for the default %v", c.Refresh, DefaultRefresh)
	}
	if c.Refresh == 0 {
		c.Refresh = DefaultRefresh
	}
	return nil
}

//go:embed page.html
var pageHTML string

// Handler serves the mesh page and its data (see the package comment for
// the routes and how to mount it).
type Handler struct {
	cfg  Config
	page *template.Template
}

// New returns a Handler.
func New(cfg Config) (*Handler, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	page, err := template.New("page.html").Parse(pageHTML)
	if err != nil {
		return nil, fmt.Errorf("mesh page: parse page.html: %w", err)
	}
	return &Handler{cfg: cfg, page: page}, nil
}

// pageData is what page.html is executed with.
type pageData struct {
	Snapshot    Snapshot // rendered as JSON inside <script type="application/json">
	RefreshMS   int64
	RefreshText string
	Nonce       string // CSP nonce of the inline script and style
}

// ServeHTTP serves GET and HEAD of "/" (the page) and "/data.json".
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" && r.URL.Path != "/data.json" {
		http.Error(w, "not found: the mesh page is at / and its data at /data.json under where it is mounted", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	snap := normalize(h.cfg.Snapshot(), time.Now)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.URL.Path == "/data.json" {
		b, err := json.Marshal(snap)
		if err != nil {
			http.Error(w, fmt.Sprintf("encode mesh snapshot: %v", err), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
		return
	}
	d := pageData{
		Snapshot:    snap,
		RefreshMS:   h.cfg.Refresh.Milliseconds(),
		RefreshText: refreshText(h.cfg.Refresh),
		Nonce:       rand.Text(),
	}
	// Rendered into a buffer first so that an error gives a clean 500, not
	// half a page.
	var buf bytes.Buffer
	if err := h.page.Execute(&buf, d); err != nil {
		http.Error(w, fmt.Sprintf("render mesh page: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// Everything the page needs is inline: nothing may load from
	// elsewhere, and only the nonced script and style may run.
	w.Header().Set("Content-Security-Policy", fmt.Sprintf(
		"default-src 'none'; script-src 'nonce-%[1]s'; style-src 'nonce-%[1]s'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		d.Nonce))
	w.Write(buf.Bytes())
}

// normalize returns a copy of s fit for the page: nil lists become empty
// (JSON [] rather than null), a zero GeneratedAt becomes now, and
// coordinates that cannot be drawn are dropped.
func normalize(s Snapshot, now func() time.Time) Snapshot {
	if s.GeneratedAt.IsZero() {
		s.GeneratedAt = now()
	}
	s.Proxies = append([]Proxy{}, s.Proxies...)
	for i := range s.Proxies {
		p := &s.Proxies[i]
		if !p.HasCoords || !validCoord(p.Lat, 90) || !validCoord(p.Lon, 180) {
			p.Lat, p.Lon, p.HasCoords = 0, 0, false
		}
	}
	s.Links = append([]Link{}, s.Links...)
	for i := range s.Links {
		if s.Links[i].RTT < 0 {
			// Not a measurement: show it as "not measured" rather than a
			// negative time.
			s.Links[i].RTT = 0
		}
	}
	if s.NodesWithoutTunnel == nil {
		s.NodesWithoutTunnel = []string{}
	}
	return s
}

func validCoord(v, limit float64) bool {
	return !math.IsNaN(v) && v >= -limit && v <= limit
}

// refreshText says r the way the page's explanation does: "2 s", "500 ms".
func refreshText(r time.Duration) string {
	if r < time.Second {
		return fmt.Sprintf("%d ms", r.Milliseconds())
	}
	return fmt.Sprintf("%g s", r.Seconds())
}
