// Package server is the proxy side of Jumpgate's reverse tunnels.
//
// Node agents (tunnel/agent) dial OUT to a proxy with a node certificate,
// over QUIC or, where UDP is blocked, over TLS over TCP; a Server accepts
// QUIC connections on Serve and TCP ones from HandleTLS (mesh/ingress owns
// the TCP port and hands over connections whose ALPN is proto.ALPN), checks
// who they are, and keeps a registry of which node holds which tunnel. Dial
// then opens a stream down a node's tunnel and returns it as a net.Conn that
// carries the user's SSH connection, end to end, to the node's SSH server.
// The wire protocol, and the two transports, are in tunnel/proto; the
// handshake, registry and dials are written once over both
// (tunnel/internal/transport).
//
// # Who may hold a tunnel
//
// The QUIC handshake requires a client certificate that chains to
// Config.ClientCAs (read on every handshake, so a CA rotation needs no
// restart) with the client-auth usage; a missing or untrusted certificate
// fails the handshake. Over TCP the TLS listener is ingress's, which lets
// clients without a certificate in (for its HTTPS API), so the server
// checks the chain against ClientCAs after the handshake and refuses with a
// reason. After the handshake the certificate's identity
// (auth/identity) must be of kind node, of this cluster, and named like
// Hello.NodeID. Those checks happen after the handshake on purpose: the
// proxy can then tell the agent why in a HelloAck and in the close reason,
// which a TLS alert cannot carry. Refusals are logged with the remote
// address, the transport and the reason, and counted in
// jumpgate_tunnel_handshake_failures_total{reason,transport}; they never
// touch other tunnels. Over TCP, a connection that is not yamux (garbage
// behind the right ALPN) is refused as bad_transport.
//
// # Registry
//
// A node normally holds one tunnel to a proxy. When it connects again while
// an old tunnel lingers (the agent restarted, or it noticed a dead path
// before the proxy did), the new tunnel serves dials and the old one is
// closed. Only when one agent process reaches the same proxy through two of
// its configured addresses does the proxy keep both (Hello.InstanceID and
// Hello.Slot tell these cases apart): the newest serves dials, the other is a
// spare. A tunnel over TCP has another slot than one over QUIC to the same
// address, so an agent moving from TCP to QUIC holds both for a while, and
// closes the TCP one once no session uses it. NodeInfo.Transport and
// jumpgate_tunnel_tunnels{transport} say which transport carries what.
//
// Config.OnTunnel hears TunnelUp for every tunnel that registers and
// TunnelDown when a node's last tunnel ends, in registry order.
//
// # Lifetimes
//
// Shutdown stops accepting tunnels and dials, waits for dialed connections to
// close, then closes the tunnels; when its context ends first it closes
// everything at once, which is what Close does immediately; tunnels over TCP
// are closed like those over QUIC. Neither closes the net.PacketConn given
// to Serve.
package server
