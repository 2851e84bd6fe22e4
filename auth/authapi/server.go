package authapi

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/raftnode"
	"jumpgate.dev/jumpgate/auth/state"
	"jumpgate.dev/jumpgate/node/recording"
)

// ServerConfig configures the auth API server.
type ServerConfig struct {
	ID        string // this auth server's id
	Store     *state.Store
	Hub       *Hub                          // fed from Store by the caller (see PublishState)
	Apply     func(cmd []byte) (any, error) // replicate a command through raft
	RaftStats func() any
	// Raft is this server's raft membership (nil: a server without
	// membership operations, as in tests).
	Raft Raft
	// PeerClient returns a client, with this auth server's identity, for
	// another auth server's API (forwarded writes, membership changes,
	// `jgctl auth ls`). Nil: this server never calls its peers.
	PeerClient func(addr string) (*Client, error)
	// Keystore names the keystore backend (software, pkcs11).
	Keystore string
	// DiagAddr is where this server serves /metrics ("" when it does
	// not), for `jgctl targets`.
	DiagAddr string
	// Signer returns the authority to sign user certificates (server
	// false) or node, proxy and auth server certificates (server true)
	// with: during a CA rotation they differ by phase. Nil: always CA.
	Signer func(server bool) *ca.Authority
	// OnRotate, if set, runs after this server moved the CA rotation to a
	// new phase, before the answer: the server brings its own keys and
	// certificates in line at once (the others do within moments).
	OnRotate func()
	CA       *ca.Authority
	Audit    audit.Sink
	Logger   *slog.Logger
	Now      func() time.Time
	Version  string
	// UserCertTTL is the default lifetime of user certificates (12h),
	// capped by the user's roles' max_session_ttl.
	UserCertTTL time.Duration
	// NodeCertTTL is the lifetime of node and proxy certificates (30 days).
	NodeCertTTL time.Duration
	// MaxBodyBytes bounds request bodies (1 MiB).
	MaxBodyBytes int64
	// SSO, if set, lets users log in through an OpenID Connect provider
	// (see sso.go).
	SSO *SSOConfig
	// Recordings, if set, keeps the session recordings nodes upload
	// (see recordings.go).
	Recordings *recording.Store
}

func (c *ServerConfig) checkAndSetDefaults() error {
	switch {
	case c.ID == "":
		return errors.New("authapi: ID is required")
	case c.Store == nil:
		return errors.New("authapi: Store is required")
	case c.Hub == nil:
		return errors.New("authapi: Hub is required")
	case c.Apply == nil:
		return errors.New("authapi: Apply is required")
	case c.CA == nil:
		return errors.New("authapi: CA is required")
	}
	if c.Audit == nil {
		c.Audit = audit.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RaftStats == nil {
		c.RaftStats = func() any { return nil }
	}
	if c.UserCertTTL == 0 {
		c.UserCertTTL = 12 * time.Hour
	}
	if c.NodeCertTTL == 0 {
		c.NodeCertTTL = 30 * 24 * time.Hour
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	return nil
}

// Server is the auth API's HTTP handler.
type Server struct {
	cfg ServerConfig
	mux *http.ServeMux

	mfaLocks sync.Map // user -> *sync.Mutex: serialises TOTP checks (see checkTOTP)

	peersMu sync.Mutex         // guards peers
	peers   map[string]*Client // by API address; see peerClient

	mu       sync.Mutex // guards following
	presence map[string]presence
	failures map[string]loginFailures
}

type presence struct {
	report  PresenceReport
	expires time.Time
	seen    time.Time
}

type loginFailures struct {
	count int
	last  time.Time
}

// NewServer builds the API handler.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), presence: map[string]presence{}, failures: map[string]loginFailures{}}
	sso, err := newSSO(s)
	if err != nil {
		return nil, err
	}
	s.mux.HandleFunc("GET /v1/ping", s.ping)
	s.mux.HandleFunc("POST /v1/login", s.require(s.login, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/join", s.join)
	s.mux.HandleFunc("POST /v1/sso/start", s.require(sso.start, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/sso/callback", s.require(sso.callback, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/sso/result", s.require(sso.result, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/renew", s.require(s.renew, identity.KindNode, identity.KindProxy, identity.KindAuth))
	s.mux.HandleFunc("GET /v1/watch", s.require(func(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
		s.cfg.Hub.ServeWatch(w, r)
	}, identity.KindProxy, identity.KindNode, identity.KindAdmin, identity.KindAuth))
	s.mux.HandleFunc("POST /v1/presence", s.require(s.postPresence, identity.KindProxy))
	s.mux.HandleFunc("GET /v1/mesh/keys", s.require(s.meshKeys, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/mesh/keys", s.require(s.meshKeyOp, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/proxies", s.require(s.listProxies, identity.KindAdmin, identity.KindProxy))
	s.mux.HandleFunc("GET /v1/nodes", s.require(s.listNodes, identity.KindAdmin, identity.KindProxy))
	s.mux.HandleFunc("DELETE /v1/nodes/{id}", s.require(s.deleteNode, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/status", s.require(s.status, identity.KindAdmin, identity.KindProxy))
	s.mux.HandleFunc("GET /v1/users", s.require(s.listUsers, identity.KindAdmin))
	s.mux.HandleFunc("POST /v1/users", s.require(s.createUser, identity.KindAdmin))
	s.mux.HandleFunc("PUT /v1/users/{name}", s.require(s.upsertUser, identity.KindAdmin))
	s.mux.HandleFunc("DELETE /v1/users/{name}", s.require(s.deleteUser, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/roles", s.require(s.listRoles, identity.KindAdmin))
	s.mux.HandleFunc("PUT /v1/roles", s.require(s.applyRoles, identity.KindAdmin))
	s.mux.HandleFunc("DELETE /v1/roles/{name}", s.require(s.deleteRole, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/tokens", s.require(s.listTokens, identity.KindAdmin))
	s.mux.HandleFunc("POST /v1/tokens", s.require(s.createToken, identity.KindAdmin))
	s.mux.HandleFunc("DELETE /v1/tokens/{id}", s.require(s.deleteToken, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/ca", s.require(s.caStatus, identity.KindAdmin, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/ca/rotate", s.require(s.rotateCA, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/locks", s.require(s.listLocks, identity.KindAdmin, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/locks", s.require(s.createLock, identity.KindAdmin))
	s.mux.HandleFunc("DELETE /v1/locks/{id}", s.require(s.deleteLock, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/backup", s.require(s.backup, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/auth/self", s.require(s.getSelf, identity.KindAuth, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/auth/servers", s.require(s.listAuthServers, identity.KindAdmin, identity.KindProxy))
	s.mux.HandleFunc("POST /v1/auth/servers", s.require(s.membership, identity.KindAdmin))
	s.mux.HandleFunc("POST /v1/user/requests", s.requireUser(s.createRequest))
	s.mux.HandleFunc("GET /v1/user/requests", s.requireUser(s.listOwnRequests))
	s.mux.HandleFunc("GET /v1/user/requests/{id}", s.requireUser(s.getOwnRequest))
	s.mux.HandleFunc("POST /v1/user/certs", s.requireUser(s.reissue))
	s.mux.HandleFunc("POST /v1/user/certs/session", s.requireUser(s.sessionCert))
	s.mux.HandleFunc("POST /v1/user/mfa", s.requireUser(s.addMFADevice))
	s.mux.HandleFunc("GET /v1/user/mfa", s.requireUser(s.listMFADevices))
	s.mux.HandleFunc("PUT /v1/recordings/{session}", s.require(s.uploadRecording, identity.KindProxy))
	s.mux.HandleFunc("GET /v1/recordings", s.require(s.adminRecordings, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/recordings/{session}", s.require(s.adminRecording, identity.KindAdmin))
	s.mux.HandleFunc("GET /v1/user/recordings", s.requireUser(s.userRecordings))
	s.mux.HandleFunc("GET /v1/user/recordings/{session}", s.requireUser(s.userRecording))
	s.mux.HandleFunc("GET /v1/internal/recordings", s.require(s.internalRecordings, identity.KindAuth))
	s.mux.HandleFunc("GET /v1/internal/recordings/{session}", s.require(s.internalRecording, identity.KindAuth))
	s.mux.HandleFunc("GET /v1/requests", s.require(s.listRequests, identity.KindAdmin))
	s.mux.HandleFunc("POST /v1/requests/{id}/review", s.require(s.reviewRequest, identity.KindAdmin))
	s.mux.HandleFunc("DELETE /v1/users/{name}/mfa", s.require(s.resetMFA, identity.KindAdmin))
	s.mux.HandleFunc("POST /v1/internal/presence", s.require(s.internalPresence, identity.KindAuth))
	s.mux.HandleFunc("POST /v1/internal/apply", s.require(s.internalApply, identity.KindAuth))
	s.mux.HandleFunc("POST /v1/internal/membership", s.require(s.internalMembership, identity.KindAuth))
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	limit := s.cfg.MaxBodyBytes
	if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, recordingsPrefix) {
		limit = MaxRecordingBytes + 1 // Put checks the exact limit
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	s.mux.ServeHTTP(w, r)
}

// TLSConfig returns a server TLS config that asks for (but does not
// require) a client certificate and verifies it against the cluster's
// current TLS CAs.
func TLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), pool func() *x509.CertPool) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: getCert, NextProtos: []string{"h2", "http/1.1"}}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = pool()
		return c, nil
	}
	return base
}

// Caller returns the verified identity of r's TLS client, if any.
func Caller(r *http.Request, cluster string) (identity.Identity, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return identity.Identity{}, errors.New("no client certificate: run jg login")
	}
	id, err := identity.FromX509(r.TLS.VerifiedChains[0][0])
	if err != nil {
		return identity.Identity{}, err
	}
	if id.Cluster != cluster {
		return identity.Identity{}, fmt.Errorf("certificate is for cluster %s, this is cluster %s", id.Cluster, cluster)
	}
	return id, nil
}

type identHandler func(w http.ResponseWriter, r *http.Request, id identity.Identity)

func (s *Server) require(h identHandler, kinds ...identity.Kind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := Caller(r, s.cfg.Store.Cluster())
		if err != nil {
			WriteError(w, http.StatusUnauthorized, err.Error())
			return
		}
		for _, k := range kinds {
			if id.Kind == k {
				h(w, r, id)
				return
			}
		}
		WriteError(w, http.StatusForbidden, fmt.Sprintf("%s may not call %s %s", id, r.Method, r.URL.Path))
	}
}

// WriteError writes an ErrorResponse.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, ErrorResponse{Error: msg})
}

// WriteJSON writes v as JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		WriteError(w, http.StatusBadRequest, "malformed request body: "+err.Error())
		return false
	}
	return true
}

// applyErr maps an Apply error to an HTTP answer.
func (s *Server) applyErr(w http.ResponseWriter, err error) {
	var re *raftnode.RetryableError
	var te *state.TokenError
	switch {
	case errors.As(err, &re):
		WriteError(w, http.StatusServiceUnavailable, err.Error())
	case errors.As(err, &te):
		WriteError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, state.ErrNotFound):
		WriteError(w, http.StatusNotFound, err.Error())
	default:
		WriteError(w, http.StatusBadRequest, err.Error())
	}
}

func (s *Server) apply(t state.Type, body any) (any, error) {
	cmd, err := state.Encode(t, body)
	if err != nil {
		return nil, err
	}
	return s.cfg.Apply(cmd)
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"cluster": s.cfg.Store.Cluster(), "server": s.cfg.ID, "version": s.cfg.Version, "api": Version})
}

func (s *Server) caBundle() CABundle {
	c := s.cfg.Store.CAs()
	return CABundle{UserSSH: c.UserSSH, HostSSH: c.HostSSH, TLS: ca.PEMCert(c.TLS...)}
}

// --- passwords -------------------------------------------------------------

// argon2id parameters: RFC 9106's second recommended option (64 MiB, 3
// passes, 4 lanes) costs ~100 ms here; a login is rare, a stolen hash is
// forever.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024
	argonThreads = 4
	argonKeyLen  = 32
)

// HashPassword returns an argon2id hash in PHC string format.
func HashPassword(pw string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// CheckPassword verifies pw against a hash from HashPassword.
func CheckPassword(hash, pw string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m > 1<<20 || t > 16 {
		return false
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is compared against when a user does not exist, so a login for
// an unknown user takes as long as one for a known user.
var dummyHash = "$argon2id$v=19$m=65536,t=3,p=4$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

// Login throttling: after loginFreeFailures consecutive failures a user
// must wait loginPenalty per further failure (capped), which makes online
// guessing hopeless without locking the real user out for long.
const (
	loginFreeFailures = 5
	loginPenalty      = 10 * time.Second
	loginMaxPenalty   = 5 * time.Minute
)

func (s *Server) loginWait(user string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.failures[user]
	return penaltyLeft(f.count, f.last, now)
}

// penaltyLeft is how long a user who failed count times in a row, the last
// at last, must still wait (logins and TOTP codes alike).
func penaltyLeft(count int, last, now time.Time) time.Duration {
	if count < loginFreeFailures {
		return 0
	}
	wait := min(time.Duration(count-loginFreeFailures+1)*loginPenalty, loginMaxPenalty)
	if until := last.Add(wait); now.Before(until) {
		return until.Sub(now)
	}
	return 0
}

func (s *Server) loginResult(user string, ok bool, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		delete(s.failures, user)
		return
	}
	f := s.failures[user]
	if now.Sub(f.last) > time.Hour {
		f.count = 0
	}
	f.count++
	f.last = now
	s.failures[user] = f
}

func (s *Server) login(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	if !s.canSign(w, false) {
		return
	}
	var req LoginRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := s.cfg.Now()
	ev := audit.Event{Type: audit.LoginFailed, User: req.User, RemoteAddr: req.ClientAddr, Cluster: s.cfg.Store.Cluster()}
	fail := func(code int, msg string) {
		ev.Error = msg
		s.cfg.Audit.Emit(ev)
		WriteError(w, code, msg)
	}
	if wait := s.loginWait(req.User, now); wait > 0 {
		fail(http.StatusTooManyRequests, fmt.Sprintf("too many failed logins for %s: try again in %s", req.User, identity.HumanDuration(wait)))
		return
	}
	u, ok := s.cfg.Store.User(req.User)
	hash := u.PasswordHash
	if !ok || hash == "" {
		hash = dummyHash
	}
	if !CheckPassword(hash, req.Password) || !ok {
		s.loginResult(req.User, false, now)
		fail(http.StatusUnauthorized, "wrong user name or password")
		return
	}
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.SSHPublic))
	if err != nil {
		fail(http.StatusBadRequest, "malformed SSH public key: "+err.Error())
		return
	}
	tlsPub, err := x509.ParsePKIXPublicKey(req.TLSPublic)
	if err != nil {
		fail(http.StatusBadRequest, "malformed TLS public key: "+err.Error())
		return
	}
	s.loginResult(req.User, true, now)
	if err := identity.CheckLocks(s.cfg.Store.Locks(), identity.LockTarget{User: u.Name, Roles: u.Roles}, now); err != nil {
		fail(http.StatusForbidden, err.Error())
		return
	}
	var roles []identity.Role
	for _, name := range u.Roles {
		if role, ok := s.cfg.Store.Role(name); ok {
			roles = append(roles, role)
		}
	}
	ttl := s.cfg.UserCertTTL
	if req.TTL != "" {
		if d, err := time.ParseDuration(req.TTL); err == nil && d > 0 && d < ttl {
			ttl = d
		}
	}
	ttl = identity.SessionTTL(roles, ttl)
	traits := Traits(u.Traits, nil)
	id := identity.Identity{Kind: identity.KindUser, Name: u.Name, Cluster: s.cfg.Store.Cluster(), Roles: u.Roles, Logins: identity.Logins(roles, traits), Traits: traits}
	creds, err := s.issue(id, sshPub, tlsPub, ttl, nil, nil)
	if err != nil {
		fail(http.StatusInternalServerError, "issue certificates: "+err.Error())
		return
	}
	creds.RequireMFA = identity.RequiresMFA(roles)
	ev.Type, ev.Roles = audit.Login, u.Roles
	s.cfg.Audit.Emit(ev)
	s.cfg.Audit.Emit(audit.Event{Type: audit.CertIssued, User: u.Name, Roles: u.Roles, Cluster: id.Cluster, Command: "user certificates valid " + ttl.String()})
	s.cfg.Logger.Info("user logged in", "user", u.Name, "proxy", caller.Name, "ttl", ttl)
	WriteJSON(w, http.StatusOK, creds)
}

// issue signs an SSH certificate (users and nodes, when sshPub is set) and a
// TLS certificate for id.
func (s *Server) issue(id identity.Identity, sshPub ssh.PublicKey, tlsPub any, ttl time.Duration, dns []string, ips []net.IP) (*Credentials, error) {
	creds := &Credentials{Cluster: id.Cluster, Name: id.Name, Roles: id.Roles, Logins: id.Logins, Expires: s.cfg.Now().Add(ttl), CAs: s.caBundle()}
	a := s.signer(id.Kind != identity.KindUser)
	if sshPub != nil {
		var cert *ssh.Certificate
		var err error
		if id.Kind == identity.KindUser {
			cert, err = a.SignUserSSH(sshPub, id, ttl)
		} else {
			cert, err = a.SignHostSSH(sshPub, id.Name, []string{id.Name, id.Name + "." + id.Cluster}, ttl)
		}
		if err != nil {
			return nil, err
		}
		creds.SSHCert = string(ssh.MarshalAuthorizedKey(cert))
	}
	der, err := a.SignTLS(ca.TLSRequest{Identity: id, PublicKey: tlsPub, TTL: ttl, DNSNames: dns, IPs: ips, Server: id.Kind == identity.KindProxy || id.Kind == identity.KindAuth})
	if err != nil {
		return nil, err
	}
	creds.TLSCert = ca.PEMCert(der)
	return creds, nil
}

// signer is the authority for user (server false) or other certificates.
func (s *Server) signer(server bool) *ca.Authority {
	if s.cfg.Signer != nil {
		return s.cfg.Signer(server)
	}
	return s.cfg.CA
}

// canSign refuses (503, so clients fail over to another auth server) when
// this server may not sign what is asked: nothing while the cluster does
// not trust its CA keys, and no server certificates (node host
// certificates, proxy and auth TLS certificates, which users' clients
// check against the CA bundle they cached at login) unless it is a server
// signer (state.AuthServer.SignsServerCerts).
func (s *Server) canSign(w http.ResponseWriter, serverCerts bool) bool {
	if !s.keysTrusted() {
		WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("auth server %s cannot sign certificates: the cluster does not trust its CA keys; use another auth server", s.cfg.ID))
		return false
	}
	if serverCerts && !s.signsServerCerts() {
		WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("auth server %s signs user certificates only: its keys are not in every client's CA bundle yet (a CA rotation puts them there); join through another auth server", s.cfg.ID))
		return false
	}
	return true
}

func (s *Server) signsServerCerts() bool {
	if s.cfg.Raft == nil {
		return true // a lone server without membership: its keys are the cluster's
	}
	a, ok := s.cfg.Store.AuthServer(s.cfg.ID)
	return ok && a.SignsServerCerts
}

// HashToken returns the stored form of a join token secret.
func HashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	if !s.canSign(w, true) {
		return
	}
	var req JoinRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := s.cfg.Now()
	ev := audit.Event{Type: audit.JoinFailed, Node: req.Name, RemoteAddr: r.Header.Get("X-Forwarded-For"), Cluster: s.cfg.Store.Cluster()}
	fail := func(code int, msg string) {
		ev.Error = msg
		s.cfg.Audit.Emit(ev)
		s.cfg.Logger.Warn("join refused", "node", req.Name, "kind", req.Kind, "err", msg)
		WriteError(w, code, msg)
	}
	if req.Kind != identity.KindNode && req.Kind != identity.KindProxy && req.Kind != identity.KindAuth {
		fail(http.StatusBadRequest, fmt.Sprintf("cannot join as %q: want node, proxy or auth", req.Kind))
		return
	}
	if req.Kind == identity.KindAuth {
		if req.Auth == nil || req.Auth.APIAddr == "" || req.Auth.RaftAddr == "" {
			fail(http.StatusBadRequest, "an auth server joins with its API and raft addresses")
			return
		}
		if s.cfg.Raft == nil {
			fail(http.StatusBadRequest, "this auth server cannot add members")
			return
		}
	}
	if err := identity.CheckName(req.Name); err != nil {
		fail(http.StatusBadRequest, "name: "+err.Error())
		return
	}
	tlsPub, err := x509.ParsePKIXPublicKey(req.TLSPublic)
	if err != nil {
		fail(http.StatusBadRequest, "malformed TLS public key: "+err.Error())
		return
	}
	var sshPub ssh.PublicKey
	if req.Kind == identity.KindNode {
		if sshPub, _, _, _, err = ssh.ParseAuthorizedKey([]byte(req.SSHPublic)); err != nil {
			fail(http.StatusBadRequest, "malformed SSH host key: "+err.Error())
			return
		}
	}
	var ips []net.IP
	for _, a := range req.IPs {
		ip := net.ParseIP(a)
		if ip == nil {
			fail(http.StatusBadRequest, fmt.Sprintf("%q is not an IP address", a))
			return
		}
		ips = append(ips, ip)
	}
	if req.Kind == identity.KindNode {
		if err := identity.CheckLocks(s.cfg.Store.Locks(), identity.LockTarget{Node: req.Name}, now); err != nil {
			fail(http.StatusForbidden, err.Error())
			return
		}
	}
	res, err := s.apply(state.TypeConsumeToken, state.ConsumeToken{Hash: HashToken(req.Token), Kind: req.Kind, Name: req.Name, Now: now})
	if err != nil {
		var te *state.TokenError
		if errors.As(err, &te) {
			fail(http.StatusForbidden, te.Reason)
			return
		}
		s.applyErr(w, err)
		return
	}
	tok := res.(state.Token)
	if req.Kind == identity.KindAuth {
		if err := s.joinAuth(r.Context(), req.Name, tok, req.Auth); err != nil {
			fail(http.StatusServiceUnavailable, fmt.Sprintf("add auth server %s to the cluster: %v (the token is spent: create a new one with jgctl auth add %s)", req.Name, err, req.Name))
			return
		}
	}
	if req.Kind == identity.KindNode {
		labels := map[string]string{}
		for k, v := range tok.Labels {
			labels[k] = v
		}
		for k, v := range req.Labels {
			labels[k] = v
		}
		node := state.Node{ID: req.Name, Labels: labels, HostKey: strings.TrimSpace(req.SSHPublic), Joined: now}
		if _, err := s.apply(state.TypeUpsertNode, state.UpsertNode{Node: node}); err != nil {
			s.applyErr(w, err)
			return
		}
	}
	id := identity.Identity{Kind: req.Kind, Name: req.Name, Cluster: s.cfg.Store.Cluster()}
	creds, err := s.issue(id, sshPub, tlsPub, s.cfg.NodeCertTTL, req.DNSNames, ips)
	if err != nil {
		fail(http.StatusInternalServerError, "issue certificates: "+err.Error())
		return
	}
	ev.Type, ev.Error, ev.Subject = audit.NodeJoined, "", string(req.Kind)
	s.cfg.Audit.Emit(ev)
	s.cfg.Logger.Info("joined", "kind", req.Kind, "node", req.Name, "token", tok.ID())
	WriteJSON(w, http.StatusOK, creds)
}

// --- presence and nodes ----------------------------------------------------

func (s *Server) postPresence(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var rep PresenceReport
	if !readJSON(w, r, &rep) {
		return
	}
	rep.Proxy = caller.Name // a proxy reports for itself only
	s.storePresence(rep)
	s.sharePresence(rep)
	// Labels a node reports over its tunnel update the inventory.
	for _, np := range rep.Nodes {
		n, ok := s.cfg.Store.Node(np.ID)
		if ok && np.Labels != nil && !labelsEqual(n.Labels, np.Labels) {
			if _, err := s.apply(state.TypeSetNodeLabel, state.SetNodeLabels{ID: np.ID, Labels: np.Labels}); err != nil {
				s.cfg.Logger.Warn("update node labels", "node", np.ID, "err", err)
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func labelsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// NodeStatuses merges the inventory with live presence.
func (s *Server) NodeStatuses() []NodeStatus {
	now := s.cfg.Now()
	s.mu.Lock()
	live := map[string][]NodePresence{}
	holders := map[string][]string{}
	for id, p := range s.presence {
		if now.After(p.expires) {
			continue
		}
		for _, n := range p.report.Nodes {
			live[n.ID] = append(live[n.ID], n)
			holders[n.ID] = append(holders[n.ID], id)
		}
	}
	s.mu.Unlock()
	var out []NodeStatus
	for _, n := range s.cfg.Store.Nodes() {
		st := NodeStatus{ID: n.ID, Labels: n.Labels, Joined: n.Joined}
		if ps := live[n.ID]; len(ps) > 0 {
			st.Online = true
			st.Proxies = holders[n.ID]
			sort.Strings(st.Proxies)
			st.Since = ps[0].Since
			for _, p := range ps {
				if p.Since.Before(st.Since) {
					st.Since = p.Since
				}
				if st.DiagAddr == "" {
					st.DiagAddr = p.DiagAddr
				}
			}
		}
		out = append(out, st)
	}
	return out
}

// proxyStates lists the proxies heard from in the last hour, by id.
func (s *Server) proxyStates() []ProxyState {
	now := s.cfg.Now()
	var out []ProxyState
	s.mu.Lock()
	for id, p := range s.presence {
		if now.Sub(p.seen) < time.Hour {
			out = append(out, ProxyState{ID: id, LastSeen: p.seen, Tunnels: len(p.report.Nodes), Mesh: p.report.Mesh})
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Server) listProxies(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.proxyStates())
}

// meshKeys hands the gossip keyring to a proxy. Nodes and users never get
// it: the route requires a proxy certificate.
func (s *Server) meshKeys(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	keys := s.cfg.Store.MeshKeys()
	if len(keys) == 0 {
		WriteError(w, http.StatusServiceUnavailable, "the cluster has no mesh key yet: the auth server creates one at start; retry")
		return
	}
	WriteJSON(w, http.StatusOK, MeshKeys{Keys: keys})
}

// MeshKeyID names a gossip key without revealing it: the first 6 bytes of
// its SHA-256, in hex. Proxies report the IDs of the keys they hold.
func MeshKeyID(k []byte) string {
	h := sha256.Sum256(k)
	return hex.EncodeToString(h[:6])
}

func keyring(keys [][]byte, primary int) *MeshKeyring {
	r := &MeshKeyring{KeyIDs: []string{}}
	if len(keys) == 0 {
		return r
	}
	r.KeyIDs = append(r.KeyIDs, MeshKeyID(keys[primary]))
	for i, k := range keys {
		if i != primary {
			r.KeyIDs = append(r.KeyIDs, MeshKeyID(k))
		}
	}
	r.Newest = MeshKeyID(keys[len(keys)-1])
	return r
}

// meshKeyOp applies one step of a gossip key rotation. Keys stay in
// creation order; promote only moves the primary, so a rotation that
// stopped half-way can always tell the new key (the newest) from the old.
func (s *Server) meshKeyOp(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var op MeshKeyOp
	if !readJSON(w, r, &op) {
		return
	}
	keys, primary := s.cfg.Store.MeshKeyring()
	find := func() int {
		for i, k := range keys {
			if MeshKeyID(k) == op.KeyID {
				return i
			}
		}
		return -1
	}
	switch op.Op {
	case "list":
		WriteJSON(w, http.StatusOK, keyring(keys, primary))
		return
	case "add":
		if len(keys) >= state.MaxMeshKeys {
			WriteError(w, http.StatusConflict, fmt.Sprintf("the keyring already holds %d keys: remove an old one first", len(keys)))
			return
		}
		k := make([]byte, state.MeshKeyBytes)
		if _, err := rand.Read(k); err != nil {
			WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		keys = append(keys, k)
	case "promote":
		i := find()
		if i < 0 {
			WriteError(w, http.StatusNotFound, fmt.Sprintf("no mesh key %q in the keyring", op.KeyID))
			return
		}
		primary = i
	case "remove":
		i := find()
		switch {
		case i < 0:
			WriteError(w, http.StatusNotFound, fmt.Sprintf("no mesh key %q in the keyring", op.KeyID))
			return
		case i == primary:
			WriteError(w, http.StatusConflict, "that key is the primary: promote another key first")
			return
		}
		keys = append(keys[:i], keys[i+1:]...)
		if i < primary {
			primary--
		}
	default:
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("unknown mesh key operation %q: want list, add, promote or remove", op.Op))
		return
	}
	if _, err := s.apply(state.TypeSetMeshKeys, state.SetMeshKeys{Keys: keys, Primary: primary}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.MeshKeyChanged, User: caller.Name, Subject: MeshKeyID(keys[primary]), Command: op.Op})
	s.cfg.Logger.Info("mesh keyring changed", "op", op.Op, "by", caller.Name, "primary", MeshKeyID(keys[primary]), "keys", len(keys))
	WriteJSON(w, http.StatusOK, keyring(keys, primary))
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.NodeStatuses())
}

func (s *Server) deleteNode(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	if _, err := s.apply(state.TypeDeleteNode, state.DeleteNode{ID: r.PathValue("id")}); err != nil {
		s.applyErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	st := Status{Cluster: s.cfg.Store.Cluster(), AuthServer: s.cfg.ID, Version: s.cfg.Version, Raft: s.cfg.RaftStats(),
		Users: len(s.cfg.Store.Users()), Roles: len(s.cfg.Store.Roles())}
	for _, n := range s.NodeStatuses() {
		st.Nodes++
		if n.Online {
			st.Online++
		}
	}
	st.Proxies = s.proxyStates()
	for _, der := range s.cfg.Store.CAs().TLS {
		if c, err := x509.ParseCertificate(der); err == nil {
			st.CAPins = append(st.CAPins, ca.Pin(c))
		}
	}
	WriteJSON(w, http.StatusOK, st)
}

// --- users, roles, tokens --------------------------------------------------

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.cfg.Store.Users())
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var req CreateUserRequest
	if !readJSON(w, r, &req) {
		return
	}
	if len(req.Password) < 8 {
		WriteError(w, http.StatusBadRequest, "password must be at least 8 characters")
		return
	}
	for _, role := range req.Roles {
		if _, ok := s.cfg.Store.Role(role); !ok {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("role %s does not exist: create it first with jgctl roles apply", role))
			return
		}
	}
	hash, err := HashPassword(req.Password)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	u := state.User{Name: req.Name, Roles: req.Roles, PasswordHash: hash, Created: s.cfg.Now().UTC()}
	if _, err := s.apply(state.TypeUpsertUser, state.UpsertUser{User: u, Create: true}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.UserCreated, User: caller.Name, Subject: req.Name, Roles: req.Roles})
	u.PasswordHash = ""
	WriteJSON(w, http.StatusCreated, u)
}

func (s *Server) upsertUser(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var req UpsertUserRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Name == "" {
		req.Name = r.PathValue("name")
	}
	if req.Name != r.PathValue("name") {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("the body names user %s but the path %s", req.Name, r.PathValue("name")))
		return
	}
	for _, role := range req.Roles {
		if _, ok := s.cfg.Store.Role(role); !ok {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("role %s does not exist: create it first with jgctl roles apply", role))
			return
		}
	}
	if err := identity.CheckTraits(req.Traits); err != nil {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("user %s: %v", req.Name, err))
		return
	}
	old, existed := s.cfg.Store.User(req.Name)
	u := state.User{Name: req.Name, Roles: req.Roles, Traits: req.Traits, Origin: req.Origin, Created: s.cfg.Now().UTC()}
	if existed {
		u.Created = old.Created
	}
	if _, err := s.apply(state.TypeUpsertUser, state.UpsertUser{User: u}); err != nil {
		s.applyErr(w, err)
		return
	}
	typ, code := audit.UserUpdated, http.StatusOK
	if !existed {
		typ, code = audit.UserCreated, http.StatusCreated
	}
	s.cfg.Audit.Emit(audit.Event{Type: typ, User: caller.Name, Subject: req.Name, Roles: req.Roles})
	u, _ = s.cfg.Store.User(req.Name)
	u.PasswordHash = ""
	WriteJSON(w, code, u)
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	name := r.PathValue("name")
	if _, err := s.apply(state.TypeDeleteUser, state.DeleteUser{Name: name}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.UserDeleted, User: caller.Name, Subject: name})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listRoles(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.cfg.Store.Roles())
}

func (s *Server) applyRoles(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var roles []identity.Role
	if !readJSON(w, r, &roles) {
		return
	}
	for _, role := range roles {
		if err := role.Check(); err != nil {
			WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	for _, role := range roles {
		if _, err := s.apply(state.TypeUpsertRole, state.UpsertRole{Role: role}); err != nil {
			s.applyErr(w, err)
			return
		}
		s.cfg.Audit.Emit(audit.Event{Type: audit.RoleUpserted, User: caller.Name, Subject: role.Name})
	}
	WriteJSON(w, http.StatusOK, roles)
}

func (s *Server) deleteRole(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	name := r.PathValue("name")
	if _, err := s.apply(state.TypeDeleteRole, state.DeleteRole{Name: name}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.RoleDeleted, User: caller.Name, Subject: name})
	w.WriteHeader(http.StatusNoContent)
}

// TokenInfo is a token as listed (never the secret).
type TokenInfo struct {
	ID      string            `json:"id"`
	Kind    identity.Kind     `json:"kind"`
	Name    string            `json:"name,omitempty"` // the only name it joins as
	Labels  map[string]string `json:"labels,omitempty"`
	Expires time.Time         `json:"expires"`
	Created time.Time         `json:"created"`
	UsedBy  string            `json:"used_by,omitempty"`
	Origin  string            `json:"origin,omitempty"`
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	out := []TokenInfo{}
	for _, t := range s.cfg.Store.Tokens() {
		out = append(out, TokenInfo{ID: t.ID(), Kind: t.Kind, Name: t.Name, Labels: t.Labels, Expires: t.Expires, Created: t.Created, UsedBy: t.UsedBy, Origin: t.Origin})
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var req CreateTokenRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Kind == identity.KindAuth {
		WriteError(w, http.StatusBadRequest, "auth server tokens come from jgctl auth add, which binds them to the new server's id")
		return
	}
	s.createTokenFor(w, caller, req)
}

func (s *Server) createTokenFor(w http.ResponseWriter, caller identity.Identity, req CreateTokenRequest) {
	ttl := time.Duration(req.TTL)
	if ttl <= 0 {
		ttl = 30 * time.Minute
	}
	if ttl > 7*24*time.Hour {
		WriteError(w, http.StatusBadRequest, "join tokens may live at most 7 days (168h)")
		return
	}
	secret := hex.EncodeToString(randomBytes(16))
	if req.Secret != "" {
		if len(req.Secret) < 32 || len(req.Secret) > 256 || strings.ContainsAny(req.Secret, " \t\r\n") {
			WriteError(w, http.StatusBadRequest, "a token secret must be 32 to 256 characters without spaces (generate one with: openssl rand -hex 32)")
			return
		}
		if _, exists := s.cfg.Store.Token(HashToken(req.Secret)); exists {
			WriteError(w, http.StatusConflict, "a token with this secret exists already")
			return
		}
		secret = req.Secret
	}
	now := s.cfg.Now().UTC()
	tok := state.Token{Hash: HashToken(secret), Kind: req.Kind, Name: req.Name, Voter: req.Voter, Labels: req.Labels, Expires: now.Add(ttl), Created: now, Origin: req.Origin}
	if _, err := s.apply(state.TypeCreateToken, state.CreateToken{Token: tok}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.TokenCreated, User: caller.Name, Subject: tok.ID(), Command: string(req.Kind)})
	resp := CreateTokenResponse{Token: secret, ID: tok.ID(), Expires: tok.Expires}
	if cas := s.cfg.Store.CAs().TLS; len(cas) > 0 {
		if c, err := x509.ParseCertificate(cas[0]); err == nil {
			resp.CAPin = ca.Pin(c)
		}
	}
	WriteJSON(w, http.StatusCreated, resp)
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	id := r.PathValue("id")
	if _, err := s.apply(state.TypeDeleteToken, state.DeleteToken{ID: id}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.TokenDeleted, User: caller.Name, Subject: id})
	w.WriteHeader(http.StatusNoContent)
}

// PublishState returns the state machine's change callback that feeds hub.
// store is read lazily because the callback is built before the store.
func PublishState(hub *Hub, store func() *state.Store) func(uint64, []state.Event) {
	return func(index uint64, evs []state.Event) {
		for i := range evs {
			if evs[i].Op == "reset" {
				_ = hub.Apply(SnapshotMessage(store()))
				return
			}
		}
		for i := range evs {
			_ = hub.Apply(WatchMessage{Type: "event", Index: index, Event: &evs[i]})
		}
	}
}

// SnapshotMessage builds a watch snapshot from the state machine.
func SnapshotMessage(st *state.Store) WatchMessage {
	return WatchMessage{Type: "snapshot", Index: st.Index(), Snapshot: &WatchSnapshot{Cluster: st.Cluster(), CAs: st.CAs(), Roles: st.Roles(), Nodes: st.Nodes(), Locks: st.Locks()}}
}

// Traits keys a user's own traits and an SSO login's claims the way role
// templates read them: {{internal.NAME}} and {{external.NAME}}.
func Traits(internal, external map[string][]string) map[string][]string {
	if len(internal)+len(external) == 0 {
		return nil
	}
	out := make(map[string][]string, len(internal)+len(external))
	for k, v := range internal {
		out[identity.TraitKey(identity.TraitsInternal, k)] = v
	}
	for k, v := range external {
		out[identity.TraitKey(identity.TraitsExternal, k)] = v
	}
	return out
}
