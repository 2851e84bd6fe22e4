package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Type is a command's type byte.
type Type byte

// FlagIgnorable in a type byte lets servers that do not know the command
// skip it (see the package comment).
const FlagIgnorable Type = 0x80

// Command types. Values are part of the replicated log format: never reuse
// or renumber one.
const (
	TypeBootstrap    Type = 1
	TypeUpsertUser   Type = 2
	TypeDeleteUser   Type = 3
	TypeUpsertRole   Type = 4
	TypeDeleteRole   Type = 5
	TypeCreateToken  Type = 6
	TypeDeleteToken  Type = 7
	TypeConsumeToken Type = 8
	TypeUpsertNode   Type = 9
	TypeDeleteNode   Type = 10
	TypeSetNodeLabel Type = 11
	TypeSetMeshKeys  Type = 12
	// Auth HA: the auth server registry.
	TypeUpsertAuthServer Type = 13
	TypeDeleteAuthServer Type = 14
	TypeTrustServerKeys  Type = 15
	// TypeNoop changes nothing. It is always sent with FlagIgnorable (older
	// servers skip it): applying it on a server proves that server has
	// applied every write committed before it (see auth/authapi backups).
	TypeNoop Type = 16
)

// MeshKeyBytes is the length of a mesh gossip key (AES-256).
const MeshKeyBytes = 32

// MaxMeshKeys bounds the gossip keyring: the primary plus keys being
// rotated in or out.
const MaxMeshKeys = 4

// SetMeshKeys replaces the proxies' gossip keyring. Keys are in the order
// they were created (the newest last) and Primary indexes the one used to
// encrypt; the others are still accepted, which is how a key is rotated
// without splitting the mesh. Keeping creation order apart from the choice
// of primary lets a rotation that stopped half-way tell the new key from
// the old one.
type SetMeshKeys struct {
	Keys    [][]byte `json:"keys"`
	Primary int      `json:"primary"`
}

// Bootstrap names the cluster and sets its first CA keys. It applies once.
type Bootstrap struct {
	Cluster string `json:"cluster"`
	CAs     CAs    `json:"cas"`
}

// UpsertUser creates or replaces a user. An empty PasswordHash keeps the
// existing one.
type UpsertUser struct {
	User User `json:"user"`
	// Create fails the command if the user already exists.
	Create bool `json:"create,omitempty"`
}

// DeleteUser removes a user.
type DeleteUser struct {
	Name string `json:"name"`
}

// UpsertRole creates or replaces a role.
type UpsertRole struct {
	Role identity.Role `json:"role"`
}

// DeleteRole removes a role.
type DeleteRole struct {
	Name string `json:"name"`
}

// CreateToken adds a join token.
type CreateToken struct {
	Token Token `json:"token"`
}

// DeleteToken removes a token by hash or by ID prefix.
type DeleteToken struct {
	ID string `json:"id"`
}

// ConsumeToken marks a token used by Name at Now, failing if it is unknown,
// expired, used or of another kind. Expired and used tokens older than a day
// are dropped at the same time.
type ConsumeToken struct {
	Hash string        `json:"hash"`
	Kind identity.Kind `json:"kind"`
	Name string        `json:"name"`
	Now  time.Time     `json:"now"`
}

// UpsertNode adds or replaces a node in the inventory.
type UpsertNode struct {
	Node Node `json:"node"`
}

// DeleteNode removes a node.
type DeleteNode struct {
	ID string `json:"id"`
}

// SetNodeLabels replaces the labels of an existing node (reported by the
// node itself over its tunnel).
type SetNodeLabels struct {
	ID     string            `json:"id"`
	Labels map[string]string `json:"labels"`
}

// UpsertAuthServer adds or replaces an auth server in the registry. Raft
// membership itself lives in raft's configuration; the registry says where
// each member serves its API and which CA public keys it holds.
type UpsertAuthServer struct {
	Server AuthServer `json:"server"`
}

// DeleteAuthServer removes an auth server from the registry.
type DeleteAuthServer struct {
	ID string `json:"id"`
}

// TrustServerKeys adds a registered auth server's CA public keys to the
// cluster's trusted sets (keys already there are left alone): proxies and
// nodes learn them from the watch stream, users with their next login.
type TrustServerKeys struct {
	ID string `json:"id"`
}

// Encode builds a command from its type and body.
func Encode(t Type, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("state: encode command %d: %w", t, err)
	}
	return append([]byte{byte(t)}, b...), nil
}

// TokenError explains why a join token was refused.
type TokenError struct{ Reason string }

func (e *TokenError) Error() string { return e.Reason }

// handler applies one decoded command body to d. It returns a result for
// the caller of Apply and the events to publish.
type handler func(d *Data, body []byte) (any, []Event, error)

// table dispatches command types.
var table = map[Type]handler{
	TypeBootstrap:    typed(applyBootstrap),
	TypeUpsertUser:   typed(applyUpsertUser),
	TypeDeleteUser:   typed(applyDeleteUser),
	TypeUpsertRole:   typed(applyUpsertRole),
	TypeDeleteRole:   typed(applyDeleteRole),
	TypeCreateToken:  typed(applyCreateToken),
	TypeDeleteToken:  typed(applyDeleteToken),
	TypeConsumeToken: typed(applyConsumeToken),
	TypeUpsertNode:   typed(applyUpsertNode),
	TypeDeleteNode:   typed(applyDeleteNode),
	TypeSetNodeLabel: typed(applySetNodeLabels),
	TypeSetMeshKeys:  typed(applySetMeshKeys),

	TypeUpsertAuthServer: typed(applyUpsertAuthServer),
	TypeDeleteAuthServer: typed(applyDeleteAuthServer),
	TypeTrustServerKeys:  typed(applyTrustServerKeys),
	TypeNoop:             typed(applyNoop),
	TypeUpsertLock:       typed(applyUpsertLock),
	TypeDeleteLock:       typed(applyDeleteLock),
	TypeRotateCA:         typed(applyRotateCA),
	TypePublishNextKeys:  typed(applyPublishNextKeys),

	TypeCreateAccessRequest: typed(applyCreateAccessRequest),
	TypeReviewAccessRequest: typed(applyReviewAccessRequest),
	TypePruneAccessRequests: typed(applyPruneAccessRequests),
	TypeAddMFADevice:        typed(applyAddMFADevice),
	TypeRemoveMFADevice:     typed(applyRemoveMFADevice),
	TypeUseMFA:              typed(applyUseMFA),
	TypeMFAFailure:          typed(applyMFAFailure),
}

func typed[T any](f func(d *Data, c T) (any, []Event, error)) handler {
	return func(d *Data, body []byte) (any, []Event, error) {
		var c T
		if err := json.Unmarshal(body, &c); err != nil {
			return nil, nil, fmt.Errorf("decode %T: %w", c, err)
		}
		return f(d, c)
	}
}

// ErrUnknownCommand is returned for an unknown command without FlagIgnorable.
var ErrUnknownCommand = errors.New("state: unknown command type: this auth server is older than the cluster's leader; upgrade it")

// Apply applies a command at raft index. The returned error is the command's
// own failure (the user exists, the token is used, ...), which the leader
// reports to the caller; the state is unchanged when it is non-nil.
func (s *Store) Apply(index uint64, cmd []byte) (any, error) {
	if len(cmd) == 0 {
		return nil, errors.New("state: empty command")
	}
	t := Type(cmd[0])
	h, ok := table[t&^FlagIgnorable]
	if !ok {
		var err error
		if t&FlagIgnorable == 0 {
			err = fmt.Errorf("%w (type %d)", ErrUnknownCommand, t)
		}
		s.mu.Lock()
		s.results.put(index, nil, err)
		s.advanceLocked(index)
		s.mu.Unlock()
		return nil, err
	}
	s.mu.Lock()
	// Handlers check everything before they change anything, so a failed
	// command leaves no trace (TestFailedCommandsLeaveNoTrace). They
	// change the maps in place: copying a map of thousands of users per
	// write held replicated writes to 1,600/s. Fields that are not maps
	// are set on work and kept only on success.
	work := s.data
	res, evs, err := h(&work, cmd[1:])
	if err == nil {
		s.data = work
	}
	s.results.put(index, res, err)
	s.advanceLocked(index)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if len(evs) > 0 {
		s.onChange(index, evs)
	}
	return res, nil
}

// cloneMap copies a map. The state is small (thousands of objects): copying
// per write is cheaper than getting rollback wrong.
func cloneMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func event(kind, op, name string, obj any) Event {
	e := Event{Kind: kind, Op: op, Name: name}
	if obj != nil {
		e.Object, _ = json.Marshal(obj)
	}
	return e
}

func applyBootstrap(d *Data, c Bootstrap) (any, []Event, error) {
	if d.Cluster != "" {
		return nil, nil, fmt.Errorf("cluster %s is already bootstrapped", d.Cluster)
	}
	if err := identity.CheckName(c.Cluster); err != nil {
		return nil, nil, fmt.Errorf("cluster name: %w", err)
	}
	d.Cluster = c.Cluster
	d.CAs = c.CAs
	return nil, []Event{event(KindCluster, "put", c.Cluster, nil), event(KindCAs, "put", "", c.CAs)}, nil
}

func applySetMeshKeys(d *Data, c SetMeshKeys) (any, []Event, error) {
	if len(c.Keys) == 0 || len(c.Keys) > MaxMeshKeys {
		return nil, nil, fmt.Errorf("mesh keyring must hold 1 to %d keys, not %d", MaxMeshKeys, len(c.Keys))
	}
	seen := map[string]bool{}
	for i, k := range c.Keys {
		if len(k) != MeshKeyBytes {
			return nil, nil, fmt.Errorf("mesh key %d is %d bytes, want %d", i, len(k), MeshKeyBytes)
		}
		if seen[string(k)] {
			return nil, nil, fmt.Errorf("mesh key %d is listed twice", i)
		}
		seen[string(k)] = true
	}
	if c.Primary < 0 || c.Primary >= len(c.Keys) {
		return nil, nil, fmt.Errorf("mesh primary key %d is not in the keyring of %d", c.Primary, len(c.Keys))
	}
	d.MeshKeys, d.MeshPrimary = cloneKeys(c.Keys), c.Primary
	// Not watched: the keys go to proxies only, over their own endpoint.
	return nil, nil, nil
}

func cloneKeys(ks [][]byte) [][]byte {
	out := make([][]byte, len(ks))
	for i, k := range ks {
		out[i] = append([]byte(nil), k...)
	}
	return out
}

func applyUpsertUser(d *Data, c UpsertUser) (any, []Event, error) {
	if err := identity.CheckName(c.User.Name); err != nil {
		return nil, nil, fmt.Errorf("user: %w", err)
	}
	old, exists := d.Users[c.User.Name]
	if exists && c.Create {
		return nil, nil, fmt.Errorf("user %s already exists", c.User.Name)
	}
	u := c.User
	if u.PasswordHash == "" {
		u.PasswordHash = old.PasswordHash
	}
	u.MFA, u.MFAFailures, u.MFAFailedAt = old.MFA, old.MFAFailures, old.MFAFailedAt // changed only by the MFA commands
	if exists {
		u.Created = old.Created
	}
	d.Users[u.Name] = u
	return nil, nil, nil
}

func applyDeleteUser(d *Data, c DeleteUser) (any, []Event, error) {
	if _, ok := d.Users[c.Name]; !ok {
		return nil, nil, fmt.Errorf("user %s: %w", c.Name, ErrNotFound)
	}
	delete(d.Users, c.Name)
	return nil, nil, nil
}

func applyUpsertRole(d *Data, c UpsertRole) (any, []Event, error) {
	if err := c.Role.Check(); err != nil {
		return nil, nil, err
	}
	d.Roles[c.Role.Name] = c.Role
	return nil, []Event{event(KindRole, "put", c.Role.Name, c.Role)}, nil
}

func applyDeleteRole(d *Data, c DeleteRole) (any, []Event, error) {
	if _, ok := d.Roles[c.Name]; !ok {
		return nil, nil, fmt.Errorf("role %s: %w", c.Name, ErrNotFound)
	}
	delete(d.Roles, c.Name)
	return nil, []Event{event(KindRole, "delete", c.Name, nil)}, nil
}

func applyCreateToken(d *Data, c CreateToken) (any, []Event, error) {
	if c.Token.Kind != identity.KindNode && c.Token.Kind != identity.KindProxy && c.Token.Kind != identity.KindAuth {
		return nil, nil, fmt.Errorf("token kind %q: want node, proxy or auth", c.Token.Kind)
	}
	if c.Token.Kind == identity.KindAuth && c.Token.Name == "" {
		return nil, nil, errors.New("an auth server token must name the server it is for")
	}
	if c.Token.Name != "" {
		if err := identity.CheckName(c.Token.Name); err != nil {
			return nil, nil, fmt.Errorf("token name: %w", err)
		}
	}
	if len(c.Token.Hash) != 64 {
		return nil, nil, errors.New("token hash must be 64 hex digits")
	}
	d.Tokens[c.Token.Hash] = c.Token
	return nil, nil, nil
}

func applyDeleteToken(d *Data, c DeleteToken) (any, []Event, error) {
	var match []string
	for h, t := range d.Tokens {
		if h == c.ID || (len(c.ID) >= 6 && t.ID()[:min(len(c.ID), 12)] == c.ID) {
			match = append(match, h)
		}
	}
	switch len(match) {
	case 0:
		return nil, nil, fmt.Errorf("token %s: %w", c.ID, ErrNotFound)
	case 1:
		delete(d.Tokens, match[0])
		return nil, nil, nil
	default:
		return nil, nil, fmt.Errorf("token id %s is ambiguous: give more digits", c.ID)
	}
}

func applyConsumeToken(d *Data, c ConsumeToken) (any, []Event, error) {
	t, ok := d.Tokens[c.Hash]
	switch {
	case !ok:
		return nil, nil, &TokenError{Reason: "join token is not known to this cluster: create one with jgctl tokens add"}
	case t.UsedBy != "":
		return nil, nil, &TokenError{Reason: fmt.Sprintf("join token %s was already used by %s %s ago: tokens are single-use, create a new one with jgctl tokens add", t.ID(), t.UsedBy, identity.HumanDuration(c.Now.Sub(t.UsedAt)))}
	case !c.Now.Before(t.Expires):
		return nil, nil, &TokenError{Reason: fmt.Sprintf("join token %s expired %s ago: create a new one with jgctl tokens add", t.ID(), identity.HumanDuration(c.Now.Sub(t.Expires)))}
	case t.Kind != c.Kind:
		return nil, nil, &TokenError{Reason: fmt.Sprintf("join token %s is for a %s, not a %s", t.ID(), t.Kind, c.Kind)}
	case t.Name != "" && t.Name != c.Name:
		return nil, nil, &TokenError{Reason: fmt.Sprintf("join token %s is for the %s named %s, not %s", t.ID(), t.Kind, t.Name, c.Name)}
	}
	for h, old := range d.Tokens { // garbage-collect old tokens
		if c.Now.Sub(old.Expires) > 24*time.Hour {
			delete(d.Tokens, h)
		}
	}
	t.UsedBy, t.UsedAt = c.Name, c.Now
	d.Tokens[c.Hash] = t
	return t, nil, nil
}

func applyUpsertNode(d *Data, c UpsertNode) (any, []Event, error) {
	if err := identity.CheckName(c.Node.ID); err != nil {
		return nil, nil, fmt.Errorf("node: %w", err)
	}
	d.Nodes[c.Node.ID] = c.Node
	return nil, []Event{event(KindNode, "put", c.Node.ID, c.Node)}, nil
}

func applyDeleteNode(d *Data, c DeleteNode) (any, []Event, error) {
	if _, ok := d.Nodes[c.ID]; !ok {
		return nil, nil, fmt.Errorf("node %s: %w", c.ID, ErrNotFound)
	}
	delete(d.Nodes, c.ID)
	return nil, []Event{event(KindNode, "delete", c.ID, nil)}, nil
}

func applySetNodeLabels(d *Data, c SetNodeLabels) (any, []Event, error) {
	n, ok := d.Nodes[c.ID]
	if !ok {
		return nil, nil, fmt.Errorf("node %s: %w", c.ID, ErrNotFound)
	}
	n.Labels = c.Labels
	d.Nodes[c.ID] = n
	return nil, []Event{event(KindNode, "put", n.ID, n)}, nil
}

func applyUpsertAuthServer(d *Data, c UpsertAuthServer) (any, []Event, error) {
	if err := identity.CheckName(c.Server.ID); err != nil {
		return nil, nil, fmt.Errorf("auth server id: %w", err)
	}
	if c.Server.APIAddr == "" || c.Server.RaftAddr == "" {
		return nil, nil, fmt.Errorf("auth server %s: api and raft addresses are required", c.Server.ID)
	}
	d.AuthServers[c.Server.ID] = c.Server
	return nil, []Event{event(KindAuthServer, "put", c.Server.ID, c.Server)}, nil
}

func applyDeleteAuthServer(d *Data, c DeleteAuthServer) (any, []Event, error) {
	if _, ok := d.AuthServers[c.ID]; !ok {
		return nil, nil, fmt.Errorf("auth server %s: %w", c.ID, ErrNotFound)
	}
	delete(d.AuthServers, c.ID)
	return nil, []Event{event(KindAuthServer, "delete", c.ID, nil)}, nil
}

func applyTrustServerKeys(d *Data, c TrustServerKeys) (any, []Event, error) {
	a, ok := d.AuthServers[c.ID]
	if !ok {
		return nil, nil, fmt.Errorf("auth server %s: %w", c.ID, ErrNotFound)
	}
	if a.Keys.UserSSH == "" || a.Keys.HostSSH == "" || len(a.Keys.TLS) == 0 {
		return nil, nil, fmt.Errorf("auth server %s registered no CA keys", c.ID)
	}
	cas := CAs{UserSSH: slices.Clone(d.CAs.UserSSH), HostSSH: slices.Clone(d.CAs.HostSSH), TLS: cloneKeys(d.CAs.TLS)}
	changed := false
	addLine := func(set *[]string, k string) {
		if !slices.ContainsFunc(*set, func(l string) bool { return strings.TrimSpace(l) == strings.TrimSpace(k) }) {
			*set = append(*set, k)
			changed = true
		}
	}
	addLine(&cas.UserSSH, a.Keys.UserSSH)
	addLine(&cas.HostSSH, a.Keys.HostSSH)
	if !slices.ContainsFunc(cas.TLS, func(der []byte) bool { return bytes.Equal(der, a.Keys.TLS) }) {
		cas.TLS = append(cas.TLS, slices.Clone(a.Keys.TLS))
		changed = true
	}
	if !changed {
		return nil, nil, nil
	}
	d.CAs = cas
	return nil, []Event{event(KindCAs, "put", "", cas)}, nil
}

// Noop is the body of TypeNoop.
type Noop struct{}

func applyNoop(*Data, Noop) (any, []Event, error) { return nil, nil, nil }
