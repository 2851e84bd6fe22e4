package server_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

func dialReq() proto.DialRequest {
	return proto.DialRequest{ClientAddr: "203.0.113.7:51234", User: "alice", SessionID: "sess-1", RequestID: "req-1"}
}

func TestDialRoundTrip(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("web-1")
	accepted := make(chan net.Conn, 1)
	serveEcho(t, a, accepted)

	nodes := e.proxy.srv.Nodes()
	if len(nodes) != 1 || nodes[0].ID != "web-1" || nodes[0].Labels["env"] != "test" || nodes[0].AgentVersion != "test-1.0" ||
		nodes[0].Tunnels != 1 || nodes[0].ProtocolVersion != proto.Version || nodes[0].RemoteAddr == nil || nodes[0].ConnectedSince.IsZero() {
		t.Fatalf("Nodes() = %+v", nodes)
	}
	if st := a.Status(); len(st) != 1 || st[0].State != agent.StateConnected || st[0].ProxyID != "p1" {
		t.Fatalf("agent Status() = %+v", st)
	}

	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nc := <-accepted
	ac := nc.(*agent.Conn)
	if got := ac.DialRequest(); got.User != "alice" || got.SessionID != "sess-1" || got.RequestID != "req-1" || got.Version != proto.Version {
		t.Fatalf("agent saw DialRequest %+v", got)
	}
	if got := ac.RemoteAddr().String(); got != "203.0.113.7:51234" {
		t.Fatalf("agent-side RemoteAddr = %s, want the client's address", got)
	}
	if got := ac.LocalAddr().String(); got != "web-1" {
		t.Fatalf("agent-side LocalAddr = %s", got)
	}
	if c.RemoteAddr().String() != nodes[0].RemoteAddr.String() || c.LocalAddr().String() != e.proxy.addr {
		t.Fatalf("proxy-side addrs = %s -> %s, want %s -> %s", c.LocalAddr(), c.RemoteAddr(), e.proxy.addr, nodes[0].RemoteAddr)
	}

	// 8 MiB arrive intact; the half-close reaches the node as EOF and the
	// node's answer still comes back after it.
	payload := make([]byte, 8<<20)
	rand.Read(payload)
	echoRoundTrip(t, c, payload)

	if got := e.proxy.metric(t, "jumpgate_tunnel_dials_total", "outcome", "ok"); got != 1 {
		t.Errorf("dials_total{ok} = %v", got)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_dial_duration_seconds"); got != 1 {
		t.Errorf("dial_duration_seconds count = %v", got)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_connected_nodes"); got != 1 {
		t.Errorf("connected_nodes = %v", got)
	}
	servertest.WaitFor(t, waitFor, "TunnelUp", func() bool { return len(e.proxy.eventsSnapshot()) >= 1 })
	if ev := e.proxy.eventsSnapshot(); len(ev) != 1 || ev[0].Type != server.TunnelUp || ev[0].Node.ID != "web-1" {
		t.Errorf("events = %+v", ev)
	}
}

func TestHalfCloseFromNode(t *testing.T) { testHalfCloseFromNode(t) }

// testHalfCloseFromNode runs TestHalfCloseFromNode with an agent changed by
// mutate (the TCP transport).
func testHalfCloseFromNode(t *testing.T, mutate ...func(*agent.Config)) {
	e := newEnv(t)
	a := e.startAgent("web-1", mutate...)
	// The node sends a banner and half-closes at once, like a server
	// that has nothing more to say; the user's bytes must still reach it.
	got := make(chan string, 1)
	go func() {
		c, err := a.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		io.WriteString(c, "banner")
		c.(interface{ CloseWrite() error }).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "banner" {
		t.Fatalf("read from node = %q, %v", b, err)
	}
	io.WriteString(c, "late words")
	c.(interface{ CloseWrite() error }).CloseWrite()
	if s := <-got; s != "late words" {
		t.Fatalf("node read %q", s)
	}
}

func TestManyConcurrentDials(t *testing.T) { testManyConcurrentDials(t) }

// testManyConcurrentDials runs TestManyConcurrentDials with an agent changed
// by mutate (the TCP transport).
func testManyConcurrentDials(t *testing.T, mutate ...func(*agent.Config)) {
	e := newEnv(t)
	a := e.startAgent("web-1", mutate...)
	serveEcho(t, a, nil)
	// More than quic-go's default of 100 concurrent streams.
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make(chan net.Conn, n)
	for i := range n {
		wg.Go(func() {
			c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
			if err != nil {
				errs <- err
				return
			}
			msg := fmt.Sprintf("hello from dial %d", i)
			c.SetDeadline(time.Now().Add(waitFor))
			if _, err := io.WriteString(c, msg); err != nil {
				errs <- err
				return
			}
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
				errs <- fmt.Errorf("dial %d echoed %q, %v", i, buf, err)
				return
			}
			conns <- c // all stay open at once
		})
	}
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Error(err)
	}
	open := 0
	for c := range conns {
		open++
		c.Close()
	}
	if open != n {
		t.Fatalf("%d of %d dials open at once", open, n)
	}
}

func TestDialOfflineNode(t *testing.T) {
	e := newEnv(t)
	_, err := e.proxy.srv.Dial(context.Background(), "ghost", dialReq())
	if !errors.Is(err, server.ErrNodeOffline) {
		t.Fatalf("err = %v, want ErrNodeOffline", err)
	}
	if want := "node ghost is offline: it has no tunnel to this proxy"; err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
	var de *server.DialError
	if !errors.As(err, &de) || de.Retryable || de.Node != "ghost" {
		t.Fatalf("err = %#v, want a non-retryable *DialError", err)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_dials_total", "outcome", "offline"); got != 1 {
		t.Errorf("dials_total{offline} = %v", got)
	}
}

func TestAgentRefusesDial(t *testing.T) {
	e := newEnv(t)
	// Nobody calls Accept: the node's SSH server is not running.
	e.startAgent("web-1", func(c *agent.Config) { c.AcceptTimeout = 100 * time.Millisecond })
	_, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if !errors.Is(err, server.ErrDialRefused) {
		t.Fatalf("err = %v, want ErrDialRefused", err)
	}
	if !strings.Contains(err.Error(), "dial node web-1: the node refused the connection: node web-1 did not accept the connection within 100ms") {
		t.Fatalf("err = %q", err)
	}
	var de *server.DialError
	if !errors.As(err, &de) || de.Retryable {
		t.Fatalf("err = %#v, want non-retryable", err)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_dials_total", "outcome", "refused"); got != 1 {
		t.Errorf("dials_total{refused} = %v", got)
	}
}

func TestAgentRefusesWhenBacklogFull(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	e.startAgent("web-1", func(c *agent.Config) {
		c.AcceptBacklog = 1
		c.AcceptTimeout = time.Minute
		c.Metrics = reg
	})
	// The first dial waits for Accept and holds the only backlog slot.
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := e.proxy.srv.Dial(ctx, "web-1", dialReq())
		first <- err
	}()
	servertest.WaitFor(t, waitFor, "the first dial to wait for Accept", func() bool {
		return gatherValue(t, reg, "jumpgate_tunnel_agent_pending_dials") == 1
	})
	_, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if !errors.Is(err, server.ErrDialRefused) || !strings.Contains(err.Error(), "node web-1 has 1 connections waiting for its SSH server already") {
		t.Fatalf("second dial = %v, want refused for the backlog", err)
	}
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first dial = %v, want context.Canceled", err)
	}
	// The agent notices the proxy gave up and frees the slot.
	servertest.WaitFor(t, waitFor, "the slot to be freed", func() bool {
		return gatherValue(t, reg, "jumpgate_tunnel_agent_pending_dials") == 0
	})
	if got := gatherValue(t, reg, "jumpgate_tunnel_agent_dials_total", "outcome", "aborted"); got != 1 {
		t.Errorf("agent dials_total{aborted} = %v", got)
	}
	if got := gatherValue(t, reg, "jumpgate_tunnel_agent_dials_total", "outcome", "refused_backlog"); got != 1 {
		t.Errorf("agent dials_total{refused_backlog} = %v", got)
	}
}

func TestDialHonoursContext(t *testing.T) {
	e := newEnv(t)
	// The agent would wait a minute for Accept; the caller gives up first.
	e.startAgent("web-1", func(c *agent.Config) { c.AcceptTimeout = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.proxy.srv.Dial(ctx, "web-1", dialReq())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Dial returned after %v", d)
	}
	var de *server.DialError
	if !errors.As(err, &de) || de.Retryable {
		t.Fatalf("err = %#v, want non-retryable", err)
	}

	// An already-canceled context does not even try.
	cancel()
	if _, err := e.proxy.srv.Dial(ctx, "web-1", dialReq()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial with done ctx = %v", err)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_dials_total", "outcome", "canceled"); got != 2 {
		t.Errorf("dials_total{canceled} = %v", got)
	}
}

func TestDialTimeout(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.DialTimeout = 200 * time.Millisecond })
	e.startAgent("web-1", func(c *agent.Config) { c.AcceptTimeout = time.Minute })
	_, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	var de *server.DialError
	if !errors.As(err, &de) || !de.Retryable || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Fatalf("err = %v, want a retryable timeout", err)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_dials_total", "outcome", "timeout"); got != 1 {
		t.Errorf("dials_total{timeout} = %v", got)
	}
}

func TestProxyRestart(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("web-1")
	serveEcho(t, a, nil)
	first := a.Status()[0].Since

	addr := e.proxy.addr
	e.proxy.stop(t)
	servertest.WaitFor(t, waitFor, "the agent to notice the proxy is gone", func() bool {
		return a.Status()[0].State != agent.StateConnected
	})
	if err := a.Status()[0].LastError; err == nil || !strings.Contains(err.Error(), "proxy p1 is shutting down") {
		t.Errorf("LastError = %v, want the proxy's shutdown reason", err)
	}

	// A new proxy process on the same address.
	e.proxy = e.startProxy(addr)
	servertest.WaitFor(t, waitFor, "the agent to reconnect", func() bool {
		st := a.Status()[0]
		return e.proxy.hasNode("web-1") && st.State == agent.StateConnected && st.Since.After(first)
	})
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoRoundTrip(t, c, []byte("after the restart"))
}

func TestRefusedHandshakes(t *testing.T) {
	e := newEnv(t)
	// A live tunnel with an open session that must not notice anything.
	good := e.startAgent("good")
	serveEcho(t, good, nil)
	live, err := e.proxy.srv.Dial(context.Background(), "good", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echoOnce(t, live, "before")

	otherCA := servertest.NewCA(t, "someone else's CA")
	emptyCert := &tls.Certificate{}
	tests := []struct {
		name      string
		nodeID    string
		cert      *tls.Certificate
		reason    string // metric label
		agentSees string
		proxyLogs string
	}{
		{
			name:      "wrong cluster",
			nodeID:    "n1",
			cert:      e.ca.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "n1", Cluster: "staging"}),
			reason:    "wrong_cluster",
			agentSees: `refused this node's tunnel: certificate is for cluster "staging", proxy p1 serves cluster "prod"`,
			proxyLogs: "certificate is for cluster",
		},
		{
			name:      "wrong kind",
			nodeID:    "n2",
			cert:      e.ca.Issue(t, identity.Identity{Kind: identity.KindUser, Name: "n2", Cluster: cluster}),
			reason:    "wrong_kind",
			agentSees: "certificate is for user n2@prod, of kind user: a tunnel needs a node certificate",
			proxyLogs: "a tunnel needs a node certificate",
		},
		{
			name:      "no certificate",
			nodeID:    "n3",
			cert:      emptyCert,
			reason:    "no_client_cert",
			agentSees: `TLS alert "tls: bad certificate": the proxy did not accept this node's certificate`,
			proxyLogs: "no client certificate",
		},
		{
			name:      "other CA",
			nodeID:    "n4",
			cert:      otherCA.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "n4", Cluster: cluster}),
			reason:    "untrusted_cert",
			agentSees: `TLS alert "tls: bad certificate"`,
			proxyLogs: "certificate signed by unknown authority",
		},
		{
			name:      "node name mismatch",
			nodeID:    "n5",
			cert:      e.nodeCert("somebody-else"),
			reason:    "node_id_mismatch",
			agentSees: `Hello names node "n5" but the certificate is for node "somebody-else"`,
			proxyLogs: "Hello names node",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.agentConfig(tt.nodeID, tt.cert)
			logger, logs := newLogger(t, "bad agent")
			cfg.Logger = logger
			bad := runAgent(t, cfg)
			servertest.WaitFor(t, waitFor, "three refused attempts", func() bool { return bad.Status()[0].Failures >= 3 })
			st := bad.Status()[0]
			if st.State == agent.StateConnected || st.LastError == nil || !strings.Contains(st.LastError.Error(), tt.agentSees) {
				t.Fatalf("agent status = %+v, want LastError saying %q", st, tt.agentSees)
			}
			var re *agent.RefusedError
			if !errors.As(st.LastError, &re) {
				t.Fatalf("LastError = %#v, want *agent.RefusedError", st.LastError)
			}
			// Logged once, not on every retry.
			if n := logs.Count("cannot set up tunnel", "level=WARN"); n != 1 {
				t.Errorf("agent logged the refusal %d times at WARN, want once:\n%s", n, logs)
			}
			if got := e.proxy.metric(t, "jumpgate_tunnel_handshake_failures_total", "reason", tt.reason); got < 3 {
				t.Errorf("handshake_failures_total{%s} = %v, want >= 3", tt.reason, got)
			}
			if e.proxy.log.Count("refused tunnel", tt.proxyLogs, "remote=127.0.0.1:") == 0 {
				t.Errorf("proxy did not log the refusal with remote address and %q", tt.proxyLogs)
			}
			if e.proxy.hasNode(tt.nodeID) {
				t.Errorf("refused node %s is registered", tt.nodeID)
			}
			// The live session did not notice.
			echoOnce(t, live, "during "+tt.name)
		})
	}
	echoOnce(t, live, "after")
	if n := e.proxy.srv.Nodes(); len(n) != 1 || n[0].ID != "good" {
		t.Fatalf("Nodes() = %+v", n)
	}
}

func TestClientCARotation(t *testing.T) {
	// The proxy reads ClientCAs on every handshake, and the agent retries a
	// refused tunnel: trusting a new CA takes effect without a restart.
	var pool atomic.Pointer[x509.CertPool]
	e := newEnv(t, func(c *server.Config) { c.ClientCAs = pool.Load })
	pool.Store(e.ca.Pool())
	newCA := servertest.NewCA(t, "new TLS CA")
	cfg := e.agentConfig("web-1", newCA.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "web-1", Cluster: cluster}))
	cfg.RootCAs = e.ca.Pool // the agent trusts the proxy's (old) CA
	a := runAgent(t, cfg)
	servertest.WaitFor(t, waitFor, "a refused attempt", func() bool { return a.Status()[0].Failures >= 1 })
	if e.proxy.hasNode("web-1") {
		t.Fatal("node with an untrusted certificate registered")
	}
	both := e.ca.Pool().Clone()
	both.AddCert(newCA.Cert)
	pool.Store(both)
	servertest.WaitFor(t, waitFor, "the node to connect once its CA is trusted", func() bool { return e.proxy.hasNode("web-1") })
}
