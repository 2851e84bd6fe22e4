package authapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/state"
)

func TestCheckClientCallback(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"http://127.0.0.1:4242/callback", true},
		{"http://[::1]:4242/callback", true},
		{"http://localhost:4242/callback", true},
		{"https://127.0.0.1:4242/callback", false},            // jg listens in plain HTTP
		{"http://evil.example.com/callback", false},           // an open redirect
		{"http://10.0.0.1:4242/callback", false},              // not loopback
		{"http://127.0.0.1:4242/callback?x=1", false},         // auth sets the query
		{"http://user@127.0.0.1:4242/callback", false},        // userinfo
		{"javascript:alert(1)//127.0.0.1/callback", false},    // not http
		{"http://127.0.0.1.evil.example.com/callback", false}, // a name, not the address
	} {
		if err := checkClientCallback(tc.url); (err == nil) != tc.ok {
			t.Errorf("checkClientCallback(%q) = %v, want ok %v", tc.url, err, tc.ok)
		}
	}
}

func TestClaimStrings(t *testing.T) {
	if got := claimStrings([]any{"sre", 7, "dev"}); !slices.Equal(got, []string{"sre", "dev"}) {
		t.Errorf("list: %q", got)
	}
	if got := claimStrings("sre"); !slices.Equal(got, []string{"sre"}) {
		t.Errorf("one string: %q", got)
	}
	if got := claimStrings(nil); got != nil {
		t.Errorf("absent: %q", got)
	}
}

// newSSOTestServer is an auth API server with SSO configured and roles dev
// and prod (not ops) in its state.
func newSSOTestServer(t *testing.T, sso *SSOConfig) *Server {
	t.Helper()
	store := state.New(nil)
	apply := func(cmd []byte) (any, error) { return store.Apply(store.Index()+1, cmd) }
	ks, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: filepath.Join(t.TempDir(), "keys"), Passphrase: []byte("0123456789abcdef0123")})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Config{ClusterName: "c1", Keystore: ks})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		typ  state.Type
		body any
	}{
		{state.TypeBootstrap, state.Bootstrap{Cluster: "c1", CAs: state.CAs{TLS: [][]byte{authority.TLSCACert()}}}},
		{state.TypeUpsertRole, state.UpsertRole{Role: identity.Role{Name: "dev"}}},
		{state.TypeUpsertRole, state.UpsertRole{Role: identity.Role{Name: "prod"}}},
	} {
		cmd, err := state.Encode(c.typ, c.body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := apply(cmd); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := NewServer(ServerConfig{ID: "auth-c1", Store: store, Hub: NewHub(), Apply: apply, CA: authority, SSO: sso})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func TestSSOMapRoles(t *testing.T) {
	srv := newSSOTestServer(t, nil)
	o := &sso{s: srv, cfg: SSOConfig{Roles: []SSORoleMapping{
		{Group: "sre", Roles: []string{"prod", "ops"}},
		{Group: "dev", Roles: []string{"dev", "prod"}},
	}}}
	roles, missing := o.mapRoles([]string{"dev", "sre", "other"})
	if !slices.Equal(roles, []string{"dev", "prod"}) || !slices.Equal(missing, []string{"ops"}) {
		t.Errorf("mapRoles: roles %q, missing %q", roles, missing)
	}
	if roles, _ := o.mapRoles([]string{"contractors"}); len(roles) != 0 {
		t.Errorf("contractors got roles %q", roles)
	}
}

// TestSSOOneTime: a state is good for one callback, a result for one
// fetch with its secret; the provider's refusal reaches jg as a sentence.
func TestSSOOneTime(t *testing.T) {
	srv := newSSOTestServer(t, &SSOConfig{Issuer: "http://127.0.0.1:1", ClientID: "jumpgate", ClientSecret: "s", Roles: []SSORoleMapping{{Group: "sre", Roles: []string{"dev"}}}})
	o, err := newSSO(srv)
	if err != nil {
		t.Fatal(err)
	}
	proxy := identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "c1"}
	sr := &ssoRequest{id: "req1", state: "state1", clientCallback: "http://127.0.0.1:4242/callback", expires: time.Now().Add(time.Minute)}
	o.byID[sr.id], o.byState[sr.state] = sr, sr
	call := func(h func(http.ResponseWriter, *http.Request, identity.Identity), body any) (int, string) {
		b, _ := json.Marshal(body)
		w := httptest.NewRecorder()
		h(w, httptest.NewRequest("POST", "/", bytes.NewReader(b)), proxy)
		return w.Code, w.Body.String()
	}

	code, body := call(o.callback, SSOCallbackRequest{State: "state1", Error: "access_denied", ErrorDescription: "End-User aborted interaction"})
	var cb SSOCallbackResponse
	if code != http.StatusOK || json.Unmarshal([]byte(body), &cb) != nil {
		t.Fatalf("callback: %d %s", code, body)
	}
	u, err := url.Parse(cb.Redirect)
	if err != nil || u.Host != "127.0.0.1:4242" || u.Query().Get("id") != "req1" || u.Query().Get("secret") == "" {
		t.Fatalf("callback redirect %q", cb.Redirect)
	}
	secret := u.Query().Get("secret")

	for _, st := range []string{"state1", "forged", ""} {
		if code, body := call(o.callback, SSOCallbackRequest{State: st, Code: "c"}); code != http.StatusBadRequest || !strings.Contains(body, "unknown or expired SSO login") {
			t.Errorf("callback with state %q after the first: %d %s", st, code, body)
		}
	}
	if code, body := call(o.result, SSOResultRequest{ID: "req1", Secret: "guess"}); code != http.StatusForbidden || !strings.Contains(body, "wrong secret") {
		t.Errorf("result with a wrong secret: %d %s", code, body)
	}
	if code, body := call(o.result, SSOResultRequest{ID: "req1", Secret: secret}); code != http.StatusForbidden || !strings.Contains(body, "the SSO provider refused the login: access_denied (End-User aborted interaction)") {
		t.Errorf("result: %d %s", code, body)
	}
	if code, body := call(o.result, SSOResultRequest{ID: "req1", Secret: secret}); code != http.StatusNotFound || !strings.Contains(body, "unknown or expired") {
		t.Errorf("result fetched twice: %d %s", code, body)
	}

	// Without auth.oidc, the routes say so.
	off, err := newSSO(newSSOTestServer(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := call(off.start, SSOStartRequest{}); code != http.StatusNotFound || !strings.Contains(body, "single sign-on is not configured") {
		t.Errorf("start without SSO: %d %s", code, body)
	}
}
