package raftnode

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// newTransport listens on cfg.BindAddr, with mutual TLS when cfg.TLS is set.
func newTransport(cfg Config, hlog hclog.Logger) (*raft.NetworkTransport, error) {
	var adv net.Addr
	if cfg.Advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
		if err != nil {
			return nil, fmt.Errorf("raftnode: advertise address %q: %w", cfg.Advertise, err)
		}
		adv = a
	}
	if cfg.TLS == nil {
		tr, err := raft.NewTCPTransportWithLogger(cfg.BindAddr, adv, 3, 10*time.Second, hlog)
		if err != nil {
			return nil, fmt.Errorf("raftnode: listen on %s: %w", cfg.BindAddr, err)
		}
		return tr, nil
	}
	if err := cfg.TLS.check(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("raftnode: listen on %s: %w", cfg.BindAddr, err)
	}
	if adv == nil {
		if a := ln.Addr().(*net.TCPAddr); a.IP.IsUnspecified() {
			ln.Close()
			return nil, fmt.Errorf("raftnode: raft listens on %s, which other auth servers cannot dial: set the advertise address", ln.Addr())
		}
	}
	log := cfg.Logger
	stream := &tlsStream{Listener: ln, cfg: cfg.TLS, advertise: adv, log: func(msg string, args ...any) { log.Warn(msg, args...) }}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hlog,
	}), nil
}

// Suffrage of a member.
const (
	RoleVoter    = "voter"
	RoleNonvoter = "non-voter"
)

// Server is one member of the raft configuration.
type Server struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// Role is RoleVoter or RoleNonvoter.
	Role string `json:"role"`
}

// Servers returns the current raft configuration.
func (n *Node) Servers() ([]Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, &RetryableError{Err: err}
	}
	var out []Server
	for _, s := range f.Configuration().Servers {
		role := RoleNonvoter
		if s.Suffrage == raft.Voter {
			role = RoleVoter
		}
		out = append(out, Server{ID: string(s.ID), Addr: string(s.Address), Role: role})
	}
	return out, nil
}

// member returns id's entry in the configuration.
func (n *Node) member(id string) (Server, bool, error) {
	servers, err := n.Servers()
	if err != nil {
		return Server{}, false, err
	}
	for _, s := range servers {
		if s.ID == id {
			return s, true, nil
		}
	}
	return Server{}, false, nil
}

// MembershipError is a refused membership change.
type MembershipError struct{ Reason string }

func (e *MembershipError) Error() string { return e.Reason }

// AddNonvoter adds (or re-addresses) a non-voting member. Leader only.
// Adding a member that is already a voter is refused: demoting a voter is
// a separate, deliberate step (remove, then add).
func (n *Node) AddNonvoter(id, addr string) error {
	if s, ok, err := n.member(id); err != nil {
		return err
	} else if ok && s.Role == RoleVoter {
		return &MembershipError{fmt.Sprintf("auth server %s is already a voter", id)}
	}
	return n.wait(n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, n.cfg.ApplyTimeout))
}

// AddVoter adds a voting member, or promotes a non-voter (addr "" keeps
// its address). Leader only.
func (n *Node) AddVoter(id, addr string) error {
	s, ok, err := n.member(id)
	if err != nil {
		return err
	}
	if addr == "" {
		if !ok {
			return &MembershipError{fmt.Sprintf("auth server %s is not a member: add it first", id)}
		}
		addr = s.Addr
	}
	return n.wait(n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, n.cfg.ApplyTimeout))
}

// Remove removes a member. Leader only. Removing the last voter is refused;
// removing the leader itself makes it step down once the change commits.
func (n *Node) Remove(id string) error {
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	voters, found := 0, false
	for _, s := range servers {
		if s.Role == RoleVoter {
			voters++
		}
		if s.ID == id {
			found = true
			if s.Role == RoleVoter && voters == 1 && countVoters(servers) == 1 {
				return &MembershipError{fmt.Sprintf("auth server %s is the only voter: the cluster would have none", id)}
			}
		}
	}
	if !found {
		return &MembershipError{fmt.Sprintf("auth server %s is not a member", id)}
	}
	return n.wait(n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout))
}

func countVoters(servers []Server) int {
	v := 0
	for _, s := range servers {
		if s.Role == RoleVoter {
			v++
		}
	}
	return v
}

func (n *Node) wait(f raft.IndexFuture) error {
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return &RetryableError{Err: errors.New("this auth server is not the raft leader")}
		}
		return &RetryableError{Err: err}
	}
	return nil
}
