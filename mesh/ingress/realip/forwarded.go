package realip

import (
	"net/http"
	"net/netip"
	"strings"
)

// Forwarded finds an HTTP request's client address in X-Forwarded-For (or
// the standard Forwarded header), believing only the hops it trusts.
type Forwarded struct {
	// TrustedHops are the proxies and load balancers whose forwarding
	// headers are believed. Empty: none, and ClientAddr is the socket peer.
	TrustedHops []netip.Prefix
	// RFC7239, if set, reads the for= parameters of the standard Forwarded
	// header (RFC 7239) instead of X-Forwarded-For. Set it only when every
	// trusted hop maintains Forwarded: a hop that appends to one header and
	// passes the other through untouched leaves the other entirely in the
	// client's hands, so exactly one of them can be believed.
	RFC7239 bool
}

// ClientAddr returns the client's address for r, starting from the socket
// peer, r.RemoteAddr (already the PROXY header's source when the listener
// came from Listen):
//
//   - If the peer is not a trusted hop, forwarding headers are ignored and
//     the peer is the client. spoofed reports that the request carried an
//     X-Forwarded-For or Forwarded header anyway: a client trying to pass
//     for someone else (log it as "spoofed X-Forwarded-For from an untrusted
//     peer: ignored").
//   - If the peer is trusted, the header's entries are walked from right to
//     left (the last one was appended by the peer; several header lines
//     count as one list, in order). Trusted hops are skipped; the first
//     untrusted entry is the client. When every entry is trusted, the
//     leftmost is.
//   - An entry that is not an address (garbage, "unknown", an obfuscated
//     RFC 7239 identifier, an address with a zone) stops the walk: the
//     answer is the last address walked, a trusted hop, since nothing left
//     of the garbage can be attributed to anyone. Empty list elements are
//     skipped, as RFC 9110 asks.
//
// Entries may carry ports (192.0.2.1:443, [2001:db8::1]:443); IPv6 may be
// bare, bracketed, or (Forwarded) quoted and bracketed. IPv4-mapped
// addresses are unmapped. The walk allocates nothing.
//
// With RFC7239, each comma-separated element must carry exactly one for=
// parameter (others, such as proto= and by=, are ignored). Elements are split
// at every comma and semicolon, so a quoted value containing either (legal
// in extension parameters, never in for=) makes its element garbage.
//
// addr is invalid only when r.RemoteAddr is not an IP address.
func (f Forwarded) ClientAddr(r *http.Request) (addr netip.Addr, spoofed bool) {
	peer, ok := parseRemoteAddr(r.RemoteAddr)
	if !ok || !containsAddr(f.TrustedHops, peer) {
		return peer, len(r.Header.Values("X-Forwarded-For")) > 0 || len(r.Header.Values("Forwarded")) > 0
	}
	parse := parseXFFEntry
	values := r.Header.Values("X-Forwarded-For")
	if f.RFC7239 {
		parse = parseForwardedElement
		values = r.Header.Values("Forwarded")
	}
	addr = peer
	for i := len(values) - 1; i >= 0; i-- {
		v := values[i]
		for end := len(v); end >= 0; {
			start := strings.LastIndexByte(v[:end], ',') + 1
			entry := strings.Trim(v[start:end], " \t")
			end = start - 1
			if entry == "" {
				continue
			}
			a, ok := parse(entry)
			if !ok {
				return addr, false
			}
			if !containsAddr(f.TrustedHops, a) {
				return a, false
			}
			addr = a
		}
	}
	return addr, false
}

// parseRemoteAddr parses http.Request.RemoteAddr: "ip:port" from a server,
// or a bare IP from some tests and frameworks. A zone is kept: a socket
// peer may legitimately be link-local.
func parseRemoteAddr(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

func parseXFFEntry(s string) (netip.Addr, bool) { return parseNode(s, false) }

// parseForwardedElement returns the address in an RFC 7239 element's for=
// parameter: for=192.0.2.60;proto=http;by=203.0.113.43.
func parseForwardedElement(s string) (netip.Addr, bool) {
	var value string
	found := false
	for s != "" {
		pair := s
		if i := strings.IndexByte(s, ';'); i >= 0 {
			pair, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		pair = strings.Trim(pair, " \t")
		name, v, ok := strings.Cut(pair, "=")
		if !ok && pair != "" {
			return netip.Addr{}, false
		}
		if !strings.EqualFold(name, "for") {
			continue
		}
		if found { // "each parameter MUST NOT occur more than once per forwarded-element"
			return netip.Addr{}, false
		}
		value, found = v, true
	}
	if !found {
		return netip.Addr{}, false
	}
	if strings.HasPrefix(value, `"`) {
		// A quoted node never needs escapes: refuse them rather than
		// unescape.
		if len(value) < 2 || !strings.HasSuffix(value, `"`) || strings.ContainsAny(value[1:len(value)-1], "\"\\") {
			return netip.Addr{}, false
		}
		value = value[1 : len(value)-1]
	}
	return parseNode(value, true)
}

// parseNode parses an address with an optional port: 192.0.2.1,
// 192.0.2.1:80, 2001:db8::1, [2001:db8::1], [2001:db8::1]:80. With obfPort,
// an RFC 7239 obfuscated port (_abc) is allowed too. Addresses with zones are
// refused: a zone means nothing outside the host that wrote it.
func parseNode(s string, obfPort bool) (netip.Addr, bool) {
	host, port, hasPort := s, "", false
	want6 := false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		host, want6 = s[1:end], true
		if rest := s[end+1:]; rest != "" {
			if rest[0] != ':' {
				return netip.Addr{}, false
			}
			port, hasPort = rest[1:], true
		}
	} else if i := strings.IndexByte(s, ':'); i >= 0 && strings.IndexByte(s[i+1:], ':') < 0 {
		// One colon: IPv4 and port. More: bare IPv6.
		host, port, hasPort = s[:i], s[i+1:], true
	}
	if hasPort && !validPort(port, obfPort) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" || (want6 && !a.Is6()) || (hasPort && !want6 && !a.Is4()) {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func validPort(s string, obf bool) bool {
	if obf && len(s) > 1 && s[0] == '_' {
		for i := 1; i < len(s); i++ {
			if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
		return true
	}
	_, err := parsePort(s)
	return err == nil
}
