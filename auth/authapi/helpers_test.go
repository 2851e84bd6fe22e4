package authapi

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/state"
)

// testState is a bootstrapped store of cluster c1 whose CAs are a real
// software-keystore authority's, with commands applied in order.
type testState struct {
	t         *testing.T
	store     *state.Store
	authority *ca.Authority
	mu        sync.Mutex
}

// newTestState bootstraps c1; now is the authority's clock (nil: real).
func newTestState(t *testing.T, now func() time.Time) *testState {
	t.Helper()
	ts := &testState{t: t, store: state.New(nil)}
	ks, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: filepath.Join(t.TempDir(), "keys"), Passphrase: []byte("0123456789abcdef0123")})
	if err != nil {
		t.Fatal(err)
	}
	if ts.authority, err = ca.New(ca.Config{ClusterName: "c1", Keystore: ks, Now: now}); err != nil {
		t.Fatal(err)
	}
	a := ts.authority
	ts.must(state.TypeBootstrap, state.Bootstrap{Cluster: "c1", CAs: state.CAs{TLS: [][]byte{a.TLSCACert()},
		UserSSH: []string{string(ssh.MarshalAuthorizedKey(a.UserCAPublic()))}, HostSSH: []string{string(ssh.MarshalAuthorizedKey(a.HostCAPublic()))}}})
	return ts
}

// apply is ServerConfig.Apply: commands in order, one at a time.
func (ts *testState) apply(cmd []byte) (any, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.store.Apply(ts.store.Index()+1, cmd)
}

// must applies a command and fails the test if it fails.
func (ts *testState) must(typ state.Type, body any) {
	ts.t.Helper()
	cmd, err := state.Encode(typ, body)
	if err != nil {
		ts.t.Fatal(err)
	}
	if _, err := ts.apply(cmd); err != nil {
		ts.t.Fatal(err)
	}
}
