package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// oldRelease is the commit of the build before resumable sessions and
// drains (tunnel protocol 1, dial protocol 1): TestRollingUpgrade runs one
// proxy and one node of it, to check that an upgraded mesh still works
// with them during a rollout.
const oldRelease = "dc089f5"

// buildAt builds jumpgate, jg and jgctl into a new directory: from this
// tree with version set (rev ""), or from commit rev of this repository.
func buildAt(t *testing.T, rev, version string) string {
	t.Helper()
	bin := t.TempDir()
	src := ""
	if rev != "" {
		root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
		if err != nil {
			t.Fatalf("the mixed-version test builds commit %s of this repository and needs its git history: %v", rev, err)
		}
		src = t.TempDir()
		tarball := filepath.Join(src, "src.tar")
		if out, err := exec.Command("git", "-C", strings.TrimSpace(string(root)), "archive", "--format=tar", "-o", tarball, rev).CombinedOutput(); err != nil {
			t.Fatalf("git archive %s (the test needs the repository's history): %v %s", rev, err, out)
		}
		if out, err := exec.Command("tar", "-x", "-C", src, "-f", tarball).CombinedOutput(); err != nil {
			t.Fatalf("untar %s: %v %s", rev, err, out)
		}
	}
	args := []string{"build", "-o", bin + "/"}
	if version != "" {
		args = append(args, "-ldflags", "-X main.version="+version)
	}
	args = append(args, "./cmd/jumpgate", "./cmd/jg", "./cmd/jgctl")
	cmd := exec.Command("go", args...)
	if src != "" {
		cmd.Dir = src
	} else {
		root, _ := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		cmd.Dir = strings.TrimSpace(string(root))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s %s: %v\n%s", rev, version, err, out)
	}
	return bin
}

// stream is one live session of TestRollingUpgrade: the test writes
// numbered lines into it every interval and the node's `cat` sends them
// back; every line must come back once, in order, intact.
type stream struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *lockedWriter // stderr

	mu       sync.Mutex // guards the following
	sent     int
	got      int
	bad      string // the first line that came back wrong
	lastRecv time.Time
	maxGap   time.Duration // longest time between two lines coming back
	stop     bool          // finish asked the writer to stop
	done     chan error    // the command's exit
	stopped  chan struct{} // the reader reached EOF

	writerDone chan struct{} // closed when the writer has returned
}

// rollDebug (JUMPGATE_ROLL_DEBUG=1) runs the roll's clients with JG_DEBUG
// and logs what the slowest sessions' clients said at each stage.
var rollDebug = os.Getenv("JUMPGATE_ROLL_DEBUG") != ""

func streamLine(name string, i int) string {
	sum := sha256.Sum256([]byte(name + strconv.Itoa(i)))
	return fmt.Sprintf("%s %08d %s", name, i, hex.EncodeToString(sum[:16]))
}

func startStream(t *testing.T, name string, cmd *exec.Cmd, interval time.Duration) *stream {
	t.Helper()
	s := &stream{name: name, cmd: cmd, out: &lockedWriter{}, done: make(chan error, 1), stopped: make(chan struct{}), writerDone: make(chan struct{})}
	cmd.Stderr = s.out
	var err error
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	go func() {
		defer close(s.stopped)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			now := time.Now()
			s.mu.Lock()
			if want := streamLine(name, s.got); sc.Text() != want && s.bad == "" {
				s.bad = fmt.Sprintf("line %d came back as %q, want %q", s.got, sc.Text(), want)
			}
			s.got++
			if !s.lastRecv.IsZero() && now.Sub(s.lastRecv) > s.maxGap {
				s.maxGap = now.Sub(s.lastRecv)
			}
			s.lastRecv = now
			s.mu.Unlock()
		}
	}()
	go func() {
		<-s.stopped
		s.done <- cmd.Wait()
	}()
	go func() {
		defer close(s.writerDone)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for range tick.C {
			s.mu.Lock()
			line, stop := streamLine(name, s.sent), s.stop
			s.mu.Unlock()
			if stop {
				return
			}
			if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
				return
			}
			s.mu.Lock()
			s.sent++
			s.mu.Unlock()
		}
	}()
	return s
}

// snapshot returns lines sent and received and the longest gap so far.
func (s *stream) snapshot() (sent, got int, gap time.Duration, bad string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent, s.got, s.maxGap, s.bad
}

// resetGap starts measuring the longest gap afresh.
func (s *stream) resetGap() {
	s.mu.Lock()
	s.maxGap = 0
	s.mu.Unlock()
}

// finish stops writing, closes stdin and waits for every line to come
// back and the command to exit.
func (s *stream) finish(t *testing.T) bool {
	t.Helper()
	s.mu.Lock()
	s.stop = true
	s.mu.Unlock()
	<-s.writerDone // a write in flight lands before the close
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	s.stdin.Close()
	select {
	case err := <-s.done:
		s.mu.Lock()
		got, bad := s.got, s.bad
		s.mu.Unlock()
		if err != nil || bad != "" || got < sent || got > sent+1 {
			t.Errorf("session %s: exit %v; sent %d lines, %d came back; %s\nstderr: %s", s.name, err, sent, got, bad, tail([]byte(s.out.String()), 2000))
			return false
		}
		return true
	case <-time.After(60 * time.Second):
		t.Errorf("session %s did not end after its input did; stderr: %s", s.name, tail([]byte(s.out.String()), 2000))
		return false
	}
}

// alive reports whether the session's command is still running, and why
// not.
func (s *stream) alive() (bool, string) {
	select {
	case <-s.stopped:
		return false, fmt.Sprintf("session %s ended: %s", s.name, tail([]byte(s.out.String()), 2000))
	default:
		return true, ""
	}
}

// rollProxy is one proxy of TestRollingUpgrade.
type rollProxy struct {
	id, region, ip             string
	listen, gossip, peer, diag string
	args                       []string
	bin                        string
}

func (c *cluster) startProxy(p *rollProxy, bin string) {
	c.t.Helper()
	p.bin = bin
	logf, err := os.OpenFile(filepath.Join(c.dir, p.id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "jumpgate"), append([]string{"start", "--log-level=debug"}, p.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	logf.Close()
	c.procs[p.id] = cmd
	c.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// ready reports whether the proxy's /readyz says ready.
func (p *rollProxy) ready() bool {
	resp, err := http.Get("http://" + p.diag + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// metricSum adds up the samples of a metric on a diag listener whose
// labels contain every one of labels.
func metricSum(t *testing.T, diag, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + diag + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", diag, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// TestRollingUpgrade is issue 6's end-to-end test. Three regions (127.0.0.1,
// .2 and .3) with two proxies each, a separate auth server, three nodes of
// this build and one of the previous release, and one proxy (pb2) of the
// previous release. 50 sessions stream numbered lines through `cat` on the
// nodes, half with `jg ssh`, half with OpenSSH through `jg proxy ssh`,
// entering at every proxy. Then:
//
//   - mixed versions: the old proxy and the old node work with the new ones
//     (jg falls back to dial protocol 1 and to plain SSH where needed);
//   - kill -9: pb2 (old, undrained) is killed mid-stream and comes back as
//     the new build; its sessions resume through other proxies;
//   - rolling upgrade: every other proxy is drained (half with jgctl proxy
//     drain, half with SIGTERM and a drain timeout) and restarted as the new
//     build, one at a time, each ready before the next.
//
// No session may end, and every line must come back once, in order. The
// test reports the longest stall (the longest time between two lines
// coming back) for the crash and for the drains.
func TestRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	var oldBin, nextBin string
	var wg sync.WaitGroup
	wg.Go(func() { oldBin = buildAt(t, oldRelease, "") })
	wg.Go(func() { nextBin = buildAt(t, "", "e2e-next") })
	c := &cluster{t: t, bin: build(t), dir: t.TempDir(), procs: map[string]*exec.Cmd{}, userLogin: me.Username}
	wg.Wait()
	if t.Failed() {
		return
	}
	var proxies []*rollProxy
	for _, r := range []struct{ name, ip string }{{"a", "127.0.0.1"}, {"b", "127.0.0.2"}, {"c", "127.0.0.3"}} {
		for _, suffix := range []string{"1", "2"} {
			p := &rollProxy{id: "p" + r.name + suffix, region: "region-" + r.name, ip: r.ip}
			p.listen, p.gossip, p.peer, p.diag = freeAddrOn(t, r.ip), freeAddrOn(t, r.ip), freeAddrOn(t, r.ip), freeAddrOn(t, r.ip)
			proxies = append(proxies, p)
		}
	}
	byID := map[string]*rollProxy{}
	for _, p := range proxies {
		byID[p.id] = p
	}
	c.auth = freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	c.start("auth", "--roles=auth", "--cluster-name=roll", "--data-dir="+filepath.Join(c.dir, "auth"), "--auth-listen="+c.auth)
	waitFor(t, "auth server", 30*time.Second, func() bool {
		_, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0
	})
	for i, p := range proxies {
		tok := c.proxyToken(p.id)
		seed := proxies[0].gossip
		if i == 0 {
			seed = proxies[1].gossip
		}
		p.args = []string{"--roles=proxy", "--proxy-id=" + p.id, "--region=" + p.region, "--data-dir=" + filepath.Join(c.dir, p.id),
			"--auth=" + c.auth, "--token=" + tok.Token, "--ca-pin=" + tok.CAPin, "--proxy-listen=" + p.listen,
			"--gossip-listen=" + p.gossip, "--peer-listen=" + p.peer, "--seeds=" + seed, "--diag-listen=" + p.diag}
		bin := c.bin
		if p.id == "pb2" {
			bin = oldBin
		} else if i%2 == 1 {
			// Half the proxies drain on SIGTERM.
			p.args = append(p.args, "--drain-timeout=60s")
		}
		c.startProxy(p, bin)
	}
	c.proxy = proxies[0].listen
	c.waitMesh(6, 90*time.Second)
	c.addAlice()
	nodes := []struct{ name, region string }{{"node-a", "a"}, {"node-b", "b"}, {"node-c", "c"}, {"node-old", "b"}}
	nodeDiag := map[string]string{}
	for _, n := range nodes {
		tok := c.token()
		seeds := byID["p"+n.region+"1"].listen + "," + byID["p"+n.region+"2"].listen
		args := []string{"--roles=node", "--node-name=" + n.name, "--data-dir=" + filepath.Join(c.dir, n.name),
			"--proxy=" + seeds, "--connection-count=2", "--token=" + tok.Token, "--ca-pin=" + tok.CAPin}
		if n.name == "node-old" {
			old := &rollProxy{id: n.name, args: args}
			c.startProxy(old, oldBin) // a node process of the old build
			continue
		}
		nodeDiag[n.name] = freeAddr(t)
		c.start(n.name, append(args, "--diag-listen="+nodeDiag[n.name])...)
	}
	c.waitOnline("node-a", "node-b", "node-c", "node-old")

	// alice logs in at every proxy, from that proxy's region.
	homes := map[string][]string{}
	for _, p := range proxies {
		env := []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-"+p.id), "JUMPGATE_BIND=" + p.ip}
		if out, code := c.run("alice-password\n", env, "jg", "login", "--proxy="+p.listen, "--user=alice", "--password-stdin", "--ca-pin="+c.pin()); code != 0 {
			t.Fatalf("jg login at %s: %s", p.id, out)
		}
		// Pin the home to the proxy logged in at, so that sessions enter
		// at every proxy (two proxies of a region are equally near).
		if err := creds.SetProxy(filepath.Join(c.dir, "home-"+p.id), p.listen); err != nil {
			t.Fatal(err)
		}
		homes[p.id] = env
	}

	t.Run("mixed versions", func(t *testing.T) {
		for _, p := range proxies {
			for _, n := range []string{"node-a", "node-old"} {
				out, code := c.run("", homes[p.id], "jg", "--debug", "ssh", n, "--", "echo", "hi-"+n)
				if code != 0 || !strings.Contains(out, "hi-"+n) {
					t.Errorf("jg ssh %s with home %s: exit %d: %s", n, p.id, code, out)
				}
				if n == "node-old" && !strings.Contains(out, "does not support resumable sessions") {
					t.Errorf("jg ssh node-old did not say it fell back to a plain session: %s", out)
				}
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	cfgOut, code := c.run("", homes["pa1"], "jg", "config")
	if code != 0 {
		t.Fatalf("jg config: %s", cfgOut)
	}
	nSessions := 50
	if v := os.Getenv("JUMPGATE_ROLL_SESSIONS"); v != "" {
		// The benchmark suite runs the roll with more sessions.
		if nSessions, err = strconv.Atoi(v); err != nil || nSessions < 6 {
			t.Fatalf("JUMPGATE_ROLL_SESSIONS=%q: want a number of sessions, at least 6", v)
		}
	}
	// A line every 25 ms per session; with more sessions (the benchmark)
	// every 100 ms, so that the sessions' own traffic does not saturate
	// the machine the whole mesh runs on.
	interval := 25 * time.Millisecond
	if nSessions > 50 {
		interval = 100 * time.Millisecond
	}
	rollReport := struct {
		Sessions           int
		Interval           time.Duration
		BaseP50, BaseP99   time.Duration
		BaseMax            time.Duration
		CrashP50, CrashP99 time.Duration
		CrashMax           time.Duration
		DrainP50, DrainP99 time.Duration
		DrainMax           time.Duration
		Lost               int
		Resumptions        float64
		Took               time.Duration
	}{Sessions: nSessions, Interval: interval}
	rollStart := time.Now()
	var streams []*stream
	for i := range nSessions {
		p := proxies[i%len(proxies)]
		node := nodes[i%3].name
		name := fmt.Sprintf("s%02d-%s-%s", i, p.id, node)
		var cmd *exec.Cmd
		if i%2 == 0 {
			cmd = exec.Command(filepath.Join(c.bin, "jg"), "ssh", node, "--", "cat")
		} else {
			sshCfg := filepath.Join(c.dir, "ssh_config-"+p.id)
			if _, err := os.Stat(sshCfg); err != nil {
				out, code := c.run("", homes[p.id], "jg", "config")
				if code != 0 {
					t.Fatalf("jg config: %s", out)
				}
				os.WriteFile(sshCfg, []byte(out+"    BatchMode yes\n    LogLevel ERROR\n"), 0o600)
			}
			cmd = exec.Command("/usr/bin/ssh", "-F", sshCfg, node, "cat")
		}
		cmd.Env = append(os.Environ(), homes[p.id]...)
		if rollDebug {
			cmd.Env = append(cmd.Env, "JG_DEBUG=1")
		}
		streams = append(streams, startStream(t, name, cmd, interval))
	}
	waitFor(t, "every session streaming", 60*time.Second, func() bool {
		for _, s := range streams {
			if _, got, _, _ := s.snapshot(); got < 5 {
				if ok, why := s.alive(); !ok {
					t.Fatal(why)
				}
				return false
			}
		}
		return true
	})
	checkAlive := func(what string) {
		t.Helper()
		for _, s := range streams {
			if ok, why := s.alive(); !ok {
				t.Fatalf("%s: %s", what, why)
			}
			if _, _, _, bad := s.snapshot(); bad != "" {
				t.Fatalf("%s: session %s: %s", what, s.name, bad)
			}
		}
	}
	// progress waits until every session has had lines come back after now.
	progress := func(what string) {
		t.Helper()
		want := map[*stream]int{}
		for _, s := range streams {
			_, got, _, _ := s.snapshot()
			want[s] = got + 3
		}
		waitFor(t, what, 60*time.Second, func() bool {
			checkAlive(what)
			for _, s := range streams {
				if _, got, _, _ := s.snapshot(); got < want[s] {
					return false
				}
			}
			return true
		})
	}
	gaps := func() []time.Duration {
		var out []time.Duration
		worst := slices.Clone(streams)
		gap := map[*stream]time.Duration{}
		for _, s := range streams {
			_, _, g, _ := s.snapshot()
			out = append(out, g)
			gap[s] = g
			s.resetGap()
		}
		slices.Sort(out)
		if rollDebug {
			// JUMPGATE_ROLL_DEBUG=1: what the slowest sessions' clients
			// said (jg --debug, with times) about their moves.
			slices.SortFunc(worst, func(a, b *stream) int { return int(gap[b] - gap[a]) })
			for _, s := range worst[:min(3, len(worst))] {
				t.Logf("stall %v in session %s; its stderr ends:\n%s", gap[s].Round(time.Millisecond), s.name, tail([]byte(s.out.String()), 3000))
				s.out.Reset()
			}
		}
		return out
	}
	report := func(what string, g []time.Duration) {
		t.Logf("%s: longest stall per session: p50 %v, p99 %v, max %v (lines every %v)", what,
			g[len(g)/2].Round(time.Millisecond), g[len(g)*99/100].Round(time.Millisecond), g[len(g)-1].Round(time.Millisecond), interval)
	}
	gaps()
	// The baseline: the same measure over a few seconds with nothing
	// happening to the mesh, on this (shared, busy) machine.
	time.Sleep(3 * time.Second)
	progress("every session flowing")
	if g := gaps(); len(g) > 0 {
		report("steady state (no drain, no crash)", g)
		rollReport.BaseP50, rollReport.BaseP99, rollReport.BaseMax = g[len(g)/2], g[len(g)*99/100], g[len(g)-1]
	}

	restart := func(p *rollProxy) {
		t.Helper()
		c.startProxy(p, nextBin)
		waitFor(t, p.id+" ready and seen alive", 60*time.Second, func() bool {
			return p.ready() && seenAs(c.proxies(), p.id, "alive")
		})
	}

	t.Run("kill -9 an old proxy mid-stream", func(t *testing.T) {
		pb2 := byID["pb2"]
		c.procs["pb2"].Process.Signal(syscall.SIGKILL)
		c.procs["pb2"].Wait()
		progress("every session flowing again after pb2 was killed")
		g := gaps()
		report("kill -9 pb2 (old build, not drained)", g)
		rollReport.CrashP50, rollReport.CrashP99, rollReport.CrashMax = g[len(g)/2], g[len(g)*99/100], g[len(g)-1]
		restart(pb2)
	})
	if t.Failed() {
		t.FailNow()
	}

	var drainGaps []time.Duration
	t.Run("drain on SIGTERM", func(t *testing.T) {
		for _, p := range proxies {
			if !slices.Contains(p.args, "--drain-timeout=60s") {
				continue
			}
			start := time.Now()
			c.procs[p.id].Process.Signal(syscall.SIGTERM)
			if err := c.procs[p.id].Wait(); err != nil {
				t.Errorf("%s exited with %v after its drain", p.id, err)
			}
			t.Logf("%s drained on SIGTERM and exited in %v", p.id, time.Since(start).Round(time.Millisecond))
			checkAlive("after draining " + p.id)
			restart(p)
			progress("every session flowing after " + p.id + " was upgraded")
			g := gaps()
			report("SIGTERM drain of "+p.id, g)
			drainGaps = append(drainGaps, g...)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	t.Run("ops/rolling-upgrade.sh rolls the rest", func(t *testing.T) {
		var rest []string
		for _, p := range proxies {
			if p.bin != nextBin {
				rest = append(rest, p.id)
			}
		}
		// The script's restart command asks the test to start the proxy
		// (the test owns the processes) and waits until it has.
		hooks := t.TempDir()
		restartCmd := fmt.Sprintf("touch %[1]s/restart-{proxy}; while [ ! -e %[1]s/started-{proxy} ]; do sleep 0.1; done", hooks)
		root, _ := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		script := exec.Command("bash", filepath.Join(strings.TrimSpace(string(root)), "ops", "rolling-upgrade.sh"),
			"--restart", restartCmd, "--proxies", strings.Join(rest, ","), "--version", "e2e-next", "--drain-timeout", "60s", "--ready-timeout", "90s")
		script.Env = append(os.Environ(), "JGCTL="+filepath.Join(c.bin, "jgctl"), "JUMPGATE_ADMIN_IDENTITY="+c.admin, "JUMPGATE_AUTH="+c.auth)
		out := &lockedWriter{}
		script.Stdout, script.Stderr = out, out
		start := time.Now()
		if err := script.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- script.Wait() }()
		var err error
	loop:
		for {
			select {
			case err = <-done:
				break loop
			case <-time.After(100 * time.Millisecond):
			}
			checkAlive("during the rolling upgrade")
			for _, id := range rest {
				p := byID[id]
				if _, e := os.Stat(filepath.Join(hooks, "restart-"+id)); e != nil || p.bin == nextBin {
					continue
				}
				if err := c.procs[id].Wait(); err != nil {
					t.Errorf("%s exited with %v after its drain", id, err)
				}
				// The stalls since the previous restart are this drain's.
				g := gaps()
				report("drain of "+id+" by the script", g)
				drainGaps = append(drainGaps, g...)
				c.startProxy(p, nextBin)
				os.WriteFile(filepath.Join(hooks, "started-"+id), nil, 0o600)
			}
		}
		t.Logf("ops/rolling-upgrade.sh (%v):\n%s", time.Since(start).Round(time.Millisecond), out.String())
		for _, id := range rest {
			b, _ := os.ReadFile(filepath.Join(c.dir, id+".log"))
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "component=drain") {
					t.Logf("%s: %s", id, line)
				}
			}
		}
		if err != nil {
			t.Fatalf("rolling-upgrade.sh: %v", err)
		}
		for _, id := range rest {
			if byID[id].bin != nextBin {
				t.Errorf("the script did not restart %s", id)
			}
		}
		progress("every session flowing after the rolling upgrade")
		gaps() // the last restart: nothing to count
	})
	if t.Failed() {
		t.FailNow()
	}
	slices.Sort(drainGaps)
	report("all drains", drainGaps)
	rollReport.DrainP50, rollReport.DrainP99, rollReport.DrainMax = drainGaps[len(drainGaps)/2], drainGaps[len(drainGaps)*99/100], drainGaps[len(drainGaps)-1]

	t.Run("every proxy runs the new build", func(t *testing.T) {
		out := c.jgctl("proxies", "ls")
		if n := strings.Count(out, "e2e-next"); n != 6 {
			t.Errorf("%d proxies report version e2e-next:\n%s", n, out)
		}
	})
	t.Run("mixed versions after the roll", func(t *testing.T) {
		// The old node's agent re-homed through every drain and still
		// serves through every upgraded proxy; and a user who has not
		// upgraded jg yet still gets in through them (dial protocol 1,
		// no resumable stream).
		for _, p := range proxies {
			out, code := c.run("", homes[p.id], "jg", "ssh", "node-old", "--", "echo", "hi-old")
			if code != 0 || !strings.Contains(out, "hi-old") {
				t.Errorf("jg ssh node-old with home %s after the roll: exit %d: %s", p.id, code, out)
			}
			cmd := exec.Command(filepath.Join(oldBin, "jg"), "ssh", "node-a", "--", "echo", "hi-from-old-jg")
			cmd.Env = append(os.Environ(), homes[p.id]...)
			b, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(b), "hi-from-old-jg") {
				t.Errorf("jg of the previous release, home %s, to node-a after the roll: %v: %s", p.id, err, b)
			}
		}
	})
	t.Run("sessions resumed at the nodes", func(t *testing.T) {
		total := 0.0
		for n, d := range nodeDiag {
			v := metricSum(t, d, "jumpgate_resume_resumptions_total", `outcome="ok"`)
			t.Logf("%s: %v resumptions", n, v)
			total += v
		}
		// How long the nodes waited for their sessions' clients to come
		// back (from the node's side of each break to the resume).
		var buckets []string
		for _, le := range []string{"0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"} {
			n := 0.0
			for _, d := range nodeDiag {
				n += metricSum(t, d, "jumpgate_resume_stall_seconds_bucket", `le="`+le+`"`)
			}
			buckets = append(buckets, fmt.Sprintf("≤%ss: %.0f", le, n))
		}
		t.Logf("resume stalls at the nodes (cumulative): %s", strings.Join(buckets, ", "))
		rollReport.Resumptions = total
		// Every session entered at a proxy that was drained or killed.
		if total < float64(nSessions) {
			t.Errorf("only %v resumptions at the nodes for %d sessions: the roll should have moved every session at least once", total, nSessions)
		}
	})
	t.Run("no session lost, no line lost, duplicated or reordered", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, s := range streams {
			wg.Go(func() {
				if !s.finish(t) {
					mu.Lock()
					rollReport.Lost++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	})
	t.Run("the nodes keep no session after its client ended", func(t *testing.T) {
		// Half the clients were OpenSSH, which stops its ProxyCommand
		// (jg proxy ssh) with SIGHUP as it exits: a jg that died there
		// without passing on the end of the stream left its session
		// detached on the node for node.resume_window, waiting for a
		// resumption that would never come. The same goes for jg ssh
		// stopped by its terminal closing (SIGHUP) or by kill (SIGTERM):
		// it must end its session, with the command, on the node.
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM} {
			cmd := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node-a", "--", "echo started; sleep 300")
			cmd.Env = append(os.Environ(), homes["pa1"]...)
			out := &lockedWriter{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "jg ssh node-a running its command", 20*time.Second, func() bool { return strings.Contains(out.String(), "started") })
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 128+int(sig) {
					t.Errorf("jg ssh after %v: %v (want exit status %d): %s", sig, err, 128+int(sig), out.String())
				}
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				t.Errorf("jg ssh still running 15s after %v", sig)
			}
		}
		waitFor(t, "no resumable session left on the nodes", 15*time.Second, func() bool {
			for _, d := range nodeDiag {
				if metricSum(t, d, "jumpgate_resume_sessions") != 0 || metricSum(t, d, "jumpgate_node_sessions_active") != 0 {
					return false
				}
			}
			return true
		})
	})
	rollReport.Took = time.Since(rollStart)
	if path := os.Getenv("JUMPGATE_ROLL_REPORT"); path != "" {
		b, _ := json.MarshalIndent(rollReport, "", "  ")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}
