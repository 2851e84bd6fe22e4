package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Handler connects an accepted peer dial to the node. It is how cmd/ joins
// mesh/peer to tunnel/server: mesh/ cannot import tunnel/, so the holder's
// side of a dial is handed out through this one method.
type Handler interface {
	// HandleDial connects to req.Node. from is the verified id of the peer
	// proxy that sent the request. ctx bounds the dial only (it ends when
	// HandleDial returns, when the dialer gives up, and at Config.DialTimeout);
	// the returned conn lives until the stream ends. Returning an *Error
	// passes its Code and Message to the dialer; any other error reaches
	// the dialer as CodeUnavailable. A conn with CloseWrite() error (TCP,
	// QUIC streams) carries half-closes through.
	HandleDial(ctx context.Context, from string, req DialRequest) (net.Conn, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, from string, req DialRequest) (net.Conn, error)

var _ Handler = HandlerFunc(nil)

// HandleDial calls f.
func (f HandlerFunc) HandleDial(ctx context.Context, from string, req DialRequest) (net.Conn, error) {
	return f(ctx, from, req)
}

// Config configures a Mesh. Zero durations and sizes take the defaults
// documented on each field.
type Config struct {
	// ID is this proxy's id. Its certificate must be of kind proxy, named
	// ID, of ClusterName. Required.
	ID string
	// ClusterName is the cluster whose proxies may peer. Required.
	ClusterName string
	// GetCertificate returns this proxy's certificate for connections peers
	// dial. It is called on every handshake, so a renewed certificate needs
	// no restart. Required.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// GetClientCertificate returns this proxy's certificate for connections
	// it dials (usually the same certificate). Required.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// RootCAs returns the cluster's TLS CA pool. It is read on every
	// handshake, both to verify peers that dial in (client auth) and peers
	// this proxy dials (server auth), so a CA rotation needs no restart.
	// Required.
	RootCAs func() *x509.CertPool
	// Handler connects dials that peers send to this proxy. Required.
	Handler Handler

	// DialTimeout bounds Dial (connection, stream and response) when its
	// context has no earlier deadline, and the Handler's dial on the holder.
	// Default 10s: the same as tunnel/server, so a holder's answer arrives
	// within the user's patience even across the world.
	DialTimeout time.Duration
	// RequestTimeout is how long an accepted stream may take to deliver its
	// DialRequest before it is reset (a slow-loris bound). Default 10s.
	RequestTimeout time.Duration
	// KeepAlivePeriod is how often an idle connection is pinged. Default 5s:
	// keeps NAT and firewall state alive and makes a dead peer show as an
	// idle timeout.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a connection after this long without a packet
	// from the peer. Default 15s: three missed keepalives, so a vanished
	// proxy is noticed in seconds, not QUIC's default 30s.
	MaxIdleTimeout time.Duration
	// MaxIncomingStreams is how many concurrent streams (dials) one peer may
	// have open to this proxy. Default 10000: each user session through a
	// peer is one stream, and quic-go's default of 100 would cap a busy
	// proxy pair at 100 sessions.
	MaxIncomingStreams int64
	// StreamReceiveWindow and ConnectionReceiveWindow cap QUIC flow control
	// for data from peers. Defaults 16 MiB and 64 MiB: tunnel/server measured
	// 16 MiB per stream best at a 20 ms round trip (the windows only grow
	// while the reader keeps up); a peer connection carries many sessions
	// at once, so its window is four streams' worth.
	StreamReceiveWindow     uint64
	ConnectionReceiveWindow uint64
	// StatelessResetKey, if set, lets this proxy answer packets for
	// connections it no longer knows (after a crash and restart on the same
	// port) with a stateless reset, so peers redial at once instead of after
	// MaxIdleTimeout. It must survive restarts: derive it from a persisted
	// secret.
	StatelessResetKey *[32]byte

	// Logger receives the mesh's logs. Default: slog.Default().
	Logger *slog.Logger
	// Metrics, if set, registers the mesh's metrics (a per-instance
	// registry, never the global one).
	Metrics prometheus.Registerer
	// Now is the clock for certificate validity. Default: time.Now.
	// Network deadlines always use the real clock.
	Now func() time.Time
}

// Defaults; see the Config fields.
const (
	DefaultDialTimeout             = 10 * time.Second
	DefaultRequestTimeout          = 10 * time.Second
	DefaultKeepAlivePeriod         = 5 * time.Second
	DefaultMaxIdleTimeout          = 15 * time.Second
	DefaultMaxIncomingStreams      = 10000
	DefaultStreamReceiveWindow     = 16 << 20
	DefaultConnectionReceiveWindow = 64 << 20
)

func (c *Config) checkAndSetDefaults() error {
	switch {
	case c.ID == "":
		return errors.New("mesh peer config: ID is required")
	case c.ClusterName == "":
		return errors.New("mesh peer config: ClusterName is required")
	case c.GetCertificate == nil:
		return errors.New("mesh peer config: GetCertificate is required")
	case c.GetClientCertificate == nil:
		return errors.New("mesh peer config: GetClientCertificate is required")
	case c.RootCAs == nil:
		return errors.New("mesh peer config: RootCAs is required")
	case c.Handler == nil:
		return errors.New("mesh peer config: Handler is required")
	}
	if err := identity.CheckName(c.ID); err != nil {
		return errors.New("mesh peer config: ID: " + err.Error())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.KeepAlivePeriod <= 0 {
		c.KeepAlivePeriod = DefaultKeepAlivePeriod
	}
	if c.MaxIdleTimeout <= 0 {
		c.MaxIdleTimeout = DefaultMaxIdleTimeout
	}
	if c.MaxIncomingStreams <= 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
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

// quicConfig is used both for connections peers dial and for those this
// proxy dials: either side may open streams on either.
func (c *Config) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       c.DialTimeout,
		MaxIdleTimeout:             c.MaxIdleTimeout,
		KeepAlivePeriod:            c.KeepAlivePeriod,
		MaxStreamReceiveWindow:     c.StreamReceiveWindow,
		MaxConnectionReceiveWindow: c.ConnectionReceiveWindow,
		MaxIncomingStreams:         c.MaxIncomingStreams,
		MaxIncomingUniStreams:      -1,
	}
}
