package raftnode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// openPlain opens a member without TLS on a loopback port chosen by the
// kernel.
func openPlain(t *testing.T, id, dir string, bootstrap bool) *Node {
	t.Helper()
	n, err := Open(Config{ID: id, Dir: dir, BindAddr: "127.0.0.1:0", Bootstrap: bootstrap, Store: state.New(nil), ApplyTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func mustCmd(t *testing.T, typ state.Type, body any) []byte {
	t.Helper()
	cmd, err := state.Encode(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestRestoreSnapshot rebuilds a cluster from a state snapshot: the seeded
// directory opens as a single voter with the snapshot's state, accepts
// writes, survives a restart, and can grow again.
func TestRestoreSnapshot(t *testing.T) {
	src := state.New(nil)
	for i, cmd := range [][]byte{
		mustCmd(t, state.TypeBootstrap, state.Bootstrap{Cluster: "c1"}),
		mustCmd(t, state.TypeUpsertRole, state.UpsertRole{Role: identity.Role{Name: "dev"}}),
		userCmd(t, "alice", true),
		userCmd(t, "bob", true),
	} {
		// Indexes as a long-lived cluster would have them.
		if _, err := src.Apply(uint64(1000+i), cmd); err != nil {
			t.Fatal(err)
		}
	}
	snap, index, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "raft")
	// The transport's port is not known before Open: the configuration
	// gets an address nothing listens on, which a lone voter does not
	// mind (raft keys on the server id; see RestoreSnapshot).
	const placeholder = "127.0.0.1:1"
	if err := RestoreSnapshot(dir, "r1", placeholder, snap, index); err != nil {
		t.Fatal(err)
	}
	if err := RestoreSnapshot(dir, "r1", placeholder, snap, index); err == nil || !strings.Contains(err.Error(), "move the directory aside") {
		t.Fatalf("restore over raft state: %v", err)
	}

	n := openPlain(t, "r1", dir, false)
	if err := n.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !n.IsLeader() {
		t.Fatal("the only voter is not the leader")
	}
	st := n.cfg.Store
	if _, ok := st.User("alice"); !ok || st.Cluster() != "c1" || st.Index() < index {
		t.Fatalf("restored state: users %v, cluster %q, index %d (snapshot %d)", st.Users(), st.Cluster(), st.Index(), index)
	}
	if s := n.Stats(); s.Voters != 1 || s.LastIndex < index {
		t.Fatalf("stats after restore: %+v", s)
	}
	if _, err := n.Apply(userCmd(t, "carol", true)); err != nil {
		t.Fatalf("write after restore: %v", err)
	}
	if _, ok := st.User("carol"); !ok {
		t.Fatal("carol missing after her write was acknowledged")
	}
	// The write landed after the snapshot's index, not over it.
	if st.Index() <= index {
		t.Fatalf("index %d after a write, snapshot at %d", st.Index(), index)
	}

	// raft kept the address it was given; re-addressing the member (as
	// the leader, with its own id) fixes it for the servers that join.
	servers, err := n.Servers()
	if err != nil || len(servers) != 1 || servers[0].Addr != placeholder || servers[0].Role != RoleVoter {
		t.Fatalf("configuration after restore: %+v %v", servers, err)
	}
	if err := n.AddVoter("r1", n.Addr()); err != nil {
		t.Fatalf("re-address: %v", err)
	}
	if servers, _ := n.Servers(); len(servers) != 1 || servers[0].Addr != n.Addr() {
		t.Fatalf("configuration after re-addressing: %+v", servers)
	}

	// Another server joins the restored cluster and gets the state (by
	// snapshot: the log before the restore point does not exist).
	n2 := openPlain(t, "r2", filepath.Join(t.TempDir(), "raft"), false)
	if err := n.AddNonvoter("r2", n2.Addr()); err != nil {
		t.Fatal(err)
	}
	authtest.WaitFor(t, 10*time.Second, "r2 has the restored users", func() bool {
		_, a := n2.cfg.Store.User("alice")
		_, c := n2.cfg.Store.User("carol")
		return a && c
	})

	// A restart replays snapshot and log. Bootstrap is true as for any
	// server that does not join: the state there keeps it from
	// bootstrapping over.
	n.Close()
	n2.Close()
	n = openPlain(t, "r1", dir, true)
	if err := n.WaitLeader(10 * time.Second); err != nil {
		// r2 is a non-voter: r1 alone is a majority.
		t.Fatal(err)
	}
	if err := n.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		if _, ok := n.cfg.Store.User(u); !ok {
			t.Errorf("%s missing after restart", u)
		}
	}
}

func TestRestoreSnapshotRefuses(t *testing.T) {
	snap := []byte(`{"version":1,"index":5,"data":{"cluster":"c1"}}`)
	for _, tc := range []struct {
		name, id, addr string
		index          uint64
		want           string
	}{
		{"no id", "", "127.0.0.1:1", 5, "id is required"},
		{"no address", "r1", "", 5, "address is required"},
		{"index 0", "r1", "127.0.0.1:1", 0, "index must be above 0"},
	} {
		if err := RestoreSnapshot(t.TempDir(), tc.id, tc.addr, snap, tc.index); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A directory a server already used is refused, whatever it holds.
	dir := t.TempDir()
	n := openPlain(t, "a1", dir, true)
	if err := n.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	n.Close()
	if err := RestoreSnapshot(dir, "a1", "127.0.0.1:1", snap, 5); err == nil || !strings.Contains(err.Error(), "holds raft state") {
		t.Fatalf("restore over a used directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, logStoreFile)); err != nil {
		t.Fatalf("the refused restore touched the existing log: %v", err)
	}
}
