// Package meshpage serves the mesh page: one self-contained HTML page each
// proxy serves so that whoever is on call sees the whole mesh at a glance,
// as this proxy sees it. It shows a world map with every proxy (colored by
// health and state) and the peer links this proxy measures (labeled with
// their round-trip time), a table of proxies with drain progress, a table
// of links, and the nodes that hold no tunnel to any proxy, which nobody can
// reach.
//
// The package knows nothing of gossip, peers or drains: cmd/ gives it a
// Snapshot function that gathers those, and the page only draws what it is
// given.
//
// # Routes
//
// A Handler answers two paths, relative to where it is mounted:
//
//	GET /           the HTML page, with the current Snapshot inside it
//	GET /data.json  the current Snapshot as JSON (Cache-Control: no-store)
//
// Mount it under a prefix with http.StripPrefix, keeping the trailing
// slash in the mux pattern so that ServeMux redirects "/mesh" to "/mesh/":
//
//	mux.Handle("/mesh/", http.StripPrefix("/mesh", h))
//
// The page fetches "data.json" by a relative URL, so it works under any
// prefix as long as the page's own URL ends in "/".
//
// # Page flow
//
//  1. The browser GETs the page. The server calls Config.Snapshot once and
//     writes its JSON into a <script type="application/json"
//     id="initial-data"> block, and Config.Refresh into the body's
//     data-refresh-ms attribute. The page's script draws from that block,
//     so the first paint needs no second request.
//  2. Every Refresh the script GETs data.json (the server calls
//     Config.Snapshot again) and redraws in place, without reloading.
//  3. When a fetch fails (the proxy is down, or answers an error), the page
//     keeps the last data it had and says "cannot reach this proxy: showing
//     data from HH:MM:SS UTC"; it keeps trying every Refresh.
//
// # No external assets
//
// The page is one embedded file (page.html) with inline CSS and script: no
// CDN, no web fonts, no map tiles; the continents are a few coarse polygons
// drawn in the script. It works offline, on an air-gapped bastion, and
// leaks nothing to third parties. The Content-Security-Policy header
// enforces that: default-src 'none', the inline script and style allowed
// by a per-response nonce, fetches only to the page's own origin.
//
// # Untrusted strings
//
// Proxy ids, regions, versions and node names come from configuration and
// gossip, so they are treated as untrusted: html/template escapes them on
// the server, and the script only ever puts them into the page with
// textContent and setAttribute, never as HTML.
//
// # JSON
//
// data.json is a Snapshot with snake_case field names. Durations are
// milliseconds as numbers (a Link's RTT is "rtt_ms"); times are RFC 3339.
// An example:
//
//	{"self":"p1","cluster":"prod","generated_at":"2026-01-02T12:00:00Z",
//	 "proxies":[{"id":"p1","region":"eu-west","version":"1.4.0","lat":50.1,
//	   "lon":8.7,"has_coords":true,"state":"draining","health":"alive",
//	   "tunnels":1,"sessions":12,"drain":{"phase":"moving","sessions":12,
//	   "resumable":12,"tunnels":1,"deadline":"2026-01-02T12:03:00Z"}}],
//	 "links":[{"from":"p1","to":"p2","rtt_ms":12.5,"health":"alive"}],
//	 "nodes":40,"nodes_without_tunnel":["db-7"]}
package meshpage
