// Command benchmarks is Jumpgate's performance suite. It starts, on loopback
// and in one run, the baselines (raw TCP, an OpenSSH sshd reached directly and
// through a second sshd with ProxyJump) and a Jumpgate cluster (auth+proxy and
// a node reachable only through its reverse tunnel, plus a benchmark-only
// direct listener on the node's SSH server), then measures every path with the
// same OpenSSH client and cipher and writes benchmarks/RESULTS.md with medians,
// min/max and ratios to the baselines measured in the same run.
//
//	go run ./benchmarks -bin bin -mode quick -out benchmarks/RESULTS.md
//
// `make bench` runs it; BENCH=full runs more repetitions.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// params is what a mode runs.
type params struct {
	Bytes    int64 // per throughput run
	Reps     int   // throughput repetitions per path and direction
	Connects int   // `ssh host true` repetitions per path
	Upload   bool  // also measure client-to-node throughput
	Sessions []int // concurrent-session counts to hold through one proxy
}

var modes = map[string]params{
	"quick": {Bytes: 1 << 30, Reps: 3, Connects: 15, Upload: true, Sessions: []int{100}},
	"full":  {Bytes: 1 << 30, Reps: 9, Connects: 60, Upload: true, Sessions: []int{100, 1000}},
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "pipe" {
		// ProxyCommand for the "direct ssh over a pipe" path: plain TCP, so
		// the OpenSSH client talks to a pipe as it does under `jg proxy ssh`.
		if err := pipe(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "pipe:", err)
			os.Exit(1)
		}
		return
	}
	bin := flag.String("bin", "bin", "directory holding the jumpgate, jg and jgctl binaries")
	out := flag.String("out", "benchmarks/RESULTS.md", "where to write the results (- for stdout only)")
	mode := flag.String("mode", envOr("BENCH", "quick"), "quick or full")
	keep := flag.Bool("keep", false, "keep the work directory (configs, logs) after the run")
	sessionsOnly := flag.Int("sessions", 0, "only hold this many concurrent sessions through one proxy and report their memory")
	hold := flag.Bool("hold", false, "set up, print how to use each path, and wait for Ctrl-C instead of measuring")
	controlOnly := flag.Bool("control", false, "only run the control-plane section (lock propagation, login time) on a cluster of its own and print it")
	rollOnly := flag.Bool("roll", false, "only run the rolling upgrade (TestRollingUpgrade with 200 sessions) and print it")
	idleOnly := flag.Bool("idle", false, "only run the idle-tunnel section (BenchmarkIdleTunnels) and print it")
	authOnly := flag.Bool("auth", false, "only run the certificate-issuance and raft-write benchmarks and print them")
	gossipOnly := flag.Bool("gossip", false, "only run the mesh gossip benchmarks (convergence and failure detection for 10, 50 and 100 proxies) and print them")
	flag.Parse()
	log.SetFlags(log.Ltime)
	p, ok := modes[*mode]
	if !ok {
		log.Fatalf("mode %q: want quick or full", *mode)
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *rollOnly {
		dir, err := os.MkdirTemp("", "jumpgate-roll-")
		if err != nil {
			log.Fatal(err)
		}
		rr, err := runRoll(ctx, dir)
		if err != nil {
			log.Fatalf("rolling upgrade: %v", err)
		}
		fmt.Print(rr.markdown(), "\n| Target | Measured | Result |\n|---|---:|---|\n", rr.targetRows())
		return
	}
	if *authOnly {
		ar, err := runAuth(ctx)
		if err != nil {
			log.Fatalf("certificates and raft: %v", err)
		}
		fmt.Print(ar.markdown(), "\n| Target | Measured | Result |\n|---|---:|---|\n", ar.targetRows())
		return
	}
	if *gossipOnly {
		gr, err := runGossip(ctx, gossipRuns[*mode])
		if err != nil {
			log.Fatalf("mesh gossip: %v", err)
		}
		fmt.Print(gr.markdown(), "\n| Target | Measured | Result |\n|---|---:|---|\n", gr.targetRows())
		return
	}
	if *idleOnly {
		ir, err := runIdle(ctx, *mode)
		if err != nil {
			log.Fatalf("idle tunnels: %v", err)
		}
		fmt.Print(ir.markdown(), "\n| Target | Measured | Result |\n|---|---:|---|\n", ir.targetRows())
		return
	}
	if *controlOnly {
		cr, err := runControl(ctx, absBin, controlModes[*mode], "", *keep)
		if err != nil {
			log.Fatalf("control plane: %v", err)
		}
		fmt.Print(cr.markdown())
		return
	}

	// A full run measures idle tunnels first, while the machine is quiet:
	// the figure is CPU at idle.
	var idle *idleResult
	if !*hold && *sessionsOnly == 0 {
		log.Printf("idle tunnels (BenchmarkIdleTunnels, %s)", idleModes[*mode])
		if idle, err = runIdle(ctx, *mode); err != nil {
			log.Fatalf("idle tunnels: %v", err)
		}
	}
	env, err := setup(ctx, absBin)
	if env != nil {
		defer env.close(*keep)
	}
	if err != nil {
		log.Fatalf("setup: %v", err)
	}
	if *hold {
		fmt.Printf("Every path is up. Try, for example:\n  JUMPGATE_HOME=%s ssh -F %s jumpgate\nHosts: direct, directpipe, proxyjump, jgnode, jumpgate, jumpgatenoresume, jumpgatetcp, jumpgate2.\nProfiles: http://%s/debug/pprof/ (auth+proxy), http://%s/debug/pprof/ (node). Ctrl-C stops.\n", env.jgHome, env.sshConfig, env.diagProxy, env.diagNode)
		<-ctx.Done()
		return
	}
	if *sessionsOnly > 0 {
		sr, err := env.concurrentSessions(ctx, *sessionsOnly)
		if err != nil {
			log.Fatalf("sessions: %v", err)
		}
		fmt.Printf("%d sessions open in %v: proxy %d → %d KiB (%.0f KiB per session), node %d → %d KiB (%.0f KiB per session)\n",
			sr.N, sr.Open.Round(time.Millisecond), sr.ProxyBefore, sr.ProxyAfter, sr.ProxyKiB, sr.NodeBefore, sr.NodeAfter, sr.NodeKiB)
		return
	}
	res, err := run(ctx, env, p)
	if err != nil {
		log.Fatalf("benchmark: %v", err)
	}
	// The sections below start what they measure themselves; the data
	// path's cluster and sshds would only add their idle load.
	env.stop()
	if res.Control, err = runControl(ctx, absBin, controlModes[*mode], env.dir, *keep); err != nil {
		log.Fatalf("control plane: %v", err)
	}
	if res.Roll, err = runRoll(ctx, env.dir); err != nil {
		log.Fatalf("rolling upgrade: %v", err)
	}
	log.Printf("certificate issuance and raft writes (BenchmarkSignUserSSH, BenchmarkApply)")
	if res.Auth, err = runAuth(ctx); err != nil {
		log.Fatalf("certificates and raft: %v", err)
	}
	log.Printf("mesh gossip (BenchmarkGossipConvergence, %d runs of %v proxies)", gossipRuns[*mode], gossipSizes)
	if res.Gossip, err = runGossip(ctx, gossipRuns[*mode]); err != nil {
		log.Fatalf("mesh gossip: %v", err)
	}
	res.Idle = idle
	res.Mode = *mode
	res.Params = p
	res.Machine = machineInfo(env.sshVersion)
	md := res.markdown()
	fmt.Print(md)
	if *out != "-" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			log.Fatal(err)
		}
		log.Printf("wrote %s", *out)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// path is one way of reaching a shell, named by its ssh_config Host alias.
type path struct {
	Host, Title, What string
}

var paths = []path{
	{"direct", "direct ssh", "OpenSSH client → OpenSSH sshd"},
	{"directpipe", "direct ssh over a pipe", "OpenSSH client with a plain TCP ProxyCommand → OpenSSH sshd (informational: separates OpenSSH's Nagle stalls on loopback from the path's cost)"},
	{"proxyjump", "ssh -J (ProxyJump)", "OpenSSH client → sshd bastion → OpenSSH sshd"},
	{"jgnode", "Jumpgate node, direct", "OpenSSH client → Jumpgate node SSH server (benchmark-only listener, no tunnel)"},
	{"jumpgate", "via one Jumpgate proxy", "OpenSSH client + `jg proxy ssh` → proxy (TLS) → QUIC reverse tunnel → node SSH server"},
	{"jumpgatenoresume", "via one Jumpgate proxy, no resumable stream", "as \"via one Jumpgate proxy\" with JG_RESUME=off: SSH runs straight over the dial, without the resumable stream (tunnel/resume) that lets sessions survive proxy drains and crashes"},
	{"jumpgatetcp", "via one Jumpgate proxy, TCP tunnel", "as above, but the reverse tunnel is TLS over TCP with yamux (the fallback when UDP is blocked, or --tunnel-transport=tcp)"},
	{"jumpgate2", "via two peered Jumpgate proxies", "OpenSSH client + `jg proxy ssh` → proxy A (TLS) → QUIC peer link → proxy B → QUIC reverse tunnel → node SSH server"},
}

// run measures every path, interleaving repetitions so drift on a shared
// machine spreads over all paths alike.
func run(ctx context.Context, env *env, p params) (*results, error) {
	r := &results{Throughput: map[string][]float64{}, Upload: map[string][]float64{}, Connect: map[string][]float64{}, NodeCPU: map[string][]float64{}, ProxyCPU: map[string][]float64{}}
	log.Printf("raw loopback TCP, %d × %s", p.Reps, human(p.Bytes))
	for i := 0; i < p.Reps; i++ {
		mbps, err := tcpThroughput(p.Bytes)
		if err != nil {
			return nil, fmt.Errorf("loopback TCP: %w", err)
		}
		r.TCP = append(r.TCP, mbps)
	}
	for i := 0; i < p.Reps; i++ {
		for _, pa := range paths {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			env.settle(ctx)
			p0, n0, n3 := env.cpuSeconds("jumpgate-auth-proxy"), env.cpuSeconds("jumpgate-node"), env.cpuSeconds("jumpgate-node3")
			mbps, err := env.download(ctx, pa.Host, p.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s download: %w", pa.Title, err)
			}
			gib := float64(p.Bytes) / (1 << 30)
			switch pa.Host {
			case "jumpgate", "jgnode", "jumpgatenoresume":
				r.NodeCPU[pa.Host] = append(r.NodeCPU[pa.Host], (env.cpuSeconds("jumpgate-node")-n0)/gib)
			case "jumpgatetcp":
				r.NodeCPU[pa.Host] = append(r.NodeCPU[pa.Host], (env.cpuSeconds("jumpgate-node3")-n3)/gib)
			}
			if pa.Host == "jumpgate" || pa.Host == "jumpgatetcp" || pa.Host == "jumpgatenoresume" {
				r.ProxyCPU[pa.Host] = append(r.ProxyCPU[pa.Host], (env.cpuSeconds("jumpgate-auth-proxy")-p0)/gib)
			}
			r.Throughput[pa.Host] = append(r.Throughput[pa.Host], mbps)
			log.Printf("rep %d %-10s download %7.1f MB/s", i+1, pa.Host, mbps)
			if p.Upload {
				env.settle(ctx)
				mbps, err := env.upload(ctx, pa.Host, p.Bytes)
				if err != nil {
					return nil, fmt.Errorf("%s upload: %w", pa.Title, err)
				}
				r.Upload[pa.Host] = append(r.Upload[pa.Host], mbps)
				log.Printf("rep %d %-10s upload   %7.1f MB/s", i+1, pa.Host, mbps)
			}
		}
	}
	for i := 0; i < p.Connects; i++ {
		for _, pa := range paths {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			d, err := env.connect(ctx, pa.Host)
			if err != nil {
				return nil, fmt.Errorf("%s connect: %w", pa.Title, err)
			}
			r.Connect[pa.Host] = append(r.Connect[pa.Host], d.Seconds()*1000)
		}
	}
	for _, pa := range paths {
		log.Printf("%-10s connect median %.1f ms", pa.Host, median(r.Connect[pa.Host]))
	}
	for _, n := range p.Sessions {
		sr, err := env.concurrentSessions(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("%d concurrent sessions: %w", n, err)
		}
		log.Printf("%d sessions open in %v: proxy %.0f KiB, node %.0f KiB per session", n, sr.Open.Round(time.Millisecond), sr.ProxyKiB, sr.NodeKiB)
		r.Sessions = append(r.Sessions, sr)
	}
	return r, nil
}

// tcpThroughput moves n bytes over a loopback TCP connection with 256 KiB
// writes: the ceiling every other path runs under.
func tcpThroughput(n int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		k, _ := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		got <- k
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			c.Close()
			return 0, err
		}
		left -= k
	}
	c.Close()
	if k := <-got; k != n {
		return 0, fmt.Errorf("received %d bytes, sent %d", k, n)
	}
	return mbPerSec(n, time.Since(start)), nil
}

// pipe copies stdin to a TCP connection to addr and the connection to stdout.
func pipe(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, os.Stdin)
		c.(*net.TCPConn).CloseWrite()
		done <- err
	}()
	if _, err := io.Copy(os.Stdout, c); err != nil {
		return err
	}
	return nil
}

func mbPerSec(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

// countWriter counts bytes written to it.
type countWriter struct{ n int64 }

func (w *countWriter) Write(b []byte) (int, error) { w.n += int64(len(b)); return len(b), nil }

// zeroReader yields n zero bytes.
type zeroReader struct{ left int64 }

func (z *zeroReader) Read(b []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(b)), z.left)
	clear(b[:k])
	z.left -= k
	return int(k), nil
}

// settle waits until no Jumpgate node has a session open or a recording
// waiting for its upload, so that one measurement does not pay for the
// previous one's upload: nodes record sessions (the default), and a 1 GiB
// transfer leaves a 64 MiB recording (node.recording_limit) that goes
// through the proxy to the auth server after the session. It gives up,
// saying so, after a minute.
func (e *env) settle(ctx context.Context) {
	time.Sleep(300 * time.Millisecond) // the upload pass starts when the session's recording is closed
	deadline := time.Now().Add(time.Minute)
	hc := &http.Client{Timeout: 5 * time.Second}
	busy := func(diag string) bool {
		resp, err := hc.Get("http://" + diag + "/metrics")
		if err != nil {
			return true
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return true
		}
		for _, l := range strings.Split(string(b), "\n") {
			for _, name := range []string{"jumpgate_node_recordings_pending ", "jumpgate_node_sessions_active "} {
				if v, ok := strings.CutPrefix(l, name); ok && strings.TrimSpace(v) != "0" {
					return true
				}
			}
		}
		return false
	}
	for _, diag := range []string{e.diagNode, e.diagNode2, e.diagNode3} {
		for busy(diag) {
			if ctx.Err() != nil || time.Now().After(deadline) {
				log.Printf("warning: node at %s still has sessions or recording uploads after a minute; measuring anyway", diag)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// sshCmd runs the OpenSSH client with the suite's config.
func (e *env) sshCmd(ctx context.Context, host string, remote ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ssh", append([]string{"-F", e.sshConfig, host}, remote...)...)
	cmd.Env = append(os.Environ(), "JUMPGATE_HOME="+e.jgHome)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (e *env) download(ctx context.Context, host string, n int64) (float64, error) {
	var cw countWriter
	var stderr strings.Builder
	cmd := e.sshCmd(ctx, host, fmt.Sprintf("head -c %d /dev/zero", n))
	cmd.Stdout, cmd.Stderr = &cw, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	d := time.Since(start)
	if cw.n != n {
		return 0, fmt.Errorf("received %d bytes, want %d: %s", cw.n, n, strings.TrimSpace(stderr.String()))
	}
	return mbPerSec(n, d), nil
}

func (e *env) upload(ctx context.Context, host string, n int64) (float64, error) {
	var stdout, stderr strings.Builder
	cmd := e.sshCmd(ctx, host, "wc -c")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = &zeroReader{left: n}, &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	d := time.Since(start)
	if got := strings.TrimSpace(stdout.String()); got != fmt.Sprint(n) {
		return 0, fmt.Errorf("node counted %q bytes, want %d: %s", got, n, strings.TrimSpace(stderr.String()))
	}
	return mbPerSec(n, d), nil
}

func (e *env) connect(ctx context.Context, host string) (time.Duration, error) {
	var out strings.Builder
	cmd := e.sshCmd(ctx, host, "true")
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(out.String()))
	}
	return time.Since(start), nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// machineInfo describes where the figures were measured.
type machine struct {
	CPU, Kernel, Go, OpenSSH, Date, Commit string
	Cores                                  int
}

func machineInfo(sshVersion string) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), OpenSSH: sshVersion, Date: time.Now().UTC().Format("2006-01-02 15:04 MST")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(b))
	}
	for _, s := range []*string{&m.CPU, &m.Kernel, &m.Commit} {
		if *s == "" {
			*s = "unknown"
		}
	}
	return m
}

var errTimeout = errors.New("timed out")
