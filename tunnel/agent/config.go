package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/internal/transport"
)

// Config configures an Agent. Zero durations, sizes and windows take the
// defaults documented on each field.
type Config struct {
	// ProxyAddrs are the proxies' tunnel listeners, "host:port": UDP for
	// QUIC, and the same port over TCP for the TCP transport (a proxy serves
	// both on one port).
	// Without Discover the agent keeps one tunnel to each, forever; with
	// Discover they are only the seeds it starts from. Required.
	ProxyAddrs []string
	// NodeID is this node's name; it must equal the name in its
	// certificate. Required.
	NodeID string
	// ClusterName is the cluster this node belongs to; proxies of other
	// clusters are refused. Required.
	ClusterName string
	// Labels, if set, returns the node's labels; it is read on every
	// (re)connect.
	Labels func() map[string]string
	// GetClientCertificate returns the node's TLS certificate (kind node);
	// it is called on every handshake, so a renewed certificate needs no
	// restart. Required.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// RootCAs returns the trusted TLS CA pool, read on every handshake.
	// Required.
	RootCAs func() *x509.CertPool
	// Version is the agent's software version, sent to proxies for their
	// logs. Optional.
	Version string
	// DiagAddr, if set, is where the node serves /metrics: agents tell
	// proxies, so that `jgctl targets` lists nodes too.
	DiagAddr string

	// Transport says how tunnels are carried: TransportAuto (the default),
	// TransportQUIC or TransportTCP. Auto tries QUIC and falls back to TLS
	// over TCP, per proxy, when the QUIC handshake gets no answer at all
	// (UDP blocked on the way, as on many corporate networks); it tries QUIC
	// again every QUICRetryInterval and moves back when it works. TCP suits
	// networks known to block UDP; QUIC never falls back.
	Transport string
	// QUICFallbackAfter is how long a QUIC handshake may go unanswered, in
	// auto mode, before the agent takes UDP to be blocked and uses TCP.
	// Default 3s: a proxy that answers at all answers within a few round
	// trips, and a node on a UDP-blocked network should not wait the full
	// HandshakeTimeout on every connect.
	QUICFallbackAfter time.Duration
	// QUICRetryInterval is how often, in auto mode, a tunnel that fell back
	// to TCP tries QUIC again (±20%). When QUIC works, the agent opens the
	// QUIC tunnel, then closes the TCP one once no connection uses it.
	// Default 5m: often enough to leave TCP soon after a network change,
	// rare enough that a blocked network costs one lost handshake a while.
	QUICRetryInterval time.Duration

	// MinBackoff and MaxBackoff bound the reconnect delay: the n-th retry
	// in a row waits a random time in [0, min(MaxBackoff, MinBackoff*2^n)].
	// Defaults 200ms and 15s: quick when a proxy blips, and at most 15s
	// before a fixed proxy or certificate is noticed.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// HandshakeTimeout bounds dialing a proxy and its HelloAck. Default 10s.
	HandshakeTimeout time.Duration
	// AcceptTimeout is how long a dial waits for the SSH server to Accept it
	// before the agent refuses it. Default 5s, shorter than the proxy's dial
	// timeout (10s) so that the user gets this reason, not a timeout.
	AcceptTimeout time.Duration
	// AcceptBacklog is how many dials may wait for Accept at once; more are
	// refused at once. Default 1024: a burst of sessions (a deploy tool
	// fanning out) must not be refused while the SSH server's accept loop
	// catches up; like a TCP listen backlog, it only bounds memory.
	AcceptBacklog int
	// KeepAlivePeriod is how often the agent pings an idle tunnel (QUIC
	// PING, yamux ping over TCP); it keeps NAT mappings open. Default 5s
	// (NATs drop idle UDP mappings after as little as 30s).
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a tunnel after this long without a packet from
	// the proxy (over TCP: without an answer to a ping for MaxIdleTimeout
	// minus KeepAlivePeriod). Default 15s: a dead proxy is noticed within
	// three missed keepalives, instead of QUIC's default 30s.
	MaxIdleTimeout time.Duration
	// StreamReceiveWindow and ConnectionReceiveWindow cap QUIC flow control
	// for data from the proxy (the upload direction of a session). Defaults
	// 16 MiB and 32 MiB, as measured for tunnel/server's defaults (see
	// server.DefaultStreamReceiveWindow). Over TCP, StreamReceiveWindow is
	// yamux's stream window, and there is no connection window.
	StreamReceiveWindow     uint64
	ConnectionReceiveWindow uint64

	// Discover, if set, returns the proxies of the mesh (the node's cmd/ asks
	// whichever proxy it can reach over HTTPS). With it, ProxyAddrs are only
	// the seeds: the agent keeps tunnels to ConnectionCount distinct proxies
	// chosen nearest first from what Discover returns, and re-homes when one
	// dies or drains (see "Re-homing" in the package comment). It must
	// return when its context ends; each call gets at most 10s. Without it
	// the agent keeps exactly the ProxyAddrs tunnels.
	Discover func(ctx context.Context) ([]Candidate, error)
	// ConnectionCount is how many distinct proxies to hold tunnels to when
	// Discover is set. Default 2: one proxy can die or drain while the node
	// stays reachable through the other, and each tunnel costs the node only
	// a QUIC connection and a keepalive every KeepAlivePeriod.
	ConnectionCount int
	// RefreshInterval is how often Discover is called again, jittered by
	// ±20% so that a fleet started together does not ask in step. Discover
	// is also called right after a tunnel goes down or is refused. Default
	// 30s: a drain is noticed within that even while every tunnel is up;
	// dead proxies show up sooner, as tunnels going down.
	RefreshInterval time.Duration
	// Probe measures the round trip to a proxy address, for ranking
	// candidates. Default: the time to connect over TCP to the same
	// host:port (proxies serve TLS on TCP on the tunnel port, and a TCP
	// connect is one round trip that needs no credentials). Each probe gets
	// at most 2s; probes run in parallel, once per Discover.
	Probe func(ctx context.Context, addr string) (time.Duration, error)
	// FailoverAfter: a tunnel that has not been connected for this long, or
	// has failed 3 attempts in a row, gives its place to the next candidate
	// (if there is one; otherwise it keeps retrying). Default 5s: longer
	// than a proxy restart takes to refuse or a lost packet to be resent,
	// short enough that a node is not left on one tunnel for long.
	FailoverAfter time.Duration

	// Logger receives the agent's logs. Default: slog.Default().
	Logger *slog.Logger
	// Metrics, if set, registers the agent's metrics.
	Metrics prometheus.Registerer
	// Now is the clock for certificate validity and status timestamps.
	// Default time.Now. Timers always use the real clock.
	Now func() time.Time
}

// Transports; see Config.Transport.
const (
	TransportAuto = "auto"
	TransportQUIC = transport.QUIC
	TransportTCP  = transport.TCP
)

// Defaults; see the Config fields.
const (
	DefaultQUICFallbackAfter       = 3 * time.Second
	DefaultQUICRetryInterval       = 5 * time.Minute
	DefaultMinBackoff              = 200 * time.Millisecond
	DefaultMaxBackoff              = 15 * time.Second
	DefaultHandshakeTimeout        = 10 * time.Second
	DefaultAcceptTimeout           = 5 * time.Second
	DefaultAcceptBacklog           = 1024
	DefaultKeepAlivePeriod         = 5 * time.Second
	DefaultMaxIdleTimeout          = 15 * time.Second
	DefaultStreamReceiveWindow     = 16 << 20
	DefaultConnectionReceiveWindow = 32 << 20
	DefaultConnectionCount         = 2
	DefaultRefreshInterval         = 30 * time.Second
	DefaultFailoverAfter           = 5 * time.Second

	// maxIncomingStreams is how many dials a proxy may have open on one
	// tunnel at once. quic-go's default of 100 would queue the 101st SSH
	// session of a busy node behind the others.
	maxIncomingStreams = 10000
	// stableAfter: a tunnel that stayed up this long resets the backoff.
	stableAfter = 30 * time.Second
	// muxAcceptBacklog is yamux's AcceptBacklog over TCP: how many of the
	// proxy's dials may wait for the tunnel's accept loop (which hands
	// each to a goroutine at once) before yamux refuses them. It is not
	// AcceptBacklog, which counts dials waiting for the SSH server.
	muxAcceptBacklog = 1024
)

func (c *Config) checkAndSetDefaults() error {
	switch {
	case len(c.ProxyAddrs) == 0:
		return errors.New("tunnel agent config: ProxyAddrs is required")
	case c.NodeID == "":
		return errors.New("tunnel agent config: NodeID is required")
	case c.ClusterName == "":
		return errors.New("tunnel agent config: ClusterName is required")
	case c.GetClientCertificate == nil:
		return errors.New("tunnel agent config: GetClientCertificate is required")
	case c.RootCAs == nil:
		return errors.New("tunnel agent config: RootCAs is required")
	}
	if err := identity.CheckName(c.NodeID); err != nil {
		return fmt.Errorf("tunnel agent config: NodeID: %w", err)
	}
	seen := map[string]bool{}
	for _, a := range c.ProxyAddrs {
		if _, _, err := splitHostPort(a); err != nil {
			return fmt.Errorf("tunnel agent config: ProxyAddrs: %w", err)
		}
		if seen[a] {
			return fmt.Errorf("tunnel agent config: ProxyAddrs lists %s twice", a)
		}
		seen[a] = true
	}
	switch c.Transport {
	case "":
		c.Transport = TransportAuto
	case TransportAuto, TransportQUIC, TransportTCP:
	default:
		return fmt.Errorf("tunnel agent config: Transport %q: want %s, %s or %s", c.Transport, TransportAuto, TransportQUIC, TransportTCP)
	}
	if c.QUICFallbackAfter <= 0 {
		c.QUICFallbackAfter = DefaultQUICFallbackAfter
	}
	if c.QUICRetryInterval <= 0 {
		c.QUICRetryInterval = DefaultQUICRetryInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		return fmt.Errorf("tunnel agent config: MaxBackoff %v is below MinBackoff %v", c.MaxBackoff, c.MinBackoff)
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.AcceptTimeout <= 0 {
		c.AcceptTimeout = DefaultAcceptTimeout
	}
	if c.AcceptBacklog <= 0 {
		c.AcceptBacklog = DefaultAcceptBacklog
	}
	if c.KeepAlivePeriod <= 0 {
		c.KeepAlivePeriod = DefaultKeepAlivePeriod
	}
	if c.MaxIdleTimeout <= 0 {
		c.MaxIdleTimeout = DefaultMaxIdleTimeout
	}
	if c.StreamReceiveWindow == 0 {
		c.StreamReceiveWindow = DefaultStreamReceiveWindow
	}
	if c.ConnectionReceiveWindow == 0 {
		c.ConnectionReceiveWindow = DefaultConnectionReceiveWindow
	}
	if c.ConnectionReceiveWindow < c.StreamReceiveWindow {
		c.ConnectionReceiveWindow = c.StreamReceiveWindow
	}
	if c.ConnectionCount < 0 {
		return fmt.Errorf("tunnel agent config: ConnectionCount %d is negative", c.ConnectionCount)
	}
	if c.ConnectionCount == 0 {
		c.ConnectionCount = DefaultConnectionCount
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.FailoverAfter <= 0 {
		c.FailoverAfter = DefaultFailoverAfter
	}
	if c.Probe == nil {
		c.Probe = tcpProbe
	}
	return nil
}

// tuning is this config's connection settings for both transports.
func (c *Config) tuning() transport.Tuning {
	return transport.Tuning{
		HandshakeTimeout: c.HandshakeTimeout, KeepAlivePeriod: c.KeepAlivePeriod, MaxIdleTimeout: c.MaxIdleTimeout,
		StreamReceiveWindow: c.StreamReceiveWindow, ConnectionReceiveWindow: c.ConnectionReceiveWindow,
		MaxIncomingStreams: maxIncomingStreams, MuxAcceptBacklog: muxAcceptBacklog,
	}
}
