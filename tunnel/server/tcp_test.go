package server_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/internal/transport"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

// overTCP makes an agent use the TCP transport.
func overTCP(c *agent.Config) { c.Transport = agent.TransportTCP }

func TestTCPDialRoundTrip(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("web-1", overTCP)
	accepted := make(chan net.Conn, 1)
	serveEcho(t, a, accepted)

	nodes := e.proxy.srv.Nodes()
	if len(nodes) != 1 || nodes[0].ID != "web-1" || nodes[0].Transport != "tcp" || nodes[0].Tunnels != 1 || nodes[0].ProtocolVersion != proto.Version {
		t.Fatalf("Nodes() = %+v, want web-1 over tcp", nodes)
	}
	if _, ok := nodes[0].RemoteAddr.(*net.TCPAddr); !ok {
		t.Fatalf("RemoteAddr = %#v, want a TCP address", nodes[0].RemoteAddr)
	}
	if st := a.Status(); len(st) != 1 || st[0].State != agent.StateConnected || st[0].Transport != "tcp" || st[0].UDPBlocked || st[0].ProxyID != "p1" {
		t.Fatalf("agent Status() = %+v", st)
	}

	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ac := (<-accepted).(*agent.Conn)
	if got := ac.DialRequest(); got.User != "alice" || got.SessionID != "sess-1" || got.Version != proto.Version {
		t.Fatalf("agent saw DialRequest %+v", got)
	}
	if got := ac.RemoteAddr().String(); got != "203.0.113.7:51234" {
		t.Fatalf("agent-side RemoteAddr = %s, want the client's address", got)
	}
	if c.RemoteAddr().String() != nodes[0].RemoteAddr.String() || c.LocalAddr().String() != e.proxy.addr {
		t.Fatalf("proxy-side addrs = %s -> %s, want %s -> %s", c.LocalAddr(), c.RemoteAddr(), e.proxy.addr, nodes[0].RemoteAddr)
	}
	payload := make([]byte, 8<<20)
	rand.Read(payload)
	echoRoundTrip(t, c, payload)

	if got := e.proxy.metric(t, "jumpgate_tunnel_tunnels", "transport", "tcp"); got != 1 {
		t.Errorf("tunnels{tcp} = %v", got)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_tunnels", "transport", "quic"); got != 0 {
		t.Errorf("tunnels{quic} = %v", got)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_dials_total", "outcome", "ok"); got != 1 {
		t.Errorf("dials_total{ok} = %v", got)
	}
}

func TestTCPHalfCloseFromNode(t *testing.T) { testHalfCloseFromNode(t, overTCP) }

func TestTCPManyConcurrentDials(t *testing.T) { testManyConcurrentDials(t, overTCP) }

// The user's side closes while the node still sends: the node reads EOF and
// its writes do not block, as with QUIC's STOP_SENDING.
func TestTCPCloseWhileNodeSends(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("web-1", overTCP)
	nodeDone := make(chan error, 1)
	go func() {
		c, err := a.Accept()
		if err != nil {
			nodeDone <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitFor))
		chunk := make([]byte, 1<<20)
		for range 40 { // more than the 16 MiB stream window
			if _, err := c.Write(chunk); err != nil {
				nodeDone <- err
				return
			}
		}
		_, err = io.ReadAll(c)
		nodeDone <- err
	}()
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	c.Read(make([]byte, 1))
	c.Close()
	if err := <-nodeDone; err != nil {
		t.Fatalf("node side: %v, want its writes to go through and then EOF", err)
	}
}

func TestTCPProxyShutdownSaysWhy(t *testing.T) {
	e := newEnv(t)
	logger, logs := newLogger(t, "agent")
	e.startAgent("web-1", overTCP, func(c *agent.Config) { c.Logger = logger })
	e.proxy.stop(t)
	// (Status shows the reason only until the next attempt fails.)
	servertest.WaitFor(t, waitFor, "the agent to log the proxy's reason", func() bool {
		return logs.Count("tunnel down; reconnecting", "proxy p1 is shutting down") == 1
	})
}

func TestTCPAgentStopSaysWhy(t *testing.T) {
	e := newEnv(t)
	cfg := e.agentConfig("web-1", e.nodeCert("web-1"))
	overTCP(&cfg)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	servertest.WaitFor(t, waitFor, "the node to connect", func() bool { return e.proxy.hasNode("web-1") })
	a.Close()
	<-done
	servertest.WaitFor(t, waitFor, "TunnelDown", func() bool {
		ev := e.proxy.eventsSnapshot()
		return len(ev) == 2 && ev[1].Type == server.TunnelDown
	})
	if err := e.proxy.eventsSnapshot()[1].Err; err == nil || !strings.Contains(err.Error(), "node web-1 agent is stopping") {
		t.Fatalf("TunnelDown cause = %v, want the agent's reason", err)
	}
}

// dialTLS connects to the proxy's TCP port as a tunnel client would.
func dialTLS(t testing.TB, addr string, cert *tls.Certificate) *tls.Conn {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{proto.ALPN},
		InsecureSkipVerify: true, // this test client trusts the test proxy
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// dialRawTCP is dialRaw over TCP: a hand-made agent on the TCP transport.
func dialRawTCP(t testing.TB, addr string, cert *tls.Certificate, hello proto.Hello) (transport.Conn, proto.HelloAck, error) {
	t.Helper()
	tun, err := transport.NewMuxClient(dialTLS(t, addr, cert), transport.MuxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tun.Close(proto.CloseNormal, "")
		<-tun.Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := tun.OpenStream(ctx)
	if err != nil {
		return tun, proto.HelloAck{}, err
	}
	defer st.Close()
	if err := proto.WriteMessage(st, hello); err != nil {
		return tun, proto.HelloAck{}, err
	}
	ack, err := proto.Expect[proto.HelloAck](st)
	return tun, ack, err
}

func TestTCPReconnectReplacesLingeringTunnel(t *testing.T) {
	e := newEnv(t)
	old, ack, err := dialRawTCP(t, e.proxy.addr, e.nodeCert("web-1"), hello("web-1", "dead-process", "tcp:"+e.proxy.addr))
	if err != nil || !ack.Accepted {
		t.Fatalf("raw tunnel: %+v, %v", ack, err)
	}
	a := e.startAgent("web-1", overTCP)
	select {
	case <-old.Done():
	case <-time.After(waitFor):
		t.Fatal("the lingering tunnel was not closed")
	}
	// The reason travels over TCP too (a Close on the control stream).
	ce, ok := transport.AsClose(old.Err())
	if !ok || !ce.Remote || ce.Code != proto.CloseReplaced || !strings.Contains(ce.Reason, "replaced by a newer tunnel from node web-1") {
		t.Fatalf("old tunnel closed with %v, want CloseReplaced", old.Err())
	}
	serveEcho(t, a, nil)
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoRoundTrip(t, c, []byte("through the new tunnel"))
	if n := e.proxy.srv.Nodes(); len(n) != 1 || n[0].Tunnels != 1 {
		t.Fatalf("Nodes() = %+v", n)
	}
}

// Garbage on the TCP tunnel path is refused with a clear log line and a
// metric, and live tunnels do not notice.
func TestTCPGarbageIsRefused(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.HandshakeTimeout = time.Second })
	good := e.startAgent("good", overTCP)
	serveEcho(t, good, nil)
	live, err := e.proxy.srv.Dial(context.Background(), "good", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echoOnce(t, live, "before")

	// expectClosed reads until the proxy closes the connection.
	expectClosed := func(t *testing.T, tc *tls.Conn) {
		t.Helper()
		tc.SetReadDeadline(time.Now().Add(waitFor))
		if _, err := io.Copy(io.Discard, tc); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the proxy kept the connection open")
			}
		}
		tc.Close()
	}
	tests := []struct {
		name      string
		cert      *tls.Certificate
		send      func(t *testing.T, tc *tls.Conn)
		reason    string // metric label
		proxyLogs string
	}{
		{
			name: "not yamux",
			cert: e.nodeCert("n1"),
			send: func(t *testing.T, tc *tls.Conn) {
				io.WriteString(tc, "GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
				expectClosed(t, tc)
			},
			reason:    "bad_transport",
			proxyLogs: "the peer does not speak yamux: yamux: Invalid protocol version: 71",
		},
		{
			name: "binary garbage without a certificate",
			cert: &tls.Certificate{},
			send: func(t *testing.T, tc *tls.Conn) {
				b := make([]byte, 4096)
				rand.Read(b)
				b[0] = 0xff // not yamux's version 0
				tc.Write(b)
				expectClosed(t, tc)
			},
			reason:    "bad_transport",
			proxyLogs: "Invalid protocol version: 255",
		},
		{
			name: "garbage Hello",
			cert: e.nodeCert("n3"),
			send: func(t *testing.T, tc *tls.Conn) {
				tun, err := transport.NewMuxClient(tc, transport.MuxConfig{})
				if err != nil {
					t.Fatal(err)
				}
				defer func() { <-tun.Done() }()
				st, err := tun.OpenStream(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				st.Write([]byte{42, 0, 0, 0, 2, '{', '}'})
				ack, err := proto.Expect[proto.HelloAck](st)
				if err != nil || ack.Accepted || !strings.Contains(ack.Error, "bad Hello: read Hello: unknown message type 42") {
					t.Errorf("HelloAck = %+v, %v; want a refusal naming the bad Hello", ack, err)
				}
				<-tun.Done()
				if ce, ok := transport.AsClose(tun.Err()); !ok || ce.Code != proto.CloseRefused || !strings.Contains(ce.Reason, "bad Hello") {
					t.Errorf("tunnel closed with %v, want CloseRefused and the reason", tun.Err())
				}
			},
			reason:    "bad_hello",
			proxyLogs: "bad Hello: read Hello: unknown message type 42",
		},
		{
			name:      "silence",
			cert:      e.nodeCert("n4"),
			send:      expectClosed,
			reason:    "hello_timeout",
			proxyLogs: "no yamux session within 1s",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.proxy.metric(t, "jumpgate_tunnel_handshake_failures_total", "reason", tt.reason, "transport", "tcp")
			tt.send(t, dialTLS(t, e.proxy.addr, tt.cert))
			// The proxy counts a refusal, then logs it: wait for both.
			servertest.WaitFor(t, waitFor, fmt.Sprintf("the refusal to be counted, and logged with the remote address and %q", tt.proxyLogs), func() bool {
				return e.proxy.metric(t, "jumpgate_tunnel_handshake_failures_total", "reason", tt.reason, "transport", "tcp") == before+1 &&
					e.proxy.log.Count("refused tunnel", tt.proxyLogs, "remote=127.0.0.1:", "transport=tcp") > 0
			})
			echoOnce(t, live, "during "+tt.name)
		})
	}
	if n := e.proxy.srv.Nodes(); len(n) != 1 || n[0].ID != "good" {
		t.Fatalf("Nodes() = %+v", n)
	}
}

func TestTCPRefusedHandshakes(t *testing.T) {
	e := newEnv(t)
	otherCA := servertest.NewCA(t, "someone else's CA")
	tests := []struct {
		name      string
		nodeID    string
		cert      *tls.Certificate
		reason    string // metric label; "" when the listener refuses in TLS
		agentSees string
	}{
		{"wrong kind", "n1", e.ca.Issue(t, identity.Identity{Kind: identity.KindUser, Name: "n1", Cluster: cluster}),
			"wrong_kind", "certificate is for user n1@prod, of kind user: a tunnel needs a node certificate"},
		{"wrong cluster", "n2", e.ca.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "n2", Cluster: "staging"}),
			"wrong_cluster", `certificate is for cluster "staging", proxy p1 serves cluster "prod"`},
		{"no certificate", "n3", &tls.Certificate{},
			"no_client_cert", "no client certificate: a node must present its certificate from the cluster's TLS CA"},
		{"node name mismatch", "n4", e.nodeCert("somebody-else"),
			"node_id_mismatch", `Hello names node "n4" but the certificate is for node "somebody-else"`},
		{"other CA", "n5", otherCA.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "n5", Cluster: cluster}),
			"", `TLS alert "tls: unknown certificate authority": the proxy did not accept this node's certificate`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.agentConfig(tt.nodeID, tt.cert)
			overTCP(&cfg)
			logger, logs := newLogger(t, "bad agent")
			cfg.Logger = logger
			bad := runAgent(t, cfg)
			servertest.WaitFor(t, waitFor, "three refused attempts", func() bool { return bad.Status()[0].Failures >= 3 })
			st := bad.Status()[0]
			var re *agent.RefusedError
			if st.LastError == nil || !strings.Contains(st.LastError.Error(), tt.agentSees) || !errors.As(st.LastError, &re) {
				t.Fatalf("agent status = %+v, want a *RefusedError saying %q", st, tt.agentSees)
			}
			if n := logs.Count("cannot set up tunnel", "level=WARN"); n != 1 {
				t.Errorf("agent logged the refusal %d times at WARN, want once:\n%s", n, logs)
			}
			if tt.reason != "" {
				if got := e.proxy.metric(t, "jumpgate_tunnel_handshake_failures_total", "reason", tt.reason, "transport", "tcp"); got < 3 {
					t.Errorf("handshake_failures_total{%s,tcp} = %v, want >= 3", tt.reason, got)
				}
				if e.proxy.log.Count("refused tunnel", "transport=tcp", "remote=127.0.0.1:") == 0 {
					t.Error("proxy did not log the refusal")
				}
			}
			if e.proxy.hasNode(tt.nodeID) {
				t.Errorf("refused node %s is registered", tt.nodeID)
			}
		})
	}
}
