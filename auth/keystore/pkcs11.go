// PKCS#11 backend (HSM): additions to the package documentation.
//
// PKCS11 keeps every CA key inside a hardware security module (or any other
// PKCS#11 token) reached through the vendor's PKCS#11 library:
//
//   - A key is found by its label, KeyLabelPrefix + name (for instance
//     "jumpgate-user-ssh-ca"). If the token has no key pair with that label,
//     one is generated inside the token on first use (CKM_EC_KEY_PAIR_GEN,
//     P-256) with a random 16-byte CKA_ID shared by both halves. The private
//     half is CKA_SENSITIVE and not CKA_EXTRACTABLE: nobody, Jumpgate
//     included, can read it back out; Jumpgate only asks the token to sign
//     SHA-256 digests. Keys found on the token are checked too: a key that is
//     not ECDSA P-256, or whose private half could be extracted, is refused.
//   - Each auth server has its own CA keys. Auth servers that share one token
//     must therefore use distinct KeyLabelPrefix values ("jumpgate-auth1-").
//   - The user PIN is read with LoadSecret from a file of mode 0600 or from an
//     environment variable, never from a command-line flag: a flag is visible
//     to every local user in ps(1) and /proc/PID/cmdline, and is kept in shell
//     history.
//   - A signer is looked up once per name and cached: its object handle stays
//     valid while the keystore is open, and each signature borrows one of at
//     most MaxSessions-1 open sessions from a pool (the last one holds the
//     login). Signing is safe from any number of goroutines.
//   - A PKCS#11 library is initialized once per process (C_Initialize), and a
//     login belongs to the process, not to a session. Keystores in one
//     process that name the same module and token therefore share one
//     connection to it, reference-counted, closed with the last Close.
//
// Key generation is serialized within a process, not across processes: start
// the first auth server of a token alone, or create the keys beforehand. If a
// token ends up with two key pairs under one label, Signer refuses both and
// says which label to clean up.

package keystore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// DefaultPKCS11MaxSessions is the default PKCS11Config.MaxSessions. One
// session holds the login, so up to 7 signatures run at once: more than the
// cores of a typical auth server (a software token such as SoftHSM2 signs on
// the CPU), few enough to leave room on network HSMs that cap the sessions
// of each client.
const DefaultPKCS11MaxSessions = 8

// defaultKeyLabelPrefix is the default PKCS11Config.KeyLabelPrefix.
const defaultKeyLabelPrefix = "jumpgate-"

// PKCS11Config configures a PKCS#11 keystore.
type PKCS11Config struct {
	// Module is the path of the token vendor's PKCS#11 library, for instance
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel selects the token, as listed by
	// `pkcs11-tool --module MODULE --list-slots` (at most 32 bytes).
	TokenLabel string
	// PIN is the token's user PIN. Load it with LoadSecret; never take it
	// from a command-line flag.
	PIN string
	// KeyLabelPrefix is prepended to key names to form the CKA_LABEL of each
	// key pair. Default "jumpgate-". Auth servers sharing a token must each
	// have their own.
	KeyLabelPrefix string
	// MaxSessions bounds the sessions opened on the token: one keeps the
	// login, the others sign, one signature each at a time. Default
	// DefaultPKCS11MaxSessions; at least 2. When several keystores in one
	// process share a token, the first one opened sets it.
	MaxSessions int
}

func (c *PKCS11Config) checkAndSetDefaults() error {
	if c.Module == "" {
		return errors.New("pkcs11: Module is required: the path of the HSM's PKCS#11 library")
	}
	if c.TokenLabel == "" {
		return errors.New("pkcs11: TokenLabel is required: the label of the token that holds the keys")
	}
	if len(c.TokenLabel) > 32 {
		return fmt.Errorf("pkcs11: TokenLabel %q is longer than the 32 bytes PKCS#11 allows", c.TokenLabel)
	}
	if c.PIN == "" {
		return errors.New("pkcs11: PIN is required: the token's user PIN (see LoadSecret)")
	}
	if c.KeyLabelPrefix == "" {
		c.KeyLabelPrefix = defaultKeyLabelPrefix
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultPKCS11MaxSessions
	}
	if c.MaxSessions < 2 {
		return fmt.Errorf("pkcs11: MaxSessions is %d: it must be at least 2 (one session keeps the login, the others sign)", c.MaxSessions)
	}
	return nil
}

// PKCS11 is a keystore whose keys live in a PKCS#11 token.
type PKCS11 struct {
	cfg    PKCS11Config
	key    tokenKey
	tok    *sharedToken
	closed atomic.Bool // set by Close; Sign checks it without taking mu

	mu      sync.Mutex // guards signers and serializes Signer's look-ups
	signers map[string]*hsmSigner
}

var _ Keystore = (*PKCS11)(nil)

// NewPKCS11 opens the token and logs in. Keys are looked up (or generated)
// by Signer. Call Close when done.
func NewPKCS11(cfg PKCS11Config) (*PKCS11, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	key, tok, err := openToken(cfg)
	if err != nil {
		return nil, err
	}
	cfg.PIN = "" // logged in: no need to keep it
	return &PKCS11{cfg: cfg, key: key, tok: tok, signers: map[string]*hsmSigner{}}, nil
}

// Backend returns "pkcs11".
func (p *PKCS11) Backend() string { return "pkcs11" }

// Signer returns the key pair labelled KeyLabelPrefix+name, generating it
// inside the token if there is none. The returned signer is cached: later
// calls return the same one without asking the token.
func (p *PKCS11) Signer(name string) (crypto.Signer, error) {
	if err := checkPKCS11KeyName(name); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil, fmt.Errorf("pkcs11: key %s: the keystore is closed", name)
	}
	if s, ok := p.signers[name]; ok {
		return s, nil
	}
	label := p.cfg.KeyLabelPrefix + name
	k, pub, err := p.tok.findOrGenerate(label, p.cfg.TokenLabel)
	if err != nil {
		return nil, err
	}
	s := &hsmSigner{ks: p, key: k, pub: pub, label: label}
	p.signers[name] = s
	return s, nil
}

// Close releases this keystore's share of the token connection. The last
// Close on a token in the process closes its sessions, which logs out, and
// finalizes and unloads the library if no other token of it is open.
// Signers obtained from p fail after Close. The last Close waits for
// signatures in progress.
func (p *PKCS11) Close() error {
	p.mu.Lock()
	if p.closed.Swap(true) {
		p.mu.Unlock()
		return nil
	}
	p.signers = nil
	p.mu.Unlock()
	return releaseToken(p.key, p.tok)
}

func checkPKCS11KeyName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("pkcs11: invalid key name %q: 1 to 64 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("pkcs11: invalid key name %q: only letters, digits and - _ . are allowed", name)
		}
	}
	return nil
}

// hsmSigner is one key pair in the token. The private half is a handle: the
// key itself never leaves the token.
type hsmSigner struct {
	ks    *PKCS11
	key   crypto11.Signer
	pub   *ecdsa.PublicKey
	label string
}

// Public returns the ECDSA P-256 public key, read from the token once.
func (s *hsmSigner) Public() crypto.PublicKey { return s.pub }

// Sign signs digest in the token and returns an ASN.1 DER ECDSA signature.
// The caller hashes: the token signs the digest as given (CKM_ECDSA), so a
// digest whose length does not match opts.HashFunc() is refused.
func (s *hsmSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.ks.closed.Load() {
		return nil, fmt.Errorf("pkcs11: sign with key %s: the keystore is closed", s.label)
	}
	if opts != nil {
		if h := opts.HashFunc(); h != 0 && len(digest) != h.Size() {
			return nil, fmt.Errorf("pkcs11: sign with key %s: digest is %d bytes, %v needs %d", s.label, len(digest), h, h.Size())
		}
	}
	sig, err := s.key.Sign(rand, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: sign with key %s on token %s: %w", s.label, s.ks.cfg.TokenLabel, err)
	}
	return sig, nil
}

// tokenKey names one token of one library. module is the library's path
// with symbolic links resolved: two spellings of one library are one library
// to the dynamic loader, so they must share one initialization.
type tokenKey struct{ module, token string }

// sharedToken is one logged-in connection to a token, shared by every
// PKCS11 keystore of the process that uses the token.
type sharedToken struct {
	ctx     *crypto11.Context
	pinHash [sha256.Size]byte // of the PIN that logged in
	refs    int               // guarded by tokens.mu

	genMu sync.Mutex // serializes findOrGenerate, so that no key is generated twice
}

// tokens is the process's table of open tokens.
//
// This is package-level mutable state on purpose. A PKCS#11 library keeps
// process-global state: it is initialized once per process (a second
// C_Initialize fails with CKR_CRYPTOKI_ALREADY_INITIALIZED; crypto11 counts
// the users of each library path for that) and a login belongs to the whole
// process, not to a session. Two independent connections to one token would
// share one login anyway, and the second C_Login would return
// CKR_USER_ALREADY_LOGGED_IN without checking its PIN. Since the library's
// state is global, the record of who uses it has to be global too;
// everything else in this file is per keystore, so several auth servers can
// still run in one test process.
//
// Tokens are opened and closed under mu, one at a time, which also keeps
// C_GetSlotList calls apart: some libraries, SoftHSM2 among them, update
// their slot table there without a lock.
var tokens = struct {
	mu sync.Mutex // guards m and every sharedToken.refs
	m  map[tokenKey]*sharedToken
}{m: map[tokenKey]*sharedToken{}}

// openToken returns the process's connection to the token cfg names,
// opening it and logging in if this is the first user.
func openToken(cfg PKCS11Config) (tokenKey, *sharedToken, error) {
	module, err := filepath.Abs(cfg.Module)
	if err == nil {
		module, err = filepath.EvalSymlinks(module)
	}
	if err != nil {
		return tokenKey{}, nil, fmt.Errorf("pkcs11: load module %s: %w (is the HSM's PKCS#11 library installed?)", cfg.Module, err)
	}
	key := tokenKey{module: module, token: cfg.TokenLabel}
	pinHash := sha256.Sum256([]byte(cfg.PIN))

	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	if t, ok := tokens.m[key]; ok {
		// The token is logged in already, so the token cannot check this
		// PIN; compare it with the one that logged in.
		if subtle.ConstantTimeCompare(t.pinHash[:], pinHash[:]) != 1 {
			return tokenKey{}, nil, fmt.Errorf("pkcs11: log in to token %s: wrong PIN (not the one this process logged in with)", cfg.TokenLabel)
		}
		t.refs++
		return key, t, nil
	}
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path:        module,
		TokenLabel:  cfg.TokenLabel,
		Pin:         cfg.PIN,
		MaxSessions: cfg.MaxSessions,
	})
	if err != nil {
		return tokenKey{}, nil, configureError(cfg, module, err)
	}
	t := &sharedToken{ctx: ctx, pinHash: pinHash, refs: 1}
	tokens.m[key] = t
	return key, t, nil
}

// releaseToken drops one reference to t, closing it with the last one.
func releaseToken(key tokenKey, t *sharedToken) error {
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	t.refs--
	if t.refs > 0 {
		return nil
	}
	delete(tokens.m, key)
	// Closed under the lock: a keystore opened meanwhile must log in afresh,
	// with its PIN checked, rather than ride on the login being closed.
	if err := t.ctx.Close(); err != nil {
		return fmt.Errorf("pkcs11: close token %s: %w", key.token, err)
	}
	return nil
}

// configureError turns crypto11.Configure's errors into ones that say what
// to do.
func configureError(cfg PKCS11Config, module string, err error) error {
	// crypto11 does not export these two errors; match their text. The tests
	// cover both, so a crypto11 upgrade that rewords them fails loudly.
	msg := err.Error()
	switch {
	case strings.Contains(msg, "failed to open module"):
		// dlopen failed; crypto11 drops dlerror's reason.
		return fmt.Errorf("pkcs11: load module %s: not a loadable shared library for this system (is the HSM's PKCS#11 library installed?)", cfg.Module)
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("pkcs11: token %q not found in module %s: check TokenLabel (`pkcs11-tool --module %s --list-slots` lists the tokens)", cfg.TokenLabel, cfg.Module, module)
	}
	var code pkcs11.Error
	if errors.As(err, &code) {
		switch code {
		case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LEN_RANGE:
			return fmt.Errorf("pkcs11: log in to token %s: wrong PIN", cfg.TokenLabel)
		case pkcs11.CKR_PIN_LOCKED:
			return fmt.Errorf("pkcs11: log in to token %s: the PIN is locked after too many wrong attempts: reset it with the security officer PIN (`pkcs11-tool --init-pin --login --login-type so`)", cfg.TokenLabel)
		case pkcs11.CKR_PIN_EXPIRED:
			return fmt.Errorf("pkcs11: log in to token %s: the PIN has expired: set a new one with the HSM's tools (`pkcs11-tool --change-pin`)", cfg.TokenLabel)
		case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
			return fmt.Errorf("pkcs11: log in to token %s: the token has no user PIN yet: set one with the security officer PIN (`pkcs11-tool --init-pin --login --login-type so`)", cfg.TokenLabel)
		case pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED:
			return fmt.Errorf("pkcs11: initialize module %s: other code in this process initialized it already, outside Jumpgate's keystore; open the token only through keystore.NewPKCS11", cfg.Module)
		}
	}
	return fmt.Errorf("pkcs11: open token %s in module %s: %w", cfg.TokenLabel, cfg.Module, err)
}

// findOrGenerate returns the key pair labelled label, generating it if the
// token has none.
func (t *sharedToken) findOrGenerate(label, tokenLabel string) (crypto11.Signer, *ecdsa.PublicKey, error) {
	t.genMu.Lock()
	defer t.genMu.Unlock()

	found, err := t.ctx.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, nil, fmt.Errorf("pkcs11: find key %s on token %s: %w", label, tokenLabel, err)
	}
	var k crypto11.Signer
	switch len(found) {
	case 0:
		// FindKeyPairs skips a private key whose public half is missing;
		// generating a second key under its label would hide it.
		orphans, err := t.ctx.FindPrivateKeys(nil, []byte(label))
		if err != nil {
			return nil, nil, fmt.Errorf("pkcs11: find key %s on token %s: %w", label, tokenLabel, err)
		}
		if len(orphans) > 0 {
			return nil, nil, fmt.Errorf("pkcs11: token %s has a private key labelled %s but no public key with its CKA_ID: import the public key, or delete the private key so that a new pair is generated", tokenLabel, label)
		}
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return nil, nil, fmt.Errorf("pkcs11: generate key %s: %w", label, err)
		}
		// crypto11 makes the private half CKA_SENSITIVE and not
		// CKA_EXTRACTABLE; checkPrivate below verifies that the token
		// honoured it.
		k, err = t.ctx.GenerateECDSAKeyPairWithLabel(id, []byte(label), elliptic.P256())
		if err != nil {
			return nil, nil, fmt.Errorf("pkcs11: generate ECDSA P-256 key %s in token %s: %w", label, tokenLabel, err)
		}
	case 1:
		k = found[0]
	default:
		return nil, nil, fmt.Errorf("pkcs11: token %s has %d key pairs labelled %s: keep the one this cluster trusts and delete the others (`pkcs11-tool --delete-object --type privkey --id ID`, and the same with --type pubkey)", tokenLabel, len(found), label)
	}

	pub, ok := k.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("pkcs11: key %s on token %s is %s, not ECDSA P-256 as every Jumpgate CA key must be: delete it, or choose another KeyLabelPrefix", label, tokenLabel, describeKey(k.Public()))
	}
	if err := t.checkPrivate(k); err != nil {
		return nil, nil, fmt.Errorf("pkcs11: key %s on token %s: %w", label, tokenLabel, err)
	}
	return k, pub, nil
}

// checkPrivate refuses a private key that the token would reveal.
func (t *sharedToken) checkPrivate(k crypto11.Signer) error {
	attrs, err := t.ctx.GetAttributes(k, []crypto11.AttributeType{crypto11.CkaSensitive, crypto11.CkaExtractable})
	if err != nil {
		return fmt.Errorf("read attributes: %w", err)
	}
	isTrue := func(t crypto11.AttributeType) bool {
		a := attrs[t]
		return a != nil && len(a.Value) == 1 && a.Value[0] != 0
	}
	if !isTrue(crypto11.CkaSensitive) || isTrue(crypto11.CkaExtractable) {
		return errors.New("the private key is not sensitive or is extractable, so it could leave the HSM: delete it so that a new one is generated inside the token, or mark it CKA_SENSITIVE and not CKA_EXTRACTABLE with the HSM's tools")
	}
	return nil
}

// describeKey names a public key's algorithm for error messages.
func describeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	default:
		return fmt.Sprintf("a %T", pub)
	}
}
