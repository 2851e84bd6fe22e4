package raftnode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// testCluster runs auth raft members in one process over mutual TLS on
// loopback. Forwarding goes straight to the leader's ApplyLocal, as the
// auth API's internal endpoint does over HTTPS.
type testCluster struct {
	t     testing.TB
	ca    *authtest.CA
	mu    sync.Mutex
	nodes map[string]*Node
	// cut holds the ids of partitioned members: their handshakes fail in
	// both directions (see partition).
	cut sync.Map
}

func newTestCluster(t testing.TB) *testCluster {
	return &testCluster{t: t, ca: authtest.NewCA(t, "c1"), nodes: map[string]*Node{}}
}

func (c *testCluster) node(id string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

func (c *testCluster) start(id string, bootstrap bool) *Node {
	c.t.Helper()
	cert := c.ca.Issue(c.t, identity.Identity{Kind: identity.KindAuth, Name: id, Cluster: "c1"})
	empty := x509.NewCertPool()
	n, err := Open(Config{
		ID:        id,
		Dir:       filepath.Join(c.t.TempDir(), id),
		BindAddr:  "127.0.0.1:0",
		Bootstrap: bootstrap,
		Store:     state.New(nil),
		TLS: &TLS{
			Cluster:     "c1",
			Certificate: func() (*tls.Certificate, error) { return cert, nil },
			RootCAs: func() *x509.CertPool {
				if _, cut := c.cut.Load(id); cut {
					return empty // trusts no one, so no handshake with it completes
				}
				return c.ca.Pool()
			},
		},
		Forward: func(ctx context.Context, leader string, cmd []byte) (uint64, error) {
			l := c.node(leader)
			if l == nil {
				return 0, &RetryableError{Err: fmt.Errorf("leader %s is gone", leader)}
			}
			return l.ApplyLocal(cmd)
		},
		ApplyTimeout: 5 * time.Second,
	})
	if err != nil {
		c.t.Fatalf("open %s: %v", id, err)
	}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	c.t.Cleanup(func() { c.stop(id) })
	return n
}

func (c *testCluster) stop(id string) {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if n != nil {
		n.Close()
	}
}

// partition cuts id off from the others (or heals it): every handshake
// from or to it fails, and the pooled connections are closed.
func (c *testCluster) partition(id string, cut bool) {
	if cut {
		c.cut.Store(id, true)
	} else {
		c.cut.Delete(id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		n.transport.CloseStreams()
	}
}

func (c *testCluster) leader() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.IsLeader() {
			return n
		}
	}
	return nil
}

// retry applies cmd via n until raft accepts it (a leader may be
// changing); the command's own error is returned.
func retry(n *Node, cmd []byte, deadline time.Time) error {
	for {
		_, err := n.Apply(cmd)
		var re *RetryableError
		if err == nil || !errors.As(err, &re) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func userCmd(t testing.TB, name string, create bool) []byte {
	cmd, err := state.Encode(state.TypeUpsertUser, state.UpsertUser{User: state.User{Name: name, Roles: []string{"dev"}}, Create: create})
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// threeVotersOneNonvoter starts a1 (bootstrap), adds a2 and a3 as voters
// and n1 as a non-voter.
func threeVotersOneNonvoter(t testing.TB) *testCluster { return startCluster(t, "a2", "a3", "n1") }

// startCluster starts a1 (bootstrap) and adds the others: voters, or a
// non-voter for ids starting with n.
func startCluster(t testing.TB, others ...string) *testCluster {
	c := newTestCluster(t)
	a1 := c.start("a1", true)
	if err := a1.WaitLeader(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, id := range others {
		n := c.start(id, false)
		var err error
		if id[0] == 'n' {
			err = a1.AddNonvoter(id, n.Addr())
		} else {
			err = a1.AddVoter(id, n.Addr())
		}
		if err != nil {
			t.Fatalf("add %s: %v", id, err)
		}
	}
	return c
}

func TestMembersReplicateAndForward(t *testing.T) {
	c := threeVotersOneNonvoter(t)
	servers, err := c.node("a1").Servers()
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]string{}
	for _, s := range servers {
		roles[s.ID] = s.Role
	}
	want := map[string]string{"a1": RoleVoter, "a2": RoleVoter, "a3": RoleVoter, "n1": RoleNonvoter}
	for id, r := range want {
		if roles[id] != r {
			t.Errorf("%s: role %q, want %q (all: %v)", id, roles[id], r, roles)
		}
	}

	// A write on the non-voter is forwarded, and visible there on return.
	n1 := c.node("n1")
	deadline := time.Now().Add(10 * time.Second)
	if err := retry(n1, userCmd(t, "alice", true), deadline); err != nil {
		t.Fatalf("write via non-voter: %v", err)
	}
	if _, ok := n1.cfg.Store.User("alice"); !ok {
		t.Fatal("the non-voter answered before its own state had the write")
	}
	// The command's own failure comes back through the forwarder's FSM.
	_, err = n1.Apply(userCmd(t, "alice", true))
	if err == nil || errors.As(err, new(*RetryableError)) {
		t.Fatalf("creating alice twice via the non-voter: err %v, want the FSM's refusal", err)
	}
	for _, id := range []string{"a1", "a2", "a3"} {
		n := c.node(id)
		authtest.WaitFor(t, 5*time.Second, id+" has alice", func() bool { _, ok := n.cfg.Store.User("alice"); return ok })
	}

	// Promote the non-voter, then remove it; the only voter cannot go.
	if err := c.node("a1").AddVoter("n1", ""); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if s, _, _ := c.node("a1").member("n1"); s.Role != RoleVoter {
		t.Fatalf("n1 after promote: %+v", s)
	}
	if err := c.node("a1").Remove("n1"); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, ok, _ := c.node("a1").member("n1"); ok {
		t.Fatal("n1 still a member after remove")
	}
	if err := c.node("a1").AddVoter("nobody", ""); err == nil {
		t.Fatal("promoting a non-member succeeded")
	}
}

// TestLeaderKilledWhileWriting: writers write through every member while
// the leader is killed. Every acknowledged write must be on every
// surviving member afterwards; a new leader must serve within seconds.
func TestLeaderKilledWhileWriting(t *testing.T) {
	c := threeVotersOneNonvoter(t)
	var (
		mu    sync.Mutex
		acked []string
		seq   atomic.Int64
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	members := []string{"a1", "a2", "a3", "n1"}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("u%d", seq.Add(1))
				n := c.node(members[(w+i)%len(members)])
				if n == nil {
					continue
				}
				if _, err := n.Apply(userCmd(t, name, true)); err == nil {
					mu.Lock()
					acked = append(acked, name)
					mu.Unlock()
				}
			}
		}()
	}
	authtest.WaitFor(t, 10*time.Second, "writes flowing", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 50 })
	old := c.leader()
	if old == nil {
		t.Fatal("no leader")
	}
	oldID := old.cfg.ID
	killed := time.Now()
	c.stop(oldID)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	authtest.WaitFor(t, 10*time.Second, "a new leader", func() bool { l := c.leader(); return l != nil && l.cfg.ID != oldID })
	elected := time.Since(killed)
	authtest.WaitFor(t, 10*time.Second, "writes after the new leader", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > before+50 })
	cancel()
	wg.Wait()
	t.Logf("leader %s killed; new leader %s after %v; %d writes acknowledged", oldID, c.leader().cfg.ID, elected.Round(time.Millisecond), len(acked))

	l := c.leader()
	if err := l.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, id := range members {
		n := c.node(id)
		if n == nil {
			continue
		}
		authtest.WaitFor(t, 10*time.Second, id+" caught up", func() bool { return n.cfg.Store.Index() >= l.cfg.Store.Index() })
		for _, name := range acked {
			if _, ok := n.cfg.Store.User(name); !ok {
				t.Fatalf("%s lost acknowledged write %s", id, name)
			}
		}
	}
}

// TestTransportRefusesStrangers: the raft port refuses garbage, clients
// without a certificate and certificates of other kinds, and keeps
// replicating.
func TestTransportRefusesStrangers(t *testing.T) {
	c := threeVotersOneNonvoter(t)
	addr := c.node("a2").Addr()

	garbage, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	garbage.Write([]byte("GET / HTTP/1.0\r\n\r\n\x00\x01\x02"))
	garbage.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = garbage.Read(make([]byte, 64)) // a TLS alert or EOF: the connection ends either way
	garbage.Close()

	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no certificate", nil},
		{"proxy certificate", c.ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "a9", Cluster: "c1"})},
		{"auth server of another cluster", c.ca.Issue(t, identity.Identity{Kind: identity.KindAuth, Name: "a9", Cluster: "other"})},
	} {
		conf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{raftALPN}} //nolint:gosec // test client
		if tc.cert != nil {
			conf.Certificates = []tls.Certificate{*tc.cert}
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
		if err == nil {
			// TLS 1.3: the server's verdict on the client certificate
			// arrives with the first read.
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil {
			t.Errorf("%s: the raft port accepted the connection", tc.name)
		}
	}
	if err := retry(c.node("a1"), userCmd(t, "after-garbage", true), time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	n := c.node("a2")
	authtest.WaitFor(t, 5*time.Second, "a2 replicates after strangers", func() bool { _, ok := n.cfg.Store.User("after-garbage"); return ok })
}

// TestPartitionAndRejoin cuts a follower voter off, then the leader, then
// loses the non-voter: the majority keeps accepting writes each time,
// the cut-off leader accepts none, and every member has every write once
// it is back.
func TestPartitionAndRejoin(t *testing.T) {
	c := threeVotersOneNonvoter(t)
	deadline := func() time.Time { return time.Now().Add(15 * time.Second) }
	var names []string
	write := func(via *Node, name string) {
		t.Helper()
		if err := retry(via, userCmd(t, name, true), deadline()); err != nil {
			t.Fatalf("write %s via %s: %v", name, via.cfg.ID, err)
		}
		names = append(names, name)
	}
	leaderNot := func(not string) *Node {
		var l *Node
		authtest.WaitFor(t, 15*time.Second, "a leader other than "+not, func() bool {
			l = c.leader()
			return l != nil && l.cfg.ID != not && !isCut(c, l.cfg.ID)
		})
		return l
	}
	write(c.leader(), "before")

	// A follower voter partitioned away: the other two commit.
	l := c.leader()
	follower := "a2"
	if l.cfg.ID == "a2" {
		follower = "a3"
	}
	c.partition(follower, true)
	write(leaderNot(follower), "while-follower-cut")
	c.partition(follower, false)

	// The leader partitioned away: the others elect a new one and go on;
	// the old one cannot commit.
	old := c.leader()
	c.partition(old.cfg.ID, true)
	nl := leaderNot(old.cfg.ID)
	write(nl, "while-leader-cut")
	f := old.raft.Apply(userCmd(t, "lost", true), 2*time.Second)
	if f.Error() == nil {
		t.Fatal("a partitioned leader committed a write")
	}
	c.partition(old.cfg.ID, false)

	// The non-voter's region lost: writes go on; it catches up on return.
	c.partition("n1", true)
	write(leaderNot(""), "while-nonvoter-cut")
	c.partition("n1", false)

	l = leaderNot("")
	if err := l.Barrier(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a1", "a2", "a3", "n1"} {
		n := c.node(id)
		authtest.WaitFor(t, 15*time.Second, id+" has every write", func() bool {
			for _, name := range names {
				if _, ok := n.cfg.Store.User(name); !ok {
					return false
				}
			}
			return true
		})
		if _, ok := n.cfg.Store.User("lost"); ok {
			t.Fatalf("%s has the write the partitioned leader could not commit", id)
		}
	}
}

func isCut(c *testCluster, id string) bool { _, cut := c.cut.Load(id); return cut }
