package authapi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// TrustConfig says how a client decides to trust a Jumpgate server (an auth
// server or a proxy).
type TrustConfig struct {
	// RootCAs, when set, is the cluster's TLS CA pool: the server must
	// present a certificate it signed whose identity is one of Kinds. No
	// hostname check: proxies and auth servers are often reached by IP.
	RootCAs func() *x509.CertPool
	// Kinds the server's certificate may carry (default auth and proxy).
	Kinds []identity.Kind
	// CAPin ("sha256:<hex>") trusts a cluster on first contact: the server's
	// chain must contain a CA whose public key hashes to the pin.
	CAPin string
	// Insecure skips verification (tests and throwaway demos only).
	Insecure bool
	// ServerName for system-root verification (when neither RootCAs nor
	// CAPin is set, the server must have a publicly trusted certificate).
	ServerName string
}

// ClientTLS returns a client tls.Config for trust and an optional client
// certificate.
func ClientTLS(trust TrustConfig, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error), alpn ...string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, GetClientCertificate: getCert, NextProtos: alpn, ServerName: trust.ServerName}
	if trust.RootCAs == nil && trust.CAPin == "" && !trust.Insecure {
		return c // system roots, hostname verified
	}
	c.InsecureSkipVerify = true // replaced by VerifyConnection below
	if trust.Insecure {
		return c
	}
	kinds := trust.Kinds
	if len(kinds) == 0 {
		kinds = []identity.Kind{identity.KindAuth, identity.KindProxy}
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		return VerifyServer(cs, trust.RootCAs, trust.CAPin, kinds)
	}
	return c
}

// VerifyServer checks a server's certificate chain against roots or a pin
// and its identity kind.
func VerifyServer(cs tls.ConnectionState, roots func() *x509.CertPool, pin string, kinds []identity.Kind) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	var pool *x509.CertPool
	if roots != nil {
		pool = roots()
	} else {
		pool = x509.NewCertPool()
		found := false
		for _, c := range cs.PeerCertificates[1:] {
			if PinOf(c) == pin {
				pool.AddCert(c)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("the server's CA does not match --ca-pin %s: you may be talking to the wrong cluster, or someone is in the middle", pin)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("server certificate is not signed by this cluster's TLS CA: %w", err)
	}
	id, err := identity.FromX509(leaf)
	if err != nil {
		return err
	}
	for _, k := range kinds {
		if id.Kind == k {
			return nil
		}
	}
	return fmt.Errorf("server certificate is for %s, expected a Jumpgate %v", id, kinds)
}

// PinOf returns a CA certificate's pin, as ca.Pin does (kept here so
// network packages need not import auth/ca).
func PinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Addr is host:port of an auth server, or of a proxy (which serves
	// login, join, watch and node listing on the same paths).
	Addr string
	// Addrs are more servers of the same cluster to fail over to, in order
	// of preference after Addr: a request that cannot reach a server, or
	// that a server refuses as unavailable (503), goes to the next one, and
	// the client stays with the one that answered.
	Addrs []string
	Trust TrustConfig
	// GetClientCertificate supplies this process's identity (nil: none).
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// Timeout bounds each non-streaming request (default 30s).
	Timeout time.Duration
	// LocalAddr, if set, is the local IP address connections leave from.
	LocalAddr string
	// CallSigner, if set, is the private key of the client's TLS
	// certificate: users' own calls (/v1/user/...) are signed with it, so
	// that the auth server knows the user made them (see proof.go).
	CallSigner crypto.Signer
}

// Client calls the auth API.
type Client struct {
	base    string   // the first address, for messages
	bases   []string // every address, in order of preference
	cur     atomic.Int32
	hc      *http.Client
	timeout time.Duration
	signer  crypto.Signer // see ClientConfig.CallSigner
}

// NewClient returns a client. It does not connect.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("authapi: Addr is required")
	}
	var bases []string
	for _, a := range append([]string{cfg.Addr}, cfg.Addrs...) {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("authapi: address %q: want host:port", a)
		}
		if b := "https://" + a; !slices.Contains(bases, b) {
			bases = append(bases, b)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.LocalAddr != "" && net.ParseIP(cfg.LocalAddr) == nil {
		return nil, fmt.Errorf("authapi: local address %q: want an IP address", cfg.LocalAddr)
	}
	tr := &http.Transport{
		TLSClientConfig:     ClientTLS(cfg.Trust, cfg.GetClientCertificate, "h2", "http/1.1"),
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         localDialer(cfg.LocalAddr).DialContext,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{base: bases[0], bases: bases, hc: &http.Client{Transport: tr}, timeout: cfg.Timeout, signer: cfg.CallSigner}, nil
}

// localDialer is the dialer of a client whose connections leave from ip
// ("" for any).
func localDialer(ip string) *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	if a := net.ParseIP(ip); a != nil {
		d.LocalAddr = &net.TCPAddr{IP: a}
	}
	return d
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is a non-2xx answer.
type APIError struct {
	Code    int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Retryable reports whether retrying may help.
func (e *APIError) Retryable() bool {
	return e.Code == http.StatusServiceUnavailable || e.Code == http.StatusTooManyRequests || e.Code >= 500
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var b []byte
	if in != nil {
		var err error
		if b, err = json.Marshal(in); err != nil {
			return err
		}
	}
	var err error
	c.each(func(base string) bool {
		err = c.doOnce(ctx, base, method, path, b, in != nil, out)
		return failover(err) && ctx.Err() == nil
	})
	return err
}

// each calls try with each address, starting with the one that last
// answered, until try returns false; the address it stopped at becomes
// the current one.
func (c *Client) each(try func(base string) (next bool)) {
	start := int(c.cur.Load())
	for i := range c.bases {
		k := (start + i) % len(c.bases)
		if !try(c.bases[k]) || i == len(c.bases)-1 {
			c.cur.Store(int32(k))
			return
		}
	}
}

// failover reports whether err means another server may do better: this
// one could not be reached, or said it cannot serve (503, 502, 504).
func failover(err error) bool {
	var ue *UnreachableError
	var ae *APIError
	switch {
	case err == nil:
		return false
	case errors.As(err, &ue):
		return true
	case errors.As(err, &ae):
		return ae.Code == http.StatusServiceUnavailable || ae.Code == http.StatusBadGateway || ae.Code == http.StatusGatewayTimeout
	}
	var te *transportError
	return errors.As(err, &te)
}

func (c *Client) doOnce(ctx context.Context, base, method, path string, b []byte, hasBody bool, out any) error {
	var body io.Reader
	if hasBody {
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := c.prove(req, b); err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return describeTransportError(base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: malformed answer: %w", method, path, err)
	}
	return nil
}

func decodeError(resp *http.Response) error {
	var e ErrorResponse
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return &APIError{Code: resp.StatusCode, Message: e.Error}
}

// UnreachableError says a server could not be connected to at all; a retry
// may help once it is up.
type UnreachableError struct {
	Host string
	Err  *net.OpError // the dial error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach %s: %v: is the address right and the server running?", e.Host, e.Err.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Retryable reports that retrying may help.
func (e *UnreachableError) Retryable() bool { return true }

// describeTransportError turns a connection failure into a sentence.
func describeTransportError(base string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	host := strings.TrimPrefix(base, "https://")
	var oe *net.OpError
	switch {
	case errors.As(err, &oe) && oe.Op == "dial":
		return &UnreachableError{Host: host, Err: oe}
	case strings.Contains(err.Error(), "certificate"):
		return fmt.Errorf("TLS with %s failed: %v", host, err)
	}
	return &transportError{host: host, err: err}
}

// transportError: the connection broke during a request (reset, EOF,
// timeout). Another server may do better.
type transportError struct {
	host string
	err  error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("request to %s failed: %v", e.host, e.err)
}
func (e *transportError) Unwrap() error { return e.err }

// Ping returns the server's cluster name and version.
func (c *Client) Ping(ctx context.Context) (map[string]string, error) {
	var out map[string]string
	return out, c.do(ctx, "GET", "/v1/ping", nil, &out)
}

// Login exchanges a password for certificates.
func (c *Client) Login(ctx context.Context, req LoginRequest) (*Credentials, error) {
	var out Credentials
	return &out, c.do(ctx, "POST", "/v1/login", req, &out)
}

// Join redeems a join token.
func (c *Client) Join(ctx context.Context, req JoinRequest) (*Credentials, error) {
	var out Credentials
	return &out, c.do(ctx, "POST", "/v1/join", req, &out)
}

// OpenWatch opens a watch stream; the caller reads NDJSON WatchMessages.
func (c *Client) OpenWatch(ctx context.Context) (*http.Response, error) {
	return c.OpenWatchFrom(ctx, 0)
}

// OpenWatchFrom opens a watch stream that resumes after index since: a
// server that still holds every change after it sends only those (a
// "resume" message, then events), any other sends a full snapshot. 0
// always gets a snapshot.
func (c *Client) OpenWatchFrom(ctx context.Context, since uint64) (*http.Response, error) {
	path := "/v1/watch"
	if since > 0 {
		path += "?since=" + strconv.FormatUint(since, 10)
	}
	var resp *http.Response
	var err error
	c.each(func(base string) bool {
		resp, err = c.openWatch(ctx, base+path)
		return failover(err) && ctx.Err() == nil
	})
	return resp, err
}

func (c *Client) openWatch(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, describeTransportError(strings.TrimSuffix(url[:strings.Index(url, "/v1/")], "/"), err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// Addr returns the address the client currently talks to.
func (c *Client) Addr() string {
	return strings.TrimPrefix(c.bases[int(c.cur.Load())], "https://")
}

// ReportPresence sends the full list of tunnels this proxy holds.
func (c *Client) ReportPresence(ctx context.Context, rep PresenceReport) error {
	return c.do(ctx, "POST", "/v1/presence", rep, nil)
}

// MeshKeys fetches the proxies' gossip keyring (proxies only).
func (c *Client) MeshKeys(ctx context.Context) ([][]byte, error) {
	var out MeshKeys
	return out.Keys, c.do(ctx, "GET", "/v1/mesh/keys", nil, &out)
}

// MeshKeyOp applies one step of a gossip key rotation (admins only).
func (c *Client) MeshKeyOp(ctx context.Context, op MeshKeyOp) (*MeshKeyring, error) {
	var out MeshKeyring
	return &out, c.do(ctx, "POST", "/v1/mesh/keys", op, &out)
}

// MeshProxies asks a proxy for the live proxies of its mesh (nodes and users).
func (c *Client) MeshProxies(ctx context.Context) ([]MeshProxy, error) {
	var out []MeshProxy
	return out, c.do(ctx, "GET", "/v1/mesh/proxies", nil, &out)
}

// Proxies lists the proxies that reported to auth in the last hour.
func (c *Client) Proxies(ctx context.Context) ([]ProxyState, error) {
	var out []ProxyState
	return out, c.do(ctx, "GET", "/v1/proxies", nil, &out)
}

// Nodes lists the inventory with tunnel state.
func (c *Client) Nodes(ctx context.Context) ([]NodeStatus, error) {
	var out []NodeStatus
	return out, c.do(ctx, "GET", "/v1/nodes", nil, &out)
}

// DeleteNode removes a node from the inventory.
func (c *Client) DeleteNode(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/nodes/"+url.PathEscape(id), nil, nil)
}

// Status returns the cluster status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	return &out, c.do(ctx, "GET", "/v1/status", nil, &out)
}

// Users lists users.
func (c *Client) Users(ctx context.Context) ([]state.User, error) {
	var out []state.User
	return out, c.do(ctx, "GET", "/v1/users", nil, &out)
}

// CreateUser adds a user.
func (c *Client) CreateUser(ctx context.Context, req CreateUserRequest) error {
	return c.do(ctx, "POST", "/v1/users", req, nil)
}

// UpsertUser creates a user or updates its roles, traits and origin.
func (c *Client) UpsertUser(ctx context.Context, req UpsertUserRequest) error {
	return c.do(ctx, "PUT", "/v1/users/"+url.PathEscape(req.Name), req, nil)
}

// DeleteUser removes a user.
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/users/"+url.PathEscape(name), nil, nil)
}

// Roles lists roles.
func (c *Client) Roles(ctx context.Context) ([]identity.Role, error) {
	var out []identity.Role
	return out, c.do(ctx, "GET", "/v1/roles", nil, &out)
}

// ApplyRoles creates or replaces roles.
func (c *Client) ApplyRoles(ctx context.Context, roles []identity.Role) error {
	return c.do(ctx, "PUT", "/v1/roles", roles, nil)
}

// DeleteRole removes a role.
func (c *Client) DeleteRole(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/roles/"+url.PathEscape(name), nil, nil)
}

// Tokens lists join tokens.
func (c *Client) Tokens(ctx context.Context) ([]TokenInfo, error) {
	var out []TokenInfo
	return out, c.do(ctx, "GET", "/v1/tokens", nil, &out)
}

// CreateToken creates a join token; the secret is returned only here.
func (c *Client) CreateToken(ctx context.Context, req CreateTokenRequest) (*CreateTokenResponse, error) {
	var out CreateTokenResponse
	return &out, c.do(ctx, "POST", "/v1/tokens", req, &out)
}

// DeleteToken removes a token by id.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// AuthServers lists every auth server with its raft role and progress.
func (c *Client) AuthServers(ctx context.Context) ([]AuthServerStatus, error) {
	var out []AuthServerStatus
	return out, c.do(ctx, "GET", "/v1/auth/servers", nil, &out)
}

// AuthAdd creates the one-time token a new auth server joins with.
func (c *Client) AuthAdd(ctx context.Context, op MembershipOp) (*CreateTokenResponse, error) {
	op.Op = "add"
	var out CreateTokenResponse
	return &out, c.do(ctx, "POST", "/v1/auth/servers", op, &out)
}

// AuthMembership promotes or removes an auth server ("promote",
// "remove") and returns the servers afterwards.
func (c *Client) AuthMembership(ctx context.Context, op, id string) ([]AuthServerStatus, error) {
	var out []AuthServerStatus
	return out, c.do(ctx, "POST", "/v1/auth/servers", MembershipOp{Op: op, ID: id}, &out)
}

// prove signs a user's own call when the client has a CallSigner.
func (c *Client) prove(req *http.Request, body []byte) error {
	if c.signer == nil || !strings.HasPrefix(req.URL.Path, "/v1/user/") {
		return nil
	}
	return signUserCall(c.signer, req, body, time.Now())
}
