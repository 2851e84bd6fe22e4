package identity

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func mustRoles(t *testing.T, y string) RoleGetter {
	t.Helper()
	rs, err := ParseRoles([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return roles(rs...)
}

func TestLabelExpressions(t *testing.T) {
	get := mustRoles(t, `
kind: role
name: web
allow:
  logins: [ubuntu]
  node_labels:
    host: '^web-[0-9]+$'
    env: [staging, "^prod-(eu|us)$"]
deny:
  node_labels: {host: '^web-9[0-9]*$'}
`)
	id := Identity{Roles: []string{"web"}}
	cases := []struct {
		labels map[string]string
		ok     bool
	}{
		{map[string]string{"host": "web-1", "env": "staging"}, true},
		{map[string]string{"host": "web-12", "env": "prod-eu"}, true},
		{map[string]string{"host": "web-1", "env": "prod-asia"}, false},
		{map[string]string{"host": "web-", "env": "staging"}, false},
		{map[string]string{"host": "xweb-1", "env": "staging"}, false}, // anchored
		{map[string]string{"host": "web-1"}, false},                    // label missing
		{map[string]string{"host": "web-91", "env": "staging"}, false}, // deny expression wins
	}
	for _, c := range cases {
		err := CheckLogin(id, get, "n", c.labels, "ubuntu")
		if (err == nil) != c.ok {
			t.Errorf("%v: err=%v, want ok=%v", c.labels, err, c.ok)
		}
	}
	if _, err := ParseRoles([]byte("name: bad\nallow: {node_labels: {host: '^web-[$'}}\n")); err == nil || !strings.Contains(err.Error(), "regular expression") {
		t.Errorf("bad expression accepted: %v", err)
	}
}

func TestTraitTemplates(t *testing.T) {
	get := mustRoles(t, `
kind: role
name: self
allow:
  logins: ["{{internal.logins}}", "{{external.unix_user}}", deploy]
  node_labels: {team: "{{external.teams}}"}
deny:
  logins: ["{{internal.banned}}"]
`)
	id := Identity{Roles: []string{"self"}, Traits: map[string][]string{
		"internal.logins":    {"alice", "root"},
		"external.unix_user": {"al"},
		"external.teams":     {"payments", "search"},
		"internal.banned":    {"root"},
	}}
	for _, c := range []struct {
		login, team string
		ok          bool
	}{
		{"alice", "payments", true},
		{"al", "search", true},
		{"deploy", "search", true},
		{"alice", "ads", false}, // not one of their teams
		{"root", "payments", false},
		{"bob", "payments", false},
	} {
		err := CheckLogin(id, get, "n", map[string]string{"team": c.team}, c.login)
		if (err == nil) != c.ok {
			t.Errorf("%s on team %s: err=%v, want ok=%v", c.login, c.team, err, c.ok)
		}
	}
	r, _ := get("self")
	if got := strings.Join(Logins([]Role{r}, id.Traits), ","); got != "al,alice,deploy,root" {
		t.Errorf("Logins = %s", got)
	}
	// Without traits, templates grant nothing, and a missing trait in a
	// label selector matches no node (never every node).
	bare := Identity{Roles: []string{"self"}}
	if CheckLogin(bare, get, "n", map[string]string{"team": "payments"}, "deploy") == nil {
		t.Error("a template without its trait matched")
	}
	// A trait value cannot smuggle in a wildcard or an expression.
	sneaky := Identity{Roles: []string{"self"}, Traits: map[string][]string{"internal.logins": {"*", "^.*$"}, "external.teams": {"*", "^.*$", "{{internal.x}}"}, "external.unix_user": {"al"}}}
	if CheckLogin(sneaky, get, "n", map[string]string{"team": "payments"}, "anyone") == nil {
		t.Error("a login trait value widened a rule")
	}
	if CheckLogin(sneaky, get, "n", map[string]string{"team": "secret-ops"}, "al") == nil {
		t.Error("a label trait value widened a rule")
	}
	if _, err := ParseRoles([]byte("name: x\ndeny: {logins: ['^root$']}\n")); err == nil {
		t.Error("a login written as an expression accepted (logins are exact)")
	}
	if _, err := ParseRoles([]byte("name: x\nallow: {logins: ['{{secret.x}}']}\n")); err == nil {
		t.Error("unknown template namespace accepted")
	}
}

func TestPermissions(t *testing.T) {
	get := mustRoles(t, `
kind: role
name: base
allow:
  logins: [u]
  node_labels: {"*": "*"}
---
kind: role
name: locked
allow:
  logins: [u]
  node_labels: {"*": "*"}
  permissions: []
---
kind: role
name: agent
allow:
  logins: [u]
  node_labels: {env: dev}
  permissions: [agent_forwarding]
---
kind: role
name: nosftp-prod
deny:
  node_labels: {env: prod}
  permissions: [sftp]
---
kind: role
name: mfa
require_session_mfa: true
`)
	dev, prod := map[string]string{"env": "dev"}, map[string]string{"env": "prod"}
	cases := []struct {
		roles  []string
		labels map[string]string
		want   SessionPolicy
	}{
		{[]string{"base"}, dev, SessionPolicy{PortForwarding: true, SFTP: true}},
		{[]string{"locked"}, dev, SessionPolicy{}},
		{[]string{"locked", "agent"}, dev, SessionPolicy{AgentForwarding: true}},
		{[]string{"locked", "agent"}, prod, SessionPolicy{}}, // agent's allow does not match prod
		{[]string{"base", "nosftp-prod"}, prod, SessionPolicy{PortForwarding: true}},
		{[]string{"base", "nosftp-prod"}, dev, SessionPolicy{PortForwarding: true, SFTP: true}},
		{[]string{"base", "mfa"}, dev, SessionPolicy{PortForwarding: true, SFTP: true, RequireMFA: true}},
	}
	for _, c := range cases {
		if got := Policy(Identity{Roles: c.roles}, get, c.labels); got != c.want {
			t.Errorf("%v on %v: %+v, want %+v", c.roles, c.labels, got, c.want)
		}
	}
	// nil and empty permissions survive the JSON of raft and watch streams.
	for _, name := range []string{"base", "locked"} {
		r, _ := get(name)
		b, _ := json.Marshal(r)
		var back Role
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if (back.Allow.Permissions == nil) != (r.Allow.Permissions == nil) {
			t.Errorf("%s: permissions %v became %v through JSON (%s)", name, r.Allow.Permissions, back.Allow.Permissions, b)
		}
	}
	if _, err := ParseRoles([]byte("name: x\nallow: {permissions: [x11]}\n")); err == nil {
		t.Error("unknown permission accepted")
	}
}

func TestCheckRequest(t *testing.T) {
	get := mustRoles(t, `
kind: role
name: dev
allow:
  request: {roles: [prod-access, "^db-.*$"], max_duration: 4h}
deny:
  request: {roles: [db-admin]}
---
kind: role
name: oncall
allow:
  request: {roles: [prod-access]}
`)
	id := Identity{Roles: []string{"dev"}}
	if d, err := CheckRequest(id, get, "prod-access"); err != nil || d != 4*time.Hour {
		t.Errorf("prod-access: %v %v", d, err)
	}
	if _, err := CheckRequest(id, get, "db-read"); err != nil {
		t.Errorf("db-read: %v", err)
	}
	if _, err := CheckRequest(id, get, "db-admin"); err == nil || !strings.Contains(err.Error(), "denies") {
		t.Errorf("db-admin: %v", err)
	}
	if _, err := CheckRequest(id, get, "root"); err == nil {
		t.Error("root requestable")
	}
	if d, err := CheckRequest(Identity{Roles: []string{"oncall"}}, get, "prod-access"); err != nil || d != DefaultRequestDuration {
		t.Errorf("oncall: %v %v", d, err)
	}
}

func TestSSHExtensions(t *testing.T) {
	id := Identity{Kind: KindUser, Name: "alice", Cluster: "prod", Roles: []string{"dev", "prod-access"}, Logins: []string{"ubuntu"},
		Traits: map[string][]string{"external.logins": {"al"}}, Requests: []string{"r1"}, MFA: &MFABinding{ID: "s1", Node: "n1", Login: "ubuntu"}}
	ext := id.SSHExtensions()
	if ext[ExtRequests] != "r1" || !strings.Contains(ext[ExtTraits], `"al"`) || !strings.Contains(ext[ExtMFA], `"n1"`) {
		t.Fatalf("extensions: %v", ext)
	}
}
