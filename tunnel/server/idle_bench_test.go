package server_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/internal/transport"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
	"jumpgate.dev/jumpgate/tunnel/udpgro"
)

// What BenchmarkIdleTunnels tells its client process (TestIdleTunnelClients)
// through the environment.
const (
	idleClientsEnv = "JUMPGATE_IDLE_CLIENTS" // how many tunnels to open
	idleAddrEnv    = "JUMPGATE_IDLE_ADDR"    // the proxy's UDP address
	idleCAEnv      = "JUMPGATE_IDLE_CA"      // a PEM file: the CA's certificate and key
	idleTimeoutEnv = "JUMPGATE_IDLE_TIMEOUT" // the tunnels' idle timeout (keepalive: a third)
)

const (
	// idleConnsPerSocket is how many tunnels the client process carries
	// on one UDP socket (one quic.Transport).
	idleConnsPerSocket = 1000
	// idleDialers is how many tunnels the client process opens at once.
	idleDialers = 64
	// idleDialAttempts is how often a client tries one tunnel before the
	// run fails.
	idleDialAttempts = 5
	// idleConnectTimeout bounds the time to bring all tunnels up.
	idleConnectTimeout = 2 * time.Minute
	// idleSettle lets the handshakes' state drain (retransmission timers,
	// handshake keys dropped) before memory is measured.
	idleSettle = 3 * time.Second
	// idleWindow is how long idle CPU is measured at least: four keepalive
	// periods at the default idle timeout, and never less than two.
	idleWindow = 20 * time.Second

	// The targets of the performance issue.
	idleTargetKiB     = 64  // memory per idle tunnel, KiB
	idleTargetCorePct = 5.0 // % of one core for 10,000 idle tunnels
	idleTargetTunnels = 10000
)

// BenchmarkIdleTunnels measures what idle tunnels cost a proxy: a real
// tunnel server serves QUIC on loopback in this process, and a child
// process (this test binary again, running TestIdleTunnelClients) opens N
// tunnels to it as N agents would: a QUIC connection with the agent's
// defaults (5 s keepalive, 15 s idle timeout), its own node certificate,
// the Hello and HelloAck, then nothing. The agents live in another process
// so that the figures are the proxy's alone. One iteration is the whole
// scenario; the metrics are averages over b.N iterations:
//
//   - KiB/tunnel-heap: Go heap in use plus goroutine stacks, after forced
//     garbage collections, once all tunnels are up, minus the same before
//     the first tunnel, divided by N;
//   - KiB/tunnel-rss: the process's resident set (VmRSS) at the end of the
//     idle window, with no forced collection (what an operator sees),
//     minus the resident set before the first tunnel (after a collection
//     that returned free memory to the system, so this errs high);
//   - %core-idle: user and system CPU of this process over idleWindow
//     with every tunnel idle (only keepalives flowing), in % of one core;
//   - s-to-connect: from the first dial to all N tunnels registered at the
//     proxy (the client process dials idleDialers at a time, on a machine
//     it shares with the proxy).
//
// The targets are at most 64 KiB per idle tunnel and under 5% of one core
// for 10,000 idle tunnels. Run it alone and once, with nothing else busy:
//
//	go test -run '^$' -bench IdleTunnels -benchtime 1x -timeout 20m ./tunnel/server
//
// The sub-benchmarks named 10000-idle=... run 10,000 tunnels with a longer
// tunnel_idle_timeout on both ends (keepalives every third of it), the
// setting that trades CPU at idle against noticing a vanished peer later.
func BenchmarkIdleTunnels(b *testing.B) {
	raiseFDLimit(b)
	cases := []struct {
		name string
		n    int
		idle time.Duration
	}{
		{"1000", 1000, agent.DefaultMaxIdleTimeout},
		{"10000", 10000, agent.DefaultMaxIdleTimeout},
		{"10000-idle=60s", 10000, time.Minute},
		{"10000-idle=120s", 10000, 2 * time.Minute},
	}
	for _, tc := range cases {
		n := tc.n
		b.Run(tc.name, func(b *testing.B) {
			var sum idleResult
			for range b.N {
				r := idleTunnelsOnce(b, n, tc.idle)
				sum.heapKiB += r.heapKiB
				sum.rssKiB += r.rssKiB
				sum.corePct += r.corePct
				sum.connect += r.connect
			}
			N := float64(b.N)
			avg := idleResult{heapKiB: sum.heapKiB / N, rssKiB: sum.rssKiB / N, corePct: sum.corePct / N, connect: sum.connect / time.Duration(b.N)}
			b.ReportMetric(avg.heapKiB, "KiB/tunnel-heap")
			b.ReportMetric(avg.rssKiB, "KiB/tunnel-rss")
			b.ReportMetric(avg.corePct, "%core-idle")
			b.ReportMetric(avg.connect.Seconds(), "s-to-connect")
			b.Log(avg.summary(n))
		})
	}
}

type idleResult struct {
	heapKiB, rssKiB, corePct float64
	connect                  time.Duration
}

// summary is one line with the figures and the targets.
func (r idleResult) summary(n int) string {
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	mem := fmt.Sprintf("heap %s, RSS %s", met(r.heapKiB <= idleTargetKiB), met(r.rssKiB <= idleTargetKiB))
	// The CPU target is for 10,000 tunnels.
	cpu := "applies to 10,000 tunnels"
	if n >= idleTargetTunnels {
		cpu = met(r.corePct < idleTargetCorePct)
	}
	return fmt.Sprintf("%d idle tunnels: %.1f KiB/tunnel heap, %.1f KiB/tunnel RSS (target ≤ %d KiB: %s); "+
		"%.2f%% of one core idle (target < %.0f%% for 10,000: %s); connected in %.1f s",
		n, r.heapKiB, r.rssKiB, idleTargetKiB, mem, r.corePct, idleTargetCorePct, cpu, r.connect.Seconds())
}

// idleTunnelsOnce runs the scenario once with n tunnels.
func idleTunnelsOnce(b *testing.B, n int, idle time.Duration) idleResult {
	ca := servertest.NewCA(b, "idle bench CA")
	caFile := writeIdleCA(b, ca)
	proxyCert := ca.Issue(b, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: cluster})

	// Warnings and errors only, kept for a failure: a proxy's info log
	// goes to its output, not to its heap.
	plog := &logBuf{}
	defer func() {
		if b.Failed() {
			b.Logf("proxy log (warnings and errors):\n%s", plog.String())
		}
	}()
	reg := prometheus.NewRegistry()
	pc, err := udpgro.Listen("127.0.0.1:0") // as the proxy does
	if err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(server.Config{
		ProxyID:        "p1",
		ClusterName:    cluster,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return proxyCert, nil },
		ClientCAs:      ca.Pool,
		Logger:         slog.New(slog.NewTextHandler(plog, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Metrics:        reg,
		// As cmd/jumpgate sets them from proxy.tunnel_idle_timeout.
		MaxIdleTimeout: idle, KeepAlivePeriod: idle / 3,
	})
	if err != nil {
		pc.Close()
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, server.ErrServerClosed) {
			b.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		pc.Close()
	}()
	connected := func() int { return int(gatherValue(b, reg, "jumpgate_tunnel_connected_nodes")) }

	before := measureIdleMemory()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleTunnelClients$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		idleClientsEnv+"="+strconv.Itoa(n),
		idleAddrEnv+"="+pc.LocalAddr().String(),
		idleCAEnv+"="+caFile,
		idleTimeoutEnv+"="+idle.String(),
	)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	clog := &logBuf{} // everything the client process writes
	cmd.Stderr = clog
	if err := cmd.Start(); err != nil {
		b.Fatalf("start the client process: %v", err)
	}
	// The client's stdout is read to its end so that Wait may follow;
	// its "dialing" and "ready" lines are passed on.
	lines := make(chan string, 8)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l := sc.Text()
			clog.Write([]byte(l + "\n"))
			if strings.HasPrefix(l, "dialing") || strings.HasPrefix(l, "ready") {
				select {
				case lines <- l:
				default:
				}
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	defer func() {
		// Closing stdin tells the client process to close its tunnels
		// and exit.
		stdin.Close()
		waited := make(chan error, 1)
		go func() {
			<-readDone
			waited <- cmd.Wait()
		}()
		select {
		case err := <-waited:
			if err != nil {
				b.Errorf("client process: %v\n%s", err, clog.String())
			}
		case <-time.After(idleConnectTimeout):
			cmd.Process.Kill()
			<-waited
			b.Errorf("client process did not exit within %v of its stdin closing; killed it\n%s", idleConnectTimeout, clog.String())
		}
	}()

	// The client process issues its node certificates, then dials.
	select {
	case l, ok := <-lines:
		if !ok {
			b.Fatalf("the client process exited before dialing:\n%s", clog.String())
		}
		if l != "dialing" {
			b.Fatalf("the client process said %q, want \"dialing\"", l)
		}
	case <-time.After(idleConnectTimeout):
		b.Fatalf("the client process did not issue its %d node certificates within %v:\n%s", n, idleConnectTimeout, clog.String())
	}
	start := time.Now()
	deadline := time.After(idleConnectTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	ready := ""
	for ready == "" || connected() < n {
		select {
		case l, ok := <-lines:
			if !ok {
				b.Fatalf("the client process exited before its %d tunnels were up (the proxy has %d):\n%s", n, connected(), clog.String())
			}
			ready = l
		case <-tick.C:
		case <-deadline:
			tick.Stop()
			state := "is not ready"
			if ready != "" {
				state = "said " + ready
			}
			b.Fatalf("after %v the proxy has %d of %d nodes connected, and the client process %s:\n%s",
				idleConnectTimeout, connected(), n, state, clog.String())
		}
	}
	tick.Stop()
	connect := time.Since(start)
	b.Logf("%d tunnels up in %v; client process: %s", n, connect.Round(time.Millisecond), ready)

	time.Sleep(idleSettle) // the measurement's protocol: let the handshakes' state go
	after := measureIdleMemory()
	// JUMPGATE_IDLE_HEAPPROFILE=file writes the proxy's heap once every
	// tunnel is up and settled.
	if f := os.Getenv("JUMPGATE_IDLE_HEAPPROFILE"); f != "" {
		if err := writeHeapProfile(f); err != nil {
			b.Fatal(err)
		}
	}

	// JUMPGATE_IDLE_CPUPROFILE=file profiles the proxy over the idle window.
	if f := os.Getenv("JUMPGATE_IDLE_CPUPROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			b.Fatal(err)
		}
	}
	u0, s0 := processCPU()
	t0 := time.Now()
	window := max(idleWindow, 2*idle/3)
	time.Sleep(window) // the measurement window: nothing runs here but the proxy
	u1, s1 := processCPU()
	pprof.StopCPUProfile()
	wall := time.Since(t0)
	user, sys := u1-u0, s1-s0
	rss := vmRSS()

	if got := connected(); got != n {
		b.Fatalf("%d of %d tunnels were lost during the %v idle window: keepalives did not keep them up", n-got, n, window)
	}
	r := idleResult{
		heapKiB: float64(int64(after.heap)-int64(before.heap)) / float64(n) / 1024,
		rssKiB:  float64(int64(rss)-int64(before.rss)) / float64(n) / 1024,
		corePct: 100 * (user + sys).Seconds() / wall.Seconds(),
		connect: connect,
	}
	b.Logf("idle window %v: CPU %v user + %v system", wall.Round(time.Millisecond), user.Round(time.Millisecond), sys.Round(time.Millisecond))
	b.Logf("heap+stacks %d → %d KiB (stacks %d → %d KiB, goroutines %d → %d: %.1f per tunnel); "+
		"RSS %d KiB before, %d KiB after collecting and scavenging, %d KiB at the end of the idle window",
		before.heap>>10, after.heap>>10, before.stack>>10, after.stack>>10,
		before.goroutines, after.goroutines, float64(after.goroutines-before.goroutines)/float64(n),
		before.rss>>10, after.rss>>10, rss>>10)
	return r
}

// idleMemory is what the proxy's process holds: Go heap in use plus
// goroutine stacks (heap), the stacks alone, and its resident set, in
// bytes; and its goroutines.
type idleMemory struct {
	heap, stack, rss uint64
	goroutines       int
}

// measureIdleMemory collects garbage, returns free memory to the system
// and measures.
func measureIdleMemory() idleMemory {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return idleMemory{heap: ms.HeapInuse + ms.StackInuse, stack: ms.StackInuse, rss: vmRSS(), goroutines: runtime.NumGoroutine()}
}

// vmRSS returns this process's resident set in bytes (0 if unknown).
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseUint(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}

// processCPU returns the CPU time this process has used in user and in
// system mode.
func processCPU() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// raiseFDLimit raises the soft limit on open files to the hard limit.
func raiseFDLimit(tb testing.TB) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		tb.Logf("getrlimit: %v", err)
		return
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			tb.Logf("setrlimit: %v", err)
		}
	}
}

// writeIdleCA writes the CA's certificate and key for the client process,
// which issues its node certificates itself.
func writeIdleCA(b *testing.B, ca *servertest.CA) string {
	key, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		b.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key})...)
	path := filepath.Join(b.TempDir(), "ca.pem")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// readIdleCA reads what writeIdleCA wrote.
func readIdleCA(path string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var (
		cert *x509.Certificate
		key  *ecdsa.PrivateKey
	)
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			cert, err = x509.ParseCertificate(blk.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(blk.Bytes)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	if cert == nil || key == nil {
		return nil, nil, fmt.Errorf("%s: want a CERTIFICATE and an EC PRIVATE KEY", path)
	}
	return cert, key, nil
}

// issueIdleNodeCert issues a node certificate for name with an Ed25519 key
// (cheap to make by the ten thousand).
func issueIdleNodeCert(caCert *x509.Certificate, caKey *ecdsa.PrivateKey, name string) (*tls.Certificate, error) {
	subject, exts, err := identity.Identity{Kind: identity.KindNode, Name: name, Cluster: cluster}.TLSSubject()
	if err != nil {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         subject,
		ExtraExtensions: exts,
		NotBefore:       time.Now().Add(-time.Hour),
		NotAfter:        time.Now().Add(24 * time.Hour),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, pub, caKey)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// TestIdleTunnelClients is BenchmarkIdleTunnels' client process: it opens
// $JUMPGATE_IDLE_CLIENTS tunnels to the proxy at $JUMPGATE_IDLE_ADDR, as
// that many agents would, prints "ready", keeps them idle until its stdin
// closes, then closes them. Without the variable it skips.
func TestIdleTunnelClients(t *testing.T) {
	nStr := os.Getenv(idleClientsEnv)
	if nStr == "" {
		t.Skip("the client process of BenchmarkIdleTunnels; it runs only when the benchmark starts it")
	}
	n, err := strconv.Atoi(nStr)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", idleClientsEnv, nStr)
	}
	addr := os.Getenv(idleAddrEnv)
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatalf("%s=%q: %v", idleAddrEnv, addr, err)
	}
	idle, err := time.ParseDuration(os.Getenv(idleTimeoutEnv))
	if err != nil || idle <= 0 {
		t.Fatalf("%s=%q: want a duration", idleTimeoutEnv, os.Getenv(idleTimeoutEnv))
	}
	caCert, caKey, err := readIdleCA(os.Getenv(idleCAEnv))
	if err != nil {
		t.Fatalf("%s: %v", idleCAEnv, err)
	}
	raiseFDLimit(t)

	// Every node its own certificate, named as its Hello.
	names := make([]string, n)
	certs := make([]*tls.Certificate, n)
	for i := range n {
		names[i] = fmt.Sprintf("idle-%05d", i)
	}
	if err := forEachIdle(n, runtime.GOMAXPROCS(0), func(i int) error {
		var err error
		certs[i], err = issueIdleNodeCert(caCert, caKey, names[i])
		return err
	}); err != nil {
		t.Fatalf("issue node certificates: %v", err)
	}

	// The agent's QUIC settings (tunnel/agent's Config defaults; 10,000 is
	// its maxIncomingStreams).
	quicConf := transport.Tuning{
		HandshakeTimeout:        agent.DefaultHandshakeTimeout,
		KeepAlivePeriod:         idle / 3,
		MaxIdleTimeout:          idle,
		StreamReceiveWindow:     agent.DefaultStreamReceiveWindow,
		ConnectionReceiveWindow: agent.DefaultConnectionReceiveWindow,
		MaxIncomingStreams:      10000,
	}.QUIC()
	trs := make([]*quic.Transport, (n+idleConnsPerSocket-1)/idleConnsPerSocket)
	tuns := make([]transport.Conn, n)
	t.Cleanup(func() {
		for _, tun := range tuns {
			if tun != nil {
				tun.Close(proto.CloseNormal, "")
			}
		}
		for _, tr := range trs {
			if tr != nil {
				tr.Close()
				tr.Conn.Close()
			}
		}
	})
	for i := range trs {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		gro, _ := udpgro.Wrap(udp) // as the agent does
		trs[i] = &quic.Transport{Conn: gro}
	}
	instance := make([]byte, 8)
	rand.Read(instance)

	fmt.Println("dialing")
	var (
		retryMu sync.Mutex
		retries = map[string]int{} // failed attempts by error
	)
	start := time.Now()
	err = forEachIdle(n, idleDialers, func(i int) error {
		var err error
		for range idleDialAttempts {
			tuns[i], err = dialIdleTunnel(trs[i/idleConnsPerSocket], udpAddr, addr, certs[i], quicConf, names[i], hex.EncodeToString(instance))
			if err == nil {
				return nil
			}
			retryMu.Lock()
			retries[err.Error()]++
			retryMu.Unlock()
		}
		return fmt.Errorf("tunnel %s: %d attempts failed, the last: %w", names[i], idleDialAttempts, err)
	})
	if err != nil {
		t.Fatal(err)
	}
	why := "no dial retried"
	if len(retries) > 0 {
		var list []string
		for msg, k := range retries {
			list = append(list, fmt.Sprintf("%d× %s", k, msg))
		}
		sort.Strings(list)
		why = "retried: " + strings.Join(list, "; ")
	}
	fmt.Printf("ready %d tunnels in %v (%s)\n", n, time.Since(start).Round(time.Millisecond), why)

	io.Copy(io.Discard, os.Stdin) // until the benchmark is done

	lost := 0
	var first error
	for _, tun := range tuns {
		if transport.Ended(tun) {
			if lost++; first == nil {
				first = tun.Err()
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d tunnels ended while idle; the first: %v", lost, n, first)
	}
}

// dialIdleTunnel opens one tunnel as the agent's dialQUIC and hello do.
func dialIdleTunnel(tr *quic.Transport, udpAddr *net.UDPAddr, addr string, cert *tls.Certificate, conf *quic.Config, nodeID, instance string) (transport.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), agent.DefaultHandshakeTimeout)
	defer cancel()
	tc := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           []string{proto.ALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		InsecureSkipVerify:   true, // these agents trust the benchmark's own proxy
	}
	qc, err := tr.Dial(ctx, udpAddr, tc, conf)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	tun := transport.NewQUIC(qc)
	fail := func(op string, err error) (transport.Conn, error) {
		tun.Close(proto.CloseNormal, "")
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	st, err := tun.OpenStream(ctx)
	if err != nil {
		return fail("open stream", err)
	}
	deadline, _ := ctx.Deadline()
	st.SetDeadline(deadline)
	if err := proto.WriteMessage(st, proto.Hello{Version: proto.Version, NodeID: nodeID, InstanceID: instance, Slot: addr}); err != nil {
		return fail("hello", err)
	}
	ack, err := proto.Expect[proto.HelloAck](st)
	if err != nil {
		return fail("hello", err)
	}
	if !ack.Accepted {
		return fail("hello", fmt.Errorf("refused: %w", ack.Err()))
	}
	st.Close()
	return tun, nil
}

// forEachIdle calls f(i) for i in [0, n), workers at a time, and returns the
// first error (the others still run to the end).
func forEachIdle(n, workers int, f func(i int) error) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}

func writeHeapProfile(file string) error {
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
