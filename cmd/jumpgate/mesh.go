package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/mesh/gossip"
	"jumpgate.dev/jumpgate/mesh/ingress"
	"jumpgate.dev/jumpgate/mesh/peer"
	"jumpgate.dev/jumpgate/mesh/route"
	"jumpgate.dev/jumpgate/tunnel/proto"
	tserver "jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/udpgro"
)

// proxyMesh joins this proxy's tunnel server (tunnel/) to the other proxies
// (mesh/): it publishes the tunnels held here in the gossiped directory,
// answers peers' dials from the local tunnels, and routes this proxy's dials
// to the peer holding a node's tunnel. mesh/ and tunnel/ do not import each
// other; this is where they meet.
type proxyMesh struct {
	id      string
	log     *slog.Logger
	tunnels *tserver.Server
	gossip  *gossip.Cluster // nil: this proxy runs alone
	peers   *peer.Mesh
	// peerDials counts dials through each peer by result (ok, error), so
	// that a sick peer link can be named (jumpgate_peer_dials_total counts
	// by outcome across peers).
	peerDials *prometheus.CounterVec

	mu   sync.Mutex // guards following
	keys [][]byte   // the gossip keyring as last synced from auth
}

func startMesh(ctx context.Context, p *process, cfg Config, cluster string, tunnels *tserver.Server, upstream *authapi.Client,
	getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), pool func() *x509.CertPool, publicAddr string, onChange func()) (*proxyMesh, error) {
	pm := &proxyMesh{id: cfg.Proxy.ID, log: p.log.With("component", "mesh"), tunnels: tunnels,
		peerDials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_mesh_peer_dials_total",
			Help: "Dials this proxy sent through each peer proxy, by result (ok, error).",
		}, []string{"peer", "result"})}
	p.reg.MustRegister(pm.peerDials)
	mc := cfg.Proxy.Mesh
	if !mc.Enabled() {
		return pm, nil
	}
	// The gossip key comes from auth; without it there is no mesh, so wait
	// for it (auth may still be starting) rather than run alone silently.
	var keys [][]byte
	for attempt := 0; ; attempt++ {
		kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		k, err := upstream.MeshKeys(kctx)
		cancel()
		if err == nil && len(k) == 0 {
			err = errors.New("auth returned an empty mesh keyring")
		}
		if err == nil {
			keys = k
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if attempt == 0 || attempt%10 == 0 {
			pm.log.Warn("fetch the mesh gossip key from auth; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	pm.keys = keys

	pudp, err := udpgro.Listen(mc.PeerListen)
	if err != nil {
		return nil, fmt.Errorf("proxy mesh: peer listen (UDP %s): %w", mc.PeerListen, err)
	}
	_, peerReset, err := resetKeys(cfg.DataDir)
	if err != nil {
		pudp.Close()
		return nil, err
	}
	pm.peers, err = peer.New(peer.Config{
		ID: cfg.Proxy.ID, ClusterName: cluster, GetCertificate: getCert, StatelessResetKey: peerReset,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return getCert(nil) },
		RootCAs:              pool,
		Handler:              peer.HandlerFunc(pm.handlePeerDial),
		Logger:               p.log.With("component", "peer"), Metrics: p.reg,
	})
	if err != nil {
		pudp.Close()
		return nil, err
	}
	p.goServe("peer mesh", func() error {
		if err := pm.peers.Serve(pudp); err != nil && !errors.Is(err, peer.ErrClosed) {
			return err
		}
		return nil
	})
	p.onShutdown(func(ctx context.Context) { pm.peers.Shutdown(ctx) }) //nolint:errcheck

	gossipAdvertise := ""
	if mc.AdvertiseAddr != "" {
		_, port, _ := net.SplitHostPort(mc.GossipListen)
		gossipAdvertise = net.JoinHostPort(mc.AdvertiseAddr, port)
	}
	meta := gossip.Meta{ID: cfg.Proxy.ID, Region: cfg.Proxy.Region, PublicAddr: publicAddr, Version: version, State: gossip.StateActive}
	if l := cfg.Proxy.Location; l != nil {
		meta.Lat, meta.Lon, meta.HasCoords = l.Lat, l.Lon, true
	}
	meta.PeerAddr = advertised(mc.AdvertiseAddr, pudp.LocalAddr().String())
	gossipSet := make(chan struct{})
	pm.gossip, err = gossip.New(gossip.Config{
		BindAddr: mc.GossipListen, AdvertiseAddr: gossipAdvertise, Seeds: mc.Seeds, Keys: keys, Meta: meta,
		Logger: p.log.With("component", "gossip"), Metrics: p.reg, OnChange: func() {
			onChange()
			select {
			case <-gossipSet: // pm.gossip is written
				pm.dropDeadPeers()
			default:
			}
		},
	})
	if err != nil {
		pm.peers.Close()
		return nil, fmt.Errorf("proxy mesh: gossip: %w", err)
	}
	close(gossipSet)
	// Listening on all addresses with nothing to advertise: publish the
	// address gossip chose for this host instead.
	gossipHost, _, _ := net.SplitHostPort(pm.gossip.LocalAddr())
	fix := func(addr string) string {
		if h, port, err := net.SplitHostPort(addr); err == nil && (h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified()) {
			return net.JoinHostPort(gossipHost, port)
		}
		return addr
	}
	if peerAddr, pub := fix(meta.PeerAddr), fix(meta.PublicAddr); peerAddr != meta.PeerAddr || pub != meta.PublicAddr {
		if err := pm.gossip.SetMeta(func(m *gossip.Meta) { m.PeerAddr, m.PublicAddr = peerAddr, pub }); err != nil {
			pm.log.Warn("publish this proxy's addresses", "peer", peerAddr, "public", pub, "err", err)
		}
	}
	p.onShutdown(func(context.Context) {
		if err := pm.gossip.Leave(2 * time.Second); err != nil {
			pm.log.Warn("leave the mesh", "err", err)
		}
		pm.gossip.Shutdown() //nolint:errcheck
	})
	p.goServe("mesh key sync", func() error { pm.syncKeys(ctx, upstream); return nil })
	pm.log.Info("proxy joined the mesh", "proxy", cfg.Proxy.ID, "region", cfg.Proxy.Region, "gossip", pm.gossip.LocalAddr(), "peer", pudp.LocalAddr(), "seeds", mc.Seeds)
	return pm, nil
}

// resetKeys returns the stateless-reset keys of this proxy's tunnel and peer
// QUIC listeners, derived from a secret kept in the data dir. With them, a
// proxy restarted on the same port answers packets of connections it lost
// in the crash with a stateless reset, so agents and peers reconnect at once
// instead of waiting for an idle timeout.
func resetKeys(dataDir string) (tunnel, peerKey *[32]byte, err error) {
	path := filepath.Join(dataDir, "quic-reset.key")
	secret, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, nil, err
		}
		if err := os.WriteFile(path, secret, 0o600); err != nil {
			return nil, nil, fmt.Errorf("save the QUIC stateless reset key: %w", err)
		}
	} else if err != nil {
		return nil, nil, fmt.Errorf("read the QUIC stateless reset key: %w", err)
	}
	if len(secret) != 32 {
		return nil, nil, fmt.Errorf("%s is %d bytes, want 32: remove it and restart", path, len(secret))
	}
	derive := func(label string) *[32]byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(label))
		var k [32]byte
		copy(k[:], m.Sum(nil))
		return &k
	}
	return derive("jumpgate tunnel stateless reset"), derive("jumpgate peer stateless reset"), nil
}

// advertised replaces the host of a listen address with host when given.
func advertised(host, listen string) string {
	h, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host != "" {
		h = host
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		h = ""
	}
	return net.JoinHostPort(h, port)
}

// dropDeadPeers closes the peer connections to proxies gossip has declared
// dead, so that sessions through them move at once instead of at the QUIC
// idle timeout (see peer.Mesh.DropPeer).
func (pm *proxyMesh) dropDeadPeers() {
	if pm.gossip == nil || pm.peers == nil {
		return
	}
	for _, m := range pm.gossip.Members() {
		if m.Health == gossip.HealthDead {
			pm.peers.DropPeer(m.ID, fmt.Sprintf("proxy %s declared %s by the mesh", m.ID, m.Health))
		}
	}
}

// onTunnel keeps the gossiped directory in step with the tunnel server.
func (pm *proxyMesh) onTunnel(ev tserver.TunnelEvent) {
	if pm.gossip == nil {
		return
	}
	switch ev.Type {
	case tserver.TunnelUp:
		pm.gossip.AddTunnel(ev.Node.ID)
	case tserver.TunnelDown:
		pm.gossip.RemoveTunnel(ev.Node.ID)
	}
}

// held returns the nodes that hold a tunnel to some proxy of the mesh
// (to this proxy, without a mesh): one directory snapshot, for callers
// that ask about every node at once (metrics, the mesh page).
func (pm *proxyMesh) held() map[string]bool {
	out := make(map[string]bool)
	if pm.gossip != nil {
		for node, holders := range pm.gossip.Directory() {
			if len(holders) > 0 {
				out[node] = true
			}
		}
		return out
	}
	for _, n := range pm.tunnels.Nodes() {
		out[n.ID] = true
	}
	return out
}

// online reports whether any proxy of the mesh holds a tunnel to node.
func (pm *proxyMesh) online(node string) bool {
	if pm.gossip != nil {
		// The directory lists this proxy's own tunnels too: one lookup,
		// not a scan of every tunnel for each node of a `jg ls`.
		return len(pm.gossip.Holders(node)) > 0
	}
	return slices.ContainsFunc(pm.tunnels.Nodes(), func(n tserver.NodeInfo) bool { return n.ID == node })
}

// proxies lists the live proxies of the mesh for nodes and users.
// setLoad gossips this proxy's load (live sessions), which discovery
// weighs among equally near proxies. Unchanged, it sends nothing.
func (pm *proxyMesh) setLoad(sessions int) {
	if pm.gossip == nil {
		return
	}
	load := uint32(min(max(sessions, 0), 1<<31))
	if pm.gossip.Self().Load == load {
		return
	}
	if err := pm.gossip.SetMeta(func(m *gossip.Meta) { m.Load = load }); err != nil {
		pm.log.Debug("gossip load", "err", err)
	}
}

func (pm *proxyMesh) proxies() []authapi.MeshProxy {
	if pm.gossip == nil {
		return nil
	}
	var out []authapi.MeshProxy
	for _, m := range pm.gossip.Members() {
		if m.Health != gossip.HealthAlive && m.Health != gossip.HealthSuspect || m.PublicAddr == "" {
			continue
		}
		out = append(out, authapi.MeshProxy{ID: m.ID, Region: m.Region, PublicAddr: m.PublicAddr, Lat: m.Lat, Lon: m.Lon, HasCoords: m.HasCoords,
			State: string(m.State), Health: string(m.Health)})
	}
	return out
}

// pathConn is a dialed node connection that says which way it went, for the
// dial response and the metrics.
type pathConn struct {
	net.Conn
	path string
}

func (c pathConn) DialPath() string { return c.path }

func (c pathConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// dialError is a failed dial with the code the client sees.
type dialError struct {
	code string
	err  error
}

func (e *dialError) Error() string    { return e.err.Error() }
func (e *dialError) Unwrap() error    { return e.err }
func (e *dialError) DialCode() string { return e.code }
func (e *dialError) Offline() bool    { return e.code == ingress.CodeOffline }

// dial reaches node: down a tunnel held here, else through the peers that
// hold one, best first (mesh/route), trying the next when one fails.
func (pm *proxyMesh) dial(ctx context.Context, node string, user identity.Identity, clientAddr string) (net.Conn, error) {
	// When other proxies hold the node too, a half-dead local tunnel gets
	// only a hop's share of the time, not the whole dial's.
	lctx, lcancel := ctx, context.CancelFunc(func() {})
	if pm.gossip != nil && slices.ContainsFunc(pm.gossip.Holders(node), func(id string) bool { return id != pm.id }) {
		lctx, lcancel = context.WithTimeout(ctx, route.DefaultHopTimeout)
	}
	mfa := ingress.MFACertFrom(ctx)
	c, localErr := pm.tunnels.Dial(lctx, node, proto.DialRequest{Version: proto.Version, ClientAddr: clientAddr, User: user.Name, MFACert: mfa})
	lcancel()
	if localErr == nil {
		return pathConn{Conn: c, path: "local"}, nil
	}
	if pm.gossip == nil {
		if errors.Is(localErr, tserver.ErrNodeOffline) {
			return nil, &dialError{code: ingress.CodeOffline, err: fmt.Errorf("node %s is offline: it has no tunnel to this proxy (is its agent running?)", node)}
		}
		return nil, localErr
	}
	plan := route.Plan(pm.id, pm.gossip.Holders(node), pm.lookup)
	var failures []string
	if !errors.Is(localErr, tserver.ErrNodeOffline) {
		failures = append(failures, fmt.Sprintf("local tunnel: %v", localErr))
	}
	c, via, failed := route.TryPlan(ctx, plan, route.DefaultHopTimeout, func(ctx context.Context, hop route.Hop) (net.Conn, error) {
		c, err := pm.peers.Dial(ctx, hop.ID, hop.PeerAddr, peer.DialRequest{Version: 1, Node: node, User: user.Name, ClientAddr: clientAddr, Hops: []string{pm.id}, MFACert: mfa})
		result := "ok"
		if err != nil {
			result = "error"
		}
		pm.peerDials.WithLabelValues(hop.ID, result).Inc()
		return c, err
	})
	for _, f := range failed {
		pm.log.Warn("dial via peer failed; trying the next holder", "node", node, "peer", f.Hop.ID, "err", f.Err)
		failures = append(failures, fmt.Sprintf("via %s: %v", f.Hop.ID, f.Err))
	}
	if c != nil {
		return pathConn{Conn: c, path: "peer " + via.ID}, nil
	}
	tried := len(failed)
	if tried == 0 && len(failures) == 0 {
		return nil, &dialError{code: ingress.CodeOffline, err: fmt.Errorf("node %s is offline: it has no tunnel to any proxy of the mesh (is its agent running?)", node)}
	}
	return nil, &dialError{code: ingress.CodeUnreachable, err: fmt.Errorf("node %s could not be reached (%s)", node, strings.Join(failures, "; "))}
}

// lookup describes a proxy for routing, from gossip and the live peer
// connections.
// routeHealth is a member's gossip health as routing ranks it.
func routeHealth(h gossip.Health) route.Health {
	switch h {
	case gossip.HealthAlive:
		return route.Alive
	case gossip.HealthSuspect:
		return route.Suspect
	}
	return route.Gone
}

func (pm *proxyMesh) lookup(id string) (route.Proxy, bool) {
	m, ok := pm.gossip.Member(id)
	if !ok {
		return route.Proxy{}, false
	}
	p := route.Proxy{ID: id, PeerAddr: m.PeerAddr, Draining: m.State == gossip.StateDraining, RTT: m.RTT, Health: routeHealth(m.Health)}
	if rtt, ok := pm.peers.RTT(id); ok && rtt > 0 {
		p.RTT = rtt // the live QUIC connection's smoothed RTT beats the probe's
	}
	return p, true
}

// handlePeerDial serves a peer's dial from the tunnels held here. It never
// forwards further: the dialing proxy routes, holders only deliver.
func (pm *proxyMesh) handlePeerDial(ctx context.Context, from string, req peer.DialRequest) (net.Conn, error) {
	c, err := pm.tunnels.Dial(ctx, req.Node, proto.DialRequest{Version: proto.Version, ClientAddr: req.ClientAddr, User: req.User, MFACert: req.MFACert})
	if errors.Is(err, tserver.ErrNodeOffline) {
		return nil, &peer.Error{Code: peer.CodeOffline, Message: fmt.Sprintf("node %s has no tunnel to proxy %s", req.Node, pm.id)}
	}
	if err != nil {
		return nil, &peer.Error{Code: peer.CodeUnavailable, Message: fmt.Sprintf("proxy %s: %v", pm.id, err)}
	}
	pm.log.Debug("peer dial", "node", req.Node, "from", from, "user", req.User)
	return c, nil
}

// report describes this proxy and its view of the mesh for auth.
func (pm *proxyMesh) report(sessions int) *authapi.ProxyMesh {
	if pm.gossip == nil {
		return nil
	}
	self := pm.gossip.Self()
	out := &authapi.ProxyMesh{Region: self.Region, Version: self.Version, State: string(self.State), PublicAddr: self.PublicAddr,
		PeerAddr: self.PeerAddr, GossipAddr: self.GossipAddr, Sessions: sessions}
	for _, m := range pm.gossip.Members() {
		if m.Self {
			continue
		}
		rtt := m.RTT
		if r, ok := pm.peers.RTT(m.ID); ok && r > 0 {
			rtt = r
		}
		out.Peers = append(out.Peers, authapi.PeerView{ID: m.ID, Health: string(m.Health), RTT: rtt})
	}
	pm.mu.Lock()
	for _, k := range pm.keys {
		out.KeyIDs = append(out.KeyIDs, authapi.MeshKeyID(k))
	}
	pm.mu.Unlock()
	return out
}

// syncKeys keeps the gossip keyring equal to auth's: new keys are installed,
// the primary is switched, removed keys are dropped. A rotation adds a key
// first, promotes it once every proxy has it, and removes the old one last
// (jgctl mesh rotate-key), so no two proxies ever lack a common key.
func (pm *proxyMesh) syncKeys(ctx context.Context, upstream *authapi.Client) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		keys, err := upstream.MeshKeys(kctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				pm.log.Warn("refresh the mesh gossip key from auth", "err", err)
			}
			continue
		}
		if len(keys) == 0 {
			pm.log.Warn("auth returned an empty mesh keyring; keeping the current keys")
			continue
		}
		pm.mu.Lock()
		old := pm.keys
		pm.mu.Unlock()
		if keysEqual(old, keys) {
			continue
		}
		if err := pm.applyKeys(old, keys); err != nil {
			pm.log.Error("apply the new mesh gossip keyring", "err", err)
			continue
		}
		pm.mu.Lock()
		pm.keys = keys
		pm.mu.Unlock()
		pm.log.Info("mesh gossip keyring updated", "primary", authapi.MeshKeyID(keys[0]), "keys", len(keys))
	}
}

func (pm *proxyMesh) applyKeys(old, keys [][]byte) error {
	for _, k := range keys {
		if err := pm.gossip.InstallKey(k); err != nil {
			return fmt.Errorf("install key %s: %w", authapi.MeshKeyID(k), err)
		}
	}
	if err := pm.gossip.UseKey(keys[0]); err != nil {
		return fmt.Errorf("use key %s: %w", authapi.MeshKeyID(keys[0]), err)
	}
	for _, k := range old {
		if !slices.ContainsFunc(keys, func(n []byte) bool { return string(n) == string(k) }) {
			if err := pm.gossip.RemoveKey(k); err != nil {
				return fmt.Errorf("remove key %s: %w", authapi.MeshKeyID(k), err)
			}
		}
	}
	return nil
}

func keysEqual(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}
