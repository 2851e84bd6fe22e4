package identity

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// matchLabels reports whether a node with labels matches selector. An empty
// selector matches nothing. A key "*" matches only with the value "*" (every
// node); values are exact, "*" (any), or regular expressions (^...$).
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
		if !ok || !matchAny(want, v) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool { return slices.Contains(list, s) }

// matchValue matches one label value or role pattern against s.
func matchValue(pattern, s string) bool {
	switch {
	case pattern == "*":
		return true
	case isRegexp(pattern):
		re, err := compile(pattern)
		return err == nil && re.MatchString(s)
	}
	return pattern == s
}

// isRegexp: a value written ^...$ is a regular expression (RE2 syntax),
// anchored at both ends by its own ^ and $.
func isRegexp(v string) bool { return len(v) >= 2 && v[0] == '^' && v[len(v)-1] == '$' }

// regexps caches compiled label expressions. It only grows with the
// distinct expressions administrators write into roles, and every caller
// shares it read-mostly: evaluation runs on every dial and login.
var regexps sync.Map // string -> *regexp.Regexp

func compile(v string) (*regexp.Regexp, error) {
	if re, ok := regexps.Load(v); ok {
		return re.(*regexp.Regexp), nil
	}
	re, err := regexp.Compile(v)
	if err != nil {
		return nil, err
	}
	regexps.Store(v, re)
	return re, nil
}

// Trait namespaces of role templates.
const (
	TraitsInternal = "internal" // the user's own traits (jgctl apply, jgctl users)
	TraitsExternal = "external" // claims from the SSO provider at login
)

var traitNameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

var templateRE = regexp.MustCompile(`^\{\{\s*([a-z]+)\.([A-Za-z0-9_.:-]+)\s*\}\}$`)

func isTemplate(v string) bool { return strings.HasPrefix(v, "{{") }

// parseTemplate splits "{{internal.logins}}" into its namespace and trait.
func parseTemplate(v string) (ns, name string, err error) {
	m := templateRE.FindStringSubmatch(v)
	if m == nil {
		return "", "", fmt.Errorf("%q is not a template: write {{internal.NAME}} or {{external.NAME}}", v)
	}
	if m[1] != TraitsInternal && m[1] != TraitsExternal {
		return "", "", fmt.Errorf("%q: unknown namespace %q (want internal or external)", v, m[1])
	}
	return m[1], m[2], nil
}

// TraitKey is how traits are keyed in an Identity: "internal.logins".
func TraitKey(namespace, name string) string { return namespace + "." + name }

// Expand returns the role with the templates in its logins and node label
// values replaced by the traits' values (keyed by TraitKey). Values that
// would make no sense as logins (empty, with spaces or commas) are
// dropped.
func (r Role) Expand(traits map[string][]string) Role {
	out := r
	out.Allow.Logins = expandList(r.Allow.Logins, traits, true)
	out.Deny.Logins = expandList(r.Deny.Logins, traits, true)
	out.Allow.NodeLabels = expandLabels(r.Allow.NodeLabels, traits)
	out.Deny.NodeLabels = expandLabels(r.Deny.NodeLabels, traits)
	return out
}

func expandList(in []string, traits map[string][]string, logins bool) []string {
	if !slices.ContainsFunc(in, isTemplate) {
		return in
	}
	out := make([]string, 0, len(in))
	for _, v := range in {
		if !isTemplate(v) {
			out = append(out, v)
			continue
		}
		ns, name, err := parseTemplate(v)
		if err != nil {
			continue
		}
		for _, tv := range traits[TraitKey(ns, name)] {
			// A trait value is only ever an exact value: it never widens
			// a rule into a wildcard or an expression (users may control
			// their claims at the SSO provider).
			if tv == "" || tv == "*" || isRegexp(tv) || isTemplate(tv) || logins && strings.ContainsAny(tv, " \t\r\n,{}") {
				continue
			}
			out = append(out, tv)
		}
	}
	return out
}

func expandLabels(in Labels, traits map[string][]string) Labels {
	if len(in) == 0 {
		return in
	}
	var out Labels
	for k, vs := range in {
		ev := expandList(vs, traits, false)
		if out == nil {
			if slices.Equal(ev, vs) {
				continue
			}
			out = make(Labels, len(in))
			for k2, v2 := range in {
				out[k2] = v2
			}
		}
		out[k] = ev
	}
	if out == nil {
		return in
	}
	// A label whose template expanded to nothing matches no node (allow)
	// or no node (deny): keep the key with an impossible value rather
	// than dropping it, which would widen the selector.
	for k, vs := range out {
		if len(vs) == 0 {
			out[k] = StringList{"\x00no trait value"}
		}
	}
	return out
}

// CheckTraits validates a user's traits: names as in templates, at most 64
// names and 256 values each, values without control characters.
func CheckTraits(traits map[string][]string) error {
	if len(traits) > 64 {
		return errors.New("at most 64 traits")
	}
	for k, vs := range traits {
		if !traitNameRE.MatchString(k) {
			return fmt.Errorf("trait name %q: use letters, digits and . _ : -", k)
		}
		if len(vs) > 256 {
			return fmt.Errorf("trait %s: at most 256 values", k)
		}
		for _, v := range vs {
			if v == "" || len(v) > 256 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return fmt.Errorf("trait %s: value %q is empty, too long or has control characters", k, v)
			}
		}
	}
	return nil
}
