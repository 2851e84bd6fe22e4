package sshd

import (
	"encoding/json"
	"fmt"
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
func (s *Server) checkPolicy(id identity.Identity, login string, perms *ssh.Permissions) error {
	pol := identity.SessionPolicy{PortForwarding: true, SFTP: true}
	if s.cfg.Policy != nil {
		pol = s.cfg.Policy(id)
	}
	if pol.RequireMFA {
		deny := func(msg string) error {
			return &authError{reason: reasonMFA, event: audit.SessionDenied, msg: msg, user: id.Name, roles: id.Roles}
		}
		switch {
		case id.MFA == nil:
			return deny(fmt.Sprintf("your roles require MFA for every session on node %s: connect with jg ssh, which asks for a code (OpenSSH through jg proxy ssh cannot)", s.cfg.NodeID))
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
