package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

// meshProxy is an in-process proxy whose UDP sockets are opened at once but
// served only when asked, so that a test can list a proxy that is not up
// yet, or serve one proxy on two addresses.
type meshProxy struct {
	t   *testing.T
	id  string
	srv *server.Server

	mu     sync.Mutex
	pcs    map[string]net.PacketConn
	served []chan error
}

func newMeshProxy(t *testing.T, ca *servertest.CA, id string) *meshProxy {
	t.Helper()
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
	p := &meshProxy{t: t, id: id, srv: srv, pcs: make(map[string]net.PacketConn)}
	t.Cleanup(func() {
		srv.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.served {
			<-c
		}
		for _, pc := range p.pcs {
			pc.Close()
		}
	})
	return p
}

// listen opens a UDP socket for the proxy and returns its address; nothing
// answers on it until serve.
func (p *meshProxy) listen() string {
	p.t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pcs[pc.LocalAddr().String()] = pc
	return pc.LocalAddr().String()
}

// serve starts serving tunnels on addr, from listen.
func (p *meshProxy) serve(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := make(chan error, 1)
	p.served = append(p.served, c)
	pc := p.pcs[addr]
	go func() { c <- p.srv.Serve(pc) }()
}

// up returns a proxy serving on one address.
func up(t *testing.T, ca *servertest.CA, id string) (*meshProxy, string) {
	p := newMeshProxy(t, ca, id)
	addr := p.listen()
	p.serve(addr)
	return p, addr
}

// fakeMesh is the test's side of Config.Discover and Config.Probe.
type fakeMesh struct {
	mu    sync.Mutex
	cands []agent.Candidate
	err   error
	calls int
	rtt   map[string]time.Duration // by address; missing: the probe fails
}

func newMesh() *fakeMesh { return &fakeMesh{rtt: make(map[string]time.Duration)} }

func (m *fakeMesh) discover(context.Context) ([]agent.Candidate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.err != nil {
		return nil, m.err
	}
	return slices.Clone(m.cands), nil
}

func (m *fakeMesh) probe(_ context.Context, addr string) (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.rtt[addr]; ok {
		return d, nil
	}
	return 0, errors.New("no route")
}

// set makes Discover list cands from now on, and no longer fail.
func (m *fakeMesh) set(cands ...agent.Candidate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cands, m.err = cands, nil
}

func (m *fakeMesh) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = err
}

func (m *fakeMesh) callCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls
}

// waitCalls waits until Discover has been called twice more: the answer of
// the first of those calls has then been acted on (the agent reconciles
// before it asks again).
func (m *fakeMesh) waitCalls(t *testing.T) {
	t.Helper()
	n := m.callCount()
	servertest.WaitFor(t, waitFor, "two more Discover calls", func() bool { return m.callCount() >= n+2 })
}

// meshConfig is config with discovery through m, two tunnels, and timers
// short enough for tests.
func meshConfig(t *testing.T, ca *servertest.CA, m *fakeMesh, seeds ...string) (agent.Config, *logBuf, *prometheus.Registry) {
	cfg, logs := config(t, ca, seeds...)
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	cfg.Discover = m.discover
	cfg.Probe = m.probe
	cfg.ConnectionCount = 2
	cfg.RefreshInterval = 100 * time.Millisecond
	cfg.FailoverAfter = 300 * time.Millisecond
	cfg.HandshakeTimeout = 200 * time.Millisecond
	return cfg, logs, reg
}

// listed lists p at addr with round trip rtt (0: the probe fails).
func (m *fakeMesh) listed(p *meshProxy, addr string, rtt time.Duration) agent.Candidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rtt > 0 {
		m.rtt[addr] = rtt
	}
	return agent.Candidate{ID: p.id, Addr: addr}
}

// tunnels describes the agent's slots as "proxy@state", sorted, e.g.
// [p1@connected p2@connected].
func tunnels(a *agent.Agent) []string {
	var out []string
	for _, st := range a.Status() {
		out = append(out, fmt.Sprintf("%s@%s", st.ProxyID, st.State))
	}
	slices.Sort(out)
	return out
}

// waitTunnels waits until the agent's slots are exactly want, connected.
func waitTunnels(t *testing.T, a *agent.Agent, want ...string) {
	t.Helper()
	var w []string
	for _, id := range want {
		w = append(w, id+"@connected")
	}
	slices.Sort(w)
	servertest.WaitFor(t, waitFor, fmt.Sprintf("tunnels %v", w), func() bool { return slices.Equal(tunnels(a), w) })
}

// metric returns the value of the counter or gauge name with the given
// label value ("" for none).
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

func rehomes(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	return metric(t, reg, "jumpgate_tunnel_agent_rehomes_total", reason)
}

// serveAccepted hands every connection the agent accepts to conns, which
// is closed when Accept fails (after Close).
func serveAccepted(a *agent.Agent) <-chan net.Conn {
	conns := make(chan net.Conn, 16)
	go func() {
		defer close(conns)
		for {
			c, err := a.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	return conns
}

// echoAccepted answers every accepted connection with the dial's user name.
func echoAccepted(a *agent.Agent) {
	conns := serveAccepted(a)
	go func() {
		for c := range conns {
			io.WriteString(c, c.(*agent.Conn).DialRequest().User)
			c.Close()
		}
	}()
}

// dialThrough dials the node through p and checks that the bytes arrive.
func dialThrough(t *testing.T, p *meshProxy) {
	t.Helper()
	servertest.WaitFor(t, waitFor, p.id+" to register the node", func() bool { return len(p.srv.Nodes()) == 1 })
	c, err := p.srv.Dial(context.Background(), "web-1", proto.DialRequest{User: "via-" + p.id})
	if err != nil {
		t.Fatalf("dial through %s: %v", p.id, err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "via-"+p.id {
		t.Fatalf("through %s: read %q, %v", p.id, b, err)
	}
}

func TestRehomeToNearest(t *testing.T) {
	servertest.CheckLeaks(t)
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	p3, a3 := up(t, ca, "p3")
	p4, a4 := up(t, ca, "p4")
	m.set(m.listed(p3, a3, 30*time.Millisecond), m.listed(p1, a1, 10*time.Millisecond),
		m.listed(p4, a4, 40*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond))
	cfg, _, reg := meshConfig(t, ca, m, a2)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	echoAccepted(a)
	waitTunnels(t, a, "p1", "p2")
	for _, st := range a.Status() {
		if st.Transport != "quic" || st.Draining {
			t.Fatalf("Status() = %+v", st)
		}
	}
	dialThrough(t, p1)
	dialThrough(t, p2)
	if len(p3.srv.Nodes())+len(p4.srv.Nodes()) != 0 {
		t.Fatal("the node holds a tunnel to a farther proxy")
	}
	if v := metric(t, reg, "jumpgate_tunnel_agent_desired_proxies", ""); v != 2 {
		t.Fatalf("desired_proxies = %v", v)
	}
	for _, r := range []string{"dead", "failing", "draining", "surplus"} {
		if v := rehomes(t, reg, r); v != 0 {
			t.Fatalf("rehomes{%s} = %v, want 0", r, v)
		}
	}
}

// Seeds beyond ConnectionCount are closed, keeping the nearest.
func TestRehomeSurplusSeeds(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	p3, a3 := up(t, ca, "p3")
	p4, a4 := up(t, ca, "p4")
	m.set(m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond),
		m.listed(p3, a3, 30*time.Millisecond), m.listed(p4, a4, 40*time.Millisecond))
	cfg, _, reg := meshConfig(t, ca, m, a4, a3, a2, a1)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	waitTunnels(t, a, "p1", "p2")
	servertest.WaitFor(t, waitFor, "p3 and p4 to see the tunnels close", func() bool {
		return len(p3.srv.Nodes())+len(p4.srv.Nodes()) == 0
	})
	if v := rehomes(t, reg, "surplus"); v != 2 {
		t.Fatalf("rehomes{surplus} = %v, want 2", v)
	}
}

func TestRehomeOffDeadProxy(t *testing.T) {
	servertest.CheckLeaks(t)
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	p3, a3 := up(t, ca, "p3")
	c1, c2, c3 := m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond), m.listed(p3, a3, 30*time.Millisecond)
	m.set(c1, c2, c3)
	cfg, logs, reg := meshConfig(t, ca, m, a1)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	echoAccepted(a)
	waitTunnels(t, a, "p1", "p2")

	// p2 dies for good and leaves the mesh.
	m.set(c1, c3)
	p2.srv.Close()
	waitTunnels(t, a, "p1", "p3")
	dialThrough(t, p3)
	dialThrough(t, p1)
	if v := rehomes(t, reg, "dead"); v != 1 {
		t.Fatalf("rehomes{dead} = %v, want 1", v)
	}
	if n := logs.Count("level=INFO", "re-homing tunnel", "node=web-1", "reason=dead", "from_proxy=p2", "proxy=p3", "proxy_addr="+a3); n != 1 {
		t.Fatalf("logged %d re-homing lines from p2 to p3, want 1", n)
	}
}

func TestRehomeOffDrainingProxy(t *testing.T) {
	servertest.CheckLeaks(t)
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	// p3 is listed as soon as p2 drains, but comes up only later.
	p3 := newMeshProxy(t, ca, "p3")
	a3 := p3.listen()
	c1, c2, c3 := m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond), m.listed(p3, a3, 30*time.Millisecond)
	m.set(c1, c2)
	cfg, logs, reg := meshConfig(t, ca, m, a1)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	conns := serveAccepted(a)
	waitTunnels(t, a, "p1", "p2")

	slot := func(id string) (agent.TunnelStatus, bool) {
		for _, st := range a.Status() {
			if st.ProxyID == id || st.ProxyAddr == a3 && id == "p3" {
				return st, true
			}
		}
		return agent.TunnelStatus{}, false
	}
	draining := func(what string) {
		t.Helper()
		if st, ok := slot("p2"); !ok || st.State != agent.StateConnected || !st.Draining {
			t.Fatalf("draining tunnel %s: %+v (present %v)", what, st, ok)
		}
	}

	// p2 drains. Its replacement cannot come up: the draining tunnel stays,
	// though nothing uses it, and though the replacement fails over and
	// over (there is no other proxy to try).
	c2.Draining = true
	m.set(c1, c2, c3)
	servertest.WaitFor(t, waitFor, "the replacement to fail 3 times", func() bool {
		st, ok := slot("p3")
		return ok && st.Failures >= 3
	})
	draining("while its replacement is down")

	// A session through p2 opens (a proxy still routing to it).
	user, err := p2.srv.Dial(context.Background(), "web-1", proto.DialRequest{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	node := <-conns
	defer node.Close()

	// The replacement comes up; the draining tunnel stays while the
	// session is open, and the session still works.
	p3.serve(a3)
	servertest.WaitFor(t, waitFor, "the replacement tunnel", func() bool {
		st, ok := slot("p3")
		return ok && st.State == agent.StateConnected
	})
	// The agent asks Discover again only after acting on what it knows.
	m.waitCalls(t)
	draining("with a session open")
	for _, msg := range []string{"ping", "pong"} {
		if _, err := io.WriteString(user, msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(node, buf); err != nil || string(buf) != msg {
			t.Fatalf("session through the draining proxy: read %q, %v", buf, err)
		}
	}

	// The session ends; the draining tunnel closes.
	node.Close()
	user.Close()
	waitTunnels(t, a, "p1", "p3")
	servertest.WaitFor(t, waitFor, "p2 to see the tunnel close", func() bool { return len(p2.srv.Nodes()) == 0 })
	if v := rehomes(t, reg, "draining"); v != 1 {
		t.Fatalf("rehomes{draining} = %v, want 1", v)
	}
	if n := logs.Count("level=INFO", "re-homing tunnel", "reason=draining", "from_proxy=p2", "proxy=p3"); n != 1 {
		t.Fatalf("logged %d re-homing lines from p2 to p3, want 1", n)
	}
}

// TestRehomeOnDrainMessage: the proxy's Drain message (tunnel protocol 2)
// moves the tunnel even while discovery still lists the proxy as active,
// and the draining proxy refuses new tunnels.
func TestRehomeOnDrainMessage(t *testing.T) {
	servertest.CheckLeaks(t)
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	p3, a3 := up(t, ca, "p3")
	m.set(m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond), m.listed(p3, a3, 30*time.Millisecond))
	cfg, logs, reg := meshConfig(t, ca, m, a1, a2)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	echoAccepted(a)
	waitTunnels(t, a, "p1", "p2")
	if n := p2.srv.Drain("test", time.Now().Add(time.Minute)); n != 1 {
		t.Fatalf("Drain told %d agents, want 1", n)
	}
	waitTunnels(t, a, "p1", "p3")
	if v := metric(t, reg, "jumpgate_tunnel_agent_drain_notices_total", ""); v != 1 {
		t.Fatalf("drain notices = %v, want 1", v)
	}
	if v := rehomes(t, reg, "draining"); v != 1 {
		t.Fatalf("rehomes{draining} = %v, want 1", v)
	}
	if n := logs.Count("proxy is draining: moving the tunnel to another proxy", "proxy=p2"); n != 1 {
		t.Fatalf("logged the drain notice %d times, want 1", n)
	}
	// The agent counts the old tunnel gone when it closes it; p2 learns
	// so when the close arrives, a moment later.
	servertest.WaitFor(t, waitFor, "p2 to see its tunnel closed", func() bool { return p2.srv.Load().Tunnels == 0 })
	if l := p2.srv.Load(); l.Tunnels != 0 || !p2.srv.Draining() {
		t.Fatalf("p2 after the move: %+v, draining %v", l, p2.srv.Draining())
	}
	dialThrough(t, p3)
}

func TestRehomeKeepsHealthyTunnels(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	p3, a3 := up(t, ca, "p3")
	p4, a4 := up(t, ca, "p4")
	c2, c3, c4 := m.listed(p2, a2, 20*time.Millisecond), m.listed(p3, a3, 30*time.Millisecond), m.listed(p4, a4, 40*time.Millisecond)
	m.set(c2, c3, c4)
	cfg, _, reg := meshConfig(t, ca, m, a3)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	waitTunnels(t, a, "p2", "p3")
	before := a.Status()

	// A nearer proxy appears: nothing moves.
	m.set(m.listed(p1, a1, time.Millisecond), c2, c3, c4)
	m.waitCalls(t)
	m.waitCalls(t)
	if after := a.Status(); !slices.Equal(before, after) {
		t.Fatalf("Status() changed after a nearer proxy appeared:\nbefore %+v\nafter  %+v", before, after)
	}
	if len(p1.srv.Nodes()) != 0 {
		t.Fatal("the node opened a tunnel to the nearer proxy")
	}
	for _, r := range []string{"dead", "failing", "draining", "surplus"} {
		if v := rehomes(t, reg, r); v != 0 {
			t.Fatalf("rehomes{%s} = %v, want 0", r, v)
		}
	}
}

func TestRehomeDiscoverFails(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	p3, a3 := up(t, ca, "p3")
	m.fail(errors.New("auth server unreachable"))
	cfg, logs, reg := meshConfig(t, ca, m, a1, a2, a3)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	// Discovery fails from the start: the node keeps all its seeds.
	waitTunnels(t, a, "p1", "p2", "p3")
	m.waitCalls(t)
	if st := tunnels(a); len(st) != 3 {
		t.Fatalf("tunnels %v after failed discoveries, want the 3 seeds", st)
	}
	if n := logs.Count("level=WARN", "cannot discover proxies", "auth server unreachable"); n != 1 {
		t.Fatalf("logged %d warnings, want 1", n)
	}

	// Discovery works: the farthest seed is closed.
	m.set(m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond), m.listed(p3, a3, 30*time.Millisecond))
	waitTunnels(t, a, "p1", "p2")
	if n := logs.Count("level=INFO", "discovering proxies works again"); n != 1 {
		t.Fatalf("logged %d recoveries, want 1", n)
	}

	// It fails again, and answers with nothing: the tunnels stay.
	m.fail(errors.New("auth server unreachable"))
	m.waitCalls(t)
	m.set()
	m.waitCalls(t)
	m.waitCalls(t)
	if st := tunnels(a); !slices.Equal(st, []string{"p1@connected", "p2@connected"}) {
		t.Fatalf("tunnels %v after failed discoveries", st)
	}
	if n := logs.Count("level=WARN", "cannot discover proxies", "the answer lists no proxy"); n != 1 {
		t.Fatalf("logged %d warnings about an empty answer, want 1", n)
	}
	// Nothing was given up but the surplus seed.
	for r, want := range map[string]float64{"dead": 0, "failing": 0, "draining": 0, "surplus": 1} {
		if v := rehomes(t, reg, r); v != want {
			t.Fatalf("rehomes{%s} = %v, want %v", r, v, want)
		}
	}
}

func TestRehomeSameProxyTwice(t *testing.T) {
	servertest.CheckLeaks(t)
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	// p1 serves on two addresses; both are seeds.
	p1 := newMeshProxy(t, ca, "p1")
	a1, b1 := p1.listen(), p1.listen()
	p1.serve(a1)
	p1.serve(b1)
	p2, a2 := up(t, ca, "p2")
	m.set(m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond))
	cfg, _, reg := meshConfig(t, ca, m, a1, b1)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	echoAccepted(a)
	waitTunnels(t, a, "p1", "p2")
	servertest.WaitFor(t, waitFor, "p1 to hold one tunnel from the node", func() bool {
		n := p1.srv.Nodes()
		return len(n) == 1 && n[0].Tunnels == 1
	})
	dialThrough(t, p1)
	dialThrough(t, p2)
	if v := rehomes(t, reg, "surplus"); v != 1 {
		t.Fatalf("rehomes{surplus} = %v, want 1", v)
	}
}

// A tunnel that cannot come up gives its place to the next proxy.
func TestRehomeOffFailingProxy(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	m := newMesh()
	p1, a1 := up(t, ca, "p1")
	// p2 is listed, and nearest after p1, but never answers.
	p2 := newMeshProxy(t, ca, "p2")
	a2 := p2.listen()
	p3, a3 := up(t, ca, "p3")
	m.set(m.listed(p1, a1, 10*time.Millisecond), m.listed(p2, a2, 20*time.Millisecond), m.listed(p3, a3, 30*time.Millisecond))
	cfg, logs, reg := meshConfig(t, ca, m, a1)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	waitTunnels(t, a, "p1", "p3")
	if v := rehomes(t, reg, "failing"); v != 1 {
		t.Fatalf("rehomes{failing} = %v, want 1", v)
	}
	if n := logs.Count("level=INFO", "re-homing tunnel", "reason=failing", "from_proxy=p2", "proxy=p3"); n != 1 {
		t.Fatalf("logged %d re-homing lines from p2 to p3, want 1", n)
	}
}

// Without Discover the agent keeps exactly its configured tunnels, whatever
// happens to the proxies.
func TestNoDiscoverKeepsAddrs(t *testing.T) {
	ca := servertest.NewCA(t, "prod CA")
	_, a1 := up(t, ca, "p1")
	p2, a2 := up(t, ca, "p2")
	cfg, _ := config(t, ca, a1, a2)
	cfg.HandshakeTimeout = 100 * time.Millisecond
	// QUIC only: in auto mode a timed-out attempt to the closed proxy would
	// go on to try TCP, and this test is about which tunnels, not how.
	cfg.Transport = agent.TransportQUIC
	reg := prometheus.NewRegistry()
	cfg.Metrics = reg
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	servertest.WaitFor(t, waitFor, "both tunnels", func() bool { return connected(a, 0)() && connected(a, 1)() })
	p2.srv.Close()
	servertest.WaitFor(t, waitFor, "three failed attempts to p2", func() bool { return a.Status()[1].Failures >= 3 })
	st := a.Status()
	if len(st) != 2 || st[0].ProxyAddr != a1 || st[1].ProxyAddr != a2 || st[0].State != agent.StateConnected {
		t.Fatalf("Status() = %+v", st)
	}
	for _, s := range st {
		if s.Transport != "quic" || s.Draining {
			t.Fatalf("Status() = %+v", st)
		}
	}
	if v := metric(t, reg, "jumpgate_tunnel_agent_desired_proxies", ""); v != 2 {
		t.Fatalf("desired_proxies = %v", v)
	}
	for _, r := range []string{"dead", "failing", "draining", "surplus"} {
		if v := rehomes(t, reg, r); v != 0 {
			t.Fatalf("rehomes{%s} = %v, want 0", r, v)
		}
	}
}
