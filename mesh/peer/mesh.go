package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
)

// simultaneousWindow: a connection in the other direction that arrives
// within this time of the one already held is taken for a simultaneous dial
// (both proxies dialed before either saw the other's connection), and the
// one dialed by the lower id is kept, on both sides alike. Later, a new
// connection in either direction means the peer lost the old one (it
// restarted, or its side timed out first), and the newer one is kept.
const simultaneousWindow = 5 * time.Second

// Bounds of the grace a superseded connection gets before it is closed when
// it carries no stream: the peer may have opened a stream on it just before
// it learned which connection is kept. The grace is 8 round trips, within
// these bounds.
const (
	minRetireGrace = 200 * time.Millisecond
	maxRetireGrace = 5 * time.Second
)

// Mesh holds this proxy's QUIC connections to its peers: it accepts the
// connections peers dial (Serve), dials peers (Dial), and answers the dials
// peers send through its Handler. Create it with New.
type Mesh struct {
	cfg       Config
	log       *slog.Logger
	metrics   *metrics
	strays    *strays
	serverTLS *tls.Config
	quicConf  *quic.Config
	bufs      sync.Pool // *[]byte of copyBufSize, for piping streams

	// runCtx ends when the mesh stops accepting connections, streams and
	// dials (Shutdown or Close). serveCtx ends when live connections are
	// torn down (Close, the end of Shutdown, or Shutdown's ctx ending).
	runCtx      context.Context
	runCancel   context.CancelFunc
	serveCtx    context.Context
	serveCancel context.CancelFunc

	// wg counts every goroutine the mesh starts. Add is called either under
	// mu after checking runCtx, or by a goroutine wg already counts, so no
	// Add races the Wait in Close.
	wg sync.WaitGroup

	// serving is closed once Serve has made the transport Dial needs.
	serving chan struct{}

	mu      sync.Mutex // guards the following fields and peerConn's guarded fields
	tr      *quic.Transport
	peers   map[string]*peerConn   // the live connection to each peer, by verified id
	conns   map[*peerConn]struct{} // every running connection: live and superseded
	dialing map[string]*dialCall   // connection attempts in flight, by peer id
	// dialed holds, per peer id, the last few addresses a dial reached that
	// peer at (its certificate said so); see Mesh.reusableLocked.
	dialed      map[string][]netip.AddrPort
	openStreams int           // streams open on conns, what Shutdown waits for
	drainWake   chan struct{} // closed when openStreams or conns change during Shutdown
}

// peerConn is one QUIC connection to a peer that passed the handshake.
type peerConn struct {
	qc      *quic.Conn
	id      string // the peer's verified proxy id
	inbound bool   // the peer dialed it
	since   time.Time
	// ctx is the accept loop's; stop ends it, and the loop then closes the
	// connection with closeCode and closeMsg.
	ctx  context.Context
	stop context.CancelFunc

	// guarded by Mesh.mu
	live      bool // the connection new streams to this peer use
	retiring  bool // superseded: closes when its streams have ended
	streams   int
	closeCode quic.ApplicationErrorCode
	closeMsg  string
	grace     *time.Timer
}

func (c *peerConn) direction() string {
	if c.inbound {
		return "inbound"
	}
	return "outbound"
}

// PeerInfo describes the live connection to one peer.
type PeerInfo struct {
	ID string
	// Addr is the peer's UDP address ("ip:port"), as this proxy sees it.
	Addr string
	// RTT is QUIC's smoothed round-trip time estimate.
	RTT            time.Duration
	ConnectedSince time.Time
	// Streams counts the streams open on the connection, both directions.
	Streams int
	// Inbound is true when the peer dialed the connection.
	Inbound bool
}

// New checks cfg and returns a Mesh. Start it with Serve.
func New(cfg Config) (*Mesh, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("proxy", cfg.ID)
	m := &Mesh{
		cfg:      cfg,
		log:      log,
		metrics:  met,
		strays:   newStrays(log, met),
		quicConf: cfg.quicConfig(),
		serving:  make(chan struct{}),
		peers:    make(map[string]*peerConn),
		conns:    make(map[*peerConn]struct{}),
		dialing:  make(map[string]*dialCall),
		dialed:   make(map[string][]netip.AddrPort),
	}
	m.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	m.serverTLS = &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{ALPN},
		GetCertificate: cfg.GetCertificate,
		// RequestClientCert rather than RequireAnyClientCert: with the
		// latter, crypto/tls fails a certificate-less handshake before any
		// callback runs, so the proxy could not log who tried. The
		// certificate is required all the same, in verifyClient.
		ClientAuth: tls.RequestClientCert,
		// Every connection is verified against the current CA pool: no
		// resumption from a ticket issued under an older one.
		SessionTicketsDisabled: true,
	}
	m.serverTLS.GetConfigForClient = m.configForClient
	m.runCtx, m.runCancel = context.WithCancel(context.Background())
	m.serveCtx, m.serveCancel = context.WithCancel(context.Background())
	return m, nil
}

// Serve accepts peer connections on pc until Shutdown or Close, then returns
// ErrClosed. Connections this proxy dials leave from pc as well (one UDP
// socket per proxy, so a peer sees the same address both ways), so Dial
// waits for Serve to start. Serve may be called once. It does not close pc;
// close it after Serve returns and Shutdown or Close is done.
func (m *Mesh) Serve(pc net.PacketConn) error {
	tr := &quic.Transport{Conn: pc, Tracer: m.strays.recorder()}
	if m.cfg.StatelessResetKey != nil {
		k := quic.StatelessResetKey(*m.cfg.StatelessResetKey)
		tr.StatelessResetKey = &k
	}
	m.mu.Lock()
	if m.runCtx.Err() != nil {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.tr != nil {
		m.mu.Unlock()
		return fmt.Errorf("serve peers on %s: Serve was already called (one socket per proxy)", pc.LocalAddr())
	}
	ln, err := tr.Listen(m.serverTLS, m.quicConf)
	if err != nil {
		m.mu.Unlock()
		tr.Close()
		return fmt.Errorf("listen for peers on %s: %w", pc.LocalAddr(), err)
	}
	m.tr = tr
	close(m.serving)
	m.wg.Add(2)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		m.strays.readNonQUIC(m.serveCtx, tr)
	}()
	defer m.wg.Done()
	defer ln.Close()

	m.log.Info("accepting peer connections", "addr", pc.LocalAddr().String())
	for {
		qc, err := ln.Accept(m.runCtx)
		if err != nil {
			if m.runCtx.Err() != nil {
				return ErrClosed
			}
			return fmt.Errorf("accept peer connections on %s: %w", pc.LocalAddr(), err)
		}
		m.mu.Lock()
		if m.runCtx.Err() != nil {
			m.mu.Unlock()
			m.metrics.handshakeFailures.WithLabelValues(reasonShutdown).Inc()
			qc.CloseWithError(closeShutdown, m.shutdownReason())
			return ErrClosed
		}
		m.wg.Add(1)
		m.mu.Unlock()
		go m.handleInbound(qc)
	}
}

func (m *Mesh) shutdownReason() string {
	return fmt.Sprintf("proxy %s is shutting down", m.cfg.ID)
}

// configForClient gives each handshake its own VerifyConnection that knows
// the remote address, so that a refusal can be logged with it (quic-go
// fills ClientHelloInfo.Conn with the connection's addresses), and logs a
// client that does not speak ALPN before crypto/tls refuses it.
func (m *Mesh) configForClient(hi *tls.ClientHelloInfo) (*tls.Config, error) {
	var remote net.Addr
	if hi.Conn != nil {
		remote = hi.Conn.RemoteAddr()
	}
	if !slices.Contains(hi.SupportedProtos, ALPN) {
		// crypto/tls answers with a no_application_protocol alert.
		m.tlsRefusal(remote, reasonALPN, fmt.Sprintf("client offered application protocols %q, not %q: not a Jumpgate proxy, or a client at the wrong port", hi.SupportedProtos, ALPN))
	}
	c := m.serverTLS.Clone()
	c.GetConfigForClient = nil
	c.VerifyConnection = func(cs tls.ConnectionState) error { return m.verifyClient(cs, remote) }
	return c, nil
}

// verifyClient checks the dialing peer's chain against the current CA pool.
// Who the certificate names is checked after the handshake (checkPeer),
// where the refusal can carry a reason to the peer.
func (m *Mesh) verifyClient(cs tls.ConnectionState, remote net.Addr) error {
	if len(cs.PeerCertificates) == 0 {
		return m.tlsRefusal(remote, reasonNoCert, "no client certificate: a peer must present its proxy certificate from the cluster's TLS CA")
	}
	leaf := cs.PeerCertificates[0]
	if err := m.verifyChain(cs.PeerCertificates, x509.ExtKeyUsageClientAuth); err != nil {
		return m.tlsRefusal(remote, reasonUntrusted, fmt.Sprintf("client certificate %q is not trusted: %v", leaf.Subject.CommonName, err))
	}
	return nil
}

// verifyChain verifies a peer's chain against RootCAs for usage.
func (m *Mesh) verifyChain(chain []*x509.Certificate, usage x509.ExtKeyUsage) error {
	roots := m.cfg.RootCAs()
	if roots == nil {
		// x509 would fall back to the system roots: never between proxies.
		return errors.New("this proxy has no trusted TLS CA configured")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   m.cfg.Now(),
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	return err
}

func (m *Mesh) tlsRefusal(remote net.Addr, reason, msg string) error {
	m.metrics.handshakeFailures.WithLabelValues(reason).Inc()
	m.log.Warn("refused peer handshake", "remote", addrString(remote), "reason", msg)
	return errors.New(msg)
}

func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return a.String()
}

// checkPeer reads the verified certificate's identity and requires another
// proxy of this cluster. It returns a metric reason and a message for the
// peer's operator, or two empty strings.
func (m *Mesh) checkPeer(cs tls.ConnectionState) (identity.Identity, string, string) {
	if len(cs.PeerCertificates) == 0 {
		// verifyClient refused this handshake already; be safe anyway.
		return identity.Identity{}, reasonNoCert, "no client certificate"
	}
	id, err := identity.FromX509(cs.PeerCertificates[0])
	switch {
	case err != nil:
		return id, reasonBadIdentity, err.Error()
	case id.Kind != identity.KindProxy:
		return id, reasonWrongKind, fmt.Sprintf("certificate is for %s, of kind %s: peering needs a proxy certificate", id, id.Kind)
	case id.Cluster != m.cfg.ClusterName:
		return id, reasonWrongCluster, fmt.Sprintf("certificate is for cluster %q, proxy %s is in cluster %q", id.Cluster, m.cfg.ID, m.cfg.ClusterName)
	case id.Name == m.cfg.ID:
		return id, reasonSelf, fmt.Sprintf("certificate names proxy %s, this proxy's own id: two proxies share an id, or a proxy dialed itself", id.Name)
	}
	return id, "", ""
}

// handleInbound checks a connection a peer dialed and runs it.
func (m *Mesh) handleInbound(qc *quic.Conn) {
	defer m.wg.Done()
	remote := qc.RemoteAddr()
	id, reason, msg := m.checkPeer(qc.ConnectionState().TLS)
	if reason != "" {
		m.metrics.handshakeFailures.WithLabelValues(reason).Inc()
		attrs := []any{"remote", remote.String(), "reason", msg}
		if id.Name != "" {
			attrs = append(attrs, "cert", id.String())
		}
		m.log.Warn("refused peer connection", attrs...)
		qc.CloseWithError(closeRefused, msg)
		return
	}
	c, _, ok := m.register(qc, id.Name, true)
	if !ok {
		m.metrics.handshakeFailures.WithLabelValues(reasonShutdown).Inc()
		qc.CloseWithError(closeShutdown, m.shutdownReason())
		return
	}
	m.runConn(c)
}

// register adds a connection that passed the handshake and decides which
// connection to the peer new streams use: normally the newest, but of two
// made by a simultaneous dial, the one dialed by the lower id. The loser
// stays open for the streams it carries and is closed when they end. It
// returns the new peerConn (to be run with runConn whether it won or not)
// and the live connection to the peer; ok is false when the mesh is
// shutting down.
func (m *Mesh) register(qc *quic.Conn, id string, inbound bool) (c, live *peerConn, ok bool) {
	ctx, stop := context.WithCancel(m.serveCtx)
	c = &peerConn{qc: qc, id: id, inbound: inbound, since: time.Now(), ctx: ctx, stop: stop}
	m.mu.Lock()
	if m.runCtx.Err() != nil {
		m.mu.Unlock()
		stop()
		return nil, nil, false
	}
	m.conns[c] = struct{}{}
	old := m.peers[id]
	keepNew, why := true, ""
	if old != nil && old.qc.Context().Err() == nil {
		keepNew, why = m.prefer(c, old)
	}
	retired := old
	if keepNew {
		if old != nil {
			old.live = false
		}
		c.live = true
		m.peers[id] = c
	} else {
		retired = c
	}
	if retired != nil && retired.qc.Context().Err() == nil {
		m.retireLocked(retired, why)
	}
	live = m.peers[id]
	m.metrics.connectedPeers.Set(float64(len(m.peers)))
	m.metrics.connections.WithLabelValues(c.direction()).Inc()
	m.wakeDrainLocked()
	m.mu.Unlock()

	m.log.Info("peer connected", "peer", id, "remote", qc.RemoteAddr().String(), "direction", c.direction())
	if retired != nil && why != "" {
		m.log.Info("superseded peer connection will close when its streams end", "peer", id, "remote", retired.qc.RemoteAddr().String(), "direction", retired.direction(), "reason", why)
	}
	return c, live, true
}

// prefer decides between a new connection and the live one to the same
// peer. Both sides of a pair decide alike (see simultaneousWindow).
func (m *Mesh) prefer(c, old *peerConn) (keepNew bool, why string) {
	if c.inbound == old.inbound || time.Since(old.since) >= simultaneousWindow {
		return true, fmt.Sprintf("replaced by a newer connection between proxies %s and %s", m.cfg.ID, c.id)
	}
	dialer := func(p *peerConn) string {
		if p.inbound {
			return p.id
		}
		return m.cfg.ID
	}
	keep := c
	if dialer(old) < dialer(c) {
		keep = old
	}
	return keep == c, fmt.Sprintf("duplicate connection between proxies %s and %s: keeping the one dialed by %s", m.cfg.ID, c.id, dialer(keep))
}

// retireLocked marks c superseded. It closes once its streams have ended
// and a short grace has passed, so that a stream the peer opened on it just
// before it learned which connection is kept still gets served.
func (m *Mesh) retireLocked(c *peerConn, why string) {
	if c.retiring {
		return
	}
	c.live = false
	c.retiring = true
	c.closeCode, c.closeMsg = closeDuplicate, why
	grace := min(max(8*c.qc.ConnectionStats().SmoothedRTT, minRetireGrace), maxRetireGrace)
	c.grace = time.AfterFunc(grace, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		c.grace = nil
		if c.streams == 0 {
			c.stop()
		}
	})
}

// runConn accepts the streams the peer opens on c until the connection
// ends, or until c is stopped, and then closes it.
//
// There is no reader/writer loop pair per connection, as the style guide
// suggests: the connection carries no messages of its own, each stream has
// its own goroutine, and stopping the accept loop closes the connection.
func (m *Mesh) runConn(c *peerConn) {
	var err error
	for {
		st, aerr := c.qc.AcceptStream(c.ctx)
		if aerr != nil {
			err = aerr
			break
		}
		m.mu.Lock()
		m.addStreamLocked(c)
		m.mu.Unlock()
		m.wg.Add(1) // runConn's own goroutine is counted: no race with Wait
		go m.handleStream(c, st)
	}
	if c.qc.Context().Err() == nil {
		m.mu.Lock()
		code, msg := c.closeCode, c.closeMsg
		m.mu.Unlock()
		if msg == "" {
			code, msg = closeShutdown, m.shutdownReason()
		}
		c.qc.CloseWithError(code, msg)
		err = fmt.Errorf("closed here: %s", msg)
	} else if cause := context.Cause(c.qc.Context()); cause != nil {
		err = cause
	}
	c.stop()
	m.unregister(c)
	m.log.Info("peer disconnected", "peer", c.id, "remote", c.qc.RemoteAddr().String(), "direction", c.direction(), "err", err)
}

// unregister forgets c; its streams no longer count for Shutdown (they died
// with it).
func (m *Mesh) unregister(c *peerConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.conns[c]; !ok {
		return
	}
	delete(m.conns, c)
	m.openStreams -= c.streams
	m.metrics.openStreams.Set(float64(m.openStreams))
	if c.grace != nil {
		c.grace.Stop()
		c.grace = nil
	}
	c.live = false
	if m.peers[c.id] == c {
		delete(m.peers, c.id)
	}
	m.metrics.connectedPeers.Set(float64(len(m.peers)))
	m.wakeDrainLocked()
}

// addStreamLocked counts a stream opened on c.
func (m *Mesh) addStreamLocked(c *peerConn) {
	c.streams++
	m.openStreams++
	m.metrics.openStreams.Set(float64(m.openStreams))
}

// releaseStream uncounts a stream of c and closes c if it is superseded and
// idle after its grace.
func (m *Mesh) releaseStream(c *peerConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.conns[c]; !ok {
		return
	}
	c.streams--
	m.openStreams--
	m.metrics.openStreams.Set(float64(m.openStreams))
	if c.retiring && c.streams == 0 && c.grace == nil {
		c.stop()
	}
	m.wakeDrainLocked()
}

func (m *Mesh) wakeDrainLocked() {
	if m.drainWake != nil {
		close(m.drainWake)
		m.drainWake = nil
	}
}

// RTT returns QUIC's smoothed round-trip time on the live connection to
// peerID, and false if there is none.
func (m *Mesh) RTT(peerID string) (time.Duration, bool) {
	m.mu.Lock()
	c := m.peers[peerID]
	m.mu.Unlock()
	if c == nil || c.qc.Context().Err() != nil {
		return 0, false
	}
	return c.qc.ConnectionStats().SmoothedRTT, true
}

// Peers lists the live connection to each peer, sorted by id. (A connection
// superseded by another to the same peer is not listed while it drains.)
func (m *Mesh) Peers() []PeerInfo {
	m.mu.Lock()
	out := make([]PeerInfo, 0, len(m.peers))
	conns := make([]*quic.Conn, 0, len(m.peers))
	for _, c := range m.peers {
		out = append(out, PeerInfo{
			ID:             c.id,
			Addr:           c.qc.RemoteAddr().String(),
			ConnectedSince: c.since,
			Streams:        c.streams,
			Inbound:        c.inbound,
		})
		conns = append(conns, c.qc)
	}
	m.mu.Unlock()
	for i, qc := range conns {
		out[i].RTT = qc.ConnectionStats().SmoothedRTT
	}
	slices.SortFunc(out, func(a, b PeerInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Shutdown stops accepting connections and dials, both ways (peers' dials
// are answered CodeUnavailable), waits until every stream has ended, then
// closes the connections. If ctx ends first, it closes everything at once
// and returns ctx's error. It waits for all of the mesh's goroutines.
func (m *Mesh) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.runCancel()
	m.mu.Unlock()
	stop := context.AfterFunc(ctx, m.serveCancel)
	defer stop()
	err := m.waitDrained(ctx)
	return errors.Join(err, m.Close())
}

// Close closes every connection and stream at once and waits for the mesh's
// goroutines. It does not close the PacketConn given to Serve.
func (m *Mesh) Close() error {
	m.mu.Lock()
	m.runCancel()
	m.mu.Unlock()
	m.serveCancel()
	m.wg.Wait()
	m.mu.Lock()
	tr := m.tr
	m.tr = nil
	m.mu.Unlock()
	if tr != nil {
		tr.Close()
	}
	return nil
}

// waitDrained waits until no stream is open.
func (m *Mesh) waitDrained(ctx context.Context) error {
	for logged := false; ; logged = true {
		m.mu.Lock()
		open := m.openStreams
		if open == 0 {
			m.mu.Unlock()
			return nil
		}
		wake := make(chan struct{})
		m.drainWake = wake
		m.mu.Unlock()
		if !logged {
			m.log.Info("shutting down: waiting for peer streams to end", "open", open)
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("shut down peer mesh of proxy %s with %d streams still open: %w", m.cfg.ID, open, ctx.Err())
		}
	}
}

// DropPeer closes every connection to peer id at once, open streams
// included, and returns how many it closed. cmd/ calls it when gossip
// declares the peer dead: a proxy killed without a word leaves its QUIC
// connections to be noticed only at the idle timeout, and the sessions
// running through them would stall that long; closed now, their clients
// move on at once.
func (m *Mesh) DropPeer(id, reason string) int {
	m.mu.Lock()
	var drop []*peerConn
	for c := range m.conns {
		if c.id == id {
			c.live = false
			c.closeCode, c.closeMsg = closeNormal, reason
			drop = append(drop, c)
		}
	}
	m.mu.Unlock()
	for _, c := range drop {
		c.qc.CloseWithError(quic.ApplicationErrorCode(closeNormal), reason)
	}
	if len(drop) > 0 {
		m.log.Info("dropped the connections to a dead peer", "peer", id, "connections", len(drop), "reason", reason)
	}
	return len(drop)
}
