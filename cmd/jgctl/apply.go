package main

// jgctl apply -f DIR: GitOps for users, roles and join tokens.
//
// The flow, each step finishing before the next begins:
//
//  1. loadDir reads every *.yaml and *.yml file under the paths given
//     (parseDocs for each), validates every document and resolves token
//     secrets from the environment or from files. Any error stops here,
//     before the cluster is even contacted.
//  2. fetchCluster reads the users, roles and tokens the cluster has.
//  3. plan compares the two and returns the changes in the order they are
//     safe to make: roles, users, tokens, then (with --prune) deletions of
//     users, tokens and roles that jgctl apply made and the files no longer
//     have. It also refuses a plan that would leave a user without a role
//     it names.
//  4. The plan is printed as a diff (or JSON), then applyPlan makes the
//     changes one API call at a time and stops at the first error, saying
//     what was done and what was not. Running apply again converges: it
//     only does what is still missing.
//
// Everything apply creates or updates carries Origin state.OriginApply,
// and --prune only ever deletes objects with that origin.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// applyAPI is the part of the auth API that jgctl apply reads and writes.
// It exists so that planning and applying can be tested against an
// in-memory fake. It is wider than the one or two methods this project's
// interfaces usually have because apply manages three kinds of objects,
// each with list, write and delete; splitting it would only make every
// caller take three arguments. *authapi.Client satisfies it as is.
type applyAPI interface {
	Users(ctx context.Context) ([]state.User, error)
	UpsertUser(ctx context.Context, req authapi.UpsertUserRequest) error
	DeleteUser(ctx context.Context, name string) error
	Roles(ctx context.Context) ([]identity.Role, error)
	ApplyRoles(ctx context.Context, roles []identity.Role) error
	DeleteRole(ctx context.Context, name string) error
	Tokens(ctx context.Context) ([]authapi.TokenInfo, error)
	CreateToken(ctx context.Context, req authapi.CreateTokenRequest) (*authapi.CreateTokenResponse, error)
	DeleteToken(ctx context.Context, id string) error
}

var _ applyAPI = (*authapi.Client)(nil)

const (
	// applyTokenTTL is how long a declared join token lives when its
	// document gives no ttl: long enough for a node to be set up the day
	// the change is merged.
	applyTokenTTL = 24 * time.Hour
	// maxApplyTokenTTL is the auth server's limit for join tokens.
	maxApplyTokenTTL = 7 * 24 * time.Hour
	// maxShownErrors bounds how many file errors are listed at once.
	maxShownErrors = 30
)

// applyCmd is `jgctl apply`.
//
// Exit status: 0 when the cluster already matched (or was made to match
// without --exit-code), 1 on any error (main prints it), and with
// --exit-code 2 when the plan had changes, whether they were applied or
// only shown with --dry-run. main maps every returned error to 1 and
// cannot be changed from here, so RunE calls os.Exit(2) itself, as its very
// last step: after the client is closed and all output is written
// (os.Stdout is unbuffered, so nothing is lost).
func applyCmd(g *globals) *cobra.Command {
	var (
		paths                   []string
		prune, dryRun, exitCode bool
		proxy                   string
	)
	cmd := &cobra.Command{
		Use:   "apply -f PATH [-f PATH...]",
		Short: "Make the cluster's users, roles and join tokens match YAML files (GitOps)",
		Long: `Make the cluster's users, roles and join tokens match YAML files kept in git.

PATH is a file or a directory, read recursively (*.yaml and *.yml; hidden
files and directories are skipped). Every document has kind: role, user or
token; see docs/gitops.md. All files are validated before anything is
changed, then the plan is printed as a diff and applied.

--prune also deletes users, roles and unused join tokens that jgctl apply
created and that the files no longer have. Objects made any other way are
never deleted.

Exit status: 0 when nothing had to change, 1 on an error, and with
--exit-code 2 when there were changes (applied, or shown with --dry-run:
use --dry-run --exit-code in CI to detect drift).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			want, err := loadDir(paths, os.LookupEnv)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			changed, err := runApply(cmd.Context(), c, want, applyOptions{
				Prune: prune, DryRun: dryRun, JSON: g.jsonOut,
				Proxy: proxy, Auth: g.auth, Now: time.Now,
			}, cmd.OutOrStdout())
			c.Close()
			if err != nil {
				return err
			}
			if exitCode && changed {
				os.Exit(2) // see the doc comment: the only way to say "changes" to CI
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&paths, "file", "f", nil, "a YAML file or a directory of them (repeatable)")
	f.BoolVar(&prune, "prune", false, "delete users, roles and unused tokens created by jgctl apply that the files no longer have")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	f.BoolVar(&exitCode, "exit-code", false, "exit with status 2 when there are changes (with --dry-run: drift detection)")
	f.StringVar(&proxy, "proxy", "PROXY:3080", "proxy address to put in the join commands printed for new tokens")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// --- the files -----------------------------------------------------------

// docSource is where a document came from: "roles/dev.yaml document 2".
type docSource struct {
	File string
	Doc  int
}

func (s docSource) String() string { return fmt.Sprintf("%s document %d", s.File, s.Doc) }

type desiredRole struct {
	src  docSource
	role identity.Role
}

type desiredUser struct {
	src    docSource
	name   string
	roles  []string
	traits map[string][]string // no key with an empty list
}

type desiredToken struct {
	src        docSource
	kind       identity.Kind // node or proxy
	name       string        // the only node or proxy name it joins as
	labels     map[string]string
	ttl        time.Duration
	secretEnv  string
	secretFile string
	// secret is set by loadDir from secretEnv or secretFile; "" lets the
	// auth server generate one.
	secret string
}

// key is a declared token's identity: its type and the name it is bound to.
func (t desiredToken) key() string { return string(t.kind) + "/" + t.name }

// desiredState is what the files declare.
type desiredState struct {
	roles  []desiredRole
	users  []desiredUser
	tokens []desiredToken
}

func (d *desiredState) add(o *desiredState) {
	d.roles = append(d.roles, o.roles...)
	d.users = append(d.users, o.users...)
	d.tokens = append(d.tokens, o.tokens...)
}

// roleDoc is a role document, decoded exactly as identity.ParseRoles does.
type roleDoc struct {
	Kind          string `yaml:"kind"`
	identity.Role `yaml:",inline"`
}

// userDoc is a user document.
type userDoc struct {
	Kind   string                         `yaml:"kind"`
	Name   string                         `yaml:"name"`
	Roles  []string                       `yaml:"roles"`
	Traits map[string]identity.StringList `yaml:"traits"`
}

// tokenDoc is a join token document.
type tokenDoc struct {
	Kind       string             `yaml:"kind"`
	Name       string             `yaml:"name"`
	Type       string             `yaml:"type"`
	Labels     map[string]string  `yaml:"labels"`
	TTL        *identity.Duration `yaml:"ttl"`
	SecretEnv  string             `yaml:"secret_env"`
	SecretFile string             `yaml:"secret_file"`
	// Secret is only read to refuse it with the reason.
	Secret yaml.Node `yaml:"secret"`
}

// knownFields lists the fields of a document type for "unknown field"
// errors; typ is the type name yaml.v3 reports.
func knownFields(typ string) string {
	switch typ {
	case "main.roleDoc":
		return "kind, name, allow, deny, max_session_ttl, require_session_mfa, review_sessions"
	case "main.userDoc":
		return "kind, name, roles, traits"
	case "main.tokenDoc":
		return "kind, name, type, labels, ttl, secret_env, secret_file"
	case "identity.Rules":
		return "logins, node_labels, permissions, request"
	case "identity.RequestRules":
		return "roles, max_duration"
	}
	return ""
}

var unknownFieldRE = regexp.MustCompile(`^(line \d+: )?field (.*) not found in type (\S+)$`)

// yamlMessage turns a yaml.v3 error into a message for people: without the
// "yaml: " prefix and with unknown fields explained.
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		if s := unknownFieldRE.FindStringSubmatch(m); s != nil {
			m = fmt.Sprintf("%sunknown field %q", s[1], s[2])
			if known := knownFields(s[3]); known != "" {
				m += " (known fields here: " + known + ")"
			}
		}
		msgs = append(msgs, m)
	}
	return strings.Join(msgs, "; ")
}

// parseDocs reads the YAML documents of one file. It never touches the
// file system or the environment: token secrets are resolved by loadDir.
// It returns every error found, each naming the file and document number.
func parseDocs(file string, data []byte) (*desiredState, []error) {
	// Two decoders walk the documents in step: the first reads each one
	// as a node to learn its kind, the second decodes the same document
	// into the type of that kind with unknown fields refused (Node.Decode
	// cannot refuse them). Both consume exactly one document per call,
	// even when decoding fails, so they stay in step; a syntax error ends
	// the file.
	kinds := yaml.NewDecoder(bytes.NewReader(data))
	typed := yaml.NewDecoder(bytes.NewReader(data))
	typed.KnownFields(true)
	out := &desiredState{}
	var errs []error
	for i := 1; ; i++ {
		src := docSource{File: file, Doc: i}
		var raw yaml.Node
		err := kinds.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s", src, yamlMessage(err)))
			break
		}
		skip := func() { _ = typed.Decode(new(yaml.Node)) }
		if len(raw.Content) == 0 || raw.Content[0].Kind == yaml.ScalarNode && raw.Content[0].ShortTag() == "!!null" {
			skip() // an empty document, as after a trailing ---
			continue
		}
		var head struct {
			Kind string `yaml:"kind"`
		}
		if raw.Content[0].Kind != yaml.MappingNode || raw.Decode(&head) != nil {
			skip()
			errs = append(errs, fmt.Errorf("%s: want a mapping with kind: role, user or token", src))
			continue
		}
		var err2 error
		switch head.Kind {
		case "role":
			var d roleDoc
			if err := typed.Decode(&d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s", src, yamlMessage(err)))
				continue
			}
			d.Role.Origin = "" // apply decides the origin
			if err := d.Role.Check(); err != nil {
				err2 = err
				break
			}
			out.roles = append(out.roles, desiredRole{src: src, role: d.Role})
		case "user":
			var d userDoc
			if err := typed.Decode(&d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s", src, yamlMessage(err)))
				continue
			}
			var u desiredUser
			if u, err2 = checkUserDoc(d); err2 == nil {
				u.src = src
				out.users = append(out.users, u)
			}
		case "token":
			var d tokenDoc
			if err := typed.Decode(&d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s", src, yamlMessage(err)))
				continue
			}
			var t desiredToken
			if t, err2 = checkTokenDoc(d); err2 == nil {
				t.src = src
				out.tokens = append(out.tokens, t)
			}
		case "":
			skip()
			err2 = errors.New("no kind: start the document with kind: role, user or token")
		default:
			skip()
			err2 = fmt.Errorf("unknown kind %q: want role, user or token", head.Kind)
		}
		if err2 != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src, err2))
		}
	}
	return out, errs
}

func checkUserDoc(d userDoc) (desiredUser, error) {
	if err := identity.CheckName(d.Name); err != nil {
		return desiredUser{}, fmt.Errorf("user: %w", err)
	}
	u := desiredUser{name: d.Name, roles: d.Roles, traits: map[string][]string{}}
	for _, r := range d.Roles {
		if err := identity.CheckName(r); err != nil {
			return desiredUser{}, fmt.Errorf("user %s: roles: %w", d.Name, err)
		}
	}
	for k, vs := range d.Traits {
		if len(vs) > 0 {
			u.traits[k] = []string(vs)
		}
	}
	if err := identity.CheckTraits(u.traits); err != nil {
		return desiredUser{}, fmt.Errorf("user %s: traits: %w", d.Name, err)
	}
	return u, nil
}

func checkTokenDoc(d tokenDoc) (desiredToken, error) {
	if d.Name == "" {
		return desiredToken{}, errors.New("token: name is required: the node or proxy name the token is bound to (it can join under no other)")
	}
	if err := identity.CheckName(d.Name); err != nil {
		return desiredToken{}, fmt.Errorf("token: %w", err)
	}
	t := desiredToken{name: d.Name, labels: d.Labels, ttl: applyTokenTTL, secretEnv: d.SecretEnv, secretFile: d.SecretFile}
	switch identity.Kind(d.Type) {
	case identity.KindNode, identity.KindProxy:
		t.kind = identity.Kind(d.Type)
	case identity.KindAuth:
		return desiredToken{}, fmt.Errorf("token %s: type auth is not allowed: auth server tokens come from jgctl auth add", d.Name)
	case "":
		return desiredToken{}, fmt.Errorf("token %s: type is required: node or proxy", d.Name)
	default:
		return desiredToken{}, fmt.Errorf("token %s: type %q: want node or proxy", d.Name, d.Type)
	}
	where := t.key()
	if d.Secret.Kind != 0 {
		return desiredToken{}, fmt.Errorf("token %s: a literal secret must never be in git (anyone who can read the repository, its forks or its history could join a %s): keep it in a secret store and use secret_env: VAR or secret_file: PATH", where, t.kind)
	}
	if d.SecretEnv != "" && d.SecretFile != "" {
		return desiredToken{}, fmt.Errorf("token %s: give secret_env or secret_file, not both", where)
	}
	if d.TTL != nil {
		t.ttl = time.Duration(*d.TTL)
	}
	if t.ttl <= 0 || t.ttl > maxApplyTokenTTL {
		return desiredToken{}, fmt.Errorf("token %s: ttl %s: want more than 0 and at most %s", where, t.ttl, maxApplyTokenTTL)
	}
	for k := range d.Labels {
		if k == "" {
			return desiredToken{}, fmt.Errorf("token %s: labels: a label needs a key", where)
		}
	}
	return t, nil
}

// loadDir reads the files and directories in paths, validates every
// document and resolves token secrets (lookupEnv is os.LookupEnv outside
// tests). It returns all the errors it finds at once, so that one run
// shows everything to fix.
func loadDir(paths []string, lookupEnv func(string) (string, bool)) (*desiredState, error) {
	var files []string
	seen := map[string]bool{}
	var errs []error
	for _, p := range paths {
		found, err := yamlFiles(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range found {
			abs, err := filepath.Abs(f)
			if err != nil {
				abs = f
			}
			if !seen[abs] {
				seen[abs] = true
				files = append(files, f)
			}
		}
	}
	want := &desiredState{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", f, err))
			continue
		}
		d, derrs := parseDocs(f, data)
		want.add(d)
		errs = append(errs, derrs...)
	}
	errs = append(errs, checkDuplicates(want)...)
	for i := range want.tokens {
		if err := resolveSecret(&want.tokens[i], lookupEnv); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, checkSharedSecrets(want)...)
	if len(errs) == 0 && len(want.roles)+len(want.users)+len(want.tokens) == 0 {
		errs = append(errs, fmt.Errorf("no documents in %s: expected *.yaml files with kind: role, user or token (an empty directory is refused so that --prune cannot delete everything by mistake)", strings.Join(paths, ", ")))
	}
	if len(errs) > 0 {
		return nil, filesError(errs)
	}
	return want, nil
}

// filesError joins errors found in the files under one line saying that
// nothing was changed.
func filesError(errs []error) error {
	lines := make([]string, 0, min(len(errs), maxShownErrors)+1)
	for i, e := range errs {
		if i == maxShownErrors {
			lines = append(lines, fmt.Sprintf("... and %d more", len(errs)-i))
			break
		}
		lines = append(lines, e.Error())
	}
	what := "an error"
	if len(errs) > 1 {
		what = fmt.Sprintf("%d errors", len(errs))
	}
	return fmt.Errorf("%s in the files, nothing was changed; fix and run again:\n  %s", what, strings.Join(lines, "\n  "))
}

// yamlFiles lists the YAML files of root: root itself if it is a file,
// else every *.yaml and *.yml below it, sorted, skipping hidden files and
// directories.
func yamlFiles(root string) ([]string, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("%w: -f takes a YAML file or a directory of them", err)
	}
	if !fi.IsDir() {
		return []string{root}, nil
	}
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", root, err)
	}
	sort.Strings(files)
	return files, nil
}

// checkDuplicates refuses two documents for the same object.
func checkDuplicates(d *desiredState) []error {
	var errs []error
	first := map[string]docSource{}
	check := func(what string, src docSource) {
		if prev, ok := first[what]; ok {
			errs = append(errs, fmt.Errorf("%s: %s is also defined in %s: keep one", src, what, prev))
			return
		}
		first[what] = src
	}
	for _, r := range d.roles {
		check("role "+r.role.Name, r.src)
	}
	for _, u := range d.users {
		check("user "+u.name, u.src)
	}
	for _, t := range d.tokens {
		check("token "+t.key(), t.src)
	}
	return errs
}

// resolveSecret reads a token's secret from the environment or a file
// (relative to the YAML file) and checks it as the auth server would.
func resolveSecret(t *desiredToken, lookupEnv func(string) (string, bool)) error {
	var from string
	switch {
	case t.secretEnv != "":
		from = "environment variable " + t.secretEnv
		v, ok := lookupEnv(t.secretEnv)
		if !ok || strings.TrimSpace(v) == "" {
			return fmt.Errorf("%s: token %s: %s (secret_env) is not set: export it from your secret store before running jgctl apply", t.src, t.key(), t.secretEnv)
		}
		t.secret = strings.TrimSpace(v)
	case t.secretFile != "":
		p := t.secretFile
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(t.src.File), p)
		}
		from = "file " + p
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("%s: token %s: secret_file: %w (the path is relative to the YAML file)", t.src, t.key(), err)
		}
		t.secret = strings.TrimSpace(string(b))
	default:
		return nil
	}
	if n := len(t.secret); n < 32 || n > 256 || strings.ContainsAny(t.secret, " \t\r\n") {
		return fmt.Errorf("%s: token %s: the secret from %s must be 32 to 256 characters without spaces (generate one with: openssl rand -hex 32)", t.src, t.key(), from)
	}
	return nil
}

// checkSharedSecrets refuses two tokens with the same secret: the auth
// server keeps tokens by the hash of their secret.
func checkSharedSecrets(d *desiredState) []error {
	var errs []error
	first := map[string]desiredToken{}
	for _, t := range d.tokens {
		if t.secret == "" {
			continue
		}
		if prev, ok := first[t.secret]; ok {
			errs = append(errs, fmt.Errorf("%s: token %s has the same secret as token %s (%s): give each token its own", t.src, t.key(), prev.key(), prev.src))
			continue
		}
		first[t.secret] = t
	}
	return errs
}

// --- the plan ------------------------------------------------------------

// clusterState is what the cluster has.
type clusterState struct {
	roles  []identity.Role
	users  []state.User
	tokens []authapi.TokenInfo
}

func fetchCluster(ctx context.Context, api applyAPI) (*clusterState, error) {
	var cur clusterState
	var err error
	if cur.roles, err = api.Roles(ctx); err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	if cur.users, err = api.Users(ctx); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	if cur.tokens, err = api.Tokens(ctx); err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return &cur, nil
}

// Actions of a planChange.
const (
	actCreate    = "create"
	actUpdate    = "update"
	actReplace   = "replace" // tokens: delete, then create
	actDelete    = "delete"
	actUnchanged = "unchanged"
)

// planChange is one object to create, update, replace or delete (or leave
// as it is). Its exported fields are the JSON form of the plan.
type planChange struct {
	Action  string   `json:"action"`
	Kind    string   `json:"kind"` // role, user, token
	Name    string   `json:"name"` // tokens: type/name
	Changes []string `json:"changes,omitempty"`
	// Applied is set once the change is made.
	Applied bool `json:"applied,omitempty"`
	// Token is the token created; Token.Token (the secret) only when the
	// auth server generated it.
	Token *authapi.CreateTokenResponse `json:"token,omitempty"`

	role      *identity.Role              // create, update
	user      *authapi.UpsertUserRequest  // create, update
	token     *authapi.CreateTokenRequest // create, replace
	secretSrc string                      // where a given secret came from
	deleteIDs []string                    // tokens to delete (first, for create and replace)
	partial   string                      // what was done of a change that failed half-way
}

func (c *planChange) String() string {
	sym := map[string]string{actCreate: "+", actUpdate: "~", actReplace: "~", actDelete: "-", actUnchanged: "="}[c.Action]
	s := sym + " " + c.Kind + " " + c.Name
	switch c.Action {
	case actReplace:
		s += " (replace)"
	case actDelete:
		s += " (pruned)"
	}
	return s
}

// phase orders changes so that each one only needs what was done before:
// roles before the users holding them, deletions of users before the
// roles they held.
func (c *planChange) phase() int {
	if c.Action == actUnchanged {
		return 6
	}
	if c.Action == actDelete {
		return map[string]int{"user": 3, "token": 4, "role": 5}[c.Kind]
	}
	return map[string]int{"role": 0, "user": 1, "token": 2}[c.Kind]
}

// planResult is the plan: changes in the order they are made, then the
// unchanged objects.
type planResult struct {
	Changes []planChange
	// Unmanaged counts objects that jgctl apply did not create and the
	// files do not name: never touched.
	Unmanaged int
	// Orphans counts objects jgctl apply created that the files no longer
	// have, kept because --prune was not given.
	Orphans int
}

// changed is the number of changes to make.
func (p *planResult) changed() int {
	n := 0
	for _, c := range p.Changes {
		if c.Action != actUnchanged {
			n++
		}
	}
	return n
}

type planOptions struct {
	Prune bool
	Now   time.Time // to tell expired tokens
}

// plan compares what the files want with what the cluster has. It is pure.
// It fails, naming the document, when a user names a role that exists
// nowhere or that the plan itself would delete, or when a token's secret
// belongs to a token it does not manage.
func plan(want *desiredState, have *clusterState, opt planOptions) (*planResult, error) {
	res := &planResult{}
	var errs []error
	add := func(c planChange) { res.Changes = append(res.Changes, c) }

	// Roles.
	haveRoles := map[string]identity.Role{}
	for _, r := range have.roles {
		haveRoles[r.Name] = r
	}
	wantRoles := map[string]bool{}
	for _, dr := range want.roles {
		r := dr.role
		r.Origin = state.OriginApply
		wantRoles[r.Name] = true
		cur, ok := haveRoles[r.Name]
		if !ok {
			add(planChange{Action: actCreate, Kind: "role", Name: r.Name, role: &r})
			continue
		}
		lines := roleDiff(cur, r)
		if cur.Origin != state.OriginApply {
			lines = append(lines, fmt.Sprintf("origin: %s -> %s", orNone(cur.Origin), state.OriginApply))
		}
		if len(lines) == 0 {
			add(planChange{Action: actUnchanged, Kind: "role", Name: r.Name})
			continue
		}
		add(planChange{Action: actUpdate, Kind: "role", Name: r.Name, Changes: lines, role: &r})
	}
	pruneRoles := map[string]bool{}
	for _, r := range have.roles {
		switch {
		case wantRoles[r.Name]:
		case r.Origin != state.OriginApply:
			res.Unmanaged++
		case opt.Prune:
			pruneRoles[r.Name] = true
		default:
			res.Orphans++
		}
	}

	// Users.
	haveUsers := map[string]state.User{}
	for _, u := range have.users {
		haveUsers[u.Name] = u
	}
	wantUsers := map[string]bool{}
	for _, du := range want.users {
		wantUsers[du.name] = true
		for _, r := range du.roles {
			switch {
			case wantRoles[r]:
			case pruneRoles[r]:
				errs = append(errs, fmt.Errorf("%s: user %s: role %s would be deleted by --prune (jgctl apply created it and the files no longer have it): add the role back or take it from the user", du.src, du.name, r))
			case haveRoles[r].Name == "":
				errs = append(errs, fmt.Errorf("%s: user %s: role %s is neither in the files nor in the cluster: add a role document for it or fix the name", du.src, du.name, r))
			}
		}
		req := &authapi.UpsertUserRequest{Name: du.name, Roles: du.roles, Traits: du.traits, Origin: state.OriginApply}
		cur, ok := haveUsers[du.name]
		if !ok {
			add(planChange{Action: actCreate, Kind: "user", Name: du.name, user: req})
			continue
		}
		lines := userDiff(cur, du)
		if len(lines) == 0 {
			add(planChange{Action: actUnchanged, Kind: "user", Name: du.name})
			continue
		}
		add(planChange{Action: actUpdate, Kind: "user", Name: du.name, Changes: lines, user: req})
	}
	for _, u := range have.users {
		switch {
		case wantUsers[u.Name]:
		case u.Origin != state.OriginApply:
			res.Unmanaged++
		case opt.Prune:
			add(planChange{Action: actDelete, Kind: "user", Name: u.Name})
		default:
			res.Orphans++
		}
	}

	// Tokens.
	managed := map[string][]authapi.TokenInfo{}
	for _, t := range have.tokens {
		if t.Origin == state.OriginApply {
			k := string(t.Kind) + "/" + t.Name
			managed[k] = append(managed[k], t)
		} else {
			res.Unmanaged++
		}
	}
	done := map[string]bool{} // token IDs the plan accounts for
	for _, dt := range want.tokens {
		key := dt.key()
		var id string
		if dt.secret != "" {
			id = authapi.HashToken(dt.secret)[:12]
			for _, t := range have.tokens {
				if t.ID == id && (t.Origin != state.OriginApply || string(t.Kind)+"/"+t.Name != key) {
					errs = append(errs, fmt.Errorf("%s: token %s: its secret is already the secret of token %s (%s %s, %s): give this token another secret, or remove that one with jgctl tokens rm %s", dt.src, key, t.ID, t.Kind, orNone(t.Name), originText(t.Origin), t.ID))
				}
			}
		}
		req := &authapi.CreateTokenRequest{Kind: dt.kind, TTL: identity.Duration(dt.ttl), Labels: dt.labels, Name: dt.name, Secret: dt.secret, Origin: state.OriginApply}
		c := planChange{Kind: "token", Name: key, token: req}
		switch {
		case dt.secretEnv != "":
			c.secretSrc = "$" + dt.secretEnv
		case dt.secretFile != "":
			c.secretSrc = dt.secretFile
		}
		var alive, expired []authapi.TokenInfo
		for _, t := range managed[key] {
			if t.UsedBy != "" || opt.Now.Before(t.Expires) {
				alive = append(alive, t)
			} else {
				expired = append(expired, t)
			}
		}
		cur := currentToken(alive, id)
		if cur == nil {
			c.Action = actCreate
			for _, t := range expired {
				// Deleted first: a declared secret would otherwise clash
				// with the expired token's.
				c.deleteIDs = append(c.deleteIDs, t.ID)
				c.Changes = append(c.Changes, fmt.Sprintf("replaces expired unused token %s", t.ID))
				done[t.ID] = true
			}
			add(c)
			continue
		}
		done[cur.ID] = true
		var lines []string
		if !maps.Equal(cur.Labels, dt.labels) {
			lines = append(lines, fmt.Sprintf("labels: %s -> %s", labelsText(cur.Labels), labelsText(dt.labels)))
		}
		if id != "" && cur.ID != id {
			lines = append(lines, fmt.Sprintf("id: %s -> %s (the secret changed)", cur.ID, id))
		}
		if len(lines) == 0 {
			add(planChange{Action: actUnchanged, Kind: "token", Name: key})
			continue
		}
		c.Action, c.Changes = actReplace, lines
		c.deleteIDs = []string{cur.ID}
		for _, t := range expired {
			c.deleteIDs = append(c.deleteIDs, t.ID)
			done[t.ID] = true
		}
		add(c)
	}
	var keys []string
	for k := range managed {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, t := range managed[k] {
			switch {
			case done[t.ID]:
			case t.UsedBy != "":
				// A used token is the record of who joined with it;
				// it grants nothing more and is never pruned.
			case opt.Prune:
				st := "unused"
				if !opt.Now.Before(t.Expires) {
					st = "expired"
				}
				add(planChange{Action: actDelete, Kind: "token", Name: k, Changes: []string{fmt.Sprintf("id %s (%s)", t.ID, st)}, deleteIDs: []string{t.ID}})
			default:
				res.Orphans++
			}
		}
	}

	// Roles are pruned last, once no user managed here holds them.
	var holders = map[string][]string{}
	for _, u := range have.users {
		if !wantUsers[u.Name] && u.Origin != state.OriginApply {
			for _, r := range u.Roles {
				holders[r] = append(holders[r], u.Name)
			}
		}
	}
	for _, r := range have.roles {
		if pruneRoles[r.Name] {
			c := planChange{Action: actDelete, Kind: "role", Name: r.Name}
			if h := holders[r.Name]; len(h) > 0 {
				sort.Strings(h)
				c.Changes = []string{fmt.Sprintf("still held by %s (not managed by jgctl apply): the role will grant them nothing", strings.Join(h, ", "))}
			}
			add(c)
		}
	}

	if len(errs) > 0 {
		return nil, filesError(errs)
	}
	sort.SliceStable(res.Changes, func(i, j int) bool {
		a, b := &res.Changes[i], &res.Changes[j]
		if a.phase() != b.phase() {
			return a.phase() < b.phase()
		}
		if (a.Action == actCreate) != (b.Action == actCreate) {
			return a.Action == actCreate // what is new first, then what changes
		}
		return a.Name < b.Name
	})
	return res, nil
}

// currentToken picks the token standing for a declared one among the live
// tokens of its type and name: the one with the declared secret, else the
// newest unused one, else the newest used one.
func currentToken(alive []authapi.TokenInfo, id string) *authapi.TokenInfo {
	better := func(t, than *authapi.TokenInfo) bool {
		if unused := t.UsedBy == ""; unused != (than.UsedBy == "") {
			return unused
		}
		return t.Created.After(than.Created)
	}
	var best *authapi.TokenInfo
	for i := range alive {
		t := &alive[i]
		if id != "" && t.ID == id {
			return t
		}
		if best == nil || better(t, best) {
			best = t
		}
	}
	return best
}

// canonicalRole is the JSON the auth server stores for a role, without the
// origin: two roles grant the same exactly when these are equal. It keeps
// the difference between absent and empty permissions (see identity.Rules).
func canonicalRole(r identity.Role) map[string]any {
	r.Origin = ""
	b, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("marshal role %s: %v", r.Name, err)) // a Role always marshals
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		panic(fmt.Sprintf("unmarshal role %s: %v", r.Name, err))
	}
	return m
}

// roleDiff lists the leaves of the roles' canonical JSON that differ, as
// "allow.logins: [ubuntu] -> [ubuntu deploy]".
func roleDiff(old, new identity.Role) []string {
	a, b := map[string]any{}, map[string]any{}
	flatten("", canonicalRole(old), a)
	flatten("", canonicalRole(new), b)
	var paths []string
	for p := range a {
		paths = append(paths, p)
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var lines []string
	for _, p := range paths {
		va, oka := a[p]
		vb, okb := b[p]
		if oka && okb && jsonEqual(va, vb) {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: %s -> %s", p, leafText(p, va, oka, vb), leafText(p, vb, okb, va)))
	}
	return lines
}

// flatten maps the dotted path of every leaf of v to its value. Lists and
// empty objects are leaves.
func flatten(prefix string, v any, out map[string]any) {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 && prefix != "" {
		out[prefix] = v
		return
	}
	for k, sub := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		flatten(p, sub, out)
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// leafText shows one side of a changed leaf. A leaf missing on this side
// was omitted from the JSON as empty, so it shows as false next to a bool
// and as (none) otherwise; null is an absent permissions list.
func leafText(path string, v any, ok bool, other any) string {
	if !ok {
		if _, isBool := other.(bool); isBool {
			return "false"
		}
		return "(none)"
	}
	switch v := v.(type) {
	case nil:
		if strings.HasSuffix(path, ".permissions") {
			return "(unset: the defaults)"
		}
		return "(unset)"
	case string:
		if v == "" {
			return `""`
		}
		return v
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = leafText(path, e, true, nil)
		}
		return "[" + strings.Join(parts, " ") + "]"
	case map[string]any:
		if len(v) == 0 {
			return "{}"
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	return fmt.Sprint(v)
}

// userDiff compares a user with its document: roles as a sorted list,
// traits with absent and empty alike, and the origin.
func userDiff(cur state.User, want desiredUser) []string {
	var lines []string
	if !slices.Equal(sortedStrings(cur.Roles), sortedStrings(want.roles)) {
		lines = append(lines, fmt.Sprintf("roles: %s -> %s", listText(cur.Roles), listText(want.roles)))
	}
	keys := map[string]bool{}
	for k := range cur.Traits {
		keys[k] = true
	}
	for k := range want.traits {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if !slices.Equal(sortedStrings(cur.Traits[k]), sortedStrings(want.traits[k])) {
			lines = append(lines, fmt.Sprintf("traits.%s: %s -> %s", k, listText(cur.Traits[k]), listText(want.traits[k])))
		}
	}
	if cur.Origin != state.OriginApply {
		lines = append(lines, fmt.Sprintf("origin: %s -> %s", orNone(cur.Origin), state.OriginApply))
	}
	return lines
}

func sortedStrings(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func listText(s []string) string { return "[" + strings.Join(s, " ") + "]" }

func labelsText(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func originText(origin string) string {
	if origin == state.OriginApply {
		return "created by jgctl apply"
	}
	return "not created by jgctl apply"
}

// --- applying ------------------------------------------------------------

// applyError says where applying stopped, what was done and what was not.
type applyError struct {
	At      string   // the change that failed
	Partial string   // what was done of it, if anything
	Done    []string // changes made before it
	NotDone []string // it and the changes after it
	Err     error
}

func (e *applyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apply stopped at %s: %v", e.At, e.Err)
	if e.Partial != "" {
		fmt.Fprintf(&b, " (%s)", e.Partial)
	}
	fmt.Fprintf(&b, "\ndone (%d):", len(e.Done))
	for _, d := range e.Done {
		b.WriteString("\n  " + d)
	}
	fmt.Fprintf(&b, "\nnot done (%d):", len(e.NotDone))
	for _, d := range e.NotDone {
		b.WriteString("\n  " + d)
	}
	b.WriteString("\nfix the cause and run jgctl apply again: it only makes the changes still missing")
	return b.String()
}

func (e *applyError) Unwrap() error { return e.Err }

// applyPlan makes the changes of p in order, one API call each (a token
// replacement is a delete, then a create), and marks each one Applied. It
// stops at the first error and returns an *applyError.
func applyPlan(ctx context.Context, api applyAPI, p *planResult) error {
	var done []string
	for i := range p.Changes {
		c := &p.Changes[i]
		if c.Action == actUnchanged {
			continue
		}
		if err := applyChange(ctx, api, c); err != nil {
			e := &applyError{At: c.String(), Partial: c.partial, Done: done, Err: err}
			for _, rest := range p.Changes[i:] {
				if rest.Action != actUnchanged {
					e.NotDone = append(e.NotDone, rest.String())
				}
			}
			return e
		}
		c.Applied = true
		done = append(done, c.String())
	}
	return nil
}

func applyChange(ctx context.Context, api applyAPI, c *planChange) error {
	switch {
	case c.Kind == "role" && c.Action == actDelete:
		return ignoreNotFound(api.DeleteRole(ctx, c.Name))
	case c.Kind == "role":
		return api.ApplyRoles(ctx, []identity.Role{*c.role})
	case c.Kind == "user" && c.Action == actDelete:
		return ignoreNotFound(api.DeleteUser(ctx, c.Name))
	case c.Kind == "user":
		return api.UpsertUser(ctx, *c.user)
	case c.Kind == "token":
		for _, id := range c.deleteIDs {
			if err := ignoreNotFound(api.DeleteToken(ctx, id)); err != nil {
				return err
			}
			if c.token != nil {
				c.partial = appendPartial(c.partial, "deleted token "+id)
			}
		}
		if c.token == nil {
			return nil
		}
		resp, err := api.CreateToken(ctx, *c.token)
		if err != nil {
			if c.partial != "" {
				c.partial += "; the new token was not created"
			}
			return err
		}
		c.partial = ""
		r := *resp
		if c.token.Secret != "" {
			r.Token = "" // the caller has it; never print it
		}
		c.Token = &r
		return nil
	}
	return fmt.Errorf("unknown change %s", c)
}

func appendPartial(s, what string) string {
	if s == "" {
		return what
	}
	return s + ", " + what
}

// ignoreNotFound treats deleting what is already gone as done, so that a
// re-run after a partial apply (or a concurrent delete) converges.
func ignoreNotFound(err error) error {
	var ae *authapi.APIError
	if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
		return nil
	}
	return err
}

// applyOptions are the flags of jgctl apply that runApply needs.
type applyOptions struct {
	Prune, DryRun, JSON bool
	// Proxy and Auth are the addresses put in printed join commands.
	Proxy, Auth string
	Now         func() time.Time
}

// runApply plans want against the cluster, prints the plan and, unless
// DryRun, applies it. changed reports whether the plan had changes.
func runApply(ctx context.Context, api applyAPI, want *desiredState, opt applyOptions, out io.Writer) (changed bool, err error) {
	have, err := fetchCluster(ctx, api)
	if err != nil {
		return false, err
	}
	p, err := plan(want, have, planOptions{Prune: opt.Prune, Now: opt.Now()})
	if err != nil {
		return false, err
	}
	changed = p.changed() > 0
	if !opt.JSON {
		printPlan(out, p, opt.Prune)
	}
	if opt.DryRun || !changed {
		if opt.JSON {
			return changed, writeJSON(out, p.Changes)
		}
		if changed {
			fmt.Fprintln(out, "Dry run: nothing was changed.")
		}
		return changed, nil
	}
	applyErr := applyPlan(ctx, api, p)
	if opt.JSON {
		if err := writeJSON(out, p.Changes); err != nil && applyErr == nil {
			applyErr = err
		}
		return changed, applyErr
	}
	printTokens(out, p, opt)
	if applyErr == nil {
		fmt.Fprintf(out, "Applied %d changes.\n", p.changed())
	}
	return changed, applyErr
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printPlan writes the plan as a diff: one line per object, indented
// field changes, then the count of unchanged objects.
func printPlan(out io.Writer, p *planResult, prune bool) {
	unchanged := 0
	for i := range p.Changes {
		c := &p.Changes[i]
		if c.Action == actUnchanged {
			unchanged++
			continue
		}
		fmt.Fprintln(out, c.String())
		for _, l := range c.Changes {
			fmt.Fprintln(out, "    "+l)
		}
	}
	fmt.Fprintf(out, "= %d unchanged\n", unchanged)
	if prune && p.Unmanaged > 0 {
		fmt.Fprintf(out, "  (%d objects not created by jgctl apply left alone)\n", p.Unmanaged)
	}
	if !prune && p.Orphans > 0 {
		fmt.Fprintf(out, "  (%d objects created by jgctl apply are no longer in the files: --prune deletes them)\n", p.Orphans)
	}
}

// printTokens prints the tokens created: with their join command when the
// auth server generated the secret (it is shown only this once), else
// where the secret comes from.
func printTokens(out io.Writer, p *planResult, opt applyOptions) {
	for i := range p.Changes {
		c := &p.Changes[i]
		if c.Token == nil {
			continue
		}
		t := c.Token
		until := t.Expires.Local().Format(time.RFC1123)
		if t.Token == "" {
			fmt.Fprintf(out, "Token %s (id %s) valid until %s; its secret is the one from %s.\n", c.Name, t.ID, until, c.secretSrc)
			continue
		}
		fmt.Fprintf(out, "Token %s (id %s) valid until %s. Its secret is shown only now.\n", c.Name, t.ID, until)
		if c.token.Kind == identity.KindNode {
			fmt.Fprintf(out, "On the node, run:\n  jumpgate start --roles=node --node-name=%s --data-dir=/var/lib/jumpgate --proxy=%s --token=%s --ca-pin=%s\n", c.token.Name, opt.Proxy, t.Token, t.CAPin)
		} else {
			fmt.Fprintf(out, "On the proxy, run:\n  jumpgate start --roles=proxy --proxy-id=%s --data-dir=/var/lib/jumpgate --auth=%s --token=%s --ca-pin=%s\n", c.token.Name, opt.Auth, t.Token, t.CAPin)
		}
	}
}
