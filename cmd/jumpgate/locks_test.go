package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
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
