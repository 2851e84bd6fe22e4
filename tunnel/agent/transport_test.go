package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
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

// startDualProxy runs a tunnel server for cluster "prod" as a real proxy
// serves tunnels: QUIC on a UDP socket, which can drop everything like a
// firewall blocking UDP, and TLS over TCP on the same port through a
// listener like mesh/ingress's.
func startDualProxy(t *testing.T, ca *servertest.CA, id string, udpBlocked bool) (*server.Server, *servertest.DropConn, string) {
	t.Helper()
	pc, ln := servertest.ListenBoth(t, "127.0.0.1")
	udp := servertest.NewDropConn(pc, udpBlocked)
	cert := proxyCert(t, ca, id)
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
	go func() { served <- srv.Serve(udp) }()
	stopTLS := servertest.ServeTLS(t, ln, cert, ca.Pool, srv.HandleTLS)
	t.Cleanup(func() {
		stopTLS()
		srv.Close()
		<-served
	})
	return srv, udp, pc.LocalAddr().String()
}

// echo serves a's connections, echoing each until EOF.
func echo(t *testing.T, a *agent.Agent) {
	t.Helper()
	go func() {
		for {
			c, err := a.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

func echoLine(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(waitFor))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
		t.Fatalf("echo = %q, %v", b, err)
	}
}

// value returns the metric name with labels (authtest.Metric).
func value(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	return authtest.Metric(t, reg, name, labels...)
}

func TestFallbackToTCPAndBack(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	srv, udp, addr := startDualProxy(t, ca, "p1", true)
	cfg, logs := config(t, ca, addr)
	cfg.QUICFallbackAfter = 300 * time.Millisecond
	cfg.QUICRetryInterval = 200 * time.Millisecond
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run(t, a)
	echo(t, a)

	// UDP is blocked: the QUIC handshake gets no answer, and the agent
	// falls back to TCP at once.
	servertest.WaitFor(t, waitFor, "a tunnel over TCP", func() bool {
		st := a.Status()[0]
		return st.State == agent.StateConnected && st.Transport == "tcp"
	})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("fell back after %v, want about QUICFallbackAfter (300ms)", took)
	}
	if st := a.Status()[0]; !st.UDPBlocked || st.ProxyID != "p1" {
		t.Errorf("Status() = %+v, want UDPBlocked", st)
	}
	if n := srv.Nodes(); len(n) != 1 || n[0].Transport != "tcp" {
		t.Fatalf("proxy Nodes() = %+v, want the node over tcp", n)
	}
	warning := "UDP to proxy p1 (" + addr + ") looks blocked (no answer in 300ms); using TLS over TCP"
	if n := logs.Count("level=WARN", warning); n != 1 {
		t.Errorf("logged %q %d times, want once:\n%s", warning, n, logs)
	}
	if got := value(t, reg, "jumpgate_tunnel_agent_transport_fallbacks_total"); got != 1 {
		t.Errorf("fallbacks_total = %v", got)
	}

	// A session over TCP, open across the move back to QUIC.
	c, err := srv.Dial(context.Background(), "web-1", proto.DialRequest{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoLine(t, c, "over tcp")

	// QUIC is retried in the background while UDP stays blocked: no new
	// warning, the tunnel stays on TCP.
	servertest.WaitFor(t, waitFor, "two retries of QUIC", func() bool {
		return value(t, reg, "jumpgate_tunnel_agent_connects_total", "outcome", "timeout", "transport", "quic") >= 3
	})
	if n := logs.Count("level=WARN"); n != 1 {
		t.Errorf("%d warnings, want only the fallback:\n%s", n, logs)
	}
	if st := a.Status()[0]; st.Transport != "tcp" || st.State != agent.StateConnected {
		t.Fatalf("Status() = %+v, want still connected over tcp", st)
	}

	// UDP works again: the agent opens a QUIC tunnel, which serves new
	// dials at once; the TCP tunnel stays while the session on it is open.
	udp.SetBlocked(false)
	servertest.WaitFor(t, waitFor, "the move to QUIC", func() bool {
		st := a.Status()[0]
		return st.State == agent.StateConnected && st.Transport == "quic" && !st.UDPBlocked
	})
	if n := srv.Nodes(); len(n) != 1 || n[0].Transport != "quic" || n[0].Tunnels != 2 {
		t.Fatalf("proxy Nodes() = %+v, want the QUIC tunnel serving and the TCP one kept", n)
	}
	echoLine(t, c, "still over tcp")
	c2, err := srv.Dial(context.Background(), "web-1", proto.DialRequest{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	echoLine(t, c2, "over quic")
	c2.Close()

	// Once the session ends, the TCP tunnel closes.
	c.Close()
	servertest.WaitFor(t, waitFor, "the TCP tunnel to close", func() bool {
		n := srv.Nodes()
		return len(n) == 1 && n[0].Tunnels == 1 && n[0].Transport == "quic" &&
			value(t, reg, "jumpgate_tunnel_agent_tunnels", "transport", "tcp") == 0
	})
	if got := value(t, reg, "jumpgate_tunnel_agent_transport_restores_total"); got != 1 {
		t.Errorf("restores_total = %v", got)
	}
	if got := value(t, reg, "jumpgate_tunnel_agent_tunnels", "transport", "quic"); got != 1 {
		t.Errorf("tunnels{quic} = %v", got)
	}
	if got := value(t, reg, "jumpgate_tunnel_agent_connected_proxies"); got != 1 {
		t.Errorf("connected_proxies = %v", got)
	}
	if logs.Count("level=INFO", "UDP to the proxy works again") != 1 || logs.Count("the tunnel that QUIC replaced has closed") != 1 {
		t.Errorf("the move is not logged:\n%s", logs)
	}
	if st := a.Status(); len(st) != 1 {
		t.Errorf("Status() = %+v, want one slot", st)
	}
}

func TestTransportTCPNeverTriesQUIC(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	srv, _, addr := startDualProxy(t, ca, "p1", true)
	cfg, _ := config(t, ca, addr)
	cfg.Transport = agent.TransportTCP
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st := a.Status()[0]; st.Transport != "tcp" {
		t.Fatalf("Status() before Run = %+v, want tcp", st)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "a tunnel", func() bool { return connected(a, 0)() && len(srv.Nodes()) == 1 })
	if st := a.Status()[0]; st.Transport != "tcp" || st.UDPBlocked {
		t.Fatalf("Status() = %+v", st)
	}
	if got := authtest.MetricSum(t, reg, "jumpgate_tunnel_agent_connects_total"); got != 1 {
		t.Errorf("connect attempts = %v, want 1 (over TCP)", got)
	}
	if got := value(t, reg, "jumpgate_tunnel_agent_connects_total", "outcome", "ok", "transport", "tcp"); got != 1 {
		t.Errorf("connects_total{ok,tcp} = %v", got)
	}
}

func TestTransportQUICNeverFallsBack(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	_, _, addr := startDualProxy(t, ca, "p1", true)
	cfg, _ := config(t, ca, addr)
	cfg.Transport = agent.TransportQUIC
	cfg.HandshakeTimeout = 100 * time.Millisecond
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "three failed attempts", func() bool { return a.Status()[0].Failures >= 3 })
	if st := a.Status()[0]; st.Transport != "quic" || !strings.Contains(st.LastError.Error(), "no answer within 100ms") {
		t.Fatalf("Status() = %+v", st)
	}
	if got := value(t, reg, "jumpgate_tunnel_agent_connects_total", "outcome", "error", "transport", "tcp") +
		value(t, reg, "jumpgate_tunnel_agent_connects_total", "outcome", "ok", "transport", "tcp"); got != 0 {
		t.Errorf("%v attempts over TCP, want none", got)
	}
}

// A QUIC handshake that gets an answer, even a refusal, proves that UDP
// works: no fallback.
func TestNoFallbackWhenQUICAnswers(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	_, _, addr := startDualProxy(t, ca, "p1", false)
	cfg, logs := config(t, ca, addr)
	cert := ca.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "web-1", Cluster: "staging"})
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "three refused attempts", func() bool { return a.Status()[0].Failures >= 3 })
	st := a.Status()[0]
	var re *agent.RefusedError
	if !errors.As(st.LastError, &re) || st.Transport != "quic" || st.UDPBlocked {
		t.Fatalf("Status() = %+v, want a QUIC refusal", st)
	}
	for _, o := range []string{"ok", "refused", "tls_error", "timeout", "error"} {
		if got := value(t, reg, "jumpgate_tunnel_agent_connects_total", "outcome", o, "transport", "tcp"); got != 0 {
			t.Errorf("connects_total{%s,tcp} = %v, want no TCP attempt", o, got)
		}
	}
	if logs.Count("looks blocked") != 0 {
		t.Errorf("logged a fallback:\n%s", logs)
	}
}

// A proxy that answers neither QUIC nor TCP is down, not behind a UDP
// block: no fallback, and the error says what both attempts saw.
func TestNoFallbackWhenTCPFailsToo(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	pc, ln := servertest.ListenBoth(t, "127.0.0.1")
	ln.Close() // TCP: connection refused; UDP: nobody answers
	cfg, logs := config(t, ca, pc.LocalAddr().String())
	cfg.QUICFallbackAfter = 100 * time.Millisecond
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "three failed attempts", func() bool { return a.Status()[0].Failures >= 3 })
	st := a.Status()[0]
	if err := st.LastError; err == nil || !strings.Contains(err.Error(), "no answer within 100ms") || !strings.Contains(err.Error(), "over TCP") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("LastError = %v, want both attempts named", st.LastError)
	}
	if st.UDPBlocked {
		t.Error("UDPBlocked set for a proxy that is down")
	}
	if got := value(t, reg, "jumpgate_tunnel_agent_transport_fallbacks_total"); got != 0 {
		t.Errorf("fallbacks_total = %v", got)
	}
	if n := logs.Count("level=WARN", "cannot set up tunnel"); n != 1 {
		t.Errorf("logged %d warnings, want 1:\n%s", n, logs)
	}
}
