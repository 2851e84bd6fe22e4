package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
)

// TestMetrics: every signature is counted by kind, format and keystore,
// and timed; refusals are not counted.
func TestMetrics(t *testing.T) {
	ks, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: t.TempDir(), Passphrase: []byte("test passphrase, 16+ bytes")})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{ClusterName: "c1", Keystore: ks, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	spub, _ := ssh.NewPublicKey(pub)
	alice := identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "c1", Roles: []string{"dev"}, Logins: []string{"alice"}}
	if _, err := a.SignUserSSH(spub, alice, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SignTLS(TLSRequest{Identity: alice, PublicKey: pub, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SignHostSSH(spub, "node1", []string{"node1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SignTLS(TLSRequest{Identity: alice, PublicKey: pub, TTL: -time.Hour}); err == nil {
		t.Fatal("a negative TTL was signed")
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"jumpgate_ca_certs_issued_total", []string{"kind", "user", "format", "ssh", "keystore", "software"}, 1},
		{"jumpgate_ca_certs_issued_total", []string{"kind", "user", "format", "tls", "keystore", "software"}, 1},
		{"jumpgate_ca_certs_issued_total", []string{"kind", "node", "format", "ssh", "keystore", "software"}, 1},
		{"jumpgate_ca_sign_duration_seconds", []string{"keystore", "software"}, 3},
	} {
		if got := authtest.Metric(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
