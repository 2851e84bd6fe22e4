package main

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/state"
)

// newKeystoreDir makes a data dir whose software keystore holds a fresh
// set of CA keys, as jumpgate start leaves it, and returns the authority.
func newKeystoreDir(t *testing.T) (dataDir string, a *ca.Authority) {
	t.Helper()
	dataDir = t.TempDir()
	authDir := filepath.Join(dataDir, "auth")
	if err := os.MkdirAll(authDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pass, _, err := keystore.LoadOrCreatePassphrase(filepath.Join(authDir, "keystore.pass"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: filepath.Join(authDir, "keys"), Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	if a, err = ca.New(ca.Config{ClusterName: "c1", Keystore: ks}); err != nil {
		t.Fatal(err)
	}
	return dataDir, a
}

// backupFile writes a backup of a cluster c1 that trusts tlsCA.
func backupFile(t *testing.T, tlsCA []byte) string {
	t.Helper()
	s := state.New(nil)
	for i, c := range []struct {
		t state.Type
		b any
	}{
		{state.TypeBootstrap, state.Bootstrap{Cluster: "c1", CAs: state.CAs{TLS: [][]byte{tlsCA}}}},
		{state.TypeUpsertUser, state.UpsertUser{User: state.User{Name: "alice", PasswordHash: "h"}}},
		{state.TypeUpsertAuthServer, state.UpsertAuthServer{Server: state.AuthServer{ID: "auth-2", APIAddr: "10.0.0.2:3025", RaftAddr: "10.0.0.2:3026"}}},
	} {
		cmd, _ := state.Encode(c.t, c.b)
		if _, err := s.Apply(uint64(i+1), cmd); err != nil {
			t.Fatal(err)
		}
	}
	bk, err := state.NewBackup(s, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(bk)
	p := filepath.Join(t.TempDir(), "backup.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRestore(t *testing.T) {
	dataDir, a := newKeystoreDir(t)
	file := backupFile(t, a.TLSCACert())
	cfg := func(dir string) Config {
		return Config{DataDir: dir, Auth: AuthConfig{Listen: "127.0.0.1:3025"}}
	}

	// A server without the cluster's keys: refused, and nothing created
	// (no passphrase, no keys, no CA certificate).
	empty := t.TempDir()
	if err := restore(cfg(empty), file, ""); !errors.Is(err, errNoClusterKeys) {
		t.Fatalf("restore without keys: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(empty, "auth")); len(left) != 0 {
		t.Fatalf("a refused restore left files behind: %v", left)
	}
	// A server with other keys: refused.
	other, _ := newKeystoreDir(t)
	if err := restore(cfg(other), file, ""); !errors.Is(err, errNoClusterKeys) {
		t.Fatalf("restore with another cluster's keys: %v", err)
	}
	if err := restore(cfg(dataDir), file, "c2"); err == nil || !strings.Contains(err.Error(), "backup of cluster c1, not c2") {
		t.Fatalf("restore under another cluster name: %v", err)
	}

	if err := restore(cfg(dataDir), file, ""); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(dataDir, "auth", ownCAFile)
	fi, err := os.Stat(own)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v", own, fi, err)
	}
	b, _ := os.ReadFile(own)
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "CERTIFICATE" || string(blk.Bytes) != string(a.TLSCACert()) {
		t.Fatalf("%s does not hold the matching CA certificate", own)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "auth", "raft", "raft.db")); err != nil {
		t.Fatalf("raft not seeded: %v", err)
	}
	// Once seeded, never again.
	if err := restore(cfg(dataDir), file, ""); err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("second restore: %v", err)
	}
}
