package ca_test

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"

	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/keystore/softhsmtest"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

// ed25519Keystore holds Ed25519 keys in memory: the software baseline
// for what an HSM-less deployment could sign with (Jumpgate's own
// keystores use ECDSA P-256, which HSMs support).
type ed25519Keystore struct {
	mu   sync.Mutex
	keys map[string]crypto.Signer
}

func (k *ed25519Keystore) Signer(name string) (crypto.Signer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if s, ok := k.keys[name]; ok {
		return s, nil
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	k.keys[name] = priv
	return priv, nil
}

func (k *ed25519Keystore) Backend() string { return "memory-ed25519" }

// BenchmarkSignUserSSH measures user SSH certificate issuance (what a
// login costs the auth server besides the password hash) from 8
// goroutines: software ECDSA P-256 (the software keystore), software
// Ed25519, and ECDSA P-256 inside SoftHSM2 through PKCS#11. Reported:
// certs/s and the p99 latency of one signature. Targets (issue: auth HA):
// at least 5,000 software signings/s. Run:
//
//	go test -run '^$' -bench SignUserSSH -benchtime 4000x ./auth/ca
func BenchmarkSignUserSSH(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) keystore.Keystore
	}{
		{"software-ecdsa-p256", func(b *testing.B) keystore.Keystore {
			ks, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: b.TempDir(), Passphrase: []byte("benchmark passphrase, 16+ bytes")})
			if err != nil {
				b.Fatal(err)
			}
			return ks
		}},
		{"software-ed25519", func(b *testing.B) keystore.Keystore {
			return &ed25519Keystore{keys: map[string]crypto.Signer{}}
		}},
		{"softhsm2-ecdsa-p256", func(b *testing.B) keystore.Keystore {
			module, pin := softhsmtest.Token(b, "bench")
			ks, err := keystore.NewPKCS11(keystore.PKCS11Config{Module: module, TokenLabel: "bench", PIN: pin})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { ks.Close() })
			return ks
		}},
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			a, err := ca.New(ca.Config{ClusterName: "bench", Keystore: st.open(b)})
			if err != nil {
				b.Fatal(err)
			}
			pub, _, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			sshPub, _ := ssh.NewPublicKey(pub)
			id := identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "bench", Roles: []string{"dev"}, Logins: []string{"ubuntu"}}
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t0 := time.Now()
						if _, err := a.SignUserSSH(sshPub, id, time.Hour); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(b.N)/el.Seconds(), "certs/s")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
