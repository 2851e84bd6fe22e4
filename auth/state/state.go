// Package state is the auth server's replicated state machine: users, roles,
// join tokens, node inventory, cluster identity and CA public keys.
//
// It is pure: commands are applied to in-memory state, with no I/O and no
// clock (every time a command needs travels inside the command). raft (see
// auth/raftnode) orders the commands; this package applies them.
//
// # Commands
//
// A command is one type byte followed by a JSON body. Types are dispatched
// from a table. The high bit of the type byte (FlagIgnorable) marks a command
// an older server may skip if it does not know the type: during a rolling
// upgrade, a newer leader can then introduce optional commands without
// stopping older followers. An unknown type without the flag stops the
// follower's apply with an error, because skipping it would diverge state.
//
// # Watches
//
// Every applied change produces Events (kind, op, object) for the watch
// streams that feed proxy and node caches. The FSM hands them to an
// OnChange callback; it never blocks on subscribers.
//
// # Snapshots
//
// Snapshot serialises the state under a read lock (cheap: the state is small
// and JSON is fast), Persist writes the bytes, Restore swaps in new state
// under the write lock.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

// User is a Jumpgate user.
type User struct {
	Name         string    `json:"name"`
	Roles        []string  `json:"roles"`
	PasswordHash string    `json:"password_hash,omitempty"` // argon2id, PHC string format
	Created      time.Time `json:"created"`
	// Traits are the user's own attributes (logins, teams, ...) that
	// role templates such as {{internal.logins}} read. SSO users bring
	// theirs from the provider's claims at each login ({{external.*}}).
	Traits map[string][]string `json:"traits,omitempty"`
	// Origin says what manages the user: OriginApply for jgctl apply
	// (whose --prune may delete it), "" for everything else.
	Origin string `json:"origin,omitempty"`
	// MFA are the user's TOTP devices (secrets: never returned by the API).
	MFA []MFADevice `json:"mfa,omitempty"`
	// MFAFailures counts wrong TOTP codes since the last accepted one
	// (within an hour of each other), at MFAFailedAt.
	MFAFailures int       `json:"mfa_failures,omitempty"`
	MFAFailedAt time.Time `json:"mfa_failed_at,omitzero"`
}

// OriginApply marks users, roles and tokens created by jgctl apply. Only
// those are removed by jgctl apply --prune.
const OriginApply = "jgctl-apply"

// Token is a one-time join token. Only the SHA-256 of the secret is stored.
type Token struct {
	Hash string        `json:"hash"` // hex SHA-256 of the secret
	Kind identity.Kind `json:"kind"` // node, proxy or auth
	// Name, when set, is the only name the token can join as: a proxy
	// token for proxy-eu-1 cannot be used to join as proxy-us-1 (and
	// take its place in the mesh). Auth server tokens always name one.
	Name string `json:"name,omitempty"`
	// Voter (auth tokens): the server asks to join raft as a voter
	// rather than as a non-voter.
	Voter   bool              `json:"voter,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Expires time.Time         `json:"expires"`
	Created time.Time         `json:"created"`
	UsedBy  string            `json:"used_by,omitempty"` // who joined with it
	UsedAt  time.Time         `json:"used_at,omitzero"`
	Origin  string            `json:"origin,omitempty"` // see OriginApply
}

// ID is the short public name of a token: the first 12 hex digits of its hash.
func (t Token) ID() string {
	if len(t.Hash) < 12 {
		return t.Hash
	}
	return t.Hash[:12]
}

// Node is a node in the inventory.
type Node struct {
	ID      string            `json:"id"`
	Labels  map[string]string `json:"labels,omitempty"`
	HostKey string            `json:"host_key"` // authorized_keys format
	Joined  time.Time         `json:"joined"`
}

// CAs holds the trusted public keys of each certificate authority.
type CAs struct {
	UserSSH []string `json:"user_ssh"` // authorized_keys format
	HostSSH []string `json:"host_ssh"` // authorized_keys format
	TLS     [][]byte `json:"tls"`      // DER certificates
	// Phase is the CA rotation's phase ("" outside a rotation). It is
	// here so that every phase change reaches proxies and nodes as a CA
	// event: they renew their certificates on it.
	Phase string `json:"phase,omitempty"`
}

// AuthServer is one auth server as the cluster knows it: where it serves,
// and its CA public keys (trusted or not: see CAs for the trusted sets).
type AuthServer struct {
	ID       string `json:"id"`
	APIAddr  string `json:"api_addr"`  // host:port of its auth API
	RaftAddr string `json:"raft_addr"` // host:port of its raft transport
	Region   string `json:"region,omitempty"`
	// Keys are the public halves of the CA keys in its own keystore.
	Keys    ServerKeys `json:"keys"`
	Backend string     `json:"backend,omitempty"` // keystore backend: software, pkcs11
	Joined  time.Time  `json:"joined"`
	// SignsServerCerts: this server signs certificates that clients check
	// against the CA bundle they cached at login (node host certificates,
	// proxy and auth server TLS certificates). The server that created
	// the cluster does; a server that joined does not until a CA rotation
	// has given every client its keys. Certificates that only proxies,
	// nodes and auth servers check (user certificates), whose trusted
	// keys follow the watch stream within a second, any server with
	// trusted keys signs.
	SignsServerCerts bool `json:"signs_server_certs,omitempty"`
	// Generation is the key generation of Keys; NextKeys (of generation
	// Rotation.Next) are the keys it made for a rotation under way.
	Generation int        `json:"generation,omitempty"`
	NextKeys   ServerKeys `json:"next_keys,omitzero"`
	// Voter: the server was added to be a voter. It joins raft as a
	// non-voter and is promoted once it has caught up, so that a new
	// voter that cannot answer yet never costs the cluster its quorum.
	Voter bool `json:"voter,omitempty"`
}

// ServerKeys are one auth server's CA public keys.
type ServerKeys struct {
	UserSSH string `json:"user_ssh"` // authorized_keys format
	HostSSH string `json:"host_ssh"` // authorized_keys format
	TLS     []byte `json:"tls"`      // DER self-signed CA certificate
}

// Data is the whole replicated state. Callers get copies, never the live maps.
type Data struct {
	Cluster string                   `json:"cluster"`
	CAs     CAs                      `json:"cas"`
	Users   map[string]User          `json:"users"`
	Roles   map[string]identity.Role `json:"roles"`
	Tokens  map[string]Token         `json:"tokens"` // by hash
	Nodes   map[string]Node          `json:"nodes"`
	// AuthServers is the auth server registry, by id.
	AuthServers map[string]AuthServer `json:"auth_servers,omitempty"`
	// Locks by id.
	Locks map[string]identity.Lock `json:"locks,omitempty"`
	// Rotation is the CA rotation's state.
	Rotation Rotation `json:"rotation,omitzero"`
	// MeshKeys is the proxies' gossip keyring in creation order, and
	// MeshPrimary the index of the key used to encrypt. Secret: it never
	// appears in watch events.
	MeshKeys    [][]byte `json:"mesh_keys,omitempty"`
	MeshPrimary int      `json:"mesh_primary,omitempty"`
	// Requests are access requests by id.
	Requests map[string]AccessRequest `json:"access_requests,omitempty"`
}

func newData() Data {
	return Data{Users: map[string]User{}, Roles: map[string]identity.Role{}, Tokens: map[string]Token{}, Nodes: map[string]Node{}, AuthServers: map[string]AuthServer{}, Locks: map[string]identity.Lock{}, Requests: map[string]AccessRequest{}}
}

// Kinds of watched objects.
const (
	KindRole    = "role"
	KindNode    = "node"
	KindCAs     = "cas"
	KindCluster = "cluster"
	// KindAuthServer: the auth server registry (addresses and public keys
	// only), so proxies learn every auth server they can fail over to.
	KindAuthServer = "auth_server"
)

// Event is a change visible to watchers. Users and tokens are not watched:
// only auth servers need them.
type Event struct {
	Kind   string          `json:"kind"`
	Op     string          `json:"op"` // "put" or "delete"
	Name   string          `json:"name,omitempty"`
	Object json.RawMessage `json:"object,omitempty"`
}

// Store is the state machine. It is safe for concurrent use.
type Store struct {
	onChange func(index uint64, evs []Event)

	mu      sync.RWMutex // guards following
	data    Data
	index   uint64 // raft index of the last applied command
	results resultRing
	applied chan struct{} // closed and replaced at each apply
}

// New returns an empty store. onChange, if non-nil, is called after each
// applied command that changed watched objects, with the lock released.
func New(onChange func(index uint64, evs []Event)) *Store {
	if onChange == nil {
		onChange = func(uint64, []Event) {}
	}
	return &Store{data: newData(), onChange: onChange, applied: make(chan struct{})}
}

// Index is the raft index of the last applied command.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// AuthServer returns one auth server of the registry.
func (s *Store) AuthServer(id string) (AuthServer, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.data.AuthServers[id]
	return a, ok
}

// AuthServers returns the auth server registry sorted by id.
func (s *Store) AuthServers() []AuthServer {
	s.mu.RLock()
	out := make([]AuthServer, 0, len(s.data.AuthServers))
	for _, a := range s.data.AuthServers {
		out = append(out, a)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Cluster returns the cluster name, "" before bootstrap.
func (s *Store) Cluster() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.data.Cluster
}

// CAs returns the trusted CA keys.
func (s *Store) CAs() CAs {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.data.CAs
	return CAs{UserSSH: append([]string(nil), c.UserSSH...), HostSSH: append([]string(nil), c.HostSSH...), TLS: append([][]byte(nil), c.TLS...), Phase: c.Phase}
}

// MeshKeys returns a copy of the proxies' gossip keyring, primary first,
// the others in creation order.
func (s *Store) MeshKeys() [][]byte {
	keys, primary := s.MeshKeyring()
	if len(keys) == 0 {
		return nil
	}
	out := [][]byte{keys[primary]}
	for i, k := range keys {
		if i != primary {
			out = append(out, k)
		}
	}
	return out
}

// MeshKeyring returns a copy of the gossip keyring in creation order (the
// newest last) and the index of the primary.
func (s *Store) MeshKeyring() ([][]byte, int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return cloneKeys(s.data.MeshKeys), s.data.MeshPrimary
}

// User returns a user.
func (s *Store) User(name string) (User, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.data.Users[name]
	return u, ok
}

// Users returns all users sorted by name, without password hashes.
func (s *Store) Users() []User {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]User, 0, len(s.data.Users))
	for _, u := range s.data.Users {
		u.PasswordHash = ""
		u.MFA = redactMFA(u.MFA)
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Role returns a role; it is an identity.RoleGetter.
func (s *Store) Role(name string) (identity.Role, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.data.Roles[name]
	return r, ok
}

// Roles returns all roles sorted by name.
func (s *Store) Roles() []identity.Role {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]identity.Role, 0, len(s.data.Roles))
	for _, r := range s.data.Roles {
		out = append(out, r)
	}
	identity.SortRoles(out)
	return out
}

// Token returns a token by hash.
func (s *Store) Token(hash string) (Token, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.data.Tokens[hash]
	return t, ok
}

// Tokens returns all tokens, newest first.
func (s *Store) Tokens() []Token {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Token, 0, len(s.data.Tokens))
	for _, t := range s.data.Tokens {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// Node returns a node.
func (s *Store) Node(id string) (Node, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.data.Nodes[id]
	return n, ok
}

// Nodes returns all nodes sorted by id.
func (s *Store) Nodes() []Node {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Node, 0, len(s.data.Nodes))
	for _, n := range s.data.Nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Snapshot returns the serialised state and its index.
func (s *Store) Snapshot() ([]byte, uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, err := json.Marshal(snapshot{Version: 1, Index: s.index, Data: s.data})
	return b, s.index, err
}

type snapshot struct {
	Version int    `json:"version"`
	Index   uint64 `json:"index"`
	Data    Data   `json:"data"`
}

// Restore replaces the state with a snapshot. Watchers get one event per
// watched kind telling them to reload (op "reset").
func (s *Store) Restore(b []byte) error {
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("state: restore: %w", err)
	}
	if snap.Version != 1 {
		return fmt.Errorf("state: restore: snapshot version %d is not supported by this version of Jumpgate", snap.Version)
	}
	d := newData()
	mergeData(&d, snap.Data)
	s.mu.Lock()
	s.data = d
	s.results = resultRing{}
	s.advanceLocked(snap.Index)
	s.mu.Unlock()
	s.onChange(snap.Index, []Event{{Kind: KindCluster, Op: "reset"}})
	return nil
}

// mergeData copies src into dst, keeping dst's non-nil maps when src has nil ones.
func mergeData(dst *Data, src Data) {
	dst.Cluster, dst.CAs, dst.MeshKeys, dst.MeshPrimary, dst.Rotation = src.Cluster, src.CAs, src.MeshKeys, src.MeshPrimary, src.Rotation
	if src.Users != nil {
		dst.Users = src.Users
	}
	if src.Roles != nil {
		dst.Roles = src.Roles
	}
	if src.Tokens != nil {
		dst.Tokens = src.Tokens
	}
	if src.Nodes != nil {
		dst.Nodes = src.Nodes
	}
	if src.AuthServers != nil {
		dst.AuthServers = src.AuthServers
	}
	if src.Locks != nil {
		dst.Locks = src.Locks
	}
	if src.Requests != nil {
		dst.Requests = src.Requests
	}
}

// ErrNotFound is returned by commands on missing objects.
var ErrNotFound = errors.New("not found")
