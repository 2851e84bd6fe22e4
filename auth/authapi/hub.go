package authapi

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// Hub is a cache of watched state (cluster, CAs, roles, nodes) and a fan-out
// of its changes to watch streams. The auth server feeds its Hub from the
// state machine; proxies and nodes feed theirs from an upstream watch
// stream (Follow), and proxies serve their Hub to nodes.
type Hub struct {
	mu      sync.RWMutex // guards following
	ready   bool
	readyCh chan struct{}
	index   uint64
	cluster string
	cas     state.CAs
	roles   map[string]identity.Role
	nodes   map[string]state.Node
	locks   map[string]identity.Lock
	// heard is when the hub last got anything from upstream (heartbeats
	// included): how stale its locks may be.
	heard time.Time
	subs  map[chan WatchMessage]struct{}
	// recent holds the last recentEvents events, oldest first, so that a
	// watcher that reconnects with the index it had gets only what it
	// missed. resumeFloor is the lowest index a watcher may resume from:
	// the last snapshot's index, or one past the newest event dropped
	// from recent.
	recent      []WatchMessage
	resumeFloor uint64
	// derived from cas, rebuilt on change
	userCAs, hostCAs []ssh.PublicKey
	tlsPool          *x509.CertPool
}

// NewHub returns an empty hub; it is not Ready until the first snapshot.
func NewHub() *Hub {
	return &Hub{readyCh: make(chan struct{}), roles: map[string]identity.Role{}, nodes: map[string]state.Node{}, locks: map[string]identity.Lock{}, subs: map[chan WatchMessage]struct{}{}, tlsPool: x509.NewCertPool()}
}

// Ready is closed once the hub holds a snapshot.
func (h *Hub) Ready() <-chan struct{} { return h.readyCh }

// Apply updates the hub from a watch message and forwards it to
// subscribers.
func (h *Hub) Apply(m WatchMessage) error {
	h.mu.Lock()
	switch m.Type {
	case "snapshot":
		if m.Snapshot == nil {
			h.mu.Unlock()
			return fmt.Errorf("watch: snapshot message without a snapshot")
		}
		h.cluster = m.Snapshot.Cluster
		h.setCAs(m.Snapshot.CAs)
		h.roles = map[string]identity.Role{}
		for _, r := range m.Snapshot.Roles {
			h.roles[r.Name] = r
		}
		h.nodes = map[string]state.Node{}
		for _, n := range m.Snapshot.Nodes {
			h.nodes[n.ID] = n
		}
		h.locks = map[string]identity.Lock{}
		for _, l := range m.Snapshot.Locks {
			h.locks[l.ID] = l
		}
		if !h.ready {
			h.ready = true
			close(h.readyCh)
		}
	case "event":
		if m.Event == nil {
			h.mu.Unlock()
			return fmt.Errorf("watch: event message without an event")
		}
		if err := h.applyEvent(*m.Event); err != nil {
			h.mu.Unlock()
			return err
		}
	case "heartbeat", "resume":
		h.heard = time.Now()
		h.mu.Unlock()
		return nil
	default:
		h.mu.Unlock()
		return fmt.Errorf("watch: unknown message type %q", m.Type)
	}
	h.index = m.Index
	h.heard = time.Now()
	snap := m
	if m.Type == "snapshot" {
		// Subscribers need a new snapshot too (the previous one is stale).
		snap = WatchMessage{Type: "snapshot", Index: h.index, Snapshot: h.snapshotLocked()}
		h.recent = h.recent[:0]
		h.resumeFloor = m.Index
	} else {
		if len(h.recent) == recentEvents {
			h.resumeFloor = max(h.resumeFloor, h.recent[0].Index+1)
			h.recent = append(h.recent[:0], h.recent[1:]...)
		}
		h.recent = append(h.recent, m)
	}
	for ch := range h.subs {
		select {
		case ch <- snap:
		default:
			// Too slow: drop it; it reconnects and starts from a snapshot.
			delete(h.subs, ch)
			close(ch)
		}
	}
	h.mu.Unlock()
	return nil
}

func (h *Hub) applyEvent(e state.Event) error {
	switch e.Kind {
	case state.KindRole:
		if e.Op == "delete" {
			delete(h.roles, e.Name)
			return nil
		}
		var r identity.Role
		if err := json.Unmarshal(e.Object, &r); err != nil {
			return fmt.Errorf("watch: role event: %w", err)
		}
		h.roles[r.Name] = r
	case state.KindNode:
		if e.Op == "delete" {
			delete(h.nodes, e.Name)
			return nil
		}
		var n state.Node
		if err := json.Unmarshal(e.Object, &n); err != nil {
			return fmt.Errorf("watch: node event: %w", err)
		}
		h.nodes[n.ID] = n
	case state.KindCAs:
		var c state.CAs
		if err := json.Unmarshal(e.Object, &c); err != nil {
			return fmt.Errorf("watch: CA event: %w", err)
		}
		h.setCAs(c)
	case state.KindCluster:
		if e.Op == "put" {
			h.cluster = e.Name
		}
	case state.KindLock:
		if e.Op == "delete" {
			delete(h.locks, e.Name)
			return nil
		}
		var l identity.Lock
		if err := json.Unmarshal(e.Object, &l); err != nil {
			return fmt.Errorf("watch: lock event: %w", err)
		}
		h.locks[l.ID] = l
	}
	// Unknown kinds come from newer servers: ignore them.
	return nil
}

func (h *Hub) setCAs(c state.CAs) {
	h.cas = c
	h.userCAs = parseAuthorizedKeys(c.UserSSH)
	h.hostCAs = parseAuthorizedKeys(c.HostSSH)
	pool := x509.NewCertPool()
	for _, der := range c.TLS {
		if cert, err := x509.ParseCertificate(der); err == nil {
			pool.AddCert(cert)
		}
	}
	h.tlsPool = pool
}

func parseAuthorizedKeys(lines []string) []ssh.PublicKey {
	var out []ssh.PublicKey
	for _, l := range lines {
		if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l)); err == nil {
			out = append(out, k)
		}
	}
	return out
}

func (h *Hub) snapshotLocked() *WatchSnapshot {
	s := &WatchSnapshot{Cluster: h.cluster, CAs: h.cas}
	for _, r := range h.roles {
		s.Roles = append(s.Roles, r)
	}
	identity.SortRoles(s.Roles)
	for _, n := range h.nodes {
		s.Nodes = append(s.Nodes, n)
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].ID < s.Nodes[j].ID })
	for _, l := range h.locks {
		s.Locks = append(s.Locks, l)
	}
	state.SortLocks(s.Locks)
	return s
}

// Locks returns the locks the hub holds, lifted ones included.
func (h *Hub) Locks() []identity.Lock {
	h.mu.RLock()
	out := make([]identity.Lock, 0, len(h.locks))
	for _, l := range h.locks {
		out = append(out, l)
	}
	h.mu.RUnlock()
	state.SortLocks(out)
	return out
}

// CheckLocks returns an *identity.LockedError if a lock in force applies
// to t.
func (h *Hub) CheckLocks(t identity.LockTarget, now time.Time) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, l := range h.locks {
		if l.Active(now) && l.Matches(t) {
			return &identity.LockedError{Lock: l}
		}
	}
	return nil
}

// LastHeard is when the hub last heard from upstream (zero: never).
func (h *Hub) LastHeard() time.Time {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.heard
}

// recentEvents is how many events a hub keeps for watchers that resume:
// a proxy that fails over to another auth server, or a node that
// reconnects, within about this many changes gets only what it missed.
const recentEvents = 1024

// Subscribe returns a channel that first yields a snapshot and then every
// change. The channel is closed if the subscriber falls behind or cancel is
// called.
func (h *Hub) Subscribe() (<-chan WatchMessage, func()) { return h.SubscribeFrom(0) }

// SubscribeFrom is Subscribe for a watcher that already holds the state up
// to index since: if the hub still has every event after it, the channel
// yields a "resume" message and those events (events at since itself are
// sent again: they are idempotent, and the watcher may have missed some of
// them) instead of a snapshot. since 0 always gets a snapshot.
func (h *Hub) SubscribeFrom(since uint64) (<-chan WatchMessage, func()) {
	h.mu.Lock()
	var first []WatchMessage
	if since > 0 && h.ready && since >= h.resumeFloor {
		first = append(first, WatchMessage{Type: "resume", Index: since})
		for _, m := range h.recent {
			if m.Index >= since {
				first = append(first, m)
			}
		}
	} else {
		first = []WatchMessage{{Type: "snapshot", Index: h.index, Snapshot: h.snapshotLocked()}}
	}
	ch := make(chan WatchMessage, max(256, len(first)+64))
	for _, m := range first {
		ch <- m
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
		h.mu.Unlock()
	}
}

// Cluster returns the cluster name.
func (h *Hub) Cluster() string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.cluster
}

// Role is an identity.RoleGetter over the cache.
func (h *Hub) Role(name string) (identity.Role, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	r, ok := h.roles[name]
	return r, ok
}

// Node returns a node from the inventory.
func (h *Hub) Node(id string) (state.Node, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n, ok := h.nodes[id]
	return n, ok
}

// Nodes returns the inventory sorted by id.
func (h *Hub) Nodes() []state.Node {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.snapshotLocked().Nodes
}

// CAs returns the trusted CA keys.
func (h *Hub) CAs() state.CAs {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.cas
}

// UserCAs returns the user SSH CA keys (for node SSH servers).
func (h *Hub) UserCAs() []ssh.PublicKey {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.userCAs
}

// HostCAs returns the host SSH CA keys (for clients).
func (h *Hub) HostCAs() []ssh.PublicKey {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.hostCAs
}

// TLSPool returns the trusted TLS CA pool.
func (h *Hub) TLSPool() *x509.CertPool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.tlsPool
}

// heartbeatEvery is how often an idle watch stream sends a heartbeat.
const heartbeatEvery = 10 * time.Second

// ServeWatch streams the hub to an HTTP client until it disconnects or ctx ends.
func (h *Hub) ServeWatch(w http.ResponseWriter, r *http.Request) {
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("since=%q: want a log index", v))
			return
		}
		since = n
	}
	ch, cancel := h.SubscribeFrom(since)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	tick := time.NewTicker(heartbeatEvery)
	defer tick.Stop()
	send := func(m WatchMessage) bool {
		if err := enc.Encode(m); err != nil {
			return false
		}
		if err := bw.Flush(); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case m, ok := <-ch:
			if !ok {
				return // dropped as too slow; the client reconnects
			}
			if !send(m) {
				return
			}
		case <-tick.C:
			if !send(WatchMessage{Type: "heartbeat"}) {
				return
			}
		}
	}
}

// Index is the index of the last change the hub holds.
func (h *Hub) Index() uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.index
}

// Follow keeps hub in sync with the watch stream at open's other end,
// reconnecting with jittered backoff until ctx ends. open returns the
// response body of a GET /v1/watch?since=N: after the first snapshot, each
// reconnect asks to resume from the hub's index, so a failover to another
// server costs the changes missed, not a reload. onState, if non-nil, is
// told when the stream connects (err nil) and when it breaks.
func Follow(ctx context.Context, hub *Hub, open func(ctx context.Context, since uint64) (*http.Response, error), onState func(err error)) {
	if onState == nil {
		onState = func(error) {}
	}
	bo := newBackoff(200*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		err := followOnce(ctx, hub, open, onState, bo)
		if ctx.Err() != nil {
			return
		}
		onState(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.next()):
		}
	}
}

func followOnce(ctx context.Context, hub *Hub, open func(ctx context.Context, since uint64) (*http.Response, error), onState func(error), bo *backoff) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var since uint64
	select {
	case <-hub.Ready():
		since = hub.Index()
	default:
	}
	resp, err := open(ctx, since)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// A watchdog ends the stream if nothing (not even a heartbeat) arrives.
	alive := make(chan struct{}, 1)
	go func() {
		t := time.NewTimer(3 * heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-alive:
				t.Reset(3 * heartbeatEvery)
			case <-t.C:
				cancel()
				return
			}
		}
	}()
	dec := json.NewDecoder(resp.Body)
	first := true
	for {
		var m WatchMessage
		if err := dec.Decode(&m); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("watch stream: nothing received for %s", 3*heartbeatEvery)
			}
			return fmt.Errorf("watch stream: %w", err)
		}
		select {
		case alive <- struct{}{}:
		default:
		}
		if err := hub.Apply(m); err != nil {
			return err
		}
		if first && (m.Type == "snapshot" || m.Type == "resume") {
			first = false
			bo.reset()
			onState(nil)
		}
	}
}
