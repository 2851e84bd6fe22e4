package realip

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures Listen.
type Config struct {
	// Trusted lists the load balancers allowed to send PROXY headers. Only
	// a connection whose socket peer is inside one of these prefixes has
	// its header read; from anyone else the first bytes are payload. Empty:
	// nobody is trusted, and every connection keeps its socket address.
	Trusted []netip.Prefix
	// Required marks the listener as sitting behind a load balancer: a
	// connection from a trusted peer without a header is refused (its Read
	// returns an error naming the load balancer). Connections from
	// untrusted peers are served with their socket address either way.
	Required bool
	// HeaderTimeout bounds how long a trusted peer may take to deliver its
	// header, counted from the connection's first Read or RemoteAddr.
	// Default 5s: a load balancer sends the header with its first packet.
	HeaderTimeout time.Duration
	// Logger receives warnings about refused headers and spoofing attempts.
	// Default: discard.
	Logger *slog.Logger
	// Metrics, if set, registers jumpgate_proxy_protocol_headers_total (a
	// per-instance registry, never the global one). Several listeners may
	// share one registry: they share the counter.
	Metrics prometheus.Registerer
}

// DefaultHeaderTimeout is Config.HeaderTimeout's default.
const DefaultHeaderTimeout = 5 * time.Second

func (c *Config) checkAndSetDefaults() error {
	for i, p := range c.Trusted {
		if !p.IsValid() {
			return fmt.Errorf("realip: Config.Trusted[%d] is not a valid prefix (write it as 10.0.0.0/8 or 2001:db8::/32)", i)
		}
	}
	if c.Required && len(c.Trusted) == 0 {
		return errors.New("realip: Config.Required is set but Config.Trusted is empty: list the load balancers' addresses in Trusted")
	}
	if c.HeaderTimeout < 0 {
		return fmt.Errorf("realip: Config.HeaderTimeout is negative (%v)", c.HeaderTimeout)
	}
	if c.HeaderTimeout == 0 {
		c.HeaderTimeout = DefaultHeaderTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	// A copy, so that the caller reusing its slice cannot race with Accept.
	c.Trusted = slices.Clone(c.Trusted)
	return nil
}

// Results counted in jumpgate_proxy_protocol_headers_total.
const (
	resultOK        = "ok"        // a trusted peer's header carried the client's address
	resultLocal     = "local"     // a LOCAL header, or one without IP addresses: socket address kept
	resultMissing   = "missing"   // a trusted peer sent no header (refused if Required)
	resultUntrusted = "untrusted" // an untrusted peer's first bytes were a PROXY signature: ignored
	resultInvalid   = "invalid"   // a trusted peer's header was malformed, cut short or too slow: refused
)

type metrics struct {
	ok, local, missing, untrusted, invalid prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	headers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jumpgate_proxy_protocol_headers_total",
		Help: "Connections by what their PROXY protocol header gave: ok (client address from a trusted load balancer), local (LOCAL or no IP address: socket address kept), missing (a trusted peer sent none; refused if the listener requires one), untrusted (a PROXY signature from an untrusted peer: ignored, a spoofing attempt), invalid (malformed, cut short or too slow: refused).",
	}, []string{"result"})
	if reg != nil {
		if err := reg.Register(headers); err != nil {
			// Another listener of this process registered it first: share it.
			are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
			if !ok {
				return nil, fmt.Errorf("realip: registering metrics: %w", err)
			}
			if headers, ok = are.ExistingCollector.(*prometheus.CounterVec); !ok {
				return nil, fmt.Errorf("realip: registering metrics: %w", err)
			}
		}
	}
	return &metrics{
		ok:        headers.WithLabelValues(resultOK),
		local:     headers.WithLabelValues(resultLocal),
		missing:   headers.WithLabelValues(resultMissing),
		untrusted: headers.WithLabelValues(resultUntrusted),
		invalid:   headers.WithLabelValues(resultInvalid),
	}, nil
}

// Listen wraps inner so that the conns it accepts report the client's
// address from a trusted peer's PROXY header as RemoteAddr. Accept itself
// reads nothing: the header is read on the conn's first Read or RemoteAddr
// call, so a slow client stalls only its own connection.
func Listen(inner net.Listener, cfg Config) (net.Listener, error) {
	if inner == nil {
		return nil, errors.New("realip: Listen: inner listener is nil")
	}
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	return &listener{Listener: inner, cfg: cfg, metrics: m}, nil
}

type listener struct {
	net.Listener
	cfg     Config
	metrics *metrics
}

var _ net.Listener = (*listener)(nil)

// Accept returns the next connection, wrapped. It never reads from it.
func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	peer, _ := addrPortOf(c.RemoteAddr())
	return &conn{Conn: c, l: l, peer: peer, trusted: peer.IsValid() && containsAddr(l.cfg.Trusted, peer.Addr())}, nil
}

// containsAddr reports whether a is in one of prefixes, ignoring a's zone
// (a link-local load balancer). An IPv4-mapped
// prefix (::ffff:10.0.0.0/104) matches the IPv4 addresses it maps, since
// addresses are compared unmapped.
func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap().WithZone("") // prefixes have no zones; Contains refuses zoned addresses
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
		if pa := p.Addr(); pa.Is4In6() && p.Bits() >= 96 && a.Is4() {
			if q, err := pa.Unmap().Prefix(p.Bits() - 96); err == nil && q.Contains(a) {
				return true
			}
		}
	}
	return false
}

// addrPortOf returns a's IP address and port, unmapped, or false when a is
// not an IP address (a Unix socket, a pipe).
func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case nil:
		return netip.AddrPort{}, false
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return netip.AddrPort{}, false
		}
	}
	if !ap.Addr().IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// conn is an accepted connection. From an untrusted peer it passes
// everything through, glancing at the first Read's bytes for a PROXY
// signature. From a trusted peer it reads the header once, on the first
// Read or RemoteAddr, then serves the bytes buffered past it before reading
// the socket again.
type conn struct {
	net.Conn
	l       *listener
	peer    netip.AddrPort // the socket's peer, unmapped; zero if not IP
	trusted bool

	glanced atomic.Bool // untrusted: the first Read's bytes were checked

	once sync.Once     // trusted: reads the header
	done atomic.Bool   // set when once has run: client and err are final
	br   *bufio.Reader // holds the bytes read past the header
	// Set by once; read-only after.
	client   net.Addr       // RemoteAddr: the header's source, or the socket's peer
	clientAP netip.AddrPort // the same, for FromConn
	clientOK bool           // the header succeeded or was optional and absent
	err      error          // why the connection was refused: every Read and Write returns it

	mu           sync.Mutex // guards following
	readDeadline time.Time  // the caller's, restored after the header read
}

// brSize is the header reader's buffer: room for a v1 line and any v2
// header a real load balancer sends (addresses plus a few TLVs), which are
// then parsed in place. Larger headers (up to MaxV2Length) still work.
const brSize = 512

func (c *conn) Read(p []byte) (int, error) {
	if !c.trusted {
		n, err := c.Conn.Read(p)
		if n > 0 && c.glanced.CompareAndSwap(false, true) {
			c.glance(p[:n])
		}
		return n, err
	}
	c.once.Do(c.readHeader)
	if c.err != nil {
		return 0, c.err
	}
	if c.br.Buffered() > 0 {
		return c.br.Read(p)
	}
	return c.Conn.Read(p)
}

// glance logs a PROXY signature at the start of an untrusted peer's first
// Read. It costs one comparison: it looks only at bytes the caller asked
// for anyway, and never waits for more (a signature split across reads goes
// unnoticed, which a real load balancer never does).
func (c *conn) glance(b []byte) {
	v := 0
	switch {
	case bytes.HasPrefix(b, sigV2):
		v = 2
	case bytes.HasPrefix(b, sigV1):
		v = 1
	default:
		return
	}
	c.l.metrics.untrusted.Inc()
	c.l.cfg.Logger.Warn("PROXY protocol header from an untrusted peer: ignored", "remote", c.Conn.RemoteAddr().String(), "version", v)
}

func (c *conn) Write(p []byte) (int, error) {
	if c.done.Load() && c.err != nil {
		return 0, c.err
	}
	return c.Conn.Write(p)
}

// RemoteAddr is the client's address: from a trusted peer's header (it
// waits for the header, at most HeaderTimeout), else the socket's peer.
func (c *conn) RemoteAddr() net.Addr {
	if !c.trusted {
		return c.Conn.RemoteAddr()
	}
	c.once.Do(c.readHeader)
	return c.client
}

// SetReadDeadline records the caller's deadline, so that the header read,
// which sets its own, restores it afterwards.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline records the read half like SetReadDeadline.
func (c *conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return c.Conn.SetDeadline(t)
}

// CloseWrite half-closes the connection when the socket supports it (TCP
// does), so that code forwarding half-closes keeps working through the
// wrapper.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("realip: %T cannot half-close", c.Conn)
}

func (c *conn) readHeader() {
	defer c.done.Store(true)
	c.client, c.clientAP = c.Conn.RemoteAddr(), c.peer
	c.br = bufio.NewReaderSize(c.Conn, brSize)

	deadline := time.Now().Add(c.l.cfg.HeaderTimeout)
	c.mu.Lock()
	if t := c.readDeadline; !t.IsZero() && t.Before(deadline) {
		deadline = t
	}
	dlErr := c.Conn.SetReadDeadline(deadline)
	c.mu.Unlock()
	if dlErr != nil {
		c.fail(fmt.Errorf("realip: reading the PROXY header from %s: setting the %v deadline: %w", c.peer, c.l.cfg.HeaderTimeout, dlErr), false)
		return
	}

	h, err := ReadHeader(c.br)

	c.mu.Lock()
	dlErr = c.Conn.SetReadDeadline(c.readDeadline)
	c.mu.Unlock()
	if err == nil && dlErr != nil {
		err = fmt.Errorf("realip: restoring the read deadline after the PROXY header: %w", dlErr)
	}

	log := c.l.cfg.Logger
	switch {
	case err == nil && (h.Command == "local" || !h.Source.IsValid()):
		c.clientOK = true
		c.l.metrics.local.Inc()
		log.Debug("PROXY protocol header without a client address: keeping the socket's", "remote", c.peer.String(), "version", h.Version, "command", h.Command, "family", h.Family)
	case err == nil:
		c.client, c.clientAP, c.clientOK = net.TCPAddrFromAddrPort(h.Source), h.Source, true
		c.l.metrics.ok.Inc()
	case errors.Is(err, net.ErrClosed):
		// Closed locally while waiting: not the peer's doing.
		c.err = err
	case errors.Is(err, ErrNoHeader) && errors.Is(err, io.EOF):
		// Connected and closed without a byte (a TCP health check):
		// nothing to refuse, and Read returns io.EOF.
		c.clientOK = true
		c.l.metrics.missing.Inc()
		log.Debug("connection from a trusted load balancer closed before sending anything", "remote", c.peer.String())
	case errors.Is(err, ErrNoHeader):
		c.l.metrics.missing.Inc()
		timedOut := errors.Is(err, os.ErrDeadlineExceeded)
		if !c.l.cfg.Required {
			c.clientOK = true
			log.Debug("no PROXY protocol header from a trusted peer: keeping the socket's address", "remote", c.peer.String(), "timed_out", timedOut)
			return
		}
		within := ""
		if timedOut {
			within = fmt.Sprintf(" within %v", c.l.cfg.HeaderTimeout)
		}
		c.fail(fmt.Errorf("%w%s from load balancer %s, and this listener requires one: make the load balancer send PROXY protocol v1 or v2, or unset Required", ErrNoHeader, within, c.peer), true)
	default:
		c.l.metrics.invalid.Inc()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The cause is a net.OpError naming both sockets: say it plainly.
			c.fail(&wrapError{msg: fmt.Sprintf("realip: the PROXY header from load balancer %s did not arrive in full within %v: connection closed", c.peer, c.l.cfg.HeaderTimeout), err: err}, true)
			return
		}
		c.fail(fmt.Errorf("%w (from load balancer %s; connection closed)", err, c.peer), true)
	}
}

// wrapError is an error with its own message that still matches its cause
// (errors.Is(err, os.ErrDeadlineExceeded)).
type wrapError struct {
	msg string
	err error
}

func (e *wrapError) Error() string { return e.msg }
func (e *wrapError) Unwrap() error { return e.err }

// fail refuses the connection: it records err for every Read and Write,
// logs it and closes the socket.
func (c *conn) fail(err error, log bool) {
	c.err = err
	if log {
		c.l.cfg.Logger.Warn("PROXY protocol header refused: connection closed", "remote", c.peer.String(), "err", err)
		if w, ok := err.(*wrapError); ok {
			c.l.cfg.Logger.Debug("PROXY protocol header refused: cause", "remote", c.peer.String(), "err", w.err)
		}
	}
	c.Conn.Close()
}

// FromConn returns the real client address of c: the PROXY header's source
// when c was accepted by a Listen listener from a trusted peer, else c's
// socket peer. It unwraps connections that expose the one beneath them
// through NetConn() (*tls.Conn does), so it works on a TLS server's
// connections. ok is false when the address is not an IP address (a Unix
// socket, a pipe) or the trusted peer's header was refused; the address is
// then the socket peer's, if any. On a trusted connection it may wait for the
// header, like RemoteAddr.
func FromConn(c net.Conn) (addr netip.AddrPort, ok bool) {
	for range 16 { // a bound, against a NetConn that returns its receiver
		switch x := c.(type) {
		case nil:
			return netip.AddrPort{}, false
		case *conn:
			if !x.trusted {
				return x.peer, x.peer.IsValid()
			}
			x.once.Do(x.readHeader)
			return x.clientAP, x.clientOK && x.clientAP.IsValid()
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return addrPortOf(c.RemoteAddr())
		}
	}
	return addrPortOf(c.RemoteAddr())
}
