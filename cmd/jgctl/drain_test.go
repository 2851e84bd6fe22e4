package main

import (
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
)

func TestProxyNotReady(t *testing.T) {
	now := time.Now()
	restart := now.Add(-5 * time.Second)
	proxy := func(id, state, ver string, seen time.Time, peers ...authapi.PeerView) authapi.ProxyState {
		return authapi.ProxyState{ID: id, LastSeen: seen, Mesh: &authapi.ProxyMesh{State: state, Version: ver, Peers: peers}}
	}
	alive := func(id string) authapi.PeerView { return authapi.PeerView{ID: id, Health: "alive"} }
	cases := []struct {
		name    string
		proxies []authapi.ProxyState
		want    string // "" ready, else a part of the reason
	}{
		{"ready", []authapi.ProxyState{proxy("p1", "active", "2.0", now, alive("p2")), proxy("p2", "active", "1.0", now, alive("p1"))}, ""},
		{"unknown", []authapi.ProxyState{proxy("p2", "active", "1.0", now)}, "no report"},
		{"report before the restart", []authapi.ProxyState{proxy("p1", "active", "2.0", restart.Add(-time.Second)), proxy("p2", "active", "1.0", now, alive("p1"))}, "no report since"},
		{"still draining", []authapi.ProxyState{proxy("p1", "draining", "2.0", now), proxy("p2", "active", "1.0", now, alive("p1"))}, "it is draining"},
		{"old version", []authapi.ProxyState{proxy("p1", "active", "1.0", now), proxy("p2", "active", "1.0", now, alive("p1"))}, "runs version 1.0, not 2.0"},
		{"a peer sees it dead", []authapi.ProxyState{proxy("p1", "active", "2.0", now), proxy("p2", "active", "1.0", now, authapi.PeerView{ID: "p1", Health: "dead"})}, "p2 sees it dead"},
		{"a peer does not see it", []authapi.ProxyState{proxy("p1", "active", "2.0", now), proxy("p2", "active", "1.0", now)}, "p2 does not see it yet"},
		{"a silent peer does not count", []authapi.ProxyState{proxy("p1", "active", "2.0", now), proxy("p2", "active", "1.0", now.Add(-2*time.Minute))}, ""},
	}
	for _, c := range cases {
		got := proxyNotReady("p1", c.proxies, restart, "2.0")
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

func TestDiagTarget(t *testing.T) {
	for _, c := range []struct{ diag, public, want string }{
		{"10.0.0.5:9100", "proxy.example.com:3080", "10.0.0.5:9100"},
		{":9100", "proxy.example.com:3080", "proxy.example.com:9100"},
		{"0.0.0.0:9100", "10.1.1.1:3080", "10.1.1.1:9100"},
		{"[::]:9100", "[2001:db8::1]:3080", "[2001:db8::1]:9100"},
		{"not an address", "x:1", "not an address"},
	} {
		if got := diagTarget(c.diag, c.public); got != c.want {
			t.Errorf("diagTarget(%q, %q) = %q, want %q", c.diag, c.public, got, c.want)
		}
	}
}
