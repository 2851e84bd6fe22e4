package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
	"jumpgate.dev/jumpgate/mesh/ingress"
	"jumpgate.dev/jumpgate/tunnel/resume"
)

// fakeCluster is a CA, a user identity it signed, and fake proxies that
// speak the dial protocol and discovery as mesh/ingress does, over TLS
// with certificates the user's jg trusts.
type fakeCluster struct {
	t  *testing.T
	ca *authtest.CA
	id *creds.Identity

	mu        sync.Mutex // guards the following
	discovery authapi.Discovery
	asked     int // discovery requests
}

func newFakeCluster(t *testing.T) *fakeCluster {
	t.Setenv("JUMPGATE_HOME", t.TempDir()) // no home.json: jg knows only the proxy it logged in through
	t.Setenv("JUMPGATE_BIND", "")
	ca := authtest.NewCA(t, "test CA")
	user := ca.Issue(t, identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "test", Roles: []string{"dev"}, Logins: []string{"alice"}})
	id := &creds.Identity{Meta: creds.Meta{Cluster: "test", Name: "alice", Kind: "user"}, TLS: *user, Leaf: user.Leaf, Pool: ca.Pool()}
	return &fakeCluster{t: t, ca: ca, id: id}
}

// setDiscovery makes every proxy answer discovery with these proxies, in
// this order, each "id=state/health".
func (fc *fakeCluster) setDiscovery(proxies ...*fakeProxy) func(states ...string) {
	return func(states ...string) {
		d := authapi.Discovery{Proxy: proxies[0].name}
		for i, p := range proxies {
			state, health, _ := strings.Cut(states[i], "/")
			d.Proxies = append(d.Proxies, authapi.DiscoveredProxy{ID: p.name, PublicAddr: p.addr, State: state, Health: health, DistanceKm: -1})
		}
		fc.mu.Lock()
		fc.discovery = d
		fc.mu.Unlock()
	}
}

func (fc *fakeCluster) discoveries() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.asked
}

// fakeProxy answers each dial request with its current answer; when that
// is OK, it sends "proxy NAME\n" and waits for the client to close.
type fakeProxy struct {
	name, addr string

	mu     sync.Mutex // guards the following
	answer ingress.DialResponse
	dials  int
}

func (fc *fakeCluster) proxy(name string) *fakeProxy {
	p := &fakeProxy{name: name, answer: ingress.DialResponse{V: 2, OK: true, Path: "local"}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/discover" {
			http.NotFound(w, r)
			return
		}
		fc.mu.Lock()
		fc.asked++
		d := fc.discovery
		fc.mu.Unlock()
		authapi.WriteJSON(w, http.StatusOK, d)
	}))
	cert := fc.ca.Issue(fc.t, identity.Identity{Kind: identity.KindProxy, Name: name, Cluster: "test"})
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: fc.ca.Pool(), NextProtos: []string{ingress.ALPNDial, ingress.ALPNHTTP}}
	srv.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		ingress.ALPNDial: func(_ *http.Server, c *tls.Conn, _ http.Handler) { p.serveDial(c) },
	}
	srv.StartTLS()
	fc.t.Cleanup(srv.Close)
	p.addr = srv.Listener.Addr().String()
	return p
}

func (p *fakeProxy) serveDial(c *tls.Conn) {
	br := bufio.NewReader(c)
	req, bad := ingress.ParseDialRequest(br)
	p.mu.Lock()
	p.dials++
	resp := p.answer
	p.mu.Unlock()
	switch {
	case bad != nil:
		resp = *bad
	case len(c.ConnectionState().PeerCertificates) == 0:
		resp = ingress.DialResponse{V: req.V, Code: ingress.CodeDenied, Error: "no user certificate"}
	}
	resp.V, resp.Node = req.V, req.Node
	if ingress.WriteLine(c, resp) != nil || !resp.OK {
		return
	}
	io.WriteString(c, "proxy "+p.name+"\n")
	io.Copy(io.Discard, br)
}

func (p *fakeProxy) set(resp ingress.DialResponse) {
	p.mu.Lock()
	p.answer = resp
	p.mu.Unlock()
}

func (p *fakeProxy) refuse(code string) {
	p.set(ingress.DialResponse{Code: code, Error: "refused: " + code})
}
func (p *fakeProxy) accept() { p.set(ingress.DialResponse{OK: true, Path: "local"}) }
func (p *fakeProxy) drain(to *fakeProxy) {
	p.set(ingress.DialResponse{Code: ingress.CodeDraining, Error: "draining", Redirect: to.addr, RedirectID: to.name})
}

func (p *fakeProxy) dialCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dials
}

// newTestPaths returns paths to node1 for a user who logged in through home.
func (fc *fakeCluster) paths(home *fakeProxy) *paths {
	fc.id.Meta.Proxy = home.addr
	return newPaths(fc.id, "node1", "alice")
}

// dialedThroughA is two active proxies, a (jg's home) and b, and the
// paths of a session whose first dial went through a.
func dialedThroughA(t *testing.T) (fc *fakeCluster, a, b *fakeProxy, p *paths) {
	t.Helper()
	fc = newFakeCluster(t)
	a, b = fc.proxy("a"), fc.proxy("b")
	fc.setDiscovery(a, b)("active/alive", "active/alive")
	p = fc.paths(a)
	mustDial(t, p, resume.Attempt{}, a)
	return fc, a, b, p
}

// mustDial runs attempt a and checks that it reached the proxy want.
func mustDial(t *testing.T, p *paths, a resume.Attempt, want *fakeProxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.dial(ctx, a)
	if err != nil {
		t.Fatalf("attempt %+v: %v; want a path through %s", a, err, want.name)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "proxy "+want.name+"\n" {
		t.Fatalf("attempt %+v: read %q, %v; want the greeting of %s", a, line, err, want.name)
	}
	if p.current != want.addr {
		t.Errorf("attempt %+v: current proxy %s, want %s (%s)", a, p.current, want.addr, want.name)
	}
}

var errReset = errors.New("read: connection reset by peer")

// TestPathsDrainRedirect: a draining home proxy's refusal names another
// proxy, which jg dials at once; afterwards the drained proxy is avoided.
func TestPathsDrainRedirect(t *testing.T) {
	fc := newFakeCluster(t)
	a, b, c := fc.proxy("a"), fc.proxy("b"), fc.proxy("c")
	fc.setDiscovery(b, a, c)("active/alive", "draining/alive", "draining/alive")
	a.drain(b)
	p := fc.paths(a)
	mustDial(t, p, resume.Attempt{}, b)
	if !p.avoided(a.addr) || !p.drained[a.addr] {
		t.Errorf("after a's drain refusal: avoided %v, drained %v; want both", p.avoided(a.addr), p.drained[a.addr])
	}
	if n := fc.discoveries(); n != 0 {
		t.Errorf("jg asked discovery %d times; the redirect should have been enough", n)
	}
	// b moves the session on (a clean end): a, still draining, is not
	// asked again; c, which discovery says drains too, is avoided in the
	// same way.
	mustDial(t, p, resume.Attempt{N: 1, Err: io.EOF, Moved: true}, b)
	if n := a.dialCount(); n != 1 {
		t.Errorf("the draining proxy got %d dials, want only the first", n)
	}
	if !p.avoided(c.addr) || !p.drained[c.addr] || c.dialCount() != 0 {
		t.Errorf("c, draining in discovery: avoided %v, drained %v, %d dials; want avoided and drained, no dial", p.avoided(c.addr), p.drained[c.addr], c.dialCount())
	}
}

// TestPathsAvoidFailed: after a reset, the proxy that carried the session
// is tried last; after a clean end (Moved) it is still the first choice.
func TestPathsAvoidFailed(t *testing.T) {
	for _, moved := range []bool{false, true} {
		_, a, b, p := dialedThroughA(t)
		want := b
		if moved {
			want = a
		}
		mustDial(t, p, resume.Attempt{N: 1, Err: errReset, Moved: moved}, want)
		if got := p.avoided(a.addr); got == moved {
			t.Errorf("moved %v: a avoided %v", moved, got)
		}
	}
}

// TestPathsFinalDial: a refusal no other proxy would lift (denied,
// unknown node) ends the resumption at once, with resume.ErrRefused.
func TestPathsFinalDial(t *testing.T) {
	for _, code := range []string{ingress.CodeDenied, ingress.CodeUnknown} {
		for _, moved := range []bool{false, true} {
			_, a, b, p := dialedThroughA(t)
			a.refuse(code)
			b.refuse(code)
			_, err := p.dial(context.Background(), resume.Attempt{N: 1, Err: errReset, Moved: moved})
			if !errors.Is(err, resume.ErrRefused) || !strings.Contains(err.Error(), "refused: "+code) {
				t.Errorf("%s, moved %v: %v; want resume.ErrRefused with the proxy's reason", code, moved, err)
			}
			if n := a.dialCount() + b.dialCount(); n != 2 {
				t.Errorf("%s, moved %v: %d dials in all, want 2 (the session's, then one refusal)", code, moved, n)
			}
		}
	}
}

// TestPathsOffline: while proxies answer that they cannot reach the node,
// jg keeps trying for offlineFor, then gives up with resume.ErrRefused;
// while no proxy answers at all, it keeps trying for the whole window.
func TestPathsOffline(t *testing.T) {
	fc, a, b, p := dialedThroughA(t)
	a.refuse(ingress.CodeOffline)
	b.refuse(ingress.CodeOffline)
	ctx := context.Background()
	_, err := p.dial(ctx, resume.Attempt{N: 1, Err: errReset})
	if err == nil || errors.Is(err, resume.ErrRefused) || p.offline.IsZero() {
		t.Fatalf("first offline answers: %v, offline since %v; want a retryable error and the time noted", err, p.offline)
	}
	p.offline = time.Now().Add(-offlineFor + time.Minute) // not yet long enough
	if _, err := p.dial(ctx, resume.Attempt{N: 2, Err: err}); errors.Is(err, resume.ErrRefused) {
		t.Fatalf("offline for less than %v: %v; want a retryable error", offlineFor, err)
	}
	p.offline = time.Now().Add(-offlineFor)
	_, err = p.dial(ctx, resume.Attempt{N: 3, Err: err})
	if !errors.Is(err, resume.ErrRefused) || !strings.Contains(err.Error(), "no proxy has reached node node1 for 30s") {
		t.Fatalf("offline for %v: %v; want resume.ErrRefused saying no proxy reached the node", offlineFor, err)
	}

	// A proxy that reaches the node again resets the clock.
	b.accept()
	mustDial(t, p, resume.Attempt{N: 1, Err: errReset}, b)
	if !p.offline.IsZero() {
		t.Errorf("after a successful dial, offline since %v; want zero", p.offline)
	}
	// No proxy answering (the client's network is down) does not count.
	down := *fc.id
	down.Meta.Proxy = "127.0.0.1:1"
	q := newPaths(&down, "node1", "alice")
	if _, err := q.dial(ctx, resume.Attempt{N: 1, Err: errReset}); err == nil || errors.Is(err, resume.ErrRefused) || !q.offline.IsZero() {
		t.Errorf("no proxy answering: %v, offline since %v; want a retryable error, no offline time", err, q.offline)
	}
}

// TestPathsDrainedProxyBack: a proxy avoided because it drained is the
// first choice again as soon as discovery shows it active and alive (back
// from an upgrade), not while it still drains or is unhealthy; one avoided
// because it failed stays avoided.
func TestPathsDrainedProxyBack(t *testing.T) {
	for _, tc := range []struct {
		name, state string
		failed      bool // a reset the session instead of draining
		back        bool
	}{
		{name: "back", state: "active/alive", back: true},
		{name: "still draining", state: "draining/alive"},
		{name: "suspect", state: "active/suspect"},
		{name: "failed", state: "active/alive", failed: true},
	} {
		fc := newFakeCluster(t)
		a, b := fc.proxy("a"), fc.proxy("b")
		discover := fc.setDiscovery(a, b)
		p := fc.paths(a)
		if tc.failed {
			discover("active/alive", "active/alive")
			mustDial(t, p, resume.Attempt{}, a)
			mustDial(t, p, resume.Attempt{N: 1, Err: errReset}, b)
		} else {
			discover("draining/alive", "active/alive")
			a.drain(b)
			mustDial(t, p, resume.Attempt{}, b)
			a.accept() // restarted
		}
		discover(tc.state, "active/alive")
		want := b
		if tc.back {
			want = a
		}
		// b moves the session on: the drained proxy is tried first
		// again only once it is back.
		mustDial(t, p, resume.Attempt{N: 1, Err: io.EOF, Moved: true}, want)
		if got := p.avoided(a.addr); got == tc.back {
			t.Errorf("%s: a avoided %v, want %v", tc.name, got, !tc.back)
		}
		if got, want := p.drained[a.addr], !tc.back && !tc.failed; got != want {
			t.Errorf("%s: a marked drained %v, want %v", tc.name, got, want)
		}
	}
}
