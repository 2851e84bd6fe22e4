package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/internal/transport"
	"jumpgate.dev/jumpgate/tunnel/proto"
)

// Config configures a Server. Zero durations and windows take the defaults
// documented on each field.
type Config struct {
	// ProxyID names this proxy to agents (HelloAck) and in logs. Required.
	ProxyID string
	// ClusterName is the cluster whose nodes may hold tunnels. Required.
	ClusterName string
	// GetCertificate returns the proxy's TLS certificate (kind proxy). It is
	// called on every handshake, so a renewed certificate needs no restart.
	// Required.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// ClientCAs returns the trusted TLS CA pool. It is read on every
	// handshake, so CA rotation needs no restart. Required.
	ClientCAs func() *x509.CertPool
	// OnTunnel, if set, hears about tunnels coming up and going down. It is
	// called synchronously in the order the registry changes, so it must
	// return quickly; it may call Nodes but not Shutdown or Close.
	OnTunnel func(TunnelEvent)

	// Logger receives the server's logs. Default: slog.Default().
	Logger *slog.Logger
	// Metrics, if set, registers the server's metrics (a per-instance
	// registry, never the global one).
	Metrics prometheus.Registerer
	// Now is the clock for certificate validity and timestamps. Default:
	// time.Now. Network deadlines always use the real clock.
	Now func() time.Time

	// HandshakeTimeout bounds the time from an accepted connection (QUIC,
	// or TLS over TCP from HandleTLS) to its Hello. Default 10s: a slow link needs a few round trips, a peer
	// that says nothing should not hold a slot.
	HandshakeTimeout time.Duration
	// DialTimeout bounds Dial when its context has no earlier deadline.
	// Default 10s, longer than the agent's default accept timeout (5s), so
	// an agent's refusal reaches the user instead of a bare timeout.
	DialTimeout time.Duration
	// KeepAlivePeriod is how often the proxy pings an idle tunnel (QUIC
	// PING, yamux ping over TCP). Default 5s. Agents ping as well (that is what keeps their NAT open); pinging
	// from this side too makes a vanished agent show up as an idle timeout.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a tunnel after this long without a packet from
	// the agent (over TCP: without an answer to a ping for MaxIdleTimeout
	// minus KeepAlivePeriod). Default 15s: three missed keepalives, so a
	// node that went away is marked offline within seconds, not QUIC's
	// default 30s.
	MaxIdleTimeout time.Duration
	// StreamReceiveWindow and ConnectionReceiveWindow cap QUIC flow control
	// for data from agents (the download direction of a session). See
	// DefaultStreamReceiveWindow for the measurements behind the defaults.
	// Over TCP, StreamReceiveWindow is yamux's stream window (at most 4 GiB)
	// and there is no connection window: TCP's own flow control is one.
	StreamReceiveWindow     uint64
	ConnectionReceiveWindow uint64
	// StatelessResetKey, if set, lets the proxy answer packets for
	// connections it no longer knows (after a crash and restart) with a
	// stateless reset, so agents reconnect at once instead of after
	// MaxIdleTimeout. It must survive restarts: derive it from a persisted
	// secret.
	StatelessResetKey *[32]byte
}

// Receive-window defaults. quic-go starts each window at 512 KiB and grows
// it, while the reader keeps up, up to these caps (quic-go's own caps are
// 6 MiB per stream and 15 MiB per connection). The agent uses the same.
//
// Measured with BenchmarkTunnelThroughput: one stream, 256 MiB written in
// 1 MiB writes and read 32 KiB at a time, server.Dial → agent.Accept, three
// runs each, against raw TCP and TLS 1.3 over TCP on loopback in the same
// run. Machine: nproc = 2, "Intel(R) Xeon(R) Processor" (a KVM guest, no
// model name), Go 1.26.8, quic-go v0.65.0 with GSO on, net.core.rmem_max
// 4 MiB (quic-go forces 7 MiB socket buffers as root).
//
//	loopback                    MB/s          ratio to raw TCP
//	raw TCP                     2780 - 4560   1
//	TLS 1.3 over TCP            1800 - 2170   ≈ 0.55
//	tunnel, windows 1M/4M        550 -  630   ≈ 0.17
//	tunnel, windows 6M/15M       540 -  630   ≈ 0.17
//	tunnel, windows 16M/32M      580 -  660   ≈ 0.17
//	tunnel, windows 32M/64M      470 -  665   ≈ 0.17
//
// On loopback the windows make no difference: the round trip is tens of
// microseconds, so even 1 MiB is many times the bandwidth-delay product, and
// the tunnel is CPU-bound in QUIC (1.8 of the 2 cores busy; about 0.3 of TLS over
// TCP, as DEPENDENCIES.md found). Windows matter across regions, so the
// benchmark also delays every packet the proxy sends by 20 ms (an emulated
// WAN round trip; the wrapped socket loses GSO, so compare these rows only
// with each other):
//
//	RTT 20 ms, node → proxy     MB/s
//	windows 1M/4M               42 - 43   (capped by the window: 1 MiB per 20 ms = 52 MB/s)
//	windows 6M/15M              65 - 84
//	windows 16M/32M             91 - 96   best
//	windows 32M/64M             82 - 86
//
// (proxy → node ran at 36 - 66 MB/s for every window: the single-goroutine
// delay emulator, which those packets pass through, is the bottleneck.)
// So the caps are 16 MiB per stream and 32 MiB per connection. They are
// ceilings, not allocations: a window only grows while its reader keeps up.
//
// The TCP transport (yamux over TLS over TCP) uses StreamReceiveWindow as
// yamux's stream window. Measured in the same run as the QUIC tunnel (same
// benchmark, machine and chunks; the 20 ms rows delay what the proxy sends
// through a userspace TCP forwarder, so compare them with each other):
//
//	MB/s, three runs             loopback       RTT 20 ms
//	TLS 1.3 over TCP             1540 - 2000
//	QUIC tunnel, 16M/32M          510 -  580     31 -  86
//	TCP tunnel, window 256K      1190 - 1240      9 -  12   (yamux's default)
//	TCP tunnel, window 1M         940 - 1210     25 -  46
//	TCP tunnel, window 4M         940 - 1140     87 - 122
//	TCP tunnel, window 16M        800 - 1020    300 - 490
//	TCP tunnel, window 32M        480 -  990    475 - 560
//
// The TCP tunnel moves about twice the bytes of the QUIC one for the same
// CPU (both saturate the 2 cores), most of TLS over TCP's rate. Unlike
// quic-go, yamux grants a stream its whole window at once rather than
// growing it while the reader keeps up: large windows cost some throughput
// on loopback (the receive buffer grows past the caches) and let a stalled
// reader hold up to a window of buffered data per stream, while small ones
// starve long paths (a window per two round trips, as yamux acknowledges
// at half a window). 16 MiB, the QUIC stream cap, keeps cross-region
// sessions fast; set StreamReceiveWindow lower for proxies holding many
// sessions of slow readers.
const (
	DefaultStreamReceiveWindow     = 16 << 20
	DefaultConnectionReceiveWindow = 32 << 20
)

// The other defaults; see the Config fields.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultKeepAlivePeriod  = 5 * time.Second
	DefaultMaxIdleTimeout   = 15 * time.Second

	// maxIncomingStreams limits the streams an agent may open. An agent
	// opens one (the Hello); the rest are refused as they come.
	maxIncomingStreams = 8
	// muxAcceptBacklog is yamux's AcceptBacklog over TCP. yamux uses it on
	// both sides for two things: the streams an agent opened that wait for
	// the proxy to accept them (refused at once anyway), and how many of
	// the proxy's dials may wait for the agent's acknowledgement, which is
	// what matters: a burst of dials beyond it waits a round trip. As the
	// agent's AcceptBacklog default.
	muxAcceptBacklog = 1024
)

func (c *Config) checkAndSetDefaults() error {
	switch {
	case c.ProxyID == "":
		return errors.New("tunnel server config: ProxyID is required")
	case c.ClusterName == "":
		return errors.New("tunnel server config: ClusterName is required")
	case c.GetCertificate == nil:
		return errors.New("tunnel server config: GetCertificate is required")
	case c.ClientCAs == nil:
		return errors.New("tunnel server config: ClientCAs is required")
	}
	if err := identity.CheckName(c.ProxyID); err != nil {
		return errors.New("tunnel server config: ProxyID: " + err.Error())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
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

// tuning is this config's connection settings for both transports.
func (c *Config) tuning() transport.Tuning {
	return transport.Tuning{
		HandshakeTimeout: c.HandshakeTimeout, KeepAlivePeriod: c.KeepAlivePeriod, MaxIdleTimeout: c.MaxIdleTimeout,
		StreamReceiveWindow: c.StreamReceiveWindow, ConnectionReceiveWindow: c.ConnectionReceiveWindow,
		MaxIncomingStreams: maxIncomingStreams, MuxAcceptBacklog: muxAcceptBacklog,
	}
}

// tlsConfig is the base TLS configuration; each handshake gets a clone whose
// VerifyConnection knows the remote address (see Server.configForClient).
func (c *Config) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{proto.ALPN},
		GetCertificate: c.GetCertificate,
		// RequestClientCert rather than RequireAnyClientCert: with the
		// latter, crypto/tls fails a certificate-less handshake before any
		// callback runs, so the proxy could not log who tried. The
		// certificate is required all the same, in verifyClient.
		ClientAuth: tls.RequestClientCert,
		// Every tunnel is verified against the current CA pool: no
		// resumption from a ticket issued under an older one.
		SessionTicketsDisabled: true,
	}
}
