package realip

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// logBuffer collects a text handler's lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type harness struct {
	l    net.Listener
	reg  *prometheus.Registry
	logs *logBuffer
}

// listen starts a wrapped TCP listener on loopback.
func listen(t *testing.T, cfg Config) *harness {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{reg: prometheus.NewRegistry(), logs: &logBuffer{}}
	cfg.Metrics = h.reg
	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.l, err = Listen(inner, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.l.Close() })
	return h
}

// dial connects to the listener, writes data, and returns the client side
// and the accepted server side.
func (h *harness) dial(t *testing.T, data []byte) (client, server net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", h.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if len(data) > 0 {
		if _, err := client.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	server, err = h.l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// count returns jumpgate_proxy_protocol_headers_total{result}.
func (h *harness) count(t *testing.T, result string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "jumpgate_proxy_protocol_headers_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no jumpgate_proxy_protocol_headers_total{result=%q}", result)
	return 0
}

func (h *harness) wantCounts(t *testing.T, want map[string]float64) {
	t.Helper()
	for _, r := range []string{resultOK, resultLocal, resultMissing, resultUntrusted, resultInvalid} {
		if got := h.count(t, r); got != want[r] {
			t.Errorf("jumpgate_proxy_protocol_headers_total{result=%q} = %v, want %v", r, got, want[r])
		}
	}
}

// readN reads exactly len(want) bytes and compares them.
func readN(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading %d bytes: %v (got %q)", len(want), err, got)
	}
	if string(got) != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

func TestListenTrusted(t *testing.T) {
	tests := []struct {
		name   string
		header []byte
		want   string // RemoteAddr; "" for the socket's
		result string
	}{
		{"v2 TCP4", v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 443)), "203.0.113.7:5000", resultOK},
		{"v2 TCP6", v2(0x21, 0x21, inet6("2001:db8::7", "2001:db8::1", 5000, 443)), "[2001:db8::7]:5000", resultOK},
		{"v2 TCP4 with TLVs", v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 443), tlv(0x01, "h2"), tlv(0xEA, "\x01vpce-1")), "203.0.113.7:5000", resultOK},
		{"v2 UDP4", v2(0x21, 0x12, inet4("203.0.113.7", "10.0.0.1", 5000, 443)), "203.0.113.7:5000", resultOK},
		{"v2 UDP6", v2(0x21, 0x22, inet6("2001:db8::7", "2001:db8::1", 5000, 443)), "[2001:db8::7]:5000", resultOK},
		{"v2 LOCAL", v2(0x20, 0x00, nil), "", resultLocal},
		{"v2 UNSPEC", v2(0x21, 0x00, nil), "", resultLocal},
		{"v2 UNIX", v2(0x21, 0x31, unixAddrs("/a", "/b")), "", resultLocal},
		{"v1 TCP4", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 5000 443\r\n"), "203.0.113.7:5000", resultOK},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 5000 443\r\n"), "[2001:db8::7]:5000", resultOK},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), "", resultLocal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := listen(t, Config{Trusted: loopback, Required: true})
			client, server := h.dial(t, append(tt.header, payload...))
			want := tt.want
			if want == "" {
				want = client.LocalAddr().String()
			}
			if got := server.RemoteAddr().String(); got != want {
				t.Errorf("RemoteAddr = %s, want %s", got, want)
			}
			if got, ok := FromConn(tls.Server(server, &tls.Config{})); !ok || got.String() != want {
				t.Errorf("FromConn(tls.Server(conn)) = %v, %v; want %s, true", got, ok, want)
			}
			readN(t, server, payload)
			// The connection goes on both ways after the header.
			client.Write([]byte("more"))
			readN(t, server, "more")
			server.Write([]byte("reply"))
			readN(t, client, "reply")
			h.wantCounts(t, map[string]float64{tt.result: 1})
			if s := h.logs.String(); strings.Contains(s, "level=WARN") {
				t.Errorf("unexpected warning:\n%s", s)
			}
		})
	}
}

func TestListenUntrusted(t *testing.T) {
	notLoopback := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	for _, tt := range []struct {
		name    string
		data    []byte
		version string
	}{
		{"v2", append(v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 443)), payload...), "2"},
		{"v1", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 5000 443\r\n" + payload), "1"},
		{"no header", []byte(payload), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := listen(t, Config{Trusted: notLoopback, Required: true})
			client, server := h.dial(t, tt.data)
			if got, want := server.RemoteAddr().String(), client.LocalAddr().String(); got != want {
				t.Errorf("RemoteAddr = %s, want the socket's peer %s", got, want)
			}
			// Not parsed: every byte reaches Read unchanged.
			readN(t, server, string(tt.data))
			if got, ok := FromConn(server); !ok || got.String() != client.LocalAddr().String() {
				t.Errorf("FromConn = %v, %v; want %s, true", got, ok, client.LocalAddr())
			}
			logs := h.logs.String()
			if tt.version == "" {
				h.wantCounts(t, nil)
				if logs != "" {
					t.Errorf("logged for a connection without a header:\n%s", logs)
				}
				return
			}
			h.wantCounts(t, map[string]float64{resultUntrusted: 1})
			want := `level=WARN msg="PROXY protocol header from an untrusted peer: ignored" remote=` + client.LocalAddr().String() + " version=" + tt.version
			if !strings.Contains(logs, want) {
				t.Errorf("logs lack\n%s\ngot:\n%s", want, logs)
			}
		})
	}
}

func TestListenNoneTrusted(t *testing.T) {
	h := listen(t, Config{})
	client, server := h.dial(t, v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 443)))
	if got, want := server.RemoteAddr().String(), client.LocalAddr().String(); got != want {
		t.Errorf("RemoteAddr = %s, want %s", got, want)
	}
}

func TestListenRequiredMissing(t *testing.T) {
	h := listen(t, Config{Trusted: loopback, Required: true})
	client, server := h.dial(t, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	_, err := server.Read(make([]byte, 100))
	want := "realip: no PROXY protocol header from load balancer " + client.LocalAddr().String() +
		", and this listener requires one: make the load balancer send PROXY protocol v1 or v2, or unset Required"
	if err == nil || err.Error() != want {
		t.Fatalf("Read error %v\nwant            %s", err, want)
	}
	if !errors.Is(err, ErrNoHeader) {
		t.Errorf("error does not match ErrNoHeader")
	}
	if _, werr := server.Write([]byte("x")); werr != err {
		t.Errorf("Write after a refused header: %v, want the same error", werr)
	}
	if _, ok := FromConn(server); ok {
		t.Errorf("FromConn reports ok for a refused connection")
	}
	// The client sees the connection closed.
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := client.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("client Read = %d, %v; want the connection closed", n, err)
	}
	h.wantCounts(t, map[string]float64{resultMissing: 1})
	if logs := h.logs.String(); !strings.Contains(logs, `level=WARN msg="PROXY protocol header refused: connection closed" remote=`+client.LocalAddr().String()) {
		t.Errorf("no warning logged:\n%s", logs)
	}
}

func TestListenOptionalMissing(t *testing.T) {
	h := listen(t, Config{Trusted: loopback})
	client, server := h.dial(t, []byte(payload))
	if got, want := server.RemoteAddr().String(), client.LocalAddr().String(); got != want {
		t.Errorf("RemoteAddr = %s, want %s", got, want)
	}
	readN(t, server, payload)
	h.wantCounts(t, map[string]float64{resultMissing: 1})
}

func TestListenInvalid(t *testing.T) {
	h := listen(t, Config{Trusted: loopback})
	client, server := h.dial(t, append(v2lenOverride(65535, nil), payload...))
	_, err := server.Read(make([]byte, 100))
	want := "realip: PROXY v2 header: length 65535 exceeds the 4096-byte limit (from load balancer " + client.LocalAddr().String() + "; connection closed)"
	if err == nil || err.Error() != want {
		t.Fatalf("Read error %v\nwant            %s", err, want)
	}
	if got := server.RemoteAddr().String(); got != client.LocalAddr().String() {
		t.Errorf("RemoteAddr after a refused header = %s, want the socket's peer", got)
	}
	h.wantCounts(t, map[string]float64{resultInvalid: 1})
}

// TestListenHealthCheck: a load balancer's TCP check connects and closes.
// Nothing to refuse, nothing to warn about.
func TestListenHealthCheck(t *testing.T) {
	h := listen(t, Config{Trusted: loopback, Required: true})
	client, server := h.dial(t, nil)
	client.Close()
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("Read = %v, want io.EOF", err)
	}
	h.wantCounts(t, map[string]float64{resultMissing: 1})
	if logs := h.logs.String(); strings.Contains(logs, "level=WARN") {
		t.Errorf("a health check logged a warning:\n%s", logs)
	}
}

// TestListenServerSpeaksFirst: Write needs no header, so a server that sends
// a banner first (SSH) works behind a load balancer.
func TestListenServerSpeaksFirst(t *testing.T) {
	h := listen(t, Config{Trusted: loopback, Required: true})
	client, server := h.dial(t, nil)
	if _, err := server.Write([]byte("SSH-2.0-jumpgate\r\n")); err != nil {
		t.Fatal(err)
	}
	readN(t, client, "SSH-2.0-jumpgate\r\n")
	client.Write(append(v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 22)), "SSH-2.0-OpenSSH\r\n"...))
	readN(t, server, "SSH-2.0-OpenSSH\r\n")
	if got := server.RemoteAddr().String(); got != "203.0.113.7:5000" {
		t.Errorf("RemoteAddr = %s", got)
	}
}

// TestSlowHeaderDoesNotBlockAccept: a client that sends half a signature and
// stalls must not keep the next client waiting.
func TestSlowHeaderDoesNotBlockAccept(t *testing.T) {
	h := listen(t, Config{Trusted: loopback, HeaderTimeout: time.Hour})
	accepted := make(chan net.Conn)
	go func() {
		for {
			c, err := h.l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	next := func() net.Conn {
		select {
		case c := <-accepted:
			t.Cleanup(func() { c.Close() })
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("Accept is blocked")
			return nil
		}
	}

	slowClient, err := net.Dial("tcp", h.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slowClient.Close()
	slowClient.Write(sigV2[:4])
	slow := next()
	slowAddr := make(chan string)
	go func() { slowAddr <- slow.RemoteAddr().String() }() // waits for the header

	fastClient, err := net.Dial("tcp", h.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fastClient.Close()
	fastClient.Write(append(v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 443)), payload...))
	fast := next()
	if got := fast.RemoteAddr().String(); got != "203.0.113.7:5000" {
		t.Errorf("fast client's RemoteAddr = %s", got)
	}
	readN(t, fast, payload)

	select {
	case a := <-slowAddr:
		t.Fatalf("the slow client's RemoteAddr returned %s before its header", a)
	default:
	}
	// The slow client gives up: its header is cut short.
	slowClient.Close()
	if got := <-slowAddr; got != slowClient.LocalAddr().String() {
		t.Errorf("slow client's RemoteAddr = %s, want the socket's peer", got)
	}
	_, err = slow.Read(make([]byte, 1))
	if err == nil || !strings.Contains(err.Error(), "realip: PROXY header: signature cut short after 4 bytes: unexpected EOF") {
		t.Errorf("slow client's Read error = %v", err)
	}
}

// pipeListener hands out net.Pipe server ends that claim a TCP peer address,
// so that tests can run under testing/synctest's fake clock.
type pipeListener struct {
	conns chan net.Conn
}

type pipeConn struct {
	net.Conn
	remote net.Addr
}

func (c pipeConn) RemoteAddr() net.Addr { return c.remote }

func (l *pipeListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *pipeListener) Close() error   { return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443} }

// pipeDial returns the client end of a new connection from peer and the
// server end accepted through a Listen listener with cfg.
func pipeDial(t *testing.T, cfg Config, peer string) (client net.Conn, server net.Conn, logs *logBuffer) {
	t.Helper()
	logs = &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	pl := &pipeListener{conns: make(chan net.Conn, 1)}
	l, err := Listen(pl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, s := net.Pipe()
	pl.conns <- pipeConn{Conn: s, remote: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(peer))}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c, server, logs
}

var tenSlash8 = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}

func TestHeaderTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server, logs := pipeDial(t, Config{Trusted: tenSlash8, HeaderTimeout: 3 * time.Second}, "10.0.0.5:40000")
		defer client.Close()
		go client.Write(sigV2[:6])
		start := time.Now()
		_, err := server.Read(make([]byte, 10))
		want := "realip: the PROXY header from load balancer 10.0.0.5:40000 did not arrive in full within 3s: connection closed"
		if err == nil || err.Error() != want {
			t.Fatalf("Read error %v\nwant            %s", err, want)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the error does not match os.ErrDeadlineExceeded")
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Errorf("refused after %v, want 3s", d)
		}
		if !strings.Contains(logs.String(), "level=WARN") {
			t.Errorf("no warning logged")
		}
	})
}

func TestHeaderTimeoutRequiredNothingSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server, _ := pipeDial(t, Config{Trusted: tenSlash8, Required: true}, "10.0.0.5:40000")
		defer client.Close()
		start := time.Now()
		_, err := server.Read(make([]byte, 10))
		want := "realip: no PROXY protocol header within 5s from load balancer 10.0.0.5:40000, and this listener requires one: make the load balancer send PROXY protocol v1 or v2, or unset Required"
		if err == nil || err.Error() != want {
			t.Fatalf("Read error %v\nwant            %s", err, want)
		}
		if d := time.Since(start); d != DefaultHeaderTimeout {
			t.Errorf("refused after %v, want the default %v", d, DefaultHeaderTimeout)
		}
	})
}

// TestHeaderTimeoutOptional: without Required, a trusted peer silent for
// HeaderTimeout is served with its socket address, and the read deadline is
// cleared again.
func TestHeaderTimeoutOptional(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server, _ := pipeDial(t, Config{Trusted: tenSlash8, HeaderTimeout: time.Second}, "10.0.0.5:40000")
		defer client.Close()
		if got := server.RemoteAddr().String(); got != "10.0.0.5:40000" {
			t.Errorf("RemoteAddr = %s", got)
		}
		go func() {
			time.Sleep(time.Minute) // fake time: well past HeaderTimeout
			client.Write([]byte("late"))
		}()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "late" {
			t.Fatalf("Read = %q, %v", buf, err)
		}
	})
}

// TestCallerDeadlineKept: a read deadline set before the first Read (as
// http.Server does) bounds the header too, and holds after it.
func TestCallerDeadlineKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server, _ := pipeDial(t, Config{Trusted: tenSlash8}, "10.0.0.5:40000")
		defer client.Close()
		start := time.Now()
		server.SetReadDeadline(start.Add(time.Minute))
		go client.Write(v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 443)))
		if got := server.RemoteAddr().String(); got != "203.0.113.7:5000" {
			t.Errorf("RemoteAddr = %s", got)
		}
		_, err := server.Read(make([]byte, 1))
		if !isTimeout(err) {
			t.Fatalf("Read = %v, want a timeout", err)
		}
		if d := time.Since(start); d != time.Minute {
			t.Errorf("Read timed out after %v, want the caller's 1m", d)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestListenConfigErrors(t *testing.T) {
	inner := &pipeListener{}
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Required: true}, "realip: Config.Required is set but Config.Trusted is empty: list the load balancers' addresses in Trusted"},
		{Config{Trusted: []netip.Prefix{loopback[0], {}}}, "realip: Config.Trusted[1] is not a valid prefix (write it as 10.0.0.0/8 or 2001:db8::/32)"},
		{Config{HeaderTimeout: -time.Second}, "realip: Config.HeaderTimeout is negative (-1s)"},
	} {
		if _, err := Listen(inner, tt.cfg); err == nil || err.Error() != tt.want {
			t.Errorf("Listen(%+v) = %v, want %s", tt.cfg, err, tt.want)
		}
	}
	if _, err := Listen(nil, Config{}); err == nil {
		t.Error("Listen(nil) succeeded")
	}
}

// TestListenSharedRegistry: a proxy's TLS and HTTPS listeners register the
// same counter in one registry.
func TestListenSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := Listen(&pipeListener{}, Config{Metrics: reg}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestContainsAddr(t *testing.T) {
	prefixes := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::ffff:192.0.2.0/120"), netip.MustParsePrefix("fe80::/10")}
	for addr, want := range map[string]bool{
		"10.1.2.3":         true,
		"::ffff:10.1.2.3":  true,
		"192.0.2.77":       true,
		"192.0.3.1":        false,
		"fe80::1%eth0":     true,
		"2001:db8::1":      false,
		"::ffff:192.0.3.1": false,
	} {
		if got := containsAddr(prefixes, netip.MustParseAddr(addr)); got != want {
			t.Errorf("containsAddr(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestFromConnPlain(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	if _, ok := FromConn(s); ok {
		t.Error("FromConn(net.Pipe) reports an IP address")
	}
	if _, ok := FromConn(nil); ok {
		t.Error("FromConn(nil) reports ok")
	}
	pc := pipeConn{Conn: s, remote: net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[::ffff:192.0.2.1]:80"))}
	if got, ok := FromConn(tls.Client(pc, &tls.Config{})); !ok || got.String() != "192.0.2.1:80" {
		t.Errorf("FromConn = %v, %v", got, ok)
	}
}
