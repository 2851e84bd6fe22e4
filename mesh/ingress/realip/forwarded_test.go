package realip

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

var hops = Forwarded{TrustedHops: []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("2001:db8:ffff::/48"),
}}

func request(remote string, header string, values ...string) *http.Request {
	r := httptest.NewRequest("GET", "/v1/discover", nil)
	r.RemoteAddr = remote
	for _, v := range values {
		r.Header.Add(header, v)
	}
	return r
}

func TestClientAddrXFF(t *testing.T) {
	tests := []struct {
		name        string
		remote      string
		xff         []string
		want        string
		wantSpoofed bool
	}{
		{"no header", "10.0.0.1:5000", nil, "10.0.0.1", false},
		{"untrusted peer, no header", "203.0.113.9:5000", nil, "203.0.113.9", false},
		{"one hop", "10.0.0.1:5000", []string{"203.0.113.7"}, "203.0.113.7", false},
		{"trusted chain", "10.0.0.1:5000", []string{"203.0.113.7, 10.0.0.3, 10.0.0.2"}, "203.0.113.7", false},
		{"client's own entries left of its address are ignored", "10.0.0.1:5000", []string{"1.1.1.1, 10.9.9.9, 203.0.113.7, 10.0.0.2"}, "203.0.113.7", false},
		{"spoofed from an untrusted peer", "203.0.113.9:5000", []string{"1.1.1.1"}, "203.0.113.9", true},
		{"spoofed trusted-looking address from an untrusted peer", "203.0.113.9:5000", []string{"10.0.0.1"}, "203.0.113.9", true},
		{"all hops trusted: the leftmost", "10.0.0.1:5000", []string{"10.0.0.9, 10.0.0.2"}, "10.0.0.9", false},
		{"multiple headers are one list", "10.0.0.1:5000", []string{"1.1.1.1, 203.0.113.7", "10.0.0.3", "10.0.0.2"}, "203.0.113.7", false},
		{"multiple headers, client in the last", "10.0.0.1:5000", []string{"1.1.1.1", "203.0.113.7"}, "203.0.113.7", false},
		{"whitespace and tabs", "10.0.0.1:5000", []string{" \t203.0.113.7 \t,\t10.0.0.2  "}, "203.0.113.7", false},
		{"empty elements skipped", "10.0.0.1:5000", []string{",203.0.113.7,, ,10.0.0.2,", ""}, "203.0.113.7", false},
		{"IPv4 with port", "10.0.0.1:5000", []string{"203.0.113.7:51234, 10.0.0.2:443"}, "203.0.113.7", false},
		{"IPv6 bare", "10.0.0.1:5000", []string{"2001:db8::7"}, "2001:db8::7", false},
		{"IPv6 bracketed", "10.0.0.1:5000", []string{"[2001:db8::7]"}, "2001:db8::7", false},
		{"IPv6 with port", "10.0.0.1:5000", []string{"[2001:db8::7]:443, [2001:db8:ffff::1]:8443"}, "2001:db8::7", false},
		{"IPv6 trusted peer", "[2001:db8:ffff::2]:5000", []string{"203.0.113.7, 2001:db8:ffff::1"}, "203.0.113.7", false},
		{"mapped IPv4 unmapped", "[::ffff:10.0.0.1]:5000", []string{"::ffff:203.0.113.7"}, "203.0.113.7", false},
		{"garbage stops the walk at the last good address", "10.0.0.1:5000", []string{"203.0.113.7, bogus, 10.0.0.2"}, "10.0.0.2", false},
		{"garbage right after the peer", "10.0.0.1:5000", []string{"203.0.113.7, unknown"}, "10.0.0.1", false},
		{"garbage left of the client is never reached", "10.0.0.1:5000", []string{"bogus, 203.0.113.7, 10.0.0.2"}, "203.0.113.7", false},
		{"host name is garbage", "10.0.0.1:5000", []string{"client.example.com"}, "10.0.0.1", false},
		{"zone is garbage", "10.0.0.1:5000", []string{"fe80::1%eth0"}, "10.0.0.1", false},
		{"bad port is garbage", "10.0.0.1:5000", []string{"203.0.113.7:99999"}, "10.0.0.1", false},
		{"IPv4 in brackets is garbage", "10.0.0.1:5000", []string{"[203.0.113.7]:80"}, "10.0.0.1", false},
		{"IPv6 port without brackets is garbage", "10.0.0.1:5000", []string{"2001:db8::7:443x"}, "10.0.0.1", false},
		{"peer without port", "10.0.0.1", []string{"203.0.113.7"}, "203.0.113.7", false},
		{"peer not an IP", "@", []string{"203.0.113.7"}, "invalid IP", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, spoofed := hops.ClientAddr(request(tt.remote, "X-Forwarded-For", tt.xff...))
			if got.String() != tt.want || spoofed != tt.wantSpoofed {
				t.Errorf("ClientAddr = %s, spoofed %v; want %s, %v", got, spoofed, tt.want, tt.wantSpoofed)
			}
		})
	}
}

func TestClientAddrForwarded(t *testing.T) {
	f := hops
	f.RFC7239 = true
	tests := []struct {
		name   string
		remote string
		values []string
		want   string
	}{
		{"RFC 7239 example", "10.0.0.1:5000", []string{`for=192.0.2.60;proto=http;by=203.0.113.43`}, "192.0.2.60"},
		{"chain", "10.0.0.1:5000", []string{`for=192.0.2.43, for="[2001:db8:cafe::17]:4711", for=10.0.0.3`}, "2001:db8:cafe::17"},
		{"case and whitespace", "10.0.0.1:5000", []string{`For=192.0.2.43 ; proto=https`}, "192.0.2.43"},
		{"multiple headers", "10.0.0.1:5000", []string{`for=1.1.1.1`, `for=192.0.2.43;by=10.0.0.2`, `for=10.0.0.3`}, "192.0.2.43"},
		{"quoted IPv4 with port", "10.0.0.1:5000", []string{`for="192.0.2.43:80"`}, "192.0.2.43"},
		{"obfuscated port", "10.0.0.1:5000", []string{`for="[2001:db8::1]:_abc"`}, "2001:db8::1"},
		{"unknown stops the walk", "10.0.0.1:5000", []string{`for=192.0.2.43, for=unknown, for=10.0.0.3`}, "10.0.0.3"},
		{"obfuscated node stops the walk", "10.0.0.1:5000", []string{`for=_hidden`}, "10.0.0.1"},
		{"element without for= stops the walk", "10.0.0.1:5000", []string{`for=192.0.2.43, proto=https`}, "10.0.0.1"},
		{"for= twice is garbage", "10.0.0.1:5000", []string{`for=192.0.2.43;for=192.0.2.44`}, "10.0.0.1"},
		{"unterminated quote is garbage", "10.0.0.1:5000", []string{`for="192.0.2.43`}, "10.0.0.1"},
		{"escape in quotes is garbage", "10.0.0.1:5000", []string{`for="192.0.2.4\3"`}, "10.0.0.1"},
		{"a broken client element does not hide the client", "10.0.0.1:5000", []string{`for="1.1.1.1, for=203.0.113.9`}, "203.0.113.9"},
		{"X-Forwarded-For is ignored", "10.0.0.1:5000", nil, "10.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.remote, "Forwarded", tt.values...)
			r.Header.Set("X-Forwarded-For", "198.51.100.1")
			got, spoofed := f.ClientAddr(r)
			if got.String() != tt.want || spoofed {
				t.Errorf("ClientAddr = %s, spoofed %v; want %s, false", got, spoofed, tt.want)
			}
		})
	}
	// Either header from an untrusted peer is a spoofing attempt.
	for _, header := range []string{"Forwarded", "X-Forwarded-For"} {
		for _, fw := range []Forwarded{hops, f} {
			got, spoofed := fw.ClientAddr(request("203.0.113.9:1", header, "for=1.1.1.1"))
			if got.String() != "203.0.113.9" || !spoofed {
				t.Errorf("RFC7239=%v, %s from an untrusted peer: %s, spoofed %v", fw.RFC7239, header, got, spoofed)
			}
		}
	}
}

func TestClientAddrNoTrustedHops(t *testing.T) {
	got, spoofed := Forwarded{}.ClientAddr(request("10.0.0.1:5000", "X-Forwarded-For", "203.0.113.7"))
	if got.String() != "10.0.0.1" || !spoofed {
		t.Errorf("ClientAddr = %s, %v; want the peer, spoofed", got, spoofed)
	}
}

func TestClientAddrAllocs(t *testing.T) {
	r := request("10.0.0.1:5000", "X-Forwarded-For", "1.1.1.1, 203.0.113.7, [2001:db8:ffff::1]:443, 10.0.0.2")
	if n := testing.AllocsPerRun(100, func() { hops.ClientAddr(r) }); n != 0 {
		t.Errorf("ClientAddr allocates %v times", n)
	}
}

func ExampleForwarded_ClientAddr() {
	f := Forwarded{TrustedHops: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}

	r := httptest.NewRequest("GET", "/v1/discover", nil)
	r.RemoteAddr = "10.0.0.1:40000" // the load balancer
	r.Header.Set("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 10.0.0.2")
	fmt.Println(f.ClientAddr(r))

	r.RemoteAddr = "203.0.113.9:51000" // a client reaching the proxy directly
	if addr, spoofed := f.ClientAddr(r); spoofed {
		fmt.Println("spoofed X-Forwarded-For from an untrusted peer: ignored; client", addr)
	}
	// Output:
	// 203.0.113.7 false
	// spoofed X-Forwarded-For from an untrusted peer: ignored; client 203.0.113.9
}

// referenceClientAddr is ClientAddr written the obvious way (split
// everything, then walk), to check the allocation-free scanner against.
func referenceClientAddr(f Forwarded, r *http.Request) (netip.Addr, bool) {
	peer, ok := parseRemoteAddr(r.RemoteAddr)
	if !ok || !containsAddr(f.TrustedHops, peer) {
		return peer, len(r.Header.Values("X-Forwarded-For")) > 0 || len(r.Header.Values("Forwarded")) > 0
	}
	name, parse := "X-Forwarded-For", parseXFFEntry
	if f.RFC7239 {
		name, parse = "Forwarded", parseForwardedElement
	}
	var entries []string
	for _, v := range r.Header.Values(name) {
		for _, e := range strings.Split(v, ",") {
			if e = strings.Trim(e, " \t"); e != "" {
				entries = append(entries, e)
			}
		}
	}
	addr := peer
	for i := len(entries) - 1; i >= 0; i-- {
		a, ok := parse(entries[i])
		if !ok {
			break
		}
		addr = a
		if !containsAddr(f.TrustedHops, a) {
			break
		}
	}
	return addr, false
}
