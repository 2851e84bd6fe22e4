package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

func (noUpstream) Renew(context.Context, authapi.RenewRequest) (*authapi.Credentials, error) {
	return nil, errors.New("no auth server in this test")
}

// renewUpstream records the renewals it is asked for.
type renewUpstream struct {
	noUpstream
	mu   sync.Mutex // guards following
	reqs []authapi.RenewRequest
	err  error // answered instead of credentials, when set
}

func (u *renewUpstream) Renew(_ context.Context, req authapi.RenewRequest) (*authapi.Credentials, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reqs = append(u.reqs, req)
	if u.err != nil {
		return nil, u.err
	}
	return &authapi.Credentials{Cluster: "prod", Name: req.For}, nil
}

// TestRenewForwards: POST /v1/renew on a proxy forwards a node's renewal
// to auth for the node its client certificate names, whatever the body
// says, and refuses every other caller.
func TestRenewForwards(t *testing.T) {
	ca := authtest.NewCA(t, "prod TLS CA")
	hub := authapi.NewHub()
	if err := hub.Apply(authapi.WatchMessage{Type: "snapshot", Snapshot: &authapi.WatchSnapshot{Cluster: "prod", CAs: state.CAs{TLS: [][]byte{ca.Cert.Raw}}}}); err != nil {
		t.Fatal(err)
	}
	up := &renewUpstream{}
	cert := ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "prod"})
	srv, err := New(Config{
		ProxyID: "p1", Cache: hub, Upstream: up,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		Dialer: NodeDialerFunc(func(context.Context, string, identity.Identity, string) (net.Conn, error) {
			return nil, errors.New("no nodes")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	client := func(id *identity.Identity, issuer *authtest.CA) *authapi.Client {
		var get func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
		if id != nil {
			c := issuer.Issue(t, *id)
			get = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c, nil }
		}
		cl, err := authapi.NewClient(authapi.ClientConfig{Addr: ln.Addr().String(), Timeout: 5 * time.Second, GetClientCertificate: get,
			Trust: authapi.TrustConfig{RootCAs: ca.Pool, Kinds: []identity.Kind{identity.KindProxy}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	ctx := context.Background()
	node1 := client(&identity.Identity{Kind: identity.KindNode, Name: "node1", Cluster: "prod"}, ca)
	c, err := node1.Renew(ctx, authapi.RenewRequest{TLSPublic: []byte("k"), SSHPublic: "ssh-ed25519 AAAA", For: "node2", DNSNames: []string{"evil.example"}, IPs: []string{"192.0.2.1"}})
	if err != nil {
		t.Fatal(err)
	}
	up.mu.Lock()
	if len(up.reqs) != 1 || up.reqs[0].For != "node1" || up.reqs[0].DNSNames != nil || up.reqs[0].IPs != nil ||
		string(up.reqs[0].TLSPublic) != "k" || up.reqs[0].SSHPublic != "ssh-ed25519 AAAA" || c.Name != "node1" {
		t.Errorf("forwarded %+v, answered %+v: want a renewal for node1 with its keys and no server names", up.reqs, c)
	}
	up.reqs = nil
	up.mu.Unlock()

	code := func(err error) int {
		var ae *authapi.APIError
		if errors.As(err, &ae) {
			return ae.Code
		}
		return 0
	}
	for _, tc := range []struct {
		name string
		cl   *authapi.Client
		want int
	}{
		{"a user", client(&identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "prod"}, ca), http.StatusForbidden},
		{"a proxy", client(&identity.Identity{Kind: identity.KindProxy, Name: "p2", Cluster: "prod"}, ca), http.StatusForbidden},
		{"a node of another cluster", client(&identity.Identity{Kind: identity.KindNode, Name: "node1", Cluster: "dev"}, ca), http.StatusUnauthorized},
		{"no certificate", client(nil, nil), http.StatusUnauthorized},
	} {
		if _, err := tc.cl.Renew(ctx, authapi.RenewRequest{For: "node1"}); code(err) != tc.want {
			t.Errorf("%s: %v, want %d", tc.name, err, tc.want)
		}
	}
	// A certificate from another CA does not even get through the handshake.
	other := client(&identity.Identity{Kind: identity.KindNode, Name: "node1", Cluster: "prod"}, authtest.NewCA(t, "rogue"))
	if _, err := other.Renew(ctx, authapi.RenewRequest{}); err == nil {
		t.Error("a node certificate from another CA renewed")
	}
	up.mu.Lock()
	if len(up.reqs) != 0 {
		t.Errorf("refused callers reached auth: %+v", up.reqs)
	}
	up.err = &authapi.APIError{Code: http.StatusForbidden, Message: "node node1 is locked (lock l1)"}
	up.mu.Unlock()
	if _, err := node1.Renew(ctx, authapi.RenewRequest{}); code(err) != http.StatusForbidden || !strings.Contains(err.Error(), "locked") {
		t.Errorf("auth's refusal: %v, want it forwarded (403, locked)", err)
	}
}
