// Single sign-on: users log in through an OpenID Connect provider (Okta,
// Google, Dex, Keycloak, ...) instead of a Jumpgate password.
//
// # Flow
//
// The provider sends the user's browser back to the proxy the user started
// from (every proxy's https://PUBLIC_ADDR/v1/sso/callback is registered with
// the provider as a redirect URI); the proxy relays to auth.
//
//  1. jg makes its keys, listens on http://127.0.0.1:PORT/callback and
//     sends POST /v1/sso/start {ssh_public, tls_public, ttl,
//     client_callback} to a proxy, which adds proxy_callback (its own
//     callback URL) and client_addr and forwards it here (proxy identity).
//  2. Auth makes a request id, a state, a nonce and a PKCE verifier, keeps
//     them in memory (10 minutes at most, a bounded number) and answers
//     {id, url}: the provider's authorization URL with redirect_uri =
//     proxy_callback. jg asks the user to open it.
//  3. The user logs in at the provider, which redirects the browser to
//     GET PROXY/v1/sso/callback?code=..&state=.. (or ?error=..&state=..).
//     The proxy sends POST /v1/sso/callback {state, code, error} here.
//  4. Auth looks the state up (once: a replayed or forged state is
//     refused), exchanges the code (with the PKCE verifier), verifies the
//     ID token (signature, issuer, audience, expiry, nonce), takes the user
//     name and groups from its claims (or the userinfo endpoint's), maps
//     groups to roles, checks locks and issues certificates as a password
//     login does. The outcome, certificates or the reason for refusal, is
//     kept under the request id with a new one-time secret, and auth
//     answers {redirect: client_callback?id=..&secret=..}. The proxy
//     redirects the browser there.
//  5. jg's listener gets id and secret and sends POST /v1/sso/result {id,
//     secret} through the proxy; auth answers with the credentials (or the
//     refusal) once and forgets the request.
//
// # Limitation
//
// A login under way lives only in the memory of the auth server that
// started it: the proxy must reach the same auth server for the callback
// and the result. If that server restarts or fails (or the proxy fails over
// to another) between start and callback, the user is told the login is
// unknown or expired and starts again. Nothing is replicated through raft:
// a login takes a minute, and a secret that never leaves one process cannot
// leak from a snapshot.

package authapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/crypto/ssh"
	"golang.org/x/oauth2"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

// SSOConfig configures single sign-on through an OpenID Connect provider.
type SSOConfig struct {
	// Issuer is the provider's issuer URL; its discovery document is at
	// Issuer/.well-known/openid-configuration.
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes asked for (default openid email profile groups).
	Scopes []string
	// UsernameClaim names the claim that becomes the Jumpgate user name
	// (default email).
	UsernameClaim string
	// GroupsClaim names the claim listing the user's groups (default
	// groups).
	GroupsClaim string
	// Roles maps the provider's groups to Jumpgate roles. A user whose
	// groups map to no existing role is refused.
	Roles []SSORoleMapping
	// MaxTTL caps the certificates' lifetime (default: the server's
	// UserCertTTL); roles' max_session_ttl caps it further.
	MaxTTL time.Duration
	// RequestTTL is how long a login may take from start to callback, and
	// how long its result waits for jg afterwards (10 minutes: enough to
	// find a password, short enough that a stolen URL goes stale).
	RequestTTL time.Duration
	// MaxPending bounds the logins under way (10,000), so that a flood of
	// starts cannot exhaust the auth server's memory.
	MaxPending int
}

// SSORoleMapping gives the members of a provider group Jumpgate roles.
type SSORoleMapping struct {
	Group string
	Roles []string
}

func (c *SSOConfig) checkAndSetDefaults() error {
	switch {
	case c.Issuer == "":
		return errors.New("authapi: SSO: Issuer is required")
	case c.ClientID == "":
		return errors.New("authapi: SSO: ClientID is required")
	case c.ClientSecret == "":
		return errors.New("authapi: SSO: ClientSecret is required")
	case len(c.Roles) == 0:
		return errors.New("authapi: SSO: Roles is required: without a group-to-role mapping nobody could log in")
	}
	if len(c.Scopes) == 0 {
		c.Scopes = []string{oidc.ScopeOpenID, "email", "profile", "groups"}
	}
	if !slices.Contains(c.Scopes, oidc.ScopeOpenID) {
		c.Scopes = append([]string{oidc.ScopeOpenID}, c.Scopes...)
	}
	if c.UsernameClaim == "" {
		c.UsernameClaim = "email"
	}
	if c.GroupsClaim == "" {
		c.GroupsClaim = "groups"
	}
	if c.RequestTTL == 0 {
		c.RequestTTL = 10 * time.Minute
	}
	if c.MaxPending == 0 {
		c.MaxPending = 10000
	}
	return nil
}

// SSOStartRequest starts an SSO login (jg → proxy → auth).
type SSOStartRequest struct {
	SSHPublic string `json:"ssh_public"` // authorized_keys format
	TLSPublic []byte `json:"tls_public"` // PKIX DER
	TTL       string `json:"ttl,omitempty"`
	// ClientCallback is jg's loopback listener: http://127.0.0.1:PORT/PATH.
	ClientCallback string `json:"client_callback"`
	// ProxyCallback is the proxy's https://PUBLIC_ADDR/v1/sso/callback,
	// the redirect URI the provider sends the browser to (set by the
	// proxy).
	ProxyCallback string `json:"proxy_callback,omitempty"`
	// ClientAddr is the user's address as the proxy saw it (for audit).
	ClientAddr string `json:"client_addr,omitempty"`
}

// SSOStartResponse says where the user logs in.
type SSOStartResponse struct {
	ID      string    `json:"id"`
	URL     string    `json:"url"` // the provider's authorization URL
	Expires time.Time `json:"expires"`
}

// SSOCallbackRequest relays the provider's redirect (proxy → auth).
type SSOCallbackRequest struct {
	State            string `json:"state"`
	Code             string `json:"code,omitempty"`
	Error            string `json:"error,omitempty"`
	ErrorDescription string `json:"error_description,omitempty"`
	ClientAddr       string `json:"client_addr,omitempty"`
}

// SSOCallbackResponse says where the proxy sends the browser: jg's
// listener, with the request id and the one-time secret of the result.
type SSOCallbackResponse struct {
	Redirect string `json:"redirect"`
}

// SSOResultRequest fetches a finished login's outcome (jg → proxy → auth).
type SSOResultRequest struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// SSOStart starts an SSO login.
func (c *Client) SSOStart(ctx context.Context, req SSOStartRequest) (*SSOStartResponse, error) {
	var out SSOStartResponse
	return &out, c.do(ctx, "POST", "/v1/sso/start", req, &out)
}

// SSOCallback relays the provider's redirect.
func (c *Client) SSOCallback(ctx context.Context, req SSOCallbackRequest) (*SSOCallbackResponse, error) {
	var out SSOCallbackResponse
	return &out, c.do(ctx, "POST", "/v1/sso/callback", req, &out)
}

// SSOResult fetches the certificates of a finished SSO login (once).
func (c *Client) SSOResult(ctx context.Context, req SSOResultRequest) (*Credentials, error) {
	var out Credentials
	return &out, c.do(ctx, "POST", "/v1/sso/result", req, &out)
}

// ssoRequest is one login under way, or finished and waiting for jg.
type ssoRequest struct {
	id, state, nonce, verifier  string
	redirectURI, clientCallback string
	sshPub                      ssh.PublicKey
	tlsPub                      any
	ttl                         time.Duration // asked for (0: default)
	proxy, clientAddr           string
	expires                     time.Time

	// Set by the callback.
	done       bool
	secretHash [sha256.Size]byte
	creds      *Credentials
	failure    *APIError
}

// sso serves the /v1/sso/ routes.
type sso struct {
	s   *Server
	cfg SSOConfig // empty Issuer: SSO is off
	hc  *http.Client

	discover sync.Mutex // serializes provider discovery
	mu       sync.Mutex // guards following
	provider *oidc.Provider
	byState  map[string]*ssoRequest // started, waiting for the callback
	byID     map[string]*ssoRequest // every request, by id
}

func newSSO(s *Server) (*sso, error) {
	o := &sso{s: s, hc: &http.Client{Timeout: 15 * time.Second}, byState: map[string]*ssoRequest{}, byID: map[string]*ssoRequest{}}
	if s.cfg.SSO == nil {
		return o, nil
	}
	o.cfg = *s.cfg.SSO
	o.cfg.Roles = slices.Clone(o.cfg.Roles)
	if err := o.cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *sso) enabled(w http.ResponseWriter) bool {
	if o.cfg.Issuer == "" {
		WriteError(w, http.StatusNotFound, "single sign-on is not configured on this cluster (auth.oidc): log in with --user and a password")
		return false
	}
	return true
}

// oidcProvider discovers the provider on first use and keeps it; a
// failure is not kept, so the next login tries again (the provider may
// start after auth, or be down for a while).
func (o *sso) oidcProvider(ctx context.Context) (*oidc.Provider, error) {
	o.mu.Lock()
	p := o.provider
	o.mu.Unlock()
	if p != nil {
		return p, nil
	}
	o.discover.Lock()
	defer o.discover.Unlock()
	o.mu.Lock()
	p = o.provider
	o.mu.Unlock()
	if p != nil {
		return p, nil
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		if p, err = oidc.NewProvider(oidc.ClientContext(ctx, o.hc), o.cfg.Issuer); err == nil {
			o.mu.Lock()
			o.provider = p
			o.mu.Unlock()
			o.s.cfg.Logger.Info("SSO provider discovered", "issuer", o.cfg.Issuer)
			return p, nil
		}
	}
	return nil, err
}

func (o *sso) oauth2Config(p *oidc.Provider, redirect string) *oauth2.Config {
	return &oauth2.Config{ClientID: o.cfg.ClientID, ClientSecret: o.cfg.ClientSecret, Endpoint: p.Endpoint(), RedirectURL: redirect, Scopes: o.cfg.Scopes}
}

func randomString(n int) string { return base64.RawURLEncoding.EncodeToString(randomBytes(n)) }

// randomBytes returns n random bytes. crypto/rand.Read never returns an
// error (since Go 1.24 it crashes the program if the system cannot give
// randomness), so there is nothing for callers to handle.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// checkClientCallback accepts only jg's loopback listener, so that auth
// never becomes an open redirector that sends login secrets elsewhere.
func checkClientCallback(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("client_callback %q: want http://127.0.0.1:PORT/PATH (jg's local listener)", s)
	}
	if h := u.Hostname(); h != "localhost" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("client_callback %q: the browser may only be sent back to a loopback address", s)
		}
	}
	return nil
}

func checkProxyCallback(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
		return fmt.Errorf("proxy_callback %q: want https://PROXY/v1/sso/callback", s)
	}
	return nil
}

// purgeLocked drops expired requests. Callers hold o.mu.
func (o *sso) purgeLocked(now time.Time) {
	for id, r := range o.byID {
		if now.After(r.expires) {
			delete(o.byID, id)
			delete(o.byState, r.state)
		}
	}
}

func (o *sso) start(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	if !o.enabled(w) || !o.s.canSign(w, false) {
		return
	}
	var req SSOStartRequest
	if !readJSON(w, r, &req) {
		return
	}
	sshPub, tlsPub, ok := parseKeys(w, req.SSHPublic, req.TLSPublic)
	if !ok {
		return
	}
	if err := checkClientCallback(req.ClientCallback); err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkProxyCallback(req.ProxyCallback); err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl <= 0 {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("ttl %q: want a duration such as 1h", req.TTL))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	p, err := o.oidcProvider(ctx)
	if err != nil {
		o.s.cfg.Logger.Warn("SSO provider discovery failed", "issuer", o.cfg.Issuer, "err", err)
		WriteError(w, http.StatusBadGateway, fmt.Sprintf("the SSO provider %s cannot be reached from the auth server (%v): try again in a minute; if it persists, an administrator should check auth.oidc.issuer", o.cfg.Issuer, err))
		return
	}
	now := o.s.cfg.Now()
	sr := &ssoRequest{id: randomString(16), state: randomString(32), nonce: randomString(32), verifier: oauth2.GenerateVerifier(),
		redirectURI: req.ProxyCallback, clientCallback: req.ClientCallback, sshPub: sshPub, tlsPub: tlsPub, ttl: ttl,
		proxy: caller.Name, clientAddr: req.ClientAddr, expires: now.Add(o.cfg.RequestTTL)}
	o.mu.Lock()
	if len(o.byID) >= o.cfg.MaxPending {
		o.purgeLocked(now)
	}
	full := len(o.byID) >= o.cfg.MaxPending
	if !full {
		o.byID[sr.id], o.byState[sr.state] = sr, sr
	}
	o.mu.Unlock()
	if full {
		WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("auth server %s has %d SSO logins under way, its limit: try again in a minute", o.s.cfg.ID, o.cfg.MaxPending))
		return
	}
	authURL := o.oauth2Config(p, sr.redirectURI).AuthCodeURL(sr.state, oidc.Nonce(sr.nonce), oauth2.S256ChallengeOption(sr.verifier))
	o.s.cfg.Logger.Info("SSO login started", "proxy", caller.Name, "request", sr.id, "redirect_uri", sr.redirectURI)
	WriteJSON(w, http.StatusOK, SSOStartResponse{ID: sr.id, URL: authURL, Expires: sr.expires})
}

func (o *sso) callback(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	if !o.enabled(w) {
		return
	}
	var req SSOCallbackRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := o.s.cfg.Now()
	o.mu.Lock()
	sr, ok := o.byState[req.State]
	if ok {
		delete(o.byState, req.State) // a state is good for one callback
	}
	o.mu.Unlock()
	if !ok || req.State == "" || now.After(sr.expires) {
		msg := "unknown or expired SSO login: it was finished already, took longer than " + identity.HumanDuration(o.cfg.RequestTTL) +
			", or was started at another auth server; run jg login --sso again"
		o.s.cfg.Audit.Emit(audit.Event{Type: audit.LoginFailed, RemoteAddr: req.ClientAddr, Cluster: o.s.cfg.Store.Cluster(), Command: "sso", Error: msg})
		o.s.cfg.Logger.Warn("SSO callback refused", "proxy", caller.Name, "err", "unknown or expired state")
		WriteError(w, http.StatusBadRequest, msg)
		return
	}
	creds, failure := o.finish(r.Context(), sr, req, caller)
	secret := randomString(32)
	o.mu.Lock()
	sr.done, sr.creds, sr.failure = true, creds, failure
	sr.secretHash = sha256.Sum256([]byte(secret))
	sr.expires = now.Add(o.cfg.RequestTTL)
	o.byID[sr.id] = sr // it may have been purged while the exchange ran
	o.mu.Unlock()
	u, _ := url.Parse(sr.clientCallback) // checked at start
	u.RawQuery = url.Values{"id": {sr.id}, "secret": {secret}}.Encode()
	WriteJSON(w, http.StatusOK, SSOCallbackResponse{Redirect: u.String()})
}

// finish turns the provider's answer into certificates, or into the
// reason why not. It audits either way. A failure's code must not be one
// that makes the proxy fail over to another auth server (502, 503, 504)
// when jg fetches it: that server would not know the login.
func (o *sso) finish(ctx context.Context, sr *ssoRequest, req SSOCallbackRequest, caller identity.Identity) (*Credentials, *APIError) {
	ev := audit.Event{Type: audit.LoginFailed, RemoteAddr: sr.clientAddr, Cluster: o.s.cfg.Store.Cluster(), Command: "sso"}
	fail := func(code int, msg string) (*Credentials, *APIError) {
		ev.Error = msg
		o.s.cfg.Audit.Emit(ev)
		o.s.cfg.Logger.Warn("SSO login refused", "user", ev.User, "proxy", caller.Name, "request", sr.id, "err", msg)
		return nil, &APIError{Code: code, Message: msg}
	}
	if req.Error != "" {
		msg := "the SSO provider refused the login: " + req.Error
		if req.ErrorDescription != "" {
			msg += " (" + req.ErrorDescription + ")"
		}
		return fail(http.StatusForbidden, msg)
	}
	if req.Code == "" {
		return fail(http.StatusBadRequest, "the SSO provider's answer has no authorization code")
	}
	o.mu.Lock()
	p := o.provider // discovered at start
	o.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ctx = oidc.ClientContext(ctx, o.hc)
	tok, err := o.oauth2Config(p, sr.redirectURI).Exchange(ctx, req.Code, oauth2.VerifierOption(sr.verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return fail(http.StatusForbidden, fmt.Sprintf("the SSO provider did not accept the login code (%s %s): run jg login --sso again", re.ErrorCode, re.ErrorDescription))
		}
		return fail(http.StatusFailedDependency, fmt.Sprintf("the SSO provider %s cannot be reached from the auth server to finish the login (%v): try again in a minute", o.cfg.Issuer, err))
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return fail(http.StatusFailedDependency, "the SSO provider answered without an ID token: is the openid scope allowed for client "+o.cfg.ClientID+"?")
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: o.cfg.ClientID, Now: o.s.cfg.Now}).Verify(ctx, raw)
	if err != nil {
		return fail(http.StatusForbidden, "the SSO provider's ID token is invalid: "+err.Error())
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(sr.nonce)) != 1 {
		return fail(http.StatusForbidden, "the SSO provider's ID token is invalid: it is not for this login (nonce mismatch)")
	}
	claims := map[string]any{}
	if err := idt.Claims(&claims); err != nil {
		return fail(http.StatusForbidden, "the SSO provider's ID token is invalid: "+err.Error())
	}
	// Providers that keep ID tokens small put profile claims only in the
	// userinfo answer.
	if _, ok := claims[o.cfg.UsernameClaim]; !ok || claims[o.cfg.GroupsClaim] == nil {
		if ui, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil && ui.Subject == idt.Subject {
			more := map[string]any{}
			if ui.Claims(&more) == nil {
				for k, v := range more {
					if _, ok := claims[k]; !ok {
						claims[k] = v
					}
				}
			}
		}
	}
	name, _ := claims[o.cfg.UsernameClaim].(string)
	if name == "" {
		return fail(http.StatusForbidden, fmt.Sprintf("the SSO provider gave no %q claim to use as your user name: an administrator should check auth.oidc.username_claim and the scopes", o.cfg.UsernameClaim))
	}
	ev.User = name
	if v, ok := claims["email_verified"].(bool); ok && !v && o.cfg.UsernameClaim == "email" {
		// Anyone can claim an address they cannot read mail at.
		return fail(http.StatusForbidden, fmt.Sprintf("your email address %s is not verified at the SSO provider: verify it there, then run jg login --sso again", name))
	}
	if err := identity.CheckName(name); err != nil {
		return fail(http.StatusForbidden, fmt.Sprintf("your %s %q from the SSO provider cannot be a Jumpgate user name: %v", o.cfg.UsernameClaim, name, err))
	}
	groups := claimStrings(claims[o.cfg.GroupsClaim])
	roleNames, missing := o.mapRoles(groups)
	if len(missing) > 0 {
		o.s.cfg.Logger.Warn("auth.oidc.roles names roles that do not exist", "roles", missing, "user", name)
	}
	if len(roleNames) == 0 {
		gs := "none"
		if len(groups) > 0 {
			gs = strings.Join(groups, ", ")
		}
		return fail(http.StatusForbidden, fmt.Sprintf("%s may not log in: your groups at the SSO provider (%s) map to no Jumpgate role; ask an administrator to add one of them to auth.oidc.roles", name, gs))
	}
	ev.Roles = roleNames
	now := o.s.cfg.Now()
	if err := identity.CheckLocks(o.s.cfg.Store.Locks(), identity.LockTarget{User: name, Roles: roleNames}, now); err != nil {
		return fail(http.StatusForbidden, err.Error())
	}
	if !o.s.keysTrusted() {
		return fail(http.StatusInternalServerError, fmt.Sprintf("auth server %s cannot sign certificates now (the cluster does not trust its CA keys): run jg login --sso again", o.s.cfg.ID))
	}
	var roles []identity.Role
	for _, rn := range roleNames {
		if role, ok := o.s.cfg.Store.Role(rn); ok {
			roles = append(roles, role)
		}
	}
	ttl := o.s.cfg.UserCertTTL
	if o.cfg.MaxTTL > 0 && o.cfg.MaxTTL < ttl {
		ttl = o.cfg.MaxTTL
	}
	if sr.ttl > 0 && sr.ttl < ttl {
		ttl = sr.ttl
	}
	ttl = identity.SessionTTL(roles, ttl)
	var internal map[string][]string
	if u, ok := o.s.cfg.Store.User(name); ok {
		internal = u.Traits
	}
	traits := Traits(internal, claimTraits(claims))
	id := identity.Identity{Kind: identity.KindUser, Name: name, Cluster: o.s.cfg.Store.Cluster(), Roles: roleNames, Logins: identity.Logins(roles, traits), Traits: traits}
	creds, err := o.s.issue(id, sr.sshPub, sr.tlsPub, ttl, nil, nil)
	if err != nil {
		return fail(http.StatusInternalServerError, "issue certificates: "+err.Error())
	}
	creds.RequireMFA = identity.RequiresMFA(roles)
	ev.Type, ev.Subject = audit.Login, idt.Subject
	o.s.cfg.Audit.Emit(ev)
	o.s.cfg.Audit.Emit(audit.Event{Type: audit.CertIssued, User: name, Roles: roleNames, Cluster: id.Cluster, Command: "user certificates valid " + ttl.String() + " (sso)"})
	o.s.cfg.Logger.Info("user logged in", "user", name, "method", "sso", "proxy", caller.Name, "started_at", sr.proxy, "roles", roleNames, "ttl", ttl)
	return creds, nil
}

// mapRoles returns the roles groups map to that exist, sorted, and those
// the mapping names that do not.
func (o *sso) mapRoles(groups []string) (roles, missing []string) {
	for _, m := range o.cfg.Roles {
		if !slices.Contains(groups, m.Group) {
			continue
		}
		for _, rn := range m.Roles {
			if _, ok := o.s.cfg.Store.Role(rn); !ok {
				if !slices.Contains(missing, rn) {
					missing = append(missing, rn)
				}
				continue
			}
			if !slices.Contains(roles, rn) {
				roles = append(roles, rn)
			}
		}
	}
	sort.Strings(roles)
	return roles, missing
}

// claimStrings reads a groups claim: a list of strings, or one string.
func claimStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func (o *sso) result(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	if !o.enabled(w) {
		return
	}
	var req SSOResultRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := o.s.cfg.Now()
	sum := sha256.Sum256([]byte(req.Secret))
	o.mu.Lock()
	sr, ok := o.byID[req.ID]
	switch {
	case !ok || now.After(sr.expires):
		ok = false
	case !sr.done:
		o.mu.Unlock()
		WriteError(w, http.StatusConflict, "this SSO login is not finished: log in at the provider in your browser first")
		return
	case subtle.ConstantTimeCompare(sum[:], sr.secretHash[:]) != 1:
		o.mu.Unlock()
		WriteError(w, http.StatusForbidden, "wrong secret for this SSO login")
		return
	default:
		delete(o.byID, req.ID) // handed out once
	}
	o.mu.Unlock()
	if !ok {
		WriteError(w, http.StatusNotFound, "unknown or expired SSO login: its result was fetched already or waited too long; run jg login --sso again")
		return
	}
	if sr.failure != nil {
		WriteError(w, sr.failure.Code, sr.failure.Message)
		return
	}
	WriteJSON(w, http.StatusOK, sr.creds)
}

// claimTraits turns the provider's string and string-list claims into
// external traits ({{external.NAME}} in roles), leaving out the token's
// protocol claims and anything CheckTraits would refuse.
func claimTraits(claims map[string]any) map[string][]string {
	skip := map[string]bool{"iss": true, "aud": true, "exp": true, "iat": true, "nbf": true, "nonce": true, "at_hash": true, "c_hash": true, "azp": true, "auth_time": true, "sid": true, "jti": true}
	out := map[string][]string{}
	for k, v := range claims {
		if skip[k] || len(out) >= 64 {
			continue
		}
		vals := claimStrings(v)
		if len(vals) == 0 || len(vals) > 256 {
			continue
		}
		if identity.CheckTraits(map[string][]string{k: vals}) == nil {
			out[k] = vals
		}
	}
	return out
}
