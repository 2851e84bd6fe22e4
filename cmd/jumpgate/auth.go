package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/raftnode"
	"jumpgate.dev/jumpgate/auth/state"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
	"jumpgate.dev/jumpgate/node/recording"
)

// Files an auth server keeps beside raft's, so that it can talk to the
// other auth servers before its state machine has replayed the log (after
// a restart of the whole cluster, nobody can replay without the others):
const (
	// ownCAFile: this server's self-signed TLS CA certificate (public),
	// of the key generation in ownGenFile (absent: 0).
	ownCAFile  = "tls-ca.pem"
	ownGenFile = "ca-generation"
	// trustedCAFile: the cluster's trusted TLS CAs, rewritten on change.
	trustedCAFile = "trusted-tls-ca.pem"
	// joinedDir: the identity a joining server got from the cluster.
	joinedDir = "identity"
)

// authServer is the running auth role.
type authServer struct {
	cfg   Config
	dir   string
	ks    keystore.Keystore
	curA  atomic.Pointer[ca.Authority] // keys of the generation in force
	nextA atomic.Pointer[ca.Authority] // keys made for a rotation under way
	// caMetrics is shared by every Authority this server makes.
	caMetrics *ca.Metrics
	store     *state.Store
	hub       *authapi.Hub
	rn        *raftnode.Node
	api       *authapi.Server
	cert      atomic.Pointer[tls.Certificate]
	backend   string // keystore backend
	adminDir  string
	// renewAfter (JUMPGATE_RENEW_AFTER): renew own certificate this long
	// after issue instead of at two thirds of its life.
	renewAfter time.Duration
	rotMu      sync.Mutex // serializes reconcileRotation; guards lastPhase
	lastPhase  string
	// joinPool: the cluster's TLS CAs as the join answer gave them, for
	// talking to the others before this server has the state.
	joinPool atomic.Pointer[x509.CertPool]
	log      *slog.Logger
	// expiry is jumpgate_cert_expiry_timestamp_seconds, shared with a
	// proxy or node renewer in the same process (kinds auth and tls_ca).
	expiry *prometheus.GaugeVec
}

// updateCertExpiry reports when this server's own TLS certificate
// expires (kind auth) and the soonest expiry among the cluster's trusted
// TLS CA certificates (kind tls_ca): an auth server whose renewal keeps
// failing, or a CA nobody rotated, shows before it stops the cluster.
func (a *authServer) updateCertExpiry() {
	if c := a.cert.Load(); c != nil && len(c.Certificate) > 0 {
		leaf := c.Leaf
		if leaf == nil {
			leaf, _ = x509.ParseCertificate(c.Certificate[0])
		}
		if leaf != nil {
			a.expiry.WithLabelValues("auth").Set(float64(leaf.NotAfter.Unix()))
		}
	}
	var soonest time.Time
	for _, der := range a.store.CAs().TLS {
		if c, err := x509.ParseCertificate(der); err == nil && (soonest.IsZero() || c.NotAfter.Before(soonest)) {
			soonest = c.NotAfter
		}
	}
	if !soonest.IsZero() {
		a.expiry.WithLabelValues("tls_ca").Set(float64(soonest.Unix()))
	}
}

// trusted reports whether the cluster trusts this server's CA keys.
func (a *authServer) trusted() bool {
	cas := a.store.CAs()
	for _, der := range cas.TLS {
		if bytes.Equal(der, a.cur().TLSCACert()) {
			return true
		}
	}
	return false
}

// roots is the cluster's TLS CA pool: from state once it is there, else
// from the copy on disk.
func (a *authServer) roots() *x509.CertPool {
	if cas := a.store.CAs().TLS; len(cas) > 0 {
		pool := x509.NewCertPool()
		for _, der := range cas {
			if c, err := x509.ParseCertificate(der); err == nil {
				pool.AddCert(c)
			}
		}
		return pool
	}
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(filepath.Join(a.dir, trustedCAFile)); err == nil && pool.AppendCertsFromPEM(b) {
		return pool
	}
	if jp := a.joinPool.Load(); jp != nil {
		return jp
	}
	if own := a.cur(); own != nil {
		c, _ := x509.ParseCertificate(own.TLSCACert())
		pool.AddCert(c)
	}
	return pool
}

func (a *authServer) getCert() (*tls.Certificate, error) {
	if c := a.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("this auth server has no certificate yet")
}

// saveTrusted writes the trusted TLS CAs to disk when they change.
func (a *authServer) saveTrusted() {
	cas := a.store.CAs().TLS
	if len(cas) == 0 {
		return
	}
	var buf bytes.Buffer
	for _, der := range cas {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der}) //nolint:errcheck // bytes.Buffer
	}
	path := filepath.Join(a.dir, trustedCAFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, buf.Bytes()) {
		return
	}
	if err := writeFileAtomic(path, buf.Bytes(), 0o600); err != nil {
		a.log.Error("save trusted TLS CAs", "err", err)
	}
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func startAuth(ctx context.Context, p *process, cfg Config) (*ca.Authority, error) {
	a := &authServer{cfg: cfg, dir: filepath.Join(cfg.DataDir, "auth"), log: p.log.With("auth_server", cfg.Auth.ID), expiry: newRenewMetrics(p.reg).expiry}
	var err error
	if a.caMetrics, err = ca.NewMetrics(p.reg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return nil, err
	}
	sso, err := ssoConfig(cfg.Auth.OIDC)
	if err != nil {
		return nil, err
	}
	ks, err := openKeystore(p, cfg, a.dir)
	if err != nil {
		return nil, err
	}
	a.backend, a.ks = ks.Backend(), ks
	a.hub = authapi.NewHub()
	a.store = state.New(authapi.PublishState(a.hub, func() *state.Store { return a.store }))

	// With our own TLS CA certificate on disk, the authority (and so our
	// certificates) exist before raft starts: a restarted cluster can
	// elect a leader before anyone has replayed the log.
	joining := cfg.Auth.JoinAddr != ""
	if b, err := os.ReadFile(filepath.Join(a.dir, ownCAFile)); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: not a PEM certificate", filepath.Join(a.dir, ownCAFile))
		}
		gen := 0
		if g, err := os.ReadFile(filepath.Join(a.dir, ownGenFile)); err == nil {
			if gen, err = strconv.Atoi(strings.TrimSpace(string(g))); err != nil {
				return nil, fmt.Errorf("%s: %w", filepath.Join(a.dir, ownGenFile), err)
			}
		}
		au, err := ca.New(ca.Config{ClusterName: cfg.Auth.ClusterName, Keystore: ks, TLSCACert: blk.Bytes, Generation: gen, Metrics: a.caMetrics})
		if err != nil {
			return nil, err
		}
		a.curA.Store(au)
	} else if joining {
		// A new server: its own keys and CA. The cluster trusts them from
		// the join on; it signs server certificates once a CA rotation
		// has given every client its keys.
		au, err := ca.New(ca.Config{ClusterName: cfg.Auth.ClusterName, Keystore: ks, Metrics: a.caMetrics})
		if err != nil {
			return nil, err
		}
		a.curA.Store(au)
		if err := a.saveOwnCA(); err != nil {
			return nil, err
		}
	}

	var fwd func(ctx context.Context, leader string, cmd []byte) (uint64, error)
	rn, err := raftnode.Open(raftnode.Config{
		ID: cfg.Auth.ID, Dir: filepath.Join(a.dir, "raft"), Store: a.store, Logger: p.log, Metrics: p.reg,
		BindAddr: cfg.Auth.RaftListen, Advertise: cfg.Auth.RaftAdvertise,
		Bootstrap: !joining,
		TLS:       &raftnode.TLS{Cluster: cfg.Auth.ClusterName, Certificate: a.getCert, RootCAs: a.roots},
		Forward: func(ctx context.Context, leader string, cmd []byte) (uint64, error) {
			if fwd == nil {
				return 0, &raftnode.RetryableError{Err: errors.New("this auth server is still starting")}
			}
			return fwd(ctx, leader, cmd)
		},
	})
	if err != nil {
		return nil, err
	}
	a.rn = rn
	p.onShutdown(func(context.Context) { rn.Close() })

	// A joined server uses the certificate the cluster issued it (its
	// own keys may not be trusted); the others sign their own.
	if a.cur() != nil && !joining {
		if err := a.issueOwnCert(); err != nil {
			return nil, err
		}
	}
	if joining {
		if err := a.join(ctx, p); err != nil {
			return nil, err
		}
	} else if err := a.bootstrap(p, ks); err != nil {
		return nil, err
	}
	a.saveTrusted()

	recs, err := recording.OpenStore(filepath.Join(a.dir, "recordings"))
	if err != nil {
		return nil, fmt.Errorf("session recordings: %w", err)
	}
	api, err := authapi.NewServer(authapi.ServerConfig{
		Recordings: recs,
		DiagAddr:   cfg.DiagListen,
		ID:         cfg.Auth.ID, Store: a.store, Hub: a.hub, Apply: rn.Apply, Raft: rn,
		RaftStats: func() any { return rn.Stats() }, CA: a.cur(), Signer: a.signer, Audit: p.audit, Logger: p.log,
		Version: version, UserCertTTL: cfg.Auth.UserCertTTL, Keystore: ks.Backend(),
		OnRotate: func() { a.reconcileRotation() }, SSO: sso,
		PeerClient: func(addr string) (*authapi.Client, error) {
			return authapi.NewClient(authapi.ClientConfig{Addr: addr, Timeout: 10 * time.Second,
				Trust:                authapi.TrustConfig{RootCAs: a.roots, Kinds: []identity.Kind{identity.KindAuth}},
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.getCert() }})
		},
	})
	if err != nil {
		return nil, err
	}
	a.api = api
	fwd = api.ForwardApply
	_ = a.hub.Apply(authapi.SnapshotMessage(a.store))

	ln, err := net.Listen("tcp", cfg.Auth.Listen)
	if err != nil {
		return nil, fmt.Errorf("auth listen: %w", err)
	}
	srv := &http.Server{Handler: api, TLSConfig: authapi.TLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return a.getCert() }, a.roots),
		ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)}
	p.goServe("auth API", func() error { return srv.ServeTLS(ln, "", "") })
	p.onShutdown(func(ctx context.Context) { srv.Shutdown(ctx) }) //nolint:errcheck

	// Keep the registry's entry for this server current: the other
	// servers find its API (for forwarded writes, should it lead) there.
	if err := a.register(ctx); err != nil {
		return nil, err
	}
	if err := a.promoteSelf(ctx); err != nil {
		return nil, err
	}
	adminDir := filepath.Join(cfg.DataDir, "admin")
	a.adminDir = adminDir
	a.lastPhase = a.store.Rotation().Phase
	a.reconcileRotation()
	p.goServe("auth CA rotation", func() error { a.rotationLoop(ctx); return nil })
	if a.trusted() {
		if err := writeAdminIdentity(a.signer(false), a.store.Cluster(), adminDir, a.store.CAs().TLS); err != nil {
			return nil, err
		}
	}
	p.goServe("auth upkeep", func() error { a.upkeep(ctx, adminDir); return nil })
	p.goServe("access request sweeper", func() error { api.SweepRequests(ctx, 15*time.Second); return nil })
	if r := cfg.Auth.RecordingRetention; r > 0 {
		p.goServe("recording retention", func() error { api.KeepRecordings(ctx, r); return nil })
	}
	p.ready = append(p.ready, func() error {
		if id, _ := rn.Leader(); id == "" {
			return errors.New("auth: raft has no leader")
		}
		return nil
	})
	p.log.Info("auth server listening", "addr", ln.Addr(), "raft", rn.Addr(), "auth_server", cfg.Auth.ID, "cluster", a.store.Cluster(), "signs", a.trusted(), "admin_identity", adminDir)
	if s, ok := a.store.AuthServer(cfg.Auth.ID); !a.trusted() || !ok || !s.SignsServerCerts {
		// The proxy role in this process then joins like any other: it
		// must not get a certificate that clients cannot check.
		return nil, nil
	}
	return a.signer(true), nil
}

// ssoConfig turns auth.oidc into the API server's SSO config, reading the
// client secret (nil: no SSO).
func ssoConfig(o *OIDCConfig) (*authapi.SSOConfig, error) {
	if o == nil {
		return nil, nil
	}
	secret, err := keystore.LoadSecret(o.ClientSecretFile, "")
	if err != nil {
		return nil, fmt.Errorf("auth.oidc: client secret: %w", err)
	}
	c := &authapi.SSOConfig{Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret, Scopes: o.Scopes,
		UsernameClaim: o.UsernameClaim, GroupsClaim: o.GroupsClaim, MaxTTL: o.MaxTTL}
	for _, m := range o.Roles {
		c.Roles = append(c.Roles, authapi.SSORoleMapping{Group: m.Group, Roles: m.Roles})
	}
	return c, nil
}

func (a *authServer) saveOwnCA() error {
	cur := a.cur()
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cur.TLSCACert()})
	if err := writeFileAtomic(filepath.Join(a.dir, ownCAFile), b, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(a.dir, ownGenFile), []byte(strconv.Itoa(cur.Generation())+"\n"), 0o600)
}

// certHosts are the names and addresses in this server's certificate.
func (a *authServer) certHosts() []string {
	hosts := []string{"localhost"}
	for _, hp := range []string{a.cfg.Auth.Listen, a.cfg.Auth.AdvertiseAddr, a.cfg.Auth.RaftListen, a.cfg.Auth.RaftAdvertise} {
		if h, _, err := net.SplitHostPort(hp); err == nil && h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// issueOwnCert signs this server's certificate with its own key; only
// for a server whose keys the cluster trusts (or is about to: bootstrap).
func (a *authServer) issueOwnCert() error {
	c, err := newServerCert(a.signer(true), identity.Identity{Kind: identity.KindAuth, Name: a.cfg.Auth.ID, Cluster: a.cfg.Auth.ClusterName}, a.certHosts(), 30*24*time.Hour)
	if err != nil {
		return err
	}
	a.cert.Store(c)
	return nil
}

// bootstrap brings up the first server of a cluster (or restarts any
// server of an existing one).
func (a *authServer) bootstrap(p *process, ks keystore.Keystore) error {
	if err := a.rn.WaitLeader(60 * time.Second); err != nil {
		return fmt.Errorf("%w: are enough auth servers (a majority of the voters) running?", err)
	}
	if a.rn.IsLeader() {
		if err := a.rn.Barrier(15 * time.Second); err != nil {
			return err
		}
	} else if err := a.waitState(60 * time.Second); err != nil {
		return err
	}
	cfg := a.cfg
	if a.store.Cluster() == "" {
		if a.cur() == nil {
			au, err := ca.New(ca.Config{ClusterName: cfg.Auth.ClusterName, Keystore: ks, Metrics: a.caMetrics})
			if err != nil {
				return err
			}
			a.curA.Store(au)
		}
		cur := a.cur()
		cas := state.CAs{
			UserSSH: []string{string(ssh.MarshalAuthorizedKey(cur.UserCAPublic()))},
			HostSSH: []string{string(ssh.MarshalAuthorizedKey(cur.HostCAPublic()))},
			TLS:     [][]byte{cur.TLSCACert()},
		}
		cmd, _ := state.Encode(state.TypeBootstrap, state.Bootstrap{Cluster: cfg.Auth.ClusterName, CAs: cas})
		if _, err := a.rn.Apply(cmd); err != nil {
			return fmt.Errorf("bootstrap cluster: %w", err)
		}
		p.log.Info("created cluster", "cluster", cfg.Auth.ClusterName)
	} else {
		if a.store.Cluster() != cfg.Auth.ClusterName {
			return fmt.Errorf("data dir %s belongs to cluster %s, not %s", cfg.DataDir, a.store.Cluster(), cfg.Auth.ClusterName)
		}
		if a.cur() == nil {
			// A data dir from before auth HA: find our TLS CA in state.
			var lastErr error
			for _, der := range a.store.CAs().TLS {
				au, err := ca.New(ca.Config{ClusterName: a.store.Cluster(), Keystore: ks, TLSCACert: der, Metrics: a.caMetrics})
				if err == nil {
					a.curA.Store(au)
					break
				}
				lastErr = err
			}
			if a.cur() == nil {
				return lastErr
			}
		}
	}
	if err := a.saveOwnCA(); err != nil {
		return err
	}
	if a.cert.Load() == nil {
		if err := a.issueOwnCert(); err != nil {
			return err
		}
	}
	if len(a.store.MeshKeys()) == 0 {
		// Proxies encrypt their gossip with this key (they fetch it from
		// auth); clusters created before the mesh get one on upgrade.
		key := make([]byte, state.MeshKeyBytes)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		cmd, _ := state.Encode(state.TypeSetMeshKeys, state.SetMeshKeys{Keys: [][]byte{key}})
		if _, err := a.rn.Apply(cmd); err != nil {
			return fmt.Errorf("create mesh gossip key: %w", err)
		}
		p.log.Info("created the mesh gossip key")
	}
	return nil
}

// waitState waits until this follower has the cluster's state.
func (a *authServer) waitState(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for a.store.Cluster() == "" {
		if time.Now().After(deadline) {
			return fmt.Errorf("no state replicated from the leader after %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// join adds a new auth server to an existing cluster: it redeems the
// token from `jgctl auth add` (which says whether it joins as a voter),
// and the leader adds it to raft; then it waits for the log.
func (a *authServer) join(ctx context.Context, p *process) error {
	cfg := a.cfg
	raftAddr := a.rn.Addr()
	req := authapi.JoinRequest{Kind: identity.KindAuth, Name: cfg.Auth.ID, DNSNames: dnsOnly(a.certHosts()), IPs: ipsOnly(a.certHosts()),
		Auth: &authapi.AuthJoin{APIAddr: cfg.Auth.AdvertiseAddr, RaftAddr: raftAddr, Region: cfg.Auth.Region,
			Keys: state.ServerKeys{
				UserSSH: string(ssh.MarshalAuthorizedKey(a.cur().UserCAPublic())),
				HostSSH: string(ssh.MarshalAuthorizedKey(a.cur().HostCAPublic())),
				TLS:     a.cur().TLSCACert(),
			}}}
	id, err := loadOrJoin(ctx, p.log, filepath.Join(a.dir, joinedDir), cfg.Auth.JoinAddr, cfg.Auth.Token, cfg.Auth.CAPin, identity.KindAuth, req)
	if err != nil {
		return err
	}
	if err := id.WithChain(); err != nil {
		return err
	}
	a.joinPool.Store(id.RootCAs())
	a.cert.Store(&id.TLS)
	if err := a.waitState(2 * time.Minute); err != nil {
		return fmt.Errorf("joined as %s, but: %w", cfg.Auth.ID, err)
	}
	if a.store.Cluster() != cfg.Auth.ClusterName {
		return fmt.Errorf("joined cluster %s, but this server is configured for %s", a.store.Cluster(), cfg.Auth.ClusterName)
	}
	return nil
}

// register keeps this server's entry in the auth server registry current
// (addresses change across restarts).
func (a *authServer) register(ctx context.Context) error {
	want := state.AuthServer{ID: a.cfg.Auth.ID, APIAddr: a.cfg.Auth.AdvertiseAddr, RaftAddr: a.rn.Addr(), Region: a.cfg.Auth.Region,
		Keys: serverKeys(a.cur()), Generation: a.cur().Generation(), Backend: a.backend}
	if cur, ok := a.store.AuthServer(want.ID); ok {
		want.Voter, want.NextKeys = cur.Voter, cur.NextKeys
	}
	// The server that created the cluster signs server certificates; one
	// that joined keeps what the cluster says (see state.AuthServer).
	_, err := os.Stat(filepath.Join(a.dir, joinedDir))
	want.SignsServerCerts = errors.Is(err, os.ErrNotExist)
	if cur, ok := a.store.AuthServer(want.ID); ok {
		want.Joined = cur.Joined
		want.SignsServerCerts = want.SignsServerCerts || cur.SignsServerCerts
		if cur.APIAddr == want.APIAddr && cur.RaftAddr == want.RaftAddr && cur.Region == want.Region && bytes.Equal(cur.Keys.TLS, want.Keys.TLS) && cur.Keys.UserSSH == want.Keys.UserSSH && cur.Backend == want.Backend && cur.SignsServerCerts == want.SignsServerCerts {
			return nil
		}
	} else {
		want.Joined = time.Now().UTC()
	}
	cmd, _ := state.Encode(state.TypeUpsertAuthServer, state.UpsertAuthServer{Server: want})
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if _, err = a.rn.Apply(cmd); err == nil {
			return nil
		}
		var re *raftnode.RetryableError
		if !errors.As(err, &re) {
			return fmt.Errorf("register auth server %s: %w", want.ID, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// cur is the authority of the key generation in force for this server.
func (a *authServer) cur() *ca.Authority { return a.curA.Load() }

// signer is the authority to sign user certificates (server false) or
// node, proxy and auth certificates (server true) with, by the CA
// rotation's phase: the new keys sign user certificates from
// update_clients on and the others from update_servers on.
func (a *authServer) signer(server bool) *ca.Authority {
	next := a.nextA.Load()
	if next == nil {
		return a.cur()
	}
	switch a.store.Rotation().Phase {
	case state.PhaseUpdateServers:
		return next
	case state.PhaseUpdateClients:
		if !server {
			return next
		}
	}
	return a.cur()
}

func serverKeys(au *ca.Authority) state.ServerKeys {
	return state.ServerKeys{
		UserSSH: string(ssh.MarshalAuthorizedKey(au.UserCAPublic())),
		HostSSH: string(ssh.MarshalAuthorizedKey(au.HostCAPublic())),
		TLS:     au.TLSCACert(),
	}
}

// promoteSelf: a server added as a voter joined as a non-voter; now that
// it has the state, it asks the leader to promote it (retrying while
// there is no leader).
func (a *authServer) promoteSelf(ctx context.Context) error {
	var err error
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if err = a.api.PromoteSelf(ctx); err == nil {
			return nil
		}
		var re *raftnode.RetryableError
		if !errors.As(err, &re) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// upkeep renews this server's certificate (when it signs its own) and the
// local admin identity, and keeps the trusted CAs on disk current.
func (a *authServer) upkeep(ctx context.Context, adminDir string) {
	every := 6 * time.Hour
	if _, after, err := renewKnobs(); err == nil && after > 0 {
		// JUMPGATE_RENEW_AFTER (tests, operations): renew that long after
		// the certificate was issued, and check often enough to.
		a.renewAfter = after
		every = max(after/2, time.Second)
	}
	renew := time.NewTicker(every)
	defer renew.Stop()
	save := time.NewTicker(10 * time.Second)
	defer save.Stop()
	a.updateCertExpiry()
	for {
		select {
		case <-ctx.Done():
			return
		case <-save.C:
			a.saveTrusted()
			a.updateCertExpiry()
		case <-renew.C:
			if !a.trusted() {
				continue
			}
			if err := a.renewOwnCert(ctx); err != nil {
				a.log.Error("renew auth server certificate", "err", err)
			}
			if err := writeAdminIdentity(a.signer(false), a.store.Cluster(), adminDir, a.store.CAs().TLS); err != nil {
				a.log.Error("renew admin identity", "err", err)
			}
		}
	}
}

// renewOwnCert renews this server's certificate: with its own keys when
// it signs server certificates, else (a server that joined and has seen
// no CA rotation yet) from a peer that does, once two thirds of the
// certificate's lifetime have passed.
func (a *authServer) renewOwnCert(ctx context.Context) error {
	if me, ok := a.store.AuthServer(a.cfg.Auth.ID); ok && me.SignsServerCerts {
		return a.issueOwnCert()
	}
	cur := a.cert.Load()
	if cur == nil || cur.Leaf == nil {
		return errors.New("no current certificate to renew")
	}
	life := cur.Leaf.NotAfter.Sub(cur.Leaf.NotBefore)
	due := cur.Leaf.NotAfter.Add(-life / 3)
	if a.renewAfter > 0 {
		due = cur.Leaf.NotBefore.Add(a.renewAfter)
	}
	if time.Now().Before(due) {
		return nil
	}
	k, err := creds.NewKeys()
	if err != nil {
		return err
	}
	req := authapi.RenewRequest{TLSPublic: k.TLSPublic(), DNSNames: dnsOnly(a.certHosts()), IPs: ipsOnly(a.certHosts())}
	var lastErr error
	for _, peer := range a.store.AuthServers() {
		if peer.ID == a.cfg.Auth.ID || !peer.SignsServerCerts {
			continue
		}
		c, err := a.api.PeerClientFor(peer.APIAddr)
		if err != nil {
			lastErr = err
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		got, err := c.Renew(rctx, req)
		cancel()
		if err != nil {
			lastErr = fmt.Errorf("renew at %s: %w", peer.ID, err)
			continue
		}
		dir := filepath.Join(a.dir, joinedDir)
		old, err := creds.Load(dir)
		if err != nil {
			return err
		}
		if err := creds.Save(dir, k, got, old.Meta); err != nil {
			return err
		}
		id, err := creds.Load(dir)
		if err != nil {
			return err
		}
		if err := id.WithChain(); err != nil {
			return err
		}
		a.cert.Store(&id.TLS)
		a.log.Info("renewed this auth server's certificate", "from", peer.ID, "until", id.Leaf.NotAfter)
		return nil
	}
	if lastErr == nil {
		lastErr = errors.New("no auth server that signs server certificates is registered: run a CA rotation (jgctl ca rotate), after which this server signs its own")
	}
	return lastErr
}

// openKeystore opens the CA keystore.
func openKeystore(p *process, cfg Config, dir string) (keystore.Keystore, error) {
	if k := cfg.Auth.Keystore; k.Backend == "pkcs11" {
		pin, err := keystore.LoadSecret(k.PINFile, k.PINEnv)
		if err != nil {
			return nil, fmt.Errorf("auth.keystore: HSM PIN: %w", err)
		}
		ks, err := keystore.NewPKCS11(keystore.PKCS11Config{Module: k.Module, TokenLabel: k.TokenLabel, PIN: pin, KeyLabelPrefix: k.KeyLabelPrefix})
		if err != nil {
			return nil, err
		}
		p.onShutdown(func(context.Context) { ks.Close() }) //nolint:errcheck
		p.log.Info("CA keys are in an HSM", "module", k.Module, "token", k.TokenLabel)
		return ks, nil
	}
	passFile := cfg.Auth.KeystorePassphraseFile
	if passFile == "" {
		passFile = filepath.Join(dir, "keystore.pass")
	}
	pass, created, err := keystore.LoadOrCreatePassphrase(passFile)
	if err != nil {
		return nil, err
	}
	if created {
		p.log.Warn("created a keystore passphrase next to the keys; for production keep it elsewhere (auth.keystore_passphrase_file) or use an HSM", "file", passFile)
	}
	return keystore.NewSoftware(keystore.SoftwareConfig{Dir: filepath.Join(dir, "keys"), Passphrase: pass})
}

// rotationLoop keeps this server's keys in line with the CA rotation:
// on every change of the CAs or the auth server registry, and every 5 s.
func (a *authServer) rotationLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for ctx.Err() == nil {
		ch, cancel := a.hub.Subscribe()
	inner:
		for {
			select {
			case <-ctx.Done():
				cancel()
				return
			case <-t.C:
				a.reconcileRotation()
			case m, ok := <-ch:
				if !ok {
					break inner
				}
				if m.Type == "snapshot" || (m.Event != nil && (m.Event.Kind == state.KindCAs || m.Event.Kind == state.KindAuthServer)) {
					a.reconcileRotation()
				}
			}
		}
		cancel()
	}
}

// reconcileRotation makes this server's keys follow the rotation: in init
// it makes and publishes its keys of the next generation; when the
// rotation completes it switches to them; on every phase change it
// reissues its own certificate and the local admin identity with the
// keys the phase says.
func (a *authServer) reconcileRotation() {
	a.rotMu.Lock()
	defer a.rotMu.Unlock()
	me, ok := a.store.AuthServer(a.cfg.Auth.ID)
	if !ok || a.cur() == nil {
		return
	}
	r := a.store.Rotation()
	if me.Generation != a.cur().Generation() && len(me.Keys.TLS) > 0 {
		// The rotation completed: the keys of me.Generation are in force.
		next := a.nextA.Load()
		if next == nil || next.Generation() != me.Generation {
			var err error
			if next, err = ca.New(ca.Config{ClusterName: a.cfg.Auth.ClusterName, Keystore: a.ks, TLSCACert: me.Keys.TLS, Generation: me.Generation, Metrics: a.caMetrics}); err != nil {
				a.log.Error("CA rotation: load this server's keys in force", "generation", me.Generation, "err", err)
				return
			}
		}
		a.curA.Store(next)
		a.nextA.Store(nil)
		if err := a.saveOwnCA(); err != nil {
			a.log.Error("CA rotation: save the TLS CA certificate", "err", err)
		}
		a.log.Info("CA rotation: now signing with the new keys", "generation", me.Generation)
	}
	switch r.Phase {
	case state.PhaseInit, state.PhaseUpdateClients, state.PhaseUpdateServers:
		if n := a.nextA.Load(); n == nil || n.Generation() != r.Next {
			cfg := ca.Config{ClusterName: a.cfg.Auth.ClusterName, Keystore: a.ks, Generation: r.Next, Metrics: a.caMetrics}
			if len(me.NextKeys.TLS) > 0 {
				cfg.TLSCACert = me.NextKeys.TLS
			} else if r.Phase != state.PhaseInit {
				a.log.Error("CA rotation: this server published no keys in init; roll the rotation back (jgctl ca rotate --phase=rollback)", "phase", r.Phase)
				return
			}
			next, err := ca.New(cfg)
			if err != nil {
				a.log.Error("CA rotation: make this server's new keys", "generation", r.Next, "err", err)
				return
			}
			if len(me.NextKeys.TLS) == 0 {
				cmd, _ := state.Encode(state.TypePublishNextKeys, state.PublishNextKeys{ID: me.ID, Generation: r.Next, Keys: serverKeys(next)})
				if _, err := a.rn.Apply(cmd); err != nil {
					a.log.Warn("CA rotation: publish this server's new keys (will retry)", "err", err)
					return
				}
				a.log.Info("CA rotation: made and published new keys", "generation", r.Next, "keystore", a.backend)
			}
			a.nextA.Store(next)
		}
	case state.PhaseStandby:
		a.nextA.Store(nil) // rolled back, or completed above
	}
	if r.Phase != a.lastPhase {
		a.lastPhase = r.Phase
		a.reissue()
	}
}

// reissue renews this server's own certificate (when it signs server
// certificates) and the local admin identity with the keys the phase says.
func (a *authServer) reissue() {
	me, ok := a.store.AuthServer(a.cfg.Auth.ID)
	if ok && me.SignsServerCerts && a.trusted() {
		if err := a.issueOwnCert(); err != nil {
			a.log.Error("CA rotation: reissue this server's certificate", "err", err)
		}
	}
	if a.trusted() && a.adminDir != "" {
		if err := writeAdminIdentity(a.signer(false), a.store.Cluster(), a.adminDir, a.store.CAs().TLS); err != nil {
			a.log.Error("CA rotation: rewrite the admin identity", "err", err)
		}
	}
}
