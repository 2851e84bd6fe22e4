package sshd

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

func TestAuthRefused(t *testing.T) {
	e := newTestEnv(t)
	otherCA := newSigner(t)
	plain := newSigner(t)

	cases := []struct {
		name      string
		signer    func() ssh.Signer
		login     string // default e.login
		banner    string // the user sees this
		event     string
		reason    failReason
		eventUser string
	}{
		{
			name: "expired",
			signer: func() ssh.Signer {
				return e.certFor("alice", func(c *ssh.Certificate) ssh.Signer {
					c.ValidAfter = uint64(time.Now().Add(-10 * time.Hour).Unix())
					c.ValidBefore = uint64(time.Now().Add(-2*time.Hour - time.Minute).Unix())
					return nil
				}).signer
			},
			banner:    "jumpgate: certificate expired 2h ago: run jg login",
			event:     audit.AuthFailed,
			reason:    reasonExpired,
			eventUser: "alice",
		},
		{
			name: "not yet valid",
			signer: func() ssh.Signer {
				return e.certFor("alice", func(c *ssh.Certificate) ssh.Signer {
					c.ValidAfter = uint64(time.Now().Add(time.Hour).Unix())
					c.ValidBefore = uint64(time.Now().Add(2 * time.Hour).Unix())
					return nil
				}).signer
			},
			banner: "check this machine's clock",
			event:  audit.AuthFailed,
			reason: reasonExpired,
		},
		{
			name: "other CA",
			signer: func() ssh.Signer {
				return e.certFor("alice", func(*ssh.Certificate) ssh.Signer { return otherCA }).signer
			},
			banner: "jumpgate: certificate is not signed by this cluster's user CA: run jg login against the right proxy",
			event:  audit.AuthFailed,
			reason: reasonUnknownCA,
		},
		{
			name:   "wrong principal",
			signer: func() ssh.Signer { return e.certFor("alice", nil).signer },
			login:  "not-my-login",
			banner: `your certificate does not allow login "not-my-login"`,
			event:  audit.AuthFailed,
			reason: reasonPrincipal,
		},
		{
			name: "no principals",
			signer: func() ssh.Signer {
				return e.certFor("alice", func(c *ssh.Certificate) ssh.Signer { c.ValidPrincipals = nil; return nil }).signer
			},
			banner: "(it allows: none)",
			event:  audit.AuthFailed,
			reason: reasonPrincipal,
		},
		{
			name: "wrong cluster",
			signer: func() ssh.Signer {
				return e.certFor("alice", func(c *ssh.Certificate) ssh.Signer {
					c.Extensions[identity.ExtCluster] = "elsewhere"
					return nil
				}).signer
			},
			banner: `certificate is for cluster "elsewhere" but node node1 belongs to cluster "test-cluster"`,
			event:  audit.AuthFailed,
			reason: reasonWrongCluster,
		},
		{
			name: "unsupported critical option",
			signer: func() ssh.Signer {
				return e.certFor("alice", func(c *ssh.Certificate) ssh.Signer {
					c.CriticalOptions = map[string]string{"force-command": "/bin/true"}
					return nil
				}).signer
			},
			banner: "certificate was refused (unsupported critical option",
			event:  audit.AuthFailed,
			reason: reasonOther,
		},
		{
			name:      "roles deny",
			signer:    func() ssh.Signer { return e.certFor("mallory", nil).signer },
			banner:    "jumpgate: access denied: none of your roles allow login " + e.login + " on node node1",
			event:     audit.SessionDenied,
			reason:    reasonDenied,
			eventUser: "mallory",
		},
		{
			name:   "authorize fails",
			signer: func() ssh.Signer { return e.certFor("broken", nil).signer },
			banner: "node node1 could not check your access: try again in a minute",
			event:  audit.SessionDenied,
			reason: reasonOther,
		},
		{
			name:   "plain key",
			signer: func() ssh.Signer { return plain },
			banner: "jumpgate: node node1 accepts only Jumpgate user certificates, not plain keys or passwords: run jg login",
			event:  audit.AuthFailed,
			reason: reasonOther,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			login := tc.login
			if login == "" {
				login = e.login
			}
			before := metricValue(t, e.reg, "jumpgate_node_auth_failures_total", "reason", string(tc.reason))
			nEvents := e.audit.count(tc.event)
			c, banner, err := e.dial(tc.signer(), login)
			if err == nil {
				c.Close()
				t.Fatalf("login succeeded, want refused")
			}
			if !strings.Contains(banner, tc.banner) {
				t.Errorf("banner = %q, want it to contain %q", banner, tc.banner)
			}
			if strings.Count(banner, "jumpgate:") != 1 {
				t.Errorf("banner = %q, want exactly one message", banner)
			}
			if got := metricValue(t, e.reg, "jumpgate_node_auth_failures_total", "reason", string(tc.reason)); got != before+1 {
				t.Errorf("auth_failures_total{reason=%q} = %v, want %v", tc.reason, got, before+1)
			}
			if got := e.audit.count(tc.event); got != nEvents+1 {
				t.Fatalf("%d new %s events, want 1: %+v", got-nEvents, tc.event, e.audit.all())
			}
			all := e.audit.all()
			ev := all[len(all)-1]
			if ev.Type != tc.event || !strings.Contains("jumpgate: "+ev.Error, tc.banner) || ev.Login != login || ev.Node != testNode || ev.RemoteAddr == "" {
				t.Errorf("audit event = %+v", ev)
			}
			if tc.eventUser != "" && ev.User != tc.eventUser {
				t.Errorf("audit event user = %q, want %q", ev.User, tc.eventUser)
			}
		})
	}
	if got := metricValue(t, e.reg, "jumpgate_node_sessions_total"); got != 0 {
		t.Errorf("sessions_total = %v after refusals only", got)
	}
}

// A node that does not run as root refuses other logins at authentication,
// so that the user sees why.
func TestAuthNonRootNode(t *testing.T) {
	e := startTestEnv(t)
	e.srv.self = selfUser{Name: "jumpgate", UID: 4242}
	e.serve()
	_, banner, err := e.dial(e.certFor("alice", nil).signer, e.login)
	if err == nil {
		t.Fatal("login succeeded, want refused")
	}
	want := "node node1 runs as user jumpgate and cannot log in as \"" + e.login + "\": run the node as root or log in as jumpgate"
	if !strings.Contains(banner, want) {
		t.Errorf("banner = %q, want %q", banner, want)
	}
	ev := e.audit.wait(t, audit.SessionDenied, nil)
	if !strings.Contains(ev.Error, "run the node as root") {
		t.Errorf("audit event = %+v", ev)
	}
}

func TestAuthUnknownLogin(t *testing.T) {
	e := newTestEnv(t)
	if e.srv.self.UID != 0 {
		t.Skip("needs root: a non-root node refuses every other login before looking it up")
	}
	login := "jg-no-such-user-x"
	_, banner, err := e.dial(e.certFor("alice", func(c *ssh.Certificate) ssh.Signer {
		c.ValidPrincipals = []string{login}
		return nil
	}).signer, login)
	if err == nil {
		t.Fatal("login succeeded")
	}
	if want := `login "jg-no-such-user-x" does not exist on node node1`; !strings.Contains(banner, want) {
		t.Errorf("banner = %q, want %q", banner, want)
	}
}

// CA rotation: UserCAs and HostSigner are read per connection.
func TestRotation(t *testing.T) {
	e := startTestEnv(t)
	newCA := newSigner(t)
	var trusted atomic.Pointer[[]ssh.PublicKey]
	trusted.Store(&[]ssh.PublicKey{})
	e.srv.cfg.UserCAs = func() []ssh.PublicKey { return *trusted.Load() }
	e.serve()

	_, _, err := e.dial(e.certFor("alice", nil).signer, e.login)
	if err == nil {
		t.Fatal("login with no trusted CA succeeded")
	}
	trusted.Store(&[]ssh.PublicKey{e.userCA.PublicKey(), newCA.PublicKey()})
	for _, ca := range []ssh.Signer{e.userCA, newCA} {
		c, banner, err := e.dial(e.certFor("alice", func(*ssh.Certificate) ssh.Signer { return ca }).signer, e.login)
		if err != nil {
			t.Fatalf("login with a trusted CA: %v (%q)", err, banner)
		}
		c.Close()
	}
}

func TestCheckCertValidity(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	cert := &ssh.Certificate{ValidAfter: uint64(now.Unix() - 10), ValidBefore: uint64(now.Unix())}
	// Valid while now < ValidBefore, as ssh.CertChecker has it.
	if err := checkCertValidity(cert, now); err == nil {
		t.Errorf("certificate valid at ValidBefore")
	}
	if err := checkCertValidity(cert, now.Add(-time.Second)); err != nil {
		t.Errorf("certificate invalid a second before ValidBefore: %v", err)
	}
	cert.ValidBefore = ssh.CertTimeInfinity
	if err := checkCertValidity(cert, now.Add(100*365*24*time.Hour)); err != nil {
		t.Errorf("certificate without end expired: %v", err)
	}
	cert.ValidAfter = 1 << 63
	if err := checkCertValidity(cert, now); err == nil {
		t.Errorf("certificate with an overflowing start accepted")
	}
}

func TestNewChecksConfig(t *testing.T) {
	base := Config{
		NodeID:      "n",
		ClusterName: "c",
		HostSigner:  func() (ssh.Signer, error) { return nil, nil },
		UserCAs:     func() []ssh.PublicKey { return nil },
		Authorize:   func(identity.Identity, string) error { return nil },
	}
	if _, err := New(base); err != nil {
		t.Fatalf("New with a complete config: %v", err)
	}
	for field, clear := range map[string]func(*Config){
		"NodeID":      func(c *Config) { c.NodeID = "" },
		"ClusterName": func(c *Config) { c.ClusterName = "" },
		"HostSigner":  func(c *Config) { c.HostSigner = nil },
		"UserCAs":     func(c *Config) { c.UserCAs = nil },
		"Authorize":   func(c *Config) { c.Authorize = nil },
	} {
		cfg := base
		clear(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("New without %s: %v, want an error naming it", field, err)
		}
	}
}
