package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// fakeAPI is an in-memory auth API for jgctl apply. Like the auth server,
// it keeps objects as JSON (so nil and empty lists behave as they do over
// the wire), refuses users with unknown roles and tokens whose secret
// exists, and records every write.
type fakeAPI struct {
	now    time.Time
	roles  map[string][]byte // name -> JSON of identity.Role
	users  map[string][]byte // name -> JSON of state.User
	tokens map[string]authapi.TokenInfo
	writes []string
	// failAt makes the write with this number (1-based) fail; 0 never.
	failAt int
	nextID int
}

var _ applyAPI = (*fakeAPI)(nil)

func newFakeAPI(now time.Time) *fakeAPI {
	return &fakeAPI{now: now, roles: map[string][]byte{}, users: map[string][]byte{}, tokens: map[string]authapi.TokenInfo{}}
}

func (f *fakeAPI) write(what string) error {
	f.writes = append(f.writes, what)
	if len(f.writes) == f.failAt {
		return &authapi.APIError{Code: http.StatusServiceUnavailable, Message: "no raft leader"}
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (f *fakeAPI) Users(context.Context) ([]state.User, error) {
	var out []state.User
	for _, n := range sortedKeys(f.users) {
		var u state.User
		if err := json.Unmarshal(f.users[n], &u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

func (f *fakeAPI) UpsertUser(_ context.Context, req authapi.UpsertUserRequest) error {
	if err := f.write("upsert user " + req.Name); err != nil {
		return err
	}
	for _, r := range req.Roles {
		if _, ok := f.roles[r]; !ok {
			return &authapi.APIError{Code: http.StatusBadRequest, Message: "role " + r + " does not exist"}
		}
	}
	u := state.User{Name: req.Name, Roles: req.Roles, Traits: req.Traits, Origin: req.Origin, Created: f.now}
	f.users[req.Name] = mustJSON(u)
	return nil
}

func (f *fakeAPI) DeleteUser(_ context.Context, name string) error {
	if err := f.write("delete user " + name); err != nil {
		return err
	}
	if _, ok := f.users[name]; !ok {
		return &authapi.APIError{Code: http.StatusNotFound, Message: "user " + name + ": not found"}
	}
	delete(f.users, name)
	return nil
}

func (f *fakeAPI) Roles(context.Context) ([]identity.Role, error) {
	var out []identity.Role
	for _, n := range sortedKeys(f.roles) {
		var r identity.Role
		if err := json.Unmarshal(f.roles[n], &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (f *fakeAPI) ApplyRoles(_ context.Context, roles []identity.Role) error {
	for _, r := range roles {
		if err := f.write("apply role " + r.Name); err != nil {
			return err
		}
		if err := r.Check(); err != nil {
			return &authapi.APIError{Code: http.StatusBadRequest, Message: err.Error()}
		}
		f.roles[r.Name] = mustJSON(r)
	}
	return nil
}

func (f *fakeAPI) DeleteRole(_ context.Context, name string) error {
	if err := f.write("delete role " + name); err != nil {
		return err
	}
	delete(f.roles, name)
	return nil
}

func (f *fakeAPI) Tokens(context.Context) ([]authapi.TokenInfo, error) {
	var out []authapi.TokenInfo
	for _, id := range sortedKeys(f.tokens) {
		out = append(out, f.tokens[id])
	}
	return out, nil
}

func (f *fakeAPI) CreateToken(_ context.Context, req authapi.CreateTokenRequest) (*authapi.CreateTokenResponse, error) {
	if err := f.write(fmt.Sprintf("create token %s/%s", req.Kind, req.Name)); err != nil {
		return nil, err
	}
	secret := req.Secret
	if secret == "" {
		f.nextID++
		secret = fmt.Sprintf("generated-secret-%026d", f.nextID)
	}
	id := authapi.HashToken(secret)[:12]
	if _, ok := f.tokens[id]; ok {
		return nil, &authapi.APIError{Code: http.StatusConflict, Message: "a token with this secret exists already"}
	}
	t := authapi.TokenInfo{ID: id, Kind: req.Kind, Name: req.Name, Labels: req.Labels, Expires: f.now.Add(time.Duration(req.TTL)), Created: f.now, Origin: req.Origin}
	f.tokens[id] = t
	return &authapi.CreateTokenResponse{Token: secret, ID: id, Expires: t.Expires, CAPin: "sha256:pin"}, nil
}

func (f *fakeAPI) DeleteToken(_ context.Context, id string) error {
	if err := f.write("delete token " + id); err != nil {
		return err
	}
	delete(f.tokens, id)
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// writeTree writes files (path -> content) under a new temporary directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func noEnv(string) (string, bool) { return "", false }

func envOf(kv ...string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == k {
				return kv[i+1], true
			}
		}
		return "", false
	}
}

var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// runIn loads dir and applies it to api; it returns the output.
func runIn(t *testing.T, api *fakeAPI, dir string, env func(string) (string, bool), opt applyOptions) (string, bool, error) {
	t.Helper()
	want, err := loadDir([]string{dir}, env)
	if err != nil {
		return "", false, err
	}
	opt.Now = func() time.Time { return api.now }
	var out bytes.Buffer
	changed, err := runApply(context.Background(), api, want, opt, &out)
	return out.String(), changed, err
}

func TestParseDocsErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // parts of the error
	}{
		{"unknown kind", "kind: group\nname: x\n", []string{"f.yaml document 1", `unknown kind "group"`}},
		{"no kind", "name: x\n", []string{"f.yaml document 1", "no kind"}},
		{"not a mapping", "- a\n- b\n", []string{"document 1", "want a mapping"}},
		{"syntax", "kind: role\nname: [x\n", []string{"document 1"}},
		{"unknown role field", "kind: role\nname: dev\nallow:\n  logins: [a]\nmax_ttl: 8h\n", []string{"document 1", `line 5: unknown field "max_ttl"`, "max_session_ttl"}},
		{"unknown rules field", "kind: role\nname: dev\nallow:\n  login: [a]\n", []string{`unknown field "login"`, "logins, node_labels"}},
		{"unknown user field", "kind: user\nname: alice\nrole: [dev]\n", []string{`unknown field "role"`, "kind, name, roles, traits"}},
		{"second document", "kind: role\nname: a\n---\nkind: role\nname: b\nallow:\n  logins: ['a b']\n", []string{"f.yaml document 2", "role b: allow.logins", "not a valid login"}},
		{"role check as ParseRoles", "kind: role\nname: dev\nallow:\n  permissions: [shell]\n", []string{`role dev: allow.permissions: unknown permission "shell"`}},
		{"role template", "kind: role\nname: dev\nallow:\n  logins: ['{{internal}}']\n", []string{"not a template"}},
		{"role duration", "kind: role\nname: dev\nmax_session_ttl: forever\n", []string{"is not a duration"}},
		{"bad user name", "kind: user\nname: -x\n", []string{"user: name"}},
		{"bad trait", "kind: user\nname: a\ntraits:\n  'bad name': [x]\n", []string{"user a: traits", "bad name"}},
		{"literal secret", "kind: token\ntype: node\nname: web-1\nsecret: 0123456789abcdef0123456789abcdef\n", []string{"token node/web-1", "literal secret must never be in git", "secret_env"}},
		{"empty literal secret", "kind: token\ntype: node\nname: web-1\nsecret:\n", []string{"literal secret"}},
		{"token without name", "kind: token\ntype: node\n", []string{"name is required"}},
		{"token without type", "kind: token\nname: web-1\n", []string{"type is required"}},
		{"auth token", "kind: token\ntype: auth\nname: auth-2\n", []string{"type auth is not allowed", "jgctl auth add"}},
		{"token ttl", "kind: token\ntype: node\nname: web-1\nttl: 200h\n", []string{"ttl 200h0m0s", "at most 168h"}},
		{"two secret sources", "kind: token\ntype: proxy\nname: p1\nsecret_env: A\nsecret_file: b\n", []string{"not both"}},
		{"unknown token field", "kind: token\ntype: node\nname: n\ntoken: x\n", []string{`unknown field "token"`}},
		{"every error", "kind: x\n---\nkind: y\n", []string{"document 1", "document 2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errs := parseDocs("f.yaml", []byte(c.yaml))
			if len(errs) == 0 {
				t.Fatalf("no error, want %q", c.want)
			}
			msg := filesError(errs).Error()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestParseDocs(t *testing.T) {
	doc := `# an empty first document
---
---
kind: role
name: dev
allow:
  logins: ["{{internal.logins}}"]
  node_labels: {env: dev}
  permissions: []
origin: someone-else
---
kind: user
name: alice
roles: [dev]
traits:
  logins: alice
  teams: []
---
kind: token
type: proxy
name: proxy-eu-1
labels: {region: eu}
---
`
	got, errs := parseDocs("x.yaml", []byte(doc))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(got.roles) != 1 || len(got.users) != 1 || len(got.tokens) != 1 {
		t.Fatalf("got %d roles, %d users, %d tokens; want 1 of each", len(got.roles), len(got.users), len(got.tokens))
	}
	r := got.roles[0]
	if r.role.Origin != "" || r.role.Allow.Permissions == nil || r.src.Doc != 2 {
		t.Errorf("role %+v from %s: want origin dropped, empty (not nil) permissions, document 2", r.role, r.src)
	}
	u := got.users[0]
	if !slices.Equal(u.traits["logins"], []string{"alice"}) || len(u.traits) != 1 {
		t.Errorf("traits %v: want logins [alice] and no empty teams", u.traits)
	}
	tok := got.tokens[0]
	if tok.key() != "proxy/proxy-eu-1" || tok.ttl != 24*time.Hour || tok.labels["region"] != "eu" {
		t.Errorf("token %+v: want proxy/proxy-eu-1, 24h by default, label region=eu", tok)
	}
}

func TestLoadDirErrors(t *testing.T) {
	secret := strings.Repeat("s", 40)
	cases := []struct {
		name  string
		files map[string]string
		env   func(string) (string, bool)
		want  []string
	}{
		{"duplicate role", map[string]string{
			"roles/a.yaml": "kind: role\nname: dev\n",
			"roles/b.yaml": "kind: role\nname: x\n---\nkind: role\nname: dev\n",
		}, noEnv, []string{"roles/b.yaml document 2: role dev is also defined in", "roles/a.yaml document 1"}},
		{"duplicate token", map[string]string{
			"t.yaml": "kind: token\ntype: node\nname: n\n---\nkind: token\ntype: node\nname: n\n",
		}, noEnv, []string{"t.yaml document 2: token node/n is also defined in", "t.yaml document 1"}},
		{"secret env unset", map[string]string{
			"t.yaml": "kind: token\ntype: node\nname: n\nsecret_env: JG_NOPE\n",
		}, noEnv, []string{"t.yaml document 1: token node/n: JG_NOPE (secret_env) is not set"}},
		{"secret too short", map[string]string{
			"t.yaml": "kind: token\ntype: node\nname: n\nsecret_env: S\n",
		}, envOf("S", "short"), []string{"environment variable S must be 32 to 256 characters", "openssl rand"}},
		{"secret file missing", map[string]string{
			"t.yaml": "kind: token\ntype: node\nname: n\nsecret_file: nope.txt\n",
		}, noEnv, []string{"secret_file", "nope.txt", "relative to the YAML file"}},
		{"shared secret", map[string]string{
			"t.yaml": "kind: token\ntype: node\nname: a\nsecret_env: S\n---\nkind: token\ntype: node\nname: b\nsecret_env: S\n",
		}, envOf("S", secret), []string{"token node/b has the same secret as token node/a"}},
		{"empty", map[string]string{"README.md": "# nothing\n", ".hidden/x.yaml": "kind: role\nname: x\n"}, noEnv, []string{"no documents", "--prune"}},
		{"errors from several files", map[string]string{
			"a.yaml": "kind: nope\n",
			"b.yml":  "kind: user\nname: b\nfoo: 1\n",
		}, noEnv, []string{"2 errors", "a.yaml document 1", "b.yml document 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeTree(t, c.files)
			_, err := loadDir([]string{dir}, c.env)
			if err == nil {
				t.Fatalf("no error, want %q", c.want)
			}
			msg := strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if !strings.Contains(msg, "nothing was changed") {
				t.Errorf("error %q does not say that nothing was changed", msg)
			}
		})
	}
}

func TestLoadDirFiles(t *testing.T) {
	secret := strings.Repeat("f", 64)
	dir := writeTree(t, map[string]string{
		"roles/dev.yaml":         "kind: role\nname: dev\n",
		"roles/ops.yml":          "kind: role\nname: ops\n",
		"roles/notes.txt":        "kind: nonsense\n",
		".git/config.yaml":       "kind: nonsense\n",
		"roles/.draft.yaml":      "kind: nonsense\n",
		"tokens/n.yaml":          "kind: token\ntype: node\nname: n1\nsecret_file: ../secrets/n1\n",
		"secrets/n1":             secret + "\n",
		"users/alice/alice.yaml": "kind: user\nname: alice\nroles: [dev]\n",
	})
	want, err := loadDir([]string{dir, filepath.Join(dir, "roles", "dev.yaml")}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range want.roles {
		names = append(names, r.role.Name)
	}
	if !slices.Equal(names, []string{"dev", "ops"}) {
		t.Errorf("roles %v: want [dev ops] (.yml read, hidden and other files skipped, a file given twice read once)", names)
	}
	if len(want.users) != 1 || len(want.tokens) != 1 || want.tokens[0].secret != secret {
		t.Errorf("users %v, tokens %+v: want alice and n1 with the trimmed secret from the file", want.users, want.tokens)
	}
}

func TestPlanDiff(t *testing.T) {
	api := newFakeAPI(testNow)
	ctx := context.Background()
	_ = api.ApplyRoles(ctx, []identity.Role{
		{Name: "dev", Allow: identity.Rules{Logins: []string{"ubuntu"}, NodeLabels: identity.Labels{"env": {"dev"}}}, Origin: state.OriginApply},
		{Name: "ops", Allow: identity.Rules{Logins: []string{"ops"}}, Origin: state.OriginApply},
		{Name: "legacy", Origin: state.OriginApply},
	})
	_ = api.UpsertUser(ctx, authapi.UpsertUserRequest{Name: "alice", Roles: []string{"dev"}, Traits: map[string][]string{"logins": {"alice"}}, Origin: state.OriginApply})
	_ = api.UpsertUser(ctx, authapi.UpsertUserRequest{Name: "bob", Roles: []string{"dev"}, Origin: state.OriginApply})
	_ = api.UpsertUser(ctx, authapi.UpsertUserRequest{Name: "dave", Roles: []string{"ops"}, Origin: state.OriginApply})
	_ = api.UpsertUser(ctx, authapi.UpsertUserRequest{Name: "root-admin", Roles: []string{"legacy"}})
	dir := writeTree(t, map[string]string{
		"roles.yaml": `kind: role
name: dev
allow:
  logins: [ubuntu, deploy]
  node_labels: {env: dev}
require_session_mfa: true
---
kind: role
name: ops
allow:
  logins: [ops]
---
kind: role
name: prod-access
allow:
  logins: [ubuntu]
`,
		"users.yaml": `kind: user
name: alice
roles: [oncall, dev]
traits: {logins: [alice]}
---
kind: user
name: dave
roles: [ops]
`,
		"oncall.yaml": "kind: role\nname: oncall\n",
	})
	api.writes = nil
	out, changed, err := runIn(t, api, dir, noEnv, applyOptions{Prune: true, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	want := `+ role oncall
+ role prod-access
~ role dev
    allow.logins: [ubuntu] -> [ubuntu deploy]
    require_session_mfa: false -> true
~ user alice
    roles: [dev] -> [oncall dev]
- user bob (pruned)
- role legacy (pruned)
    still held by root-admin (not managed by jgctl apply): the role will grant them nothing
= 2 unchanged
  (1 objects not created by jgctl apply left alone)
Dry run: nothing was changed.
`
	if out != want {
		t.Errorf("plan:\n%s\nwant:\n%s", out, want)
	}
	if !changed || len(api.writes) != 0 {
		t.Errorf("changed %v, writes %v: want a change and no writes in a dry run", changed, api.writes)
	}
}

func TestApplyTwiceIsNoop(t *testing.T) {
	api := newFakeAPI(testNow)
	dir := writeTree(t, map[string]string{
		"roles.yaml": `kind: role
name: dev
allow:
  logins: ["{{internal.logins}}"]
  node_labels: {env: [dev, staging], host: '^web-[0-9]+$'}
  permissions: []
  request: {roles: [prod], max_duration: 4h}
deny:
  logins: [root]
max_session_ttl: 8h
---
kind: role
name: prod
allow:
  logins: []
deny:
  permissions: [agent_forwarding]
require_session_mfa: true
review_sessions: true
`,
		"users.yaml": "kind: user\nname: alice\nroles: [prod, dev]\ntraits: {logins: [b, a], teams: []}\n",
		"tokens.yaml": "kind: token\ntype: node\nname: web-1\nlabels: {env: dev}\n---\n" +
			"kind: token\ntype: proxy\nname: p1\nsecret_env: P1\n",
	})
	env := envOf("P1", strings.Repeat("p", 32))
	out, changed, err := runIn(t, api, dir, env, applyOptions{Proxy: "proxy.example.com:3080"})
	if err != nil {
		t.Fatal(err)
	}
	if !changed || len(api.writes) != 5 {
		t.Fatalf("first apply: changed %v, writes %v: want 5 writes", changed, api.writes)
	}
	for _, w := range []string{"+ token node/web-1", "--node-name=web-1", "--proxy=proxy.example.com:3080", "--token=generated-secret-", "secret is the one from $P1", "Applied 5 changes."} {
		if !strings.Contains(out, w) {
			t.Errorf("output does not contain %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, strings.Repeat("p", 32)) {
		t.Errorf("output shows the secret from the environment:\n%s", out)
	}
	for _, r := range must(api.Roles(context.Background())) {
		if r.Origin != state.OriginApply {
			t.Errorf("role %s origin %q, want %q", r.Name, r.Origin, state.OriginApply)
		}
	}
	api.writes = nil
	out, changed, err = runIn(t, api, dir, env, applyOptions{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	if changed || len(api.writes) != 0 || out != "= 5 unchanged\n" {
		t.Errorf("second apply: changed %v, writes %v, output %q: want no change", changed, api.writes, out)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	api := newFakeAPI(testNow)
	_ = api.ApplyRoles(ctx, []identity.Role{
		{Name: "kept", Origin: state.OriginApply},
		{Name: "gone", Origin: state.OriginApply},
		{Name: "by-hand"},
		{Name: "other-tool", Origin: "terraform"},
	})
	for _, u := range []authapi.UpsertUserRequest{
		{Name: "kept", Roles: []string{"kept"}, Origin: state.OriginApply},
		{Name: "gone", Roles: []string{"gone"}, Origin: state.OriginApply},
		{Name: "by-hand", Roles: []string{"by-hand"}},
	} {
		_ = api.UpsertUser(ctx, u)
	}
	tok := func(name, origin string, used bool, expires time.Duration) string {
		r := must(api.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindNode, Name: name, TTL: identity.Duration(time.Hour), Origin: origin}))
		t := api.tokens[r.ID]
		t.Expires = testNow.Add(expires)
		if used {
			t.UsedBy = name
		}
		api.tokens[r.ID] = t
		return r.ID
	}
	goneUnused := tok("gone-unused", state.OriginApply, false, time.Hour)
	goneExpired := tok("gone-expired", state.OriginApply, false, -time.Hour)
	tok("gone-used", state.OriginApply, true, -time.Hour)
	tok("by-hand", "", false, time.Hour)
	tok("kept", state.OriginApply, false, time.Hour)
	dir := writeTree(t, map[string]string{"a.yaml": `kind: role
name: kept
---
kind: user
name: kept
roles: [kept]
---
kind: token
type: node
name: kept
`})

	api.writes = nil
	out, _, err := runIn(t, api, dir, noEnv, applyOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "= 3 unchanged\n  (4 objects created by jgctl apply are no longer in the files: --prune deletes them)\n"; out != want {
		t.Errorf("without --prune:\n%s\nwant:\n%s", out, want)
	}

	out, _, err = runIn(t, api, dir, noEnv, applyOptions{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	wantWrites := []string{"delete user gone", "delete token " + goneExpired, "delete token " + goneUnused, "delete role gone"}
	if !slices.Equal(api.writes, wantWrites) {
		t.Errorf("writes %v\nwant %v", api.writes, wantWrites)
	}
	if !strings.Contains(out, "(4 objects not created by jgctl apply left alone)") {
		t.Errorf("output does not count the 4 objects left alone (2 roles, 1 user, 1 token):\n%s", out)
	}
	roles := must(api.Roles(ctx))
	users := must(api.Users(ctx))
	toks := must(api.Tokens(ctx))
	if len(roles) != 3 || len(users) != 2 || len(toks) != 3 {
		t.Errorf("left %d roles, %d users, %d tokens: want 3 (kept, by-hand, other-tool), 2 (kept, by-hand), 3 (kept, by-hand, gone-used)", len(roles), len(users), len(toks))
	}
}

func TestPlanRefuses(t *testing.T) {
	ctx := context.Background()
	secret := strings.Repeat("x", 48)
	cases := []struct {
		name  string
		setup func(api *fakeAPI)
		files map[string]string
		prune bool
		want  string
	}{
		{"missing role", nil,
			map[string]string{"u.yaml": "kind: user\nname: alice\nroles: [ghost]\n"}, false,
			"u.yaml document 1: user alice: role ghost is neither in the files nor in the cluster"},
		{"role pruned under the user", func(api *fakeAPI) {
			_ = api.ApplyRoles(ctx, []identity.Role{{Name: "old", Origin: state.OriginApply}})
		}, map[string]string{"u.yaml": "kind: user\nname: alice\nroles: [old]\n"}, true,
			"u.yaml document 1: user alice: role old would be deleted by --prune"},
		{"secret of a hand-made token", func(api *fakeAPI) {
			_ = must(api.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindNode, Name: "n", Secret: secret, TTL: identity.Duration(time.Hour)}))
		}, map[string]string{"t.yaml": "kind: token\ntype: node\nname: n\nsecret_env: S\n"}, false,
			"its secret is already the secret of token " + authapi.HashToken(secret)[:12]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			api := newFakeAPI(testNow)
			if c.setup != nil {
				c.setup(api)
			}
			api.writes = nil
			_, _, err := runIn(t, api, writeTree(t, c.files), envOf("S", secret), applyOptions{Prune: c.prune})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if len(api.writes) != 0 {
				t.Errorf("writes %v despite the error", api.writes)
			}
		})
	}
	t.Run("role in the cluster only", func(t *testing.T) {
		api := newFakeAPI(testNow)
		_ = api.ApplyRoles(ctx, []identity.Role{{Name: "by-hand"}})
		_, _, err := runIn(t, api, writeTree(t, map[string]string{"u.yaml": "kind: user\nname: alice\nroles: [by-hand]\n"}), noEnv, applyOptions{Prune: true})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestPermissionsNilVsEmpty(t *testing.T) {
	cases := []struct {
		name       string
		have, file string // allow.permissions in the cluster (JSON) and in the file (YAML)
		want       string // the diff line, "" for unchanged
	}{
		{"absent both", `null`, ``, ""},
		{"empty both", `[]`, `  permissions: []` + "\n", ""},
		{"absent to empty", `null`, `  permissions: []` + "\n", "allow.permissions: (unset: the defaults) -> []"},
		{"empty to absent", `[]`, ``, "allow.permissions: [] -> (unset: the defaults)"},
		{"list", `["sftp"]`, `  permissions: [sftp, port_forwarding]` + "\n", "allow.permissions: [sftp] -> [sftp port_forwarding]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			api := newFakeAPI(testNow)
			api.roles["r"] = []byte(`{"name":"r","allow":{"logins":["u"],"permissions":` + c.have + `},"deny":{"permissions":null},"origin":"jgctl-apply"}`)
			dir := writeTree(t, map[string]string{"r.yaml": "kind: role\nname: r\nallow:\n  logins: [u]\n" + c.file})
			out, changed, err := runIn(t, api, dir, noEnv, applyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if c.want == "" {
				if changed || len(api.writes) != 0 {
					t.Errorf("changed, writes %v, output:\n%s", api.writes, out)
				}
				return
			}
			if !strings.Contains(out, "~ role r\n    "+c.want+"\n") || !slices.Equal(api.writes, []string{"apply role r"}) {
				t.Errorf("writes %v, output:\n%s\nwant the line %q", api.writes, out, c.want)
			}
			// Applied, it is stable.
			api.writes = nil
			if _, changed, _ := runIn(t, api, dir, noEnv, applyOptions{}); changed {
				t.Errorf("second apply changed again")
			}
		})
	}
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	secret := strings.Repeat("a", 32)
	id := authapi.HashToken(secret)[:12]
	env := envOf("WEB1", secret)
	doc := "kind: token\ntype: node\nname: web-1\nlabels: {env: prod}\nsecret_env: WEB1\n"
	// existing creates a managed token for node web-1.
	existing := func(api *fakeAPI, secret string, labels map[string]string, expires time.Duration, used bool) string {
		r := must(api.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindNode, Name: "web-1", Secret: secret, Labels: labels, TTL: identity.Duration(time.Hour), Origin: state.OriginApply}))
		tk := api.tokens[r.ID]
		tk.Expires = testNow.Add(expires)
		if used {
			tk.UsedBy = "web-1"
		}
		api.tokens[r.ID] = tk
		return r.ID
	}
	cases := []struct {
		name       string
		setup      func(api *fakeAPI) (oldID string)
		doc        string
		wantOut    []string
		wantWrites func(oldID string) []string
	}{
		{"missing: created with the secret", func(*fakeAPI) string { return "" }, doc,
			[]string{"+ token node/web-1\n", "(id " + id + ")"},
			func(string) []string { return []string{"create token node/web-1"} }},
		{"same secret and labels: unchanged", func(api *fakeAPI) string {
			return existing(api, secret, map[string]string{"env": "prod"}, time.Hour, false)
		}, doc, []string{"= 1 unchanged"}, func(string) []string { return nil }},
		{"used and expired: still satisfied", func(api *fakeAPI) string {
			return existing(api, secret, map[string]string{"env": "prod"}, -time.Hour, true)
		}, doc, []string{"= 1 unchanged"}, func(string) []string { return nil }},
		{"secret changed: replaced", func(api *fakeAPI) string {
			return existing(api, strings.Repeat("b", 32), map[string]string{"env": "prod"}, time.Hour, false)
		}, doc, []string{"~ token node/web-1 (replace)\n", " -> " + id + " (the secret changed)"},
			func(old string) []string { return []string{"delete token " + old, "create token node/web-1"} }},
		{"labels changed: replaced", func(api *fakeAPI) string {
			return existing(api, secret, map[string]string{"env": "staging"}, time.Hour, false)
		}, doc, []string{"~ token node/web-1 (replace)\n    labels: {env=staging} -> {env=prod}\n"},
			func(old string) []string { return []string{"delete token " + old, "create token node/web-1"} }},
		{"labels changed on a generated token: replaced", func(api *fakeAPI) string {
			return existing(api, "", nil, time.Hour, false)
		}, "kind: token\ntype: node\nname: web-1\nlabels: {env: prod}\n", []string{"labels: {} -> {env=prod}", "--token=generated-secret-"},
			func(old string) []string { return []string{"delete token " + old, "create token node/web-1"} }},
		{"expired and unused: recreated", func(api *fakeAPI) string {
			return existing(api, secret, map[string]string{"env": "prod"}, -time.Minute, false)
		}, doc, []string{"+ token node/web-1\n    replaces expired unused token " + id},
			func(old string) []string { return []string{"delete token " + old, "create token node/web-1"} }},
		{"a hand-made token of the same name is not it", func(api *fakeAPI) string {
			_ = must(api.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindNode, Name: "web-1", TTL: identity.Duration(time.Hour)}))
			return ""
		}, doc, []string{"+ token node/web-1\n"}, func(string) []string { return []string{"create token node/web-1"} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			api := newFakeAPI(testNow)
			old := c.setup(api)
			api.writes = nil
			out, _, err := runIn(t, api, writeTree(t, map[string]string{"t.yaml": c.doc}), env, applyOptions{Prune: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range c.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
			if want := c.wantWrites(old); !slices.Equal(api.writes, want) {
				t.Errorf("writes %v, want %v", api.writes, want)
			}
			api.writes = nil
			if _, changed, err := runIn(t, api, writeTree(t, map[string]string{"t.yaml": c.doc}), env, applyOptions{Prune: true}); err != nil || changed {
				t.Errorf("second apply: changed %v, err %v, writes %v: want no change", changed, err, api.writes)
			}
		})
	}
}

func TestApplyStopsAndConverges(t *testing.T) {
	api := newFakeAPI(testNow)
	api.failAt = 3
	dir := writeTree(t, map[string]string{"a.yaml": `kind: role
name: a
---
kind: role
name: b
---
kind: user
name: u1
roles: [a]
---
kind: user
name: u2
roles: [b]
`})
	_, _, err := runIn(t, api, dir, noEnv, applyOptions{})
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"apply stopped at + user u1: no raft leader", "done (2):\n  + role a\n  + role b", "not done (2):\n  + user u1\n  + user u2", "run jgctl apply again"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	api.failAt = 0
	api.writes = nil
	out, _, err := runIn(t, api, dir, noEnv, applyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"upsert user u1", "upsert user u2"}; !slices.Equal(api.writes, want) {
		t.Errorf("re-run writes %v, want %v; output:\n%s", api.writes, want, out)
	}
}

func TestApplyJSON(t *testing.T) {
	api := newFakeAPI(testNow)
	dir := writeTree(t, map[string]string{"a.yaml": "kind: role\nname: a\n---\nkind: token\ntype: node\nname: n\n"})
	out, _, err := runIn(t, api, dir, noEnv, applyOptions{JSON: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Action, Kind, Name string
		Applied            bool
		Token              *authapi.CreateTokenResponse
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not a JSON list: %v\n%s", err, out)
	}
	if len(got) != 2 || got[0].Action != "create" || got[0].Kind != "role" || !got[0].Applied ||
		got[1].Name != "node/n" || got[1].Token == nil || got[1].Token.Token == "" {
		t.Errorf("JSON plan %+v: want the role and the token created, with the generated secret", got)
	}
}

// TestExamples checks that examples/gitops is valid and what it creates.
func TestExamples(t *testing.T) {
	env := envOf("JG_TOKEN_WEB_7", strings.Repeat("7", 64), "JG_TOKEN_DB_3", strings.Repeat("3", 64))
	want, err := loadDir([]string{"../../examples/gitops"}, env)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan(want, &clusterState{}, planOptions{Prune: true, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range p.Changes {
		got = append(got, c.String())
	}
	wantPlan := []string{
		"+ role auditor", "+ role dev", "+ role oncall", "+ role prod-access",
		"+ user alice", "+ user bob", "+ user carol",
		"+ token node/db-3", "+ token node/web-7",
	}
	if !slices.Equal(got, wantPlan) {
		t.Errorf("plan %q\nwant %q", got, wantPlan)
	}
	// The role files also work with jgctl roles apply, as docs/gitops.md says.
	files, _ := filepath.Glob("../../examples/gitops/roles/*.yaml")
	for _, f := range files {
		if _, err := identity.ParseRoles(must(os.ReadFile(f))); err != nil {
			t.Errorf("%s: identity.ParseRoles: %v", f, err)
		}
	}
	for _, r := range want.roles {
		if r.role.Name == "prod-access" && (!r.role.RequireSessionMFA || !slices.Contains(r.role.Deny.Permissions, identity.PermAgentForwarding)) {
			t.Errorf("prod-access %+v: want session MFA and agent forwarding denied", r.role)
		}
	}
}

func FuzzParseDocs(f *testing.F) {
	for _, s := range []string{
		"kind: role\nname: dev\nallow:\n  logins: ['{{internal.logins}}']\n  node_labels: {env: '^d.*$', team: '*'}\n  permissions: []\n  request: {roles: [prod], max_duration: 4h}\n",
		"kind: user\nname: alice\nroles: [dev]\ntraits: {logins: [a], teams: t}\n",
		"kind: token\ntype: node\nname: n\nlabels: {a: b}\nttl: 48h\nsecret_env: X\n",
		"kind: token\nsecret: x\n",
		"---\n---\nkind: role\n",
		"a: &a [*a]\n",
		"kind: [role]\n",
		"- 1\n",
		"kind: role\nname: x\n<<: {allow: {logins: [a]}}\n",
		"kind: user\nname: u\ntraits: {'': ['']}\n",
		"kind: token\ntype: node\nname: n\nttl: -1h\n",
		"\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, errs := parseDocs("fuzz.yaml", data)
		if d == nil {
			t.Fatal("nil result")
		}
		for _, r := range d.roles {
			if err := r.role.Check(); err != nil {
				t.Errorf("accepted role fails Check: %v", err)
			}
		}
		for _, e := range errs {
			if !strings.HasPrefix(e.Error(), "fuzz.yaml document ") {
				t.Errorf("error without its place: %v", e)
			}
		}
	})
}

// TestApplyCmd checks the command's wiring: -f is required and
// repeatable, and the files are checked before the cluster is contacted.
func TestApplyCmd(t *testing.T) {
	good := writeTree(t, map[string]string{"r.yaml": "kind: role\nname: dev\n"})
	bad := writeTree(t, map[string]string{"r.yaml": "kind: group\n"})
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no -f", nil, `required flag(s) "file" not set`},
		{"bad files, no cluster", []string{"-f", good, "-f", bad}, `unknown kind "group"`},
		{"good files, no cluster", []string{"-f", good, "--dry-run"}, "load admin identity"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := &globals{auth: "127.0.0.1:1", identityDir: filepath.Join(t.TempDir(), "missing")}
			cmd := applyCmd(g)
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(c.args)
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want %q", err, c.want)
			}
		})
	}
}
