package sshd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

// extPolicy carries the session policy, as JSON, from authorization to the
// channel handlers (like extIdentity, set after the certificate's own
// extensions, which cannot forge it).
const extPolicy = "policy@internal.jumpgate.dev"

// mfaSeen remembers the per-session MFA certificates this node accepted,
// until they expire: each opens one session.
type mfaSeen struct {
	mu   sync.Mutex
	used map[string]time.Time // binding id -> certificate expiry
}

// use records id; it reports false if id was used already.
func (m *mfaSeen) use(id string, expires, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used == nil {
		m.used = map[string]time.Time{}
	}
	for k, exp := range m.used {
		if now.After(exp.Add(2 * time.Minute)) { // past the CA's clock slack too
			delete(m.used, k)
		}
	}
	if _, ok := m.used[id]; ok {
		return false
	}
	m.used[id] = expires
	return true
}

// checkPolicy evaluates the user's session policy on this node and, when
// the roles require it, the per-session MFA certificate: made for this
// node and login, and not used before.
func (s *Server) checkPolicy(id identity.Identity, login string, perms *ssh.Permissions, key ssh.PublicKey, nc net.Conn) error {
	pol := identity.SessionPolicy{PortForwarding: true, SFTP: true}
	if s.cfg.Policy != nil {
		pol = s.cfg.Policy(id)
	}
	if pol.RequireMFA {
		deny := func(msg string) error {
			return &authError{reason: reasonMFA, event: audit.SessionDenied, msg: msg, user: id.Name, roles: id.Roles}
		}
		if id.MFA == nil {
			// OpenSSH presents the login's certificate; jg proxy ssh
			// sent the per-session one with the dial.
			bound, expires, err := s.dialMFA(id, key, nc)
			if err != nil {
				return deny(err.Error())
			}
			id.MFA, id.Expires = bound, expires
		}
		switch {
		case id.MFA == nil:
			return deny(fmt.Sprintf("your roles require MFA for every session on node %s: connect with jg ssh or OpenSSH through jg proxy ssh, which ask for a code", s.cfg.NodeID))
		case id.MFA.Node != s.cfg.NodeID || id.MFA.Login != login:
			return deny(fmt.Sprintf("this MFA certificate is for %s@%s, not %s@%s", id.MFA.Login, id.MFA.Node, login, s.cfg.NodeID))
		case !s.mfa.use(id.MFA.ID, id.Expires, s.cfg.Now()):
			return deny("this MFA certificate opened a session already: each session needs a new code")
		}
	}
	b, err := json.Marshal(pol)
	if err != nil {
		return err
	}
	perms.Extensions[extPolicy] = string(b)
	return nil
}

// policyFromPermissions reads what checkPolicy stored.
func policyFromPermissions(p *ssh.Permissions) identity.SessionPolicy {
	var pol identity.SessionPolicy
	if p != nil {
		_ = json.Unmarshal([]byte(p.Extensions[extPolicy]), &pol)
	}
	return pol
}

// isFileTransfer reports whether an exec command is the server side of
// legacy scp or an SFTP server, which a role without the sftp permission
// must not reach through exec either.
func isFileTransfer(cmd string) bool {
	f := strings.Fields(cmd)
	if len(f) == 0 {
		return false
	}
	base := path.Base(f[0])
	return base == "scp" || base == "sftp-server" || strings.HasSuffix(base, "sftp-server")
}

// dialMFA reads the per-session MFA certificate the client sent with the
// dial (jg proxy ssh, for OpenSSH), if any, and checks it as checkKey
// checks a login certificate, and that it is the same user's, for the key
// that just authenticated. It returns its binding, or nil if there is none.
func (s *Server) dialMFA(id identity.Identity, key ssh.PublicKey, nc net.Conn) (*identity.MFABinding, time.Time, error) {
	line := ""
	for c := nc; c != nil; {
		if m, ok := c.(interface{ MFACert() string }); ok {
			line = m.MFACert()
			break
		}
		in, ok := c.(interface{ Inner() net.Conn })
		if !ok {
			break
		}
		c = in.Inner()
	}
	if line == "" {
		return nil, time.Time{}, nil
	}
	bad := errors.New("the MFA certificate sent with the connection is not valid: run the command again for a new code")
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, time.Time{}, bad
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok || cert.CertType != ssh.UserCert || !trusted(s.cfg.UserCAs(), cert.SignatureKey) || verifyCertSignature(cert) != nil {
		return nil, time.Time{}, bad
	}
	if err := checkCertValidity(cert, s.cfg.Now()); err != nil {
		return nil, time.Time{}, fmt.Errorf("the MFA certificate sent with the connection: %v", err)
	}
	mid, err := identity.FromSSHCert(cert)
	if err != nil || mid.MFA == nil || mid.Cluster != s.cfg.ClusterName {
		return nil, time.Time{}, bad
	}
	authKey := key
	if c, ok := key.(*ssh.Certificate); ok {
		authKey = c.Key
	}
	if mid.Name != id.Name || !bytes.Equal(cert.Key.Marshal(), authKey.Marshal()) {
		return nil, time.Time{}, errors.New("the MFA certificate sent with the connection is another user's or key's")
	}
	b := *mid.MFA
	return &b, mid.Expires, nil
}
