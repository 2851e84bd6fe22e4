package resume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// waitFor polls cond until it holds or timeout passes; it is how tests
// wait for things to happen, instead of sleeping and hoping.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkLeaks fails the test if goroutines started during it are still
// running at its end (after its other cleanups). Call it first.
func checkLeaks(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines leaked (baseline %d):\n%s", runtime.NumGoroutine()-base, base, buf)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
}

// testLogger logs to the test's output, at debug level when -v.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// testNode is a node: a TCP listener wrapped by a Listener, whose accepted
// conns arrive on a channel.
type testNode struct {
	l     *Listener
	reg   *prometheus.Registry
	conns chan net.Conn
	done  chan struct{}
}

func newTestNode(t *testing.T, cfg ServerConfig) *testNode {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if cfg.Metrics == nil {
		cfg.Metrics = reg
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t).With("side", "node")
	}
	l, err := NewListener(inner, cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{l: l, reg: reg, conns: make(chan net.Conn, 16), done: make(chan struct{})}
	go func() {
		defer close(n.done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.conns <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-n.done
		close(n.conns)
		for c := range n.conns {
			c.Close()
		}
	})
	return n
}

// metric reads a counter or gauge (or a histogram's count) from the node's
// registry; labels are name, value pairs.
func (n *testNode) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return servertest.Metric(t, n.reg, name, labels...)
}

func (n *testNode) addr() string { return n.l.Addr().String() }

func (n *testNode) accept(t testing.TB) net.Conn {
	t.Helper()
	select {
	case c := <-n.conns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the node to accept a connection")
		return nil
	}
}

func (n *testNode) acceptSession(t testing.TB) *ServerConn {
	t.Helper()
	c := n.accept(t)
	sc, ok := c.(*ServerConn)
	if !ok {
		t.Fatalf("Accept returned %T, want *ServerConn", c)
	}
	return sc
}

// userMap tells the node which user is behind a transport: relays record
// the local address of each connection they open to the node.
type userMap struct{ m sync.Map }

func (u *userMap) set(addr, user string) { u.m.Store(addr, user) }

func (u *userMap) user(c net.Conn) string {
	v, _ := u.m.Load(c.RemoteAddr().String())
	s, _ := v.(string)
	return s
}

// relay is a test proxy: it forwards bytes between clients and the node,
// and the test can cut its connections (reset), close them cleanly (as a
// draining proxy would), or freeze them (a black hole).
type relay struct {
	t      testing.TB
	ln     net.Listener
	target string
	user   string
	users  *userMap
	// Bytes black-holed connections dropped on the way to the node and to
	// the client.
	droppedToNode, droppedToClient atomic.Int64
	wg                             sync.WaitGroup

	mu    sync.Mutex // guards pairs
	pairs map[*relayPair]struct{}
}

type relayPair struct {
	a, b      *net.TCPConn
	draining  atomic.Bool
	blackhole atomic.Bool
}

func newRelay(t testing.TB, target string, users *userMap, user string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, target: target, user: user, users: users, pairs: map[*relayPair]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		if r.users != nil {
			r.users.set(up.LocalAddr().String(), r.user)
		}
		p := &relayPair{a: c.(*net.TCPConn), b: up.(*net.TCPConn)}
		r.mu.Lock()
		r.pairs[p] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pump(p, p.a, p.b)
		go r.pump(p, p.b, p.a)
	}
}

func (r *relay) pump(p *relayPair, src, dst *net.TCPConn) {
	defer r.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		switch {
		case n == 0 || p.draining.Load():
		case p.blackhole.Load():
			if dst == p.b {
				r.droppedToNode.Add(int64(n))
			} else {
				r.droppedToClient.Add(int64(n))
			}
		default:
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if p.blackhole.Load() || p.draining.Load() {
				// A black hole passes nothing on, not even a close;
				// a draining relay waits for each end to close.
				src.Close()
				return
			}
			// Like a proxy: when one side ends, close both.
			p.a.Close()
			p.b.Close()
			r.mu.Lock()
			delete(r.pairs, p)
			r.mu.Unlock()
			return
		}
	}
}

func (r *relay) each(f func(p *relayPair)) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := range r.pairs {
		f(p)
	}
	return len(r.pairs)
}

// freeze turns every connection into a black hole: from now on it passes
// nothing on, in either direction, until it is cut. (Passing bytes again
// later would leave a gap in the stream, which no real transport does.)
func (r *relay) freeze() {
	r.each(func(p *relayPair) { p.blackhole.Store(true) })
}

// cut resets every connection, as a crashed proxy's host would.
func (r *relay) cut() int {
	n := r.each(func(p *relayPair) {
		p.a.SetLinger(0)
		p.b.SetLinger(0)
		p.a.Close()
		p.b.Close()
	})
	r.mu.Lock()
	clear(r.pairs)
	r.mu.Unlock()
	return n
}

// closeClean closes every connection cleanly, as a draining proxy does: it
// sends FIN both ways, then discards what still arrives until each end
// closes (closing at once, with unread bytes, would reset the connection).
func (r *relay) closeClean() int {
	n := r.each(func(p *relayPair) {
		p.draining.Store(true)
		p.a.CloseWrite()
		p.b.CloseWrite()
	})
	r.mu.Lock()
	clear(r.pairs)
	r.mu.Unlock()
	return n
}

func (r *relay) close() {
	r.ln.Close()
	r.cut()
	r.wg.Wait()
}

// dialTo returns a ClientConfig.Dial that dials addr(a).
func dialTo(addr func(a Attempt) string) func(ctx context.Context, a Attempt) (net.Conn, error) {
	return func(ctx context.Context, a Attempt) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr(a))
	}
}

func always(addr string) func(Attempt) string { return func(Attempt) string { return addr } }

// pattern is a reproducible byte stream: writers send it, readers check it.
type pattern struct{ c *rand.ChaCha8 }

func newPattern(seed byte) *pattern {
	var s [32]byte
	s[0] = seed
	return &pattern{c: rand.NewChaCha8(s)}
}

func (p *pattern) fill(b []byte) { p.c.Read(b) }

// sendPattern writes n bytes of the pattern in writes of random sizes.
func sendPattern(w io.Writer, seed byte, n int, progress *atomic.Int64) error {
	p := newPattern(seed)
	sizes := rand.New(rand.NewPCG(uint64(seed), 1))
	buf := make([]byte, 100<<10)
	for sent := 0; sent < n; {
		m := min(n-sent, 1+sizes.IntN(len(buf)))
		if sizes.IntN(4) == 0 {
			m = min(m, 1+sizes.IntN(300)) // small writes, as interactive SSH makes
		}
		p.fill(buf[:m])
		if _, err := w.Write(buf[:m]); err != nil {
			return fmt.Errorf("write at offset %d: %w", sent, err)
		}
		sent += m
		if progress != nil {
			progress.Add(int64(m))
		}
	}
	return nil
}

// checkPattern reads n bytes and checks them against the pattern, then
// expects io.EOF if wantEOF.
func checkPattern(r io.Reader, seed byte, n int, wantEOF bool, progress *atomic.Int64) error {
	p := newPattern(seed)
	buf := make([]byte, 64<<10)
	want := make([]byte, 64<<10)
	for got := 0; got < n; {
		m, err := r.Read(buf[:min(len(buf), n-got)])
		if m > 0 {
			p.fill(want[:m])
			if !bytes.Equal(buf[:m], want[:m]) {
				i := 0
				for buf[i] == want[i] {
					i++
				}
				return fmt.Errorf("byte %d differs from what was sent (lost, duplicated or reordered data)", got+i)
			}
			got += m
			if progress != nil {
				progress.Add(int64(m))
			}
		}
		if err != nil {
			return fmt.Errorf("read at offset %d of %d: %w", got, n, err)
		}
	}
	if wantEOF {
		m, err := r.Read(buf[:1])
		if m != 0 || !errors.Is(err, io.EOF) {
			return fmt.Errorf("after all data: read %d bytes, %v; want io.EOF", m, err)
		}
	}
	return nil
}

// dialSession dials a session through the relay and accepts it on the node.
func dialSession(t *testing.T, node *testNode, cfg ClientConfig) (*Conn, *ServerConn) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t).With("side", "client")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	sc := node.acceptSession(t)
	t.Cleanup(func() { sc.Close() })
	return c, sc
}

// roundTrip checks that the session still carries bytes both ways.
func roundTrip(t *testing.T, c *Conn, sc *ServerConn, msg string) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(sc, buf); err != nil {
			errc <- err
			return
		}
		_, err := sc.Write(buf)
		errc <- err
	}()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("client write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo: got %q, want %q", buf, msg)
	}
	if err := <-errc; err != nil {
		t.Fatalf("node echo: %v", err)
	}
}

// bothWays sends size bytes of pattern seedUp from c to sc and of seedDown
// from sc to c, each followed by a half close, and checks them on arrival,
// counting checked bytes in up and down. The four goroutines report on
// the returned channel.
func bothWays(c, sc interface {
	io.ReadWriter
	CloseWrite() error
}, seedUp, seedDown byte, size int, up, down *atomic.Int64) chan error {
	errs := make(chan error, 4)
	send := func(w interface {
		io.Writer
		CloseWrite() error
	}, seed byte) {
		err := sendPattern(w, seed, size, nil)
		if err == nil {
			err = w.CloseWrite()
		}
		errs <- err
	}
	go send(c, seedUp)
	go func() { errs <- checkPattern(sc, seedUp, size, true, up) }()
	go send(sc, seedDown)
	go func() { errs <- checkPattern(c, seedDown, size, true, down) }()
	return errs
}
