package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// Certificate renewal for nodes and proxies.
//
// A node's or proxy's certificates (30 days) come from its join. A renewer
// goroutine per process role replaces them, with a new TLS key each time
// (a node keeps its SSH host key, which the inventory and users' known
// hosts hold), when
//
//   - two thirds of the current TLS certificate's lifetime have passed
//     (JUMPGATE_RENEW_AFTER overrides this), or
//   - the cluster's CA set, as the process's cache of the watch stream
//     holds it, changes: a CA rotation changes it at each phase, and
//     certificates must then be signed by the cluster's current keys; a
//     process that loaded its certificate from disk also renews when the
//     CA set differs from the one saved with it (it was down during a
//     change).
//
// Each renewal first waits a random time up to JUMPGATE_RENEW_JITTER
// (10s), so that a CA change does not bring every node of a large cluster
// to auth at once, and retries failures with backoff (1s doubling to 1m).
// A node renews through a proxy (POST /v1/renew on the proxy, which
// vouches for it to auth); a proxy renews with auth (POST /v1/renew). A
// proxy in the same process as an auth server gets its first certificate
// from that server's authority but renews with /v1/renew like the others,
// because the authority it started with may no longer be the one that
// signs server certificates once a CA rotation is under way; its
// certificate lives in memory only. Every other renewal is saved where
// join saved it. The result is swapped into liveCreds, which every server
// and client of the process reads per handshake:
// established connections and sessions are not touched.

// Renewal knobs, read from the environment by cmd only. They exist for
// tests and operations (to renew sooner, or to spread a fleet's renewals
// wider); no config file field sets them.
const (
	// envRenewJitter bounds the random wait before each renewal (a
	// duration; default defaultRenewJitter, 0 renews at once).
	envRenewJitter = "JUMPGATE_RENEW_JITTER"
	// envRenewAfter, when set, renews this long after the process obtained
	// (or loaded) its certificate instead of at two thirds of its lifetime
	// (a duration, such as 3s in tests).
	envRenewAfter = "JUMPGATE_RENEW_AFTER"

	defaultRenewJitter = 10 * time.Second
	renewBackoffMin    = time.Second
	renewBackoffMax    = time.Minute
	renewTimeout       = time.Minute // one attempt
)

// renewKnobs reads envRenewJitter and envRenewAfter.
func renewKnobs() (jitter, after time.Duration, err error) {
	jitter = defaultRenewJitter
	if v := os.Getenv(envRenewJitter); v != "" {
		if jitter, err = time.ParseDuration(v); err != nil || jitter < 0 {
			return 0, 0, fmt.Errorf("%s=%q: want a duration such as 10s", envRenewJitter, v)
		}
	}
	if v := os.Getenv(envRenewAfter); v != "" {
		if after, err = time.ParseDuration(v); err != nil || after <= 0 {
			return 0, 0, fmt.Errorf("%s=%q: want a positive duration such as 3s, or leave it unset to renew at two thirds of a certificate's lifetime", envRenewAfter, v)
		}
	}
	return jitter, after, nil
}

// issued is what a renewal (or join) gives a process.
type issued struct {
	TLS  *tls.Certificate // with Leaf set
	Host ssh.Signer       // nodes: the host certificate signer; nil otherwise
	CAs  [][]byte         // DER of the TLS CA certificates that came with it
}

// liveCreds holds a process's current certificates. Servers and clients
// read them through its methods on every handshake, so a renewal takes
// effect without a restart.
type liveCreds struct {
	tls  atomic.Pointer[tls.Certificate]
	host atomic.Pointer[hostSigner]
	cas  atomic.Pointer[[][]byte]
}

// hostSigner boxes an ssh.Signer for atomic.Pointer.
type hostSigner struct{ ssh.Signer }

func newLiveCreds(is issued) *liveCreds {
	c := &liveCreds{}
	c.set(is)
	return c
}

func (c *liveCreds) set(is issued) {
	if is.Host != nil {
		c.host.Store(&hostSigner{is.Host})
	}
	cas := slices.Clone(is.CAs)
	c.cas.Store(&cas)
	c.tls.Store(is.TLS)
}

// GetCertificate serves the current certificate to TLS clients.
func (c *liveCreds) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.tls.Load(), nil
}

// GetClientCertificate presents the current certificate to TLS servers.
func (c *liveCreds) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.tls.Load(), nil
}

// HostSigner returns the current SSH host certificate signer (nodes).
func (c *liveCreds) HostSigner() (ssh.Signer, error) {
	h := c.host.Load()
	if h == nil {
		return nil, errors.New("this process holds no SSH host certificate")
	}
	return h.Signer, nil
}

func (c *liveCreds) leaf() *x509.Certificate { return c.tls.Load().Leaf }

// savedCAs returns the TLS CA certificates that came with the current
// certificate.
func (c *liveCreds) savedCAs() [][]byte { return *c.cas.Load() }

// serverTrust is how a node or proxy decides to trust the servers it
// calls (proxies, auth servers, peers): the union of the CAs saved with
// its certificate (at join or the last renewal: all it has before its
// cache syncs) and the cluster's CAs as the watch stream delivers them (so
// that a server certificate signed by a new CA key is accepted as soon as
// the CA set carries it). x509.CertPool cannot be listed or merged, so it
// keeps the DER of both and builds a pool when either changes.
type serverTrust struct {
	creds *liveCreds
	hub   *authapi.Hub

	mu   sync.Mutex // guards following
	sum  [sha256.Size]byte
	pool *x509.CertPool
}

// Pool returns the pool; it is cheap when nothing changed.
func (t *serverTrust) Pool() *x509.CertPool {
	ders := append(slices.Clone(t.creds.savedCAs()), t.hub.CAs().TLS...)
	h := sha256.New()
	for _, der := range ders {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(der))))
		h.Write(der)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pool != nil && sum == t.sum {
		return t.pool
	}
	pool := x509.NewCertPool()
	for _, der := range ders {
		if c, err := x509.ParseCertificate(der); err == nil {
			pool.AddCert(c)
		}
	}
	t.sum, t.pool = sum, pool
	return pool
}

// renewMetrics are shared by a process's renewers (a process may be both
// a proxy and a node; kind tells them apart).
type renewMetrics struct {
	renewals *prometheus.CounterVec
	expiry   *prometheus.GaugeVec
}

func newRenewMetrics(reg prometheus.Registerer) *renewMetrics {
	m := &renewMetrics{
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jumpgate_cert_renewals_total",
			Help: "Certificate renewal attempts of this node or proxy, by kind (node, proxy) and result (ok, error)."}, []string{"kind", "result"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jumpgate_cert_expiry_timestamp_seconds",
			Help: "When a certificate expires (its NotAfter, Unix seconds), by kind: node, proxy and auth (the one this process presents), tls_ca (on auth servers: the soonest of the cluster's trusted TLS CA certificates)."}, []string{"kind"}),
	}
	m.renewals = registerOrExisting(reg, m.renewals)
	m.expiry = registerOrExisting(reg, m.expiry)
	return m
}

// registerOrExisting registers c, or returns the collector registered
// under its name before (the second renewer of a process).
func registerOrExisting[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
		panic(err) // a programming error, as with MustRegister
	}
	return c
}

// renewer keeps one identity's certificates fresh; see the comment at
// the top of this file. run owns obtained.
type renewer struct {
	kind    string // "node" or "proxy": logs and metrics
	creds   *liveCreds
	hub     *authapi.Hub
	reissue func(ctx context.Context) (issued, error)
	// loaded: the certificate at start came from disk, so the cluster may
	// have changed its CAs while the process was down.
	loaded  bool
	jitter  time.Duration
	after   time.Duration // 0: two thirds of the certificate's lifetime
	log     *slog.Logger
	metrics *renewMetrics

	obtained time.Time
}

// due is when the current certificate should be renewed by age.
func (r *renewer) due() time.Time {
	if r.after > 0 {
		return r.obtained.Add(r.after)
	}
	leaf := r.creds.leaf()
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
}

// caState is a stable serialization of the cache's CA set (rotation phase
// included), or "" while the cache holds no snapshot.
func caState(h *authapi.Hub) string {
	select {
	case <-h.Ready():
	default:
		return ""
	}
	b, _ := json.Marshal(h.CAs())
	return string(b)
}

// run renews until ctx ends.
func (r *renewer) run(ctx context.Context) {
	r.obtained = time.Now()
	r.metrics.expiry.WithLabelValues(r.kind).Set(float64(r.creds.leaf().NotAfter.Unix()))
	// The subscription only wakes the loop; the hub closes it when the
	// loop falls behind (while it waits or retries), and the loop then
	// subscribes again and compares the CA set anew.
	sub, unsub := r.hub.Subscribe()
	defer func() { unsub() }()
	renewedFor := "" // the CA set the current certificate was issued under, once known
	for {
		var reason string
		timer := time.NewTimer(time.Until(r.due()))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
			reason = "two thirds of the certificate's lifetime passed"
			if r.after > 0 {
				reason = envRenewAfter + " passed"
			}
		case _, ok := <-sub:
			timer.Stop()
			if !ok {
				unsub()
				sub, unsub = r.hub.Subscribe()
			}
			cur := caState(r.hub)
			switch {
			case cur == "" || cur == renewedFor:
				continue
			case renewedFor == "":
				renewedFor = cur
				if !r.loaded || sameDERs(r.creds.savedCAs(), r.hub.CAs().TLS) {
					continue
				}
				reason = "the cluster's CA set differs from the one saved with the certificate"
			default:
				reason = "the cluster's CA set changed"
			}
		}
		if d := randUpTo(r.jitter); d > 0 {
			r.log.Info("renewing certificate after a random delay", "kind", r.kind, "reason", reason, "in", d.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		// Changes that arrive while renewing are compared against the set
		// read here, so the loop renews again for them.
		target := caState(r.hub)
		if !r.renewUntilDone(ctx, reason) {
			return
		}
		if target != "" {
			renewedFor = target
		}
	}
}

// renewUntilDone renews, retrying with backoff, until it succeeds (true)
// or ctx ends (false).
func (r *renewer) renewUntilDone(ctx context.Context, reason string) bool {
	wait := renewBackoffMin
	for {
		err := r.renewOnce(ctx, reason)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		r.metrics.renewals.WithLabelValues(r.kind, "error").Inc()
		if left := time.Until(r.creds.leaf().NotAfter); left > 0 {
			r.log.Warn("certificate renewal failed; retrying", "kind", r.kind, "reason", reason, "err", err,
				"retry_in", wait, "expires_in", identity.HumanDuration(left))
		} else {
			r.log.Error("certificate renewal failed and the certificate has expired: the cluster refuses this process until a renewal succeeds; retrying (if it never does, remove the data dir and join again with a new token)",
				"kind", r.kind, "reason", reason, "err", err, "retry_in", wait, "expired", identity.HumanDuration(-left)+" ago")
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, renewBackoffMax)
	}
}

func (r *renewer) renewOnce(ctx context.Context, reason string) error {
	ctx, cancel := context.WithTimeout(ctx, renewTimeout)
	defer cancel()
	is, err := r.reissue(ctx)
	if err != nil {
		return err
	}
	r.creds.set(is)
	r.obtained = time.Now()
	r.metrics.renewals.WithLabelValues(r.kind, "ok").Inc()
	r.metrics.expiry.WithLabelValues(r.kind).Set(float64(is.TLS.Leaf.NotAfter.Unix()))
	r.log.Info("certificate renewed", "kind", r.kind, "reason", reason, "serial", is.TLS.Leaf.SerialNumber.Text(16),
		"expires", is.TLS.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// randUpTo returns a random duration in [0, d).
func randUpTo(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

func sameDERs(a, b [][]byte) bool {
	key := func(ders [][]byte) []string {
		out := make([]string, len(ders))
		for i, d := range ders {
			out[i] = string(d)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// loadedIssued is what a loaded identity holds (host: with its SSH host
// certificate).
func loadedIssued(id *creds.Identity, host bool) (issued, error) {
	cas, err := readCAs(id.Dir)
	if err != nil {
		return issued{}, err
	}
	is := issued{TLS: &id.TLS, CAs: cas}
	if host {
		if is.Host, err = id.CertSigner(); err != nil {
			return issued{}, fmt.Errorf("%s: %w", id.Dir, err)
		}
	}
	return is, nil
}

// readCAs returns the DER of the CA certificates in dir/cas.pem.
func readCAs(dir string) ([][]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cas.pem"))
	if err != nil {
		return nil, err
	}
	return pemCerts(b), nil
}

// pemCerts returns the DER of the certificates in PEM text b.
func pemCerts(b []byte) [][]byte {
	var out [][]byte
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, blk.Bytes)
		}
	}
}

// unsavedRenewal returns a reissue function for a proxy beside its auth
// server, whose certificate lives in memory only: call (auth's
// /v1/renew) certifies a new TLS key, and the cluster's CAs are appended
// to the served chain, as for a joined proxy. It does not sign with the
// authority the proxy got its first certificate from: a CA rotation
// changes which keys sign server certificates, and auth knows which.
func unsavedRenewal(id identity.Identity, base authapi.RenewRequest, call func(context.Context, authapi.RenewRequest) (*authapi.Credentials, error)) func(context.Context) (issued, error) {
	meta := creds.Meta{Kind: string(id.Kind), Name: id.Name, Cluster: id.Cluster}
	return func(ctx context.Context) (issued, error) {
		k, err := creds.NewKeys()
		if err != nil {
			return issued{}, err
		}
		req := base
		req.TLSPublic = k.TLSPublic()
		c, err := call(ctx, req)
		if err != nil {
			return issued{}, fmt.Errorf("renew %s %s: %w", meta.Kind, meta.Name, err)
		}
		leaf, err := checkRenewed(c, k, meta, false)
		if err != nil {
			return issued{}, fmt.Errorf("renew %s %s: the answer is unusable: %w", meta.Kind, meta.Name, err)
		}
		cas := pemCerts(c.CAs.TLS)
		cert := &tls.Certificate{Certificate: append([][]byte{leaf.Raw}, cas...), PrivateKey: k.TLS, Leaf: leaf}
		return issued{TLS: cert, CAs: cas}, nil
	}
}

// savedRenewal returns a reissue function for the identity saved in dir
// (as loadOrJoin saved it): call asks auth, or a proxy, for certificates
// for a new TLS key (and, for nodes, host set, the SSH host key in dir),
// and the result is saved in dir with meta and loaded back (with the CA
// chain appended for proxies, chain set, as at start).
func savedRenewal(dir string, meta creds.Meta, host, chain bool, base authapi.RenewRequest, call func(context.Context, authapi.RenewRequest) (*authapi.Credentials, error)) func(context.Context) (issued, error) {
	return func(ctx context.Context) (issued, error) {
		k, err := creds.NewKeys()
		if err != nil {
			return issued{}, err
		}
		// Keep the SSH key: a node's host key is what the inventory and
		// users' known hosts hold.
		if k.SSH, err = loadSSHKey(dir); err != nil {
			return issued{}, err
		}
		req := base
		req.TLSPublic = k.TLSPublic()
		if host {
			req.SSHPublic = k.SSHPublic()
		}
		c, err := call(ctx, req)
		if err != nil {
			return issued{}, fmt.Errorf("renew %s %s: %w", meta.Kind, meta.Name, err)
		}
		if _, err := checkRenewed(c, k, meta, host); err != nil {
			return issued{}, fmt.Errorf("renew %s %s: the answer is unusable: %w", meta.Kind, meta.Name, err)
		}
		if err := creds.Save(dir, k, c, meta); err != nil {
			return issued{}, fmt.Errorf("save renewed certificates: %w", err)
		}
		id, err := creds.Load(dir)
		if err != nil {
			return issued{}, fmt.Errorf("load renewed certificates: %w", err)
		}
		if chain {
			if err := id.WithChain(); err != nil {
				return issued{}, err
			}
		}
		return loadedIssued(id, host)
	}
}

// checkRenewed checks renewed credentials before they replace the ones on
// disk: a TLS certificate for the new key and the same identity, and for
// nodes a host certificate. It returns the TLS certificate.
func checkRenewed(c *authapi.Credentials, k *creds.Keys, meta creds.Meta, host bool) (*x509.Certificate, error) {
	blk, _ := pem.Decode(c.TLSCert)
	if blk == nil {
		return nil, errors.New("no TLS certificate")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, err
	}
	if pub, ok := leaf.PublicKey.(ed25519.PublicKey); !ok || !pub.Equal(k.TLS.Public()) {
		return nil, errors.New("the TLS certificate is not for the key sent")
	}
	id, err := identity.FromX509(leaf)
	if err != nil {
		return nil, err
	}
	if string(id.Kind) != meta.Kind || id.Name != meta.Name || (meta.Cluster != "" && id.Cluster != meta.Cluster) {
		return nil, fmt.Errorf("the TLS certificate is for %s", id)
	}
	if host && c.SSHCert == "" {
		return nil, errors.New("no SSH host certificate")
	}
	return leaf, nil
}

// loadSSHKey reads the ed25519 SSH private key creds.Save wrote in dir.
func loadSSHKey(dir string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(filepath.Join(dir, "key"))
	if err != nil {
		return nil, err
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s/key: %w", dir, err)
	}
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return *k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s/key is a %T, not an ed25519 key", dir, raw)
}
