package authapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// TestRenew: POST /v1/renew issues certificates for the caller's own
// identity, or, for a proxy, for the node it names; a node keeps its host
// key and its host principals; a locked or removed node gets nothing; and
// every renewal is audited.
func TestRenew(t *testing.T) {
	tca := authtest.NewCA(t, "c1")
	ts := newTestState(t, nil)
	store, apply, must, authority := ts.store, ts.apply, ts.must, ts.authority
	hostKey := func() ssh.PublicKey {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := ssh.NewPublicKey(pub)
		return k
	}
	line := func(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }
	node1Key, node2Key := hostKey(), hostKey()
	must(state.TypeUpsertNode, state.UpsertNode{Node: state.Node{ID: "node1", HostKey: line(node1Key)}})
	must(state.TypeUpsertNode, state.UpsertNode{Node: state.Node{ID: "node2", HostKey: line(node2Key)}})

	var (
		evMu   sync.Mutex
		events []audit.Event
	)
	srv, err := NewServer(ServerConfig{ID: "auth-c1", Store: store, Hub: NewHub(), Apply: apply, CA: authority, NodeCertTTL: 48 * time.Hour,
		Audit: audit.SinkFunc(func(e audit.Event) { evMu.Lock(); events = append(events, e); evMu.Unlock() })})
	if err != nil {
		t.Fatal(err)
	}
	serverCert := tca.Issue(t, identity.Identity{Kind: identity.KindAuth, Name: "auth-c1", Cluster: "c1"})
	hs := httptest.NewUnstartedServer(srv)
	hs.TLS = TLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert, nil }, tca.Pool)
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
	tlsKey := func() []byte {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(pub)
		return der
	}
	leafOf := func(c *Credentials) *x509.Certificate {
		t.Helper()
		b, _ := pem.Decode(c.TLSCert)
		if b == nil {
			t.Fatalf("no PEM certificate in %q", c.TLSCert)
		}
		leaf, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	ctx := context.Background()
	node1 := client(identity.Identity{Kind: identity.KindNode, Name: "node1", Cluster: "c1"})
	proxy := client(identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "c1"})

	checkNode := func(t *testing.T, c *Credentials, name string, key ssh.PublicKey, pub []byte) {
		t.Helper()
		leaf := leafOf(c)
		id, err := identity.FromX509(leaf)
		if err != nil || id.Kind != identity.KindNode || id.Name != name {
			t.Fatalf("TLS certificate for %v (%v), want node %s", id, err, name)
		}
		got, _ := x509.MarshalPKIXPublicKey(leaf.PublicKey)
		if string(got) != string(pub) {
			t.Error("the TLS certificate is not for the key sent")
		}
		if slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
			t.Error("a node's certificate allows server authentication")
		}
		if d := time.Until(leaf.NotAfter); d < 47*time.Hour || d > 49*time.Hour {
			t.Errorf("TLS certificate valid for %s more, want NodeCertTTL (48h)", d)
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.SSHCert))
		if err != nil {
			t.Fatalf("SSH certificate %q: %v", c.SSHCert, err)
		}
		cert := k.(*ssh.Certificate)
		if cert.CertType != ssh.HostCert || string(cert.Key.Marshal()) != string(key.Marshal()) {
			t.Errorf("SSH certificate: type %d, for another key", cert.CertType)
		}
		if want := []string{name, name + ".c1"}; !slices.Equal(cert.ValidPrincipals, want) {
			t.Errorf("host principals %v, want %v (as at join)", cert.ValidPrincipals, want)
		}
		if len(c.CAs.TLS) == 0 || len(c.CAs.HostSSH) == 0 {
			t.Errorf("no CA bundle with the certificates: %+v", c.CAs)
		}
	}
	apiCode := func(err error) int {
		var ae *APIError
		if errors.As(err, &ae) {
			return ae.Code
		}
		return 0
	}

	t.Run("node renews itself", func(t *testing.T) {
		pub := tlsKey()
		c, err := node1.Renew(ctx, RenewRequest{TLSPublic: pub, SSHPublic: line(node1Key)})
		if err != nil {
			t.Fatal(err)
		}
		checkNode(t, c, "node1", node1Key, pub)
	})
	t.Run("proxy renews for a node", func(t *testing.T) {
		pub := tlsKey()
		c, err := proxy.Renew(ctx, RenewRequest{TLSPublic: pub, SSHPublic: line(node2Key), For: "node2", DNSNames: []string{"evil.example"}})
		if err != nil {
			t.Fatal(err)
		}
		checkNode(t, c, "node2", node2Key, pub)
		if names := leafOf(c).DNSNames; len(names) > 0 {
			t.Errorf("a node's certificate carries DNS names %v", names)
		}
	})
	t.Run("proxy renews itself", func(t *testing.T) {
		c, err := proxy.Renew(ctx, RenewRequest{TLSPublic: tlsKey(), DNSNames: []string{"p1.example"}, IPs: []string{"192.0.2.1"}})
		if err != nil {
			t.Fatal(err)
		}
		leaf := leafOf(c)
		id, _ := identity.FromX509(leaf)
		if id.Kind != identity.KindProxy || id.Name != "p1" || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) ||
			!slices.Equal(leaf.DNSNames, []string{"p1.example"}) || len(leaf.IPAddresses) != 1 || c.SSHCert != "" {
			t.Errorf("proxy certificate: %v, usages %v, names %v %v, ssh %q", id, leaf.ExtKeyUsage, leaf.DNSNames, leaf.IPAddresses, c.SSHCert)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		cases := []struct {
			name string
			cl   *Client
			req  RenewRequest
			code int
			msg  string
		}{
			{"a node renewing for another node", node1, RenewRequest{TLSPublic: tlsKey(), SSHPublic: line(node2Key), For: "node2"}, http.StatusForbidden, "only proxies"},
			{"another host key", node1, RenewRequest{TLSPublic: tlsKey(), SSHPublic: line(hostKey())}, http.StatusForbidden, "keeps its host key"},
			{"a node not in the inventory", proxy, RenewRequest{TLSPublic: tlsKey(), SSHPublic: line(hostKey()), For: "node9"}, http.StatusForbidden, "not in the inventory"},
			{"no host key", node1, RenewRequest{TLSPublic: tlsKey()}, http.StatusBadRequest, "host key"},
			{"no TLS key", node1, RenewRequest{SSHPublic: line(node1Key)}, http.StatusBadRequest, "TLS public key"},
			{"a user", client(identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "c1"}), RenewRequest{TLSPublic: tlsKey()}, http.StatusForbidden, "may not call"},
		}
		for _, tc := range cases {
			_, err := tc.cl.Renew(ctx, tc.req)
			if apiCode(err) != tc.code || !strings.Contains(errText(err), tc.msg) {
				t.Errorf("%s: %v, want %d saying %q", tc.name, err, tc.code, tc.msg)
			}
		}
	})
	t.Run("locked node", func(t *testing.T) {
		must(state.TypeUpsertLock, state.UpsertLock{Lock: identity.Lock{ID: "l1", Node: "node1", Message: "under investigation", Created: time.Now()}, Now: time.Now()})
		_, err := node1.Renew(ctx, RenewRequest{TLSPublic: tlsKey(), SSHPublic: line(node1Key)})
		if apiCode(err) != http.StatusForbidden || !strings.Contains(err.Error(), "under investigation") {
			t.Fatalf("renewal of a locked node: %v, want 403 with the lock's message", err)
		}
		_, err = proxy.Renew(ctx, RenewRequest{TLSPublic: tlsKey(), SSHPublic: line(node1Key), For: "node1"})
		if apiCode(err) != http.StatusForbidden {
			t.Fatalf("renewal of a locked node through a proxy: %v, want 403", err)
		}
	})

	evMu.Lock()
	defer evMu.Unlock()
	var renewed []string
	for _, e := range events {
		if e.Type == audit.CertIssued && e.Command == "renewed" {
			renewed = append(renewed, e.Subject+"/"+e.Node+"/"+e.User)
		}
	}
	if want := []string{"node/node1/", "node/node2/p1", "proxy/p1/"}; !slices.Equal(renewed, want) {
		t.Errorf("audited renewals %v, want %v (refusals issue nothing)", renewed, want)
	}
}

// errText is err's text, or "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
