// Package server is the proxy side of Jumpgate's reverse tunnels.
//
// Node agents (tunnel/agent) dial OUT to a proxy over QUIC with a node
// certificate; a Server accepts those connections on Serve, checks who they
// are, and keeps a registry of which node holds which tunnel. Dial then opens
// a QUIC stream down a node's tunnel and returns it as a net.Conn that
// carries the user's SSH connection, end to end, to the node's SSH server.
// The wire protocol is in tunnel/proto.
//
// # Who may hold a tunnel
//
// The TLS handshake requires a client certificate that chains to
// Config.ClientCAs (read on every handshake, so a CA rotation needs no
// restart) with the client-auth usage; a missing or untrusted certificate
// fails the handshake. After the handshake the certificate's identity
// (auth/identity) must be of kind node, of this cluster, and named like
// Hello.NodeID. Those checks happen after the handshake on purpose: the
// proxy can then tell the agent why in a HelloAck and in the QUIC close
// reason, which a TLS alert cannot carry. Refusals are logged with the
// remote address and the reason, and counted in
// jumpgate_tunnel_handshake_failures_total{reason}; they never touch other
// tunnels.
//
// # Registry
//
// A node normally holds one tunnel to a proxy. When it connects again while
// an old tunnel lingers (the agent restarted, or it noticed a dead path
// before the proxy did), the new tunnel serves dials and the old one is
// closed. Only when one agent process reaches the same proxy through two of
// its configured addresses does the proxy keep both (Hello.InstanceID and
// Hello.Slot tell these cases apart): the newest serves dials, the other is a
// spare.
//
// Config.OnTunnel hears TunnelUp for every tunnel that registers and
// TunnelDown when a node's last tunnel ends, in registry order.
//
// # Lifetimes
//
// Shutdown stops accepting tunnels and dials, waits for dialed connections to
// close, then closes the tunnels; when its context ends first it closes
// everything at once, which is what Close does immediately. Neither closes the
// net.PacketConn given to Serve.
package server
