package raftnode

import (
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are read from raft itself when Prometheus scrapes (state,
// leader, indexes, last contact), counted from its leader observations
// (leader changes), timed around Apply (apply latency: what a writer
// waits) and in the FSM (commit latency: from the leader's append, which
// raft records in each log entry, to the apply here). hashicorp/raft's
// own go-metrics telemetry is not used: it is process-global, and several
// nodes share one process in tests.

var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

type metrics struct {
	leaderChanges prometheus.Counter
	apply         prometheus.Histogram
	commit        prometheus.Histogram
	state         *prometheus.Desc
	hasLeader     *prometheus.Desc
	commitIndex   *prometheus.Desc
	appliedIndex  *prometheus.Desc
	lastContact   *prometheus.Desc
	n             *Node
}

// newCommitHistogram is jumpgate_raft_commit_duration_seconds, made
// before raft starts because the FSM observes it.
func newCommitHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "jumpgate_raft_commit_duration_seconds",
		Help:    "Time from the raft leader appending a write to its log to this auth server applying it: on the leader, the commit latency (replication to a quorum, fsync); on a follower, the replication delay as well (measured against the leader's clock).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
}

func newMetrics(n *Node, reg prometheus.Registerer, commit prometheus.Histogram) (*metrics, error) {
	m := &metrics{
		n:      n,
		commit: commit,
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_raft_leader_changes_total",
			Help: "Times this auth server saw the raft leader change (including to no leader).",
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "jumpgate_raft_apply_duration_seconds",
			Help:    "Time from a write reaching raft on this auth server to it being committed and applied (forwarding to the leader included).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		state:        prometheus.NewDesc("jumpgate_raft_state", "1 for this auth server's current raft state (leader, follower, candidate, shutdown), else 0.", []string{"state"}, nil),
		hasLeader:    prometheus.NewDesc("jumpgate_raft_has_leader", "1 when this auth server knows a raft leader, 0 when the cluster has none (writes fail).", nil, nil),
		commitIndex:  prometheus.NewDesc("jumpgate_raft_commit_index", "The highest raft log index this auth server knows to be committed.", nil, nil),
		appliedIndex: prometheus.NewDesc("jumpgate_raft_applied_index", "The highest raft log index this auth server has applied to its state.", nil, nil),
		lastContact:  prometheus.NewDesc("jumpgate_raft_last_contact_seconds", "Seconds since this auth server last heard from the leader (0 on the leader).", nil, nil),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.leaderChanges, m.apply, m.commit, m} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("raftnode: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.state, m.hasLeader, m.commitIndex, m.appliedIndex, m.lastContact} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	r := m.n.raft
	cur := r.State()
	for _, s := range raftStates {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(m.state, prometheus.GaugeValue, v, stateLabel(s))
	}
	has := 0.0
	if addr, _ := r.LeaderWithID(); addr != "" {
		has = 1
	}
	ch <- prometheus.MustNewConstMetric(m.hasLeader, prometheus.GaugeValue, has)
	if ci, err := strconv.ParseUint(r.Stats()["commit_index"], 10, 64); err == nil {
		ch <- prometheus.MustNewConstMetric(m.commitIndex, prometheus.GaugeValue, float64(ci))
	}
	ch <- prometheus.MustNewConstMetric(m.appliedIndex, prometheus.GaugeValue, float64(r.AppliedIndex()))
	lc := 0.0
	if cur != raft.Leader {
		if t := r.LastContact(); !t.IsZero() {
			lc = time.Since(t).Seconds()
		}
	}
	ch <- prometheus.MustNewConstMetric(m.lastContact, prometheus.GaugeValue, lc)
}

func stateLabel(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Candidate:
		return "candidate"
	case raft.Shutdown:
		return "shutdown"
	}
	return "follower"
}

// observeLeaders counts leader changes until raft shuts down.
func (m *metrics) observeLeaders(done <-chan struct{}) {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	m.n.raft.RegisterObserver(obs)
	defer m.n.raft.DeregisterObserver(obs)
	for {
		select {
		case <-ch:
			m.leaderChanges.Inc()
		case <-done:
			return
		}
	}
}
