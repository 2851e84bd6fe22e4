// Package identity maps Jumpgate identities to and from certificates, and
// evaluates roles against nodes and logins.
//
// It is pure: no I/O, no clocks except those passed in, no network. Every
// other package, network-facing or not, may import it.
//
// An Identity is who holds a certificate: a user, a node, a proxy, an auth
// server or an administrator of the cluster. It travels in two forms:
//
//   - SSH certificates (users and nodes): KeyId is the name, the cluster and
//     roles ride in critical-free extensions ExtCluster and ExtRoles.
//   - X.509 certificates (mTLS between every process): the subject common
//     name is the name, and the extension OIDIdentity holds a compact JSON
//     document {"k":kind,"c":cluster,"r":[roles]}.
//
// Roles (see Role) are evaluated wherever access is decided: the proxy asks
// "may this identity reach this node?" (CanReachNode) and the node asks again
// "may it log in as this login?" (CheckLogin), each against its own cached
// copy of the role definitions.
package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Kind is what an identity is.
type Kind string

// The kinds of identity. Every hop checks that its peer holds the kind it
// expects: a proxy accepts tunnels only from KindNode, the auth API serves
// writes only to KindAdmin, and so on.
const (
	KindUser  Kind = "user"
	KindNode  Kind = "node"
	KindProxy Kind = "proxy"
	KindAuth  Kind = "auth"
	KindAdmin Kind = "admin"
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindUser, KindNode, KindProxy, KindAuth, KindAdmin:
		return true
	}
	return false
}

// SSH certificate extensions carrying Jumpgate data. OpenSSH ignores unknown
// extensions (ssh-keygen -L shows them as UNKNOWN OPTION).
const (
	ExtCluster = "cluster@jumpgate.dev"
	ExtRoles   = "roles@jumpgate.dev"
	// ExtTraits is the user's traits as JSON ({"internal.logins": [...]}),
	// for role templates evaluated by proxies and nodes.
	ExtTraits = "traits@jumpgate.dev"
	// ExtRequests lists the access requests (comma-separated ids) whose
	// roles the certificate carries.
	ExtRequests = "requests@jumpgate.dev"
	// ExtMFA binds a per-session MFA certificate to one node and login
	// (JSON MFABinding). Nodes accept such a certificate once.
	ExtMFA = "mfa@jumpgate.dev"
)

// MFABinding is what a per-session MFA certificate is good for: one
// session (ID, unique) on one node as one login.
type MFABinding struct {
	ID    string `json:"id"`
	Node  string `json:"node"`
	Login string `json:"login"`
}

// OIDIdentity is the X.509 extension that carries kind, cluster and roles.
// The arc 1.3.6.1.4.1.59530 is Jumpgate's private enterprise arc.
var OIDIdentity = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59530, 1, 1}

// Identity is the holder of a certificate.
type Identity struct {
	Kind    Kind
	Name    string // user name, node id, proxy id, auth server id
	Cluster string
	Roles   []string  // role names, for users; empty for servers
	Logins  []string  // SSH principals, for users
	Expires time.Time // certificate NotAfter
	// Traits (users) are what role templates read, keyed by TraitKey.
	Traits map[string][]string `json:",omitempty"`
	// Requests (users) are the approved access requests whose roles are
	// in Roles.
	Requests []string `json:",omitempty"`
	// MFA (SSH user certificates only) is set on a per-session
	// certificate issued after a second factor.
	MFA *MFABinding `json:",omitempty"`
}

// String is a short form for logs: "user alice@prod".
func (id Identity) String() string {
	return fmt.Sprintf("%s %s@%s", id.Kind, id.Name, id.Cluster)
}

// Check validates an identity before a certificate is issued for it.
func (id Identity) Check() error {
	if !id.Kind.Valid() {
		return fmt.Errorf("identity: unknown kind %q", id.Kind)
	}
	if err := CheckName(id.Name); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := CheckName(id.Cluster); err != nil {
		return fmt.Errorf("identity: cluster: %w", err)
	}
	for _, r := range id.Roles {
		if err := CheckName(r); err != nil {
			return fmt.Errorf("identity: role: %w", err)
		}
	}
	return nil
}

// CheckName accepts names of users, nodes, roles, clusters and proxies:
// 1 to 64 characters of letters, digits, '.', '-', '_' and '@', starting with
// a letter or digit.
func CheckName(s string) error {
	if s == "" {
		return errors.New("name is empty")
	}
	if len(s) > 64 {
		return fmt.Errorf("name %.20q... is longer than 64 characters", s)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '.' || c == '-' || c == '_' || c == '@'
		}
		if !ok {
			return fmt.Errorf("name %q: only letters, digits and . - _ @ are allowed, starting with a letter or digit", s)
		}
	}
	return nil
}

// tlsExt is the JSON carried in OIDIdentity.
type tlsExt struct {
	Kind    Kind                `json:"k"`
	Cluster string              `json:"c"`
	Roles   []string            `json:"r,omitempty"`
	Logins  []string            `json:"l,omitempty"`
	Traits  map[string][]string `json:"t,omitempty"`
	Reqs    []string            `json:"q,omitempty"`
}

// TLSSubject returns the subject and extra extensions for an X.509
// certificate that carries id.
func (id Identity) TLSSubject() (pkix.Name, []pkix.Extension, error) {
	b, err := json.Marshal(tlsExt{Kind: id.Kind, Cluster: id.Cluster, Roles: id.Roles, Logins: id.Logins, Traits: id.Traits, Reqs: id.Requests})
	if err != nil {
		return pkix.Name{}, nil, err
	}
	name := pkix.Name{CommonName: id.Name, Organization: []string{id.Cluster}, OrganizationalUnit: []string{string(id.Kind)}}
	return name, []pkix.Extension{{Id: OIDIdentity, Value: b}}, nil
}

// FromX509 reads the identity from a certificate that has already been
// verified against the cluster's TLS CA. It does not verify anything itself.
func FromX509(cert *x509.Certificate) (Identity, error) {
	for _, e := range cert.Extensions {
		if !e.Id.Equal(OIDIdentity) {
			continue
		}
		var x tlsExt
		if err := json.Unmarshal(e.Value, &x); err != nil {
			return Identity{}, fmt.Errorf("certificate %q: malformed Jumpgate identity extension: %w", cert.Subject.CommonName, err)
		}
		id := Identity{Kind: x.Kind, Name: cert.Subject.CommonName, Cluster: x.Cluster, Roles: x.Roles, Logins: x.Logins, Expires: cert.NotAfter, Traits: x.Traits, Requests: x.Reqs}
		if err := id.Check(); err != nil {
			return Identity{}, fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
		}
		return id, nil
	}
	return Identity{}, fmt.Errorf("certificate %q is not a Jumpgate certificate (no identity extension)", cert.Subject.CommonName)
}

// SSHExtensions returns the extensions an SSH certificate for id carries,
// including the standard OpenSSH permissions for user certificates.
func (id Identity) SSHExtensions() map[string]string {
	ext := map[string]string{ExtCluster: id.Cluster}
	if len(id.Roles) > 0 {
		ext[ExtRoles] = strings.Join(id.Roles, ",")
	}
	if len(id.Traits) > 0 {
		if b, err := json.Marshal(id.Traits); err == nil {
			ext[ExtTraits] = string(b)
		}
	}
	if len(id.Requests) > 0 {
		ext[ExtRequests] = strings.Join(id.Requests, ",")
	}
	if id.MFA != nil {
		if b, err := json.Marshal(id.MFA); err == nil {
			ext[ExtMFA] = string(b)
		}
	}
	if id.Kind == KindUser {
		for _, p := range []string{"permit-pty", "permit-port-forwarding", "permit-agent-forwarding", "permit-X11-forwarding", "permit-user-rc"} {
			ext[p] = ""
		}
	}
	return ext
}

// FromSSHCert reads the identity from an SSH certificate that has already
// been verified against the cluster's CA.
func FromSSHCert(cert *ssh.Certificate) (Identity, error) {
	id := Identity{Name: cert.KeyId, Cluster: cert.Extensions[ExtCluster], Logins: cert.ValidPrincipals}
	switch cert.CertType {
	case ssh.UserCert:
		id.Kind = KindUser
	case ssh.HostCert:
		id.Kind = KindNode
	}
	if r := cert.Extensions[ExtRoles]; r != "" {
		id.Roles = strings.Split(r, ",")
	}
	if t := cert.Extensions[ExtTraits]; t != "" {
		if err := json.Unmarshal([]byte(t), &id.Traits); err != nil {
			return Identity{}, fmt.Errorf("ssh certificate %q: malformed traits: %w", cert.KeyId, err)
		}
	}
	if q := cert.Extensions[ExtRequests]; q != "" {
		id.Requests = strings.Split(q, ",")
	}
	if m, ok := cert.Extensions[ExtMFA]; ok {
		id.MFA = &MFABinding{}
		if err := json.Unmarshal([]byte(m), id.MFA); err != nil || id.MFA.ID == "" || id.MFA.Node == "" || id.MFA.Login == "" {
			return Identity{}, fmt.Errorf("ssh certificate %q: malformed MFA binding", cert.KeyId)
		}
	}
	if cert.ValidBefore != ssh.CertTimeInfinity {
		id.Expires = time.Unix(int64(cert.ValidBefore), 0)
	}
	if err := id.Check(); err != nil {
		return Identity{}, fmt.Errorf("ssh certificate %q: %w", cert.KeyId, err)
	}
	return id, nil
}

// ExpiredError says a certificate has expired and what to do about it.
type ExpiredError struct {
	Ago time.Duration
}

func (e *ExpiredError) Error() string {
	return fmt.Sprintf("certificate expired %s ago: run jg login", HumanDuration(e.Ago))
}

// CheckValidity returns an *ExpiredError or a not-yet-valid error for a
// certificate valid in [notBefore, notAfter].
func CheckValidity(notBefore, notAfter, now time.Time) error {
	if now.After(notAfter) {
		return &ExpiredError{Ago: now.Sub(notAfter)}
	}
	if now.Before(notBefore) {
		return fmt.Errorf("certificate is not valid for another %s: check this machine's clock", HumanDuration(notBefore.Sub(now)))
	}
	return nil
}

// HumanDuration renders d the way a person says it: "2h", "5m", "40s", "3d".
func HumanDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d >= time.Minute:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	default:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	}
}

// sortedCopy returns a sorted copy without duplicates.
func sortedCopy(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	j := 0
	for i, s := range out {
		if i == 0 || s != out[j-1] {
			out[j] = s
			j++
		}
	}
	return out[:j]
}
