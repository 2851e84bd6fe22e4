package main

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
)

// TestCheckNodeLocks: a node applies the locks it knows; in strict mode
// it refuses everyone once it has not heard from the cluster for
// lock_stale_after, in best-effort mode it goes on with what it knows.
func TestCheckNodeLocks(t *testing.T) {
	hub := authapi.NewHub()
	now := time.Now()
	lock := identity.Lock{ID: "l1", User: "mallory", Message: "left the company", Created: now}
	if err := hub.Apply(authapi.WatchMessage{Type: "snapshot", Index: 1, Snapshot: &authapi.WatchSnapshot{Cluster: "c", Locks: []identity.Lock{lock}}}); err != nil {
		t.Fatal(err)
	}
	alice := identity.LockTarget{User: "alice", Node: "n1", Login: "ubuntu"}
	mallory := identity.LockTarget{User: "mallory", Node: "n1", Login: "ubuntu"}
	strict := NodeConfig{LockMode: "strict", LockStaleAfter: time.Minute}
	best := NodeConfig{LockMode: "best_effort", LockStaleAfter: time.Minute}
	var ae *identity.AccessError
	for _, nc := range []NodeConfig{strict, best} {
		if err := checkNodeLocks(hub, nc, alice, now); err != nil {
			t.Errorf("%s, fresh cache: alice refused: %v", nc.LockMode, err)
		}
		if err := checkNodeLocks(hub, nc, mallory, now); !errors.As(err, &ae) || !strings.Contains(err.Error(), "left the company") {
			t.Errorf("%s: mallory: %v", nc.LockMode, err)
		}
	}
	later := now.Add(2 * time.Minute) // nothing heard since now
	if err := checkNodeLocks(hub, strict, alice, later); !errors.As(err, &ae) || !strings.Contains(err.Error(), "strict lock mode") {
		t.Errorf("strict, stale cache: alice: %v", err)
	}
	if err := checkNodeLocks(hub, best, alice, later); err != nil {
		t.Errorf("best effort, stale cache: alice refused: %v", err)
	}
	if err := checkNodeLocks(hub, best, mallory, later); err == nil {
		t.Error("best effort, stale cache: mallory allowed: the last known locks must still apply")
	}
	// A heartbeat makes the cache fresh again.
	hub.Apply(authapi.WatchMessage{Type: "heartbeat"}) //nolint:errcheck
	if err := checkNodeLocks(hub, strict, alice, time.Now()); err != nil {
		t.Errorf("strict after a heartbeat: %v", err)
	}
}

// TestLockWatcherPropagation: a lock that appears after the first snapshot
// is observed in jumpgate_lock_propagation_seconds under the watcher's
// role, once, with the time since its creation; the snapshot's locks, an
// expired lock and a lock seen again are not.
func TestLockWatcherPropagation(t *testing.T) {
	p := &process{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry()}
	var enforced [][]identity.Lock
	w := newLockWatcher(p, "proxy", func(locks []identity.Lock) int {
		enforced = append(enforced, locks)
		return 0
	})
	// A node watcher in the same process shares the histogram, under its
	// own role.
	newLockWatcher(p, "node", func([]identity.Lock) int { return 0 })
	const name = "jumpgate_lock_propagation_seconds"
	count := func(role string) float64 { return authtest.Metric(t, p.reg, name, "role", role) }

	now := time.Now()
	old := identity.Lock{ID: "old", User: "mallory", Created: now.Add(-time.Hour)}
	w.update([]identity.Lock{old})
	if n := count("proxy"); n != 0 {
		t.Fatalf("after the first snapshot: %v observations, want 0 (its locks predate the watcher)", n)
	}

	fresh := identity.Lock{ID: "fresh", User: "eve", Created: now.Add(-2 * time.Second)}
	expired := identity.Lock{ID: "expired", User: "trent", Created: now.Add(-time.Minute), Expires: now.Add(-time.Second)}
	w.update([]identity.Lock{old, fresh, expired})
	if n := count("proxy"); n != 1 {
		t.Fatalf("after a new lock: %v observations, want 1", n)
	}
	// The delay is the time since the lock's creation: about 2 s.
	if sum := authtest.HistogramSum(t, p.reg, name, "role", "proxy"); sum < 2 || sum >= 3 {
		t.Errorf("observed delay %.3fs, want 2s (the lock was created 2s before update)", sum)
	}
	if n := count("node"); n != 0 {
		t.Errorf("role=node: %v observations, want 0 (the proxy's watcher saw the lock)", n)
	}

	w.update([]identity.Lock{old, fresh, expired})
	if n := count("proxy"); n != 1 {
		t.Errorf("after the same locks again: %v observations, want still 1", n)
	}
	if len(enforced) != 3 || len(enforced[2]) != 3 {
		t.Errorf("enforce got %d lock sets, want 3 with every lock in each: %v", len(enforced), enforced)
	}
}
