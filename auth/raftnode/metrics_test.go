package raftnode

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/state"
)

// TestMetrics: a lone voter reports itself leader with a leader known,
// counts the leader change of its election, times its writes and reports
// the indexes they reach.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	n, err := Open(Config{ID: "a1", Dir: t.TempDir(), Bootstrap: true, Store: state.New(nil), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if authtest.Metric(t, reg, "jumpgate_raft_leader_changes_total") >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader change counted after the election")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 3 {
		if _, err := n.Apply(mustCmd(t, state.TypeNoop|state.FlagIgnorable, state.Noop{})); err != nil {
			t.Fatal(err)
		}
	}
	checks := []struct {
		name  string
		label []string
		ok    func(float64) bool
		want  string
	}{
		{"jumpgate_raft_state", []string{"state", "leader"}, func(v float64) bool { return v == 1 }, "1"},
		{"jumpgate_raft_state", []string{"state", "follower"}, func(v float64) bool { return v == 0 }, "0"},
		{"jumpgate_raft_has_leader", nil, func(v float64) bool { return v == 1 }, "1"},
		{"jumpgate_raft_apply_duration_seconds", nil, func(v float64) bool { return v == 3 }, "3 samples"},
		{"jumpgate_raft_commit_duration_seconds", nil, func(v float64) bool { return v == 3 }, "3 samples"},
		{"jumpgate_raft_commit_index", nil, func(v float64) bool { return v >= 3 }, ">= 3"},
		{"jumpgate_raft_applied_index", nil, func(v float64) bool { return v >= 3 }, ">= 3"},
		{"jumpgate_raft_last_contact_seconds", nil, func(v float64) bool { return v == 0 }, "0 on the leader"},
	}
	for _, c := range checks {
		if v := authtest.Metric(t, reg, c.name, c.label...); !c.ok(v) {
			t.Errorf("%s%v = %v, want %s", c.name, c.label, v, c.want)
		}
	}
}

// TestCommitMetricSkipsReplay: entries a restarted auth server replays
// from its log are not timed as commits (they were appended before it
// started, and would count as slow ones); new writes are.
func TestCommitMetricSkipsReplay(t *testing.T) {
	dir := t.TempDir()
	open := func(reg *prometheus.Registry) *Node {
		t.Helper()
		n, err := Open(Config{ID: "a1", Dir: dir, Bootstrap: true, Store: state.New(nil), Metrics: reg})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.WaitLeader(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n := open(prometheus.NewRegistry())
	for range 3 {
		if _, err := n.Apply(mustCmd(t, state.TypeNoop|state.FlagIgnorable, state.Noop{})); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	n = open(reg)
	defer n.Close()
	if _, err := n.Apply(mustCmd(t, state.TypeNoop|state.FlagIgnorable, state.Noop{})); err != nil {
		t.Fatal(err)
	}
	if got := authtest.Metric(t, reg, "jumpgate_raft_commit_duration_seconds"); got != 1 {
		t.Errorf("after a restart and one write, %v commits timed, want 1 (the replayed entries are not)", got)
	}
}
