// Package proto defines the wire protocol of Jumpgate's reverse tunnels:
// the framing, the four control messages and the rules for versions. It is
// pure: no network, no clocks, no logging. tunnel/server (the proxy side) and
// tunnel/agent (the node side) both speak it over QUIC.
//
// # Transport
//
// A node sits behind NAT, so its agent dials OUT to a proxy: one QUIC
// connection per proxy, ALPN [ALPN] ("jumpgate-tunnel/1"), mutual TLS with
// certificates from the cluster's TLS CA. The proxy accepts only certificates
// of kind node from its own cluster; the agent accepts only kind proxy.
// Everything after the handshake happens on bidirectional QUIC streams.
//
// # Frames
//
// Control messages travel as frames:
//
//	+------+-----------------+---------------------------+
//	| type | length (uint32, | body: length bytes of     |
//	| 1 B  | big endian) 4 B | JSON, at most MaxBodyLen  |
//	+------+-----------------+---------------------------+
//
// A reader checks the length against [MaxBodyLen] (64 KiB) before it
// allocates anything, and reads exactly one frame: a stream switches to raw
// bytes right after its last frame, so nothing may be read ahead.
//
// # Flow
//
// Tunnel setup, once per QUIC connection, on the first stream, which the
// agent opens:
//
//	agent                                              proxy
//	  |-- QUIC + TLS 1.3 (client cert: kind node) ------->|  chain checked in the handshake
//	  |-- opens stream; Hello -------------------------->|  {version: highest the agent speaks,
//	  |                                                   |   node_id, labels, agent_version,
//	  |                                                   |   instance_id, slot}
//	  |<------------------------------------- HelloAck ---|  {version: chosen, proxy_id,
//	  |                                                   |   accepted | error}
//	  |-- both sides close the stream ------------------->|
//
// The proxy checks that the certificate is a node certificate of its
// cluster whose name equals Hello.NodeID. If anything is wrong it answers
// HelloAck{accepted: false, error: reason} and closes the QUIC connection
// with [CloseRefused] and the same reason, so the agent learns why even if the
// HelloAck is lost in the close. A certificate that does not chain to the
// cluster's TLS CA (or no certificate at all) fails the TLS handshake
// itself; the agent then sees a CRYPTO_ERROR at its first stream read, not
// at dial time.
//
// After an accepted HelloAck the agent opens no more streams. For each user
// dial the proxy opens a new stream:
//
//	agent                                              proxy
//	  |<-------------------------------- DialRequest -----|  {version, client_addr, user,
//	  |                                                   |   session_id, request_id}
//	  |-- DialResponse --------------------------------->|  {version, ok | error}
//	  |<=============== raw bytes, both ways ===========>|  (SSH, end to end)
//
// After DialResponse{ok: true} the stream carries the bytes of the node's
// SSH connection unchanged. A FIN (QUIC stream Close) is a half-close, like
// TCP's shutdown(SHUT_WR); STOP_SENDING / RESET_STREAM abort the stream
// ([StreamCanceled], [StreamRefused]). On DialResponse{ok: false} the proxy
// reports the error text to the user and both sides drop the stream.
//
// The proxy closes a tunnel with [CloseReplaced] when a newer tunnel from the
// same node takes over, and with [CloseShutdown] when it shuts down; the agent
// closes it with [CloseShutdown] when it stops.
//
// # Versions
//
// Every message carries a version. Hello.Version is the highest version the
// agent speaks; the proxy picks min(its own, the agent's) with [Negotiate],
// refusing versions below [MinVersion], and puts the chosen version in
// HelloAck.Version. Every later message on the connection carries the chosen
// version. A message with a version this side does not speak, or of a type it
// does not know, is an error that names both; unknown JSON fields are
// ignored, so a newer peer may add fields without a version bump.
//
// Version 1 is the only version so far.
package proto
