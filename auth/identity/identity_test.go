package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"strings"
	"testing"
	"time"
)

func roles(rs ...Role) RoleGetter {
	m := map[string]Role{}
	for _, r := range rs {
		m[r.Name] = r
	}
	return func(n string) (Role, bool) { r, ok := m[n]; return r, ok }
}

func TestRoleEvaluation(t *testing.T) {
	all, err := ParseRoles([]byte(`
kind: role
name: dev
allow:
  logins: [ubuntu, deploy]
  node_labels: {env: [dev, staging]}
deny:
  logins: [root]
---
kind: role
name: sre
allow:
  logins: [root, ubuntu]
  node_labels: {"*": "*"}
deny:
  node_labels: {env: secret}
`))
	if err != nil {
		t.Fatal(err)
	}
	get := roles(all...)
	dev := map[string]string{"env": "dev"}
	prod := map[string]string{"env": "prod"}
	secret := map[string]string{"env": "secret"}
	cases := []struct {
		roles  []string
		labels map[string]string
		login  string
		ok     bool
		reason string
	}{
		{[]string{"dev"}, dev, "ubuntu", true, ""},
		{[]string{"dev"}, prod, "ubuntu", false, "allow node"},
		{[]string{"dev"}, dev, "root", false, "login root"},
		{[]string{"sre"}, prod, "root", true, ""},
		{[]string{"dev", "sre"}, dev, "root", false, "role dev denies login root"}, // deny wins
		{[]string{"sre"}, secret, "ubuntu", false, "denies node"},
		{[]string{"gone"}, dev, "ubuntu", false, "allow node"}, // deleted role grants nothing
		{nil, dev, "ubuntu", false, ""},
	}
	for _, c := range cases {
		err := CheckLogin(Identity{Roles: c.roles}, get, "n1", c.labels, c.login)
		if (err == nil) != c.ok {
			t.Errorf("%v on %v as %s: err=%v, want ok=%v", c.roles, c.labels, c.login, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%v on %v as %s: %q lacks %q", c.roles, c.labels, c.login, err, c.reason)
		}
	}
	if got := Logins(all, nil); strings.Join(got, ",") != "deploy,root,ubuntu" {
		t.Errorf("Logins = %v", got)
	}
}

func TestParseRolesErrors(t *testing.T) {
	for _, in := range []string{"", "kind: user\nname: x\n", "name: 'a b'\n", "name: x\nmax_session_ttl: soon\n", "name: x\nallow: {node_labels: {env: []}}\n"} {
		if _, err := ParseRoles([]byte(in)); err == nil {
			t.Errorf("accepted %q", in)
		}
	}
}

func TestX509RoundTrip(t *testing.T) {
	id := Identity{Kind: KindUser, Name: "alice", Cluster: "prod", Roles: []string{"dev"}, Logins: []string{"ubuntu"}}
	subj, ext, err := id.TLSSubject()
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: subj, ExtraExtensions: ext, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	got, err := FromX509(cert)
	if err != nil || got.Name != "alice" || got.Kind != KindUser || got.Roles[0] != "dev" || got.Logins[0] != "ubuntu" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	tmpl.ExtraExtensions = nil
	der, _ = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	cert, _ = x509.ParseCertificate(der)
	if _, err := FromX509(cert); err == nil || !strings.Contains(err.Error(), "not a Jumpgate certificate") {
		t.Fatalf("plain certificate: %v", err)
	}
}

func TestCheckValidity(t *testing.T) {
	now := time.Now()
	err := CheckValidity(now.Add(-3*time.Hour), now.Add(-2*time.Hour), now)
	if err == nil || err.Error() != "certificate expired 2h ago: run jg login" {
		t.Fatalf("got %v", err)
	}
	if CheckValidity(now.Add(-time.Hour), now.Add(time.Hour), now) != nil {
		t.Fatal("valid certificate refused")
	}
}

func FuzzParseRoles(f *testing.F) {
	f.Add([]byte("kind: role\nname: dev\nallow:\n  logins: [a]\n  node_labels: {env: dev}\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("name: [x\n"))
	f.Add([]byte("kind: role\nname: t\nallow:\n  logins: ['{{internal.logins}}']\n  node_labels: {host: '^web-[0-9]+$'}\n  permissions: []\n  request: {roles: [prod], max_duration: 2h}\nrequire_session_mfa: true\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := ParseRoles(b)
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.Check() != nil {
				t.Fatalf("ParseRoles returned an invalid role %+v", r)
			}
			_ = CheckLogin(Identity{Roles: []string{r.Name}, Traits: map[string][]string{"internal.logins": {"a"}}}, roles(rs...), "n", map[string]string{"env": "dev"}, "a")
			_ = Policy(Identity{Roles: []string{r.Name}}, roles(rs...), map[string]string{"env": "dev"})
			_, _ = CheckRequest(Identity{Roles: []string{r.Name}}, roles(rs...), "x")
		}
	})
}
