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
// In YAML (jgctl roles apply -f roles.yaml), one or more documents:
//
//	kind: role
//	name: dev
//	allow:
//	  logins: [ubuntu, deploy]
//	  node_labels:
//	    env: [staging, dev]   # any of these values
//	    team: "*"             # any value, but the label must exist
//	deny:
//	  logins: [root]
//	max_session_ttl: 8h
//
// node_labels {"*": "*"} matches every node. In allow, a node matches when
// every listed label matches; an empty node_labels matches no node. In deny,
// a non-empty node_labels selects the nodes the deny applies to, and deny
// logins with no node_labels apply to every node.
type Role struct {
	Name          string   `json:"name" yaml:"name"`
	Allow         Rules    `json:"allow" yaml:"allow"`
	Deny          Rules    `json:"deny" yaml:"deny"`
	MaxSessionTTL Duration `json:"max_session_ttl,omitempty" yaml:"max_session_ttl,omitempty"`
}

// Rules are the conditions of one side (allow or deny) of a role.
type Rules struct {
	Logins     []string `json:"logins,omitempty" yaml:"logins,omitempty"`
	NodeLabels Labels   `json:"node_labels,omitempty" yaml:"node_labels,omitempty"`
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
	for _, side := range []Rules{r.Allow, r.Deny} {
		for _, l := range side.Logins {
			if l == "" || strings.ContainsAny(l, " \t\n,") {
				return fmt.Errorf("role %s: login %q is not a valid login name", r.Name, l)
			}
		}
		for k, vs := range side.NodeLabels {
			if k == "" || len(vs) == 0 {
				return fmt.Errorf("role %s: node_labels entry %q needs a key and at least one value", r.Name, k)
			}
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

// matchLabels reports whether a node with labels matches selector. An empty
// selector matches nothing.
func matchLabels(selector Labels, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, want := range selector {
		if k == "*" {
			if !contains(want, "*") {
				return false
			}
			continue
		}
		v, ok := labels[k]
		if !ok {
			return false
		}
		if !contains(want, "*") && !contains(want, v) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// RoleGetter looks a role definition up by name; ok is false when it does not
// exist. It is how evaluation reads the caller's cache.
type RoleGetter func(name string) (Role, bool)

// AccessError says why access was refused. Users see Error().
type AccessError struct {
	Reason string
}

func (e *AccessError) Error() string { return "access denied: " + e.Reason }

// resolve looks up each role name; unknown roles are skipped (a role deleted
// after a certificate was issued grants nothing).
func resolve(names []string, get RoleGetter) []Role {
	var out []Role
	for _, n := range names {
		if r, ok := get(n); ok {
			out = append(out, r)
		}
	}
	return out
}

// CanReachNode reports whether a user with these roles may reach a node
// with these labels at all (the proxy's check).
func CanReachNode(roleNames []string, get RoleGetter, node string, labels map[string]string) error {
	roles := resolve(roleNames, get)
	for _, r := range roles {
		if len(r.Deny.NodeLabels) > 0 && len(r.Deny.Logins) == 0 && matchLabels(r.Deny.NodeLabels, labels) {
			return &AccessError{Reason: fmt.Sprintf("role %s denies node %s", r.Name, node)}
		}
	}
	for _, r := range roles {
		if matchLabels(r.Allow.NodeLabels, labels) {
			return nil
		}
	}
	return &AccessError{Reason: fmt.Sprintf("none of your roles (%s) allow node %s", strings.Join(roleNames, ", "), node)}
}

// CheckLogin reports whether a user with these roles may log in as login on
// a node with these labels (the node's check).
func CheckLogin(roleNames []string, get RoleGetter, node string, labels map[string]string, login string) error {
	if err := CanReachNode(roleNames, get, node, labels); err != nil {
		return err
	}
	roles := resolve(roleNames, get)
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

// Logins returns every login any of the roles allows, sorted: the
// principals of a user's SSH certificate.
func Logins(roles []Role) []string {
	var all []string
	for _, r := range roles {
		all = append(all, r.Allow.Logins...)
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
