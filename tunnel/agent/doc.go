// Package agent is the node side of Jumpgate's reverse tunnels.
//
// A node behind NAT cannot be dialed, so its Agent dials OUT: one tunnel to
// each configured proxy address (mutual TLS with the node's certificate),
// kept up by Run with jittered exponential backoff; or, with
// Config.Discover, tunnels to ConnectionCount proxies of the mesh, chosen
// nearest first (see Re-homing). A tunnel is a QUIC connection (all share
// one UDP socket) or, where UDP is blocked, TLS over TCP with yamux (see
// Transports). Each dial the proxy makes arrives as a stream; the Agent
// hands it out as a net.Conn from Accept, so an *Agent is the net.Listener
// the node's SSH server serves on. SSH runs end to end; the wire protocol
// is in tunnel/proto.
//
// # Transports
//
// Config.Transport "quic" uses QUIC only, "tcp" TLS over TCP only (to the
// same host:port; no UDP socket is opened). "auto", the default, exists
// because many corporate networks drop UDP: each slot tries QUIC, and when
// the QUIC handshake gets no answer at all within QUICFallbackAfter (3s) it
// connects over TCP at once. Silence is the signature of blocked UDP: a
// proxy that is reached answers, even if only to refuse, and a refusal or a
// TLS error never falls back. If TCP fails too the proxy is down, not
// blocked, and the slot backs off as usual with both errors in its status.
// The first fallback for a proxy is logged once at Warn ("UDP to proxy X
// looks blocked ..."), counted in
// jumpgate_tunnel_agent_transport_fallbacks_total, and shown in
// TunnelStatus (Transport "tcp", UDPBlocked). The slot then stays on TCP,
// reconnects included, and tries QUIC again every QUICRetryInterval (5m,
// ±20%), in the background while the TCP tunnel is up. When QUIC works it
// moves back as re-homing does: the QUIC tunnel comes up and serves new
// dials at once, and the TCP tunnel closes once no connection dialed
// through it is open (jumpgate_tunnel_agent_transport_restores_total). TCP
// also costs less CPU per byte than quic-go (benchmarks/README.md), so
// "tcp" is a fair choice where UDP is not needed.
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
// # Re-homing
//
// Without Config.Discover the agent holds a tunnel to every ProxyAddrs
// address forever, as above. With it, ProxyAddrs are only seeds: Run starts
// tunnels to them at once (a node comes up even if discovery is slow) and
// calls Discover at start, as soon as a tunnel is up, every RefreshInterval
// (±20%) and right after a tunnel goes down or is refused, at most once a
// second. Each answer is probed (Config.Probe, in parallel) and ranked by
// round trip; failed probes rank last, draining proxies are never chosen. A
// Discover that fails, or lists no usable proxy, is logged once per change
// and changes nothing.
//
// The agent then holds tunnels to ConnectionCount distinct proxies (a seed's
// proxy is known from its HelloAck; two addresses leading to one proxy count
// once, and the worse is closed). It does not chase the best set: a
// healthy tunnel to a listed, non-draining proxy is never moved because a
// nearer proxy appeared, since moving it would cost a reconnect, and every
// session on it, for a few milliseconds. Only vacancies are filled, with the
// nearest proxy not held yet. A tunnel's place is vacant when its proxy
// left the list (dead), drains, or when the tunnel has not been up for
// FailoverAfter or failed 3 attempts in a row (failing; only if another
// proxy can take its place, else it keeps retrying, and the proxy it left
// ranks last until the next refresh, so two failing proxies are not
// swapped back and forth).
//
// Tunnels that are still up are closed gently: one whose proxy drains or
// left the list, or that is beyond ConnectionCount, stays until the agent
// holds ConnectionCount tunnels without it (or another tunnel to the same
// proxy) and no connection dialed through it is open (a dial waiting for
// Accept counts as open); Status shows it with
// Draining when its proxy drains. A proxy that closes such a tunnel itself
// is not dialed again. Each move is logged at Info with its reason and
// counted in jumpgate_tunnel_agent_rehomes_total{reason}.
//
// # Thundering herds
//
// When a proxy dies or drains, every node holding a tunnel to it moves at
// once, and when a proxy restarts, its nodes all come back together. Four
// things keep that from being one burst of handshakes on one proxy:
// reconnects use full-jitter backoff (above); a replacement tunnel waits a
// random 0-1s before its first attempt, so a thousand nodes leaving a
// proxy arrive at the next one over a second rather than in one instant;
// refreshes are jittered by ±20%, so a fleet started together does not
// poll (and drain) in step; and candidates are ranked by each node's own
// round trips, with ties (and failed probes) broken at random per node, so
// nodes in different places pick different proxies and nodes that cannot
// tell do not all pick the first in the list. Nodes that left a proxy do not
// return to it when it restarts (no churn): it fills up again only as
// other proxies fail or drain, or as nodes start.
//
// # Dials
//
// A DialRequest is answered only when the SSH server takes the connection
// with Accept. If the server does not take it within AcceptTimeout, or
// AcceptBacklog dials are already waiting, the agent refuses the dial with a
// reason the user sees.
package agent
