// Package realip finds the real client address of a connection or an HTTP
// request when the proxy sits behind load balancers: from a PROXY protocol
// header on the connection (Listen, FromConn, ReadHeader) or from
// X-Forwarded-For or Forwarded on a request (Forwarded.ClientAddr). Only
// peers named as trusted are believed; from anyone else the socket's address
// stands. It is hand-written on the standard library: the protocol is small
// and its parsing is where the risk is, so it is fuzzed here.
//
// # PROXY protocol flow
//
// The load balancer accepts the client's TCP connection, opens its own to
// the proxy, and sends one header before any of the client's bytes; the
// proxy sends nothing in reply:
//
//	client              load balancer                           proxy (Listen)
//	  |-- TCP connect ------->|                                      |
//	  |                       |-- TCP connect ---------------------->|  Accept: wrap, read nothing
//	  |                       |-- PROXY header --------------------->|  first Read or RemoteAddr:
//	  |                       |   (v2 binary or v1 text, once)       |  read it, under HeaderTimeout
//	  |-- bytes (TLS ...) --->|-- the client's bytes, unchanged ---->|  Read: the bytes after the header
//	  |<======================|<===== both ways, unchanged =========>|
//
// A health check from the load balancer itself sends a LOCAL header (v2) or
// "PROXY UNKNOWN" (v1) and its own bytes; the socket's address is kept.
//
// # Version 2 (binary)
//
// HAProxy's spec (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):
//
//	offset  size  field
//	     0    12  signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A  ("\r\n\r\n\0\r\nQUIT\n")
//	    12     1  version (high nibble, 2) | command (low: 0 LOCAL, 1 PROXY)
//	    13     1  family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) |
//	              transport (low: 0 UNSPEC, 1 STREAM, 2 DGRAM); accepted:
//	              0x00, 0x11 TCP4, 0x12 UDP4, 0x21 TCP6, 0x22 UDP6,
//	              0x31 UNIX stream, 0x32 UNIX dgram
//	    14     2  length L of what follows, big endian; at most MaxV2Length (4096)
//	    16     L  addresses, by family:
//	                INET   12: src addr 4, dst addr 4, src port 2, dst port 2
//	                INET6  36: src addr 16, dst addr 16, src port 2, dst port 2
//	                UNIX  216: src path 108, dst path 108
//	                UNSPEC  0
//	              then TLVs up to L: type 1, length 2 (big endian), value
//
// Parsing is strict: an unknown version, command or family, a length too
// short for the family's addresses, or TLVs that do not tile the rest exactly
// refuse the header. TLVs are counted and skipped, not interpreted. A LOCAL
// header's family and addresses are ignored, as the spec requires. Exactly
// the header is consumed, never more than its declared length.
//
// # Version 1 (text)
//
// Many load balancers still send version 1, so it is accepted too: one line
// of at most 107 bytes, CRLF included, fields separated by single spaces:
//
//	PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n
//	PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n
//	PROXY UNKNOWN[ anything]\r\n
//
// TCP4 needs IPv4 addresses, TCP6 IPv6 ones; ports are decimal, 0 to 65535,
// without leading zeros.
//
// # Trust model
//
// Listen reads a header only from a socket peer inside Config.Trusted, the
// load balancers. From such a peer the header's source becomes RemoteAddr; a
// malformed, truncated or slow header refuses the connection (Read and Write
// return the error, the socket is closed); a missing header is refused when
// Config.Required is set, else the socket's address stands. The header is
// read lazily, on the connection's first Read or RemoteAddr, so one slow
// client never stalls Accept.
//
// A missing header is recognised at the client's first byte, but a client
// that waits for the server to speak first (SSH) sends no byte: calling
// RemoteAddr before writing to it then waits HeaderTimeout. Behind a load
// balancer that sends headers this never happens.
//
// From an untrusted peer nothing is parsed: its bytes go to Read unchanged,
// and a PROXY header there is just the start of a broken TLS handshake, which
// the TLS layer refuses. The spoofing attempt is still noticed when it costs
// nothing: the first Read's bytes, which the caller asked for anyway, are
// compared with the two signatures. Nothing is peeked or buffered and no read
// waits for it; a signature split across reads goes unnoticed.
//
// Forwarded.ClientAddr applies the same rule to HTTP: X-Forwarded-For (or
// Forwarded) is believed only from a trusted hop, walked from the right, and
// stops at the first untrusted address (see ClientAddr for garbage entries).
// A request behind a PROXY-protocol listener already has the client's
// address in RemoteAddr, so TrustedHops then names the HTTP proxies in front
// of the load balancer, if any.
//
// # Logs and metrics
//
//	level=WARN msg="PROXY protocol header from an untrusted peer: ignored" remote=203.0.113.9:51234 version=2
//	level=WARN msg="PROXY protocol header refused: connection closed" remote=10.0.0.5:40312 err="realip: PROXY v2 header: ..."
//
// Headers that succeed, LOCAL headers and optional missing ones are logged at
// debug level. jumpgate_proxy_protocol_headers_total{result} counts
// connections: ok (the client's address from a trusted peer's header),
// local (LOCAL, UNSPEC, UNIX or v1 UNKNOWN: the socket's address kept),
// missing (a trusted peer sent no header, including health checks that
// connect and close), untrusted (a signature from an untrusted peer), invalid
// (a trusted peer's header refused). Connections from untrusted peers without
// a signature are not counted.
package realip
