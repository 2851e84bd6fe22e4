// Package peer is proxy-to-proxy dialing over QUIC: when a user at proxy A
// asks for a node whose reverse tunnel is held by proxy C, A opens a stream
// to C and C connects it down the node's tunnel. The package knows nothing of
// tunnels: the holder's side is a Handler that cmd/ joins to tunnel/server.
//
// # Connections
//
// Each proxy has one UDP socket for peering: Serve accepts the connections
// peers dial on it, and Dial dials from it, so a peer sees one address for
// a proxy either way. Between two proxies there is one QUIC connection,
// whichever side dialed it; both sides accept streams on it and open
// streams on it (QUIC streams are bidirectional). When both proxies dial
// each other at once, both keep the connection dialed by the lower proxy id
// (ordinary string order) and close the other once its streams have ended.
// A connection to a peer that arrives later (more than five seconds after
// the one held) replaces it: the peer restarted or lost the old one. Dial
// also dials anew when the live connection leads to another address than the
// one asked for, unless a dial has reached that peer at the address asked for
// before (then the difference is NAT or a wildcard-bound socket, not a
// restart). Concurrent Dials to one peer share one connection attempt.
//
// # Who may peer
//
// TLS 1.3 with ALPN [ALPN] ("jumpgate-peer/1"), mutual, with certificates
// from the cluster's TLS CA (Config.RootCAs, read on every handshake). The
// accepting proxy requires a client certificate that chains to it with the
// client-auth usage; after the handshake the certificate must name a proxy
// (identity.KindProxy) of this cluster, other than this proxy itself. The
// dialing proxy requires a server certificate naming exactly the proxy it
// meant to dial. Refusals are logged with the remote address and the reason
// and counted in jumpgate_peer_handshake_failures_total{reason}; they never
// touch other connections.
//
// An untrusted or missing certificate fails the TLS handshake itself: with
// mutual TLS over QUIC the dialer's handshake has already completed by then,
// so it learns at its first stream read, as a CRYPTO_ERROR, which Dial
// reports as "peer P rejected this proxy's certificate". A trusted
// certificate of the wrong kind or cluster is refused after the handshake
// with CONNECTION_CLOSE carrying application error 1 (refused) and the
// reason, which Dial reports word for word. Other close codes: 2 shutting
// down, 3 duplicate connection, 4 protocol violation.
//
// Packets on the peer port that belong to no connection (not QUIC, malformed,
// an unknown connection id) are counted in
// jumpgate_peer_dropped_packets_total{reason} and logged at most once per
// ten seconds.
//
// # Frames
//
// The first bytes of each stream are frames:
//
//	+------+-----------------+--------------------------------+
//	| type | length (uint32, | body: length bytes of JSON,    |
//	| 1 B  | big endian) 4 B | at most 16 KiB                 |
//	+------+-----------------+--------------------------------+
//
// Types: 1 DialRequest, 2 DialResponse. A reader checks the length before
// allocating and reads exactly one frame: the stream carries raw bytes right
// after its last frame.
//
// # Flow
//
// One stream per dial, opened by the proxy the user reached (the dialer):
//
//	dialer (proxy A)                                   holder (proxy C)
//	  |-- opens stream; DialRequest ------------------->|  {version: 1, node, user,
//	  |                                                  |   client_addr, hops: [A]}
//	  |                                                  |  Handler.HandleDial(from=A, req)
//	  |<------------------------------- DialResponse ---|  {version: 1, ok: true}
//	  |<============== raw bytes, both ways ===========>|  (the user's SSH, end to end)
//
// or, when the holder cannot connect the node:
//
//	dialer (proxy A)                                   holder (proxy C)
//	  |-- opens stream; DialRequest ------------------->|
//	  |<------------------------------- DialResponse ---|  {version: 1, code, message}
//	  |-- both sides drop the stream ------------------>|
//
// Codes: "offline" (no tunnel here), "denied", "unavailable" (the node or
// this proxy cannot take it now; shutting down), "bad_request", "version",
// "loop". The holder must receive the complete DialRequest within
// Config.RequestTimeout (10 s) or it resets the stream with stream error 3.
// After ok, a FIN (QUIC stream Close) is a half-close, like TCP's
// shutdown(SHUT_WR), and the holder passes it on to the node's connection;
// RESET_STREAM or STOP_SENDING (stream errors 0 closed, 1 canceled,
// 2 refused) aborts the dial in both directions.
//
// Hops lists the proxies the request passed through, the origin first; each
// proxy appends its id when it dials. A proxy refuses a request whose Hops
// already contain it (code "loop"). In version 1 a holder never forwards a
// dial to another peer, so Hops has one entry; it is there so that a later
// version may forward without loops.
//
// # Versions
//
// DialRequest.Version is the version the dialer speaks for this stream. A
// holder that does not speak it answers code "version" with its own highest
// version in DialResponse.Version (Error.PeerVersion), so a newer proxy can
// retry with that version while a rolling upgrade is half done. Unknown
// JSON fields are ignored, so adding a field needs no new version; a frame
// type the holder does not know is answered like a newer version. A change
// old proxies cannot parse at all gets a new ALPN. Version 1 is the only
// version so far.
//
// # Lifetimes
//
// Shutdown stops accepting connections and dials (streams peers open are
// answered "unavailable"), waits until every stream has ended, dialed and
// accepted alike, then closes the connections; when its context ends first
// it closes everything at once, which is what Close does immediately.
// Neither closes the net.PacketConn given to Serve.
package peer
