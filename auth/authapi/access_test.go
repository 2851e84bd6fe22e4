package authapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
	"jumpgate.dev/jumpgate/node/recording"
)

// TestAccessRequestsAndMFA: a user asks for a role their role lets them
// request; a reviewer approves; the user's new certificates carry it until
// the approved time only; the role requires per-session MFA, and a TOTP
// code buys one certificate for one node and login, once. Every step is
// audited, and a proxy cannot forward a call without a valid user
// certificate.
func TestAccessRequestsAndMFA(t *testing.T) {
	tca := authtest.NewCA(t, "c1")
	var clockMu sync.Mutex
	now := time.Now()
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	ts := newTestState(t, clock)
	store, apply, must, authority := ts.store, ts.apply, ts.must, ts.authority
	roles, err := identity.ParseRoles([]byte(`
kind: role
name: dev
allow:
  logins: [ubuntu]
  node_labels: {"*": "*"}
  request: {roles: [prod-access], max_duration: 2h}
---
kind: role
name: prod-access
allow:
  logins: [root]
  node_labels: {env: prod}
require_session_mfa: true
---
kind: role
name: admin-role
allow:
  logins: [root]
  node_labels: {"*": "*"}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roles {
		must(state.TypeUpsertRole, state.UpsertRole{Role: r})
	}
	hash, _ := HashPassword("correct horse")
	must(state.TypeUpsertUser, state.UpsertUser{User: state.User{Name: "alice", Roles: []string{"dev"}, PasswordHash: hash}})
	must(state.TypeUpsertNode, state.UpsertNode{Node: state.Node{ID: "db1", Labels: map[string]string{"env": "prod"}}})

	var evMu sync.Mutex
	var events []audit.Event
	srv, err := NewServer(ServerConfig{ID: "auth-c1", Store: store, Hub: NewHub(), Apply: apply, CA: authority, Now: clock,
		Audit: audit.SinkFunc(func(e audit.Event) { evMu.Lock(); events = append(events, e); evMu.Unlock() })})
	if err != nil {
		t.Fatal(err)
	}
	serverCert := tca.Issue(t, identity.Identity{Kind: identity.KindAuth, Name: "auth-c1", Cluster: "c1"})
	pool := func() *x509.CertPool {
		p := tca.Pool().Clone()
		c, _ := x509.ParseCertificate(authority.TLSCACert())
		p.AddCert(c)
		return p
	}
	hs := httptest.NewUnstartedServer(srv)
	hs.TLS = TLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert, nil }, pool)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	client := func(id identity.Identity) *Client {
		cert := tca.Issue(t, id)
		c, err := NewClient(ClientConfig{Addr: hs.Listener.Addr().String(), Timeout: 10 * time.Second,
			Trust:                TrustConfig{RootCAs: tca.Pool, Kinds: []identity.Kind{identity.KindAuth}},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	ctx := context.Background()
	proxy := client(identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "c1"})
	admin := client(identity.Identity{Kind: identity.KindAdmin, Name: "sec-lead", Cluster: "c1"})

	// alice logs in through the proxy, as jg does.
	sshPub, _, _ := ed25519.GenerateKey(rand.Reader)
	tlsPub, tlsPriv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	signWith := tlsPriv // the key calls are signed with (the user's, but for one test)
	sshKey, _ := ssh.NewPublicKey(sshPub)
	tlsDER, _ := x509.MarshalPKIXPublicKey(tlsPub)
	sshLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshKey)))
	login, err := proxy.Login(ctx, LoginRequest{User: "alice", Password: "correct horse", SSHPublic: sshLine, TLSPublic: tlsDER})
	if err != nil {
		t.Fatal(err)
	}
	if login.RequireMFA {
		t.Error("dev alone requires no MFA")
	}
	certDER := func(c *Credentials) []byte {
		b, _ := pem.Decode(c.TLSCert)
		return b.Bytes
	}
	userCert := certDER(login)
	call := func(cert []byte, method, path string, in, out any) (int, string) {
		t.Helper()
		var body []byte
		if in != nil {
			body, _ = json.Marshal(in)
		}
		// What jg does: sign the call with the certificate's key.
		signed, _ := http.NewRequest(method, "https://proxy"+path, nil)
		if err := signUserCall(signWith, signed, body, clock()); err != nil {
			t.Fatal(err)
		}
		resp, err := proxy.ForwardUser(ctx, method, path, cert, body, signed.Header)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil && resp.StatusCode/100 == 2 {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v in %s", method, path, err, b)
			}
		}
		return resp.StatusCode, string(b)
	}

	// A proxy cannot make up a user: no certificate, or one the cluster's
	// CA did not sign, is refused.
	if code, msg := call(nil, "GET", "/v1/user/requests", nil, nil); code != http.StatusUnauthorized {
		t.Errorf("no user certificate: %d %s", code, msg)
	}
	forged := tca.Issue(t, identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "c1", Roles: []string{"admin-role"}})
	if code, msg := call(forged.Certificate[0], "GET", "/v1/user/requests", nil, nil); code != http.StatusUnauthorized || !strings.Contains(msg, "not valid for this cluster") {
		t.Errorf("forged user certificate: %d %s", code, msg)
	}
	// A proxy that has a user's certificate (certificates are public) but
	// not their key cannot call in their name.
	signWith = otherPriv
	if code, msg := call(userCert, "GET", "/v1/user/requests", nil, nil); code != http.StatusUnauthorized || !strings.Contains(msg, "proof") {
		t.Errorf("call signed with another key: %d %s", code, msg)
	}
	signWith = tlsPriv
	if code, msg := call(userCert, "GET", "/v1/user/requests", nil, nil); code != http.StatusOK {
		t.Errorf("signed call: %d %s", code, msg)
	}
	// A user may not call the endpoints directly either.
	if _, err := client(identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "c1"}).MyAccessRequests(ctx); err == nil {
		t.Error("a user called /v1/user directly")
	}

	// Requests: only what the roles allow, with a reason.
	if code, msg := call(userCert, "POST", "/v1/user/requests", CreateAccessRequest{Roles: []string{"admin-role"}, Reason: "please"}, nil); code != http.StatusForbidden || !strings.Contains(msg, "may request role admin-role") {
		t.Errorf("admin-role: %d %s", code, msg)
	}
	if code, msg := call(userCert, "POST", "/v1/user/requests", CreateAccessRequest{Roles: []string{"prod-access"}}, nil); code != http.StatusBadRequest || !strings.Contains(msg, "reason") {
		t.Errorf("no reason: %d %s", code, msg)
	}
	var ar state.AccessRequest
	if code, msg := call(userCert, "POST", "/v1/user/requests", CreateAccessRequest{Roles: []string{"prod-access"}, Reason: "INC-42 db failover"}, &ar); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, msg)
	}
	if ar.State != state.RequestPending || time.Duration(ar.Duration) != 2*time.Hour {
		t.Errorf("request %+v", ar)
	}
	reissue := func(reqs ...string) (int, string, *Credentials) {
		var c Credentials
		code, msg := call(userCert, "POST", "/v1/user/certs", ReissueRequest{SSHPublic: sshLine, TLSPublic: tlsDER, Requests: reqs}, &c)
		return code, msg, &c
	}
	if code, msg, _ := reissue(ar.ID); code != http.StatusForbidden || !strings.Contains(msg, "pending") {
		t.Errorf("reissue with a pending request: %d %s", code, msg)
	}
	pending, err := admin.AccessRequests(ctx, "", "pending")
	if err != nil || len(pending) != 1 || pending[0].ID != ar.ID {
		t.Fatalf("pending requests: %v %v", pending, err)
	}
	got, err := admin.ReviewAccessRequest(ctx, ar.ID, ReviewRequest{Approve: true, Reason: "ok for the incident"})
	if err != nil || got.State != state.RequestApproved || got.Reviewer != "sec-lead" {
		t.Fatalf("approve: %+v %v", got, err)
	}
	if _, err := admin.ReviewAccessRequest(ctx, ar.ID, ReviewRequest{Approve: false}); err == nil {
		t.Error("a request was reviewed twice")
	}

	code, msg, elevated := reissue(ar.ID)
	if code != http.StatusOK {
		t.Fatalf("reissue: %d %s", code, msg)
	}
	if !slicesEqual(elevated.Roles, []string{"dev", "prod-access"}) || !elevated.RequireMFA || !slicesEqual(elevated.Requests, []string{ar.ID}) || !slicesEqual(elevated.Logins, []string{"root", "ubuntu"}) {
		t.Errorf("elevated credentials: roles %v logins %v mfa %v requests %v", elevated.Roles, elevated.Logins, elevated.RequireMFA, elevated.Requests)
	}
	if d := elevated.Expires.Sub(clock()); d > 2*time.Hour+time.Minute || d < 2*time.Hour-time.Minute {
		t.Errorf("elevated certificates valid for %s, want the approved 2h", d)
	}
	leaf, _ := x509.ParseCertificate(certDER(elevated))
	if id, _ := identity.FromX509(leaf); !slicesEqual(id.Requests, []string{ar.ID}) {
		t.Errorf("TLS certificate requests %v", id.Requests)
	}

	// MFA: enroll, then a code per session.
	key, _ := totp.Generate(totp.GenerateOpts{Issuer: "c1", AccountName: "alice"})
	code6 := func(at time.Time) string {
		c, err := totp.GenerateCodeCustom(key.Secret(), at, totpOpts)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if code, msg := call(userCert, "POST", "/v1/user/mfa", AddMFADeviceRequest{Name: "phone", Secret: key.Secret(), Code: "000000"}, nil); code != http.StatusBadRequest {
		t.Errorf("enroll with a wrong code: %d %s", code, msg)
	}
	if code, msg := call(userCert, "POST", "/v1/user/mfa", AddMFADeviceRequest{Name: "phone", Secret: key.Secret(), Code: code6(clock())}, nil); code != http.StatusCreated {
		t.Fatalf("enroll: %d %s", code, msg)
	}
	if u, _ := store.Users()[0], 0; len(u.MFA) != 1 || u.MFA[0].Secret != "" {
		t.Errorf("listed users must show devices without secrets: %+v", u.MFA)
	}
	elevCert := certDER(elevated)
	sessionCert := func(code string) (int, string, *SessionCert) {
		var sc SessionCert
		c, m := call(elevCert, "POST", "/v1/user/certs/session", SessionCertRequest{Node: "db1", Login: "root", Code: code, SSHPublic: sshLine}, &sc)
		return c, m, &sc
	}
	advance(30 * time.Second) // the enrollment used this step's code
	if c, m, _ := sessionCert(""); c != http.StatusForbidden || !strings.Contains(m, "6 digits") {
		t.Errorf("no code: %d %s", c, m)
	}
	c, m, sc := sessionCert(code6(clock()))
	if c != http.StatusOK {
		t.Fatalf("session certificate: %d %s", c, m)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sc.SSHCert))
	if err != nil {
		t.Fatal(err)
	}
	sshCert := k.(*ssh.Certificate)
	mid, err := identity.FromSSHCert(sshCert)
	if err != nil || mid.MFA == nil || mid.MFA.Node != "db1" || mid.MFA.Login != "root" || !slicesEqual(sshCert.ValidPrincipals, []string{"root"}) {
		t.Fatalf("session certificate identity %+v principals %v: %v", mid, sshCert.ValidPrincipals, err)
	}
	if life := time.Unix(int64(sshCert.ValidBefore), 0).Sub(clock()); life > SessionCertTTL+time.Second {
		t.Errorf("session certificate valid for %s", life)
	}
	if c, m, _ := sessionCert(code6(clock())); c != http.StatusForbidden || !strings.Contains(m, "used already") {
		t.Errorf("replayed code: %d %s", c, m)
	}
	if c, m, _ := sessionCert(code6(clock().Add(-5 * time.Minute))); c != http.StatusForbidden || !strings.Contains(m, "wrong") {
		t.Errorf("old code: %d %s", c, m)
	}

	// Guessing: after 5 wrong codes (one above), even the right one waits;
	// the count is in raft, so every auth server sees it.
	for range 4 {
		sessionCert("123456")
	}
	if u, _ := store.User("alice"); u.MFAFailures < 5 {
		t.Errorf("%d failures counted in the replicated state", u.MFAFailures)
	}
	if c, m, _ := sessionCert(code6(clock().Add(30 * time.Second))); c != http.StatusForbidden || !strings.Contains(m, "too many wrong codes") {
		t.Errorf("a right code right after 5 wrong ones: %d %s", c, m)
	}
	advance(time.Minute)
	if c, m, _ := sessionCert(code6(clock())); c != http.StatusOK {
		t.Errorf("a right code after the wait: %d %s", c, m)
	}
	if u, _ := store.User("alice"); u.MFAFailures != 0 {
		t.Errorf("an accepted code left %d failures counted", u.MFAFailures)
	}

	// The approved time ends: the request's roles are gone.
	advance(2*time.Hour + time.Minute)
	if code, msg, _ := reissue(ar.ID); code != http.StatusForbidden || !strings.Contains(msg, "expired") {
		t.Errorf("reissue after the access ended: %d %s", code, msg)
	}

	evMu.Lock()
	defer evMu.Unlock()
	var types []string
	for _, e := range events {
		types = append(types, e.Type)
	}
	all := strings.Join(types, " ")
	for _, want := range []string{audit.AccessRequestCreated, audit.AccessRequestApproved, audit.MFAEnrolled, audit.MFAVerified, audit.MFAFailed, audit.CertIssued} {
		if !strings.Contains(all, want) {
			t.Errorf("no %s event in %v", want, types)
		}
	}
	for _, e := range events {
		if e.Type == audit.AccessRequestApproved && (e.Request != ar.ID || e.Subject != "alice" || e.User != "sec-lead" || e.Expires.IsZero()) {
			t.Errorf("approval event %+v", e)
		}
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

// TestPruneRecordings: recordings that ended before the cutoff go, the
// others (and those still running) stay.
func TestPruneRecordings(t *testing.T) {
	store, err := recording.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, end := range []time.Duration{-48 * time.Hour, -time.Hour, 0} {
		rec, err := store.Create(recording.Meta{Session: fmt.Sprint("s", i), User: "u", Node: "n", Start: now.Add(end - time.Minute)}, recording.Header{}, recording.WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if end != 0 {
			rec.Finish(now.Add(end))
		}
	}
	ts := newTestState(t, nil)
	srv, err := NewServer(ServerConfig{ID: "a1", Store: ts.store, Hub: NewHub(), Apply: ts.apply, CA: ts.authority, Recordings: store})
	if err != nil {
		t.Fatal(err)
	}
	n, err := srv.PruneRecordings(now.Add(-24 * time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d: %v", n, err)
	}
	left, _ := store.List()
	if len(left) != 2 || left[0].Session == "s0" {
		t.Errorf("left %+v", left)
	}
}
