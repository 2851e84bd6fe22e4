package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// selfSigned returns a certificate valid from now for life.
func selfSigned(t *testing.T, cn string, life time.Duration) *tls.Certificate {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now(), NotAfter: time.Now().Add(life),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}
}

func casEvent(t *testing.T, index uint64, cas state.CAs) authapi.WatchMessage {
	b, err := json.Marshal(cas)
	if err != nil {
		t.Fatal(err)
	}
	return authapi.WatchMessage{Type: "event", Index: index, Event: &state.Event{Kind: state.KindCAs, Op: "put", Object: b}}
}

// renewHarness runs a renewer whose reissue hands out fresh 30h
// certificates (failing while fail > 0) and counts the calls.
type renewHarness struct {
	hub  *authapi.Hub
	reg  *prometheus.Registry
	live *liveCreds

	mu    sync.Mutex // guards following
	calls int
	fail  int
}

func (h *renewHarness) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

func startRenewer(t *testing.T, saved [][]byte, loaded bool, hubCAs state.CAs) (*renewHarness, context.CancelFunc) {
	h := &renewHarness{hub: authapi.NewHub(), reg: prometheus.NewRegistry()}
	h.live = newLiveCreds(issued{TLS: selfSigned(t, "n1", 30*time.Hour), CAs: saved})
	if err := h.hub.Apply(authapi.WatchMessage{Type: "snapshot", Index: 1, Snapshot: &authapi.WatchSnapshot{Cluster: "c1", CAs: hubCAs}}); err != nil {
		t.Fatal(err)
	}
	r := &renewer{kind: "node", creds: h.live, hub: h.hub, loaded: loaded, jitter: 10 * time.Second, log: slog.New(slog.DiscardHandler), metrics: newRenewMetrics(h.reg),
		reissue: func(context.Context) (issued, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.calls++
			if h.fail > 0 {
				h.fail--
				return issued{}, errors.New("auth unreachable")
			}
			return issued{TLS: selfSigned(t, "n1", 30*time.Hour), CAs: saved}, nil
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx); close(done) }()
	return h, func() { cancel(); <-done }
}

// TestRenewerDecides: the renew loop renews at two thirds of the
// certificate's lifetime and within the jitter after each change of the
// cluster's CA set, not for other changes; retries with doubling backoff;
// and, for a certificate loaded from disk, renews once at start when the
// cluster's CAs differ from those saved with it.
func TestRenewerDecides(t *testing.T) {
	caA, caB := []byte("CA A"), []byte("CA B")
	synctest.Test(t, func(t *testing.T) {
		h, stop := startRenewer(t, [][]byte{caA}, true, state.CAs{TLS: [][]byte{caA}})
		defer stop()
		synctest.Wait()
		if n := h.count(); n != 0 {
			t.Fatalf("%d renewals at start with the saved CAs current", n)
		}
		first := h.live.leaf()

		// Other changes do nothing.
		h.hub.Apply(authapi.WatchMessage{Type: "event", Index: 2, Event: &state.Event{Kind: state.KindRole, Op: "put", Object: json.RawMessage(`{"name":"dev"}`)}})
		time.Sleep(time.Minute)
		if n := h.count(); n != 0 {
			t.Fatalf("%d renewals after a role change", n)
		}

		// A CA change: one renewal within the jitter.
		h.hub.Apply(casEvent(t, 3, state.CAs{TLS: [][]byte{caA, caB}, Phase: "init"}))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := h.count(); n != 1 {
			t.Fatalf("%d renewals within the jitter after a CA change, want 1", n)
		}
		if h.live.leaf() == first {
			t.Fatal("the renewed certificate was not swapped in")
		}
		// A phase change alone is a CA change too.
		h.hub.Apply(casEvent(t, 4, state.CAs{TLS: [][]byte{caA, caB}, Phase: "update_clients"}))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := h.count(); n != 2 {
			t.Fatalf("%d renewals after a phase change, want 2", n)
		}

		// By age: at two thirds of 30h after the last renewal, plus jitter.
		renewedAt := h.live.leaf().NotBefore
		time.Sleep(time.Until(renewedAt.Add(20*time.Hour)) - time.Second)
		if n := h.count(); n != 2 {
			t.Fatalf("%d renewals before two thirds of the lifetime", n)
		}
		time.Sleep(time.Second + 10*time.Second)
		synctest.Wait()
		if n := h.count(); n != 3 {
			t.Fatalf("%d renewals after two thirds of the lifetime, want 3", n)
		}

		// Failures: retried after 1s, 2s, 4s.
		h.mu.Lock()
		h.fail = 3
		h.mu.Unlock()
		h.hub.Apply(casEvent(t, 5, state.CAs{TLS: [][]byte{caB}}))
		for h.count() < 4 { // the first attempt, after the jitter
			time.Sleep(time.Millisecond)
		}
		for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
			time.Sleep(wait - time.Millisecond)
			synctest.Wait()
			if n := h.count(); n != 4+i {
				t.Fatalf("retry %d came early: %d attempts", i+1, n)
			}
			time.Sleep(time.Millisecond)
			synctest.Wait()
			if n := h.count(); n != 5+i {
				t.Fatalf("retry %d did not come after %s: %d attempts", i+1, wait, n)
			}
		}
		if ok, bad := authtest.Metric(t, h.reg, "jumpgate_cert_renewals_total", "result", "ok"), authtest.Metric(t, h.reg, "jumpgate_cert_renewals_total", "result", "error"); ok != 4 || bad != 3 {
			t.Errorf("renewals metric: ok %v, error %v; want 4 and 3", ok, bad)
		}
		if got, want := authtest.Metric(t, h.reg, "jumpgate_cert_expiry_timestamp_seconds", "kind", "node"), float64(h.live.leaf().NotAfter.Unix()); got != want {
			t.Errorf("expiry metric %v, want %v", got, want)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// Down during a CA change: the saved CAs are not the cluster's.
		h, stop := startRenewer(t, [][]byte{caA}, true, state.CAs{TLS: [][]byte{caA, caB}})
		defer stop()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := h.count(); n != 1 {
			t.Fatalf("%d renewals at start with stale saved CAs, want 1", n)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// Issued at start (a proxy beside its auth server): nothing to
		// compare.
		h, stop := startRenewer(t, [][]byte{caA}, false, state.CAs{TLS: [][]byte{caA, caB}})
		defer stop()
		time.Sleep(time.Minute)
		if n := h.count(); n != 0 {
			t.Fatalf("%d renewals at start of a freshly issued certificate", n)
		}
	})
}

// TestServerTrust: servers are trusted by the CAs saved with the
// certificate and by the cluster's current CAs, as the cache learns them.
func TestServerTrust(t *testing.T) {
	saved, added := authtest.NewCA(t, "saved"), authtest.NewCA(t, "added")
	hub := authapi.NewHub()
	live := newLiveCreds(issued{TLS: selfSigned(t, "p1", time.Hour), CAs: [][]byte{saved.Cert.Raw}})
	trust := &serverTrust{creds: live, hub: hub}
	verifies := func(ca *authtest.CA) bool {
		c := ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "c1"})
		_, err := c.Leaf.Verify(x509.VerifyOptions{Roots: trust.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err == nil
	}
	if !verifies(saved) || verifies(added) {
		t.Fatal("before the cache syncs, only the saved CAs should be trusted")
	}
	if p1, p2 := trust.Pool(), trust.Pool(); p1 != p2 {
		t.Error("the pool is rebuilt though nothing changed")
	}
	hub.Apply(authapi.WatchMessage{Type: "snapshot", Index: 1, Snapshot: &authapi.WatchSnapshot{Cluster: "c1", CAs: state.CAs{TLS: [][]byte{added.Cert.Raw}}}})
	if !verifies(saved) || !verifies(added) {
		t.Fatal("a CA the cluster's CA set carries is not trusted")
	}
	live.set(issued{TLS: selfSigned(t, "p1", time.Hour), CAs: [][]byte{added.Cert.Raw}})
	if verifies(saved) {
		t.Error("a CA neither saved nor in the cluster's set is still trusted")
	}
}
