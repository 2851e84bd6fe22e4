package server

import (
	"net"
	"testing"
)

func TestDiagAddr(t *testing.T) {
	remote := &net.UDPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}
	for in, want := range map[string]string{
		"":                "",
		"10.0.0.5:3090":   "10.0.0.5:3090",
		":3090":           "203.0.113.7:3090",
		"0.0.0.0:3090":    "203.0.113.7:3090",
		"[::]:3090":       "203.0.113.7:3090",
		"node.example:90": "node.example:90",
		"no-port":         "",
		"host:":           "",
	} {
		if got := diagAddr(in, remote); got != want {
			t.Errorf("diagAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
