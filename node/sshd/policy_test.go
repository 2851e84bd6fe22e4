package sshd

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/node/recording"
)

// policyFor returns a Config.Policy giving users named in m that policy,
// everyone else port forwarding and SFTP.
func policyFor(m map[string]identity.SessionPolicy) envOption {
	return func(c *Config) {
		c.Policy = func(id identity.Identity) identity.SessionPolicy {
			if p, ok := m[id.Name]; ok {
				return p
			}
			return identity.SessionPolicy{PortForwarding: true, SFTP: true}
		}
	}
}

// TestPolicyPermissions: a role without port forwarding or SFTP gets
// neither (legacy scp through exec included), and each refusal is audited.
func TestPolicyPermissions(t *testing.T) {
	e := newTestEnv(t, policyFor(map[string]identity.SessionPolicy{"carol": {}}))
	c, banner, err := e.dial(e.certFor("carol", nil).signer, e.login)
	if err != nil {
		t.Fatalf("dial: %v (%s)", err, banner)
	}
	defer c.Close()
	echo, _ := net.Listen("tcp", "127.0.0.1:0")
	defer echo.Close()
	if _, err := c.Dial("tcp", echo.Addr().String()); err == nil || !strings.Contains(err.Error(), "do not permit port forwarding") {
		t.Errorf("port forward: %v", err)
	}
	e.audit.wait(t, audit.PortForward, func(ev audit.Event) bool { return ev.User == "carol" && strings.Contains(ev.Error, "roles") })
	if _, err := sftp.NewClient(c); err == nil {
		t.Error("sftp allowed")
	}
	e.audit.wait(t, audit.SFTP, func(ev audit.Event) bool { return ev.User == "carol" && ev.Error != "" })
	s, _ := c.NewSession()
	if err := s.Run("scp -t /tmp/x"); err == nil {
		t.Error("scp through exec allowed")
	}
	e.audit.wait(t, audit.Exec, func(ev audit.Event) bool { return ev.User == "carol" && strings.Contains(ev.Error, "file transfer") })
	// alice (the default policy) may.
	a := e.client()
	sc, err := sftp.NewClient(a)
	if err != nil {
		t.Fatalf("sftp for alice: %v", err)
	}
	sc.Close()
}

// TestPolicyMFA: when the roles require MFA, only a certificate bound to
// this node and login opens a session, and only once.
func TestPolicyMFA(t *testing.T) {
	e := newTestEnv(t, policyFor(map[string]identity.SessionPolicy{"dave": {RequireMFA: true}}))
	plain := e.certFor("dave", nil)
	if _, banner, err := e.dial(plain.signer, e.login); err == nil || !strings.Contains(banner, "require MFA") {
		t.Errorf("no MFA binding: %v %q", err, banner)
	}
	bound := func(node, login, id string) userKey {
		return e.certFor("dave", func(c *ssh.Certificate) ssh.Signer {
			b, _ := json.Marshal(identity.MFABinding{ID: id, Node: node, Login: login})
			c.Permissions.Extensions[identity.ExtMFA] = string(b)
			c.ValidBefore = uint64(time.Now().Add(time.Minute).Unix())
			return nil
		})
	}
	if _, banner, err := e.dial(bound("other-node", e.login, "s1").signer, e.login); err == nil || !strings.Contains(banner, "not "+e.login+"@"+testNode) {
		t.Errorf("bound to another node: %v %q", err, banner)
	}
	good := bound(testNode, e.login, "s2")
	c, banner, err := e.dial(good.signer, e.login)
	if err != nil {
		t.Fatalf("bound certificate: %v %q", err, banner)
	}
	c.Close()
	if _, banner, err := e.dial(good.signer, e.login); err == nil || !strings.Contains(banner, "opened a session already") {
		t.Errorf("second use: %v %q", err, banner)
	}
	e.audit.wait(t, audit.SessionDenied, func(ev audit.Event) bool { return ev.User == "dave" })
}

// TestRecording: a session's output is recorded byte for byte, resized
// terminals are noted, and the finished recording is handed on.
func TestRecording(t *testing.T) {
	store, err := recording.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan recording.Meta, 1)
	e := newTestEnv(t, func(c *Config) {
		c.Recordings = store
		c.OnRecording = func(m recording.Meta) { done <- m }
	})
	c := e.client()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Output(`printf 'h\303\251llo '; seq 1 5000`)
	if err != nil {
		t.Fatal(err)
	}
	var m recording.Meta
	select {
	case m = <-done:
	case <-time.After(waitLimit):
		t.Fatal("no recording finished")
	}
	if m.User != "alice" || m.Node != testNode || !strings.Contains(m.Command, "seq 1 5000") || m.End.IsZero() {
		t.Errorf("meta %+v", m)
	}
	rc, _, err := store.Open(m.Session)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	got, err := recording.Output(bytes.NewReader(b))
	if err != nil || !bytes.Equal(got, out) {
		t.Fatalf("recorded %d bytes (%v), the client got %d", len(got), err, len(out))
	}
}

// TestAgentForwarding: with agent_forwarding, the session's programs reach
// the client's agent through SSH_AUTH_SOCK; without it, the request is
// refused and audited.
func TestAgentForwarding(t *testing.T) {
	sshAdd, err := exec.LookPath("ssh-add")
	if err != nil {
		t.Skip("ssh-add (OpenSSH client) not installed: make deps installs it")
	}
	e := newTestEnv(t, policyFor(map[string]identity.SessionPolicy{
		"alice": {AgentForwarding: true},
		"carol": {},
	}))
	keyring := agent.NewKeyring()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv, Comment: "forwarded-key"}); err != nil {
		t.Fatal(err)
	}
	run := func(user string) (string, error) {
		c, banner, err := e.dial(e.certFor(user, nil).signer, e.login)
		if err != nil {
			t.Fatalf("dial %s: %v (%s)", user, err, banner)
		}
		defer c.Close()
		if err := agent.ForwardToAgent(c, keyring); err != nil {
			t.Fatal(err)
		}
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := agent.RequestAgentForwarding(s); err != nil {
			return "", err
		}
		out, err := s.CombinedOutput(sshAdd + " -L")
		return string(out), err
	}
	out, err := run("alice")
	if err != nil || !strings.Contains(out, "forwarded-key") {
		t.Errorf("alice: %v: %s", err, out)
	}
	if _, err := run("carol"); err == nil {
		t.Error("carol's agent forwarding request was accepted")
	}
	e.audit.wait(t, audit.PortForward, func(ev audit.Event) bool { return ev.User == "carol" && ev.Command == "agent" && ev.Error != "" })
}

// mfaListener hands out connections that carry a per-session MFA
// certificate, as the tunnel agent's do when jg proxy ssh sent one.
type mfaListener struct {
	net.Listener
	line func() string
}

type mfaConn struct {
	net.Conn
	line string
}

func (c mfaConn) MFACert() string { return c.line }

func (l mfaListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return mfaConn{Conn: c, line: l.line()}, nil
}

// TestPolicyMFAWithTheDial: OpenSSH presents the login's certificate, and
// the per-session certificate arrives with the dial: accepted once, for
// the same user's key only.
func TestPolicyMFAWithTheDial(t *testing.T) {
	e := startTestEnv(t, policyFor(map[string]identity.SessionPolicy{"dave": {RequireMFA: true}}))
	login := e.certFor("dave", nil)
	sessionCert := func(key ssh.PublicKey, id string) string {
		b, _ := json.Marshal(identity.MFABinding{ID: id, Node: testNode, Login: e.login})
		ext := identity.Identity{Kind: identity.KindUser, Name: "dave", Cluster: testCluster, Roles: []string{"dev"}}.SSHExtensions()
		ext[identity.ExtMFA] = string(b)
		c := &ssh.Certificate{Key: key, CertType: ssh.UserCert, KeyId: "dave", ValidPrincipals: []string{e.login},
			ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(time.Minute).Unix()),
			Permissions: ssh.Permissions{Extensions: ext}}
		if err := c.SignCert(rand.Reader, e.userCA); err != nil {
			t.Fatal(err)
		}
		return string(ssh.MarshalAuthorizedKey(c))
	}
	var carried atomic.Value
	go e.srv.Serve(&mfaListener{Listener: e.ln, line: func() string { return carried.Load().(string) }})
	carried.Store(sessionCert(login.cert.Key, "m1"))
	c, banner, err := e.dial(login.signer, e.login)
	if err != nil {
		t.Fatalf("login certificate with a per-session certificate on the dial: %v %q", err, banner)
	}
	c.Close()
	if _, banner, err := e.dial(login.signer, e.login); err == nil || !strings.Contains(banner, "opened a session already") {
		t.Errorf("the same per-session certificate again: %v %q", err, banner)
	}
	other := e.certFor("dave", nil) // another key
	carried.Store(sessionCert(other.cert.Key, "m2"))
	if _, banner, err := e.dial(login.signer, e.login); err == nil || !strings.Contains(banner, "another user's or key's") {
		t.Errorf("a per-session certificate for another key: %v %q", err, banner)
	}
	carried.Store("garbage")
	if _, banner, err := e.dial(login.signer, e.login); err == nil || !strings.Contains(banner, "not valid") {
		t.Errorf("garbage: %v %q", err, banner)
	}
}
