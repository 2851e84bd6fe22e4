//go:build unix

package meshpage

import (
	"bytes"
	"image/png"
	"jumpgate.dev/jumpgate/mesh/meshpage/meshpagetest"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPageInChromium loads the page in headless Chromium and checks the
// DOM after the page's script ran: what an SRE would read on the page, that
// it redraws from data.json without a reload, that it says so when the
// proxy cannot be reached, and (a screenshot, kept as a test artifact)
// what it looks like.
func TestPageInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("headless browser test in -short mode")
	}
	bin := meshpagetest.FindChromium(t)
	snap := testSnapshot()

	t.Run("shows the mesh", func(t *testing.T) {
		srv, fetches := serveMesh(t, snap, snap)
		dom := meshpagetest.DumpDOM(t, bin, srv.URL+"/mesh/")

		rows := meshpagetest.FindElements(dom, "tr", "proxy")
		wantState := map[string]string{"p1": "active", "p2": "draining", "p3": "active", "p4": "active", "p5": "active"}
		if got := attrMap(rows, "data-proxy", "data-state"); !mapsEqual(got, wantState) {
			t.Errorf("proxy rows (id -> data-state) = %v, want %v", got, wantState)
		}
		p2 := byAttr(t, rows, "data-proxy", "p2")
		for _, want := range []string{"draining", "(this proxy)", "moving: 12 sessions (12 resumable), 1 tunnel left, 3m to deadline"} {
			if !strings.Contains(p2.Text, want) {
				t.Errorf("row of draining p2 %q lacks %q", p2.Text, want)
			}
		}
		if p4 := byAttr(t, rows, "data-proxy", "p4"); p4.Attrs["data-health"] != "dead" || !strings.Contains(p4.Text, "dead") || !strings.Contains(p4.Text, "unknown") {
			t.Errorf("row of dead p4 (sessions unknown): %q %v", p4.Text, p4.Attrs)
		}

		dots := meshpagetest.FindElements(dom, "g", "proxy-dot")
		if len(dots) != 5 {
			t.Fatalf("%d proxy dots on the map, want 5", len(dots))
		}
		if d := byAttr(t, dots, "data-proxy", "p2"); !strings.Contains(d.Text, "p2 (draining)") {
			t.Errorf("map label of p2 %q: want it to say draining", d.Text)
		}
		if d := byAttr(t, dots, "data-proxy", "p4"); !strings.Contains(d.Text, "p4 (dead)") {
			t.Errorf("map label of p4 %q: want it to say dead", d.Text)
		}
		if d := byAttr(t, dots, "data-proxy", "p5"); d.Attrs["data-placement"] != "unplaced" {
			t.Errorf("p5 has no coordinates: placement %q, want unplaced", d.Attrs["data-placement"])
		}
		p1, p2dot := byAttr(t, dots, "data-proxy", "p1"), byAttr(t, dots, "data-proxy", "p2")
		if p1.Attrs["data-placement"] != "map" || p1.Attrs["transform"] == p2dot.Attrs["transform"] {
			t.Errorf("p1 and p2 share a place: transforms %q and %q, want them apart", p1.Attrs["transform"], p2dot.Attrs["transform"])
		}

		links := meshpagetest.FindElements(dom, "tr", "link")
		wantRTT := map[string]string{"p1": "0.4", "p3": "85.2", "p4": "91", "p5": "142.7"}
		gotRTT := map[string]string{}
		for _, l := range links {
			gotRTT[l.Attrs["data-to"]] = l.CellText("rtt")
		}
		if !mapsEqual(gotRTT, wantRTT) {
			t.Errorf("link rows (to -> RTT ms) = %v, want %v", gotRTT, wantRTT)
		}
		lines := meshpagetest.FindElements(dom, "g", "link-line")
		if len(lines) != 4 {
			t.Errorf("%d link lines on the map, want 4", len(lines))
		}
		if l := byAttr(t, lines, "data-to", "p3"); !strings.Contains(l.Text, "85.2 ms") {
			t.Errorf("map line to p3 is labeled %q, want 85.2 ms", l.Text)
		}
		// p1 is stacked next to p2: too short a line to label, so the RTT
		// goes with p1's name.
		if d := byAttr(t, dots, "data-proxy", "p1"); !strings.Contains(d.Text, "0.4 ms") {
			t.Errorf("map label of p1 %q: want its RTT 0.4 ms", d.Text)
		}

		checkNodes(t, dom, "db-7", "web-12")
		checkStatus(t, dom, "live")
		if n := fetches.Load(); n == 0 {
			t.Error("the page never fetched data.json")
		}
	})

	t.Run("redraws from data.json", func(t *testing.T) {
		// The page comes with the old snapshot; data.json has a newer one
		// where p3 drains too, one more node lost its tunnel, and a proxy
		// id tries to be markup.
		fresh := testSnapshot()
		fresh.GeneratedAt = genTime.Add(10 * time.Second)
		fresh.Proxies[2].State = "draining"
		fresh.NodesWithoutTunnel = append(fresh.NodesWithoutTunnel, "cache-3")
		const evil = `p6<img src=x onerror="document.title='pwned'">`
		fresh.Proxies = append(fresh.Proxies, Proxy{ID: evil, Region: "ap-south", State: "active", Health: "alive", Sessions: -1})
		srv, fetches := serveMesh(t, snap, fresh)
		dom := meshpagetest.DumpDOM(t, bin, srv.URL+"/mesh/")

		if n := fetches.Load(); n == 0 {
			t.Fatal("the page never fetched data.json")
		}
		rows := meshpagetest.FindElements(dom, "tr", "proxy")
		if p3 := byAttr(t, rows, "data-proxy", "p3"); p3.Attrs["data-state"] != "draining" || !strings.Contains(p3.Text, "draining") {
			t.Errorf("after the refresh p3 row is %v %q, want draining", p3.Attrs, p3.Text)
		}
		if d := byAttr(t, meshpagetest.FindElements(dom, "g", "proxy-dot"), "data-proxy", "p3"); !strings.Contains(d.Text, "p3 (draining)") {
			t.Errorf("after the refresh the map label of p3 is %q", d.Text)
		}
		checkNodes(t, dom, "cache-3", "db-7", "web-12")
		checkStatus(t, dom, "live")
		if !strings.Contains(dom, `id="generated-at">12:00:10 UTC<`) {
			t.Error("header does not show the new data's time 12:00:10 UTC")
		}
		// The untrusted id is text, not an element, and ran nothing.
		byAttr(t, rows, "data-proxy", evil)
		if strings.Contains(dom, "<img") {
			t.Error("a proxy id became markup in the page")
		}
		if title := regexp.MustCompile(`<title>([^<]*)</title>`).FindStringSubmatch(dom); title == nil || title[1] != "Mesh of prod, served by proxy p2" {
			t.Errorf("document title %q: want the page's own", title)
		}
		// The redraw came from data.json: the embedded data is still old.
		if m := initialData.FindStringSubmatch(dom); m == nil || strings.Contains(m[1], "cache-3") {
			t.Error("initial data block missing or not the stale one")
		}
	})

	t.Run("proxy unreachable", func(t *testing.T) {
		srv, fetches := serveMesh(t, snap, Snapshot{}) // Self "" makes data.json fail
		dom := meshpagetest.DumpDOM(t, bin, srv.URL+"/mesh/")
		if n := fetches.Load(); n == 0 {
			t.Fatal("the page never fetched data.json")
		}
		checkStatus(t, dom, "stale")
		if !strings.Contains(dom, "cannot reach this proxy: showing data from 12:00:00 UTC") {
			t.Errorf("status does not say the proxy cannot be reached:\n%s", statusText(dom))
		}
		// The last data stays on screen.
		if rows := meshpagetest.FindElements(dom, "tr", "proxy"); len(rows) != 5 {
			t.Errorf("%d proxy rows after a failed refresh, want the 5 from before", len(rows))
		}
		checkNodes(t, dom, "db-7", "web-12")
	})

	t.Run("screenshot", func(t *testing.T) {
		srv, _ := serveMesh(t, snap, snap)
		path := filepath.Join(t.ArtifactDir(), "meshpage.png")
		meshpagetest.Run(t, bin, "--window-size=1400,1000", "--screenshot="+path, srv.URL+"/mesh/")
		t.Logf("screenshot: %s", path)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("no screenshot: %v", err)
		}
		if len(b) < 10<<10 {
			t.Errorf("screenshot is %d bytes: want a real page (> 10 KiB)", len(b))
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("screenshot is not a PNG: %v", err)
		}
		if cfg.Width != 1400 || cfg.Height != 1000 {
			t.Errorf("screenshot is %dx%d, want 1400x1000", cfg.Width, cfg.Height)
		}
	})
}

// serveMesh serves the page as cmd/ mounts it, under /mesh/, with the page
// built from pageSnap and data.json from dataSnap. A dataSnap with no Self
// makes data.json answer 503, as a proxy that is shutting down might. It
// returns the server and a count of data.json requests.
func serveMesh(t *testing.T, pageSnap, dataSnap Snapshot) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var fetches atomic.Int32
	page, err := New(Config{Snapshot: func() Snapshot { return pageSnap }, Refresh: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	data, err := New(Config{Snapshot: func() Snapshot { return dataSnap }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mesh/", http.StripPrefix("/mesh", page))
	mux.HandleFunc("/mesh/data.json", func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if dataSnap.Self == "" {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		http.StripPrefix("/mesh", data).ServeHTTP(w, r)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &fetches
}

func byAttr(t *testing.T, es []meshpagetest.Element, name, value string) meshpagetest.Element {
	t.Helper()
	for _, e := range es {
		if e.Attrs[name] == value {
			return e
		}
	}
	t.Fatalf("no element with %s=%q among %d", name, value, len(es))
	return meshpagetest.Element{}
}

func attrMap(es []meshpagetest.Element, key, value string) map[string]string {
	m := map[string]string{}
	for _, e := range es {
		m[e.Attrs[key]] = e.Attrs[value]
	}
	return m
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// checkNodes checks that the nodes without a tunnel are listed, in order,
// and the section is marked as a problem.
func checkNodes(t *testing.T, dom string, want ...string) {
	t.Helper()
	var got []string
	for _, li := range meshpagetest.FindElements(dom, "li", "node-without-tunnel") {
		got = append(got, li.Text)
	}
	if !slices.Equal(got, want) {
		t.Errorf("nodes without tunnel listed: %q, want %q", got, want)
	}
	sec := regexp.MustCompile(`<section id="nodes-section"[^>]*>`).FindString(dom)
	if !strings.Contains(sec, `class="problem"`) || !strings.Contains(sec, `data-count="`+strconv.Itoa(len(want))+`"`) {
		t.Errorf("nodes section %s: want class problem and data-count %d", sec, len(want))
	}
}

func checkStatus(t *testing.T, dom, want string) {
	t.Helper()
	if !strings.Contains(dom, `id="status" data-state="`+want+`"`) {
		t.Errorf("status is not %q: %s", want, statusText(dom))
	}
}

func statusText(dom string) string {
	return regexp.MustCompile(`<span id="status"[^>]*>[^<]*</span>`).FindString(dom)
}
