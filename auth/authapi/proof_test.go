package authapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"testing"
	"time"
)

// TestUserCallProof: a call signed with the certificate's key verifies; a
// different method, path, body, time or key does not.
func TestUserCallProof(t *testing.T) {
	now := time.Now()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]crypto.Signer{"ed25519": edKey, "ecdsa": ecKey} {
		req, _ := http.NewRequest("POST", "https://p/v1/user/certs?x=1", nil)
		body := []byte(`{"a":1}`)
		if err := signUserCall(key, req, body, now); err != nil {
			t.Fatal(err)
		}
		pub := key.Public()
		if err := verifyUserCall(pub, req, body, now.Add(time.Minute)); err != nil {
			t.Errorf("%s: valid proof refused: %v", name, err)
		}
		if verifyUserCall(pub, req, []byte(`{"a":2}`), now) == nil {
			t.Errorf("%s: another body accepted", name)
		}
		if verifyUserCall(pub, req, body, now.Add(10*time.Minute)) == nil {
			t.Errorf("%s: a stale proof accepted", name)
		}
		if verifyUserCall(other.Public(), req, body, now) == nil {
			t.Errorf("%s: another key accepted", name)
		}
		moved, _ := http.NewRequest("POST", "https://p/v1/user/certs/session?x=1", nil)
		moved.Header = req.Header
		if verifyUserCall(pub, moved, body, now) == nil {
			t.Errorf("%s: the proof of another path accepted", name)
		}
	}
}

// FuzzVerifyUserCall: whatever the headers and body, verification only
// refuses; it never panics.
func FuzzVerifyUserCall(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	req, _ := http.NewRequest("GET", "https://p/v1/user/requests", nil)
	signUserCall(key, req, nil, time.Unix(1700000000, 0)) //nolint:errcheck
	f.Add(req.Header.Get(HeaderUserTime), req.Header.Get(HeaderUserProof), []byte(nil))
	f.Add("", "", []byte("x"))
	f.Add("-99999999999999999999", "!!!", []byte{0})
	f.Fuzz(func(t *testing.T, unix, proof string, body []byte) {
		r, _ := http.NewRequest("GET", "https://p/v1/user/requests", nil)
		r.Header.Set(HeaderUserTime, unix)
		r.Header.Set(HeaderUserProof, proof)
		_ = verifyUserCall(key.Public(), r, body, time.Unix(1700000000, 0))
	})
}
