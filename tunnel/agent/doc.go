// Package agent is the node side of Jumpgate's reverse tunnels.
//
// A node behind NAT cannot be dialed, so its Agent dials OUT: one QUIC
// connection to each configured proxy address (mutual TLS with the node's
// certificate), kept up by Run with jittered exponential backoff. Each dial
// the proxy makes arrives as a QUIC stream; the Agent hands it out as a
// net.Conn from Accept, so an *Agent is the net.Listener the node's SSH
// server serves on. SSH runs end to end; the wire protocol is in
// tunnel/proto.
//
// # Trust
//
// The agent checks the proxy's certificate itself: it must chain to
// Config.RootCAs (read on every handshake) for server authentication and
// carry a Jumpgate identity of kind proxy from this cluster. Host names are
// not checked: proxies are often addressed by IP, and the identity is what
// matters.
//
// # Reconnecting
//
// When a tunnel cannot be set up or breaks, the agent waits a random time
// between zero and a ceiling that doubles from MinBackoff to MaxBackoff
// ("full jitter"), so a thousand nodes whose proxy restarted do not all come
// back in the same instant. A tunnel that stayed up for a while resets the
// ceiling. A proxy that refuses the tunnel (wrong certificate, wrong
// cluster) is retried the same way, since an operator may be fixing it;
// the agent logs the proxy's reason once per change of state, not on every
// retry.
//
// # Dials
//
// A DialRequest is answered only when the SSH server takes the connection
// with Accept. If the server does not take it within AcceptTimeout, or
// AcceptBacklog dials are already waiting, the agent refuses the dial with a
// reason the user sees.
package agent
