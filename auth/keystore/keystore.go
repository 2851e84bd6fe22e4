// Package keystore holds certificate-authority private keys behind
// crypto.Signer.
//
// An auth server asks its keystore for a named key ("user-ssh", "host-ssh",
// "tls") and signs with it; the private key never leaves the keystore's
// control. Two backends implement Keystore:
//
//   - Software (this file): ECDSA P-256 keys in the data directory, each
//     encrypted at rest with AES-256-GCM under a key derived with scrypt
//     from a passphrase. For the demo and small installations.
//   - PKCS11 (pkcs11.go): keys generated inside an HSM through its PKCS#11
//     library (SoftHSM2 in tests; YubiHSM, CloudHSM and others in
//     production), sensitive and never extractable; see the comment at
//     the top of pkcs11.go. PINs and passphrases are read with LoadSecret,
//     from a file or an environment variable, never from a flag.
//
// All keys are ECDSA P-256 so that the HSM backend (which has no Ed25519)
// can replace the software one without changing certificate formats.
package keystore

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/scrypt"
)

// Keystore returns signers for named CA keys.
type Keystore interface {
	// Signer returns the key called name, generating it on first use.
	Signer(name string) (crypto.Signer, error)
	// Backend names the implementation for logs and metrics ("software", "pkcs11").
	Backend() string
}

// SoftwareConfig configures a software keystore.
type SoftwareConfig struct {
	// Dir holds one file per key, <name>.key, mode 0600.
	Dir string
	// Passphrase encrypts every key. It should come from a file or
	// environment variable the operator controls, not from the data dir.
	Passphrase []byte
}

// Software is a file-backed keystore with keys encrypted at rest.
type Software struct {
	cfg SoftwareConfig

	mu   sync.Mutex // guards keys
	keys map[string]crypto.Signer
}

var _ Keystore = (*Software)(nil)

// NewSoftware opens (creating if needed) a software keystore.
func NewSoftware(cfg SoftwareConfig) (*Software, error) {
	if cfg.Dir == "" {
		return nil, errors.New("keystore: Dir is required")
	}
	if len(cfg.Passphrase) < 16 {
		return nil, errors.New("keystore: Passphrase must be at least 16 bytes")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("keystore: create %s: %w", cfg.Dir, err)
	}
	return &Software{cfg: cfg, keys: map[string]crypto.Signer{}}, nil
}

// Backend returns "software".
func (s *Software) Backend() string { return "software" }

// sealed is the on-disk form of one key.
type sealed struct {
	Version    int    `json:"version"`
	Algorithm  string `json:"algorithm"` // "scrypt-aes256gcm"
	Salt       []byte `json:"salt"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"` // PKCS#8 DER, sealed
}

// Signer returns the named key, generating and sealing it on first use.
func (s *Software) Signer(name string) (crypto.Signer, error) {
	if name == "" || filepath.Base(name) != name {
		return nil, fmt.Errorf("keystore: invalid key name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[name]; ok {
		return k, nil
	}
	path := filepath.Join(s.cfg.Dir, name+".key")
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := s.open(data)
		if err != nil {
			return nil, fmt.Errorf("keystore: key %s: %w", name, err)
		}
		s.keys[name] = k
		return k, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("keystore: read key %s: %w", name, err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("keystore: generate key %s: %w", name, err)
	}
	data, err = s.seal(k)
	if err != nil {
		return nil, fmt.Errorf("keystore: seal key %s: %w", name, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return nil, fmt.Errorf("keystore: write key %s: %w", name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("keystore: write key %s: %w", name, err)
	}
	s.keys[name] = k
	return k, nil
}

func (s *Software) kek(salt []byte) ([]byte, error) {
	// N=2^15, r=8, p=1: the interactive-login parameters from the scrypt
	// paper; about 50 ms per key, paid once per key per process start.
	return scrypt.Key(s.cfg.Passphrase, salt, 1<<15, 8, 1, 32)
}

func (s *Software) seal(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 16)
	nonce := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	kek, err := s.kek(salt)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	return json.Marshal(sealed{Version: 1, Algorithm: "scrypt-aes256gcm", Salt: salt, Nonce: nonce, Ciphertext: gcm.Seal(nil, nonce, der, nil)})
}

func (s *Software) open(data []byte) (crypto.Signer, error) {
	var sl sealed
	if err := json.Unmarshal(data, &sl); err != nil {
		return nil, fmt.Errorf("file is not a Jumpgate sealed key: %w", err)
	}
	if sl.Version != 1 || sl.Algorithm != "scrypt-aes256gcm" || len(sl.Salt) == 0 || len(sl.Nonce) != 12 {
		return nil, fmt.Errorf("unsupported sealed key version %d / algorithm %q", sl.Version, sl.Algorithm)
	}
	kek, err := s.kek(sl.Salt)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	der, err := gcm.Open(nil, sl.Nonce, sl.Ciphertext, nil)
	if err != nil {
		return nil, errors.New("cannot decrypt: wrong keystore passphrase or corrupted key file")
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return signer, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// LoadOrCreatePassphrase reads a passphrase from path, creating a random one
// (mode 0600) if the file does not exist. created reports whether it did.
func LoadOrCreatePassphrase(path string) (pass []byte, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 16 {
			return nil, false, fmt.Errorf("keystore passphrase file %s: shorter than 16 bytes", path)
		}
		return b, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("keystore passphrase file: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, false, err
	}
	pass = []byte(fmt.Sprintf("%x", raw))
	if err := os.WriteFile(path, pass, 0o600); err != nil {
		return nil, false, fmt.Errorf("keystore passphrase file: %w", err)
	}
	return pass, true, nil
}
