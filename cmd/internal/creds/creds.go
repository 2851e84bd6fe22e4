// Package creds stores and loads a Jumpgate identity on disk: the private
// key, SSH and TLS certificates, and the cluster's CAs. Users (jg, under
// ~/.jumpgate), nodes, proxies and administrators (jgctl) all use the same
// layout in their own directory:
//
//	key            OpenSSH private key (ed25519), mode 0600
//	key.pub        its public key
//	key-cert.pub   SSH certificate (users and nodes)
//	tls.key        PKCS#8 private key (ed25519), mode 0600
//	tls.crt        TLS certificate (PEM)
//	cas.pem        the cluster's TLS CA certificates
//	known_hosts    @cert-authority lines for the host SSH CA
//	identity.json  cluster, name, roles, logins, expiry, proxy address
package creds

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/authapi"
)

// Meta is identity.json.
type Meta struct {
	Cluster string    `json:"cluster"`
	Name    string    `json:"name"`
	Kind    string    `json:"kind"`
	Roles   []string  `json:"roles,omitempty"`
	Logins  []string  `json:"logins,omitempty"`
	Expires time.Time `json:"expires"`
	Proxy   string    `json:"proxy,omitempty"` // proxy address used to log in or join
	CAPin   string    `json:"ca_pin,omitempty"`
	// RequireMFA: the roles need a TOTP code for every session.
	RequireMFA bool `json:"require_mfa,omitempty"`
	// Requests are the access requests whose roles the certificates carry.
	Requests []string `json:"requests,omitempty"`
}

// Keys are a fresh pair of private keys: one for SSH, one for TLS.
type Keys struct {
	SSH ed25519.PrivateKey
	TLS ed25519.PrivateKey
}

// NewKeys generates keys.
func NewKeys() (*Keys, error) {
	_, s, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	_, t, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Keys{SSH: s, TLS: t}, nil
}

// SSHPublic returns the SSH public key in authorized_keys format.
func (k *Keys) SSHPublic() string {
	pub, _ := ssh.NewPublicKey(k.SSH.Public())
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

// TLSPublic returns the TLS public key as PKIX DER.
func (k *Keys) TLSPublic() []byte {
	der, _ := x509.MarshalPKIXPublicKey(k.TLS.Public())
	return der
}

// Save writes keys and credentials to dir atomically enough for one
// writer: every file is written to a temporary name and renamed.
func Save(dir string, k *Keys, c *authapi.Credentials, meta Meta) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	sshPEM, err := ssh.MarshalPrivateKey(crypto.PrivateKey(k.SSH), "jumpgate "+c.Name)
	if err != nil {
		return err
	}
	tlsDER, err := x509.MarshalPKCS8PrivateKey(k.TLS)
	if err != nil {
		return err
	}
	var kh strings.Builder
	for _, l := range c.CAs.HostSSH {
		fmt.Fprintf(&kh, "@cert-authority * %s\n", strings.TrimSpace(l))
	}
	meta.Cluster, meta.Name, meta.Roles, meta.Logins, meta.Expires = c.Cluster, c.Name, c.Roles, c.Logins, c.Expires
	meta.RequireMFA, meta.Requests = c.RequireMFA, c.Requests
	mj, _ := json.MarshalIndent(meta, "", "  ")
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"key", pem.EncodeToMemory(sshPEM), 0o600},
		{"key.pub", []byte(k.SSHPublic() + "\n"), 0o644},
		{"key-cert.pub", []byte(c.SSHCert), 0o644},
		{"tls.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: tlsDER}), 0o600},
		{"tls.crt", c.TLSCert, 0o644},
		{"cas.pem", c.CAs.TLS, 0o644},
		{"known_hosts", []byte(kh.String()), 0o644},
		{"identity.json", append(mj, '\n'), 0o600},
	}
	for _, f := range files {
		if f.name == "key-cert.pub" && len(f.data) == 0 {
			continue
		}
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p+".tmp", f.data, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// Identity is a loaded identity.
type Identity struct {
	Dir     string
	Meta    Meta
	TLS     tls.Certificate
	Leaf    *x509.Certificate
	Pool    *x509.CertPool
	SSHKey  ssh.Signer       // plain key
	SSHCert *ssh.Certificate // nil for proxies and admins
}

// ErrNotLoggedIn is returned by Load when dir holds no identity.
var ErrNotLoggedIn = errors.New("not logged in")

// Load reads an identity saved by Save.
func Load(dir string) (*Identity, error) {
	mj, err := os.ReadFile(filepath.Join(dir, "identity.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoggedIn
	}
	if err != nil {
		return nil, err
	}
	id := &Identity{Dir: dir}
	if err := json.Unmarshal(mj, &id.Meta); err != nil {
		return nil, fmt.Errorf("%s/identity.json: %w", dir, err)
	}
	id.TLS, err = tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate from %s: %w", dir, err)
	}
	id.Leaf, err = x509.ParseCertificate(id.TLS.Certificate[0])
	if err != nil {
		return nil, err
	}
	id.TLS.Leaf = id.Leaf
	cas, err := os.ReadFile(filepath.Join(dir, "cas.pem"))
	if err != nil {
		return nil, err
	}
	id.Pool = x509.NewCertPool()
	if !id.Pool.AppendCertsFromPEM(cas) {
		return nil, fmt.Errorf("%s/cas.pem holds no certificate", dir)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "key"))
	if err != nil {
		return nil, err
	}
	if id.SSHKey, err = ssh.ParsePrivateKey(keyPEM); err != nil {
		return nil, fmt.Errorf("%s/key: %w", dir, err)
	}
	if cb, err := os.ReadFile(filepath.Join(dir, "key-cert.pub")); err == nil {
		pub, _, _, _, err := ssh.ParseAuthorizedKey(cb)
		if err != nil {
			return nil, fmt.Errorf("%s/key-cert.pub: %w", dir, err)
		}
		cert, ok := pub.(*ssh.Certificate)
		if !ok {
			return nil, fmt.Errorf("%s/key-cert.pub is not a certificate", dir)
		}
		id.SSHCert = cert
	}
	return id, nil
}

// Keys returns the identity's private keys, to have new certificates
// issued for them.
func (id *Identity) Keys() (*Keys, error) {
	keyPEM, err := os.ReadFile(filepath.Join(id.Dir, "key"))
	if err != nil {
		return nil, err
	}
	raw, err := ssh.ParseRawPrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s/key: %w", id.Dir, err)
	}
	sk, ok := raw.(*ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s/key is not an ed25519 key", id.Dir)
	}
	tk, ok := id.TLS.PrivateKey.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s/tls.key is not an ed25519 key", id.Dir)
	}
	return &Keys{SSH: *sk, TLS: tk}, nil
}

// Files are the names Save writes, for copying an identity aside.
var Files = []string{"key", "key.pub", "key-cert.pub", "tls.key", "tls.crt", "cas.pem", "known_hosts", "identity.json"}

// CertSigner returns an ssh.Signer presenting the SSH certificate.
func (id *Identity) CertSigner() (ssh.Signer, error) {
	if id.SSHCert == nil {
		return nil, errors.New("this identity has no SSH certificate")
	}
	return ssh.NewCertSigner(id.SSHCert, id.SSHKey)
}

// GetClientCertificate serves the TLS certificate to a server.
func (id *Identity) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return &id.TLS, nil
}

// GetCertificate serves the TLS certificate (with the CA chain, so clients
// can check a --ca-pin) to clients.
func (id *Identity) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return &id.TLS, nil
}

// RootCAs returns the trusted cluster CA pool.
func (id *Identity) RootCAs() *x509.CertPool { return id.Pool }

// WithChain appends the cluster CA certificates to the served chain so that
// first-contact clients can match a CA pin.
func (id *Identity) WithChain() error {
	cas, err := os.ReadFile(filepath.Join(id.Dir, "cas.pem"))
	if err != nil {
		return err
	}
	for {
		var b *pem.Block
		b, cas = pem.Decode(cas)
		if b == nil {
			break
		}
		id.TLS.Certificate = append(id.TLS.Certificate, b.Bytes)
	}
	return nil
}

// SetProxy records addr as the proxy the identity in dir uses (a client
// that moved its home proxy), rewriting identity.json alone, atomically.
func SetProxy(dir, addr string) error {
	p := filepath.Join(dir, "identity.json")
	mj, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var m Meta
	if err := json.Unmarshal(mj, &m); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	m.Proxy = addr
	out, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(p+".tmp", append(out, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}
