package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/authtest"
)

func TestDialRoundTrip(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")

	c := a.dial(t, b, "web-1")
	defer c.Close()
	if got := c.LocalAddr().String(); got != a.addr {
		t.Errorf("LocalAddr = %s, want a's peer address %s", got, a.addr)
	}
	if got := c.RemoteAddr().String(); got != b.addr {
		t.Errorf("RemoteAddr = %s, want b's peer address %s", got, b.addr)
	}
	seen := e.seenDials()
	if len(seen) != 1 {
		t.Fatalf("handler saw %d dials, want 1", len(seen))
	}
	if s := seen[0]; s.holder != "b" || s.from != "a" || s.req.Node != "web-1" || s.req.User != "alice" ||
		s.req.ClientAddr != "203.0.113.7:51234" || s.req.Version != Version || !slices.Equal(s.req.Hops, []string{"a"}) {
		t.Fatalf("holder saw %+v", s)
	}
	// A few MiB both ways, checksummed, then half-close each way.
	const n = 4 << 20
	echoRoundTrip(t, c, n)
	c.Close()
	authtest.WaitFor(t, waitFor, "streams to be released", func() bool { return a.m.streamCount() == 0 && b.m.streamCount() == 0 })

	if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", "ok"); got != 1 {
		t.Errorf("a dials ok = %v", got)
	}
	if got := a.metric(t, "jumpgate_peer_dial_duration_seconds"); got != 1 {
		t.Errorf("a dial duration samples = %v", got)
	}
	if got := b.metric(t, "jumpgate_peer_accepted_streams_total", "outcome", "ok"); got != 1 {
		t.Errorf("b accepted ok = %v", got)
	}
	for _, p := range []*proxy{a, b} {
		for _, dir := range []string{"in", "out"} {
			if got := p.metric(t, "jumpgate_peer_bytes_total", "direction", dir); got != n {
				t.Errorf("%s bytes %s = %v, want %d", p.id, dir, got, n)
			}
		}
	}

	// The other way uses the same connection.
	c2 := b.dial(t, a, "web-2")
	echoRoundTrip(t, c2, 1000)
	c2.Close()
	for _, p := range []*proxy{a, b} {
		peers := p.m.Peers()
		if len(peers) != 1 || p.m.connCount() != 1 {
			t.Fatalf("%s has peers %+v and %d connections, want one", p.id, peers, p.m.connCount())
		}
		if got := p.metricSum(t, "jumpgate_peer_connections_total"); got != 1 {
			t.Errorf("%s made or accepted %v connections, want 1", p.id, got)
		}
	}
	if pa, pb := a.m.Peers()[0], b.m.Peers()[0]; pa.ID != "b" || pa.Inbound || pb.ID != "a" || !pb.Inbound || pa.Addr != b.addr || pb.Addr != a.addr {
		t.Fatalf("a sees %+v, b sees %+v", pa, pb)
	}
	if got := a.metric(t, "jumpgate_peer_connected_peers"); got != 1 {
		t.Errorf("a connected peers = %v", got)
	}
}

// TestHalfClose: each direction ends on its own, and the other keeps
// flowing.
func TestHalfClose(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		io.WriteString(c, "hello from the node")
		c.(*net.TCPConn).CloseWrite() // the node is done talking...
		b, _ := io.ReadAll(c)         // ...but still listens
		got <- string(b)
	}()
	b := e.start("b", func(c *Config) {
		c.Handler = HandlerFunc(func(ctx context.Context, from string, req DialRequest) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		})
	})
	a := e.start("a")
	c := a.dial(t, b, "greeter")
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitFor))
	greeting, err := io.ReadAll(c)
	if err != nil || string(greeting) != "hello from the node" {
		t.Fatalf("read greeting = %q, %v; want it, then EOF", greeting, err)
	}
	if _, err := io.WriteString(c, "bye from the user"); err != nil {
		t.Fatalf("write after the node's half-close: %v", err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case s := <-got:
		if s != "bye from the user" {
			t.Fatalf("node read %q", s)
		}
	case <-time.After(waitFor):
		t.Fatal("the node never saw the user's half-close")
	}
}

// TestSimultaneousDials: both proxies dial each other at once, several
// times over; every dial succeeds, and exactly one connection remains,
// the one dialed by the lower id, on both sides.
func TestSimultaneousDials(t *testing.T) {
	for round := range 4 {
		e := newEnv(t)
		a, b := e.start("a"), e.start("b")
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := range 8 {
			from, to := a, b
			if i%2 == 1 {
				from, to = b, a
			}
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), waitFor)
				defer cancel()
				c, err := from.m.Dial(ctx, to.id, to.addr, DialRequest{Node: "web-1"})
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitFor))
				if _, err := io.WriteString(c, "ping"); err != nil {
					errs <- err
					return
				}
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err != nil {
					errs <- err
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", round, err)
		}
		authtest.WaitFor(t, waitFor, "one connection per side", func() bool {
			return a.m.connCount() == 1 && b.m.connCount() == 1 && len(a.m.Peers()) == 1 && len(b.m.Peers()) == 1
		})
		if pa, pb := a.m.Peers()[0], b.m.Peers()[0]; pa.Inbound || !pb.Inbound {
			t.Fatalf("round %d: kept a's view %+v, b's view %+v; want the connection a dialed", round, pa, pb)
		}
		// It still works both ways.
		for _, pair := range [][2]*proxy{{a, b}, {b, a}} {
			c := pair[0].dial(t, pair[1], "web-1")
			echoOnce(t, c, "still there")
			c.Close()
		}
		a.stop(t)
		b.stop(t)
	}
}

// TestConcurrentDialsShareOneConnection: many dials at once to a peer with no
// connection yet make one connection attempt.
func TestConcurrentDialsShareOneConnection(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 20 {
		wg.Go(func() {
			<-start
			c := a.dial(t, b, "web-1")
			echoOnce(t, c, "x")
			c.Close()
		})
	}
	close(start)
	wg.Wait()
	if got := a.metric(t, "jumpgate_peer_connections_total", "direction", "outbound"); got != 1 {
		t.Errorf("a dialed %v connections, want 1", got)
	}
	if got := b.metric(t, "jumpgate_peer_connections_total", "direction", "inbound"); got != 1 {
		t.Errorf("b accepted %v connections, want 1", got)
	}
	if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", "ok"); got != 20 {
		t.Errorf("a dials ok = %v, want 20", got)
	}
}

func TestHolderErrors(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	for _, tc := range []struct {
		node, code, msg, outcome string
		retryable                bool
	}{
		{"offline", CodeOffline, "node offline has no tunnel to proxy b", CodeOffline, true},
		{"denied", CodeDenied, "user alice may not reach node denied", CodeDenied, false},
		{"broken", CodeUnavailable, "proxy b could not connect to node broken: tunnel broke: agent went away", CodeUnavailable, true},
		{"strange", CodeUnavailable, "a code this version does not know", CodeUnavailable, true},
	} {
		pe, text := dialErr(t, a, "b", b.addr, DialRequest{Node: tc.node, User: "alice"})
		if pe.Code != tc.code || !strings.Contains(pe.Message, tc.msg) || pe.Retryable() != tc.retryable {
			t.Errorf("node %s: *Error = %+v (retryable %v), want code %s, message with %q", tc.node, pe, pe.Retryable(), tc.code, tc.msg)
		}
		if want := "dial node " + tc.node + " via peer b (" + b.addr + "): "; !strings.HasPrefix(text, want) {
			t.Errorf("error %q does not start with %q", text, want)
		}
		if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", tc.outcome); got < 1 {
			t.Errorf("node %s: a dials{%s} = %v", tc.node, tc.outcome, got)
		}
	}
	b.waitMetric(t, 1, "jumpgate_peer_accepted_streams_total", "outcome", CodeOffline)
	b.waitMetric(t, 2, "jumpgate_peer_accepted_streams_total", "outcome", CodeUnavailable) // broken, strange
	// No stream or connection leaks from refused dials.
	authtest.WaitFor(t, waitFor, "refused streams to be released", func() bool { return a.m.streamCount() == 0 && b.m.streamCount() == 0 })
	if a.m.connCount() != 1 {
		t.Errorf("a has %d connections after refused dials, want 1", a.m.connCount())
	}
}

// TestHandlerContext: the Handler's dial is canceled when the dialer gives up.
func TestHandlerContext(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := a.m.Dial(ctx, "b", b.addr, DialRequest{Node: "slow"})
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != CodeUnavailable || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial with a short deadline = %v, want CodeUnavailable wrapping DeadlineExceeded", err)
	}
	if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", outcomeTimeout); got != 1 {
		t.Errorf("a dials timeout = %v", got)
	}
	// The holder's handler returns (its context ended with the stream),
	// long before its own DialTimeout (5s).
	authtest.WaitFor(t, 3*time.Second, "the holder to drop the abandoned dial", func() bool { return b.m.streamCount() == 0 })

	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := a.m.Dial(ctx2, "b", b.addr, DialRequest{Node: "web-1"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with a canceled context = %v", err)
	}
	if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", outcomeCanceled); got != 1 {
		t.Errorf("a dials canceled = %v", got)
	}
}

func TestVersions(t *testing.T) {
	e := newEnv(t)
	b := e.start("b")
	qc, err := rawDial(t, b.addr, e.proxyCert("newer"), ALPN)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"version 2", mustRequestUnchecked(DialRequest{Version: 2, Node: "web-1", Hops: []string{"newer"}})},
		{"version 3, new shape", rawFrame(typeDialRequest, `{"version":3,"node":{"id":"web-1"}}`)},
		{"unknown frame type", rawFrame(9, `{"version":2}`)},
	} {
		resp, err := rawExchange(t, qc, tc.frame)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.OK || resp.Code != CodeVersion || resp.Version != Version || !strings.Contains(resp.Message, "speaks peer protocol 1 through 1") {
			t.Fatalf("%s: answer %+v, want code version with version %d", tc.name, resp, Version)
		}
		if pe := remoteError(resp); pe.Code != CodeVersion || pe.PeerVersion != Version || !pe.Retryable() {
			t.Fatalf("%s: the dialer would see %+v", tc.name, pe)
		}
	}
	// The old version still works on the same connection.
	resp, err := rawExchange(t, qc, mustRequest(t, DialRequest{Version: 1, Node: "web-1", Hops: []string{"newer"}}))
	if err != nil || !resp.OK || resp.Version != 1 {
		t.Fatalf("version 1 after the refusals = %+v, %v", resp, err)
	}
	b.waitMetric(t, 3, "jumpgate_peer_accepted_streams_total", "outcome", CodeVersion)

	// Dial never sends a version it does not speak.
	a := e.start("a")
	pe, _ := dialErr(t, a, "b", b.addr, DialRequest{Version: 2, Node: "web-1"})
	if pe.Code != CodeBadRequest {
		t.Fatalf("dial with version 2 = %+v, want bad_request", pe)
	}
}

// mustRequestUnchecked encodes a request without validating it.
func mustRequestUnchecked(req DialRequest) []byte {
	b, _ := encodeRequest(req)
	return b
}

func TestLoops(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	pe, _ := dialErr(t, a, "b", b.addr, DialRequest{Node: "web-1", Hops: []string{"b"}})
	if pe.Code != CodeLoop || pe.Retryable() {
		t.Fatalf("dial through b with b in Hops = %+v, want loop", pe)
	}
	pe, _ = dialErr(t, a, "a", a.addr, DialRequest{Node: "web-1"})
	if pe.Code != CodeLoop {
		t.Fatalf("a dialing itself = %+v, want loop", pe)
	}
	if got := b.metricSum(t, "jumpgate_peer_accepted_streams_total"); got != 0 {
		t.Fatalf("local loop checks reached the peer: %v streams", got)
	}
	if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", CodeLoop); got != 2 {
		t.Errorf("a dials loop = %v", got)
	}

	// A peer that does not check: the holder refuses.
	qc, err := rawDial(t, b.addr, e.proxyCert("c"), ALPN)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rawExchange(t, qc, mustRequest(t, DialRequest{Version: 1, Node: "web-1", Hops: []string{"a", "b", "c"}}))
	if err != nil || resp.Code != CodeLoop || !strings.Contains(resp.Message, "already passed through proxy b") {
		t.Fatalf("request with b in Hops answered %+v, %v", resp, err)
	}
	if b.log.Count("refused peer dial", "code=loop") != 1 {
		t.Errorf("b did not log the loop")
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	b := e.start("b")
	qc, err := rawDial(t, b.addr, e.proxyCert("c"), ALPN)
	if err != nil {
		t.Fatal(err)
	}
	huge := []byte{byte(typeDialRequest), 0, 1, 0, 0} // 64 KiB announced
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"no node", rawFrame(typeDialRequest, `{"version":1}`)},
		{"bad node", rawFrame(typeDialRequest, `{"version":1,"node":"../etc"}`)},
		{"no version", rawFrame(typeDialRequest, `{"node":"web-1"}`)},
		{"not JSON", rawFrame(typeDialRequest, `hello`)},
		{"response type", rawFrame(typeDialResponse, `{"version":1,"ok":true}`)},
		{"too large", huge},
		{"too many hops", mustRequestUnchecked(DialRequest{Version: 1, Node: "n", Hops: strings.Split("a b c d e f g h i", " ")})},
	} {
		resp, err := rawExchange(t, qc, tc.frame)
		if err != nil || resp.Code != CodeBadRequest {
			t.Errorf("%s: answer %+v, %v; want bad_request", tc.name, resp, err)
		}
	}
	if len(e.seenDials()) != 0 {
		t.Errorf("bad requests reached the handler: %+v", e.seenDials())
	}
}

// TestSlowLoris: a stream that never completes its request is reset after
// RequestTimeout, while other streams carry on.
func TestSlowLoris(t *testing.T) {
	e := newEnv(t)
	b := e.start("b", func(c *Config) { c.RequestTimeout = 300 * time.Millisecond })
	a := e.start("a")
	live := a.dial(t, b, "web-1")
	defer live.Close()

	qc, err := rawDial(t, b.addr, e.proxyCert("c"), ALPN)
	if err != nil {
		t.Fatal(err)
	}
	st, err := qc.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{byte(typeDialRequest), 0}) // half a header, then nothing
	st.SetReadDeadline(time.Now().Add(waitFor))
	start := time.Now()
	_, err = st.Read(make([]byte, 1))
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != streamTimeout || !se.Remote {
		t.Fatalf("read on the stalled stream = %v, want a reset with code %d", err, streamTimeout)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("reset took %v", d)
	}
	b.waitMetric(t, 1, "jumpgate_peer_accepted_streams_total", "outcome", outcomeTimeout)
	if b.log.Count("level=WARN", "sent no complete dial request", "peer=c") != 1 {
		t.Errorf("no warning about the stalled stream")
	}
	echoOnce(t, live, "unaffected")
}

func TestServerCertificateChecks(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	otherCA := authtest.NewCA(t, "someone else's CA")
	for _, tc := range []struct {
		name   string
		peerID string
		target *proxy
		want   string
	}{
		{"wrong name", "c", b, "the peer's certificate is for proxy b, expected proxy c"},
		{"another cluster", "s1", e.startAt("s1", "127.0.0.1:0", e.ca.Issue(t, identityOf("proxy", "s1", "staging"))), `the peer's certificate is for cluster "staging"`},
		{"a node", "n1", e.startAt("n1", "127.0.0.1:0", e.ca.Issue(t, identityOf("node", "n1", cluster))), "of kind node: expected proxy n1"},
		{"another CA", "x1", e.startAt("x1", "127.0.0.1:0", otherCA.Issue(t, identityOf("proxy", "x1", cluster))), `the peer's certificate "x1" is not trusted`},
	} {
		pe, text := dialErr(t, a, tc.peerID, tc.target.addr, DialRequest{Node: "web-1"})
		if pe.Code != CodeUnavailable || !strings.Contains(text, tc.want) {
			t.Errorf("%s: %v, want a message with %q", tc.name, text, tc.want)
		}
	}
	if got := a.metric(t, "jumpgate_peer_dials_total", "outcome", outcomeTLS); got != 4 {
		t.Errorf("a dials tls = %v, want 4", got)
	}
	if len(e.seenDials()) != 0 {
		t.Errorf("a refused peer got dials: %+v", e.seenDials())
	}
}

// TestDialerRefused: what a proxy with a bad certificate sees when it dials.
func TestDialerRefused(t *testing.T) {
	e := newEnv(t)
	b := e.start("b")
	otherCA := authtest.NewCA(t, "someone else's CA")

	// A certificate from another CA fails b's handshake; the dialer's own
	// handshake has completed, so it learns at its first read.
	x := e.startAt("x", "127.0.0.1:0", otherCA.Issue(t, identityOf("proxy", "x", cluster)))
	pe, text := dialErr(t, x, "b", b.addr, DialRequest{Node: "web-1"})
	if pe.Code != CodeUnavailable || !strings.Contains(text, "peer b rejected this proxy's certificate") {
		t.Errorf("untrusted dialer: %v", text)
	}
	if got := x.metric(t, "jumpgate_peer_dials_total", "outcome", outcomeTLS); got != 1 {
		t.Errorf("x dials tls = %v", got)
	}

	// A trusted certificate of another cluster: refused after the
	// handshake, with b's reason.
	y := e.startAt("y", "127.0.0.1:0", e.ca.Issue(t, identityOf("proxy", "y", "staging")))
	pe, text = dialErr(t, y, "b", b.addr, DialRequest{Node: "web-1"})
	if pe.Code != CodeUnavailable || !strings.Contains(text, `peer b refused this proxy: certificate is for cluster "staging", proxy b is in cluster "prod"`) {
		t.Errorf("dialer of another cluster: %v", text)
	}
	if got := y.metric(t, "jumpgate_peer_dials_total", "outcome", outcomeRefused); got != 1 {
		t.Errorf("y dials refused = %v", got)
	}
	if got := b.metric(t, "jumpgate_peer_handshake_failures_total", "reason", reasonUntrusted); got != 1 {
		t.Errorf("b untrusted = %v", got)
	}
	if got := b.metric(t, "jumpgate_peer_handshake_failures_total", "reason", reasonWrongCluster); got != 1 {
		t.Errorf("b wrong cluster = %v", got)
	}
}

func TestShutdownWaitsForStreams(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	inbound := a.dial(t, b, "web-1") // b holds this one
	echoOnce(t, inbound, "before")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		done <- b.m.Shutdown(ctx)
	}()
	select {
	case err := <-b.served:
		b.served <- err // for stop
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Serve did not return at Shutdown")
	}
	// New dials both ways are refused...
	pe, text := dialErr(t, a, "b", b.addr, DialRequest{Node: "web-1"})
	if pe.Code != CodeUnavailable || !strings.Contains(text, "proxy b is shutting down") {
		t.Fatalf("dial to a draining proxy: %v", text)
	}
	if _, err := b.m.Dial(context.Background(), "a", a.addr, DialRequest{Node: "web-1"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("dial from a draining proxy = %v, want ErrClosed", err)
	}
	// ...while the live one carries on, and Shutdown waits for it.
	echoOnce(t, inbound, "during")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}
	inbound.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Shutdown did not return after the last stream closed")
	}
	authtest.WaitFor(t, waitFor, "a to see b go", func() bool { return len(a.m.Peers()) == 0 })
	if b.log.Count("peer disconnected", "proxy b is shutting down") != 1 {
		t.Errorf("b did not log closing the connection")
	}
	a.stop(t)
	b.stop(t)
}

// TestShutdownWaitsForDialedStreams: the dialer's side of a stream counts
// too.
func TestShutdownWaitsForDialedStreams(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	c := a.dial(t, b, "web-1")
	done := make(chan error, 1)
	go func() { done <- a.m.Shutdown(context.Background()) }()
	<-a.served
	a.served <- ErrClosed
	echoOnce(t, c, "still flowing")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a dialed stream open", err)
	default:
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
}

func TestShutdownDeadline(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	c := a.dial(t, b, "web-1")
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.m.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 streams still open") {
		t.Fatalf("Shutdown with an open stream = %v", err)
	}
	c.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read after the holder's forced shutdown = %v, want an abort", err)
	}
}

func TestCloseAborts(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	c := a.dial(t, b, "web-1")
	defer c.Close()
	echoOnce(t, c, "before")
	start := time.Now()
	if err := b.m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	c.SetReadDeadline(time.Now().Add(waitFor))
	_, err := c.Read(make([]byte, 1))
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorCode != closeShutdown || !strings.Contains(ae.ErrorMessage, "proxy b is shutting down") {
		t.Fatalf("read after the holder closed = %v", err)
	}
	if _, err := b.m.Dial(context.Background(), "a", a.addr, DialRequest{Node: "web-1"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("dial from a closed mesh = %v", err)
	}
	a.stop(t)
	b.stop(t)
}

// TestPeerRestart: a peer that comes back, at a new port or the same one,
// is dialed again without waiting for the old connection to time out.
func TestPeerRestart(t *testing.T) {
	e := newEnv(t)
	a := e.start("a")
	b := e.start("b")
	c := a.dial(t, b, "web-1")
	echoOnce(t, c, "first life")
	c.Close()

	// Orderly stop, restart at another port.
	b.stop(t)
	b2 := e.start("b")
	c = a.dial(t, b2, "web-1")
	echoOnce(t, c, "second life")
	c.Close()

	// Crash (no CONNECTION_CLOSE reaches a), restart at another port: the
	// new address tells a that the old connection is stale.
	b2.crash(t)
	b3 := e.start("b")
	start := time.Now()
	c = a.dial(t, b3, "web-1")
	echoOnce(t, c, "third life")
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("redial after a crash took %v", d)
	}
	authtest.WaitFor(t, waitFor, "a to keep only the new connection", func() bool {
		p := a.m.Peers()
		return len(p) == 1 && p[0].Addr == b3.addr && a.m.connCount() == 1
	})

	// Crash and restart at the same port: a stateless reset (same key)
	// kills the stale connection at the first packet, and the dial retries.
	key := &[32]byte{1, 2, 3}
	withKey := func(c *Config) { c.StatelessResetKey = key }
	b4 := e.start("b", withKey)
	c = a.dial(t, b4, "web-1")
	echoOnce(t, c, "fourth life")
	c.Close()
	b4.crash(t)
	b5 := e.startAt("b", b4.addr, e.proxyCert("b"), withKey)
	start = time.Now()
	c = a.dial(t, b5, "web-1")
	echoOnce(t, c, "fifth life")
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("redial after a crash at the same port took %v", d)
	}
}

// TestPeerReconnectsInbound: when a peer restarts and dials in first, its
// new connection replaces the stale one this proxy dialed.
func TestPeerReconnectsInbound(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	c := b.dial(t, a, "web-1") // b dialed: inbound at a
	c.Close()
	b.crash(t) // a still holds the old connection
	b2 := e.start("b")
	c = b2.dial(t, a, "web-1")
	echoOnce(t, c, "back")
	c.Close()
	// The old connection lingers, superseded, until its stream (dead with
	// b's crash) times out; new dials use the new connection.
	authtest.WaitFor(t, waitFor, "a to use b's new connection", func() bool {
		p := a.m.Peers()
		return len(p) == 1 && p[0].Addr == b2.addr
	})
	// a's dials use it.
	c = a.dial(t, b2, "web-1")
	echoOnce(t, c, "from a")
	c.Close()
	if got := a.metric(t, "jumpgate_peer_connections_total", "direction", "outbound"); got != 0 {
		t.Errorf("a dialed %v connections, want 0 (it uses b's)", got)
	}
}

func TestPeersAndRTT(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	if _, ok := a.m.RTT("b"); ok {
		t.Fatal("RTT to a peer never dialed reported ok")
	}
	before := time.Now()
	c := a.dial(t, b, "web-1")
	defer c.Close()
	rtt, ok := a.m.RTT("b")
	if !ok || rtt <= 0 || rtt > time.Second {
		t.Fatalf("RTT(b) = %v, %v", rtt, ok)
	}
	p := a.m.Peers()
	if len(p) != 1 || p[0].ID != "b" || p[0].Addr != b.addr || p[0].RTT <= 0 || p[0].Streams != 1 || p[0].Inbound || p[0].ConnectedSince.Before(before) {
		t.Fatalf("Peers() = %+v", p)
	}
	if got := a.metric(t, "jumpgate_peer_open_streams"); got != 1 {
		t.Errorf("open streams = %v", got)
	}
}

// TestDialWaitsForServe: Dial before Serve waits for the socket.
func TestDialWaitsForServe(t *testing.T) {
	e := newEnv(t)
	b := e.start("b")
	cert := e.proxyCert("a")
	m, err := New(Config{
		ID: "a", ClusterName: cluster, RootCAs: e.ca.Pool,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		Handler: HandlerFunc(func(context.Context, string, DialRequest) (net.Conn, error) {
			return nil, errors.New("unused")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dialed := make(chan error, 1)
	go func() {
		c, err := m.Dial(context.Background(), "b", b.addr, DialRequest{Node: "web-1"})
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	served := make(chan error, 1)
	go func() { served <- m.Serve(pc) }()
	if err := <-dialed; err != nil {
		t.Fatalf("dial before Serve: %v", err)
	}
	if err := m.Serve(pc); err == nil || !strings.Contains(err.Error(), "already called") {
		t.Fatalf("second Serve = %v", err)
	}
	m.Close()
	if err := <-served; !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve = %v", err)
	}
}

func TestConfig(t *testing.T) {
	e := newEnv(t)
	cert := e.proxyCert("a")
	good := Config{
		ID: "a", ClusterName: cluster, RootCAs: e.ca.Pool,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		Handler:              HandlerFunc(func(context.Context, string, DialRequest) (net.Conn, error) { return nil, nil }),
	}
	for field, mutate := range map[string]func(*Config){
		"ID":                   func(c *Config) { c.ID = "" },
		"ClusterName":          func(c *Config) { c.ClusterName = "" },
		"GetCertificate":       func(c *Config) { c.GetCertificate = nil },
		"GetClientCertificate": func(c *Config) { c.GetClientCertificate = nil },
		"RootCAs":              func(c *Config) { c.RootCAs = nil },
		"Handler":              func(c *Config) { c.Handler = nil },
		"ID: name":             func(c *Config) { c.ID = "a b" },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("config without %s: %v", field, err)
		}
	}
	m, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if m.cfg.MaxIncomingStreams != DefaultMaxIncomingStreams || m.quicConf.MaxIncomingStreams != DefaultMaxIncomingStreams || m.cfg.DialTimeout != DefaultDialTimeout {
		t.Errorf("defaults not applied: %+v", m.cfg)
	}
	if err := m.Serve(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close = %v", err)
	}
}

// TestSourceAddressDiffers: proxies on wildcard sockets, addressed at
// 127.0.0.2, send from 127.0.0.1 (as behind NAT). Dials alternating in both
// directions settle on one connection instead of replacing each other's.
func TestSourceAddressDiffers(t *testing.T) {
	e := newEnv(t)
	a := e.startAt("a", "0.0.0.0:0", e.proxyCert("a"))
	b := e.startAt("b", "0.0.0.0:0", e.proxyCert("b"))
	for _, p := range []*proxy{a, b} {
		_, port, _ := net.SplitHostPort(p.addr)
		p.addr = net.JoinHostPort("127.0.0.2", port) // what the directory says
	}
	for i := range 6 {
		from, to := b, a
		if i%2 == 1 {
			from, to = a, b
		}
		c := from.dial(t, to, "web-1")
		echoOnce(t, c, "hello")
		c.Close()
	}
	for _, p := range []*proxy{a, b} {
		if got := p.metricSum(t, "jumpgate_peer_connections_total"); got > 2 {
			t.Errorf("%s saw %v connections for 6 dials, want at most 2", p.id, got)
		}
	}
	authtest.WaitFor(t, waitFor, "one connection per side", func() bool { return a.m.connCount() == 1 && b.m.connCount() == 1 })
}

// TestDropPeer: a crashed peer sends no CONNECTION_CLOSE, so its streams
// would hang until the idle timeout; DropPeer (called when gossip declares
// the peer dead) ends them at once, and a later dial connects afresh.
func TestDropPeer(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("a"), e.start("b")
	c := a.dial(t, b, "web-1")
	defer c.Close()
	echoOnce(t, c, "before")
	b.crash(t)
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	select {
	case err := <-read:
		t.Fatalf("read returned %v before DropPeer", err)
	case <-time.After(100 * time.Millisecond):
	}
	if n := a.m.DropPeer("b", "proxy b declared dead by the mesh"); n != 1 {
		t.Fatalf("DropPeer closed %d connections, want 1", n)
	}
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("read on a dropped peer's stream succeeded")
		}
	case <-time.After(waitFor):
		t.Fatal("the stream did not end after DropPeer")
	}
	if n := a.m.DropPeer("b", "again"); n > 1 {
		t.Fatalf("second DropPeer closed %d", n)
	}
	authtest.WaitFor(t, waitFor, "the dropped connection to be gone", func() bool { return a.m.connCount() == 0 })
	b2 := e.start("b2")
	c2 := a.dial(t, b2, "web-1")
	echoOnce(t, c2, "after")
	c2.Close()
}
