package meshtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/mesh/gossip"
	"jumpgate.dev/jumpgate/mesh/peer"
	"jumpgate.dev/jumpgate/mesh/route"
)

// Config configures a Mesh. Zero fields take the defaults documented on
// each.
type Config struct {
	// WAN is the emulated network the proxies run on (Mesh.WAN). Default:
	// one region, "local", with no latency.
	WAN WANConfig
	// Timing is every proxy's gossip timing. Default: gossip.FastTiming()
	// (not gossip's own default, DefaultTiming: unit tests want deaths
	// noticed in about a second). WAN tests set gossip.DefaultTiming().
	Timing gossip.Timing
	// ClusterName is the proxies' cluster. Default "meshtest".
	ClusterName string
	// LogLevel is the lowest level of the proxies' logs kept. The logs are
	// printed if the test fails. Default Info.
	LogLevel slog.Level
	// PeerDialTimeout is each proxy's peer.Config.DialTimeout. Default:
	// peer's (10 s).
	PeerDialTimeout time.Duration
}

// ClusterName is Config.ClusterName's default.
const ClusterName = "meshtest"

// LeakMarkers returns the stack frames of the goroutines a Mesh starts
// (its own, gossip's, memberlist's, peer's, quic-go's), for
// authtest.CheckLeaks and MainLeakCheck; New checks that none survive the
// test. Test functions' own frames do not match them.
func LeakMarkers() []string {
	return []string{
		"jumpgate.dev/jumpgate/mesh/meshtest.(*",
		"jumpgate.dev/jumpgate/mesh/gossip.",
		"jumpgate.dev/jumpgate/mesh/peer.",
		"github.com/hashicorp/memberlist.",
		"github.com/quic-go/quic-go.",
	}
}

// Mesh is N proxies in one process: each a gossip.Cluster and a peer.Mesh
// on its own loopback address of its region, with a fake tunnel registry
// standing in for tunnel/server. Create it with New; everything stops at
// the end of the test.
type Mesh struct {
	t    testing.TB
	cfg  Config
	wan  *WAN
	ca   *authtest.CA
	key  []byte
	logs *logSink

	mu      sync.Mutex // guards following
	proxies map[string]*Proxy
	order   []*Proxy // by first start
	nodes   map[string]*Node
	deaths  []Death
}

// New returns an empty Mesh. It registers, first, a check that no
// goroutine of the mesh survives the test (LeakMarkers), then the
// shutdown of everything the Mesh starts. Call it from the test's
// goroutine, before the test starts goroutines of its own that use the
// mesh packages.
func New(t testing.TB, cfg Config) *Mesh {
	t.Helper()
	authtest.CheckLeaks(t, LeakMarkers()...)
	if len(cfg.WAN.Regions) == 0 {
		cfg.WAN = WANConfig{Regions: []string{"local"}, QueueLimit: cfg.WAN.QueueLimit}
	}
	wan, err := NewWAN(cfg.WAN)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timing == (gossip.Timing{}) {
		cfg.Timing = gossip.FastTiming()
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = ClusterName
	}
	key := make([]byte, 32)
	rand.Read(key)
	m := &Mesh{
		t:       t,
		cfg:     cfg,
		wan:     wan,
		ca:      authtest.NewCA(t, cfg.ClusterName+" TLS CA"),
		key:     key,
		logs:    &logSink{},
		proxies: make(map[string]*Proxy),
		nodes:   make(map[string]*Node),
	}
	t.Cleanup(func() {
		m.Close()
		if t.Failed() {
			logs := m.logs.String()
			if len(logs) > 256<<10 {
				logs = "…" + logs[len(logs)-256<<10:]
			}
			t.Logf("mesh logs:\n%s", logs)
		}
	})
	return m
}

// Close kills every proxy (abruptly, all at once) and closes the nodes.
// The end of the test does it; a benchmark that builds a Mesh per
// iteration calls it to free the ports and goroutines sooner.
func (m *Mesh) Close() {
	m.mu.Lock()
	order := slices.Clone(m.order)
	nodes := make([]*Node, 0, len(m.nodes))
	for _, n := range m.nodes {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range order {
		wg.Go(func() { p.halt(false) })
	}
	wg.Wait()
	for _, n := range nodes {
		n.Close()
	}
}

// WAN returns the Mesh's WAN.
func (m *Mesh) WAN() *WAN { return m.wan }

// CA returns the cluster's TLS CA, which issued the proxies' certificates.
func (m *Mesh) CA() *authtest.CA { return m.ca }

// Logs returns the proxies' logs so far.
func (m *Mesh) Logs() string { return m.logs.String() }

// Proxy returns the proxy with this id, started before; nil if none.
func (m *Mesh) Proxy(id string) *Proxy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proxies[id]
}

// Proxies returns every proxy ever started, running or not, in the order
// they were first started.
func (m *Mesh) Proxies() []*Proxy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.order)
}

// Running returns the running proxies, in the order they were first
// started.
func (m *Mesh) Running() []*Proxy {
	var out []*Proxy
	for _, p := range m.Proxies() {
		if p.Running() {
			out = append(out, p)
		}
	}
	return out
}

// Deaths returns every death declared so far, in order.
func (m *Mesh) Deaths() []Death {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.deaths)
}

// FalseDeaths returns the deaths declared of proxies that were running.
func (m *Mesh) FalseDeaths() []Death {
	var out []Death
	for _, d := range m.Deaths() {
		if d.False {
			out = append(out, d)
		}
	}
	return out
}

func (m *Mesh) recordDeath(observer, subject string) {
	// A killed proxy's memberlist can still log a death after Shutdown:
	// its suspicion timers are not stopped. A dead observer's verdict
	// counts for nothing.
	if p := m.Proxy(observer); p != nil && !p.Running() {
		return
	}
	d := Death{Observer: observer, Subject: subject, At: time.Now()}
	if p := m.Proxy(subject); p != nil {
		d.False = p.Running()
	}
	m.mu.Lock()
	m.deaths = append(m.deaths, d)
	m.mu.Unlock()
}

// Start starts proxy id in region (the WAN's first region if empty) on
// a new address of that region, joining the mesh through the first
// running proxy (no seed for the first one). It fails the test if the
// proxy cannot start. Call it from the test's goroutine.
func (m *Mesh) Start(id, region string) *Proxy {
	m.t.Helper()
	if region == "" {
		region = m.wan.regions[0]
	}
	if err := identity.CheckName(id); err != nil {
		m.t.Fatalf("meshtest: start proxy: %v", err)
	}
	ip, err := m.wan.NewHost(region)
	if err != nil {
		m.t.Fatal(err)
	}
	p := &Proxy{
		m:      m,
		id:     id,
		region: region,
		ip:     ip,
		cert:   m.ca.Issue(m.t, identity.Identity{Kind: identity.KindProxy, Name: id, Cluster: m.cfg.ClusterName}),
	}
	rand.Read(p.resetKey[:])
	m.mu.Lock()
	if m.proxies[id] != nil {
		m.mu.Unlock()
		m.t.Fatalf("meshtest: proxy %s was started before: use Restart", id)
	}
	m.proxies[id] = p
	m.order = append(m.order, p)
	m.mu.Unlock()
	if err := p.start(); err != nil {
		m.t.Fatalf("meshtest: start proxy %s: %v", id, err)
	}
	return p
}

// seed returns the gossip address of the first running proxy other than
// self, or "".
func (m *Mesh) seed(self string) string {
	for _, p := range m.Proxies() {
		if p.id == self {
			continue
		}
		if addr := p.GossipAddr(); p.Running() && addr != "" {
			return addr
		}
	}
	return ""
}

// Dial dials node from proxy from (Proxy.Dial).
func (m *Mesh) Dial(ctx context.Context, from, node string) (net.Conn, Path, error) {
	p := m.Proxy(from)
	if p == nil {
		return nil, Path{From: from}, fmt.Errorf("dial node %s: no proxy %s in the mesh", node, from)
	}
	return p.Dial(ctx, node)
}

// WaitConverged waits until every running proxy sees every other running
// proxy alive and every stopped one not alive, failing the test after
// timeout.
func (m *Mesh) WaitConverged(timeout time.Duration) {
	m.t.Helper()
	m.waitFor(timeout, "the mesh to converge", m.unconverged)
}

// Converged reports whether every running proxy sees every other running
// proxy alive, and every stopped proxy not alive.
func (m *Mesh) Converged() bool { return m.unconverged() == "" }

// unconverged says who sees whom wrong, "" if no one.
func (m *Mesh) unconverged() string {
	all := m.Proxies()
	var wrong []string
	for _, p := range all {
		g := p.Gossip()
		if g == nil {
			continue
		}
		for _, q := range all {
			if q == p {
				continue
			}
			mem, ok := g.Member(q.id)
			if alive := ok && mem.Health == gossip.HealthAlive; q.Running() != alive {
				h := "nothing"
				if ok {
					h = string(mem.Health)
				}
				wrong = append(wrong, fmt.Sprintf("%s sees %s %s", p.id, q.id, h))
				if len(wrong) == 10 {
					return strings.Join(wrong, ", ") + ", …"
				}
			}
		}
	}
	return strings.Join(wrong, ", ")
}

// WaitRTTs waits until every running proxy has measured its gossip probe
// RTT to every other, so that routing orders holders by RTT.
func (m *Mesh) WaitRTTs(timeout time.Duration) {
	m.t.Helper()
	// A first probe on a busy machine (a -race build, CI) can come back
	// late, and one late sample can order two peers wrongly: wait until
	// every smoothed RTT is near the emulated one, not merely measured.
	authtest.WaitFor(m.t, timeout, "every proxy to measure its RTT to every other, near the emulated RTT", func() bool {
		run := m.Running()
		for _, p := range run {
			for _, q := range run {
				if q == p {
					continue
				}
				mem, ok := p.Gossip().Member(q.id)
				if !ok || mem.RTT == 0 {
					return false
				}
				want := m.wan.RTT(p.region, q.region)
				if mem.RTT > want+max(50*time.Millisecond, want/2) {
					return false
				}
			}
		}
		return true
	})
}

// WaitHolders waits until every running proxy's directory says node is
// held by exactly the proxies want (none: nobody holds it).
func (m *Mesh) WaitHolders(node string, timeout time.Duration, want ...string) {
	m.t.Helper()
	want = slices.Sorted(slices.Values(want))
	m.waitFor(timeout, fmt.Sprintf("every proxy to see %s held by %v", node, want), func() string {
		var wrong []string
		for _, p := range m.Running() {
			if h := p.Gossip().Holders(node); !slices.Equal(h, want) {
				wrong = append(wrong, fmt.Sprintf("%s sees %v", p.id, h))
			}
		}
		return strings.Join(wrong, ", ")
	})
}

// waitFor is authtest.WaitFor for conditions that can say what is still
// missing: cond returns "" when it holds.
func (m *Mesh) waitFor(timeout time.Duration, what string, cond func() string) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		missing := cond()
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, missing)
		}
		<-tick.C
	}
}

// Proxy is one proxy of a Mesh. Its address (one loopback IP of its
// region, gossip and peer ports) is kept across restarts, like a host's.
type Proxy struct {
	m        *Mesh
	id       string
	region   string
	ip       netip.Addr
	cert     *tls.Certificate
	resetKey [32]byte // kept across restarts, as cmd/ keeps it in the data dir

	// life serializes start, stop and kill. It is held while calling into
	// gossip and peer, so nothing their goroutines call takes it.
	life sync.Mutex

	mu         sync.Mutex // guards following; never held while calling gossip or peer
	running    bool
	gossipPort uint16
	peerPort   uint16
	gossip     *gossip.Cluster
	peers      *peer.Mesh
	pc         *PacketConn
	served     chan error // Serve's result
	reg        *prometheus.Registry
	tunnels    map[string]TunnelFunc
}

// TunnelFunc stands for a reverse tunnel: it connects to the node the way
// tunnel/server's Dial would, down the tunnel. A proxy's fake registry
// maps node names to them.
type TunnelFunc func(ctx context.Context) (net.Conn, error)

// ErrNoTunnel is returned by a proxy's local tunnel dial when it holds no
// tunnel to the node (tunnel/server's ErrNodeOffline).
var ErrNoTunnel = errors.New("no tunnel to the node at this proxy")

// ErrOffline: no proxy of the mesh holds a tunnel to the node.
var ErrOffline = errors.New("node is offline")

// ErrUnreachable: some proxy holds a tunnel to the node, but every dial
// failed.
var ErrUnreachable = errors.New("node could not be reached")

// ID returns the proxy's id.
func (p *Proxy) ID() string { return p.id }

// Region returns the proxy's region.
func (p *Proxy) Region() string { return p.region }

// IP returns the proxy's loopback address.
func (p *Proxy) IP() netip.Addr { return p.ip }

// Running reports whether the proxy is running (started, not killed or
// stopped).
func (p *Proxy) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

// Gossip returns the running proxy's gossip Cluster, nil when stopped.
func (p *Proxy) Gossip() *gossip.Cluster {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return nil
	}
	return p.gossip
}

// Peers returns the running proxy's peer Mesh, nil when stopped.
func (p *Proxy) Peers() *peer.Mesh {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return nil
	}
	return p.peers
}

// Metrics returns the registry of the proxy's current (or last) run.
func (p *Proxy) Metrics() *prometheus.Registry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reg
}

// GossipAddr returns the proxy's gossip address ("" before it started).
func (p *Proxy) GossipAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gossipPort == 0 {
		return ""
	}
	return netip.AddrPortFrom(p.ip, p.gossipPort).String()
}

// PeerAddr returns the proxy's peer (QUIC) address.
func (p *Proxy) PeerAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.peerPort == 0 {
		return ""
	}
	return netip.AddrPortFrom(p.ip, p.peerPort).String()
}

// GossipTraffic returns what the proxy's gossip has sent, over all its
// runs.
func (p *Proxy) GossipTraffic() Traffic {
	p.mu.Lock()
	port := p.gossipPort
	p.mu.Unlock()
	return p.m.wan.TrafficFrom(netip.AddrPortFrom(p.ip, port))
}

// PeerTraffic returns what the proxy's peer socket has sent, over all its
// runs.
func (p *Proxy) PeerTraffic() Traffic {
	p.mu.Lock()
	port := p.peerPort
	p.mu.Unlock()
	return p.m.wan.TrafficFrom(netip.AddrPortFrom(p.ip, port))
}

func (p *Proxy) logger() *slog.Logger {
	text := slog.NewTextHandler(p.m.logs, &slog.HandlerOptions{Level: p.m.cfg.LogLevel})
	return slog.New(&logHandler{text: text, level: p.m.cfg.LogLevel, observer: p.id, onDeath: p.m.recordDeath}).With("harness_proxy", p.id)
}

// start runs the proxy: peer socket and mesh first (so its address can go
// into the gossiped meta), then gossip, joining through a seed.
func (p *Proxy) start() error {
	p.life.Lock()
	defer p.life.Unlock()
	if p.Running() {
		return fmt.Errorf("proxy %s is running", p.id)
	}
	m := p.m
	p.mu.Lock()
	gport, pport := p.gossipPort, p.peerPort
	p.mu.Unlock()
	log := p.logger()

	pc, err := m.wan.ListenPacket(netip.AddrPortFrom(p.ip, pport).String())
	if err != nil {
		return fmt.Errorf("peer socket: %w", err)
	}
	reg := prometheus.NewRegistry()
	cert := p.cert
	pm, err := peer.New(peer.Config{
		ID:                   p.id,
		ClusterName:          m.cfg.ClusterName,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		RootCAs:              func() *x509.CertPool { return m.ca.Pool() },
		Handler:              peer.HandlerFunc(p.handlePeerDial),
		DialTimeout:          m.cfg.PeerDialTimeout,
		StatelessResetKey:    &p.resetKey,
		Logger:               log.With("component", "peer"),
		Metrics:              reg,
	})
	if err != nil {
		pc.Close()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- pm.Serve(pc) }()

	var seeds []string
	if s := m.seed(p.id); s != "" {
		seeds = []string{s}
	}
	g, err := gossip.New(gossip.Config{
		BindAddr: netip.AddrPortFrom(p.ip, gport).String(),
		Seeds:    seeds,
		Keys:     [][]byte{m.key},
		Meta: gossip.Meta{
			ID:       p.id,
			Region:   p.region,
			PeerAddr: pc.LocalAddr().String(),
			Version:  "meshtest",
			State:    gossip.StateActive,
		},
		Timing:        m.cfg.Timing,
		Logger:        log.With("component", "gossip"),
		Metrics:       reg,
		WrapTransport: m.wan.GossipTransport,
	})
	if err != nil {
		pm.Close()
		<-served
		pc.Close()
		return err
	}
	ga, _ := netip.ParseAddrPort(g.LocalAddr())
	pa, _ := addrOf(pc.LocalAddr())
	p.mu.Lock()
	p.running = true
	p.gossipPort, p.peerPort = ga.Port(), pa.Port()
	p.gossip, p.peers, p.pc, p.served, p.reg = g, pm, pc, served, reg
	p.tunnels = make(map[string]TunnelFunc)
	p.mu.Unlock()
	return nil
}

// Restart starts a stopped or killed proxy again with the same id and
// address: a new process (gossip incarnation, QUIC connections, empty
// tunnel registry, active) joining through the first running proxy.
func (p *Proxy) Restart() {
	p.m.t.Helper()
	if err := p.start(); err != nil {
		p.m.t.Fatalf("meshtest: restart proxy %s: %v", p.id, err)
	}
}

// Kill stops the proxy abruptly, like kill -9: from this moment nothing
// leaves its sockets (no leave message, no QUIC CONNECTION_CLOSE), then
// everything is closed. Peers learn of it from their failure detector.
func (p *Proxy) Kill() { p.halt(false) }

// Stop stops the proxy gracefully: it leaves the gossip mesh (peers mark
// it left at once), lets its peer streams end (up to 5 s), then closes.
func (p *Proxy) Stop() { p.halt(true) }

func (p *Proxy) halt(graceful bool) {
	p.life.Lock()
	defer p.life.Unlock()
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		return
	}
	p.running = false
	g, pm, pc, served := p.gossip, p.peers, p.pc, p.served
	p.tunnels = nil
	p.mu.Unlock()

	if graceful {
		g.Leave(2 * time.Second) //nolint:errcheck // a failed leave is a death to peers, also fine
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pm.Shutdown(ctx) //nolint:errcheck
		cancel()
	} else {
		pc.Blackhole()
	}
	g.Shutdown() //nolint:errcheck
	pm.Close()   //nolint:errcheck
	<-served
	pc.Close()
}

// SetDraining sets the proxy's gossiped state to draining (or back to
// active), as jgctl proxy drain does.
func (p *Proxy) SetDraining(draining bool) {
	p.m.t.Helper()
	g := p.Gossip()
	if g == nil {
		p.m.t.Fatalf("meshtest: proxy %s is not running", p.id)
	}
	state := gossip.StateActive
	if draining {
		state = gossip.StateDraining
	}
	if err := g.SetMeta(func(m *gossip.Meta) { m.State = state }); err != nil {
		p.m.t.Fatalf("meshtest: set proxy %s %s: %v", p.id, state, err)
	}
}

// AddTunnel records in the proxy's registry and directory that it holds
// a tunnel to node, a Node of the Mesh (AddNode).
func (p *Proxy) AddTunnel(node string) {
	p.m.t.Helper()
	p.m.mu.Lock()
	n := p.m.nodes[node]
	p.m.mu.Unlock()
	if n == nil {
		p.m.t.Fatalf("meshtest: add tunnel to node %s at proxy %s: no such node (AddNode)", node, p.id)
	}
	p.AddTunnelFunc(node, n.dial)
}

// AddTunnelFunc records that the proxy holds a tunnel to node, reached
// with dial.
func (p *Proxy) AddTunnelFunc(node string, dial TunnelFunc) {
	p.m.t.Helper()
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		p.m.t.Fatalf("meshtest: add tunnel to node %s at proxy %s: proxy not running", node, p.id)
	}
	p.tunnels[node] = dial
	g := p.gossip
	p.mu.Unlock()
	g.AddTunnel(node)
}

// RemoveTunnel records that the proxy no longer holds a tunnel to node.
func (p *Proxy) RemoveTunnel(node string) {
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		return
	}
	delete(p.tunnels, node)
	g := p.gossip
	p.mu.Unlock()
	g.RemoveTunnel(node)
}

// Tunnels returns the nodes the proxy's registry holds tunnels to.
func (p *Proxy) Tunnels() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.tunnels))
	for n := range p.tunnels {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// dialTunnel dials node down a tunnel held here.
func (p *Proxy) dialTunnel(ctx context.Context, node string) (net.Conn, error) {
	p.mu.Lock()
	dial := p.tunnels[node]
	p.mu.Unlock()
	if dial == nil {
		return nil, fmt.Errorf("dial node %s at proxy %s: %w", node, p.id, ErrNoTunnel)
	}
	c, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial node %s down its tunnel at proxy %s: %w", node, p.id, err)
	}
	return c, nil
}

// handlePeerDial serves a peer's dial from the tunnels held here, as
// cmd/jumpgate's proxyMesh.handlePeerDial does.
func (p *Proxy) handlePeerDial(ctx context.Context, from string, req peer.DialRequest) (net.Conn, error) {
	c, err := p.dialTunnel(ctx, req.Node)
	if errors.Is(err, ErrNoTunnel) {
		return nil, &peer.Error{Code: peer.CodeOffline, Message: fmt.Sprintf("node %s has no tunnel to proxy %s", req.Node, p.id)}
	}
	if err != nil {
		return nil, &peer.Error{Code: peer.CodeUnavailable, Message: fmt.Sprintf("proxy %s: %v", p.id, err)}
	}
	return c, nil
}

// Path is the way a dial went.
type Path struct {
	From string // the proxy the dial started at
	// Via is the proxy whose tunnel carried the dial: From itself when
	// Local; "" when the dial failed.
	Via   string
	Local bool
	// Plan is the order route.Plan gave the peers holding the node (the
	// local holder left out).
	Plan []string
	// Failed lists the peers tried before Via, whose dials failed.
	Failed []string
}

// String says "local" or "peer ID", as cmd/jumpgate's dial path does.
func (p Path) String() string {
	switch {
	case p.Local:
		return "local"
	case p.Via != "":
		return "peer " + p.Via
	}
	return "none"
}

// Dial reaches node from this proxy exactly as cmd/jumpgate's
// proxyMesh.dial does: down a tunnel held here; else through the peers
// that hold one in route.Plan's order (health, then draining last, then
// RTT: the live QUIC connection's, else gossip's probe RTT), trying the
// next when a dial fails, unless ctx has ended. It reports the path. The
// error wraps ErrOffline when no proxy holds the node, ErrUnreachable when
// every holder failed.
func (p *Proxy) Dial(ctx context.Context, node string) (net.Conn, Path, error) {
	path := Path{From: p.id}
	c, localErr := p.dialTunnel(ctx, node)
	if localErr == nil {
		path.Via, path.Local = p.id, true
		return c, path, nil
	}
	p.mu.Lock()
	running, g, pm := p.running, p.gossip, p.peers
	p.mu.Unlock()
	if !running {
		return nil, path, fmt.Errorf("dial node %s from proxy %s: the proxy is not running", node, p.id)
	}
	plan := route.Plan(p.id, g.Holders(node), func(id string) (route.Proxy, bool) { return lookup(g, pm, id) })
	var failures []string
	if !errors.Is(localErr, ErrNoTunnel) {
		failures = append(failures, fmt.Sprintf("local tunnel: %v", localErr))
	}
	for _, hop := range plan {
		if !hop.Local {
			path.Plan = append(path.Plan, hop.ID)
		}
	}
	c, via, failed := route.TryPlan(ctx, plan, route.DefaultHopTimeout, func(ctx context.Context, hop route.Hop) (net.Conn, error) {
		return pm.Dial(ctx, hop.ID, hop.PeerAddr, peer.DialRequest{Version: 1, Node: node, User: "meshtest", Hops: []string{p.id}})
	})
	for _, f := range failed {
		path.Failed = append(path.Failed, f.Hop.ID)
		failures = append(failures, fmt.Sprintf("via %s: %v", f.Hop.ID, f.Err))
	}
	if c != nil {
		path.Via = via.ID
		return c, path, nil
	}
	tried := len(failed)
	if tried == 0 && len(failures) == 0 {
		return nil, path, fmt.Errorf("dial node %s from proxy %s: %w: it has no tunnel to any proxy of the mesh", node, p.id, ErrOffline)
	}
	return nil, path, fmt.Errorf("dial node %s from proxy %s: %w (%s)", node, p.id, ErrUnreachable, strings.Join(failures, "; "))
}

// lookup describes a proxy for routing, as cmd/jumpgate's
// proxyMesh.lookup does.
func lookup(g *gossip.Cluster, pm *peer.Mesh, id string) (route.Proxy, bool) {
	m, ok := g.Member(id)
	if !ok {
		return route.Proxy{}, false
	}
	p := route.Proxy{ID: id, PeerAddr: m.PeerAddr, Draining: m.State == gossip.StateDraining, RTT: m.RTT}
	switch m.Health {
	case gossip.HealthAlive:
		p.Health = route.Alive
	case gossip.HealthSuspect:
		p.Health = route.Suspect
	default:
		p.Health = route.Gone
	}
	if rtt, ok := pm.RTT(id); ok && rtt > 0 {
		p.RTT = rtt
	}
	return p, true
}

// Node is a node in-process: a TCP server on 127.0.0.1 that proxies'
// fake tunnels dial. Its tunnels add no latency.
type Node struct {
	name  string
	ln    net.Listener
	serve func(net.Conn)
	wg    sync.WaitGroup
	conns atomic.Int64

	mu     sync.Mutex // guards following
	open   map[net.Conn]struct{}
	closed bool
}

// AddNode starts node name, serving each connection with serve (Echo if
// nil). It is closed at the end of the test.
func (m *Mesh) AddNode(name string, serve func(net.Conn)) *Node {
	m.t.Helper()
	if serve == nil {
		serve = Echo
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	n := &Node{name: name, ln: ln, serve: serve, open: make(map[net.Conn]struct{})}
	m.mu.Lock()
	if m.nodes[name] != nil {
		m.mu.Unlock()
		ln.Close()
		m.t.Fatalf("meshtest: node %s added twice", name)
	}
	m.nodes[name] = n
	m.mu.Unlock()
	n.wg.Add(1)
	go n.accept()
	return n
}

// Name returns the node's name.
func (n *Node) Name() string { return n.name }

// Conns returns how many connections the node has accepted.
func (n *Node) Conns() int64 { return n.conns.Load() }

func (n *Node) accept() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			c.Close()
			return
		}
		n.open[c] = struct{}{}
		n.conns.Add(1)
		n.wg.Add(1)
		n.mu.Unlock()
		go func() {
			defer n.wg.Done()
			n.serve(c)
			c.Close()
			n.mu.Lock()
			delete(n.open, c)
			n.mu.Unlock()
		}()
	}
}

func (n *Node) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", n.ln.Addr().String())
}

// Close stops the node and closes its connections.
func (n *Node) Close() {
	n.mu.Lock()
	n.closed = true
	for c := range n.open {
		c.Close()
	}
	n.mu.Unlock()
	n.ln.Close()
	n.wg.Wait()
}

// Echo serves a connection by sending back what it reads, then
// half-closing when the client has.
func Echo(c net.Conn) {
	io.Copy(c, c) //nolint:errcheck
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite() //nolint:errcheck
	}
}

// Exchange writes b to c, half-closes it, reads everything the far end
// sends until it closes, closes c and returns what it read: with an Echo
// node at the far end, b itself.
func Exchange(c net.Conn, b []byte) ([]byte, error) {
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return nil, fmt.Errorf("exchange over %T: it cannot half-close", c)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(b)
		if err == nil {
			err = cw.CloseWrite()
		}
		errc <- err
	}()
	var got bytes.Buffer
	_, rerr := io.Copy(&got, c)
	if werr := <-errc; werr != nil {
		return got.Bytes(), fmt.Errorf("write: %w", werr)
	}
	if rerr != nil {
		return got.Bytes(), fmt.Errorf("read: %w", rerr)
	}
	return got.Bytes(), nil
}
