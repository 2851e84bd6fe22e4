// Package proto defines the wire protocol of Jumpgate's reverse tunnels:
// the framing, the control messages and the rules for versions. It is pure:
// no network, no clocks, no logging. tunnel/server (the proxy side) and
// tunnel/agent (the node side) both speak it, over QUIC or over TLS over TCP.
//
// # Transports
//
// A node sits behind NAT, so its agent dials OUT to a proxy: one connection
// per proxy, mutual TLS 1.3 with certificates from the cluster's TLS CA, ALPN
// [ALPN] ("jumpgate-tunnel/1"). The proxy accepts only certificates of kind
// node from its own cluster; the agent accepts only kind proxy. Everything
// after the handshake happens on bidirectional streams, and the protocol on
// the streams (Flow, below) is the same whichever transport carries them:
//
//   - QUIC, on the proxy's UDP port. A stream is a QUIC stream; a FIN
//     (stream Close) is a half-close; STOP_SENDING and RESET_STREAM abort
//     a stream; the connection closes with CONNECTION_CLOSE carrying one of
//     the Close* codes and a reason.
//   - TLS over TCP, for networks that block UDP, on the proxy's TCP port
//     (the same host:port, where the proxy's TLS listener routes the ALPN
//     to the tunnel server). Inside the TLS connection runs a yamux session
//     (github.com/hashicorp/yamux, protocol version 0); the agent is
//     yamux's client, the proxy its server. A stream is a yamux stream and
//     a FIN (yamux's stream close) is a half-close, as over QUIC. yamux
//     cannot reset one stream, so an abort is a FIN after which the
//     aborting side discards what still arrives: the peer reads EOF where
//     QUIC would give it an error, which ends every exchange below that an
//     abort ends. yamux cannot carry a reason when it closes, either, so
//     the first stream the agent opens is a control stream, on which
//     neither side writes anything until it closes the connection: then it
//     writes one [Close] frame {version, code (a Close* code), reason} and,
//     once the peer has closed the TCP connection (or a second has
//     passed), closes it too. A peer reads the Close and closes at once.
//     The Hello stream is the agent's second stream.
//
// An agent in auto mode tries QUIC and falls back to TCP when its QUIC
// handshake gets no answer; see tunnel/agent. The TCP transport came after
// version 1 but needs no version of its own: the streams carry the same
// messages, and an agent learns that a proxy lacks it from the TLS
// handshake (no_application_protocol on the TCP port).
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
// Tunnel setup, once per connection, on the first stream the agent opens
// (over TCP, the first after the control stream):
//
//	agent                                              proxy
//	  |-- QUIC, or TCP + yamux, with TLS 1.3 ------------>|  client cert: kind node
//	  |-- opens stream; Hello -------------------------->|  {version: highest the agent speaks,
//	  |                                                   |   node_id, labels, agent_version,
//	  |                                                   |   instance_id, slot}
//	  |<------------------------------------- HelloAck ---|  {version: chosen, proxy_id,
//	  |                                                   |   accepted | error}
//	  |-- both sides close the stream ------------------->|
//
// The proxy checks that the certificate is a node certificate of its
// cluster whose name equals Hello.NodeID. If anything is wrong it answers
// HelloAck{accepted: false, error: reason} and closes the connection with
// [CloseRefused] and the same reason, so the agent learns why even if the
// HelloAck is lost in the close. Over QUIC, a certificate that does not
// chain to the cluster's TLS CA (or no certificate at all) fails the TLS
// handshake itself; the agent then sees a CRYPTO_ERROR at its first stream
// read, not at dial time. Over TCP the proxy's TLS listener, which also
// serves clients without certificates, rejects an untrusted certificate in
// the handshake (a TLS alert at the agent's first read) and lets a missing
// one through; the tunnel server checks the chain again and refuses a
// missing or untrusted certificate with a HelloAck.
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
// SSH connection unchanged. A FIN is a half-close, like TCP's
// shutdown(SHUT_WR); an abort ([StreamCanceled], [StreamRefused]) drops the
// stream (see Transports). The proxy sends nothing between its DialRequest
// and the DialResponse, so an agent waiting for its SSH server to take a
// dial learns that the proxy gave up when a read returns. On
// DialResponse{ok: false} the proxy reports the error text to the user and
// both sides drop the stream.
//
// The proxy closes a tunnel with [CloseReplaced] when a newer tunnel from the
// same node takes over, and with [CloseShutdown] when it shuts down; the agent
// closes it with [CloseShutdown] when it stops, and with [CloseNormal] when
// it moves the tunnel elsewhere (another proxy, or from TCP back to QUIC).
//
// # Versions
//
// Every message carries a version. Hello.Version is the highest version the
// agent speaks; the proxy picks min(its own, the agent's) with [Negotiate],
// refusing versions below [MinVersion], and puts the chosen version in
// HelloAck.Version. Every later message on the connection carries the chosen
// version. A message with a version this side does not speak, or of a type it
// does not know, is an error that names both; unknown JSON fields are
// ignored, so a newer peer may add fields without a version bump. [Close] is
// the exception: a transport frame that may be sent before a version was
// chosen, it carries the sender's highest version and is read whatever that
// is.
//
// Version 2 adds [Drain]: on a tunnel whose chosen version is 2 or more, a
// draining proxy opens a stream whose first frame is a Drain (instead of a
// DialRequest) and closes it:
//
//	agent                                              proxy
//	  |<-------------------------------------- Drain -----|  {version, reason, deadline}
//	  |   (stream closed; the agent opens a tunnel to     |
//	  |    another proxy, then closes this one once no    |
//	  |    dialed connection uses it)                     |
//
// A version 1 agent is never sent a Drain: it learns that the proxy drains
// from discovery (the proxy's gossiped state) at its next refresh, or when
// the proxy closes the tunnel at the end of its drain.
package proto
