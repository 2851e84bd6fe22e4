package sshd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

// extIdentity is the ssh.Permissions extension that carries the
// authenticated identity, as JSON, from authentication to the channel
// handlers. Certificates cannot inject it: it is set after their extensions
// are copied.
const extIdentity = "identity@internal.jumpgate.dev"

// serverVersion is the SSH identification string.
const serverVersion = "SSH-2.0-Jumpgate"

// authError is a refused login: what the user is told, and how it is
// counted and audited.
type authError struct {
	reason failReason
	event  string // audit.AuthFailed or audit.SessionDenied
	msg    string // shown to the user after "jumpgate: "
	err    error  // detail for the log, if any

	user     string   // Jumpgate user, once the certificate's signature is verified
	roles    []string // their roles
	plainKey bool     // a key that is not a certificate
}

func (e *authError) Error() string { return e.msg }
func (e *authError) Unwrap() error { return e.err }

// authState is what one connection's authentication remembers between
// attempts. The callbacks run one at a time on the connection's goroutine.
type authState struct {
	bannerShown  bool // a refusal was explained to the user already
	plainKeySeen bool // a plain key was refused already
}

// serverConfig builds the ssh.ServerConfig of one connection: the host
// signer is read per connection, and authState is per connection.
func (s *Server) serverConfig(signer ssh.Signer, nc net.Conn) *ssh.ServerConfig {
	st := &authState{}
	cfg := &ssh.ServerConfig{
		ServerVersion: serverVersion,
		PublicKeyCallback: func(cm ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			perms, err := s.checkKey(cm, key)
			if err != nil {
				return nil, s.refuse(st, cm, err)
			}
			return perms, nil
		},
		// Authorization runs only once the client has proven it holds the
		// certificate's private key, so that a copied certificate cannot be
		// used to probe what the roles allow.
		VerifiedPublicKeyCallback: func(cm ssh.ConnMetadata, key ssh.PublicKey, perms *ssh.Permissions, _ string) (*ssh.Permissions, error) {
			if err := s.authorize(cm, perms, key, nc); err != nil {
				return nil, s.refuse(st, cm, err)
			}
			return perms, nil
		},
	}
	cfg.AddHostKey(signer)
	return cfg
}

// checkKey validates a user certificate offered for login cm.User(), in the
// order that gives the most useful message: kind, CA and signature,
// validity, principal, cluster. ssh.CertChecker then checks it again as the
// authority (critical options, exact time bounds).
func (s *Server) checkKey(cm ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	login := cm.User()
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, &authError{reason: reasonOther, event: audit.AuthFailed, plainKey: true,
			msg: fmt.Sprintf("node %s accepts only Jumpgate user certificates, not plain keys or passwords: run jg login", s.cfg.NodeID)}
	}
	if cert.CertType != ssh.UserCert {
		return nil, &authError{reason: reasonOther, event: audit.AuthFailed,
			msg: "a host certificate cannot be used to log in: run jg login for a user certificate"}
	}
	cas := s.cfg.UserCAs()
	isCA := func(k ssh.PublicKey) bool { return trusted(cas, k) }
	if !isCA(cert.SignatureKey) || verifyCertSignature(cert) != nil {
		return nil, &authError{reason: reasonUnknownCA, event: audit.AuthFailed,
			msg: "certificate is not signed by this cluster's user CA: run jg login against the right proxy"}
	}

	// From here on the certificate's contents are signed by the cluster.
	var roles []string
	if r := cert.Extensions[identity.ExtRoles]; r != "" {
		roles = strings.Split(r, ",")
	}
	fail := func(reason failReason, msg string, err error) error {
		return &authError{reason: reason, event: audit.AuthFailed, msg: msg, err: err, user: cert.KeyId, roles: roles}
	}
	if err := checkCertValidity(cert, s.cfg.Now()); err != nil {
		return nil, fail(reasonExpired, err.Error(), err)
	}
	if !slices.Contains(cert.ValidPrincipals, login) {
		// CertChecker would accept a certificate without principals for any
		// login; Jumpgate never issues those, and never accepts them.
		allowed := "none"
		if len(cert.ValidPrincipals) > 0 {
			allowed = strings.Join(cert.ValidPrincipals, ", ")
		}
		return nil, fail(reasonPrincipal, fmt.Sprintf("your certificate does not allow login %q (it allows: %s): log in as one of those, or ask an administrator for a role that allows %q and run jg login again", login, allowed, login), nil)
	}
	if got := cert.Extensions[identity.ExtCluster]; got != s.cfg.ClusterName {
		return nil, fail(reasonWrongCluster, fmt.Sprintf("certificate is for cluster %q but node %s belongs to cluster %q: run jg login against the right proxy", got, s.cfg.NodeID, s.cfg.ClusterName), nil)
	}
	checker := ssh.CertChecker{IsUserAuthority: isCA, Clock: s.cfg.Now}
	certPerms, err := checker.Authenticate(cm, cert)
	if err != nil {
		return nil, fail(reasonOther, fmt.Sprintf("certificate was refused (%s): run jg login for a new one", strings.TrimPrefix(err.Error(), "ssh: ")), err)
	}
	id, err := identity.FromSSHCert(cert)
	if err != nil {
		return nil, fail(reasonOther, "certificate is not a valid Jumpgate certificate: run jg login for a new one", err)
	}
	b, err := json.Marshal(id)
	if err != nil {
		return nil, fail(reasonOther, "certificate is not a valid Jumpgate certificate: run jg login for a new one", err)
	}
	// A copy: certPerms points into the certificate.
	perms := &ssh.Permissions{
		CriticalOptions: maps.Clone(certPerms.CriticalOptions),
		Extensions:      maps.Clone(certPerms.Extensions),
	}
	if perms.Extensions == nil {
		perms.Extensions = make(map[string]string)
	}
	perms.Extensions[extIdentity] = string(b)
	return perms, nil
}

// authorize runs the role check and the OS login check for a verified key.
func (s *Server) authorize(cm ssh.ConnMetadata, perms *ssh.Permissions, key ssh.PublicKey, nc net.Conn) error {
	id, err := identityFromPermissions(perms)
	if err != nil {
		return &authError{reason: reasonOther, event: audit.AuthFailed, err: err,
			msg: "certificate is not a valid Jumpgate certificate: run jg login for a new one"}
	}
	login := cm.User()
	if err := s.cfg.Authorize(id, login); err != nil {
		var ae *identity.AccessError
		if errors.As(err, &ae) {
			return &authError{reason: reasonDenied, event: audit.SessionDenied, msg: ae.Error(), err: err, user: id.Name, roles: id.Roles}
		}
		return &authError{reason: reasonOther, event: audit.SessionDenied, err: err, user: id.Name, roles: id.Roles,
			msg: fmt.Sprintf("node %s could not check your access: try again in a minute, and if it keeps failing ask an administrator to look at the node's logs", s.cfg.NodeID)}
	}
	if _, err := lookupLogin(s.self, s.cfg.NodeID, login); err != nil {
		return &authError{reason: reasonOther, event: audit.SessionDenied, msg: err.Error(), err: err, user: id.Name, roles: id.Roles}
	}
	return s.checkPolicy(id, login, perms, key, nc)
}

// refuse counts, audits and logs a refused attempt, and returns the error
// for x/crypto/ssh, with a banner for the user.
func (s *Server) refuse(st *authState, cm ssh.ConnMetadata, err error) error {
	var ae *authError
	if !errors.As(err, &ae) {
		ae = &authError{reason: reasonOther, event: audit.AuthFailed, err: err, msg: "login failed: run jg login and try again"}
	}
	if ae.plainKey {
		// OpenSSH offers the plain key after a refused certificate, and
		// may offer several agent keys: the first refusal of a plain key
		// is counted and explained, unless a certificate's refusal, the
		// message that matters, was already.
		if st.plainKeySeen || st.bannerShown {
			return ae
		}
		st.plainKeySeen = true
	}

	e := s.auditEvent(ae.event)
	e.Login = cm.User()
	e.RemoteAddr = addrString(cm.RemoteAddr())
	e.Error = ae.msg
	e.User = ae.user
	e.Roles = ae.roles
	s.metrics.authFailures.WithLabelValues(string(ae.reason)).Inc()
	attrs := []any{"login", cm.User(), "remote", addrString(cm.RemoteAddr()), "reason", string(ae.reason), "why", ae.msg}
	if ae.user != "" {
		attrs = append(attrs, "user", ae.user)
	}
	if ae.err != nil && ae.err.Error() != ae.msg {
		attrs = append(attrs, "err", ae.err)
	}
	s.log.Info("refused ssh login", attrs...)
	s.cfg.Audit.Emit(e)

	st.bannerShown = true
	return &ssh.BannerError{Err: ae, Message: "jumpgate: " + ae.msg + "\n"}
}

// trusted reports whether k is one of cas.
func trusted(cas []ssh.PublicKey, k ssh.PublicKey) bool {
	b := k.Marshal()
	for _, ca := range cas {
		if ca != nil && bytes.Equal(ca.Marshal(), b) {
			return true
		}
	}
	return false
}

// verifyCertSignature checks the CA's signature over the certificate, as
// ssh.CertChecker does, so that nothing below reads unsigned data.
func verifyCertSignature(cert *ssh.Certificate) error {
	if cert.Signature == nil || cert.SignatureKey == nil {
		return errors.New("certificate has no signature")
	}
	c := *cert
	c.Signature = nil
	out := c.Marshal()
	// Marshal of an unsigned certificate ends with the empty signature's
	// length; the signature covers everything before it.
	return cert.SignatureKey.Verify(out[:len(out)-4], cert.Signature)
}

// checkCertValidity reports an expired or not yet valid certificate with
// identity's wording.
func checkCertValidity(cert *ssh.Certificate, now time.Time) error {
	if cert.ValidAfter > 1<<63-1 {
		return errors.New("certificate has an invalid start time: run jg login for a new one")
	}
	notBefore := time.Unix(int64(cert.ValidAfter), 0)
	notAfter := time.Unix(1<<62, 0) // far enough
	if cert.ValidBefore != ssh.CertTimeInfinity {
		if cert.ValidBefore > 1<<63-1 {
			return errors.New("certificate has an invalid end time: run jg login for a new one")
		}
		// ssh certificates are valid while now < ValidBefore.
		notAfter = time.Unix(int64(cert.ValidBefore), 0).Add(-time.Nanosecond)
	}
	return identity.CheckValidity(notBefore, notAfter, now)
}

// identityFromPermissions reads the identity authentication stored.
func identityFromPermissions(p *ssh.Permissions) (identity.Identity, error) {
	if p == nil {
		return identity.Identity{}, errors.New("no permissions")
	}
	raw, ok := p.Extensions[extIdentity]
	if !ok {
		return identity.Identity{}, errors.New("no identity in permissions")
	}
	var id identity.Identity
	if err := json.Unmarshal([]byte(raw), &id); err != nil {
		return identity.Identity{}, fmt.Errorf("decode identity: %w", err)
	}
	return id, nil
}
