// Package authapi is the auth server's API: an HTTPS/JSON service over
// mutual TLS, its client, and the watch streams that feed every proxy's and
// node's cache.
//
// # Who may call what
//
// Callers are identified by their TLS client certificate (see
// auth/identity); requests without one may only join (the join token is
// the credential) and ping.
//
//	POST /v1/login       proxy        password login on behalf of a user
//	POST /v1/join        anyone       redeem a join token (node or proxy)
//	GET  /v1/watch       proxy, node, admin   NDJSON stream: snapshot, then events
//	POST /v1/presence    proxy        which nodes' tunnels this proxy holds
//	GET  /v1/nodes       admin, proxy inventory with tunnel state
//	GET  /v1/status      admin, proxy cluster status
//	/v1/users, /v1/roles, /v1/tokens  admin  list, create, delete
//
// Proxies relay /v1/watch to nodes from their own cache, so thousands of
// nodes never load the auth server (see Hub).
//
// # Watch stream
//
// GET /v1/watch answers with a stream of newline-delimited JSON
// WatchMessages: first a "snapshot" with cluster name, CA keys, roles and
// nodes, then "event" messages as raft applies changes, and a "heartbeat"
// every 10 s so a dead stream is noticed within 30 s. A subscriber that
// falls behind is disconnected and gets a fresh snapshot when it returns.
package authapi

import (
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// Version is the API version this package speaks.
const Version = "1"

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// LoginRequest asks for user certificates.
type LoginRequest struct {
	User      string `json:"user"`
	Password  string `json:"password"`
	SSHPublic string `json:"ssh_public"` // authorized_keys format
	TLSPublic []byte `json:"tls_public"` // PKIX DER
	TTL       string `json:"ttl,omitempty"`
	// ClientAddr is the user's address as the proxy saw it (for audit).
	ClientAddr string `json:"client_addr,omitempty"`
}

// Credentials are issued certificates and the CAs to trust.
type Credentials struct {
	Cluster string    `json:"cluster"`
	Name    string    `json:"name"`
	Roles   []string  `json:"roles,omitempty"`
	Logins  []string  `json:"logins,omitempty"`
	SSHCert string    `json:"ssh_cert"` // authorized_keys format
	TLSCert []byte    `json:"tls_cert"` // PEM
	Expires time.Time `json:"expires"`
	CAs     CABundle  `json:"cas"`
	// RequireMFA: the roles need a TOTP code for every session (jg asks
	// for it before it connects).
	RequireMFA bool `json:"require_mfa,omitempty"`
	// Requests are the access requests whose roles the certificates carry.
	Requests []string `json:"requests,omitempty"`
}

// CABundle holds the trusted CA keys in their usual text forms.
type CABundle struct {
	UserSSH []string `json:"user_ssh"` // authorized_keys lines
	HostSSH []string `json:"host_ssh"` // authorized_keys lines
	TLS     []byte   `json:"tls"`      // PEM
}

// JoinRequest redeems a join token.
type JoinRequest struct {
	Token     string            `json:"token"`
	Kind      identity.Kind     `json:"kind"` // node or proxy
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	SSHPublic string            `json:"ssh_public,omitempty"` // nodes: host key
	TLSPublic []byte            `json:"tls_public"`
	// DNSNames and IPs go into a proxy's server certificate.
	DNSNames []string `json:"dns_names,omitempty"`
	IPs      []string `json:"ips,omitempty"`
	// Auth servers: where the new server serves its API and raft, and the
	// public halves of the CA keys in its own keystore.
	Auth *AuthJoin `json:"auth,omitempty"`
}

// AuthJoin is the auth-server part of a JoinRequest.
type AuthJoin struct {
	APIAddr  string           `json:"api_addr"`
	RaftAddr string           `json:"raft_addr"`
	Region   string           `json:"region,omitempty"`
	Keys     state.ServerKeys `json:"keys"`
	Backend  string           `json:"backend,omitempty"`
}

// NodeStatus is one node in `jgctl nodes ls` and `jg ls`.
type NodeStatus struct {
	ID      string            `json:"id"`
	Labels  map[string]string `json:"labels,omitempty"`
	Joined  time.Time         `json:"joined"`
	Online  bool              `json:"online"`
	Proxies []string          `json:"proxies,omitempty"` // proxies holding a tunnel
	Since   time.Time         `json:"since,omitzero"`    // tunnel up since (earliest)
	// DiagAddr is where the node serves /metrics, as a proxy holding its
	// tunnel last heard (for `jgctl targets`).
	DiagAddr string `json:"diag_addr,omitempty"`
}

// PresenceReport is a proxy's full list of tunnels it holds.
type PresenceReport struct {
	Proxy string            `json:"proxy"`
	Nodes []NodePresence    `json:"nodes"`
	TTL   identity.Duration `json:"ttl"` // how long the report stays valid
	// Mesh is the proxy's own description and its view of the mesh; absent
	// from proxies that run without a mesh.
	Mesh *ProxyMesh `json:"mesh,omitempty"`
}

// ProxyMesh is what a proxy tells auth about itself and its peers, for
// `jgctl proxies ls`.
type ProxyMesh struct {
	Region     string     `json:"region,omitempty"`
	Version    string     `json:"version,omitempty"`
	State      string     `json:"state,omitempty"` // active or draining
	PublicAddr string     `json:"public_addr,omitempty"`
	PeerAddr   string     `json:"peer_addr,omitempty"`
	GossipAddr string     `json:"gossip_addr,omitempty"`
	Sessions   int        `json:"sessions"`
	Peers      []PeerView `json:"peers,omitempty"`
	// KeyIDs name the gossip keys the proxy holds, primary first (a hash
	// prefix, not the key), so a rotation can wait until every proxy has
	// the new key.
	KeyIDs []string `json:"key_ids,omitempty"`
	// Drain is the drain in progress; nil when the proxy is not draining.
	Drain *DrainStatus `json:"drain,omitempty"`
	// DiagAddr is where the proxy serves /metrics, /healthz, /readyz and
	// the mesh page ("" when it does not), for `jgctl targets`.
	DiagAddr string `json:"diag_addr,omitempty"`
}

// DrainRequest asks a proxy to drain (POST /v1/drain on the proxy, admins
// only): leave the mesh for maintenance without dropping sessions.
type DrainRequest struct {
	// Timeout bounds the drain: when it passes, the proxy exits whatever
	// is left. Zero: the proxy's default (5 minutes).
	Timeout identity.Duration `json:"timeout,omitempty"`
	Reason  string            `json:"reason,omitempty"`
}

// DrainStatus is a proxy's drain progress (GET /v1/drain on the proxy, and
// in presence reports for jgctl proxies ls).
type DrainStatus struct {
	Started  time.Time `json:"started"`
	Deadline time.Time `json:"deadline"`
	Reason   string    `json:"reason,omitempty"`
	// Phase: "rehoming" (agents move their tunnels to other proxies),
	// "moving" (resumable clients are asked to move), "waiting" (for what
	// is left to end or the deadline), "done" (the proxy is exiting).
	Phase string `json:"phase"`
	// Sessions and Tunnels are what the proxy still forwards and holds;
	// Resumable is how many of the sessions can move on their own.
	Sessions  int `json:"sessions"`
	Resumable int `json:"resumable"`
	Tunnels   int `json:"tunnels"`
	// Moved counts clients asked to move; Agents, agents told to move
	// their tunnels.
	Moved  int `json:"moved"`
	Agents int `json:"agents"`
}

// PeerView is another proxy as one proxy sees it.
type PeerView struct {
	ID     string        `json:"id"`
	Health string        `json:"health"` // alive, suspect, dead, left
	RTT    time.Duration `json:"rtt,omitempty"`
}

// MeshProxy is a proxy of the mesh as any proxy describes it to nodes and
// users (GET /v1/mesh/proxies on a proxy): where to reach it and whether it
// is taking new work.
type MeshProxy struct {
	ID         string  `json:"id"`
	Region     string  `json:"region,omitempty"`
	PublicAddr string  `json:"public_addr"`
	Lat        float64 `json:"lat,omitempty"`
	Lon        float64 `json:"lon,omitempty"`
	HasCoords  bool    `json:"has_coords,omitempty"`
	State      string  `json:"state"`  // active or draining
	Health     string  `json:"health"` // alive or suspect (dead proxies are left out)
}

// MeshKeyOp changes the gossip keyring one step of a rotation at a time:
// "add" a new random key (not yet used to encrypt), "promote" a key to
// primary, "remove" a key that is not the primary.
type MeshKeyOp struct {
	Op    string `json:"op"`
	KeyID string `json:"key_id,omitempty"` // for promote and remove
}

// MeshKeyring describes the keyring without the keys.
type MeshKeyring struct {
	KeyIDs []string `json:"key_ids"` // primary first, then in creation order
	Newest string   `json:"newest"`  // the most recently added key
}

// MeshKeys is the proxies' gossip keyring, primary first.
type MeshKeys struct {
	Keys [][]byte `json:"keys"`
}

// NodePresence is one tunnel held by a proxy.
type NodePresence struct {
	ID     string            `json:"id"`
	Labels map[string]string `json:"labels,omitempty"`
	Since  time.Time         `json:"since"`
	// DiagAddr is where the node serves /metrics, if it said.
	DiagAddr string `json:"diag_addr,omitempty"`
}

// Status is the cluster status.
type Status struct {
	Cluster    string       `json:"cluster"`
	AuthServer string       `json:"auth_server"`
	Version    string       `json:"version"`
	Raft       any          `json:"raft"`
	Users      int          `json:"users"`
	Roles      int          `json:"roles"`
	Nodes      int          `json:"nodes"`
	Online     int          `json:"online_nodes"`
	Proxies    []ProxyState `json:"proxies"`
	CAPins     []string     `json:"ca_pins"`
}

// ProxyState is a proxy as the auth server last heard from it.
type ProxyState struct {
	ID       string     `json:"id"`
	LastSeen time.Time  `json:"last_seen"`
	Tunnels  int        `json:"tunnels"`
	Mesh     *ProxyMesh `json:"mesh,omitempty"`
}

// CreateUserRequest adds a user.
type CreateUserRequest struct {
	Name     string   `json:"name"`
	Roles    []string `json:"roles"`
	Password string   `json:"password"`
}

// UpsertUserRequest creates or updates a user (PUT /v1/users/{name}): its
// roles, traits and origin. A password already set is kept; a new user has
// none (it logs in through SSO, or after jgctl users passwd).
type UpsertUserRequest struct {
	Name   string              `json:"name"`
	Roles  []string            `json:"roles"`
	Traits map[string][]string `json:"traits,omitempty"`
	Origin string              `json:"origin,omitempty"`
}

// CreateTokenRequest creates a join token.
type CreateTokenRequest struct {
	Kind   identity.Kind     `json:"kind"`
	TTL    identity.Duration `json:"ttl"`
	Labels map[string]string `json:"labels,omitempty"`
	// Name binds the token to one name: only a proxy (node, auth server)
	// of that name can join with it. Required for auth servers.
	Name string `json:"name,omitempty"`
	// Voter (auth tokens): the server joins raft as a voter.
	Voter bool `json:"voter,omitempty"`
	// Secret, if set, is the token's secret (at least 32 characters, no
	// spaces) instead of a random one: jgctl apply takes it from a
	// secret store so that the same token can be declared in git.
	Secret string `json:"secret,omitempty"`
	// Origin: see state.OriginApply.
	Origin string `json:"origin,omitempty"`
}

// CreateTokenResponse returns the secret once.
type CreateTokenResponse struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
	CAPin   string    `json:"ca_pin"`
}

// WatchMessage is one line of a watch stream.
type WatchMessage struct {
	Type     string         `json:"type"` // "snapshot", "event", "heartbeat", "resume"
	Index    uint64         `json:"index"`
	Snapshot *WatchSnapshot `json:"snapshot,omitempty"`
	Event    *state.Event   `json:"event,omitempty"`
}

// WatchSnapshot is everything a cache holds.
type WatchSnapshot struct {
	Cluster string          `json:"cluster"`
	CAs     state.CAs       `json:"cas"`
	Roles   []identity.Role `json:"roles"`
	Nodes   []state.Node    `json:"nodes"`
	Locks   []identity.Lock `json:"locks,omitempty"`
}
