package keystore_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
	"jumpgate.dev/jumpgate/auth/keystore/softhsmtest"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

// newToken creates a SoftHSM2 token for t and returns the config to open it.
func newToken(t testing.TB, label string) keystore.PKCS11Config {
	t.Helper()
	module, pin := softhsmtest.Token(t, label)
	return keystore.PKCS11Config{Module: module, TokenLabel: label, PIN: pin}
}

// open opens a keystore that t closes at its end.
func open(t testing.TB, cfg keystore.PKCS11Config) *keystore.PKCS11 {
	t.Helper()
	ks, err := keystore.NewPKCS11(cfg)
	if err != nil {
		t.Fatalf("NewPKCS11: %v", err)
	}
	t.Cleanup(func() {
		if err := ks.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ks
}

func signer(t testing.TB, ks keystore.Keystore, name string) (crypto.Signer, *ecdsa.PublicKey) {
	t.Helper()
	s, err := ks.Signer(name)
	if err != nil {
		t.Fatalf("Signer(%q): %v", name, err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("Signer(%q): public key is %T, want ECDSA P-256", name, s.Public())
	}
	return s, pub
}

// p11Object is an object as pkcs11-tool --list-objects describes it.
type p11Object struct {
	kind   string // "Private Key Object; EC", ...
	label  string
	id     string
	access []string // "sensitive", "never extractable", ...
	point  string   // EC_POINT, hex, for public EC keys
}

// pkcs11Tool runs OpenSC's pkcs11-tool, logged in to cfg's token. It is a
// separate process with its own SoftHSM2, so it sees the token as another
// application would: through the files SoftHSM2 keeps on disk.
func pkcs11Tool(t testing.TB, cfg keystore.PKCS11Config, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatalf("pkcs11-tool not found: run `make deps` to install OpenSC")
	}
	args = append([]string{"--module", cfg.Module, "--token-label", cfg.TokenLabel, "--login", "--pin", cfg.PIN}, args...)
	cmd := exec.Command("pkcs11-tool", args...)
	cmd.Env = softhsmtest.Env(t, cfg.Module)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool %s: %v\n%s", strings.Join(args[6:], " "), err, out)
	}
	return string(out)
}

// listObjects returns the token's objects whose label is label.
func listObjects(t testing.TB, cfg keystore.PKCS11Config, label string) []p11Object {
	t.Helper()
	var all []p11Object
	for _, line := range strings.Split(pkcs11Tool(t, cfg, "--list-objects"), "\n") {
		if strings.HasSuffix(line, "Object") || strings.Contains(line, " Object;") {
			all = append(all, p11Object{kind: strings.TrimSpace(line)})
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || len(all) == 0 {
			continue
		}
		o := &all[len(all)-1]
		v = strings.TrimSpace(v)
		switch k {
		case "label":
			o.label = v
		case "ID":
			o.id = v
		case "Access":
			o.access = strings.Split(v, ", ")
		case "EC_POINT":
			o.point = v
		}
	}
	var objs []p11Object
	for _, o := range all {
		if o.label == label {
			objs = append(objs, o)
		}
	}
	return objs
}

// keyPairsLabelled checks that the token has exactly one key pair labelled
// label (one private and one public key with the same CKA_ID) and returns
// its private half.
func keyPairsLabelled(t testing.TB, cfg keystore.PKCS11Config, label string) p11Object {
	t.Helper()
	var priv, pub []p11Object
	for _, o := range listObjects(t, cfg, label) {
		switch {
		case strings.HasPrefix(o.kind, "Private Key Object"):
			priv = append(priv, o)
		case strings.HasPrefix(o.kind, "Public Key Object"):
			pub = append(pub, o)
		}
	}
	if len(priv) != 1 || len(pub) != 1 {
		t.Fatalf("token has %d private and %d public keys labelled %s, want one of each", len(priv), len(pub), label)
	}
	if priv[0].id == "" || priv[0].id != pub[0].id {
		t.Fatalf("key pair %s: private CKA_ID %q, public CKA_ID %q: want equal and non-empty", label, priv[0].id, pub[0].id)
	}
	return priv[0]
}

func TestPKCS11GeneratesOnFirstUseAndFindsAgain(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "persist")
	ks := open(t, cfg)
	if got := ks.Backend(); got != "pkcs11" {
		t.Errorf("Backend() = %q, want pkcs11", got)
	}
	if objs := listObjects(t, cfg, "jumpgate-user-ssh-ca"); len(objs) != 0 {
		t.Fatalf("fresh token already has %d objects labelled jumpgate-user-ssh-ca", len(objs))
	}
	s1, pub1 := signer(t, ks, ca.KeyUserSSH)
	keyPairsLabelled(t, cfg, "jumpgate-user-ssh-ca")

	again, _ := signer(t, ks, ca.KeyUserSSH)
	if again != s1 {
		t.Error("second Signer call returned a new signer: want the cached one")
	}
	_, other := signer(t, ks, ca.KeyHostSSH)
	if other.Equal(pub1) {
		t.Error("host and user CA keys are the same key")
	}

	if err := ks.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := ks.Signer(ca.KeyUserSSH); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Signer after Close: err = %v, want one saying the keystore is closed", err)
	}
	digest := sha256.Sum256([]byte("after close"))
	if _, err := s1.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Sign after Close: err = %v, want one saying the keystore is closed", err)
	}

	// That was the token's last keystore, so the process logged out of it:
	// the token checks the PIN of the next one again.
	bad := cfg
	bad.PIN = "0000-wrong"
	if ks, err := keystore.NewPKCS11(bad); err == nil {
		ks.Close()
		t.Fatal("NewPKCS11 with a wrong PIN succeeded after the last keystore closed: the token stayed logged in")
	}
	// A new keystore logs in and finds the key generated earlier.
	ks2 := open(t, cfg)
	_, pub2 := signer(t, ks2, ca.KeyUserSSH)
	if !pub2.Equal(pub1) {
		t.Error("a new keystore on the same token returned a different user-ssh-ca key: the key was not found again")
	}
	keyPairsLabelled(t, cfg, "jumpgate-user-ssh-ca")
}

func TestPKCS11KeyLabelPrefix(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "prefix")
	cfg.KeyLabelPrefix = "jg-auth2-"
	ks := open(t, cfg)
	signer(t, ks, ca.KeyTLS)
	keyPairsLabelled(t, cfg, "jg-auth2-tls-ca")
	if objs := listObjects(t, cfg, "jumpgate-tls-ca"); len(objs) != 0 {
		t.Errorf("found %d objects with the default prefix, want none", len(objs))
	}
}

func TestPKCS11SignatureVerifies(t *testing.T) {
	t.Parallel()
	ks := open(t, newToken(t, "verify"))
	s, pub := signer(t, ks, ca.KeyTLS)
	digest := sha256.Sum256([]byte("jumpgate"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatal("signature from the HSM does not verify with its public key")
	}
	other := sha256.Sum256([]byte("jumpgatf"))
	if ecdsa.VerifyASN1(pub, other[:], sig) {
		t.Fatal("signature verifies for a different digest")
	}
	if _, err := s.Sign(rand.Reader, digest[:20], crypto.SHA256); err == nil || !strings.Contains(err.Error(), "digest is 20 bytes") {
		t.Errorf("Sign with a 20-byte digest for SHA-256: err = %v, want a digest length error", err)
	}
}

func TestPKCS11PrivateKeyStaysInHSM(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "sensitive")
	ks := open(t, cfg)
	signer(t, ks, ca.KeyUserSSH)
	priv := keyPairsLabelled(t, cfg, "jumpgate-user-ssh-ca")
	access := map[string]bool{}
	for _, a := range priv.access {
		access[a] = true
	}
	// CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE and
	// CKA_LOCAL (generated in the token) true; CKA_EXTRACTABLE false.
	for _, want := range []string{"sensitive", "always sensitive", "never extractable", "local"} {
		if !access[want] {
			t.Errorf("private key access is %q: missing %q", priv.access, want)
		}
	}
	if access["extractable"] {
		t.Errorf("private key access is %q: the key is extractable", priv.access)
	}
}

func TestPKCS11ConcurrentSign(t *testing.T) {
	t.Parallel()
	ks := open(t, newToken(t, "concurrent-sign"))
	s, pub := signer(t, ks, ca.KeyTLS)
	const goroutines, each = 16, 20
	errs := make(chan string, goroutines*each)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				digest := sha256.Sum256([]byte{byte(g), byte(i)})
				sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
				switch {
				case err != nil:
					errs <- err.Error()
				case !ecdsa.VerifyASN1(pub, digest[:], sig):
					errs <- "signature does not verify"
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestPKCS11ConcurrentFirstUseCreatesOneKey(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "concurrent-first")
	// Two keystores on one token share its connection, and so the lock
	// that guards key generation.
	stores := []*keystore.PKCS11{open(t, cfg), open(t, cfg)}
	const goroutines = 16
	start := make(chan struct{})
	pubs := make([]*ecdsa.PublicKey, goroutines)
	errs := make([]error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			s, err := stores[g%2].Signer(ca.KeyHostSSH)
			if err != nil {
				errs[g] = err
				return
			}
			pubs[g] = s.Public().(*ecdsa.PublicKey)
		})
	}
	close(start)
	wg.Wait()
	for g := range goroutines {
		if errs[g] != nil {
			t.Fatalf("goroutine %d: Signer: %v", g, errs[g])
		}
		if !pubs[g].Equal(pubs[0]) {
			t.Fatalf("goroutine %d got a different key from goroutine 0", g)
		}
	}
	keyPairsLabelled(t, cfg, "jumpgate-host-ssh-ca")
}

func TestPKCS11SharedConnection(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "shared")
	ks1 := open(t, cfg)
	// Another spelling of the same library must share its initialization:
	// a second C_Initialize in the process would fail.
	link := filepath.Join(t.TempDir(), "link.so")
	if err := os.Symlink(cfg.Module, link); err != nil {
		t.Fatal(err)
	}
	cfg2 := cfg
	cfg2.Module = link
	ks2 := open(t, cfg2)

	_, pub1 := signer(t, ks1, ca.KeyTLS)
	s2, pub2 := signer(t, ks2, ca.KeyTLS)
	if !pub1.Equal(pub2) {
		t.Fatal("two keystores on one token returned different keys for one name")
	}
	if err := ks1.Close(); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("still open"))
	sig, err := s2.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign after the other keystore closed: %v", err)
	}
	if !ecdsa.VerifyASN1(pub2, digest[:], sig) {
		t.Fatal("signature does not verify")
	}
}

func TestPKCS11Errors(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "errors")
	notLib := filepath.Join(t.TempDir(), "notalib.so")
	if err := os.WriteFile(notLib, []byte("not an ELF file"), 0o755); err != nil {
		t.Fatal(err)
	}
	with := func(f func(*keystore.PKCS11Config)) keystore.PKCS11Config {
		c := cfg
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  keystore.PKCS11Config
		want []string // substrings of the error, in order
	}{
		{"no module", with(func(c *keystore.PKCS11Config) { c.Module = "" }), []string{"pkcs11: Module is required"}},
		{"no token label", with(func(c *keystore.PKCS11Config) { c.TokenLabel = "" }), []string{"pkcs11: TokenLabel is required"}},
		{"no PIN", with(func(c *keystore.PKCS11Config) { c.PIN = "" }), []string{"pkcs11: PIN is required"}},
		{"one session", with(func(c *keystore.PKCS11Config) { c.MaxSessions = 1 }), []string{"pkcs11: MaxSessions is 1: it must be at least 2"}},
		{"missing module", with(func(c *keystore.PKCS11Config) { c.Module = "/nonexistent/libnope.so" }),
			[]string{"pkcs11: load module /nonexistent/libnope.so: ", "no such file or directory", "(is the HSM's PKCS#11 library installed?)"}},
		{"not a library", with(func(c *keystore.PKCS11Config) { c.Module = notLib }),
			[]string{"pkcs11: load module " + notLib + ": not a loadable shared library", "(is the HSM's PKCS#11 library installed?)"}},
		{"unknown token", with(func(c *keystore.PKCS11Config) { c.TokenLabel = "no-such-token" }),
			[]string{`pkcs11: token "no-such-token" not found in module ` + cfg.Module, "--list-slots"}},
		// Nothing has the token open yet, so the token itself checks the PIN.
		{"wrong PIN", with(func(c *keystore.PKCS11Config) { c.PIN = "0000-wrong" }), []string{"pkcs11: log in to token errors: wrong PIN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks, err := keystore.NewPKCS11(tt.cfg)
			if err == nil {
				ks.Close()
				t.Fatal("NewPKCS11 succeeded")
			}
			checkError(t, err, tt.want...)
		})
	}

	t.Run("wrong PIN while open", func(t *testing.T) {
		ks := open(t, cfg)
		bad := cfg
		bad.PIN = "0000-wrong"
		ks2, err := keystore.NewPKCS11(bad)
		if err == nil {
			ks2.Close()
			t.Fatal("NewPKCS11 with a wrong PIN succeeded because the token was logged in already")
		}
		checkError(t, err, "pkcs11: log in to token errors: wrong PIN")
		if _, err := ks.Signer("bad/name"); err == nil {
			t.Error(`Signer("bad/name") succeeded`)
		} else {
			checkError(t, err, `invalid key name "bad/name"`)
		}
	})
}

func checkError(t *testing.T, err error, want ...string) {
	t.Helper()
	msg := err.Error()
	rest := msg
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Errorf("error %q does not contain %q", msg, w)
			return
		}
		rest = rest[i+len(w):]
	}
}

func TestPKCS11RefusesUnsuitableKeys(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "unsuitable")
	gen := func(label, id, keyType string, extra ...string) string {
		args := append([]string{"--keypairgen", "--key-type", keyType, "--label", label, "--id", id}, extra...)
		return pkcs11Tool(t, cfg, args...)
	}
	// Created before the keystore opens the token, as an operator would.
	gen("jumpgate-p384", "01", "EC:secp384r1")
	gen("jumpgate-rsa", "02", "RSA:2048")
	gen("jumpgate-extractable", "03", "EC:prime256v1", "--extractable")
	gen("jumpgate-twice", "04", "EC:prime256v1")
	gen("jumpgate-twice", "05", "EC:prime256v1")
	gen("jumpgate-imported", "06", "EC:prime256v1")
	ks := open(t, cfg)

	for name, want := range map[string][]string{
		"p384":        {"pkcs11: key jumpgate-p384 on token unsuitable is ECDSA P-384, not ECDSA P-256"},
		"rsa":         {"pkcs11: key jumpgate-rsa on token unsuitable is RSA-2048, not ECDSA P-256"},
		"extractable": {"pkcs11: key jumpgate-extractable on token unsuitable: ", "is extractable"},
		"twice":       {"pkcs11: token unsuitable has 2 key pairs labelled jumpgate-twice: keep the one"},
	} {
		_, err := ks.Signer(name)
		if err == nil {
			t.Errorf("Signer(%q) succeeded", name)
			continue
		}
		checkError(t, err, want...)
	}

	// A suitable key made by someone else is used as it is.
	_, pub := signer(t, ks, "imported")
	point := listObjects(t, cfg, "jumpgate-imported")
	var want string
	for _, o := range point {
		if o.point != "" {
			want = o.point
		}
	}
	ecdh, err := pub.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	// pkcs11-tool prints CKA_EC_POINT: a DER OCTET STRING of the point.
	if got := "0441" + hex.EncodeToString(ecdh.Bytes()); got != want {
		t.Errorf("Signer(imported) public point %s, pkcs11-tool says %s", got, want)
	}
	keyPairsLabelled(t, cfg, "jumpgate-imported")
}

func TestPKCS11CertificateAuthority(t *testing.T) {
	t.Parallel()
	cfg := newToken(t, "ca")
	ks := open(t, cfg)
	a, err := ca.New(ca.Config{ClusterName: "t", Keystore: ks})
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	_, hsmPub := signer(t, ks, ca.KeyUserSSH)
	hsmSSHPub, err := ssh.NewPublicKey(hsmPub)
	if err != nil {
		t.Fatal(err)
	}

	userPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshUserPub, err := ssh.NewPublicKey(userPub)
	if err != nil {
		t.Fatal(err)
	}
	id := identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "t", Roles: []string{"dev"}, Logins: []string{"alice"}}
	cert, err := a.SignUserSSH(sshUserPub, id, time.Hour)
	if err != nil {
		t.Fatalf("SignUserSSH: %v", err)
	}
	text := ssh.MarshalAuthorizedKey(cert)
	parsed, _, _, _, err := ssh.ParseAuthorizedKey(text)
	if err != nil {
		t.Fatalf("parse the certificate: %v", err)
	}
	pc, ok := parsed.(*ssh.Certificate)
	if !ok {
		t.Fatalf("parsed a %T, want *ssh.Certificate", parsed)
	}
	if !bytes.Equal(pc.SignatureKey.Marshal(), hsmSSHPub.Marshal()) {
		t.Fatal("the certificate's signature key is not the HSM's user CA key")
	}
	checker := ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), hsmSSHPub.Marshal()) }}
	if err := checker.CheckCert("alice", pc); err != nil {
		t.Fatalf("certificate does not verify against the HSM key: %v", err)
	}

	// OpenSSH agrees.
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Fatal("ssh-keygen not found: run `make deps` to install the OpenSSH client")
	}
	file := filepath.Join(t.TempDir(), "id-cert.pub")
	if err := os.WriteFile(file, text, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ssh-keygen", "-L", "-f", file).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -L: %v\n%s", err, out)
	}
	if want := "Signing CA: ECDSA " + ssh.FingerprintSHA256(hsmSSHPub); !strings.Contains(string(out), want) {
		t.Errorf("ssh-keygen -L output lacks %q:\n%s", want, out)
	}

	// The TLS CA certificate is self-signed by the HSM's TLS key.
	tlsCA, err := x509.ParseCertificate(a.TLSCACert())
	if err != nil {
		t.Fatal(err)
	}
	_, tlsPub := signer(t, ks, ca.KeyTLS)
	if !tlsPub.Equal(tlsCA.PublicKey) {
		t.Error("TLS CA certificate does not carry the HSM's TLS key")
	}
	if err := tlsCA.CheckSignatureFrom(tlsCA); err != nil {
		t.Errorf("TLS CA self-signature: %v", err)
	}
}

// BenchmarkSign compares P-256 signatures per second in software and in
// SoftHSM2 (whose sessions are pooled, at most MaxSessions-1 at once).
func BenchmarkSign(b *testing.B) {
	sw, err := keystore.NewSoftware(keystore.SoftwareConfig{Dir: b.TempDir(), Passphrase: []byte("benchmark passphrase")})
	if err != nil {
		b.Fatal(err)
	}
	hsm := open(b, newToken(b, "bench"))
	for _, ks := range []keystore.Keystore{sw, hsm} {
		s, err := ks.Signer(ca.KeyTLS)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(ks.Backend(), func(b *testing.B) {
			digest := sha256.Sum256([]byte("benchmark"))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
		})
	}
}
