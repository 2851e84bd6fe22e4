// Package ca issues Jumpgate's certificates.
//
// A cluster has three certificate authorities: the user SSH CA (signs users'
// SSH certificates), the host SSH CA (signs nodes' SSH host certificates) and
// the TLS CA (signs every X.509 certificate used for mutual TLS between
// users, nodes, proxies and auth servers). Each auth server signs with its
// own keys held in its keystore; the trusted public keys of every CA are
// replicated state (see auth/state), so a CA is a set of keys.
//
// Authority is pure computation over a keystore: it does no network or file
// I/O of its own.
package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/keystore"
)

// Key names in the keystore.
const (
	KeyUserSSH = "user-ssh-ca"
	KeyHostSSH = "host-ssh-ca"
	KeyTLS     = "tls-ca"
)

// Config configures an Authority.
type Config struct {
	ClusterName string
	Keystore    keystore.Keystore
	// TLSCACert is the self-signed TLS CA certificate for this auth server's
	// TLS key, as replicated in state. Nil: a new one is created (bootstrap).
	TLSCACert []byte // DER
	Now       func() time.Time
	// Generation selects the keys: each CA rotation moves the cluster to
	// a new generation, and every auth server to a new key of each CA in
	// its keystore (KeyName). 0 is the first.
	Generation int
	// Metrics, if set, counts and times what this Authority signs.
	Metrics *Metrics
}

// KeyName is the keystore name of a CA key of a generation: the first
// generation keeps the plain names ("user-ssh-ca"), later ones add
// ".gN" ("user-ssh-ca.g2").
func KeyName(base string, generation int) string {
	if generation == 0 {
		return base
	}
	return fmt.Sprintf("%s.g%d", base, generation)
}

// Authority signs certificates with one auth server's CA keys.
type Authority struct {
	cluster string
	now     func() time.Time
	userSSH ssh.Signer
	hostSSH ssh.Signer
	tlsKey  crypto.Signer
	tlsCA   *x509.Certificate

	generation int
	metrics    *Metrics
	backend    string // the keystore's, for metrics
}

// Generation is the key generation the authority signs with.
func (a *Authority) Generation() int { return a.generation }

// New loads (or generates) the CA keys and the TLS CA certificate.
func New(cfg Config) (*Authority, error) {
	if cfg.ClusterName == "" {
		return nil, errors.New("ca: ClusterName is required")
	}
	if cfg.Keystore == nil {
		return nil, errors.New("ca: Keystore is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Authority{cluster: cfg.ClusterName, now: cfg.Now, generation: cfg.Generation, metrics: cfg.Metrics, backend: cfg.Keystore.Backend()}
	var err error
	if a.userSSH, err = sshSigner(cfg.Keystore, KeyName(KeyUserSSH, cfg.Generation)); err != nil {
		return nil, err
	}
	if a.hostSSH, err = sshSigner(cfg.Keystore, KeyName(KeyHostSSH, cfg.Generation)); err != nil {
		return nil, err
	}
	if a.tlsKey, err = cfg.Keystore.Signer(KeyName(KeyTLS, cfg.Generation)); err != nil {
		return nil, fmt.Errorf("ca: TLS key: %w", err)
	}
	if cfg.TLSCACert != nil {
		if a.tlsCA, err = x509.ParseCertificate(cfg.TLSCACert); err != nil {
			return nil, fmt.Errorf("ca: parse TLS CA certificate: %w", err)
		}
		if !publicKeysEqual(a.tlsCA.PublicKey, a.tlsKey.Public()) {
			return nil, errors.New("ca: the TLS CA certificate in state does not match this auth server's TLS key: is the keystore the one this cluster was created with?")
		}
		return a, nil
	}
	if a.tlsCA, err = a.selfSign(); err != nil {
		return nil, err
	}
	return a, nil
}

func sshSigner(ks keystore.Keystore, name string) (ssh.Signer, error) {
	k, err := ks.Signer(name)
	if err != nil {
		return nil, fmt.Errorf("ca: %s key: %w", name, err)
	}
	s, err := ssh.NewSignerFromSigner(k)
	if err != nil {
		return nil, fmt.Errorf("ca: %s key: %w", name, err)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

func (a *Authority) selfSign() (*x509.Certificate, error) {
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Jumpgate TLS CA " + a.cluster, Organization: []string{a.cluster}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, a.tlsKey.Public(), a.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("ca: self-sign TLS CA: %w", err)
	}
	return x509.ParseCertificate(der)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// UserCAPublic returns the user SSH CA public key of this auth server.
func (a *Authority) UserCAPublic() ssh.PublicKey { return a.userSSH.PublicKey() }

// HostCAPublic returns the host SSH CA public key of this auth server.
func (a *Authority) HostCAPublic() ssh.PublicKey { return a.hostSSH.PublicKey() }

// TLSCACert returns the TLS CA certificate (DER).
func (a *Authority) TLSCACert() []byte { return a.tlsCA.Raw }

// SignUserSSH issues an SSH user certificate for id, valid for ttl.
// Principals are id.Logins.
func (a *Authority) SignUserSSH(pub ssh.PublicKey, id identity.Identity, ttl time.Duration) (*ssh.Certificate, error) {
	if id.Kind != identity.KindUser {
		return nil, fmt.Errorf("ca: SSH user certificate for a %s identity", id.Kind)
	}
	if err := id.Check(); err != nil {
		return nil, err
	}
	defer a.metrics.observe(string(identity.KindUser), "ssh", a.backend, time.Now())
	return a.signSSH(a.userSSH, pub, ssh.UserCert, id.Name, id.Logins, id.SSHExtensions(), ttl)
}

// SignHostSSH issues an SSH host certificate for a node. principals are the
// names clients use for it (node id, node id + "." + cluster).
func (a *Authority) SignHostSSH(pub ssh.PublicKey, nodeID string, principals []string, ttl time.Duration) (*ssh.Certificate, error) {
	if err := identity.CheckName(nodeID); err != nil {
		return nil, fmt.Errorf("ca: host certificate: %w", err)
	}
	// Host certificates carry no extensions: OpenSSH defines none for them.
	defer a.metrics.observe(string(identity.KindNode), "ssh", a.backend, time.Now())
	return a.signSSH(a.hostSSH, pub, ssh.HostCert, nodeID, principals, nil, ttl)
}

func (a *Authority) signSSH(signer ssh.Signer, pub ssh.PublicKey, typ uint32, keyID string, principals []string, ext map[string]string, ttl time.Duration) (*ssh.Certificate, error) {
	if pub == nil {
		return nil, errors.New("ca: no public key to sign")
	}
	if _, ok := pub.(*ssh.Certificate); ok {
		return nil, errors.New("ca: refusing to sign a certificate as a key")
	}
	if ttl <= 0 {
		return nil, errors.New("ca: certificate TTL must be positive")
	}
	now := a.now()
	cert := &ssh.Certificate{
		Key:             pub,
		Serial:          serial().Uint64(),
		CertType:        typ,
		KeyId:           keyID,
		ValidPrincipals: principals,
		// A minute of slack for clocks that disagree a little.
		ValidAfter:  uint64(now.Add(-time.Minute).Unix()),
		ValidBefore: uint64(now.Add(ttl).Unix()),
		Permissions: ssh.Permissions{Extensions: ext},
	}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		return nil, fmt.Errorf("ca: sign SSH certificate for %s: %w", keyID, err)
	}
	return cert, nil
}

// TLSRequest is what a TLS certificate is issued for.
type TLSRequest struct {
	Identity  identity.Identity
	PublicKey crypto.PublicKey
	TTL       time.Duration
	DNSNames  []string // for servers
	IPs       []net.IP // for servers
	Server    bool     // add ExtKeyUsageServerAuth (proxies and auth servers)
}

// SignTLS issues an X.509 certificate carrying req.Identity.
func (a *Authority) SignTLS(req TLSRequest) ([]byte, error) {
	if err := req.Identity.Check(); err != nil {
		return nil, err
	}
	if req.PublicKey == nil {
		return nil, errors.New("ca: no public key to sign")
	}
	if req.TTL <= 0 {
		return nil, errors.New("ca: certificate TTL must be positive")
	}
	subj, ext, err := req.Identity.TLSSubject()
	if err != nil {
		return nil, err
	}
	now := a.now()
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if req.Server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial(),
		Subject:         subj,
		NotBefore:       now.Add(-time.Minute),
		NotAfter:        now.Add(req.TTL),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     usage,
		DNSNames:        req.DNSNames,
		IPAddresses:     req.IPs,
		ExtraExtensions: ext,
	}
	start := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.tlsCA, req.PublicKey, a.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("ca: sign TLS certificate for %s: %w", req.Identity, err)
	}
	a.metrics.observe(string(req.Identity.Kind), "tls", a.backend, start)
	return der, nil
}

// PEMCert encodes DER certificates as PEM.
func PEMCert(ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}

// Pin returns the pin of a CA certificate: "sha256:" and the hex SHA-256 of
// its SubjectPublicKeyInfo. Clients use it to trust a cluster on first
// contact (jg login --ca-pin, jumpgate start --ca-pin).
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}
