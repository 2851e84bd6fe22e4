package server_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

func hello(node, instance, slot string) proto.Hello {
	return proto.Hello{Version: proto.Version, NodeID: node, InstanceID: instance, Slot: slot}
}

func TestReconnectReplacesLingeringTunnel(t *testing.T) {
	e := newEnv(t)
	// An agent process that died without closing its tunnel: the proxy
	// still holds it.
	old, err := dialRaw(t, e.proxy.addr, e.nodeCert("web-1"), hello("web-1", "dead-process", e.proxy.addr))
	if err != nil || !old.ack.Accepted {
		t.Fatalf("raw tunnel: %+v, %v", old.ack, err)
	}
	oldPort := old.qc.LocalAddr().(*net.UDPAddr).Port
	if n := e.proxy.srv.Nodes(); len(n) != 1 || n[0].RemoteAddr.(*net.UDPAddr).Port != oldPort {
		t.Fatalf("Nodes() = %+v", n)
	}

	// The node's new agent process connects.
	a := e.startAgent("web-1")
	serveEcho(t, a, nil)
	select {
	case <-old.qc.Context().Done():
	case <-time.After(waitFor):
		t.Fatal("the lingering tunnel was not closed")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(old.qc.Context()); !errors.As(err, &ae) || uint64(ae.ErrorCode) != proto.CloseReplaced || !strings.Contains(ae.ErrorMessage, "replaced by a newer tunnel from node web-1") {
		t.Fatalf("old tunnel closed with %v, want CloseReplaced", err)
	}
	n := e.proxy.srv.Nodes()
	if len(n) != 1 || n[0].Tunnels != 1 || n[0].RemoteAddr.(*net.UDPAddr).Port == oldPort {
		t.Fatalf("Nodes() = %+v, want only the new tunnel", n)
	}
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoRoundTrip(t, c, []byte("through the new tunnel"))

	// Two TunnelUp events and no TunnelDown: the node never went away.
	servertest.WaitFor(t, waitFor, "two events", func() bool { return len(e.proxy.eventsSnapshot()) >= 2 })
	ev := e.proxy.eventsSnapshot()
	if len(ev) != 2 || ev[0].Type != server.TunnelUp || ev[1].Type != server.TunnelUp {
		t.Fatalf("events = %+v", ev)
	}
}

func TestSameAgentTwoAddressesKeepsBoth(t *testing.T) {
	e := newEnv(t)
	// One agent process reaches the proxy through two configured
	// addresses: the tunnels must not knock each other out.
	first, err := dialRaw(t, e.proxy.addr, e.nodeCert("web-1"), hello("web-1", "proc-1", "a.example:3024"))
	if err != nil || !first.ack.Accepted {
		t.Fatalf("first: %+v, %v", first.ack, err)
	}
	second, err := dialRaw(t, e.proxy.addr, e.nodeCert("web-1"), hello("web-1", "proc-1", "b.example:3024"))
	if err != nil || !second.ack.Accepted {
		t.Fatalf("second: %+v, %v", second.ack, err)
	}
	if n := e.proxy.srv.Nodes(); len(n) != 1 || n[0].Tunnels != 2 {
		t.Fatalf("Nodes() = %+v, want one node with two tunnels", n)
	}

	// The newest tunnel serves dials.
	done := make(chan struct{})
	go func() {
		defer close(done)
		st, req := second.answerDial(t, proto.DialResponse{Version: proto.Version, OK: true})
		if req.User != "alice" {
			t.Errorf("DialRequest = %+v", req)
		}
		st.Close()
	}()
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-done

	// When it goes, the spare takes over; the node never went down.
	second.qc.CloseWithError(0, "")
	servertest.WaitFor(t, waitFor, "one tunnel left", func() bool {
		n := e.proxy.srv.Nodes()
		return len(n) == 1 && n[0].Tunnels == 1
	})
	done = make(chan struct{})
	go func() {
		defer close(done)
		st, _ := first.answerDial(t, proto.DialResponse{Version: proto.Version, OK: true})
		st.Close()
	}()
	c, err = e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-done
	for _, ev := range e.proxy.eventsSnapshot() {
		if ev.Type == server.TunnelDown {
			t.Fatalf("TunnelDown while a spare tunnel was up: %+v", ev)
		}
	}

	// The last tunnel going is a TunnelDown.
	first.qc.CloseWithError(0, "")
	servertest.WaitFor(t, waitFor, "TunnelDown", func() bool {
		ev := e.proxy.eventsSnapshot()
		return ev[len(ev)-1].Type == server.TunnelDown
	})
	if e.proxy.hasNode("web-1") {
		t.Fatal("node listed after TunnelDown")
	}
	ev := e.proxy.eventsSnapshot()
	if last := ev[len(ev)-1]; last.Node.ID != "web-1" || last.Err == nil {
		t.Fatalf("last event = %+v, want TunnelDown with a cause", last)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_connected_nodes"); got != 0 {
		t.Errorf("connected_nodes = %v", got)
	}
}

func TestVersionNegotiation(t *testing.T) {
	e := newEnv(t)
	// A newer agent speaks version 1 with this proxy.
	r, err := dialRaw(t, e.proxy.addr, e.nodeCert("new"), proto.Hello{Version: 99, NodeID: "new"})
	if err != nil || !r.ack.Accepted || r.ack.Version != proto.Version || r.ack.ProxyID != "p1" {
		t.Fatalf("HelloAck = %+v, %v; want accepted at version %d", r.ack, err, proto.Version)
	}
	go func() {
		_, req := r.answerDial(t, proto.DialResponse{Version: proto.Version, OK: true})
		if req.Version != proto.Version {
			t.Errorf("DialRequest version %d", req.Version)
		}
	}()
	c, err := e.proxy.srv.Dial(context.Background(), "new", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A Hello without a version is refused, with the reason, which
	// arrives in the HelloAck or in the close, whichever comes first.
	r, err = dialRaw(t, e.proxy.addr, e.nodeCert("old"), proto.Hello{NodeID: "old"})
	reason := r.ack.Error
	if err != nil {
		reason = err.Error()
	}
	if r.ack.Accepted || !strings.Contains(reason, "bad Hello: read Hello: malformed message: Hello without a version") {
		t.Fatalf("refusal = %+v, %v", r.ack, err)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_handshake_failures_total", "reason", "bad_hello"); got != 1 {
		t.Errorf("handshake_failures_total{bad_hello} = %v", got)
	}
}

func TestHelloTimeout(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	// A peer that completes the handshake and then says nothing.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	qc := rawConn(t, e, ctx)
	select {
	case <-qc.Context().Done():
	case <-ctx.Done():
		t.Fatal("a mute tunnel was not closed")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(qc.Context()); !errors.As(err, &ae) || uint64(ae.ErrorCode) != proto.CloseRefused || !strings.Contains(ae.ErrorMessage, "no Hello within 200ms") {
		t.Fatalf("closed with %v", err)
	}
	if got := e.proxy.metric(t, "jumpgate_tunnel_handshake_failures_total", "reason", "hello_timeout"); got != 1 {
		t.Errorf("handshake_failures_total{hello_timeout} = %v", got)
	}
}

func TestUnexpectedStreamFromAgent(t *testing.T) {
	e := newEnv(t)
	r, err := dialRaw(t, e.proxy.addr, e.nodeCert("web-1"), hello("web-1", "i", "s"))
	if err != nil || !r.ack.Accepted {
		t.Fatal(r, err)
	}
	st, err := r.qc.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("let me in"))
	_, err = io.ReadAll(st)
	var se *quic.StreamError
	if !errors.As(err, &se) || uint64(se.ErrorCode) != proto.StreamRefused {
		t.Fatalf("read on an unexpected stream = %v, want it refused", err)
	}
	if !e.proxy.hasNode("web-1") {
		t.Fatal("tunnel dropped over a stray stream")
	}
}

func TestGarbageDatagramsAreHarmless(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("web-1")
	serveEcho(t, a, nil)
	live, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echoOnce(t, live, "before")

	junk, err := net.Dial("udp", e.proxy.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Close()
	for i := range 500 {
		b := make([]byte, 1+i*7%1500)
		rand.Read(b)
		switch i % 4 {
		case 0: // looks like a QUIC v1 Initial
			b = append([]byte{0xc3, 0, 0, 0, 1}, b...)
		case 1: // a short-header packet for an unknown connection
			b[0] = 0x40 | b[0]&0x3f
		}
		junk.Write(b)
	}
	// A datagram as big as UDP allows.
	junk.Write(make([]byte, 65000))

	echoOnce(t, live, "after")
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoRoundTrip(t, c, []byte("a new dial after the junk"))
	if st := a.Status()[0]; st.State != agent.StateConnected || st.Failures != 0 {
		t.Fatalf("agent status = %+v", st)
	}
}

func TestShutdownDrains(t *testing.T) {
	servertest.CheckLeaks(t)
	e := newEnv(t)
	a := e.startAgent("web-1")
	serveEcho(t, a, nil)
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- e.proxy.srv.Shutdown(context.Background()) }()
	// New dials are refused at once...
	servertest.WaitFor(t, waitFor, "dials to be refused", func() bool {
		c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
		if err == nil {
			c.Close() // dialed before Shutdown began
		}
		return errors.Is(err, server.ErrShuttingDown)
	})
	_, err = e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	var de *server.DialError
	if !errors.As(err, &de) || !de.Retryable || !strings.Contains(err.Error(), "proxy is shutting down: dial through another proxy") {
		t.Fatalf("dial during shutdown = %v", err)
	}
	// ...while the open session carries on.
	echoOnce(t, c, "still here")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a connection open", err)
	default:
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	// The tunnel was closed: the agent reports it and the node went down.
	servertest.WaitFor(t, waitFor, "the agent to see the tunnel close", func() bool {
		return a.Status()[0].State != agent.StateConnected
	})
	ev := e.proxy.eventsSnapshot()
	if last := ev[len(ev)-1]; last.Type != server.TunnelDown {
		t.Fatalf("last event = %+v", last)
	}
	if err := e.proxy.srv.Serve(e.proxy.pc); !errors.Is(err, server.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
}

func TestShutdownDeadlineClosesEverything(t *testing.T) {
	servertest.CheckLeaks(t)
	e := newEnv(t)
	a := e.startAgent("web-1")
	serveEcho(t, a, nil)
	c, err := e.proxy.srv.Dial(context.Background(), "web-1", dialReq())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = e.proxy.srv.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 connections still open") {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	// The session was cut.
	c.SetDeadline(time.Now().Add(waitFor))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read after hard shutdown = %v, want the tunnel's close", err)
	}
	if err := e.proxy.srv.Close(); err != nil {
		t.Fatalf("Close after Shutdown = %v", err)
	}
}

func TestCloseEndsGoroutines(t *testing.T) {
	servertest.CheckLeaks(t)
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c"} {
		serveEcho(t, e.startAgent(n), nil)
		c, err := e.proxy.srv.Dial(context.Background(), n, dialReq())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// A handshake in progress and a raw tunnel, too.
	if _, err := dialRaw(t, e.proxy.addr, e.nodeCert("raw"), hello("raw", "x", "y")); err != nil {
		t.Fatal(err)
	}
	e.proxy.stop(t)
	if err := e.proxy.srv.Close(); err != nil {
		t.Fatal(err)
	}
}

// rawConn dials the proxy with a good certificate and does nothing more.
func rawConn(t *testing.T, e *env, ctx context.Context) *quic.Conn {
	t.Helper()
	r, err := dialRawNoHello(ctx, e.proxy.addr, e.nodeCert("mute"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.CloseWithError(0, "") })
	return r
}
