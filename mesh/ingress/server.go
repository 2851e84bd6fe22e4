package ingress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

// NodeDialer opens a byte stream to a node's SSH server. It exists so that
// ingress does not depend on how tunnels work (tunnel/ and mesh/ do not
// import each other; cmd/ joins them).
type NodeDialer interface {
	DialNode(ctx context.Context, node string, user identity.Identity, clientAddr string) (net.Conn, error)
}

// NodeDialerFunc adapts a function to NodeDialer.
type NodeDialerFunc func(ctx context.Context, node string, user identity.Identity, clientAddr string) (net.Conn, error)

// DialNode calls f.
func (f NodeDialerFunc) DialNode(ctx context.Context, node string, user identity.Identity, clientAddr string) (net.Conn, error) {
	return f(ctx, node, user, clientAddr)
}

// Upstream is the auth server, as far as the proxy forwards to it.
type Upstream interface {
	Login(ctx context.Context, req authapi.LoginRequest) (*authapi.Credentials, error)
	Join(ctx context.Context, req authapi.JoinRequest) (*authapi.Credentials, error)
	// Renew renews a node's certificates (req.For names it).
	Renew(ctx context.Context, req authapi.RenewRequest) (*authapi.Credentials, error)
}

// OfflineError is implemented by dial errors that mean "the node has no
// tunnel", so ingress can answer with CodeOffline.
type OfflineError interface {
	error
	Offline() bool
}

// CodedError is implemented by dial errors that carry the code the client
// should see (CodeOffline, CodeUnreachable, ...).
type CodedError interface {
	error
	DialCode() string
}

// Config configures the ingress server.
type Config struct {
	ProxyID        string
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Cache is this proxy's copy of roles, nodes and CAs (fed by a watch
	// stream from auth). Its TLS pool verifies client certificates.
	Cache    *authapi.Hub
	Upstream Upstream
	Dialer   NodeDialer
	// Online reports whether a node has a tunnel reachable from this proxy.
	Online func(node string) bool
	// Proxies, if set, lists the live proxies of the mesh, this one
	// included, for GET /v1/mesh/proxies (node agents choose where to hold
	// tunnels from it). Unset: this proxy alone.
	Proxies func() []authapi.MeshProxy
	// PublicAddr is where clients and agents reach this proxy.
	PublicAddr string
	// Discover answers GET /v1/discover: the proxies ranked for the
	// client making r (its address, behind trusted load balancers, is
	// the caller's to work out). Nil: this proxy alone.
	Discover func(r *http.Request) *authapi.Discovery
	Version  string
	Audit    audit.Sink
	Logger   *slog.Logger
	Metrics  prometheus.Registerer
	// HandshakeTimeout bounds the TLS handshake and the dial line (10s).
	HandshakeTimeout time.Duration
	// DialTimeout bounds reaching the node (15s).
	DialTimeout time.Duration
	// StartDrain and DrainStatus serve POST and GET /v1/drain (admins
	// only): cmd/ runs the drain (see Server.Drain for the ingress part).
	// Nil: the proxy cannot be drained through its API.
	StartDrain  func(authapi.DrainRequest) (authapi.DrainStatus, error)
	DrainStatus func() *authapi.DrainStatus
	// Protocols routes more ALPN protocols to handlers that take over the
	// connection once its TLS handshake is done (a client certificate, if
	// the client gave one, verified against the cluster's CA pool). cmd/
	// routes tunnel/proto.ALPN to the tunnel server, so that node agents
	// whose network blocks UDP reach it over TCP; ingress knows nothing of
	// tunnels. A handler owns the connection from then on and must return
	// at once: Shutdown and Close neither wait for it nor close it.
	Protocols map[string]func(*tls.Conn)
}

func (c *Config) checkAndSetDefaults() error {
	switch {
	case c.ProxyID == "":
		return errors.New("ingress: ProxyID is required")
	case c.GetCertificate == nil:
		return errors.New("ingress: GetCertificate is required")
	case c.Cache == nil:
		return errors.New("ingress: Cache is required")
	case c.Upstream == nil:
		return errors.New("ingress: Upstream is required")
	case c.Dialer == nil:
		return errors.New("ingress: Dialer is required")
	}
	for p, h := range c.Protocols {
		switch {
		case p == "" || p == ALPNDial || p == ALPNHTTP:
			return fmt.Errorf("ingress: Protocols: %q is not an extra ALPN protocol", p)
		case h == nil:
			return fmt.Errorf("ingress: Protocols: no handler for %q", p)
		}
	}
	if c.Online == nil {
		c.Online = func(string) bool { return false }
	}
	if c.Audit == nil {
		c.Audit = audit.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 15 * time.Second
	}
	return nil
}

// Server is the client-facing listener.
type Server struct {
	cfg     Config
	tls     *tls.Config
	http    *http.Server
	httpL   *chanListener
	metrics *metrics
	active  atomic.Int64 // sessions being forwarded
	drain   drainState

	ctx    context.Context // cancelled by Close: ends every session
	cancel context.CancelFunc
	// streams is cancelled when Shutdown starts: it ends the long-lived
	// HTTP responses (node watch streams), which would otherwise hold
	// http.Server.Shutdown until its deadline; the nodes reconnect their
	// watch through another proxy.
	streams       context.Context
	streamsCancel context.CancelFunc

	mu        sync.Mutex // guards following
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	live      map[*liveSession]struct{} // sessions being forwarded, for EnforceLocks
	closing   bool
	wg        sync.WaitGroup // connection handlers
}

type metrics struct {
	dials    *prometheus.CounterVec
	dialTime *prometheus.HistogramVec
	sessions prometheus.Gauge
	bytes    *prometheus.CounterVec
	tlsFail  prometheus.Counter
	moves    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jumpgate_proxy_dials_total", Help: "Client dials to nodes by outcome (ok, denied, unknown, offline, unreachable, draining, version, bad_request, error) and path (local: a tunnel held here; peer: through the proxy holding it)."}, []string{"outcome", "path"}),
		dialTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jumpgate_proxy_dial_duration_seconds", Help: "Time from a client's dial request to the node stream being open, by path (local: a tunnel held here; peer: through the proxy holding it).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"path"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jumpgate_proxy_sessions_active", Help: "Client connections currently forwarded to nodes."}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jumpgate_proxy_forwarded_bytes_total", Help: "Bytes forwarded between clients and nodes, by direction (to_node, to_client)."}, []string{"direction"}),
		tlsFail:  prometheus.NewCounter(prometheus.CounterOpts{Name: "jumpgate_proxy_tls_handshake_failures_total", Help: "Client connections that failed the TLS handshake (garbage, wrong CA, expired certificate)."}),
		moves:    prometheus.NewCounter(prometheus.CounterOpts{Name: "jumpgate_proxy_session_moves_total", Help: "Resumable client sessions this proxy asked to move to another proxy while draining."}),
	}
	if reg != nil {
		reg.MustRegister(m.dials, m.dialTime, m.sessions, m.bytes, m.tlsFail, m.moves)
	}
	return m
}

// New builds the server. Serve starts it.
func New(cfg Config) (*Server, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, metrics: newMetrics(cfg.Metrics), listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}, live: map[*liveSession]struct{}{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.streams, s.streamsCancel = context.WithCancel(s.ctx)
	protos := []string{ALPNDial, ALPNHTTP}
	for _, p := range slices.Sorted(maps.Keys(cfg.Protocols)) {
		protos = append(protos, p)
	}
	base := &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: cfg.GetCertificate, NextProtos: protos}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = cfg.Cache.TLSPool()
		return c, nil
	}
	s.tls = base
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", s.ping)
	mux.HandleFunc("POST /v1/login", s.login)
	mux.HandleFunc("POST /v1/join", s.join)
	mux.HandleFunc("POST /v1/sso/start", s.ssoStart)
	mux.HandleFunc("GET "+ssoCallbackPath, s.ssoCallback)
	mux.HandleFunc("POST /v1/sso/result", s.ssoResult)
	mux.HandleFunc("POST /v1/renew", s.renew)
	mux.HandleFunc("GET /v1/watch", s.watch)
	mux.HandleFunc("GET /v1/nodes", s.nodes)
	mux.HandleFunc("GET /v1/mesh/proxies", s.meshProxies)
	mux.HandleFunc("GET /v1/discover", s.discover)
	mux.HandleFunc("/v1/user/", s.userForward)
	mux.HandleFunc("PUT /v1/recordings/{session}", s.uploadForward)
	mux.HandleFunc("POST /v1/drain", s.startDrain)
	mux.HandleFunc("GET /v1/drain", s.drainStatus)
	s.httpL = newChanListener()
	s.http = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Bodies are small, except nodes' session recordings,
			// which stream through to auth (which checks their size).
			if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/v1/recordings/") {
				r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
			}
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
	}
	go s.http.Serve(s.httpL) //nolint:errcheck // ends with ErrServerClosed
	return s, nil
}

// Serve accepts client connections on l until Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	var tempDelay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			return fmt.Errorf("ingress: accept: %w", err)
		}
		tempDelay = 0
		if !s.track(c, true) {
			c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *Server) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	return true
}

// lingerClose closes a connection whose TLS handshake failed so that the
// alert just sent reaches the client. With TLS 1.3 a client whose
// certificate is refused has finished its side of the handshake and may
// already be writing; closing at once with its bytes unread makes the
// kernel answer with a reset, which destroys the alert in the client's
// receive queue, and the client reports "broken pipe" instead of why. So:
// stop writing, discard what the client sends for a moment, then close.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		_ = c.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
	c.Close()
}

// lingerTimeout bounds lingerClose.
const lingerTimeout = 500 * time.Millisecond

func (s *Server) handle(raw net.Conn) {
	tc := tls.Server(raw, s.tls)
	_ = raw.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := tc.HandshakeContext(s.ctx); err != nil {
		s.metrics.tlsFail.Inc()
		s.cfg.Logger.Debug("client TLS handshake failed", "remote", raw.RemoteAddr(), "err", err)
		lingerClose(raw)
		s.track(raw, false)
		return
	}
	alpn := tc.ConnectionState().NegotiatedProtocol
	if alpn == ALPNDial {
		defer s.track(raw, false)
		defer tc.Close()
		s.handleDial(tc)
		return
	}
	if h, ok := s.cfg.Protocols[alpn]; ok {
		// The handler owns the connection from here, deadlines included.
		_ = raw.SetDeadline(time.Time{})
		s.track(raw, false)
		h(tc)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	// The HTTP server owns the connection from here; it is closed by
	// http.Server's own shutdown.
	s.track(raw, false)
	if !s.httpL.push(tc) {
		tc.Close()
	}
}

func (s *Server) handleDial(tc *tls.Conn) {
	start := time.Now()
	remote := tc.RemoteAddr().String()
	br := bufio.NewReaderSize(tc, 4096)
	req, bad := ParseDialRequest(br)
	ev := audit.Event{Type: audit.DialDenied, Node: req.Node, Login: req.Login, RemoteAddr: remote}
	refuse := func(r *DialResponse) {
		s.metrics.dials.WithLabelValues(r.Code, "").Inc()
		ev.Error = r.Error
		if r.Code != CodeBadRequest && r.Code != CodeVersion {
			s.cfg.Audit.Emit(ev)
		}
		s.cfg.Logger.Info("dial refused", "user", ev.User, "node", req.Node, "remote", remote, "code", r.Code, "err", r.Error)
		_ = tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = WriteLine(tc, r)
	}
	if bad != nil {
		refuse(bad)
		return
	}
	if r := s.drainRefusal(req, remote); r != nil {
		refuse(r)
		return
	}
	chains := tc.ConnectionState().VerifiedChains
	if len(chains) == 0 {
		refuse(&DialResponse{V: req.V, Code: CodeDenied, Error: "no valid client certificate: run jg login"})
		return
	}
	user, err := identity.FromX509(chains[0][0])
	if err == nil && user.Kind != identity.KindUser {
		err = fmt.Errorf("a %s certificate cannot dial nodes", user.Kind)
	}
	if err == nil && user.Cluster != s.cfg.Cache.Cluster() {
		err = fmt.Errorf("certificate is for cluster %s, this proxy serves %s: run jg login", user.Cluster, s.cfg.Cache.Cluster())
	}
	if err != nil {
		refuse(&DialResponse{V: req.V, Code: CodeDenied, Error: err.Error()})
		return
	}
	ev.User, ev.Roles = user.Name, user.Roles
	node, ok := s.cfg.Cache.Node(req.Node)
	if !ok {
		ev.Type = audit.DialFailed
		refuse(&DialResponse{V: req.V, Code: CodeUnknown, Error: fmt.Sprintf("node %s is not known to cluster %s: jg ls lists the nodes you can reach", req.Node, s.cfg.Cache.Cluster())})
		return
	}
	if err := identity.CanReachNode(user, s.cfg.Cache.Role, node.ID, node.Labels); err != nil {
		refuse(&DialResponse{V: req.V, Code: CodeDenied, Error: err.Error()})
		return
	}
	target := identity.LockTarget{User: user.Name, Roles: user.Roles, Node: node.ID, Login: req.Login}
	if err := s.cfg.Cache.CheckLocks(target, time.Now()); err != nil {
		refuse(&DialResponse{V: req.V, Code: CodeDenied, Error: "access denied: " + err.Error()})
		return
	}
	// The handshake deadline is over: reaching the node has its own
	// (DialTimeout), and the answer must still reach the client after it.
	_ = tc.SetDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(WithMFACert(s.ctx, req.MFA), s.cfg.DialTimeout)
	nc, err := s.cfg.Dialer.DialNode(ctx, node.ID, user, remote)
	cancel()
	if err != nil {
		ev.Type = audit.DialFailed
		code := CodeError
		var oe OfflineError
		var ce CodedError
		switch {
		case errors.As(err, &ce):
			code = ce.DialCode()
		case errors.As(err, &oe) && oe.Offline():
			code = CodeOffline
		}
		refuse(&DialResponse{V: req.V, Code: code, Error: err.Error()})
		return
	}
	defer nc.Close()
	_ = tc.SetDeadline(time.Time{})
	path, pathLabel := "local", "local"
	if pc, ok := nc.(interface{ DialPath() string }); ok {
		path = pc.DialPath()
		if path != "local" {
			pathLabel = "peer"
		}
	}
	if err := WriteLine(tc, &DialResponse{V: req.V, OK: true, Node: node.ID, Path: path}); err != nil {
		return
	}
	s.metrics.dials.WithLabelValues("ok", pathLabel).Inc()
	s.metrics.dialTime.WithLabelValues(pathLabel).Observe(time.Since(start).Seconds())
	ev.Type, ev.Error = audit.DialOK, ""
	s.cfg.Audit.Emit(ev)
	s.metrics.sessions.Inc()
	s.active.Add(1)
	defer func() { s.metrics.sessions.Dec(); s.active.Add(-1) }()
	ls := &liveSession{target: target, client: tc, node: nc, remote: remote, resume: req.Resume}
	s.trackLive(ls, true)
	defer s.trackLive(ls, false)
	// Bytes the client sent right behind its dial line are in br's buffer.
	var client io.Reader = tc
	if br.Buffered() > 0 {
		client = io.MultiReader(io.LimitReader(br, int64(br.Buffered())), tc)
	}
	Pipe(tc, client, nc, s.metrics.bytes.WithLabelValues("to_node"), s.metrics.bytes.WithLabelValues("to_client"))
	if req.Resume {
		// The node's side ended (its tunnel moved, or this proxy is
		// draining) and Pipe has sent the client close_notify. Closing
		// now, with client bytes unread, would send a TCP reset, which
		// can overtake the close_notify: the client would see a failure
		// instead of a request to move, and avoid this proxy. Wait a
		// moment for the client to close first.
		_ = tc.SetReadDeadline(time.Now().Add(moveLinger))
		_, _ = io.Copy(io.Discard, io.LimitReader(tc, 4<<20))
	}
}

// moveLinger bounds how long a resumable client has to close its side
// after the proxy ended the session's path (see handleDial).
const moveLinger = 2 * time.Second

// Pipe copies client→node and node→client until both directions end,
// propagating half-closes. Counters may be nil.
func Pipe(clientConn net.Conn, client io.Reader, node net.Conn, toNode, toClient prometheus.Counter) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, _ := copyBuf(node, client)
		if toNode != nil {
			toNode.Add(float64(n))
		}
		closeWrite(node)
	}()
	n, _ := copyBuf(clientConn, node)
	if toClient != nil {
		toClient.Add(float64(n))
	}
	closeWrite(clientConn)
	<-done
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// copyBuf is io.Copy with pooled 64 KiB buffers: larger than io.Copy's
// 32 KiB, which halves the syscalls and TLS records per MiB forwarded.
func copyBuf(dst io.Writer, src io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return io.CopyBuffer(dst, src, *bp)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	c.Close()
}

// --- HTTPS API ---------------------------------------------------------------

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	authapi.WriteJSON(w, http.StatusOK, map[string]string{"cluster": s.cfg.Cache.Cluster(), "proxy": s.cfg.ProxyID, "version": s.cfg.Version, "api": authapi.Version})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var req authapi.LoginRequest
	if !readJSON(w, r, &req) {
		return
	}
	req.ClientAddr = r.RemoteAddr
	creds, err := s.cfg.Upstream.Login(r.Context(), req)
	if err != nil {
		forwardError(w, err)
		return
	}
	authapi.WriteJSON(w, http.StatusOK, creds)
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	var req authapi.JoinRequest
	if !readJSON(w, r, &req) {
		return
	}
	creds, err := s.cfg.Upstream.Join(r.Context(), req)
	if err != nil {
		forwardError(w, err)
		return
	}
	authapi.WriteJSON(w, http.StatusOK, creds)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		authapi.WriteError(w, http.StatusBadRequest, "malformed request body: "+err.Error())
		return false
	}
	return true
}

func forwardError(w http.ResponseWriter, err error) {
	var ae *authapi.APIError
	if errors.As(err, &ae) {
		authapi.WriteError(w, ae.Code, ae.Message)
		return
	}
	authapi.WriteError(w, http.StatusBadGateway, "auth server unreachable from this proxy: "+err.Error())
}

func (s *Server) caller(w http.ResponseWriter, r *http.Request, kinds ...identity.Kind) (identity.Identity, bool) {
	id, err := authapi.Caller(r, s.cfg.Cache.Cluster())
	if err != nil {
		authapi.WriteError(w, http.StatusUnauthorized, err.Error())
		return id, false
	}
	for _, k := range kinds {
		if id.Kind == k {
			return id, true
		}
	}
	authapi.WriteError(w, http.StatusForbidden, fmt.Sprintf("%s may not call %s", id, r.URL.Path))
	return id, false
}

func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.caller(w, r, identity.KindNode); !ok {
		return
	}
	select {
	case <-s.cfg.Cache.Ready():
	default:
		authapi.WriteError(w, http.StatusServiceUnavailable, "this proxy has not synced with the auth server yet: retry")
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.streams, cancel)
	defer stop()
	s.cfg.Cache.ServeWatch(w, r.WithContext(ctx))
}

func (s *Server) meshProxies(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.caller(w, r, identity.KindNode, identity.KindUser); !ok {
		return
	}
	var out []authapi.MeshProxy
	if s.cfg.Proxies != nil {
		out = s.cfg.Proxies()
	}
	if len(out) == 0 {
		out = []authapi.MeshProxy{{ID: s.cfg.ProxyID, PublicAddr: s.cfg.PublicAddr, State: "active", Health: "alive"}}
	}
	authapi.WriteJSON(w, http.StatusOK, out)
}

// discover needs no identity: a client asks before it has logged in.
func (s *Server) discover(w http.ResponseWriter, r *http.Request) {
	var d *authapi.Discovery
	if s.cfg.Discover != nil {
		d = s.cfg.Discover(r)
	}
	if d == nil {
		d = &authapi.Discovery{Proxy: s.cfg.ProxyID, Client: authapi.DiscoveryClient{IP: r.RemoteAddr, Source: "socket"},
			Proxies: []authapi.DiscoveredProxy{{ID: s.cfg.ProxyID, PublicAddr: s.cfg.PublicAddr, Health: "alive", State: "active", DistanceKm: -1, Reason: "the only proxy this one knows"}},
			Why:     "this proxy is not in a mesh", GeoIP: "none"}
	}
	w.Header().Set("Cache-Control", "no-store")
	authapi.WriteJSON(w, http.StatusOK, d)
}

func (s *Server) nodes(w http.ResponseWriter, r *http.Request) {
	user, ok := s.caller(w, r, identity.KindUser)
	if !ok {
		return
	}
	out := []authapi.NodeStatus{}
	for _, n := range s.cfg.Cache.Nodes() {
		if identity.CanReachNode(user, s.cfg.Cache.Role, n.ID, n.Labels) != nil {
			continue
		}
		out = append(out, authapi.NodeStatus{ID: n.ID, Labels: n.Labels, Joined: n.Joined, Online: s.cfg.Online(n.ID)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	authapi.WriteJSON(w, http.StatusOK, out)
}

// Sessions is the number of client connections being forwarded to nodes.
func (s *Server) Sessions() int { return int(s.active.Load()) }

// Shutdown stops accepting, then waits for live sessions to end until ctx
// expires, and then closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	s.httpL.Close()
	s.streamsCancel()
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()
	herr := s.http.Shutdown(ctx)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.closeConns()
		<-done
	}
	s.cancel()
	if herr != nil && !errors.Is(herr, context.Canceled) && !errors.Is(herr, context.DeadlineExceeded) {
		return herr
	}
	return ctx.Err()
}

// Close stops everything at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.httpL.Close()
	s.http.Close()
	s.closeConns()
	s.wg.Wait()
	return nil
}

func (s *Server) closeConns() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// CAPool is a helper for tests: the pool the server verifies clients with.
func (s *Server) CAPool() *x509.CertPool { return s.cfg.Cache.TLSPool() }

// chanListener hands already-accepted TLS connections to http.Server.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
