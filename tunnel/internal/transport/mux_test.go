package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

func TestMain(m *testing.M) { servertest.MainLeakCheck(m) }

const waitFor = 10 * time.Second

// tlsPair returns both ends of a TLS 1.3 connection on loopback TCP.
func tlsPair(t testing.TB) (client, server *tls.Conn) {
	t.Helper()
	return tlsPairWrap(t, nil)
}

// tlsPairWrap is tlsPair with the client's TCP connection passed through
// wrap (when not nil) under TLS.
func tlsPairWrap(t testing.TB, wrap func(net.Conn) net.Conn) (client, server *tls.Conn) {
	t.Helper()
	ca := servertest.NewCA(t, "transport test CA")
	cert := ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "prod"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		tc := tls.Server(c, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}, NextProtos: []string{proto.ALPN}})
		if tc.Handshake() != nil {
			c.Close()
			accepted <- nil
			return
		}
		accepted <- tc
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		raw = wrap(raw)
	}
	client = tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{proto.ALPN}}) // test pair only
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("server handshake failed")
	}
	return client, server
}

// muxPair returns an agent-side and a proxy-side Conn over one TLS
// connection; both are closed at the end of the test.
func muxPair(t testing.TB, cfg MuxConfig) (agent, proxy Conn) {
	t.Helper()
	tc, ts := tlsPair(t)
	a, err := NewMuxClient(tc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	p, err := NewMuxServer(ctx, ts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close(proto.CloseNormal, "")
		p.Close(proto.CloseNormal, "")
		<-a.Done()
		<-p.Done()
	})
	return a, p
}

// streamPair opens a stream on from and accepts it on to. yamux tells the
// peer about a stream with its first frame, so one byte is exchanged.
func streamPair(t testing.TB, from, to Conn) (Stream, Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s1, err := from.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	s2, err := to.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(s2, b[:]); err != nil || b[0] != 'x' {
		t.Fatalf("first byte %q, %v", b, err)
	}
	return s1, s2
}

func TestMuxHalfClose(t *testing.T) {
	agent, proxy := muxPair(t, MuxConfig{})
	ps, as := streamPair(t, proxy, agent)
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	go func() {
		ps.Write(payload)
		ps.CloseWrite()
	}()
	got, err := io.ReadAll(as)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("agent read %d bytes, %v; want %d intact bytes then EOF", len(got), err, len(payload))
	}
	// The proxy half-closed; the agent's answer still gets through.
	if _, err := io.WriteString(as, "late answer"); err != nil {
		t.Fatal(err)
	}
	as.Close()
	got, err = io.ReadAll(ps)
	if err != nil || string(got) != "late answer" {
		t.Fatalf("proxy read %q, %v", got, err)
	}
	ps.Close()
}

func TestMuxCloseCarriesReason(t *testing.T) {
	agent, proxy := muxPair(t, MuxConfig{})
	ps, as := streamPair(t, proxy, agent)
	proxy.Close(proto.CloseReplaced, "replaced by a newer tunnel from node web-1")
	select {
	case <-agent.Done():
	case <-time.After(waitFor):
		t.Fatal("the agent's side did not end")
	}
	<-proxy.Done()
	ce, ok := AsClose(agent.Err())
	if !ok || !ce.Remote || ce.Code != proto.CloseReplaced || ce.Reason != "replaced by a newer tunnel from node web-1" {
		t.Fatalf("agent Err = %#v, want the proxy's CloseReplaced and reason", agent.Err())
	}
	if ce, ok := AsClose(proxy.Err()); !ok || ce.Remote || ce.Code != proto.CloseReplaced {
		t.Fatalf("proxy Err = %#v, want its own close", proxy.Err())
	}
	// Streams and AcceptStream report the close, not EOF.
	if _, err := as.Read(make([]byte, 1)); !errors.Is(err, agent.Err()) {
		t.Fatalf("stream Read after close = %v, want the connection's error", err)
	}
	if _, err := ps.Write([]byte("x")); err == nil {
		t.Fatal("Write on a closed connection succeeded")
	}
	if _, err := agent.AcceptStream(context.Background()); !errors.Is(err, agent.Err()) {
		t.Fatalf("AcceptStream after close = %v", err)
	}
}

func TestMuxBrokenConnection(t *testing.T) {
	tc, ts := tlsPair(t)
	agent, err := NewMuxClient(tc, MuxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := NewMuxServer(context.Background(), ts, MuxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ps, as := streamPair(t, proxy, agent)
	// The proxy's TCP connection goes away without a word.
	ts.NetConn().Close()
	// (EOF or a reset, depending on what the kernel had unread.)
	if _, err := io.ReadAll(as); err == nil || !strings.Contains(err.Error(), "TCP connection") {
		t.Fatalf("agent stream read = %v, want an error saying the connection broke (not EOF)", err)
	}
	<-agent.Done()
	<-proxy.Done()
	ps.Close()
}

func TestMuxAbortDrains(t *testing.T) {
	agent, proxy := muxPair(t, MuxConfig{})
	ps, as := streamPair(t, proxy, agent)
	as.Abort(proto.StreamCanceled)
	if _, err := as.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Abort = %v, want net.ErrClosed", err)
	}
	// The proxy reads EOF, and may write far beyond the stream window
	// without blocking: the aborted side throws it away.
	if b, err := io.ReadAll(ps); err != nil || len(b) != 0 {
		t.Fatalf("proxy read %q, %v; want EOF", b, err)
	}
	ps.SetWriteDeadline(time.Now().Add(waitFor))
	big := make([]byte, 1<<20)
	for range 8 {
		if _, err := ps.Write(big); err != nil {
			t.Fatalf("write to an aborted stream: %v", err)
		}
	}
	ps.Close()
}

func TestMuxAbortWakesReader(t *testing.T) {
	agent, proxy := muxPair(t, MuxConfig{})
	_, as := streamPair(t, proxy, agent)
	errc := make(chan error, 1)
	go func() {
		_, err := as.Read(make([]byte, 10))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the Read block (it must return either way)
	as.Abort(proto.StreamCanceled)
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read = %v, want net.ErrClosed", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Abort did not wake a blocked Read")
	}
}

func TestMuxGarbage(t *testing.T) {
	tc, ts := tlsPair(t)
	go func() {
		tc.Write([]byte("GET / HTTP/1.1\r\nHost: proxy\r\n\r\n"))
	}()
	_, err := NewMuxServer(context.Background(), ts, MuxConfig{})
	if err == nil || !strings.Contains(err.Error(), "the peer does not speak yamux: yamux: Invalid protocol version: 71") {
		t.Fatalf("NewMuxServer = %v, want it to name the garbage", err)
	}
	tc.Close()
}

func TestMuxNoControlStream(t *testing.T) {
	tc, ts := tlsPair(t)
	defer tc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := NewMuxServer(ctx, ts, MuxConfig{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NewMuxServer = %v, want the context's deadline", err)
	}
}

func TestMuxKeepaliveTimeout(t *testing.T) {
	tc, ts := tlsPair(t)
	// The proxy's side answers nothing: it reads and drops.
	go io.Copy(io.Discard, ts)
	defer ts.Close()
	agent, err := NewMuxClient(tc, MuxConfig{KeepAlivePeriod: 50 * time.Millisecond, IdleTimeout: 1050 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-agent.Done():
	case <-time.After(waitFor):
		t.Fatal("a silent peer was not noticed")
	}
	if err := agent.Err(); !IsIdleTimeout(err) || !strings.Contains(err.Error(), "keepalive failed") {
		t.Fatalf("Err = %v, want an idle timeout", err)
	}
}

func TestMuxManyStreams(t *testing.T) {
	agent, proxy := muxPair(t, MuxConfig{AcceptBacklog: 16})
	// More opens at once than the backlog: they wait, none is refused.
	const n = 200
	errc := make(chan error, n)
	go func() {
		for range n {
			st, err := agent.AcceptStream(context.Background())
			if err != nil {
				errc <- err
				return
			}
			go func() {
				io.Copy(st, st)
				st.Close()
			}()
		}
	}()
	for i := range n {
		go func() {
			st, err := proxy.OpenStream(context.Background())
			if err != nil {
				errc <- err
				return
			}
			defer st.Close()
			msg := fmt.Sprintf("stream %d", i)
			st.Write([]byte(msg))
			st.CloseWrite()
			b, err := io.ReadAll(st)
			if err == nil && string(b) != msg {
				err = fmt.Errorf("echo %q, want %q", b, msg)
			}
			errc <- err
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkMux moves 1 MiB writes over one stream, read 32 KiB at a time.
func BenchmarkMux(b *testing.B) {
	for _, w := range []uint32{256 << 10, 1 << 20, 4 << 20, 16 << 20} {
		b.Run(fmt.Sprintf("win=%dK", w>>10), func(b *testing.B) {
			agent, proxy := muxPair(b, MuxConfig{StreamWindow: w})
			ps, as := streamPair(b, proxy, agent)
			done := make(chan int64, 1)
			go func() {
				n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, as, make([]byte, 32<<10))
				done <- n
			}()
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := ps.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			ps.CloseWrite()
			if n := <-done; n != int64(b.N)*int64(len(buf)) {
				b.Fatalf("read %d", n)
			}
			b.StopTimer()
			ps.Close()
			as.Close()
		})
	}
}

// writeCounter counts the writes to the TCP connection under TLS: each is
// one TLS record (crypto/tls writes a record at a time).
type writeCounter struct {
	net.Conn
	n atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.n.Add(1)
	return w.Conn.Write(p)
}

// A yamux data frame goes out with its header in the body's first record,
// not in a record of its own; frames without a body go out at once; the
// peer reads the same bytes in the same order.
func TestIOConnJoinsHeaderAndBody(t *testing.T) {
	wc := &writeCounter{}
	client, server := tlsPairWrap(t, func(c net.Conn) net.Conn { wc.Conn = c; return wc })
	defer client.Close()
	defer server.Close()
	c := &ioConn{Conn: client}

	header := func(typ byte, length uint32) []byte {
		h := make([]byte, yamuxHeaderSize)
		h[1] = typ
		binary.BigEndian.PutUint32(h[4:8], 3)
		binary.BigEndian.PutUint32(h[8:12], length)
		return h
	}
	var want bytes.Buffer
	write := func(p []byte) {
		t.Helper()
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
		want.Write(p)
	}
	records := func(what string, want int64) {
		t.Helper()
		if got := wc.n.Swap(0); got != want {
			t.Fatalf("%s: %d TLS records, want %d", what, got, want)
		}
	}
	// crypto/tls sends small records over the first 128 KiB of a
	// connection (dynamic record sizing); get past them.
	warm := make([]byte, 256<<10)
	write(warm)
	wc.n.Store(0)

	small := bytes.Repeat([]byte("s"), 100)
	write(header(yamuxTypeData, uint32(len(small))))
	records("a data header alone", 0)
	write(small)
	records("a data frame of 100 bytes", 1)

	write(header(1, 0)) // window update: no body
	records("a window update", 1)
	write(header(yamuxTypeData, 0)) // FIN without data
	records("a data header without a body", 1)

	big := make([]byte, 40<<10)
	for i := range big {
		big[i] = byte(i)
	}
	write(header(yamuxTypeData, uint32(len(big))))
	write(big)
	records("a data frame of 40 KiB", 3) // header + 16 KiB - 12, 16 KiB, the rest

	got := make([]byte, want.Len())
	server.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the peer read different bytes than were written")
	}
}
