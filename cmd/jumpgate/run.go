package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
	"jumpgate.dev/jumpgate/mesh/ingress"
	"jumpgate.dev/jumpgate/mesh/ingress/realip"
	"jumpgate.dev/jumpgate/mesh/meshpage"
	"jumpgate.dev/jumpgate/node/recording"
	"jumpgate.dev/jumpgate/node/sshd"
	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/resume"
	tserver "jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/udpgro"
)

// process holds what one jumpgate process runs, for shutdown and health.
type process struct {
	log     *slog.Logger
	reg     *prometheus.Registry
	audit   audit.Sink
	cleanup []func(ctx context.Context) // run in reverse order at shutdown
	ready   []func() error              // readiness checks for /readyz
	wg      sync.WaitGroup
	errc    chan error
	// stop is closed to end the process normally (a finished drain).
	stop     chan struct{}
	stopOnce sync.Once
	// drainer is the proxy's, when it runs one; nil otherwise.
	drainer *drainer
	// watchLagOnce registers jumpgate_watch_lag_seconds once per process.
	watchLagOnce sync.Once
	// diag are more handlers for the diagnostic listener, by pattern (the
	// proxy's mesh page).
	diag map[string]http.Handler
}

func (p *process) exit() { p.stopOnce.Do(func() { close(p.stop) }) }

func (p *process) onShutdown(f func(ctx context.Context)) { p.cleanup = append(p.cleanup, f) }

// goServe runs a blocking serve function; a failure ends the process.
func (p *process) goServe(name string, f func() error) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, tserver.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			select {
			case p.errc <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	}()
}

func run(ctx context.Context, cfg Config, log *slog.Logger, shutdownTimeout time.Duration) error {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	auditPath := cfg.AuditLog
	if auditPath == "" {
		auditPath = filepath.Join(cfg.DataDir, "audit.log")
	}
	maxSize, keep := cfg.Audit.MaxSize, cfg.Audit.Keep
	if maxSize == 0 {
		maxSize = 100 << 20
	}
	if keep <= 0 {
		keep = 10
	}
	af, err := audit.OpenRotating(auditPath, maxSize, keep)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer af.Close()
	go watchAuditRotation(ctx, af, log)
	p := &process{log: log, reg: prometheus.NewRegistry(), errc: make(chan error, 1), stop: make(chan struct{})}
	p.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jumpgate_build_info", Help: "Always 1; labels say the running version and roles."}, []string{"version", "roles"})
	p.reg.MustRegister(buildInfo)
	buildInfo.WithLabelValues(version, fmt.Sprint(cfg.Roles)).Set(1)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var authority *ca.Authority
	if cfg.Has("auth") {
		p.audit = audit.NewWriter(af, "auth/"+cfg.Auth.ClusterName, log)
		if authority, err = startAuth(runCtx, p, cfg); err != nil {
			return shutdownAll(p, err, shutdownTimeout)
		}
	}
	if cfg.Has("proxy") {
		p.audit = audit.NewWriter(af, "proxy/"+cfg.Proxy.ID, log)
		if err := startProxy(runCtx, p, cfg, authority); err != nil {
			return shutdownAll(p, err, shutdownTimeout)
		}
	}
	if cfg.Has("node") {
		p.audit = audit.NewWriter(af, "node/"+cfg.Node.Name, log)
		if err := startNode(runCtx, p, cfg); err != nil {
			return shutdownAll(p, err, shutdownTimeout)
		}
	}
	if cfg.DiagListen != "" {
		if err := startDiag(p, cfg.DiagListen, cfg.DiagPprof); err != nil {
			return shutdownAll(p, err, shutdownTimeout)
		}
	}
	log.Info("jumpgate started", "roles", cfg.Roles, "version", version, "data_dir", cfg.DataDir)
	select {
	case <-ctx.Done():
		err = nil
		if p.drainer != nil && cfg.Proxy.DrainTimeout > 0 {
			err = drainOnSignal(p, cfg.Proxy.DrainTimeout)
		}
		log.Info("shutting down", "timeout", shutdownTimeout)
	case <-p.stop:
		log.Info("shutting down after the drain", "timeout", shutdownTimeout)
		err = nil
	case err = <-p.errc:
		log.Error("fatal", "err", err)
	}
	cancel()
	return shutdownAll(p, err, shutdownTimeout)
}

func shutdownAll(p *process, cause error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for i := len(p.cleanup) - 1; i >= 0; i-- {
		p.cleanup[i](ctx)
	}
	p.wg.Wait()
	return cause
}

// --- auth ------------------------------------------------------------------

// newServerCert issues a TLS server certificate for id with a fresh key,
// with the CA certificate appended so first-contact clients can check a pin.
func newServerCert(a *ca.Authority, id identity.Identity, hosts []string, ttl time.Duration) (*tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	req := ca.TLSRequest{Identity: id, PublicKey: pub, TTL: ttl, Server: true}
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNSNames = append(req.DNSNames, h)
		}
	}
	der, err := a.SignTLS(req)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der, a.TLSCACert()}, PrivateKey: priv, Leaf: leaf}, nil
}

// writeAdminIdentity writes a 24h admin identity for jgctl on this machine,
// trusting every TLS CA of the cluster (trusted; this server's own if nil).
func writeAdminIdentity(a *ca.Authority, cluster, dir string, trusted [][]byte) error {
	k, err := creds.NewKeys()
	if err != nil {
		return err
	}
	id := identity.Identity{Kind: identity.KindAdmin, Name: "admin", Cluster: cluster}
	der, err := a.SignTLS(ca.TLSRequest{Identity: id, PublicKey: k.TLS.Public(), TTL: 24 * time.Hour})
	if err != nil {
		return err
	}
	if len(trusted) == 0 {
		trusted = [][]byte{a.TLSCACert()}
	}
	c := &authapi.Credentials{Cluster: cluster, Name: "admin", TLSCert: ca.PEMCert(der), Expires: time.Now().Add(24 * time.Hour), CAs: authapi.CABundle{TLS: ca.PEMCert(trusted...)}}
	return creds.Save(dir, k, c, creds.Meta{Kind: string(identity.KindAdmin)})
}

// checkNodeLocks refuses a new session that a lock applies to. A node
// whose cache has heard nothing from the cluster for longer than
// lock_stale_after cannot know about new locks: in strict mode it then
// refuses every session; in best-effort mode (the default) it goes on with
// the locks it last knew.
func checkNodeLocks(cache *authapi.Hub, nc NodeConfig, t identity.LockTarget, now time.Time) error {
	if nc.LockMode == "strict" {
		heard := cache.LastHeard()
		if heard.IsZero() || now.Sub(heard) > nc.LockStaleAfter {
			since := "ever"
			if !heard.IsZero() {
				since = "for " + identity.HumanDuration(now.Sub(heard))
			}
			return &identity.AccessError{Reason: fmt.Sprintf("node %s has not heard from the cluster %s, so it cannot know the current locks; in strict lock mode it refuses new sessions until it does", t.Node, since)}
		}
	}
	if err := cache.CheckLocks(t, now); err != nil {
		return &identity.AccessError{Reason: err.Error()}
	}
	return nil
}

// --- proxy -----------------------------------------------------------------

func startProxy(ctx context.Context, p *process, cfg Config, authority *ca.Authority) error {
	host, _, _ := net.SplitHostPort(cfg.Proxy.Listen)
	hosts := append([]string{host, "localhost"}, cfg.Proxy.PublicAddrs...)
	jitter, renewAfter, err := renewKnobs()
	if err != nil {
		return err
	}
	var (
		live     *liveCreds
		saved    *creds.Identity // joined: the identity in the data dir
		self     = identity.Identity{Kind: identity.KindProxy, Name: cfg.Proxy.ID, Cluster: cfg.Auth.ClusterName}
		authAddr = cfg.Proxy.AuthAddr
		cluster  = cfg.Auth.ClusterName
	)
	if authority != nil {
		// Same process as the auth server: issue directly (renewals go
		// through auth, which knows the signer of the moment).
		c, err := newServerCert(authority, self, hosts, 30*24*time.Hour)
		if err != nil {
			return err
		}
		live = newLiveCreds(issued{TLS: c, CAs: [][]byte{authority.TLSCACert()}})
		if authAddr == "" {
			authAddr = cfg.Auth.Listen
		}
	} else {
		id, err := loadOrJoin(ctx, p.log, filepath.Join(cfg.DataDir, "proxy"), authAddr, cfg.Proxy.Token, cfg.Proxy.CAPin, identity.KindAuth, authapi.JoinRequest{Kind: identity.KindProxy, Name: cfg.Proxy.ID, DNSNames: dnsOnly(hosts), IPs: ipsOnly(hosts)})
		if err != nil {
			return err
		}
		if err := id.WithChain(); err != nil {
			return err
		}
		is, err := loadedIssued(id, false)
		if err != nil {
			return err
		}
		live, saved, cluster = newLiveCreds(is), id, id.Meta.Cluster
	}
	getCert := live.GetCertificate
	cache := authapi.NewHub()
	trust := &serverTrust{creds: live, hub: cache}
	pool := trust.Pool
	authAddrs := append([]string{authAddr}, cfg.Proxy.AuthAddrs...)
	if len(authAddrs) > 1 {
		// Nearest first: the one that answers a TCP connect soonest.
		authAddrs = nearestFirst(ctx, authAddrs, time.Second)
		p.log.Info("auth servers, nearest first", "auth", authAddrs)
	}
	upstream, err := authapi.NewClient(authapi.ClientConfig{Addr: authAddrs[0], Addrs: authAddrs[1:], Trust: authapi.TrustConfig{RootCAs: pool, Kinds: []identity.Kind{identity.KindAuth}},
		GetClientCertificate: live.GetClientCertificate})
	if err != nil {
		return err
	}
	names := authapi.RenewRequest{DNSNames: dnsOnly(hosts), IPs: ipsOnly(hosts)}
	var reissue func(context.Context) (issued, error)
	if saved != nil {
		reissue = savedRenewal(saved.Dir, saved.Meta, false, true, names, upstream.Renew)
	} else {
		reissue = unsavedRenewal(self, names, upstream.Renew)
	}
	rn := &renewer{kind: "proxy", creds: live, hub: cache, reissue: reissue, loaded: saved != nil, jitter: jitter, after: renewAfter,
		log: p.log.With("component", "renew"), metrics: newRenewMetrics(p.reg)}
	p.goServe("proxy renewal", func() error { rn.run(ctx); return nil })
	p.goServe("proxy cache", func() error {
		authapi.Follow(ctx, cache, upstream.OpenWatchFrom, func(err error) {
			if err != nil {
				p.log.Warn("watch stream from auth broke; retrying", "auth", upstream.Addr(), "err", err)
			} else {
				p.log.Info("proxy cache in sync with auth", "auth", upstream.Addr())
			}
		})
		return nil
	})
	presenceKick := make(chan struct{}, 1)
	// pm is set below, before the tunnel server serves (starting that
	// goroutine orders the write before every OnTunnel call).
	var pm *proxyMesh
	tunnelReset, _, err := resetKeys(cfg.DataDir)
	if err != nil {
		return err
	}
	tsrv, err := tserver.New(tserver.Config{
		ProxyID: cfg.Proxy.ID, ClusterName: cluster, GetCertificate: getCert, ClientCAs: cache.TLSPool, StatelessResetKey: tunnelReset,
		MaxIdleTimeout: cfg.Proxy.TunnelIdleTimeout, KeepAlivePeriod: cfg.Proxy.TunnelIdleTimeout / 3,
		OnTunnel: func(ev tserver.TunnelEvent) {
			pm.onTunnel(ev)
			select {
			case presenceKick <- struct{}{}:
			default:
			}
		},
		Logger: p.log.With("component", "tunnel"), Metrics: p.reg,
	})
	if err != nil {
		return err
	}
	udp, err := udpgro.Listen(cfg.Proxy.Listen)
	if err != nil {
		return fmt.Errorf("proxy tunnel listen (UDP %s): %w", cfg.Proxy.Listen, err)
	}
	publicAddr := cfg.Proxy.Listen
	if len(cfg.Proxy.PublicAddrs) > 0 {
		_, port, _ := net.SplitHostPort(cfg.Proxy.Listen)
		publicAddr = net.JoinHostPort(cfg.Proxy.PublicAddrs[0], port)
	}
	kick := func() {
		select {
		case presenceKick <- struct{}{}:
		default:
		}
	}
	// Peers are verified against the cluster's CAs as the watch stream
	// delivers them, so a CA rotation reaches the mesh without a restart.
	meshPool := func() *x509.CertPool {
		select {
		case <-cache.Ready():
			return cache.TLSPool()
		default:
			return pool()
		}
	}
	m, err := startMesh(ctx, p, cfg, cluster, tsrv, upstream, getCert, meshPool, publicAddr, kick)
	if err != nil {
		return err
	}
	pm = m
	// Tunnels only once the mesh is up: every tunnel event then reaches the
	// directory, and a node never holds a tunnel to a proxy the mesh does
	// not know yet.
	p.goServe("tunnel server", func() error { return tsrv.Serve(udp) })
	p.onShutdown(func(ctx context.Context) { tsrv.Shutdown(ctx) }) //nolint:errcheck
	var ing *ingress.Server
	disc, err := newDiscovery(p, cfg, m, publicAddr, func() int {
		if ing == nil {
			return 0
		}
		return ing.Sessions()
	})
	if err != nil {
		return err
	}
	var dr *drainer
	ing, err = ingress.New(ingress.Config{
		StartDrain: func(req authapi.DrainRequest) (authapi.DrainStatus, error) {
			if authority != nil {
				// A drain ends with the process exiting, which would
				// take this process's auth server down with the proxy.
				return authapi.DrainStatus{}, fmt.Errorf("proxy %s runs in the same process as an auth server: a drain would stop the auth server too; run proxies in processes of their own to drain them (SIGTERM with proxy.drain_timeout still drains this one before it stops)", cfg.Proxy.ID)
			}
			return dr.Start(req)
		},
		DrainStatus: func() *authapi.DrainStatus { return dr.Status() },
		ProxyID:     cfg.Proxy.ID, GetCertificate: getCert, Cache: cache, Upstream: upstream, Online: m.online, Version: version,
		Proxies: m.proxies, PublicAddr: publicAddr, Discover: disc.discover,
		Dialer: ingress.NodeDialerFunc(m.dial),
		// Tunnels over TCP, from agents whose network blocks UDP, arrive
		// on the TLS port; the tunnel server takes them over.
		Protocols: map[string]func(*tls.Conn){proto.ALPN: tsrv.HandleTLS},
		Audit:     p.audit, Logger: p.log.With("component", "ingress"), Metrics: p.reg,
	})
	if err != nil {
		return err
	}
	p.reg.MustRegister(newMeshCollector(m, cache))
	p.watchLagOnce.Do(func() { watchLag(p.reg, cache) })
	dr = newDrainer(p, cfg.Proxy.ID, tsrv, m, disc, kick, p.exit)
	dr.ing = ing
	p.drainer = dr
	page, err := meshpage.New(meshpage.Config{Snapshot: func() meshpage.Snapshot {
		return meshSnapshot(cfg.Proxy.ID, cfg.Proxy.Region, cluster, m, cache, tsrv, ing, dr)
	}})
	if err != nil {
		return err
	}
	if p.diag == nil {
		p.diag = map[string]http.Handler{}
	}
	// The mesh page, on the diagnostic listener: http://DIAG/mesh/
	p.diag["GET /mesh/"] = http.StripPrefix("/mesh", page)
	p.diag["GET /mesh"] = http.RedirectHandler("/mesh/", http.StatusFound)
	p.goServe("proxy locks", func() error {
		cache.WatchLocks(ctx, newLockWatcher(p, "proxy", ing.EnforceLocks).update)
		return nil
	})
	ln, err := net.Listen("tcp", cfg.Proxy.Listen)
	if err != nil {
		return fmt.Errorf("proxy listen (TCP %s): %w", cfg.Proxy.Listen, err)
	}
	if d := cfg.Proxy.Discovery; d.ProxyProtocol != "off" {
		lbs, _ := prefixes("load_balancers", d.LoadBalancers)
		if ln, err = realip.Listen(ln, realip.Config{Trusted: lbs, Required: d.ProxyProtocol == "required", Logger: p.log.With("component", "realip"), Metrics: p.reg}); err != nil {
			return err
		}
		p.log.Info("PROXY protocol on the proxy port", "mode", d.ProxyProtocol, "load_balancers", d.LoadBalancers)
	}
	p.goServe("proxy ingress", func() error { return ing.Serve(ln) })
	p.onShutdown(func(ctx context.Context) { ing.Shutdown(ctx) }) //nolint:errcheck
	p.goServe("presence", func() error {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			var rep authapi.PresenceReport
			rep.TTL = identity.Duration(30 * time.Second)
			for _, n := range tsrv.Nodes() {
				rep.Nodes = append(rep.Nodes, authapi.NodePresence{ID: n.ID, Labels: n.Labels, Since: n.ConnectedSince, DiagAddr: n.DiagAddr})
			}
			rep.Mesh = m.report(ing.Sessions())
			if rep.Mesh != nil {
				rep.Mesh.Drain = dr.Status()
				rep.Mesh.DiagAddr = cfg.DiagListen
			}
			m.setLoad(ing.Sessions())
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := upstream.ReportPresence(rctx, rep); err != nil && ctx.Err() == nil {
				p.log.Warn("report tunnels to auth", "err", err)
			}
			cancel()
			last := time.Now()
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			case <-presenceKick:
				// Coalesce bursts (a proxy restart brings back many tunnels).
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Until(last.Add(time.Second))):
				}
			}
		}
	})
	p.ready = append(p.ready, func() error {
		if st := dr.Status(); st != nil {
			return fmt.Errorf("proxy: draining (%s): %d sessions and %d tunnels left", st.Phase, st.Sessions, st.Tunnels)
		}
		select {
		case <-cache.Ready():
			return nil
		default:
			return errors.New("proxy: cache not yet synced with auth")
		}
	})
	p.log.Info("proxy listening", "proxy", cfg.Proxy.ID, "addr", ln.Addr(), "tunnels", udp.LocalAddr())
	return nil
}

func dnsOnly(hosts []string) (out []string) {
	for _, h := range hosts {
		if h != "" && net.ParseIP(h) == nil {
			out = append(out, h)
		}
	}
	return out
}

func ipsOnly(hosts []string) (out []string) {
	for _, h := range hosts {
		if net.ParseIP(h) != nil {
			out = append(out, h)
		}
	}
	return out
}

// loadOrJoin loads the identity in dir, or redeems token at addr (trusting
// the server by pin) and saves the result.
func loadOrJoin(ctx context.Context, log *slog.Logger, dir, addr, token, pin string, serverKind identity.Kind, req authapi.JoinRequest) (*creds.Identity, error) {
	id, err := creds.Load(dir)
	if err == nil {
		if id.Meta.Name != req.Name {
			return nil, fmt.Errorf("%s holds the identity of %s %s, not %s: use another data dir or remove it", dir, id.Meta.Kind, id.Meta.Name, req.Name)
		}
		if time.Now().After(id.Leaf.NotAfter) {
			return nil, fmt.Errorf("the certificate in %s expired %s ago: remove %s and join again with a new token", dir, identity.HumanDuration(time.Since(id.Leaf.NotAfter)), dir)
		}
		return id, nil
	}
	if !errors.Is(err, creds.ErrNotLoggedIn) {
		return nil, err
	}
	if token == "" {
		return nil, fmt.Errorf("%s has no identity yet: give a join token (--token) from jgctl tokens add", dir)
	}
	if pin == "" {
		return nil, errors.New("give the cluster's CA pin (--ca-pin sha256:...) with the join token: jgctl tokens add prints both")
	}
	k, err := creds.NewKeys()
	if err != nil {
		return nil, err
	}
	cl, err := authapi.NewClient(authapi.ClientConfig{Addr: addr, Trust: authapi.TrustConfig{CAPin: pin, Kinds: []identity.Kind{serverKind}}})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	req.Token, req.TLSPublic = token, k.TLSPublic()
	if req.Kind == identity.KindNode {
		req.SSHPublic = k.SSHPublic()
	}
	// A node or proxy often starts before the proxy or auth server it joins
	// through is up (a whole region booting): wait for it, rather than exit
	// and leave that to the service manager. Refusals are final.
	var c *authapi.Credentials
	wait, lastMsg := time.Second, ""
	for {
		c, err = cl.Join(ctx, req)
		if err == nil {
			break
		}
		if !joinRetryable(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("join cluster via %s: %w", addr, err)
		}
		if msg := err.Error(); msg != lastMsg {
			log.Warn("cannot reach the cluster to join; retrying", "addr", addr, "err", err)
			lastMsg = msg
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("join cluster via %s: %w", addr, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 15*time.Second)
	}
	if err := creds.Save(dir, k, c, creds.Meta{Kind: string(req.Kind), Proxy: addr, CAPin: pin}); err != nil {
		return nil, err
	}
	return creds.Load(dir)
}

// joinRetryable reports whether a failed join may succeed later: the server
// could not be reached, or said it is not ready. A refused token, a CA pin
// that does not match or a malformed request are final.
func joinRetryable(err error) bool {
	var api *authapi.APIError
	if errors.As(err, &api) {
		return api.Retryable()
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// --- node ------------------------------------------------------------------

func startNode(ctx context.Context, p *process, cfg Config) error {
	id, err := loadOrJoin(ctx, p.log, filepath.Join(cfg.DataDir, "node"), cfg.Node.Proxy, cfg.Node.Token, cfg.Node.CAPin, identity.KindProxy,
		authapi.JoinRequest{Kind: identity.KindNode, Name: cfg.Node.Name, Labels: cfg.Node.Labels})
	if err != nil {
		return err
	}
	jitter, renewAfter, err := renewKnobs()
	if err != nil {
		return err
	}
	is, err := loadedIssued(id, true)
	if err != nil {
		return err
	}
	live := newLiveCreds(is)
	cache := authapi.NewHub()
	trust := &serverTrust{creds: live, hub: cache}
	proxyClient := func(addr string, more ...string) (*authapi.Client, error) {
		return authapi.NewClient(authapi.ClientConfig{Addr: addr, Addrs: more, Trust: authapi.TrustConfig{RootCAs: trust.Pool, Kinds: []identity.Kind{identity.KindProxy}},
			GetClientCertificate: live.GetClientCertificate})
	}
	// Renewals go through the configured proxies, the first that answers.
	renewVia, err := proxyClient(cfg.Node.Proxies[0], cfg.Node.Proxies[1:]...)
	if err != nil {
		return err
	}
	rn := &renewer{kind: "node", creds: live, hub: cache, loaded: true, jitter: jitter, after: renewAfter,
		reissue: savedRenewal(id.Dir, id.Meta, true, false, authapi.RenewRequest{}, renewVia.Renew),
		log:     p.log.With("component", "renew"), metrics: newRenewMetrics(p.reg)}
	p.goServe("node renewal", func() error { rn.run(ctx); return nil })
	var clients []*authapi.Client
	for _, addr := range cfg.Node.Proxies {
		cl, err := proxyClient(addr)
		if err != nil {
			return err
		}
		clients = append(clients, cl)
	}
	// The cache follows one proxy's watch stream; when it breaks, the next
	// attempt goes to the next proxy, so losing a proxy does not freeze the
	// node's view of roles and CAs.
	var next atomic.Uint32
	openWatch := func(ctx context.Context, since uint64) (*http.Response, error) {
		i := int(next.Add(1)-1) % len(clients)
		resp, err := clients[i].OpenWatchFrom(ctx, since)
		if err != nil {
			return nil, fmt.Errorf("watch via proxy %s: %w", cfg.Node.Proxies[i], err)
		}
		next.Add(^uint32(0)) // stay on the proxy that answered
		return resp, nil
	}
	p.goServe("node cache", func() error {
		authapi.Follow(ctx, cache, openWatch, func(err error) {
			if err != nil {
				p.log.Warn("watch stream from proxy broke; retrying", "err", err)
			} else {
				p.log.Info("node cache in sync")
			}
		})
		return nil
	})
	// A process that is proxy and node too reports its proxy's cache.
	p.watchLagOnce.Do(func() { watchLag(p.reg, cache) })
	labels := cfg.Node.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	// Roles are evaluated against the node's labels in the cluster's
	// inventory, as the proxies evaluate them: those include the join
	// token's labels and later `jgctl nodes` changes, which the node's own
	// configuration does not know.
	accessLabels := func() map[string]string {
		if n, ok := cache.Node(id.Meta.Name); ok && n.Labels != nil {
			return n.Labels
		}
		return labels
	}
	var recs *recording.Store
	up := &uploader{log: p.log.With("component", "recordings"), send: renewVia.UploadRecording, wake: make(chan struct{}, 1)}
	if cfg.Node.Recording != "off" {
		up.dir, up.keep = filepath.Join(cfg.DataDir, "recordings"), cfg.Node.RecordingKeep
		if recs, err = recording.OpenStore(up.dir); err != nil {
			return fmt.Errorf("session recordings: %w", err)
		}
		up.store = recs
		if up.metrics, err = newUploadMetrics(p.reg); err != nil {
			return err
		}
		p.goServe("recording uploads", func() error { up.run(ctx); return nil })
	}
	srv, err := sshd.New(sshd.Config{
		NodeID: id.Meta.Name, ClusterName: id.Meta.Cluster,
		HostSigner: live.HostSigner,
		UserCAs:    cache.UserCAs,
		Authorize: func(user identity.Identity, login string) error {
			if err := identity.CheckLogin(user, cache.Role, id.Meta.Name, accessLabels(), login); err != nil {
				return err
			}
			return checkNodeLocks(cache, cfg.Node, identity.LockTarget{User: user.Name, Roles: user.Roles, Node: id.Meta.Name, Login: login}, time.Now())
		},
		Policy: func(user identity.Identity) identity.SessionPolicy {
			return identity.Policy(user, cache.Role, accessLabels())
		},
		Recordings: recs, OnRecording: up.kick, RecordingLimit: cfg.Node.RecordingLimit,
		Audit: p.audit, Logger: p.log.With("component", "sshd"), Metrics: p.reg,
	})
	if err != nil {
		return err
	}
	p.goServe("node locks", func() error {
		cache.WatchLocks(ctx, newLockWatcher(p, "node", srv.EnforceLocks).update)
		return nil
	})
	ag, err := agent.New(agent.Config{
		ProxyAddrs: cfg.Node.Proxies, NodeID: id.Meta.Name, ClusterName: id.Meta.Cluster, DiagAddr: cfg.DiagListen,
		Labels:               func() map[string]string { return labels },
		GetClientCertificate: live.GetClientCertificate, RootCAs: trust.Pool,
		Discover:        nodeDiscovery(cfg.Node.Proxies, func(addr string) (*authapi.Client, error) { return proxyClient(addr) }),
		ConnectionCount: cfg.Node.ConnectionCount,
		Transport:       cfg.Node.TunnelTransport,
		MaxIdleTimeout:  cfg.Node.TunnelIdleTimeout, KeepAlivePeriod: cfg.Node.TunnelIdleTimeout / 3,
		Logger: p.log.With("component", "agent"), Metrics: p.reg,
	})
	if err != nil {
		return err
	}
	p.goServe("node agent", func() error {
		// Serve users only once the node knows the roles and CAs.
		select {
		case <-ctx.Done():
			return nil
		case <-cache.Ready():
		}
		return ag.Run(ctx)
	})
	// Sessions run over the resumable stream (tunnel/resume) when the
	// client speaks it: a client whose proxy drains or dies reconnects
	// through another and the same SSH connection goes on. Plain SSH
	// streams (older clients) pass through unchanged.
	rl, err := resume.NewListener(ag, resume.ServerConfig{
		Window: cfg.Node.ResumeWindow,
		// Resumption must come from the user the proxy authenticated for
		// the session's first dial.
		User: func(c net.Conn) string {
			if ac, ok := c.(*agent.Conn); ok {
				return ac.DialRequest().User
			}
			return ""
		},
		Logger: p.log.With("component", "resume"), Metrics: p.reg,
	})
	if err != nil {
		return err
	}
	p.goServe("node sshd", func() error { return srv.Serve(rl) })
	if cfg.Node.BenchSSHListen != "" {
		ln, err := net.Listen("tcp", cfg.Node.BenchSSHListen)
		if err != nil {
			return fmt.Errorf("node bench_ssh_listen: %w", err)
		}
		p.log.Warn("node SSH server also listening directly, bypassing the tunnel (benchmarks only)", "addr", ln.Addr())
		p.goServe("node bench sshd", func() error {
			select {
			case <-ctx.Done():
				ln.Close()
				return nil
			case <-cache.Ready():
			}
			return srv.Serve(ln)
		})
	}
	p.onShutdown(func(ctx context.Context) {
		srv.Shutdown(ctx) //nolint:errcheck
		ag.Close()
	})
	p.ready = append(p.ready, func() error {
		for _, st := range ag.Status() {
			if st.State == agent.StateConnected {
				return nil
			}
		}
		return errors.New("node: no tunnel connected")
	})
	p.log.Info("node started", "node", id.Meta.Name, "proxies", cfg.Node.Proxies, "labels", labels, "tunnel_transport", cfg.Node.TunnelTransport)
	return nil
}

// nodeDiscovery returns the agent's Discover: ask the proxies, configured
// ones first and then those learnt from earlier answers, for the live
// proxies of the mesh, and return the first answer.
func nodeDiscovery(seeds []string, newClient func(addr string) (*authapi.Client, error)) func(ctx context.Context) ([]agent.Candidate, error) {
	var mu sync.Mutex // guards following
	known := append([]string(nil), seeds...)
	clients := map[string]*authapi.Client{}
	lastGood := ""
	return func(ctx context.Context) ([]agent.Candidate, error) {
		mu.Lock()
		// The proxy that answered last first: after a region dies, the
		// seeds may be the ones that time out.
		addrs := []string{}
		if lastGood != "" {
			addrs = append(addrs, lastGood)
		}
		for _, a := range known {
			if a != lastGood {
				addrs = append(addrs, a)
			}
		}
		mu.Unlock()
		var errs []error
		for _, addr := range addrs {
			mu.Lock()
			cl := clients[addr]
			mu.Unlock()
			if cl == nil {
				c, err := newClient(addr)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				mu.Lock()
				clients[addr] = c
				mu.Unlock()
				cl = c
			}
			// A short timeout each, so that a few silent proxies do not use
			// up the agent's whole discovery budget.
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ps, err := cl.MeshProxies(qctx)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("ask proxy %s: %w", addr, err))
				continue
			}
			var out []agent.Candidate
			mu.Lock()
			lastGood = addr
			for _, mp := range ps {
				out = append(out, agent.Candidate{ID: mp.ID, Addr: mp.PublicAddr, Draining: mp.State == "draining"})
				if !slices.Contains(known, mp.PublicAddr) && len(known) < 64 {
					known = append(known, mp.PublicAddr)
				}
			}
			mu.Unlock()
			return out, nil
		}
		return nil, fmt.Errorf("no proxy answered: %w", errors.Join(errs...))
	}
}

// --- diagnostics -------------------------------------------------------------

func startDiag(p *process, addr string, withPprof bool) error {
	mux := http.NewServeMux()
	if withPprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg}))
	for pattern, h := range p.diag {
		mux.Handle(pattern, h)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		for _, check := range p.ready {
			if err := check(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("diag listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	p.goServe("diag", func() error { return srv.Serve(ln) })
	p.onShutdown(func(ctx context.Context) { srv.Shutdown(ctx) }) //nolint:errcheck
	p.log.Info("diagnostics listening", "addr", ln.Addr())
	return nil
}
