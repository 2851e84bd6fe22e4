// Package raftnode wires the auth state machine (auth/state) into
// hashicorp/raft: BoltDB log and stable stores, file snapshots, a mutual-TLS
// transport between auth servers, bootstrap of a new cluster, and
// membership: voters (3 or 5, close together) and non-voters (auth servers
// in other regions that replicate the log for local reads and signing).
//
// # Writes
//
// Apply works on every member. On the leader it appends to the log. On any
// other member it hands the command to Config.Forward, which sends it to
// the leader (cmd/ wires this to the auth API's internal apply endpoint)
// and gets back the index the leader committed it at; the member then waits
// until its own state machine has applied that index and returns the
// outcome its own FSM computed (auth/state remembers recent outcomes). The
// caller is answered only once the write is visible on the server it
// asked: it can read its own write there at once.
//
// Apply errors are of two sorts: the command's own failure (a user exists, a
// token is used), returned as is, and raft's (no leader, timeout), wrapped in
// *RetryableError, because retrying can help. A write is acknowledged only
// after raft committed it, so an acknowledged write survives the loss of
// any minority of voters, the leader included.
package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/state"
)

// Config configures a raft node.
type Config struct {
	// ID is this server's raft id (the auth server id).
	ID string
	// Dir holds raft.db and snapshots/.
	Dir string
	// BindAddr is the raft transport address. Default 127.0.0.1:0: a single
	// voter needs no reachable address.
	BindAddr string
	// Advertise is the address other auth servers dial, when not BindAddr
	// (a wildcard bind, NAT).
	Advertise string
	// Bootstrap makes a node with no raft state create a new cluster with
	// itself as the only voter. A server joining an existing cluster leaves
	// it false and waits to be added by the leader.
	Bootstrap bool
	// TLS secures the transport. Nil means plain TCP, which only tests and
	// a lone voter on loopback may use.
	TLS *TLS
	// Forward sends a command to the leader (leaderID, at leaderAddr, its
	// raft address) and returns the log index it was committed at. Nil:
	// Apply on a non-leader fails with a RetryableError.
	Forward func(ctx context.Context, leaderID string, cmd []byte) (uint64, error)
	// Store is the state machine.
	Store *state.Store
	// ApplyTimeout bounds one Apply. Default 10s.
	ApplyTimeout time.Duration
	// SnapshotThreshold: log entries between snapshots. Default 8192: a
	// state of thousands of objects snapshots in milliseconds, and replaying
	// 8k entries at start-up takes well under a second.
	SnapshotThreshold uint64
	Logger            *slog.Logger
	// Metrics registers jumpgate_raft_* metrics (see metrics.go); nil: none.
	Metrics prometheus.Registerer
}

func (c *Config) checkAndSetDefaults() error {
	if c.ID == "" {
		return errors.New("raftnode: ID is required")
	}
	if c.Dir == "" {
		return errors.New("raftnode: Dir is required")
	}
	if c.Store == nil {
		return errors.New("raftnode: Store is required")
	}
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1:0"
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 10 * time.Second
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Node is one raft member.
type Node struct {
	cfg       Config
	raft      *raft.Raft
	transport *raft.NetworkTransport
	bolt      *raftboltdb.BoltStore
	metrics   *metrics
	closed    chan struct{} // closed by Close: ends the leader observer
	closeOnce sync.Once
	observed  chan struct{} // closed when the leader observer has returned
}

// RetryableError is a raft-level failure; retrying (perhaps on the leader)
// can help.
type RetryableError struct{ Err error }

func (e *RetryableError) Error() string { return "raft: " + e.Err.Error() + " (retry)" }
func (e *RetryableError) Unwrap() error { return e.Err }

// Open starts raft. If the directory holds no state, it bootstraps a new
// single-voter cluster and waits until this node is leader.
func Open(cfg Config) (*Node, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{cfg.Logger}})
	bolt, err := raftboltdb.NewBoltStore(filepath.Join(cfg.Dir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("raftnode: open log store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("raftnode: open snapshot store: %w", err)
	}
	tr, err := newTransport(cfg, hlog)
	if err != nil {
		bolt.Close()
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	// Tuned for servers close together (raft voters should be): re-election
	// in well under a second instead of ~2 s.
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond

	has, err := raft.HasExistingState(bolt, bolt, snaps)
	if err != nil {
		bolt.Close()
		tr.Close()
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	commit := newCommitHistogram()
	r, err := raft.NewRaft(rc, &fsm{store: cfg.Store, commit: commit, since: time.Now()}, bolt, bolt, snaps, tr)
	if err != nil {
		bolt.Close()
		tr.Close()
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	n := &Node{cfg: cfg, raft: r, transport: tr, bolt: bolt, closed: make(chan struct{}), observed: make(chan struct{})}
	if n.metrics, err = newMetrics(n, cfg.Metrics, commit); err != nil {
		r.Shutdown().Error() //nolint:errcheck
		bolt.Close()
		tr.Close()
		return nil, err
	}
	go func() {
		defer close(n.observed)
		n.metrics.observeLeaders(n.closed)
	}()
	if !has && cfg.Bootstrap {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: tr.LocalAddr()}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Close()
			return nil, fmt.Errorf("raftnode: bootstrap: %w", err)
		}
	}
	return n, nil
}

// WaitLeader waits until the cluster has a leader or timeout passes.
func (n *Node) WaitLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return &RetryableError{Err: fmt.Errorf("no leader after %s", timeout)}
		}
		select {
		case <-n.raft.LeaderCh():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Apply replicates cmd and returns the state machine's result, on the
// leader directly and on any other member through Config.Forward (see the
// package comment).
func (n *Node) Apply(cmd []byte) (any, error) {
	start := time.Now()
	defer func() { n.metrics.apply.Observe(time.Since(start).Seconds()) }()
	f := n.raft.Apply(cmd, n.cfg.ApplyTimeout)
	err := f.Error()
	if err == nil {
		res := f.Response().(applyResult)
		return res.value, res.err
	}
	if !errors.Is(err, raft.ErrNotLeader) {
		return nil, &RetryableError{Err: err}
	}
	_, leader := n.raft.LeaderWithID()
	if n.cfg.Forward == nil {
		return nil, &RetryableError{Err: errors.New("this auth server is not the raft leader")}
	}
	if leader == "" {
		return nil, &RetryableError{Err: errors.New("the auth cluster has no leader at the moment")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
	defer cancel()
	index, err := n.cfg.Forward(ctx, string(leader), cmd)
	if err != nil {
		var re *RetryableError
		if errors.As(err, &re) {
			return nil, err
		}
		return nil, &RetryableError{Err: fmt.Errorf("forward to leader %s: %w", leader, err)}
	}
	if err := n.cfg.Store.WaitApplied(ctx, index); err != nil {
		return nil, &RetryableError{Err: fmt.Errorf("the leader committed the write at index %d but this auth server has not applied it yet: %w", index, err)}
	}
	v, cerr, ok := n.cfg.Store.Result(index)
	if !ok {
		return nil, fmt.Errorf("raftnode: the write was committed at index %d, but its outcome is no longer remembered here", index)
	}
	return v, cerr
}

// ApplyLocal appends cmd to the log on the leader and returns the index it
// was committed at; the command's own outcome is left for the caller's
// state machine to compute (see Apply). It fails with a RetryableError on a
// member that is not the leader.
func (n *Node) ApplyLocal(cmd []byte) (uint64, error) {
	start := time.Now()
	defer func() { n.metrics.apply.Observe(time.Since(start).Seconds()) }()
	f := n.raft.Apply(cmd, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return 0, &RetryableError{Err: errors.New("this auth server is not the raft leader")}
		}
		return 0, &RetryableError{Err: err}
	}
	return f.Index(), nil
}

// Stats reports raft's state for status pages.
type Stats struct {
	State        string `json:"state"`
	Leader       string `json:"leader"`
	LastIndex    uint64 `json:"last_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Voters       int    `json:"voters"`
}

// Stats returns the current raft statistics.
func (n *Node) Stats() Stats {
	_, leader := n.raft.LeaderWithID()
	s := Stats{State: n.raft.State().String(), Leader: string(leader), LastIndex: n.raft.LastIndex(), AppliedIndex: n.raft.AppliedIndex()}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			if srv.Suffrage == raft.Voter {
				s.Voters++
			}
		}
	}
	return s
}

// Addr is the raft address other members use to reach this one.
func (n *Node) Addr() string { return string(n.transport.LocalAddr()) }

// IsLeader reports whether this member is the leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's id and raft address ("" when there is none).
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// LastContact is when this member last heard from the leader (zero on the
// leader itself, and before any contact).
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Snapshot forces a snapshot (used by tests and backups).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// Close shuts raft down and closes its stores.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { close(n.closed) })
	<-n.observed
	err := n.raft.Shutdown().Error()
	if cerr := n.transport.Close(); err == nil {
		err = cerr
	}
	if cerr := n.bolt.Close(); err == nil {
		err = cerr
	}
	return err
}

type applyResult struct {
	value any
	err   error
}

// fsm adapts state.Store to raft.FSM.
type fsm struct {
	store *state.Store
	// commit times each command from the leader's append to its apply
	// here; entries appended before since (replayed from the log at
	// start) are not timed.
	commit prometheus.Histogram
	since  time.Time
}

func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return applyResult{}
	}
	if l.AppendedAt.After(f.since) {
		f.commit.Observe(max(time.Since(l.AppendedAt), 0).Seconds())
	}
	v, err := f.store.Apply(l.Index, l.Data)
	return applyResult{value: v, err: err}
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	b, _, err := f.store.Snapshot()
	if err != nil {
		return nil, err
	}
	return snap(b), nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	return f.store.Restore(b)
}

type snap []byte

func (s snap) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snap) Release() {}

// slogWriter feeds hclog's text output into slog at warn level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn(string(trimNL(p)), "component", "raft")
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}

// Barrier waits until every log entry committed before it has been applied
// to the state machine: after a restart, the state is then current.
func (n *Node) Barrier(timeout time.Duration) error {
	if err := n.raft.Barrier(timeout).Error(); err != nil {
		return &RetryableError{Err: err}
	}
	return nil
}
