package authapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Users' calls through a proxy carry proof that the user, not the proxy,
// makes them: jg signs the method, path, time and body with the private
// key of its TLS certificate, and the auth server checks the signature
// with the certificate's public key. A proxy sees users' certificates (they
// are public), but cannot sign with their keys, so it cannot mint
// certificates, take MFA certificates, or read recordings in a user's name.
const (
	HeaderUserProof = "Jumpgate-User-Proof"
	HeaderUserTime  = "Jumpgate-User-Time"
)

// maxProofSkew is how far the signed time may be from the auth server's
// clock.
const maxProofSkew = 5 * time.Minute

// proofMessage is what a user signs.
func proofMessage(method, pathQuery, unix string, body []byte) []byte {
	sum := sha256.Sum256(body)
	return []byte("jumpgate-user-call-v1\n" + method + "\n" + pathQuery + "\n" + unix + "\n" + hex.EncodeToString(sum[:]))
}

// signUserCall sets the proof headers on a user's call.
func signUserCall(signer crypto.Signer, req *http.Request, body []byte, now time.Time) error {
	unix := strconv.FormatInt(now.Unix(), 10)
	msg := proofMessage(req.Method, req.URL.RequestURI(), unix, body)
	var sig []byte
	var err error
	switch signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = signer.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		sum := sha256.Sum256(msg)
		sig, err = signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		return fmt.Errorf("sign the call: %w", err)
	}
	req.Header.Set(HeaderUserTime, unix)
	req.Header.Set(HeaderUserProof, base64.StdEncoding.EncodeToString(sig))
	return nil
}

// verifyUserCall checks the proof on a forwarded user's call against the
// public key of the user's certificate.
func verifyUserCall(pub crypto.PublicKey, r *http.Request, body []byte, now time.Time) error {
	unix := r.Header.Get(HeaderUserTime)
	sig, err := base64.StdEncoding.DecodeString(r.Header.Get(HeaderUserProof))
	if unix == "" || err != nil || len(sig) == 0 {
		return errors.New("the call carries no proof that you made it: update jg")
	}
	t, err := strconv.ParseInt(unix, 10, 64)
	if err != nil {
		return errors.New("malformed call time")
	}
	if d := now.Sub(time.Unix(t, 0)); d > maxProofSkew || d < -maxProofSkew {
		return fmt.Errorf("the call was signed %s away from the auth server's time: check this machine's clock", d.Round(time.Second))
	}
	msg := proofMessage(r.Method, r.URL.RequestURI(), unix, body)
	ok := false
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(k, sum[:], sig)
	}
	if !ok {
		return errors.New("the call's proof does not match your certificate's key")
	}
	return nil
}
