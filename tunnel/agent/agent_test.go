package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

const waitFor = 10 * time.Second

func logger(t *testing.T) (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", lb)
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// startProxy runs a tunnel server for cluster "prod" whose own certificate
// is cert; it is closed at the end of the test.
func startProxy(t *testing.T, ca *servertest.CA, id string, cert *tls.Certificate) (*server.Server, string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := logger(t)
	srv, err := server.New(server.Config{
		ProxyID:        id,
		ClusterName:    "prod",
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		ClientCAs:      ca.Pool,
		Logger:         log,
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
		pc.Close()
	})
	return srv, pc.LocalAddr().String()
}

func proxyCert(t *testing.T, ca *servertest.CA, id string) *tls.Certificate {
	return ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: id, Cluster: "prod"})
}

func config(t *testing.T, ca *servertest.CA, addrs ...string) (agent.Config, *logBuf) {
	log, lb := logger(t)
	cert := ca.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "web-1", Cluster: "prod"})
	return agent.Config{
		ProxyAddrs:           addrs,
		NodeID:               "web-1",
		ClusterName:          "prod",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		RootCAs:              ca.Pool,
		MinBackoff:           5 * time.Millisecond,
		MaxBackoff:           50 * time.Millisecond,
		Logger:               log,
	}, lb
}

// run starts a.Run and returns a function that stops it and returns its
// error; it is also stopped at the end of the test.
func run(t *testing.T, a *agent.Agent) (cancel func() error) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var err error
	cancel = func() error {
		once.Do(func() {
			stop()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() {
		cancel()
		a.Close()
	})
	return cancel
}

func connected(a *agent.Agent, i int) func() bool {
	return func() bool { return a.Status()[i].State == agent.StateConnected }
}

func TestTwoProxies(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	p1, addr1 := startProxy(t, ca, "p1", proxyCert(t, ca, "p1"))
	p2, addr2 := startProxy(t, ca, "p2", proxyCert(t, ca, "p2"))
	cfg, _ := config(t, ca, addr1, addr2)
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "both tunnels", func() bool { return connected(a, 0)() && connected(a, 1)() })
	st := a.Status()
	if st[0].ProxyID != "p1" || st[1].ProxyID != "p2" || st[0].ProxyAddr != addr1 {
		t.Fatalf("Status() = %+v", st)
	}

	// Dials arrive from both proxies on the one listener.
	go func() {
		for {
			c, err := a.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, c.(*agent.Conn).DialRequest().User)
			}()
		}
	}()
	for _, p := range []*server.Server{p1, p2} {
		servertest.WaitFor(t, waitFor, "the proxy to register the node", func() bool { return len(p.Nodes()) == 1 })
		c, err := p.Dial(context.Background(), "web-1", proto.DialRequest{User: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(b) != "bob" {
			t.Fatalf("read %q, %v", b, err)
		}
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "jumpgate_tunnel_agent_connected_proxies" && mf.GetMetric()[0].GetGauge().GetValue() != 2 {
			t.Errorf("connected_proxies = %v", mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
}

func TestProxyIdentityIsChecked(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	otherCA := servertest.NewCA(t, "other CA")
	tests := []struct {
		name string
		ca   *servertest.CA // the proxy trusts this CA for clients
		cert *tls.Certificate
		want string
	}{
		{"node posing as proxy", ca, ca.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "p1", Cluster: "prod"}),
			`proxy certificate "p1" is not trusted: x509: certificate specifies an incompatible key usage`},
		{"auth server posing as proxy", ca, ca.Issue(t, identity.Identity{Kind: identity.KindAuth, Name: "p1", Cluster: "prod"}),
			"the proxy's certificate is for auth p1@prod, of kind auth: expected a proxy certificate"},
		{"proxy of another cluster", ca, ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "staging"}),
			`the proxy's certificate is for cluster "staging", this node belongs to cluster "prod"`},
		{"proxy from another CA", ca, otherCA.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "prod"}),
			`proxy certificate "p1" is not trusted: x509: certificate signed by unknown authority`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, addr := startProxy(t, tt.ca, "p1", tt.cert)
			cfg, logs := config(t, ca, addr)
			a, err := agent.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			run(t, a)
			servertest.WaitFor(t, waitFor, "three failed attempts", func() bool { return a.Status()[0].Failures >= 3 })
			st := a.Status()[0]
			if st.LastError == nil || !strings.Contains(st.LastError.Error(), tt.want) {
				t.Fatalf("LastError = %v, want %q", st.LastError, tt.want)
			}
			if len(srv.Nodes()) != 0 {
				t.Fatal("the node registered with a proxy it should not trust")
			}
			if n := logs.Count("level=WARN", "cannot set up tunnel"); n != 1 {
				t.Fatalf("logged %d warnings, want 1", n)
			}
		})
	}
}

func TestUnreachableProxy(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	// A UDP port nobody answers on.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg, logs := config(t, ca, pc.LocalAddr().String())
	cfg.HandshakeTimeout = 100 * time.Millisecond
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "three failed attempts", func() bool { return a.Status()[0].Failures >= 3 })
	st := a.Status()[0]
	if st.LastError == nil || !strings.Contains(st.LastError.Error(), "no answer within 100ms") {
		t.Fatalf("LastError = %v", st.LastError)
	}
	if n := logs.Count("level=WARN", "cannot set up tunnel"); n != 1 {
		t.Fatalf("logged %d warnings, want 1:\n%s", n, logs)
	}
}

func TestRunStopsAndRestarts(t *testing.T) {
	servertest.CheckLeaks(t)
	ca := servertest.NewCA(t, "prod CA")
	var mu sync.Mutex
	var events []server.TunnelEvent
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cert := proxyCert(t, ca, "p1")
	srv, err := server.New(server.Config{
		ProxyID:        "p1",
		ClusterName:    "prod",
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		ClientCAs:      ca.Pool,
		OnTunnel: func(ev server.TunnelEvent) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	defer func() {
		srv.Close()
		<-served
	}()
	lastEvent := func() server.TunnelEvent {
		mu.Lock()
		defer mu.Unlock()
		if len(events) == 0 {
			return server.TunnelEvent{}
		}
		return events[len(events)-1]
	}

	cfg, _ := config(t, ca, pc.LocalAddr().String())
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, a)
	servertest.WaitFor(t, waitFor, "tunnel", connected(a, 0))
	if err := a.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Run = %v", err)
	}

	// Run ends with its context and closes the tunnel, saying why.
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	if st := a.Status()[0]; st.State != agent.StateIdle {
		t.Fatalf("status after Run = %+v", st)
	}
	servertest.WaitFor(t, waitFor, "TunnelDown", func() bool { return lastEvent().Type == server.TunnelDown })
	if err := lastEvent().Err; err == nil || !strings.Contains(err.Error(), "node web-1 agent is stopping") {
		t.Fatalf("TunnelDown cause = %v", err)
	}

	// Run again.
	stop = run(t, a)
	servertest.WaitFor(t, waitFor, "tunnel again", connected(a, 0))
	servertest.WaitFor(t, waitFor, "TunnelUp", func() bool { return lastEvent().Type == server.TunnelUp })

	// Close ends Run and Accept, and Run cannot start again.
	accepted := make(chan error, 1)
	go func() {
		_, err := a.Accept()
		accepted <- err
	}()
	a.Close()
	if err := stop(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run after Close = %v, want net.ErrClosed", err)
	}
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
	}
	if err := a.Run(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run after Close = %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestClientAddrFallback(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	srv, addr := startProxy(t, ca, "p1", proxyCert(t, ca, "p1"))
	cfg, _ := config(t, ca, addr)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "tunnel", func() bool { return connected(a, 0)() && len(srv.Nodes()) == 1 })
	for _, tt := range []struct{ client, want string }{
		{"[2001:db8::1]:22", "[2001:db8::1]:22"},
		{"not an address", addr}, // the proxy's address instead
	} {
		got := make(chan string, 1)
		go func() {
			c, err := a.Accept()
			if err != nil {
				got <- err.Error()
				return
			}
			got <- c.RemoteAddr().String()
			c.Close()
		}()
		c, err := srv.Dial(context.Background(), "web-1", proto.DialRequest{ClientAddr: tt.client})
		if err != nil {
			t.Fatal(err)
		}
		if g := <-got; g != tt.want {
			t.Errorf("RemoteAddr for client %q = %s, want %s", tt.client, g, tt.want)
		}
		c.Close()
	}
}
