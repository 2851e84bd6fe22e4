package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

// logBuf collects log output; see authtest.LogBuf.
type logBuf = authtest.LogBuf

func TestMain(m *testing.M) { servertest.MainLeakCheck(m) }

const (
	cluster = "prod"
	waitFor = 10 * time.Second
)

func newLogger(t testing.TB, name string) (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// env is one proxy with its PKI.
type env struct {
	t     testing.TB
	ca    *servertest.CA
	proxy *proxy
}

// proxy is a running tunnel server, with tunnels over QUIC on a UDP socket
// and over TCP (through a TLS listener like mesh/ingress's) on the same
// port.
type proxy struct {
	srv     *server.Server
	pc      net.PacketConn
	stopTLS func()
	addr    string
	reg     *prometheus.Registry
	log     *logBuf
	served  chan error
	once    sync.Once

	mu     sync.Mutex
	events []server.TunnelEvent
}

func newEnv(t testing.TB, mutate ...func(*server.Config)) *env {
	t.Helper()
	return newEnvWith(t, nil, mutate...)
}

// newEnvWith is newEnv with the proxy's socket wrapped by wrap.
func newEnvWith(t testing.TB, wrap func(net.PacketConn) net.PacketConn, mutate ...func(*server.Config)) *env {
	t.Helper()
	e := &env{t: t, ca: servertest.NewCA(t, "prod TLS CA")}
	e.proxy = e.startProxyWith("127.0.0.1:0", wrap, mutate...)
	return e
}

func (e *env) startProxy(addr string, mutate ...func(*server.Config)) *proxy {
	e.t.Helper()
	return e.startProxyWith(addr, nil, mutate...)
}

func (e *env) startProxyWith(addr string, wrap func(net.PacketConn) net.PacketConn, mutate ...func(*server.Config)) *proxy {
	t := e.t
	t.Helper()
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	if addr == "127.0.0.1:0" {
		pc, ln = servertest.ListenBoth(t, "127.0.0.1")
	} else {
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			t.Fatal(err)
		}
	}
	if wrap != nil {
		pc = wrap(pc)
	}
	cert := e.ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: cluster})
	p := &proxy{pc: pc, addr: pc.LocalAddr().String(), reg: prometheus.NewRegistry(), served: make(chan error, 1)}
	var logger *slog.Logger
	logger, p.log = newLogger(t, "proxy "+p.addr)
	cfg := server.Config{
		ProxyID:        "p1",
		ClusterName:    cluster,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		ClientCAs:      e.ca.Pool,
		OnTunnel: func(ev server.TunnelEvent) {
			p.mu.Lock()
			p.events = append(p.events, ev)
			p.mu.Unlock()
		},
		Logger:  logger,
		Metrics: p.reg,
	}
	for _, f := range mutate {
		f(&cfg)
	}
	p.srv, err = server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { p.served <- p.srv.Serve(pc) }()
	p.stopTLS = servertest.ServeTLS(t, ln, cert, e.ca.Pool, p.srv.HandleTLS)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop closes the proxy and its socket; it may be called more than once.
func (p *proxy) stop(t testing.TB) {
	p.once.Do(func() {
		p.stopTLS()
		p.srv.Close()
		if err := <-p.served; !errors.Is(err, server.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		p.pc.Close()
	})
}

func (p *proxy) eventsSnapshot() []server.TunnelEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]server.TunnelEvent(nil), p.events...)
}

// hasNode reports whether nodeID is connected.
func (p *proxy) hasNode(nodeID string) bool {
	for _, n := range p.srv.Nodes() {
		if n.ID == nodeID {
			return true
		}
	}
	return false
}

func (p *proxy) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return gatherValue(t, p.reg, name, labels...)
}

func gatherValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	return authtest.Metric(t, reg, name, labels...)
}

// nodeCert issues a node certificate of this env's CA.
func (e *env) nodeCert(name string) *tls.Certificate {
	return e.ca.Issue(e.t, identity.Identity{Kind: identity.KindNode, Name: name, Cluster: cluster})
}

// agentConfig is a config for node nodeID with cert, pointed at the proxy.
func (e *env) agentConfig(nodeID string, cert *tls.Certificate) agent.Config {
	logger, _ := newLogger(e.t, "agent "+nodeID)
	return agent.Config{
		ProxyAddrs:           []string{e.proxy.addr},
		NodeID:               nodeID,
		ClusterName:          cluster,
		Labels:               func() map[string]string { return map[string]string{"env": "test"} },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		RootCAs:              e.ca.Pool,
		Version:              "test-1.0",
		MinBackoff:           10 * time.Millisecond,
		MaxBackoff:           100 * time.Millisecond,
		Logger:               logger,
	}
}

// runAgent starts an agent; it is closed at the end of the test.
func runAgent(t testing.TB, cfg agent.Config) *agent.Agent {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		a.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Errorf("Run returned %v, want net.ErrClosed", err)
		}
	})
	return a
}

// startAgent runs a good agent for nodeID and waits until the proxy has it.
func (e *env) startAgent(nodeID string, mutate ...func(*agent.Config)) *agent.Agent {
	e.t.Helper()
	cfg := e.agentConfig(nodeID, e.nodeCert(nodeID))
	for _, f := range mutate {
		f(&cfg)
	}
	a := runAgent(e.t, cfg)
	servertest.WaitFor(e.t, waitFor, "node "+nodeID+" to connect", func() bool {
		return e.proxy.hasNode(nodeID) && a.Status()[0].State == agent.StateConnected
	})
	return a
}

// serveEcho accepts connections from ln and echoes each one back, then
// half-closes it. Each accepted conn is also sent on accepted, if not nil.
func serveEcho(t testing.TB, ln net.Listener, accepted chan<- net.Conn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if accepted != nil {
				accepted <- c
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(interface{ CloseWrite() error }).CloseWrite()
				io.Copy(io.Discard, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// echoRoundTrip writes payload on c, half-closes, and checks it all comes
// back followed by EOF.
func echoRoundTrip(t testing.TB, c net.Conn, payload []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes, want %d identical bytes", len(got), len(payload))
	}
}

// echoOnce exchanges one message on an open conn without closing it.
func echoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(waitFor))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write on live conn: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo on live conn = %q, %v", buf, err)
	}
}

// rawTunnel is a hand-made agent speaking the protocol directly, to play
// parts a well-behaved agent never plays.
type rawTunnel struct {
	qc  *quic.Conn
	ack proto.HelloAck
}

func dialRaw(t testing.TB, addr string, cert *tls.Certificate, hello proto.Hello) (*rawTunnel, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	qc, err := dialRawNoHello(ctx, addr, cert)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	r := &rawTunnel{qc: qc}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return r, err
	}
	if err := proto.WriteMessage(st, hello); err != nil {
		return r, err
	}
	r.ack, err = proto.Expect[proto.HelloAck](st)
	st.Close()
	return r, err
}

func dialRawNoHello(ctx context.Context, addr string, cert *tls.Certificate) (*quic.Conn, error) {
	tc := &tls.Config{
		NextProtos:         []string{proto.ALPN},
		InsecureSkipVerify: true, // this test client trusts the test proxy
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		},
	}
	return quic.DialAddr(ctx, addr, tc, &quic.Config{MaxIncomingStreams: 1000})
}

// answerDial accepts one dial on the raw tunnel and answers it with resp.
func (r *rawTunnel) answerDial(t testing.TB, resp proto.DialResponse) (*quic.Stream, proto.DialRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := r.qc.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("raw tunnel: accept stream: %v", err)
	}
	req, err := proto.Expect[proto.DialRequest](st)
	if err != nil {
		t.Fatalf("raw tunnel: read DialRequest: %v", err)
	}
	if err := proto.WriteMessage(st, resp); err != nil {
		t.Fatalf("raw tunnel: write DialResponse: %v", err)
	}
	return st, req
}
