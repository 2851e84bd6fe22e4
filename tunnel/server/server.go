package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/internal/transport"
	"jumpgate.dev/jumpgate/tunnel/proto"
)

// TunnelEventType says what happened to a node's tunnels.
type TunnelEventType int

const (
	// TunnelUp: a tunnel from the node registered; the node is reachable
	// through this proxy. Sent for every tunnel, including one that
	// replaces an older tunnel of the same node.
	TunnelUp TunnelEventType = iota + 1
	// TunnelDown: the node's last tunnel to this proxy ended.
	TunnelDown
)

func (t TunnelEventType) String() string {
	switch t {
	case TunnelUp:
		return "up"
	case TunnelDown:
		return "down"
	}
	return fmt.Sprintf("TunnelEventType(%d)", int(t))
}

// TunnelEvent is passed to Config.OnTunnel.
type TunnelEvent struct {
	Type TunnelEventType
	Node NodeInfo
	Time time.Time
	// Err says why the tunnel ended (TunnelDown only).
	Err error
}

// NodeInfo describes a node connected to this proxy.
type NodeInfo struct {
	ID     string
	Labels map[string]string
	// RemoteAddr is the agent's address as the proxy sees it (after NAT):
	// UDP for QUIC, TCP for the TCP transport.
	RemoteAddr net.Addr
	// Transport carries the tunnel serving dials: "quic", or "tcp" (TLS
	// over TCP, for agents whose network blocks UDP).
	Transport string
	// ConnectedSince is when the tunnel serving dials registered.
	ConnectedSince  time.Time
	AgentVersion    string
	ProtocolVersion int
	// Tunnels counts the node's tunnels to this proxy: normally 1, 2 when
	// one agent reaches this proxy through two addresses.
	Tunnels int
	// DiagAddr is where the node serves /metrics, as it said in its Hello,
	// with a wildcard host replaced by the agent's address; "" if it did
	// not say.
	DiagAddr string
}

// Server accepts reverse tunnels from node agents and dials nodes through
// them. Create it with New.
type Server struct {
	cfg      Config
	log      *slog.Logger
	metrics  *metrics
	tlsConf  *tls.Config
	quicConf *quic.Config
	muxConf  transport.MuxConfig

	// runCtx ends when the server stops accepting tunnels and dials
	// (Shutdown or Close). serveCtx ends when live tunnels are torn down
	// (Close, the end of Shutdown, or Shutdown's context expiring).
	runCtx      context.Context
	runCancel   context.CancelFunc
	serveCtx    context.Context
	serveCancel context.CancelFunc

	// wg counts Serve loops and connection handlers. Add is called under mu
	// after checking runCtx, so no Add races a Wait that follows runCancel.
	wg sync.WaitGroup

	// eventMu serializes registry changes with their OnTunnel calls, so
	// events arrive in the order the registry changed. Lock order: eventMu,
	// then mu.
	eventMu sync.Mutex

	mu         sync.Mutex // guards the following fields
	nodes      map[string][]*tunnel
	transports []*quic.Transport
	drainWake  chan struct{} // closed when a stream or tunnel ends during Shutdown
	draining   bool          // Drain was called: new tunnels are refused
}

// tunnel is one connection from an agent that passed the handshake.
type tunnel struct {
	conn     transport.Conn
	info     NodeInfo // Tunnels is filled in by Nodes
	instance string
	slot     string
	version  int

	// guarded by Server.mu
	live      bool               // registered and serving dials
	streams   int                // dialed conns not yet closed
	drainSent bool               // a Drain message was sent on it
	conns     map[*conn]struct{} // the dialed conns not yet closed (CloseStreams)
}

// New checks cfg and returns a Server. Start it with Serve.
func New(cfg Config) (*Server, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("proxy", cfg.ProxyID),
		metrics:  m,
		quicConf: cfg.tuning().QUIC(),
		nodes:    make(map[string][]*tunnel),
	}
	s.muxConf = cfg.tuning().Mux(s.log)
	s.tlsConf = cfg.tlsConfig()
	s.tlsConf.GetConfigForClient = s.configForClient
	s.runCtx, s.runCancel = context.WithCancel(context.Background())
	s.serveCtx, s.serveCancel = context.WithCancel(context.Background())
	return s, nil
}

// Serve accepts tunnels on pc until Shutdown or Close, then returns
// ErrServerClosed. It may be called for several PacketConns. It does not
// close pc; close it after Serve returns and Shutdown or Close is done.
func (s *Server) Serve(pc net.PacketConn) error {
	tr := &quic.Transport{Conn: pc}
	if s.cfg.StatelessResetKey != nil {
		k := quic.StatelessResetKey(*s.cfg.StatelessResetKey)
		tr.StatelessResetKey = &k
	}
	s.mu.Lock()
	if s.runCtx.Err() != nil {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.transports = append(s.transports, tr)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ln, err := tr.Listen(s.tlsConf, s.quicConf)
	if err != nil {
		return fmt.Errorf("listen for tunnels on %s: %w", pc.LocalAddr(), err)
	}
	defer ln.Close()
	s.log.Info("accepting tunnels", "addr", pc.LocalAddr())
	for {
		qc, err := ln.Accept(s.runCtx)
		if err != nil {
			if s.runCtx.Err() != nil {
				return ErrServerClosed
			}
			return fmt.Errorf("accept tunnels on %s: %w", pc.LocalAddr(), err)
		}
		s.mu.Lock()
		if s.runCtx.Err() != nil {
			s.mu.Unlock()
			qc.CloseWithError(quic.ApplicationErrorCode(proto.CloseShutdown), s.shutdownReason())
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handleConn(transport.NewQUIC(qc))
		}()
	}
}

// HandleTLS serves tc, a TLS connection whose handshake negotiated ALPN
// proto.ALPN, as a tunnel over TCP (yamux; see "Transports" in
// tunnel/proto). mesh/ingress, which owns the proxy's TCP port, hands such
// connections here. It returns at once: the server owns tc from then on,
// closes it when the tunnel ends, and Shutdown and Close treat the tunnel
// like one over QUIC.
//
// The listener may have verified a client certificate or not (ingress
// accepts connections without one, for its HTTPS API): the server checks
// the chain against ClientCAs itself and refuses, with a HelloAck saying
// why, anything but a node certificate of this cluster.
func (s *Server) HandleTLS(tc *tls.Conn) {
	s.mu.Lock()
	if s.runCtx.Err() != nil {
		s.mu.Unlock()
		tc.NetConn().Close()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.handleTLS(tc)
	}()
}

// handleTLS sets up the yamux session of a tunnel over TCP, then serves it
// as handleConn does.
func (s *Server) handleTLS(tc *tls.Conn) {
	remote := tc.RemoteAddr()
	log := s.log.With("remote", remote.String(), "transport", transport.TCP)
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete || cs.Version < tls.VersionTLS13 || cs.NegotiatedProtocol != proto.ALPN {
		s.metrics.handshakeFailures.WithLabelValues(reasonBadTransport, transport.TCP).Inc()
		log.Warn("refused tunnel: the listener handed over a connection that did not negotiate TLS 1.3 and "+proto.ALPN, "alpn", cs.NegotiatedProtocol)
		tc.NetConn().Close()
		return
	}
	ctx, cancel := context.WithTimeout(s.serveCtx, s.cfg.HandshakeTimeout)
	defer cancel()
	mc := s.muxConf
	mc.Logger = log
	tun, err := transport.NewMuxServer(ctx, tc, mc)
	if err != nil {
		switch {
		case s.serveCtx.Err() != nil:
			log.Debug("tunnel closed during setup: the proxy is shutting down", "err", err)
		case errors.Is(err, context.DeadlineExceeded):
			s.metrics.handshakeFailures.WithLabelValues(reasonHelloTimeout, transport.TCP).Inc()
			log.Warn("refused tunnel", "reason", fmt.Sprintf("no yamux session within %v", s.cfg.HandshakeTimeout))
		default:
			s.metrics.handshakeFailures.WithLabelValues(reasonBadTransport, transport.TCP).Inc()
			log.Warn("refused tunnel: not a tunnel over TCP", "reason", err)
		}
		return
	}
	cancel()
	s.handleConn(tun)
}

func (s *Server) shutdownReason() string {
	return fmt.Sprintf("proxy %s is shutting down", s.cfg.ProxyID)
}

// configForClient gives each handshake its own VerifyConnection that knows
// the remote address, so that a refusal can be logged with it. (quic-go
// fills ClientHelloInfo.Conn with the connection's addresses.)
func (s *Server) configForClient(hi *tls.ClientHelloInfo) (*tls.Config, error) {
	var remote net.Addr
	if hi.Conn != nil {
		remote = hi.Conn.RemoteAddr()
	}
	c := s.tlsConf.Clone()
	c.GetConfigForClient = nil
	c.VerifyConnection = func(cs tls.ConnectionState) error { return s.verifyClient(cs, remote) }
	return c, nil
}

// verifyClient checks the agent's certificate chain against the current CA
// pool. Who the certificate names is checked after the handshake (see
// checkIdentity), where the refusal can carry a reason.
func (s *Server) verifyClient(cs tls.ConnectionState, remote net.Addr) error {
	if reason, msg := s.checkChain(cs); reason != "" {
		s.metrics.handshakeFailures.WithLabelValues(reason, transport.QUIC).Inc()
		s.log.Warn("refused tunnel handshake", "remote", addrString(remote), "reason", msg)
		return errors.New(msg)
	}
	return nil
}

// checkChain requires a client certificate chaining to the current CA pool
// for client authentication. It returns a metric reason and a message for
// the agent's operator, or "" and "".
func (s *Server) checkChain(cs tls.ConnectionState) (string, string) {
	if len(cs.PeerCertificates) == 0 {
		return reasonNoCert, "no client certificate: a node must present its certificate from the cluster's TLS CA"
	}
	leaf := cs.PeerCertificates[0]
	roots := s.cfg.ClientCAs()
	if roots == nil {
		// x509 would fall back to the system roots: never for tunnels.
		return reasonUntrusted, "this proxy has no trusted TLS CA configured"
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   s.cfg.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return reasonUntrusted, fmt.Sprintf("client certificate %q is not trusted: %v", leaf.Subject.CommonName, err)
	}
	return "", ""
}

func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return a.String()
}

// checkIdentity reads the certificate's identity and requires a node of
// this cluster. It returns a metric reason and a message for the agent's
// operator. Over QUIC the chain was verified in the TLS handshake; over TCP
// it is verified here, since the TCP listener belongs to mesh/ingress.
func (s *Server) checkIdentity(tun transport.Conn) (identity.Identity, string, string) {
	cs := tun.TLS()
	if len(cs.PeerCertificates) == 0 {
		// verifyClient refused such a QUIC handshake already.
		return identity.Identity{}, reasonNoCert, "no client certificate: a node must present its certificate from the cluster's TLS CA"
	}
	if tun.Transport() != transport.QUIC {
		if reason, msg := s.checkChain(cs); reason != "" {
			return identity.Identity{}, reason, msg
		}
	}
	id, err := identity.FromX509(cs.PeerCertificates[0])
	switch {
	case err != nil:
		return id, reasonBadIdentity, err.Error()
	case id.Kind != identity.KindNode:
		return id, reasonWrongKind, fmt.Sprintf("certificate is for %s, of kind %s: a tunnel needs a node certificate", id, id.Kind)
	case id.Cluster != s.cfg.ClusterName:
		return id, reasonWrongCluster, fmt.Sprintf("certificate is for cluster %q, proxy %s serves cluster %q", id.Cluster, s.cfg.ProxyID, s.cfg.ClusterName)
	}
	return id, "", ""
}

// handleConn runs one agent connection: handshake, then serving until the
// connection ends. It returns once the connection is gone.
func (s *Server) handleConn(tun transport.Conn) {
	defer func() { <-tun.Done() }()
	closed := make(chan struct{})
	stop := context.AfterFunc(s.serveCtx, func() {
		defer close(closed)
		tun.Close(proto.CloseShutdown, s.shutdownReason())
	})
	defer func() {
		if !stop() {
			<-closed
		}
	}()
	t, err := s.handshake(tun)
	if err != nil {
		tun.Close(proto.CloseProtocol, "handshake failed") // if nothing closed it yet
		return
	}
	s.unregister(t, s.serveTunnel(t))
}

// handshake reads the agent's Hello, checks it against the certificate and
// registers the tunnel. A refusal is logged, counted, sent to the agent and
// closes the connection.
func (s *Server) handshake(tun transport.Conn) (*tunnel, error) {
	remote := tun.RemoteAddr()
	id, idReason, idMsg := s.checkIdentity(tun)
	log := s.log.With("remote", remote.String(), "transport", tun.Transport())
	if id.Name != "" {
		log = log.With("cert", id.String())
	}

	ctx, cancel := context.WithTimeout(s.serveCtx, s.cfg.HandshakeTimeout)
	defer cancel()
	st, err := tun.AcceptStream(ctx)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			s.refuse(log, tun, nil, reasonHelloTimeout, fmt.Sprintf("no Hello within %v", s.cfg.HandshakeTimeout))
			return nil, err
		}
		log.Debug("tunnel closed before its Hello", "err", err)
		return nil, err
	}
	st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	hello, err := proto.Expect[proto.Hello](st)
	if err != nil {
		reason := reasonBadHello
		if errors.Is(err, proto.ErrUnsupportedVersion) {
			reason = reasonVersion
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			reason = reasonHelloTimeout
		}
		s.refuse(log, tun, st, reason, fmt.Sprintf("bad Hello: %v", err))
		return nil, err
	}
	log = log.With("node", hello.NodeID)
	if idReason != "" {
		s.refuse(log, tun, st, idReason, idMsg)
		return nil, errors.New(idMsg)
	}
	if hello.NodeID != id.Name {
		msg := fmt.Sprintf("Hello names node %q but the certificate is for node %q", hello.NodeID, id.Name)
		s.refuse(log, tun, st, reasonNodeMismatch, msg)
		return nil, errors.New(msg)
	}
	version, err := proto.Negotiate(hello.Version)
	if err != nil {
		s.refuse(log, tun, st, reasonVersion, err.Error())
		return nil, err
	}
	t := &tunnel{
		conn: tun,
		info: NodeInfo{
			ID:              hello.NodeID,
			Labels:          hello.Labels,
			RemoteAddr:      remote,
			Transport:       tun.Transport(),
			ConnectedSince:  s.cfg.Now(),
			AgentVersion:    hello.AgentVersion,
			ProtocolVersion: version,
			DiagAddr:        diagAddr(hello.DiagAddr, remote),
		},
		instance: hello.InstanceID,
		slot:     hello.Slot,
		version:  version,
	}
	if s.Draining() {
		s.refuse(log, tun, st, reasonDraining, fmt.Sprintf("proxy %s is draining (leaving the mesh for maintenance): open the tunnel to another proxy", s.cfg.ProxyID))
		return nil, ErrShuttingDown
	}
	if !s.register(t) {
		s.refuse(log, tun, st, reasonShutdown, s.shutdownReason())
		return nil, ErrShuttingDown
	}
	ack := proto.HelloAck{Version: version, ProxyID: s.cfg.ProxyID, Accepted: true}
	if err := proto.WriteMessage(st, ack); err != nil {
		log.Info("tunnel lost during its handshake", "err", err)
		tun.Close(proto.CloseProtocol, "handshake failed")
		s.unregister(t, err)
		return nil, err
	}
	st.Close()
	log.Info("tunnel up", "agent_version", hello.AgentVersion, "protocol", version, "labels", len(hello.Labels))
	return t, nil
}

// refuse turns a tunnel away: log line, metric, HelloAck with the reason if
// there is a stream to send it on, and a CONNECTION_CLOSE with the same
// reason (which arrives even if the close overtakes the HelloAck; over TCP
// it is a Close message on the control stream).
func (s *Server) refuse(log *slog.Logger, tun transport.Conn, st transport.Stream, reason, msg string) {
	s.metrics.handshakeFailures.WithLabelValues(reason, tun.Transport()).Inc()
	log.Warn("refused tunnel", "reason", msg)
	if st != nil {
		proto.WriteMessage(st, proto.HelloAck{Version: proto.Version, ProxyID: s.cfg.ProxyID, Error: msg})
		st.CloseWrite()
	}
	tun.Close(proto.CloseRefused, msg)
}

// serveTunnel refuses any stream the agent opens (the protocol has it open
// none after the Hello) until the connection ends, and returns why it ended.
func (s *Server) serveTunnel(t *tunnel) error {
	for {
		st, err := t.conn.AcceptStream(context.Background())
		if err != nil {
			return err
		}
		s.log.Warn("agent opened an unexpected stream; refusing it", "node", t.info.ID, "remote", t.info.RemoteAddr.String())
		st.Abort(proto.StreamRefused)
	}
}

// register adds t as the node's newest tunnel and closes the tunnels it
// replaces. It reports false if the server is shutting down.
func (s *Server) register(t *tunnel) bool {
	s.eventMu.Lock()
	s.mu.Lock()
	if s.runCtx.Err() != nil {
		s.mu.Unlock()
		s.eventMu.Unlock()
		return false
	}
	var keep, replaced []*tunnel
	for _, old := range s.nodes[t.info.ID] {
		// Same agent process, other proxy address: keep it as a spare.
		// Anything else is the node reconnecting: the old tunnel is stale.
		if t.instance != "" && old.instance == t.instance && old.slot != t.slot {
			keep = append(keep, old)
			continue
		}
		old.live = false
		replaced = append(replaced, old)
	}
	t.live = true
	s.nodes[t.info.ID] = append(keep, t)
	s.metrics.connectedNodes.Set(float64(len(s.nodes)))
	s.metrics.tunnels.WithLabelValues(t.info.Transport).Inc()
	for _, old := range replaced {
		s.metrics.tunnels.WithLabelValues(old.info.Transport).Dec()
	}
	s.notifyDrainLocked()
	s.mu.Unlock()
	s.emit(TunnelEvent{Type: TunnelUp, Node: t.info, Time: s.cfg.Now()}, len(keep)+1)
	s.eventMu.Unlock()

	for _, old := range replaced {
		s.log.Info("tunnel replaced by a newer one from the same node", "node", old.info.ID, "remote", old.info.RemoteAddr.String(), "new_remote", t.info.RemoteAddr.String())
		old.conn.Close(proto.CloseReplaced, fmt.Sprintf("replaced by a newer tunnel from node %s (%s)", t.info.ID, t.info.RemoteAddr))
	}
	return true
}

// unregister removes t, if it is still registered, and reports the node
// down if that was its last tunnel.
func (s *Server) unregister(t *tunnel, cause error) {
	s.eventMu.Lock()
	defer s.eventMu.Unlock()
	s.mu.Lock()
	list := s.nodes[t.info.ID]
	i := slices.Index(list, t)
	if i < 0 {
		s.mu.Unlock()
		return
	}
	t.live = false
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(s.nodes, t.info.ID)
	} else {
		s.nodes[t.info.ID] = list
	}
	s.metrics.connectedNodes.Set(float64(len(s.nodes)))
	s.metrics.tunnels.WithLabelValues(t.info.Transport).Dec()
	s.notifyDrainLocked()
	s.mu.Unlock()
	s.log.Info("tunnel down", "node", t.info.ID, "remote", t.info.RemoteAddr.String(), "err", cause)
	if len(list) == 0 {
		s.emit(TunnelEvent{Type: TunnelDown, Node: t.info, Time: s.cfg.Now(), Err: cause}, 0)
	}
}

// emit calls OnTunnel; tunnels is how many tunnels the node holds now.
func (s *Server) emit(ev TunnelEvent, tunnels int) {
	if s.cfg.OnTunnel != nil {
		ev.Node.Labels = maps.Clone(ev.Node.Labels)
		ev.Node.Tunnels = tunnels
		s.cfg.OnTunnel(ev)
	}
}

func (s *Server) notifyDrainLocked() {
	if s.drainWake != nil {
		close(s.drainWake)
		s.drainWake = nil
	}
}

// Nodes lists the nodes connected to this proxy, sorted by ID.
func (s *Server) Nodes() []NodeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeInfo, 0, len(s.nodes))
	for _, list := range s.nodes {
		info := list[len(list)-1].info
		info.Labels = maps.Clone(info.Labels)
		info.Tunnels = len(list)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (s *Server) newest(nodeID string) *tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	if list := s.nodes[nodeID]; len(list) > 0 {
		return list[len(list)-1]
	}
	return nil
}

// Dial opens a connection to nodeID's SSH server through its tunnel. req
// describes the dial for the agent; its Version is set here. The returned
// net.Conn also has CloseWrite (half-close) and CloseRead. Every error is a
// *DialError; errors.Is(err, ErrNodeOffline) when the node holds no tunnel
// to this proxy.
func (s *Server) Dial(ctx context.Context, nodeID string, req proto.DialRequest) (net.Conn, error) {
	start := time.Now()
	c, outcome, err := s.dial(ctx, nodeID, req)
	s.metrics.dials.WithLabelValues(outcome).Inc()
	s.metrics.dialDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.log.Debug("dial failed", "node", nodeID, "user", req.User, "session", req.SessionID, "outcome", outcome, "err", err)
	}
	return c, err
}

func (s *Server) dial(ctx context.Context, nodeID string, req proto.DialRequest) (net.Conn, string, error) {
	if s.runCtx.Err() != nil {
		return nil, outcomeShutdown, &DialError{Node: nodeID, Retryable: true, Err: fmt.Errorf("%w: dial through another proxy", ErrShuttingDown)}
	}
	if err := ctx.Err(); err != nil {
		return nil, outcomeCanceled, &DialError{Node: nodeID, Err: err}
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	var (
		failed    *tunnel
		failedErr error
	)
	for {
		t := s.newest(nodeID)
		if t == nil {
			return nil, outcomeOffline, &DialError{Node: nodeID, Err: ErrNodeOffline}
		}
		if t == failed {
			// The tunnel broke but is still registered: report that.
			return nil, outcomeTunnelError, &DialError{Node: nodeID, Retryable: true, Err: fmt.Errorf("tunnel from %s: %w", t.info.RemoteAddr, failedErr)}
		}
		c, err := s.dialTunnel(dctx, t, req)
		if err == nil {
			return c, outcomeOK, nil
		}
		switch {
		case ctx.Err() != nil:
			return nil, outcomeCanceled, &DialError{Node: nodeID, Err: ctx.Err()}
		case dctx.Err() != nil:
			return nil, outcomeTimeout, &DialError{Node: nodeID, Retryable: true,
				Err: fmt.Errorf("no answer within %v through its tunnel from %s: the node may be overloaded or its network lossy", s.cfg.DialTimeout, t.info.RemoteAddr)}
		case errors.Is(err, ErrDialRefused):
			return nil, outcomeRefused, &DialError{Node: nodeID, Err: err}
		case transport.Ended(t.conn) && failed == nil:
			// The tunnel died under us; a newer one may have replaced it.
			failed, failedErr = t, err
			continue
		default:
			return nil, outcomeTunnelError, &DialError{Node: nodeID, Retryable: transport.Ended(t.conn),
				Err: fmt.Errorf("tunnel from %s: %w", t.info.RemoteAddr, err)}
		}
	}
}

// dialTunnel opens a stream on t and exchanges DialRequest/DialResponse.
func (s *Server) dialTunnel(ctx context.Context, t *tunnel, req proto.DialRequest) (net.Conn, error) {
	st, err := t.conn.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	abort := st.Abort
	stop := context.AfterFunc(ctx, func() { abort(proto.StreamCanceled) })
	req.Version = t.version
	err = proto.WriteMessage(st, req)
	var resp proto.DialResponse
	if err == nil {
		resp, err = proto.Expect[proto.DialResponse](st)
	}
	if !stop() {
		return nil, ctx.Err()
	}
	if err != nil {
		abort(proto.StreamCanceled)
		return nil, err
	}
	if !resp.OK {
		abort(proto.StreamRefused)
		return nil, fmt.Errorf("%w: %v", ErrDialRefused, resp.Err())
	}
	s.mu.Lock()
	if !t.live {
		s.mu.Unlock()
		abort(proto.StreamCanceled)
		return nil, errors.New("tunnel was replaced or closed during the dial")
	}
	t.streams++
	c := &conn{st: st, local: t.conn.LocalAddr(), remote: t.conn.RemoteAddr()}
	if t.conns == nil {
		t.conns = make(map[*conn]struct{})
	}
	t.conns[c] = struct{}{}
	s.mu.Unlock()
	c.onClose = func() {
		s.mu.Lock()
		delete(t.conns, c)
		if t.live {
			t.streams--
			s.notifyDrainLocked()
		}
		s.mu.Unlock()
	}
	return c, nil
}

// Shutdown stops accepting tunnels and dials, waits until every dialed
// connection is closed, then closes the tunnels (agents reconnect
// elsewhere). If ctx ends first, it closes everything at once and returns
// ctx's error. It waits for all of the server's goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.runCancel()
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, s.serveCancel)
	defer stop()
	err := s.waitDrained(ctx)
	return errors.Join(err, s.Close())
}

// Close closes every tunnel and dialed connection at once and waits for
// the server's goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.runCancel()
	s.mu.Unlock()
	s.serveCancel()
	s.wg.Wait()
	s.mu.Lock()
	trs := s.transports
	s.transports = nil
	s.mu.Unlock()
	for _, tr := range trs {
		tr.Close()
	}
	return nil
}

// waitDrained waits until no dialed connection is open on a live tunnel.
func (s *Server) waitDrained(ctx context.Context) error {
	for {
		s.mu.Lock()
		open := 0
		for _, list := range s.nodes {
			for _, t := range list {
				open += t.streams
			}
		}
		if open == 0 {
			s.mu.Unlock()
			return nil
		}
		wake := make(chan struct{})
		s.drainWake = wake
		s.mu.Unlock()
		s.log.Info("shutting down: waiting for dialed connections to close", "open", open)
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("shut down tunnel server %s with %d connections still open: %w", s.cfg.ProxyID, open, ctx.Err())
		}
	}
}

// diagAddr checks a node's diagnostic address from its Hello and replaces
// a wildcard or missing host with the host the tunnel comes from; "" when
// it is not host:port.
func diagAddr(addr string, remote net.Addr) string {
	if addr == "" || len(addr) > 256 {
		return ""
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		rh, _, err := net.SplitHostPort(addrString(remote))
		if err != nil {
			return ""
		}
		host = rh
	}
	return net.JoinHostPort(host, port)
}
