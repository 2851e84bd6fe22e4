package peer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
)

// logBuf collects log output; see authtest.LogBuf.
type logBuf = authtest.LogBuf

const (
	cluster = "prod"
	waitFor = 10 * time.Second
)

// TestMain runs the tests, then checks that no goroutine of this package or
// of quic-go survives them.
func TestMain(m *testing.M) { authtest.MainLeakCheck(m, leakMarkers...) }

// leakMarkers are stack frames that betray a goroutine of this package
// (including the tests' own helpers) or of quic-go.
var leakMarkers = []string{"jumpgate.dev/jumpgate/mesh/peer", "github.com/quic-go/quic-go"}

// checkLeaks fails t, at its end, if goroutines of this package or quic-go
// still run a few seconds after its other cleanups. Call it first in a test
// so that its cleanup runs last.
func checkLeaks(t testing.TB) { t.Helper(); authtest.CheckLeaks(t, leakMarkers...) }

// env is a cluster: its CA, a TCP echo server standing in for nodes, and the
// proxies started in it.
type env struct {
	t    testing.TB
	ca   *authtest.CA
	echo string // address of the TCP echo server

	mu   sync.Mutex
	seen []seenDial // dials the proxies' handlers received
}

type seenDial struct {
	holder, from string
	req          DialRequest
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, ca: authtest.NewCA(t, "prod TLS CA")}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.echo = ln.Addr().String()
	serveEcho(t, ln)
	return e
}

func (e *env) seenDials() []seenDial {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]seenDial(nil), e.seen...)
}

// proxy is one running Mesh.
type proxy struct {
	id     string
	m      *Mesh
	pc     net.PacketConn
	addr   string
	reg    *prometheus.Registry
	log    *logBuf
	served chan error
	once   sync.Once
}

func newLogger(t testing.TB, name string) (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", name, lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

func (e *env) proxyCert(id string) *tls.Certificate {
	return e.ca.Issue(e.t, identity.Identity{Kind: identity.KindProxy, Name: id, Cluster: cluster})
}

// start runs proxy id on a new loopback port with a certificate for id.
func (e *env) start(id string, mutate ...func(*Config)) *proxy {
	e.t.Helper()
	return e.startAt(id, "127.0.0.1:0", e.proxyCert(id), mutate...)
}

// startAt runs proxy id on addr, presenting cert.
func (e *env) startAt(id, addr string, cert *tls.Certificate, mutate ...func(*Config)) *proxy {
	t := e.t
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{id: id, pc: pc, addr: pc.LocalAddr().String(), reg: prometheus.NewRegistry(), served: make(chan error, 1)}
	var logger *slog.Logger
	logger, p.log = newLogger(t, "proxy "+id+" "+p.addr)
	cfg := Config{
		ID:                   id,
		ClusterName:          cluster,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		RootCAs:              e.ca.Pool,
		Handler: HandlerFunc(func(ctx context.Context, from string, req DialRequest) (net.Conn, error) {
			return e.handle(ctx, id, from, req)
		}),
		DialTimeout: 5 * time.Second,
		Logger:      logger,
		Metrics:     p.reg,
	}
	for _, f := range mutate {
		f(&cfg)
	}
	p.m, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { p.served <- p.m.Serve(pc) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop closes the proxy and its socket; it may be called more than once.
func (p *proxy) stop(t testing.TB) {
	p.once.Do(func() {
		p.m.Close()
		if err := <-p.served; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve of %s returned %v, want ErrClosed", p.id, err)
		}
		p.pc.Close()
	})
}

// crash stops the proxy the hard way: its socket goes first, so no
// CONNECTION_CLOSE reaches its peers.
func (p *proxy) crash(t testing.TB) {
	p.once.Do(func() {
		p.pc.Close()
		p.m.Close()
		<-p.served // the socket's error or ErrClosed, whichever came first
	})
}

// handle is every test proxy's Handler. The node name says what to do.
func (e *env) handle(ctx context.Context, holder, from string, req DialRequest) (net.Conn, error) {
	e.mu.Lock()
	e.seen = append(e.seen, seenDial{holder: holder, from: from, req: req})
	e.mu.Unlock()
	switch req.Node {
	case "offline":
		return nil, &Error{Code: CodeOffline, Message: fmt.Sprintf("node %s has no tunnel to proxy %s", req.Node, holder)}
	case "denied":
		return nil, &Error{Code: CodeDenied, Message: "user " + req.User + " may not reach node denied"}
	case "strange":
		return nil, &Error{Code: "frobnicated", Message: "a code this version does not know"}
	case "broken":
		return nil, errors.New("tunnel broke: agent went away")
	case "slow":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", e.echo)
}

// dial dials node through peer q and fails the test on error.
func (p *proxy) dial(t testing.TB, q *proxy, node string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := p.m.Dial(ctx, q.id, q.addr, DialRequest{Node: node, User: "alice", ClientAddr: "203.0.113.7:51234"})
	if err != nil {
		t.Fatalf("%s dials %s via %s: %v", p.id, node, q.id, err)
	}
	return c
}

func (p *proxy) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return gatherValue(t, p.reg, name, labels...)
}

// waitMetric waits until a metric of p has the value want. The holder
// counts a stream's outcome after answering it, so the dialer may know
// before the metric does.
func (p *proxy) waitMetric(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	authtest.WaitFor(t, waitFor, fmt.Sprintf("%s%v to be %v at %s", name, labels, want, p.id), func() bool {
		return p.metric(t, name, labels...) == want
	})
}

func gatherValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	return authtest.Metric(t, reg, name, labels...)
}

// metricSum adds a counter's series over all label values.
func (p *proxy) metricSum(t testing.TB, name string) float64 {
	t.Helper()
	return authtest.MetricSum(t, p.reg, name)
}

// connCount counts the connections m runs, live and superseded.
func (m *Mesh) connCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

func (m *Mesh) streamCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.openStreams
}

// serveEcho accepts connections from ln and echoes each one back, then
// half-closes it.
func serveEcho(t testing.TB, ln net.Listener) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// echoRoundTrip writes n random bytes on c, half-closes, and checks that
// the same bytes come back, followed by EOF.
func echoRoundTrip(t testing.TB, c net.Conn, n int) {
	t.Helper()
	payload := make([]byte, n)
	rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	c.SetReadDeadline(time.Now().Add(waitFor))
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read echo after %d bytes: %v", got, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if want := sha256.Sum256(payload); got != int64(n) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo returned %d bytes (sha256 %x), want %d bytes (sha256 %x)", got, h.Sum(nil), n, want)
	}
}

// echoOnce exchanges one message on an open conn without closing it.
func echoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(waitFor))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write on live conn: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo on live conn = %q, %v", buf, err)
	}
}

// rawDial connects to a proxy's peer port as a hand-made QUIC client, to
// play parts a Mesh never plays. cert nil means no client certificate.
func rawDial(t testing.TB, addr string, cert *tls.Certificate, alpn string) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	tc := &tls.Config{
		NextProtos:         []string{alpn},
		InsecureSkipVerify: true, // this test client trusts the test proxy
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		},
	}
	qc, err := quic.DialAddr(ctx, addr, tc, &quic.Config{})
	if err == nil {
		t.Cleanup(func() { qc.CloseWithError(0, "") })
	}
	return qc, err
}

// rawExchange sends frame on a new stream of qc and reads one frame back.
func rawExchange(t testing.TB, qc *quic.Conn, frame []byte) (response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return response{}, err
	}
	defer st.CancelRead(0)
	defer st.CancelWrite(0)
	st.SetDeadline(time.Now().Add(waitFor))
	if _, err := st.Write(frame); err != nil {
		return response{}, err
	}
	typ, body, err := readFrame(st)
	if err != nil {
		return response{}, err
	}
	return decodeResponse(typ, body)
}

func mustRequest(t testing.TB, req DialRequest) []byte {
	t.Helper()
	b, err := encodeRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawFrame(typ frameType, body string) []byte {
	b, _ := appendFrame(nil, typ, []byte(body))
	return b
}

// dialErr dials and requires an *Error; it returns it and the error text.
func dialErr(t testing.TB, p *proxy, peerID, addr string, req DialRequest) (*Error, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := p.m.Dial(ctx, peerID, addr, req)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s via %s succeeded, want an error", req.Node, peerID)
	}
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("dial error %v (%T) has no *Error", err, err)
	}
	return pe, err.Error()
}

func identityOf(kind, name, clusterName string) identity.Identity {
	return identity.Identity{Kind: identity.Kind(kind), Name: name, Cluster: clusterName}
}
