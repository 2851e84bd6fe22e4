package resume

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func waitResume(t *testing.T, resumes <-chan ResumeInfo) ResumeInfo {
	t.Helper()
	select {
	case info := <-resumes:
		return info
	case <-time.After(15 * time.Second):
		t.Fatal("timed out waiting for the client to resume")
		return ResumeInfo{}
	}
}

// TestSurvivesCuts streams several MiB each way through a relay that is
// cut (reset) or closed cleanly several times, at moments that depend on
// the progress of the transfer: every byte must arrive once and in order.
func TestSurvivesCuts(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	relay := newRelay(t, node.addr(), nil, "")
	resumes := make(chan ResumeInfo, 16)
	c, sc := dialSession(t, node, ClientConfig{
		Dial:     dialTo(always(relay.addr())),
		OnResume: func(i ResumeInfo) { resumes <- i },
	})

	const size = 8 << 20
	var up, down atomic.Int64 // bytes checked by the node, by the client
	errs := bothWays(c, sc, 1, 2, size, &up, &down)

	const cuts = 6
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 0))
	var replayed int64
	for i := range cuts {
		target := int64(size) * int64(i) / cuts
		target += rng.Int64N(int64(size) / cuts / 2)
		waitFor(t, 30*time.Second, "the transfer to progress", func() bool {
			return up.Load() >= target && down.Load() >= target
		})
		clean := i%2 == 1
		var n int
		if clean {
			n = relay.closeClean()
		} else {
			n = relay.cut()
		}
		if n != 1 {
			t.Fatalf("cut %d: the relay had %d connections, want 1", i, n)
		}
		info := waitResume(t, resumes)
		if info.Moved != clean {
			t.Errorf("cut %d (clean %v): ResumeInfo.Moved = %v, err %v", i, clean, info.Moved, info.Err)
		}
		if info.Err == nil || info.Attempts < 1 {
			t.Errorf("cut %d: ResumeInfo %+v: want the cause and at least one attempt", i, info)
		}
		replayed += info.Replayed
		t.Logf("cut %d (clean %v) at %d/%d bytes: resumed after %v, %d attempts, client replayed %d bytes", i, clean, up.Load(), down.Load(), info.Stall, info.Attempts, info.Replayed)
	}
	waitTransfers(t, errs, 4)
	// The node counts a resumption right after answering it.
	var ok, takeover float64
	waitFor(t, 5*time.Second, "the node to count every resumption", func() bool {
		ok = node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeOK)
		takeover = node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeTakeover)
		return ok+takeover == cuts
	})
	if got := node.metric(t, "jumpgate_resume_stall_seconds"); got != ok {
		t.Errorf("stall histogram has %v observations, want one per resumption of a detached session (%v)", got, ok)
	}
	t.Logf("client replayed %d bytes, node %v", replayed, node.metric(t, "jumpgate_resume_replayed_bytes_total"))

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the node to drop the session", func() bool {
		a, d := node.l.Sessions()
		return a == 0 && d == 0
	})
}

// TestResumeFromAnotherAddress: the session moves to a second relay, so the
// node sees the resumption come from another address.
func TestResumeFromAnotherAddress(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	a := newRelay(t, node.addr(), nil, "")
	b := newRelay(t, node.addr(), nil, "")
	resumes := make(chan ResumeInfo, 4)
	c, sc := dialSession(t, node, ClientConfig{
		Dial: dialTo(func(at Attempt) string {
			if at.N == 0 {
				return a.addr()
			}
			return b.addr()
		}),
		OnResume: func(i ResumeInfo) { resumes <- i },
	})
	roundTrip(t, c, sc, "before")
	first := sc.RemoteAddr().String()
	a.cut()
	waitResume(t, resumes)
	roundTrip(t, c, sc, "after the move")
	if got := c.Transport().RemoteAddr().String(); got != b.addr() {
		t.Errorf("client transport goes to %s, want the second relay %s", got, b.addr())
	}
	if got := sc.RemoteAddr().String(); got != first {
		t.Errorf("ServerConn.RemoteAddr changed from %s to %s; it is the first transport's", first, got)
	}
}

// TestResumeFromAnotherIP: the client's network changes (a Wi-Fi roam):
// the first transport comes from 127.0.0.1 and, after it is reset, the
// resumption from 127.0.0.2. The node must accept the session from its new
// source IP, and every byte sent across the change must arrive once and in
// order. (Linux routes all of 127.0.0.0/8 to lo.)
func TestResumeFromAnotherIP(t *testing.T) {
	checkLeaks(t)
	var mu sync.Mutex
	var seen []string // remote IPs of the transports the node attached, in order
	node := newTestNode(t, ServerConfig{User: func(c net.Conn) string {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, c.RemoteAddr().(*net.TCPAddr).IP.String())
		return "alice"
	}})
	// The first transport goes through a relay, which the test resets as
	// a failing path would; its connection to the node leaves from
	// 127.0.0.1. The resumption dials the node directly from 127.0.0.2.
	first := newRelay(t, node.addr(), nil, "")
	from := func(ip string) *net.Dialer {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	}
	if c, err := from("127.0.0.2").Dial("tcp", node.addr()); err != nil {
		t.Skipf("cannot dial from 127.0.0.2 (not Linux, or lo is not 127.0.0.0/8): %v", err)
	} else {
		c.Close()
	}
	resumes := make(chan ResumeInfo, 4)
	c, sc := dialSession(t, node, ClientConfig{
		Dial: func(ctx context.Context, a Attempt) (net.Conn, error) {
			if a.N == 0 {
				return from("127.0.0.1").DialContext(ctx, "tcp", first.addr())
			}
			return from("127.0.0.2").DialContext(ctx, "tcp", node.addr())
		},
		OnResume: func(i ResumeInfo) { resumes <- i },
	})

	const size = 2 << 20
	var up, down atomic.Int64 // bytes checked by the node, by the client
	errs := bothWays(c, sc, 3, 4, size, &up, &down)

	waitFor(t, 30*time.Second, "the transfer to progress", func() bool {
		return up.Load() >= size/3 && down.Load() >= size/3
	})
	if n := first.cut(); n != 1 {
		t.Fatalf("the relay had %d connections, want 1", n)
	}
	info := waitResume(t, resumes)
	if info.Moved {
		t.Errorf("ResumeInfo.Moved = true after a reset (err %v)", info.Err)
	}
	waitTransfers(t, errs, 4)

	if got := c.Transport().LocalAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.2" {
		t.Errorf("client's transport after the resumption leaves from %s, want 127.0.0.2", got)
	}
	mu.Lock()
	got := slices.Clone(seen)
	mu.Unlock()
	if want := []string{"127.0.0.1", "127.0.0.2"}; !slices.Equal(got, want) {
		t.Errorf("the node attached transports from %v, want %v (the session, then its resumption from the new IP)", got, want)
	}
	if got := sc.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Errorf("ServerConn.RemoteAddr is %s; want the first transport's, 127.0.0.1", got)
	}
	// The node counts the resumption, and marks the session attached,
	// right after answering it: the client may be done before that. It
	// may not have seen the reset yet either (a takeover).
	waitFor(t, 5*time.Second, "the node to count the resumption from the new IP", func() bool {
		a, d := node.l.Sessions()
		ok := node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeOK)
		takeover := node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeTakeover)
		return ok+takeover == 1 && a == 1 && d == 0
	})
}

// TestRefusedWithoutKey: a resumption signed with another key is refused,
// and the session carries on.
func TestRefusedWithoutKey(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	c, sc := dialSession(t, node, ClientConfig{Dial: dialTo(always(node.addr()))})
	roundTrip(t, c, sc, "hello")

	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(key ed25519.PrivateKey, id [sessionIDLen]byte) error {
		conn, err := net.Dial("tcp", node.addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = handshakeResume(context.Background(), conn, key, id, 0, 5*time.Second)
		return err
	}
	err = forge(other, c.id)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "resumption refused: the proof does not match the session key") {
		t.Fatalf("resume with another key: %v; want ErrRefused saying the proof does not match", err)
	}
	var unknown [sessionIDLen]byte
	rand.Read(unknown[:])
	err = forge(other, unknown)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "is unknown or expired (the node keeps a detached session for 5m0s)") {
		t.Fatalf("resume of an unknown session: %v; want ErrRefused saying unknown or expired", err)
	}

	roundTrip(t, c, sc, "still here")
	if a, d := node.l.Sessions(); a != 1 || d != 0 {
		t.Errorf("Sessions() = %d attached, %d detached; want 1, 0", a, d)
	}
	if got := node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeRefused); got != 1 {
		t.Errorf("refused resumptions: %v, want 1", got)
	}
	if got := node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeExpired); got != 1 {
		t.Errorf("expired resumptions: %v, want 1", got)
	}
}

// TestRefusedOtherUser: a resumption through a proxy that authenticated
// another user is refused; the client gives up with that reason.
func TestRefusedOtherUser(t *testing.T) {
	checkLeaks(t)
	users := &userMap{}
	node := newTestNode(t, ServerConfig{User: users.user})
	alice := newRelay(t, node.addr(), users, "alice")
	bob := newRelay(t, node.addr(), users, "bob")
	c, sc := dialSession(t, node, ClientConfig{
		Dial: dialTo(func(a Attempt) string {
			if a.N == 0 {
				return alice.addr()
			}
			return bob.addr()
		}),
	})
	roundTrip(t, c, sc, "hello")
	if sc.User() != "alice" {
		t.Fatalf("ServerConn.User() = %q, want alice", sc.User())
	}
	alice.cut()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "resumption refused: session belongs to another user") {
		t.Fatalf("client Read after the move to bob's proxy: %v; want ErrRefused saying the session belongs to another user", err)
	}
	if _, werr := c.Write([]byte("x")); !errors.Is(werr, ErrRefused) {
		t.Errorf("Write after the refusal: %v, want ErrRefused", werr)
	}
	if got := node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeRefused); got != 1 {
		t.Errorf("refused resumptions: %v, want 1", got)
	}
	// The refusal does not touch alice's session, which waits for her
	// (once the node has noticed the cut, which may come after the refusal).
	waitFor(t, 5*time.Second, "alice's session to wait detached", func() bool {
		a, d := node.l.Sessions()
		return a == 0 && d == 1
	})
}

// TestWindowExpiry: with the path gone for good, the client gives up after
// its window and the node drops the session after its own.
func TestWindowExpiry(t *testing.T) {
	checkLeaks(t)
	const window = 300 * time.Millisecond
	node := newTestNode(t, ServerConfig{Window: window})
	relay := newRelay(t, node.addr(), nil, "")
	c, sc := dialSession(t, node, ClientConfig{
		Window: window,
		Dial: func(ctx context.Context, a Attempt) (net.Conn, error) {
			if a.N == 0 {
				return dialTo(always(relay.addr()))(ctx, a)
			}
			return nil, errors.New("no proxy answers")
		},
	})
	roundTrip(t, c, sc, "hello")
	relay.cut()

	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, ErrGaveUp) {
		t.Fatalf("client Read: %v, want ErrGaveUp", err)
	}
	for _, want := range []string{"lost the connection to the node and could not resume within 300ms", "no proxy answers"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("client error %q does not say %q", err, want)
		}
	}
	if d := time.Since(start); d < window/2 {
		t.Errorf("gave up after %v, before the window of %v", d, window)
	}
	if _, werr := c.Write([]byte("x")); !errors.Is(werr, ErrGaveUp) {
		t.Errorf("client Write: %v, want ErrGaveUp", werr)
	}

	_, err = sc.Read(make([]byte, 1))
	if !errors.Is(err, ErrGaveUp) || !strings.Contains(err.Error(), "did not resume the session within 300ms") {
		t.Fatalf("node Read: %v, want ErrGaveUp saying the client did not resume within 300ms", err)
	}
	waitFor(t, 5*time.Second, "the node to drop the session", func() bool {
		a, d := node.l.Sessions()
		return a == 0 && d == 0
	})
}

// TestPlainClients: transports that do not start with Magic are handed to
// the SSH server as they are.
func TestPlainClients(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{SniffTimeout: 200 * time.Millisecond})

	check := func(name, first string) {
		t.Helper()
		conn, err := net.Dial("tcp", node.addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if first != "" {
			if _, err := conn.Write([]byte(first)); err != nil {
				t.Fatal(err)
			}
		}
		pc := node.accept(t)
		defer pc.Close()
		if _, ok := pc.(*ServerConn); ok {
			t.Fatalf("%s: accepted as a resumable session", name)
		}
		inner, ok := pc.(interface{ Inner() net.Conn })
		if !ok {
			t.Fatalf("%s: %T has no Inner", name, pc)
		}
		if _, ok := inner.Inner().(*net.TCPConn); !ok {
			t.Errorf("%s: Inner() is %T, want the inner listener's conn", name, inner.Inner())
		}
		if first != "" {
			buf := make([]byte, len(first))
			if _, err := io.ReadFull(pc, buf); err != nil || string(buf) != first {
				t.Fatalf("%s: node read %q, %v; want %q", name, buf, err, first)
			}
		}
		const banner = "SSH-2.0-node\r\n"
		if _, err := pc.Write([]byte(banner)); err != nil {
			t.Fatal(err)
		}
		if err := pc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatalf("%s: CloseWrite: %v", name, err)
		}
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != banner {
			t.Fatalf("%s: client read %q, %v; want %q then EOF", name, got, err, banner)
		}
	}
	check("SSH client", "SSH-2.0-x\r\n")
	check("silent client", "")              // waits for the server's banner: handed over after SniffTimeout
	check("partial magic", "JGxx and more") // diverges from Magic after two bytes
	if a, d := node.l.Sessions(); a+d != 0 {
		t.Errorf("Sessions() = %d, %d; want none", a, d)
	}
}

// TestUnsupportedNode: an older node answers with its SSH banner; Dial
// says so, and the caller falls back to plain SSH.
func TestUnsupportedNode(t *testing.T) {
	checkLeaks(t)
	for _, answer := range []string{"SSH-2.0-OpenSSH_9.6\r\n", "JGRS\x07"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			conn.Write([]byte(answer))
			io.Copy(io.Discard, conn)
		}()
		_, err = Dial(context.Background(), ClientConfig{Dial: dialTo(always(ln.Addr().String()))})
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("Dial to a node answering %q: %v, want ErrUnsupported", answer, err)
		}
		ln.Close()
		<-done
	}
}

// TestHalfClose: CloseWrite delivers io.EOF after all data, in each
// direction, and the other direction keeps working.
func TestHalfClose(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	c, sc := dialSession(t, node, ClientConfig{Dial: dialTo(always(node.addr()))})
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(sc); err != nil || string(got) != "request" {
		t.Fatalf("node read %q, %v; want the request then EOF", got, err)
	}
	if _, err := c.Write([]byte("more")); err == nil {
		t.Error("Write after CloseWrite succeeded")
	}
	if _, err := sc.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	if err := sc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "response" {
		t.Fatalf("client read %q, %v; want the response then EOF", got, err)
	}
	c.Close()
	sc.Close()
	waitFor(t, 5*time.Second, "the node to drop the session", func() bool {
		a, d := node.l.Sessions()
		return a == 0 && d == 0
	})
}

// TestCloseAcrossResume: data, FIN and CLOSE lost in a dead path are sent
// again after the resumption: the client still reads everything, then
// io.EOF, and the node drops the session once the client confirms.
func TestCloseAcrossResume(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	relay := newRelay(t, node.addr(), nil, "")
	resumes := make(chan ResumeInfo, 4)
	c, sc := dialSession(t, node, ClientConfig{
		Dial:     dialTo(always(relay.addr())),
		OnResume: func(i ResumeInfo) { resumes <- i },
	})
	roundTrip(t, c, sc, "hello")

	relay.freeze() // everything sent from now on is lost
	const size = 256 << 10
	if err := sendPattern(sc, 3, size, nil); err != nil {
		t.Fatal(err)
	}
	if err := sc.Close(); err != nil { // does not block
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("lost too")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// Once the lost bytes went into the black hole, resume.
	waitFor(t, 10*time.Second, "the relay to drop the bytes sent", func() bool {
		return relay.droppedToClient.Load() >= size && relay.droppedToNode.Load() >= int64(len("lost too"))
	})
	relay.cut()
	info := waitResume(t, resumes)
	if info.Replayed != int64(len("lost too")) {
		t.Errorf("client replayed %d bytes, want %d", info.Replayed, len("lost too"))
	}
	if err := checkPattern(c, 3, size, true, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("client Write after the node closed succeeded")
	}
	waitFor(t, 5*time.Second, "the node to drop the session", func() bool {
		a, d := node.l.Sessions()
		return a == 0 && d == 0
	})
	if got := node.metric(t, "jumpgate_resume_replayed_bytes_total"); got < size {
		t.Errorf("node replayed %v bytes, want at least %d", got, size)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestClientClose: Close delivers what was written, the node reads io.EOF
// and drops the session; afterwards everything on the Conn fails cleanly.
func TestClientClose(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	c, sc := dialSession(t, node, ClientConfig{Dial: dialTo(always(node.addr()))})
	const size = 1 << 20
	if err := sendPattern(c, 4, size, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := checkPattern(sc, 4, size, true, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the node to drop the session", func() bool {
		a, d := node.l.Sessions()
		return a == 0 && d == 0
	})
	if _, err := sc.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "the client closed the connection") {
		t.Errorf("node Write after the client closed: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if c.Transport() != nil {
		t.Error("Transport() after Close is not nil")
	}
}

// TestDeadlines: session deadlines behave as net.Conn's.
func TestDeadlines(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{MaxUnacked: 64 << 10})
	c, _ := dialSession(t, node, ClientConfig{Dial: dialTo(always(node.addr())), MaxUnacked: 64 << 10})
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	// The node does not read: once its queue and the transport's buffers
	// are full, MaxUnacked bytes stay unacknowledged and Write blocks.
	buf := make([]byte, 32<<20)
	c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := c.Write(buf)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 {
		t.Fatalf("Write past the deadline: %d bytes, %v; want some bytes, then a timeout", n, err)
	}
	c.SetWriteDeadline(time.Time{})
}

// TestBlackHoleTakeover: a path that silently drops everything is noticed
// by keepalives; the client resumes through another relay while the node
// still holds the old transport, which the resumption takes over.
func TestBlackHoleTakeover(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{}) // keepalive 5s: the node would notice after 15s
	a := newRelay(t, node.addr(), nil, "")
	b := newRelay(t, node.addr(), nil, "")
	resumes := make(chan ResumeInfo, 4)
	c, sc := dialSession(t, node, ClientConfig{
		Keepalive: 100 * time.Millisecond,
		Dial: dialTo(func(at Attempt) string {
			if at.N == 0 {
				return a.addr()
			}
			return b.addr()
		}),
		OnResume: func(i ResumeInfo) { resumes <- i },
	})
	roundTrip(t, c, sc, "hello")
	a.freeze()
	info := waitResume(t, resumes)
	if info.Moved || !strings.Contains(info.Err.Error(), "nothing received from the node for 300ms") {
		t.Errorf("resumed after %v (moved %v); want the keepalive to notice the dead path", info.Err, info.Moved)
	}
	roundTrip(t, c, sc, "after the takeover")
	if got := node.metric(t, "jumpgate_resume_resumptions_total", "outcome", outcomeTakeover); got != 1 {
		t.Errorf("takeover resumptions: %v, want 1", got)
	}
}

// TestReconnect: Reconnect moves the session to a new transport, dialed
// while the old one still works.
func TestReconnect(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	a := newRelay(t, node.addr(), nil, "")
	b := newRelay(t, node.addr(), nil, "")
	resumes := make(chan ResumeInfo, 4)
	var attempts []Attempt
	attemptc := make(chan Attempt, 4)
	c, sc := dialSession(t, node, ClientConfig{
		Dial: func(ctx context.Context, at Attempt) (net.Conn, error) {
			attemptc <- at
			if at.N == 0 {
				return dialTo(always(a.addr()))(ctx, at)
			}
			return dialTo(always(b.addr()))(ctx, at)
		},
		OnResume: func(i ResumeInfo) { resumes <- i },
	})
	roundTrip(t, c, sc, "hello")
	draining := errors.New("proxy a is draining")
	c.Reconnect(draining)
	info := waitResume(t, resumes)
	if !info.Moved || !errors.Is(info.Err, draining) || info.Attempts != 1 {
		t.Errorf("ResumeInfo %+v: want moved because of the drain, in one attempt", info)
	}
	roundTrip(t, c, sc, "on b")
	if got := c.Transport().RemoteAddr().String(); got != b.addr() {
		t.Errorf("transport goes to %s, want relay b %s", got, b.addr())
	}
	close(attemptc)
	for at := range attemptc {
		attempts = append(attempts, at)
	}
	if len(attempts) != 2 || !attempts[1].Moved || attempts[1].N != 1 || !errors.Is(attempts[1].Err, draining) {
		t.Errorf("attempts %+v: want N=0, then N=1 moved because of the drain", attempts)
	}
}

// TestProtocolErrorOffset: a resumption claiming bytes the node never sent
// ends the session with a clear error on both sides.
func TestProtocolErrorOffset(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	c, sc := dialSession(t, node, ClientConfig{Dial: dialTo(always(node.addr()))})
	roundTrip(t, c, sc, "hello")
	conn, err := net.Dial("tcp", node.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = handshakeResume(context.Background(), conn, c.key, c.id, 1<<40, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "resumed from offset 1099511627776") {
		t.Fatalf("resume from an offset never sent: %v; want an error naming the offset", err)
	}
	_, err = sc.Read(make([]byte, 1))
	if !errors.Is(err, errProtocol) || !strings.Contains(err.Error(), "the session cannot continue") {
		t.Errorf("node Read: %v; want a protocol error that says the session cannot continue", err)
	}
	// The client's transport was taken over and the session is gone: it
	// is refused when it tries to resume.
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, ErrRefused) {
		t.Errorf("client Read: %v, want ErrRefused", err)
	}
}

// TestListenerClose ends every session, handshake and sniff in progress,
// and leaves no goroutine behind.
func TestListenerClose(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	relay := newRelay(t, node.addr(), nil, "")
	var clients []*Conn
	for range 3 {
		c, sc := dialSession(t, node, ClientConfig{Dial: dialTo(always(relay.addr()))})
		roundTrip(t, c, sc, "hello")
		clients = append(clients, c)
	}
	// One session detached: its client cannot come back.
	detached, _ := dialSession(t, node, ClientConfig{
		Dial: func(ctx context.Context, a Attempt) (net.Conn, error) {
			if a.N == 0 {
				return dialTo(always(relay.addr()))(ctx, a)
			}
			return nil, errors.New("no route")
		},
	})
	_ = detached
	// Transports stuck in sniffing and in the handshake.
	silent, err := net.Dial("tcp", node.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	half, err := net.Dial("tcp", node.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	half.Write([]byte(Magic))
	// Cut only the detached session's transport: the last relay pair.
	waitFor(t, 5*time.Second, "4 attached sessions", func() bool { a, _ := node.l.Sessions(); return a == 4 })
	detached.Transport().(*net.TCPConn).SetLinger(0)
	detached.Transport().Close()
	waitFor(t, 5*time.Second, "a detached session", func() bool { a, d := node.l.Sessions(); return a == 3 && d == 1 })

	start := time.Now()
	if err := node.l.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v", d)
	}
	for _, c := range clients {
		_, err := c.Read(make([]byte, 1))
		if err == nil || !strings.Contains(err.Error(), "the node ended the session: the node is shutting down") {
			t.Errorf("client Read after the node closed: %v; want it to say the node is shutting down", err)
		}
	}
	if _, err := node.l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if err := node.l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestConfigErrors: a bad config names the field.
func TestConfigErrors(t *testing.T) {
	if _, err := Dial(context.Background(), ClientConfig{}); err == nil || !strings.Contains(err.Error(), "ClientConfig.Dial is required") {
		t.Errorf("Dial without Dial: %v", err)
	}
	dial := dialTo(always("127.0.0.1:1"))
	if _, err := Dial(context.Background(), ClientConfig{Dial: dial, Window: -1}); err == nil || !strings.Contains(err.Error(), "ClientConfig.Window") {
		t.Errorf("negative window: %v", err)
	}
	if _, err := Dial(context.Background(), ClientConfig{Dial: dial, Key: ed25519.PrivateKey{1}}); err == nil || !strings.Contains(err.Error(), "ClientConfig.Key") {
		t.Errorf("short key: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := NewListener(ln, ServerConfig{MaxUnacked: -1}); err == nil || !strings.Contains(err.Error(), "ServerConfig.MaxUnacked") {
		t.Errorf("negative MaxUnacked: %v", err)
	}
}

// waitTransfers waits for n transfer goroutines to report on errs, and
// fails on the first error.
func waitTransfers(t *testing.T, errs <-chan error, n int) {
	t.Helper()
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("timed out waiting for the transfer")
		}
	}
}
