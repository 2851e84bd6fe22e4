package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Config configures an Agent. Zero durations, sizes and windows take the
// defaults documented on each field.
type Config struct {
	// ProxyAddrs are the proxies' tunnel listeners, "host:port" (UDP). The
	// agent keeps one tunnel to each. Required.
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
	// KeepAlivePeriod is how often the agent pings an idle tunnel; it keeps
	// NAT mappings open. Default 5s (NATs drop idle UDP mappings after as
	// little as 30s).
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a tunnel after this long without a packet from
	// the proxy. Default 15s: a dead proxy is noticed within three missed
	// keepalives, instead of QUIC's default 30s.
	MaxIdleTimeout time.Duration
	// StreamReceiveWindow and ConnectionReceiveWindow cap QUIC flow control
	// for data from the proxy (the upload direction of a session). Defaults
	// 16 MiB and 32 MiB, as measured for tunnel/server's defaults (see
	// server.DefaultStreamReceiveWindow).
	StreamReceiveWindow     uint64
	ConnectionReceiveWindow uint64

	// Logger receives the agent's logs. Default: slog.Default().
	Logger *slog.Logger
	// Metrics, if set, registers the agent's metrics.
	Metrics prometheus.Registerer
	// Now is the clock for certificate validity and status timestamps.
	// Default time.Now. Timers always use the real clock.
	Now func() time.Time
}

// Defaults; see the Config fields.
const (
	DefaultMinBackoff              = 200 * time.Millisecond
	DefaultMaxBackoff              = 15 * time.Second
	DefaultHandshakeTimeout        = 10 * time.Second
	DefaultAcceptTimeout           = 5 * time.Second
	DefaultAcceptBacklog           = 1024
	DefaultKeepAlivePeriod         = 5 * time.Second
	DefaultMaxIdleTimeout          = 15 * time.Second
	DefaultStreamReceiveWindow     = 16 << 20
	DefaultConnectionReceiveWindow = 32 << 20

	// maxIncomingStreams is how many dials a proxy may have open on one
	// tunnel at once. quic-go's default of 100 would queue the 101st SSH
	// session of a busy node behind the others.
	maxIncomingStreams = 10000
	// stableAfter: a tunnel that stayed up this long resets the backoff.
	stableAfter = 30 * time.Second
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
	return nil
}

func (c *Config) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       c.HandshakeTimeout,
		MaxIdleTimeout:             c.MaxIdleTimeout,
		KeepAlivePeriod:            c.KeepAlivePeriod,
		MaxStreamReceiveWindow:     c.StreamReceiveWindow,
		MaxConnectionReceiveWindow: c.ConnectionReceiveWindow,
		MaxIncomingStreams:         maxIncomingStreams,
		MaxIncomingUniStreams:      -1,
	}
}
