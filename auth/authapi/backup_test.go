package authapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/raftnode"
	"jumpgate.dev/jumpgate/auth/state"
)

// fakeRaft applies commands to a store at increasing indexes, as a lone
// raft member would, and records them.
type fakeRaft struct {
	store *state.Store

	mu   sync.Mutex // guards following
	cmds [][]byte
	fail error // returned instead of applying, when set
}

func (f *fakeRaft) apply(cmd []byte) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	f.cmds = append(f.cmds, cmd)
	return f.store.Apply(f.store.Index()+1, cmd)
}

// TestBackupEndpoint: GET /v1/backup brings the serving server's state
// up to date through raft (a no-op the older servers may skip) before
// the snapshot, answers only admins, and is audited.
func TestBackupEndpoint(t *testing.T) {
	tca := authtest.NewCA(t, "c1")
	store := state.New(nil)
	fr := &fakeRaft{store: store}
	for _, c := range []struct {
		t state.Type
		b any
	}{
		{state.TypeBootstrap, state.Bootstrap{Cluster: "c1", CAs: state.CAs{TLS: [][]byte{tca.Cert.Raw}}}},
		{state.TypeUpsertRole, state.UpsertRole{Role: identity.Role{Name: "dev"}}},
		{state.TypeUpsertUser, state.UpsertUser{User: state.User{Name: "alice", Roles: []string{"dev"}, PasswordHash: "h"}}},
	} {
		cmd, _ := state.Encode(c.t, c.b)
		if _, err := fr.apply(cmd); err != nil {
			t.Fatal(err)
		}
	}
	pass := []byte("0123456789abcdef0123")
	ks, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: filepath.Join(t.TempDir(), "keys"), Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Config{ClusterName: "c1", Keystore: ks})
	if err != nil {
		t.Fatal(err)
	}
	var (
		evMu   sync.Mutex
		events []audit.Event
	)
	srv, err := NewServer(ServerConfig{ID: "auth-c1", Store: store, Hub: NewHub(), Apply: fr.apply, CA: authority,
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
			Trust:                TrustConfig{RootCAs: func() *x509.CertPool { return tca.Pool() }, Kinds: []identity.Kind{identity.KindAuth}},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	admin := client(identity.Identity{Kind: identity.KindAdmin, Name: "admin", Cluster: "c1"})
	ctx := context.Background()

	before := store.Index()
	b, err := admin.Backup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := state.VerifyBackup(b)
	if err != nil {
		t.Fatalf("the endpoint's backup does not verify: %v", err)
	}
	fr.mu.Lock()
	last := fr.cmds[len(fr.cmds)-1]
	fr.mu.Unlock()
	if state.Type(last[0]) != state.TypeNoop|state.FlagIgnorable {
		t.Fatalf("last command before the snapshot: type %#x, want an ignorable no-op", last[0])
	}
	if sum.Index != before+1 || sum.Users != 1 || sum.Cluster != "c1" {
		t.Fatalf("summary %+v: want the state at the no-op's index %d", sum, before+1)
	}
	evMu.Lock()
	if len(events) != 1 || events[0].Type != audit.BackupTaken || events[0].User != "admin" {
		t.Errorf("audit events: %+v", events)
	}
	evMu.Unlock()

	// Only admins.
	proxy := client(identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "c1"})
	var ae *APIError
	if _, err := proxy.Backup(ctx); !errors.As(err, &ae) || ae.Code != http.StatusForbidden {
		t.Fatalf("backup as a proxy: %v", err)
	}

	// No raft, no backup: a stale snapshot is not offered in its place.
	fr.mu.Lock()
	fr.fail = &raftnode.RetryableError{Err: errors.New("the auth cluster has no leader at the moment")}
	fr.mu.Unlock()
	if _, err := admin.Backup(ctx); !errors.As(err, &ae) || ae.Code != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "no leader") {
		t.Fatalf("backup without a leader: %v", err)
	}
}
