package identity

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Role is a named set of allow and deny rules. Deny always wins.
//
// In YAML (jgctl roles apply -f roles.yaml, or jgctl apply -f dir/), one
// or more documents:
//
//	kind: role
//	name: dev
//	allow:
//	  logins: [ubuntu, "{{internal.logins}}", "{{external.logins}}"]
//	  node_labels:
//	    env: [staging, dev]        # any of these values
//	    team: "*"                  # any value, but the label must exist
//	    host: '^web-[0-9]+$'       # a regular expression (^...$)
//	  permissions: [port_forwarding, sftp, agent_forwarding]
//	  request:
//	    roles: [prod-access]       # may ask for these just in time
//	    max_duration: 4h
//	deny:
//	  logins: [root]
//	  permissions: [agent_forwarding]
//	max_session_ttl: 8h
//	require_session_mfa: true
//	review_sessions: false
//
// node_labels {"*": "*"} matches every node. In allow, a node matches when
// every listed label matches; an empty node_labels matches no node. In deny,
// a non-empty node_labels selects the nodes the deny applies to, and deny
// logins and permissions with no node_labels apply to every node.
//
// Values of logins and node_labels may be templates: "{{internal.NAME}}"
// stands for the values of the user's trait NAME (jgctl apply sets them),
// "{{external.NAME}}" for the claim NAME from the SSO provider at the last
// login. A template whose trait is missing stands for nothing.
//
// permissions lists what a session may do besides a shell and commands:
// port_forwarding (ssh -L), agent_forwarding (ssh -A) and sftp. A role
// whose allow side has no permissions key grants port_forwarding and sftp
// (what a plain OpenSSH server allows); "permissions: []" grants none. A
// permission in deny removes it whatever other roles allow.
//
// require_session_mfa: every new session of a user holding the role needs
// a TOTP code (jg asks for it). review_sessions: the holder may replay
// anyone's session recordings (everyone may replay their own).
type Role struct {
	Name          string   `json:"name" yaml:"name"`
	Allow         Rules    `json:"allow" yaml:"allow"`
	Deny          Rules    `json:"deny" yaml:"deny"`
	MaxSessionTTL Duration `json:"max_session_ttl,omitempty" yaml:"max_session_ttl,omitempty"`
	// RequireSessionMFA: every session needs a fresh second factor.
	RequireSessionMFA bool `json:"require_session_mfa,omitempty" yaml:"require_session_mfa,omitempty"`
	// ReviewSessions: may list and replay every session recording.
	ReviewSessions bool `json:"review_sessions,omitempty" yaml:"review_sessions,omitempty"`
	// Origin says what manages the role ("jgctl-apply" for jgctl apply;
	// see state.OriginApply). It grants nothing.
	Origin string `json:"origin,omitempty" yaml:"origin,omitempty"`
}

// Rules are the conditions of one side (allow or deny) of a role.
type Rules struct {
	Logins     []string `json:"logins,omitempty" yaml:"logins,omitempty"`
	NodeLabels Labels   `json:"node_labels,omitempty" yaml:"node_labels,omitempty"`
	// Permissions: see Role. nil (absent) and empty differ on the allow
	// side, so this field is never omitted from JSON.
	Permissions []string `json:"permissions" yaml:"permissions,omitempty"`
	// Request lists the roles that may be asked for just in time (allow),
	// or may not be (deny).
	Request *RequestRules `json:"request,omitempty" yaml:"request,omitempty"`
}

// RequestRules say which roles a user may request (jg request create).
type RequestRules struct {
	// Roles are role names or regular expressions (^...$).
	Roles []string `json:"roles,omitempty" yaml:"roles,omitempty"`
	// MaxDuration caps how long an approved request lasts (allow side;
	// default 1h, at most 7 days).
	MaxDuration Duration `json:"max_duration,omitempty" yaml:"max_duration,omitempty"`
}

// The session permissions a role may grant or deny.
const (
	PermPortForwarding  = "port_forwarding"
	PermAgentForwarding = "agent_forwarding"
	PermSFTP            = "sftp"
)

// defaultPermissions are granted by an allow side without a permissions key.
var defaultPermissions = []string{PermPortForwarding, PermSFTP}

func validPermission(p string) bool {
	return p == PermPortForwarding || p == PermAgentForwarding || p == PermSFTP
}

// Labels maps a label key to the values it may take; "*" as a key or value
// is a wildcard. In YAML a single value may be written without a list.
type Labels map[string]StringList

// StringList is a list of strings that also unmarshals from a single string.
type StringList []string

// UnmarshalYAML accepts a scalar or a sequence.
func (s *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = StringList{n.Value}
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return fmt.Errorf("line %d: want a string or a list of strings", n.Line)
	}
	*s = l
	return nil
}

// Duration is a time.Duration written as "8h" or "30m" in YAML and JSON.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (write 8h, 30m)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// MarshalText writes the duration as a string (used by JSON).
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses a duration string (used by JSON).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write 8h, 30m)", b)
	}
	*d = Duration(v)
	return nil
}

// Check validates a role definition.
func (r Role) Check() error {
	if err := CheckName(r.Name); err != nil {
		return fmt.Errorf("role: %w", err)
	}
	if r.MaxSessionTTL < 0 {
		return fmt.Errorf("role %s: max_session_ttl is negative", r.Name)
	}
	for i, side := range []Rules{r.Allow, r.Deny} {
		where := [...]string{"allow", "deny"}[i]
		for _, l := range side.Logins {
			if isTemplate(l) {
				if _, _, err := parseTemplate(l); err != nil {
					return fmt.Errorf("role %s: %s.logins: %w", r.Name, where, err)
				}
				continue
			}
			if l == "" || strings.ContainsAny(l, " \t\n,{}") || isRegexp(l) {
				return fmt.Errorf("role %s: %s.logins: %q is not a valid login name", r.Name, where, l)
			}
		}
		for k, vs := range side.NodeLabels {
			if k == "" || len(vs) == 0 {
				return fmt.Errorf("role %s: %s.node_labels entry %q needs a key and at least one value", r.Name, where, k)
			}
			for _, v := range vs {
				if err := checkValue(v); err != nil {
					return fmt.Errorf("role %s: %s.node_labels.%s: %w", r.Name, where, k, err)
				}
			}
		}
		for _, p := range side.Permissions {
			if !validPermission(p) {
				return fmt.Errorf("role %s: %s.permissions: unknown permission %q (want %s, %s or %s)", r.Name, where, p, PermPortForwarding, PermAgentForwarding, PermSFTP)
			}
		}
		if side.Request != nil {
			for _, n := range side.Request.Roles {
				if err := checkValue(n); err != nil {
					return fmt.Errorf("role %s: %s.request.roles: %w", r.Name, where, err)
				}
			}
			if d := time.Duration(side.Request.MaxDuration); d < 0 || d > MaxRequestDuration {
				return fmt.Errorf("role %s: %s.request.max_duration must be between 0 and %s", r.Name, where, MaxRequestDuration)
			}
		}
	}
	return nil
}

// checkValue checks a label value or role pattern: a regular expression
// must compile, a template must name a trait.
func checkValue(v string) error {
	switch {
	case v == "":
		return errors.New("empty value")
	case isRegexp(v):
		if _, err := compile(v); err != nil {
			return fmt.Errorf("%q is not a valid regular expression: %w", v, err)
		}
	case isTemplate(v):
		if _, _, err := parseTemplate(v); err != nil {
			return err
		}
	}
	return nil
}

// ParseRoles reads one or more YAML role documents.
func ParseRoles(data []byte) ([]Role, error) {
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var out []Role
	for i := 1; ; i++ {
		var doc struct {
			Kind string `yaml:"kind"`
			Role `yaml:",inline"`
		}
		var raw yaml.Node
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("roles document %d: %w", i, err)
		}
		if err := raw.Decode(&doc); err != nil {
			return nil, fmt.Errorf("roles document %d: %w", i, err)
		}
		if doc.Kind != "" && doc.Kind != "role" {
			return nil, fmt.Errorf("roles document %d: kind is %q, want role", i, doc.Kind)
		}
		if err := doc.Role.Check(); err != nil {
			return nil, fmt.Errorf("roles document %d: %w", i, err)
		}
		out = append(out, doc.Role)
	}
	if len(out) == 0 {
		return nil, errors.New("no roles found: expected YAML documents with kind: role")
	}
	return out, nil
}

// RoleGetter looks a role definition up by name; ok is false when it does not
// exist. It is how evaluation reads the caller's cache.
type RoleGetter func(name string) (Role, bool)

// AccessError says why access was refused. Users see Error().
type AccessError struct {
	Reason string
}

func (e *AccessError) Error() string { return "access denied: " + e.Reason }

// resolve looks up each of id's roles and expands their templates with
// id's traits; unknown roles are skipped (a role deleted after a
// certificate was issued grants nothing).
func resolve(id Identity, get RoleGetter) []Role {
	var out []Role
	for _, n := range id.Roles {
		if r, ok := get(n); ok {
			out = append(out, r.Expand(id.Traits))
		}
	}
	return out
}

// CanReachNode reports whether a user may reach a node with these labels at
// all (the proxy's check).
func CanReachNode(id Identity, get RoleGetter, node string, labels map[string]string) error {
	return canReach(id.Roles, resolve(id, get), node, labels)
}

func canReach(names []string, roles []Role, node string, labels map[string]string) error {
	for _, r := range roles {
		if len(r.Deny.NodeLabels) > 0 && len(r.Deny.Logins) == 0 && len(r.Deny.Permissions) == 0 && matchLabels(r.Deny.NodeLabels, labels) {
			return &AccessError{Reason: fmt.Sprintf("role %s denies node %s", r.Name, node)}
		}
	}
	for _, r := range roles {
		if matchLabels(r.Allow.NodeLabels, labels) {
			return nil
		}
	}
	return &AccessError{Reason: fmt.Sprintf("none of your roles (%s) allow node %s", strings.Join(names, ", "), node)}
}

// CheckLogin reports whether a user may log in as login on a node with
// these labels (the node's check).
func CheckLogin(id Identity, get RoleGetter, node string, labels map[string]string, login string) error {
	roles := resolve(id, get)
	if err := canReach(id.Roles, roles, node, labels); err != nil {
		return err
	}
	for _, r := range roles {
		if (contains(r.Deny.Logins, login) || contains(r.Deny.Logins, "*")) &&
			(len(r.Deny.NodeLabels) == 0 || matchLabels(r.Deny.NodeLabels, labels)) {
			return &AccessError{Reason: fmt.Sprintf("role %s denies login %s on node %s", r.Name, login, node)}
		}
	}
	for _, r := range roles {
		if matchLabels(r.Allow.NodeLabels, labels) && (contains(r.Allow.Logins, login) || contains(r.Allow.Logins, "*")) {
			return nil
		}
	}
	return &AccessError{Reason: fmt.Sprintf("none of your roles allow login %s on node %s", login, node)}
}

// SessionPolicy is what a session on one node may do, from all of a user's
// roles.
type SessionPolicy struct {
	PortForwarding  bool
	AgentForwarding bool
	SFTP            bool
	// RequireMFA: the session needs a per-session MFA certificate.
	RequireMFA bool
}

// Allows reports whether the policy grants permission p.
func (p SessionPolicy) Allows(perm string) bool {
	switch perm {
	case PermPortForwarding:
		return p.PortForwarding
	case PermAgentForwarding:
		return p.AgentForwarding
	case PermSFTP:
		return p.SFTP
	}
	return false
}

// Policy evaluates the permissions of a user's session on a node: a
// permission is granted by a role that allows the node and lists it (or
// lists nothing: see Role), unless a role denies it for this node.
func Policy(id Identity, get RoleGetter, labels map[string]string) SessionPolicy {
	roles := resolve(id, get)
	granted := map[string]bool{}
	var pol SessionPolicy
	for _, r := range roles {
		pol.RequireMFA = pol.RequireMFA || r.RequireSessionMFA
		if !matchLabels(r.Allow.NodeLabels, labels) {
			continue
		}
		perms := r.Allow.Permissions
		if perms == nil {
			perms = defaultPermissions
		}
		for _, p := range perms {
			granted[p] = true
		}
	}
	for _, r := range roles {
		if len(r.Deny.NodeLabels) > 0 && !matchLabels(r.Deny.NodeLabels, labels) {
			continue
		}
		for _, p := range r.Deny.Permissions {
			delete(granted, p)
		}
	}
	pol.PortForwarding, pol.AgentForwarding, pol.SFTP = granted[PermPortForwarding], granted[PermAgentForwarding], granted[PermSFTP]
	return pol
}

// RequiresMFA reports whether any of the roles requires per-session MFA.
func RequiresMFA(roles []Role) bool {
	for _, r := range roles {
		if r.RequireSessionMFA {
			return true
		}
	}
	return false
}

// CanReviewSessions reports whether a user may replay everyone's recordings.
func CanReviewSessions(id Identity, get RoleGetter) bool {
	for _, r := range resolve(id, get) {
		if r.ReviewSessions {
			return true
		}
	}
	return false
}

// MaxRequestDuration is the longest an access request can be granted for.
const MaxRequestDuration = 7 * 24 * time.Hour

// DefaultRequestDuration is how long an approved request lasts when no
// role says otherwise.
const DefaultRequestDuration = time.Hour

// CheckRequest reports whether a user with these roles may request role
// want, and for how long at most.
func CheckRequest(id Identity, get RoleGetter, want string) (time.Duration, error) {
	roles := resolve(id, get)
	for _, r := range roles {
		if r.Deny.Request != nil && matchAny(r.Deny.Request.Roles, want) {
			return 0, &AccessError{Reason: fmt.Sprintf("role %s denies requesting role %s", r.Name, want)}
		}
	}
	var maxd time.Duration
	ok := false
	for _, r := range roles {
		if r.Allow.Request == nil || !matchAny(r.Allow.Request.Roles, want) {
			continue
		}
		ok = true
		d := time.Duration(r.Allow.Request.MaxDuration)
		if d == 0 {
			d = DefaultRequestDuration
		}
		maxd = max(maxd, d)
	}
	if !ok {
		return 0, &AccessError{Reason: fmt.Sprintf("none of your roles (%s) may request role %s", strings.Join(id.Roles, ", "), want)}
	}
	return maxd, nil
}

// matchAny reports whether s is in patterns (names, "*", or ^regexp$).
func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if matchValue(p, s) {
			return true
		}
	}
	return false
}

// Logins returns every login the roles allow, with templates expanded by
// traits, sorted: the principals of a user's SSH certificate. Regular
// expressions and wildcards are not principals and are left out.
func Logins(roles []Role, traits map[string][]string) []string {
	var all []string
	for _, r := range roles {
		for _, l := range r.Expand(traits).Allow.Logins {
			if l != "*" && !isRegexp(l) {
				all = append(all, l)
			}
		}
	}
	return sortedCopy(all)
}

// SessionTTL caps want by the smallest max_session_ttl of the roles.
func SessionTTL(roles []Role, want time.Duration) time.Duration {
	for _, r := range roles {
		if m := time.Duration(r.MaxSessionTTL); m > 0 && m < want {
			want = m
		}
	}
	return want
}

// SortRoles sorts roles by name, in place.
func SortRoles(rs []Role) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Name < rs[j].Name })
}
