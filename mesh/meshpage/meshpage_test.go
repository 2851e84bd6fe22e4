package meshpage

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var genTime = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// testSnapshot is a mesh of 5 proxies in 3 regions as p2 sees it while it
// drains: p1 and p2 share a place, p4 is dead, p5 has no coordinates.
func testSnapshot() Snapshot {
	return Snapshot{
		Self:        "p2",
		Cluster:     "prod",
		GeneratedAt: genTime,
		Proxies: []Proxy{
			{ID: "p1", Region: "eu-west", Version: "1.4.0", Lat: 50.11, Lon: 8.68, HasCoords: true,
				State: "active", Health: "alive", Tunnels: 14, Sessions: 30},
			{ID: "p2", Region: "eu-west", Version: "1.4.0", Lat: 50.11, Lon: 8.68, HasCoords: true,
				State: "draining", Health: "alive", Tunnels: 1, Sessions: 12,
				Drain: &Drain{Phase: "moving", Sessions: 12, Resumable: 12, Tunnels: 1, Deadline: genTime.Add(3 * time.Minute)}},
			{ID: "p3", Region: "us-east", Version: "1.4.0", Lat: 39.04, Lon: -77.49, HasCoords: true,
				State: "active", Health: "alive", Tunnels: 20, Sessions: 41},
			{ID: "p4", Region: "us-east", Version: "1.3.2", Lat: 40.71, Lon: -74.01, HasCoords: true,
				State: "active", Health: "dead", Tunnels: 0, Sessions: -1},
			{ID: "p5", Region: "ap-south", Version: "1.4.0",
				State: "active", Health: "suspect", Tunnels: 5, Sessions: 7},
		},
		Links: []Link{
			{From: "p2", To: "p1", RTT: 400 * time.Microsecond, Health: "alive"},
			{From: "p2", To: "p3", RTT: 85200 * time.Microsecond, Health: "alive"},
			{From: "p2", To: "p4", RTT: 91 * time.Millisecond, Health: "dead"},
			{From: "p2", To: "p5", RTT: 142700 * time.Microsecond, Health: "suspect"},
		},
		Nodes:              40,
		NodesWithoutTunnel: []string{"db-7", "web-12"},
	}
}

func newHandler(t *testing.T, snap func() Snapshot) *Handler {
	t.Helper()
	h, err := New(Config{Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// get serves one request and returns the response and its body.
func get(t *testing.T, h http.Handler, method, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	res := rec.Result()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

func TestConfigChecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no snapshot", Config{}, "Snapshot is required"},
		{"negative refresh", Config{Snapshot: testSnapshot, Refresh: -time.Second}, "Refresh -1s is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: got error %v, want one containing %q", err, tc.want)
			}
		})
	}

	// The refresh interval reaches the page: the default, and a set one.
	for _, tc := range []struct {
		refresh    time.Duration
		attr, text string
	}{
		{0, `data-refresh-ms="2000"`, "updates itself every 2 s"},
		{500 * time.Millisecond, `data-refresh-ms="500"`, "updates itself every 500 ms"},
	} {
		h, err := New(Config{Snapshot: testSnapshot, Refresh: tc.refresh})
		if err != nil {
			t.Fatal(err)
		}
		_, page := get(t, h, "GET", "/")
		if !strings.Contains(page, tc.attr) || !strings.Contains(page, tc.text) {
			t.Errorf("Refresh %v: page lacks %s or %q", tc.refresh, tc.attr, tc.text)
		}
	}
}

func TestDataJSONRoundTrip(t *testing.T) {
	want := testSnapshot()
	res, body := get(t, newHandler(t, testSnapshot), "GET", "/data.json")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /data.json: %s: %s", res.Status, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var got Snapshot
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode data.json: %v\n%s", err, body)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("data.json round trip:\n got %+v\nwant %+v", got, want)
	}
	// The wire names a browser reads: snake_case, RTT in milliseconds.
	for _, s := range []string{
		`"self":"p2"`, `"generated_at":"2026-03-14T12:00:00Z"`, `"has_coords":true`,
		`"nodes_without_tunnel":["db-7","web-12"]`, `"rtt_ms":0.4`, `"rtt_ms":85.2`,
		`"drain":{"phase":"moving","sessions":12,"resumable":12,"tunnels":1,"deadline":"2026-03-14T12:03:00Z"}`,
	} {
		if !strings.Contains(body, s) {
			t.Errorf("data.json lacks %s:\n%s", s, body)
		}
	}
	if strings.Contains(body, `"RTT"`) || strings.Contains(body, `"ID"`) {
		t.Errorf("data.json has Go field names:\n%s", body)
	}
}

func TestDataJSONEmptyAndOddSnapshot(t *testing.T) {
	before := time.Now()
	h := newHandler(t, func() Snapshot {
		return Snapshot{Self: "p1", Cluster: "c", Proxies: []Proxy{
			{ID: "p1", Lat: math.NaN(), Lon: 8, HasCoords: true, State: "active", Health: "alive"},
			{ID: "p2", Lat: 91, Lon: 8, HasCoords: true},
		}, Links: []Link{{From: "p1", To: "p2", RTT: -time.Second}}}
	})
	res, body := get(t, h, "GET", "/data.json")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /data.json: %s: %s", res.Status, body)
	}
	// Lists are [] rather than null, so the page needs no special case.
	if !strings.Contains(body, `"nodes_without_tunnel":[]`) {
		t.Errorf("want an empty list of nodes without tunnel, got %s", body)
	}
	var got Snapshot
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.GeneratedAt.Before(before.Truncate(time.Second)) {
		t.Errorf("generated_at %v: want the time of the request", got.GeneratedAt)
	}
	for _, p := range got.Proxies {
		if p.HasCoords || p.Lat != 0 || p.Lon != 0 {
			t.Errorf("proxy %s with bad coordinates: got %+v, want them dropped", p.ID, p)
		}
	}
	if got.Links[0].RTT != 0 {
		t.Errorf("negative RTT: got %v, want 0 (not measured)", got.Links[0].RTT)
	}
}

var initialData = regexp.MustCompile(`(?s)<script type="application/json" id="initial-data">(.*?)</script>`)

func TestPageHasInitialDataAndNoExternalAssets(t *testing.T) {
	res, page := get(t, newHandler(t, testSnapshot), "GET", "/")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %s: %s", res.Status, page)
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	m := initialData.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("page has no initial-data block:\n%s", page)
	}
	var got Snapshot
	if err := json.Unmarshal([]byte(m[1]), &got); err != nil {
		t.Fatalf("decode initial data: %v\n%s", err, m[1])
	}
	if want := testSnapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("initial data:\n got %+v\nwant %+v", got, want)
	}

	lower := strings.ToLower(page)
	for _, bad := range []string{"http://", "https://", `src="http`, `href="http`, "url(http", "url(", "@import", `src="//`, `href="//`} {
		if strings.Contains(lower, bad) {
			t.Errorf("page contains %q: it must load nothing from elsewhere", bad)
		}
	}
	// Only inline assets, and the CSP says so to the browser.
	csp := res.Header.Get("Content-Security-Policy")
	nonce := regexp.MustCompile(`'nonce-([^']+)'`).FindStringSubmatch(csp)
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") || nonce == nil {
		t.Fatalf("Content-Security-Policy %q: want default-src 'none', connect-src 'self' and a nonce", csp)
	}
	scripts := regexp.MustCompile(`<script[^>]*>`).FindAllString(page, -1)
	if len(scripts) != 2 {
		t.Fatalf("want 2 scripts (data and code), got %q", scripts)
	}
	if want := `<script nonce="` + nonce[1] + `">`; scripts[1] != want {
		t.Errorf("code script %q, want %q", scripts[1], want)
	}
	if !strings.Contains(page, `<style nonce="`+nonce[1]+`">`) {
		t.Errorf("style does not carry the CSP nonce %s", nonce[1])
	}
	_, again := get(t, newHandler(t, testSnapshot), "GET", "/")
	if strings.Contains(again, nonce[1]) {
		t.Errorf("nonce %s used twice", nonce[1])
	}
}

func TestUntrustedStringsEscaped(t *testing.T) {
	const evilID = `p</script><script>alert(1)</script>`
	const evilCluster = `"><img src=x onerror=alert(2)>`
	snap := testSnapshot()
	snap.Cluster = evilCluster
	snap.Proxies[0].ID = evilID
	snap.Links[0].To = evilID
	snap.NodesWithoutTunnel = append(snap.NodesWithoutTunnel, `<b>node</b>`)
	h := newHandler(t, func() Snapshot { return snap })

	_, page := get(t, h, "GET", "/")
	for _, bad := range []string{"<script>alert", "</script><script>", "<img", "<b>node"} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q unescaped", bad)
		}
	}
	// Escaped, not mangled: the page's data says exactly what was given.
	m := initialData.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("page has no initial-data block")
	}
	var got Snapshot
	if err := json.Unmarshal([]byte(m[1]), &got); err != nil {
		t.Fatal(err)
	}
	if got.Proxies[0].ID != evilID || got.Cluster != evilCluster {
		t.Errorf("initial data: id %q cluster %q, want %q and %q", got.Proxies[0].ID, got.Cluster, evilID, evilCluster)
	}
	if !strings.Contains(page, "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;") {
		t.Errorf("the cluster name is not shown HTML-escaped in the header")
	}
	// The script never builds HTML from strings, so data cannot become markup.
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(page, sink) {
			t.Errorf("page script uses %s", sink)
		}
	}
}

func TestRoutes(t *testing.T) {
	var calls atomic.Int32
	h := newHandler(t, func() Snapshot { calls.Add(1); return testSnapshot() })
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/", 200},
		{"HEAD", "/", 200},
		{"GET", "/data.json", 200},
		{"GET", "/index.html", 404},
		{"GET", "", 404},
		{"GET", "/data.json/", 404},
		{"POST", "/", 405},
		{"DELETE", "/data.json", 405},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(tc.method, "/", nil)
		req.URL.Path = tc.path
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("%s %q: %d, want %d", tc.method, tc.path, rec.Code, tc.code)
		}
		if tc.code == 405 && rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %q: Allow %q", tc.method, tc.path, rec.Header().Get("Allow"))
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("Snapshot called %d times, want once per page or data request (3)", n)
	}

	// Mounted as the package comment says: the page under /mesh/ and its
	// data next to it, and /mesh redirected to /mesh/.
	mux := http.NewServeMux()
	mux.Handle("/mesh/", http.StripPrefix("/mesh", h))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for path, want := range map[string]string{"/mesh/": `id="initial-data"`, "/mesh": `id="initial-data"`, "/mesh/data.json": `"self":"p2"`} {
		res, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %s, body lacks %s", path, res.Status, want)
		}
	}
}

func TestLinkJSON(t *testing.T) {
	var l Link
	err := json.Unmarshal([]byte(`{"from":"a","to":"b","rtt_ms":1.25,"health":"alive"}`), &l)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Link{From: "a", To: "b", RTT: 1250 * time.Microsecond, Health: "alive"}); l != want {
		t.Errorf("got %+v, want %+v", l, want)
	}
	if err := json.Unmarshal([]byte(`{"rtt_ms":"fast"}`), &l); err == nil {
		t.Error("rtt_ms as a string: want an error")
	}
}
