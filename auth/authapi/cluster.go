package authapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/raftnode"
	"jumpgate.dev/jumpgate/auth/state"
)

// Raft is what the API needs from this auth server's raft membership
// (*raftnode.Node). Kept as an interface so the API's tests can run
// without raft.
type Raft interface {
	ApplyLocal(cmd []byte) (uint64, error)
	IsLeader() bool
	Leader() (id, addr string)
	AddNonvoter(id, addr string) error
	AddVoter(id, addr string) error
	Remove(id string) error
	Servers() ([]raftnode.Server, error)
	LastContact() time.Time
	Stats() raftnode.Stats
}

var _ Raft = (*raftnode.Node)(nil)

// Roles of an auth server in `jgctl auth ls`.
const (
	AuthRoleLeader    = "leader"
	AuthRoleVoter     = "voter"
	AuthRoleNonvoter  = "non-voter"
	AuthRoleNotMember = "not a member"
)

// AuthServerStatus is one auth server as `jgctl auth ls` shows it.
type AuthServerStatus struct {
	ID       string `json:"id"`
	APIAddr  string `json:"api_addr,omitempty"`
	RaftAddr string `json:"raft_addr,omitempty"`
	Region   string `json:"region,omitempty"`
	// Role: leader, voter, non-voter, or "not a member" (registered but
	// not in raft's configuration).
	Role    string `json:"role"`
	Version string `json:"version,omitempty"`
	// Leader is who this server believes leads.
	Leader string `json:"leader,omitempty"`
	// LastContactMS: milliseconds since this server last heard from the
	// leader; 0 on the leader, -1 when it never has.
	LastContactMS int64  `json:"last_contact_ms"`
	AppliedIndex  uint64 `json:"applied_index"`
	LastIndex     uint64 `json:"last_index"`
	Keystore      string `json:"keystore,omitempty"`
	// DiagAddr is where it serves /metrics, /healthz and /readyz.
	DiagAddr string `json:"diag_addr,omitempty"`
	// KeysTrusted: the cluster's CAs include this server's keys, so it
	// signs user certificates.
	KeysTrusted bool `json:"keys_trusted"`
	// SignsServerCerts: it also signs node, proxy and auth server
	// certificates (see state.AuthServer).
	SignsServerCerts bool `json:"signs_server_certs"`
	// Error: the server could not be asked (down, partitioned).
	Error string `json:"error,omitempty"`
}

// MembershipOp is a `jgctl auth add/promote/remove`.
type MembershipOp struct {
	Op string `json:"op"` // add, promote, remove
	ID string `json:"id"`
	// add: the new server joins as a voter (default: non-voter).
	Voter bool              `json:"voter,omitempty"`
	TTL   identity.Duration `json:"ttl,omitempty"`
	// internal (leader-forwarded add-member): its raft address.
	RaftAddr string `json:"raft_addr,omitempty"`
}

// applyResponse is the leader's answer to an internal apply.
type applyResponse struct {
	Index uint64 `json:"index"`
}

var errNoLeader = errors.New("the auth cluster has no leader at the moment")

// keysTrusted reports whether this server's CA keys are in the cluster's
// trusted sets.
func (s *Server) keysTrusted() bool {
	cas := s.cfg.Store.CAs()
	for _, a := range []*ca.Authority{s.signer(false), s.signer(true)} {
		tlsOK := false
		for _, der := range cas.TLS {
			if bytes.Equal(der, a.TLSCACert()) {
				tlsOK = true
			}
		}
		if !tlsOK || !containsKey(cas.UserSSH, a.UserCAPublic()) || !containsKey(cas.HostSSH, a.HostCAPublic()) {
			return false
		}
	}
	return true
}

func containsKey(lines []string, k ssh.PublicKey) bool {
	want := k.Marshal()
	for _, l := range lines {
		if pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l)); err == nil && bytes.Equal(pk.Marshal(), want) {
			return true
		}
	}
	return false
}

// Self returns this server's status.
func (s *Server) Self() AuthServerStatus {
	st := AuthServerStatus{ID: s.cfg.ID, Version: s.cfg.Version, Keystore: s.cfg.Keystore, DiagAddr: s.cfg.DiagAddr, KeysTrusted: s.keysTrusted(), SignsServerCerts: s.signsServerCerts(), Role: AuthRoleNotMember, LastContactMS: -1}
	if a, ok := s.cfg.Store.AuthServer(s.cfg.ID); ok {
		st.APIAddr, st.RaftAddr, st.Region = a.APIAddr, a.RaftAddr, a.Region
	}
	if s.cfg.Raft == nil {
		st.Role, st.LastContactMS, st.AppliedIndex = AuthRoleLeader, 0, s.cfg.Store.Index()
		return st
	}
	rs := s.cfg.Raft.Stats()
	st.AppliedIndex, st.LastIndex, st.Leader = rs.AppliedIndex, rs.LastIndex, rs.Leader
	if servers, err := s.cfg.Raft.Servers(); err == nil {
		for _, m := range servers {
			if m.ID == s.cfg.ID {
				st.Role = AuthRoleNonvoter
				if m.Role == raftnode.RoleVoter {
					st.Role = AuthRoleVoter
				}
			}
		}
	}
	if s.cfg.Raft.IsLeader() {
		st.Role, st.LastContactMS = AuthRoleLeader, 0
	} else if lc := s.cfg.Raft.LastContact(); !lc.IsZero() {
		st.LastContactMS = s.cfg.Now().Sub(lc).Milliseconds()
	}
	return st
}

func (s *Server) getSelf(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.Self())
}

// listAuthServers answers `jgctl auth ls`: every server in raft's
// configuration or the registry, each asked for its own status.
func (s *Server) listAuthServers(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.AuthServers(r.Context()))
}

// AuthServers returns the status of every auth server, asking each one
// (this one answers for itself) with a short timeout.
func (s *Server) AuthServers(ctx context.Context) []AuthServerStatus {
	ids := map[string]bool{}
	raftAddr := map[string]string{}
	if s.cfg.Raft != nil {
		if servers, err := s.cfg.Raft.Servers(); err == nil {
			for _, m := range servers {
				ids[m.ID] = true
				raftAddr[m.ID] = m.Addr
			}
		}
	}
	for _, a := range s.cfg.Store.AuthServers() {
		ids[a.ID] = true
	}
	ids[s.cfg.ID] = true
	out := make([]AuthServerStatus, 0, len(ids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for id := range ids {
		if id == s.cfg.ID {
			out = append(out, s.Self())
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s.askPeer(ctx, id)
			if st.RaftAddr == "" {
				st.RaftAddr = raftAddr[id]
			}
			mu.Lock()
			out = append(out, st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Server) askPeer(ctx context.Context, id string) AuthServerStatus {
	st := AuthServerStatus{ID: id, Role: AuthRoleNotMember, LastContactMS: -1}
	a, ok := s.cfg.Store.AuthServer(id)
	if ok {
		st.APIAddr, st.RaftAddr, st.Region = a.APIAddr, a.RaftAddr, a.Region
	}
	if !ok || s.cfg.PeerClient == nil {
		st.Error = "not in the auth server registry: its API address is unknown"
		return st
	}
	c, err := s.peerClient(a.APIAddr)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	var got AuthServerStatus
	if err := c.do(ctx, http.MethodGet, "/v1/auth/self", nil, &got); err != nil {
		st.Error = err.Error()
		return st
	}
	if got.ID != id {
		st.Error = fmt.Sprintf("the server at %s answered as %s", a.APIAddr, got.ID)
		return st
	}
	return got
}

// membership handles `jgctl auth add/promote/remove`.
func (s *Server) membership(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var op MembershipOp
	if !readJSON(w, r, &op) {
		return
	}
	if err := identity.CheckName(op.ID); err != nil {
		WriteError(w, http.StatusBadRequest, "auth server id: "+err.Error())
		return
	}
	switch op.Op {
	case "add":
		// An auth server joins with a one-time token bound to its id; the
		// token carries the suffrage it gets.
		s.createTokenFor(w, caller, CreateTokenRequest{Kind: identity.KindAuth, Name: op.ID, Voter: op.Voter, TTL: op.TTL})
		return
	case "promote", "remove":
	default:
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("unknown operation %q: want add, promote or remove", op.Op))
		return
	}
	if err := s.onLeader(r.Context(), MembershipOp{Op: op.Op, ID: op.ID}); err != nil {
		// A server that is only in the registry (an old cluster's, after a
		// restore) is removed from the registry alone.
		_, registered := s.cfg.Store.AuthServer(op.ID)
		var me *raftnode.MembershipError
		var ae *APIError
		notMember := (errors.As(err, &me) && strings.Contains(me.Reason, "is not a member")) || (errors.As(err, &ae) && strings.Contains(ae.Message, "is not a member"))
		if !(op.Op == "remove" && registered && notMember) {
			s.membershipErr(w, err)
			return
		}
	}
	if op.Op == "remove" {
		if _, err := s.apply(state.TypeDeleteAuthServer, state.DeleteAuthServer{ID: op.ID}); err != nil && !errors.Is(err, state.ErrNotFound) {
			s.applyErr(w, err)
			return
		}
	}
	s.cfg.Logger.Info("auth membership changed", "op", op.Op, "auth_server", op.ID, "user", caller.Name)
	WriteJSON(w, http.StatusOK, s.AuthServers(r.Context()))
}

func (s *Server) membershipErr(w http.ResponseWriter, err error) {
	var me *raftnode.MembershipError
	if errors.As(err, &me) {
		WriteError(w, http.StatusBadRequest, me.Reason)
		return
	}
	var ae *APIError
	if errors.As(err, &ae) {
		WriteError(w, ae.Code, ae.Message)
		return
	}
	s.applyErr(w, err)
}

// onLeader runs a membership change on the leader: here, or forwarded.
func (s *Server) onLeader(ctx context.Context, op MembershipOp) error {
	if s.cfg.Raft == nil {
		return errors.New("this auth server runs without raft membership")
	}
	if s.cfg.Raft.IsLeader() {
		return s.membershipLocal(op)
	}
	c, err := s.leaderClient()
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, "/v1/internal/membership", op, nil)
}

func (s *Server) membershipLocal(op MembershipOp) error {
	switch op.Op {
	case "add-voter":
		return s.cfg.Raft.AddVoter(op.ID, op.RaftAddr)
	case "add-nonvoter":
		return s.cfg.Raft.AddNonvoter(op.ID, op.RaftAddr)
	case "promote":
		return s.cfg.Raft.AddVoter(op.ID, "")
	case "remove":
		return s.cfg.Raft.Remove(op.ID)
	}
	return fmt.Errorf("unknown membership operation %q", op.Op)
}

// internalMembership is the leader's end of onLeader.
func (s *Server) internalMembership(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	var op MembershipOp
	if !readJSON(w, r, &op) {
		return
	}
	if s.cfg.Raft == nil || !s.cfg.Raft.IsLeader() {
		WriteError(w, http.StatusServiceUnavailable, "this auth server is no longer the raft leader: retry")
		return
	}
	if err := s.membershipLocal(op); err != nil {
		s.membershipErr(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, struct{}{})
}

// PeerClientFor returns a client, with this server's identity, for
// another auth server's API at addr. It is shared: do not Close it.
func (s *Server) PeerClientFor(addr string) (*Client, error) { return s.peerClient(addr) }

// peerClient returns the client for the auth server at addr, made once and
// kept, so that forwarded writes, membership calls and presence reports
// reuse its connections instead of a TLS handshake each. Its certificate
// and trusted CAs are read per handshake, so renewals need no new client.
func (s *Server) peerClient(addr string) (*Client, error) {
	if s.cfg.PeerClient == nil {
		return nil, errors.New("this auth server cannot reach other auth servers")
	}
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	if c, ok := s.peers[addr]; ok {
		return c, nil
	}
	c, err := s.cfg.PeerClient(addr)
	if err != nil {
		return nil, err
	}
	if s.peers == nil || len(s.peers) >= 64 {
		for _, old := range s.peers { // addresses changed: start afresh
			old.Close()
		}
		s.peers = map[string]*Client{}
	}
	s.peers[addr] = c
	return c, nil
}

// leaderClient returns a client for the leader's API.
func (s *Server) leaderClient() (*Client, error) {
	if s.cfg.Raft == nil || s.cfg.PeerClient == nil {
		return nil, errors.New("this auth server cannot reach other auth servers")
	}
	id, _ := s.cfg.Raft.Leader()
	if id == "" {
		return nil, &raftnode.RetryableError{Err: errNoLeader}
	}
	a, ok := s.cfg.Store.AuthServer(id)
	if !ok {
		return nil, &raftnode.RetryableError{Err: fmt.Errorf("the leader %s is not in the auth server registry yet", id)}
	}
	return s.peerClient(a.APIAddr)
}

// ForwardApply sends a command to the leader's internal apply endpoint and
// returns the index it was committed at (raftnode.Config.Forward).
func (s *Server) ForwardApply(ctx context.Context, leaderID string, cmd []byte) (uint64, error) {
	if s.cfg.PeerClient == nil {
		return 0, errors.New("this auth server cannot reach other auth servers")
	}
	a, ok := s.cfg.Store.AuthServer(leaderID)
	if !ok {
		return 0, &raftnode.RetryableError{Err: fmt.Errorf("the leader %s is not in the auth server registry yet", leaderID)}
	}
	c, err := s.peerClient(a.APIAddr)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+c.Addr()+"/v1/internal/apply", bytes.NewReader(cmd))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, &raftnode.RetryableError{Err: describeTransportError("leader "+leaderID+" at "+a.APIAddr, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := decodeError(resp)
		if resp.StatusCode == http.StatusServiceUnavailable {
			return 0, &raftnode.RetryableError{Err: err}
		}
		return 0, err
	}
	var ar applyResponse
	if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil {
		return 0, &raftnode.RetryableError{Err: fmt.Errorf("leader %s: malformed apply answer: %w", leaderID, err)}
	}
	return ar.Index, nil
}

// internalApply is the leader's end of ForwardApply: append the command
// and return its index. The outcome is computed by the forwarder's own
// state machine.
func (s *Server) internalApply(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	cmd, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		WriteError(w, http.StatusBadRequest, "read command: "+err.Error())
		return
	}
	if int64(len(cmd)) > s.cfg.MaxBodyBytes || len(cmd) == 0 {
		WriteError(w, http.StatusBadRequest, "command is empty or larger than "+strconv.FormatInt(s.cfg.MaxBodyBytes, 10)+" bytes")
		return
	}
	if s.cfg.Raft == nil {
		WriteError(w, http.StatusServiceUnavailable, "this auth server runs without raft membership")
		return
	}
	index, err := s.cfg.Raft.ApplyLocal(cmd)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	WriteJSON(w, http.StatusOK, applyResponse{Index: index})
}

// joinAuth adds a joining auth server to raft as a non-voter and to the
// registry (with the suffrage its token carries, for PromoteSelf). The
// token is already consumed.
func (s *Server) joinAuth(ctx context.Context, name string, tok state.Token, aj *AuthJoin) error {
	// Registry first: the leader learns the new server's API address
	// before it can become leader itself.
	srv := state.AuthServer{ID: name, APIAddr: aj.APIAddr, RaftAddr: aj.RaftAddr, Region: aj.Region, Keys: aj.Keys, Backend: aj.Backend, Joined: s.cfg.Now().UTC(), Voter: tok.Voter}
	if _, err := s.apply(state.TypeUpsertAuthServer, state.UpsertAuthServer{Server: srv}); err != nil {
		return err
	}
	if err := s.onLeader(ctx, MembershipOp{Op: "add-nonvoter", ID: name, RaftAddr: aj.RaftAddr}); err != nil {
		return err
	}
	// Adding keys to the trusted sets is harmless to everyone and lets the
	// new server sign user certificates as soon as proxies and nodes have
	// them (one watch event); see canSign for what it does not sign yet.
	_, err := s.apply(state.TypeTrustServerKeys, state.TrustServerKeys{ID: name})
	return err
}

// PromoteSelf makes this server a voter if it was added to be one and is
// still a non-voter. Call it once the server has the cluster's state: raft
// then adds a member that can vote at once.
func (s *Server) PromoteSelf(ctx context.Context) error {
	a, ok := s.cfg.Store.AuthServer(s.cfg.ID)
	if !ok || !a.Voter || s.cfg.Raft == nil {
		return nil
	}
	if st := s.Self(); st.Role != AuthRoleNonvoter {
		return nil
	}
	if err := s.onLeader(ctx, MembershipOp{Op: "promote", ID: s.cfg.ID}); err != nil {
		return fmt.Errorf("promote auth server %s to voter: %w", s.cfg.ID, err)
	}
	s.cfg.Logger.Info("promoted to voter", "auth_server", s.cfg.ID)
	return nil
}
