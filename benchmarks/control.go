package main

// The control-plane section: how fast a lock reaches every proxy and node,
// and how long `jg login` takes end to end. It runs on a cluster of its own
// (one auth+proxy process, two joined proxies, ten nodes spread over the
// three), so that it needs none of the throughput suite's baselines and
// `-control` can run it alone in well under a minute.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

// controlParams is what a mode runs in the control-plane section.
type controlParams struct {
	Locks  int // locks created one after another
	Logins int // `jg login` runs, each paired with a `jg version` run
}

var controlModes = map[string]controlParams{
	"quick": {Locks: 30, Logins: 30},
	"full":  {Locks: 200, Logins: 200},
}

const (
	ctlProxies = 3 // the auth+proxy process counts as one
	ctlNodes   = 10
	// lockTargetMS is the target for lock propagation p99: `jgctl lock` says
	// live sessions end everywhere "usually within a second".
	lockTargetMS = 1000
	// lockPace separates the locks, so that each one's propagation is
	// measured on its own rather than as part of a burst.
	lockPace    = 50 * time.Millisecond
	ctlPassword = "bench-login-password"
)

// controlResult is one control-plane run. Every figure is in milliseconds.
type controlResult struct {
	Params controlParams
	// One sample per (lock, process): from the lock's creation on the auth
	// server to its being in force in that proxy or node.
	ProxyDelay, NodeDelay []float64
	// One sample per lock: from `jgctl lock` returning to the last of the
	// 13 processes having the lock in force (0: all had it already).
	AfterReturn []float64
	LockCmd     []float64 // `jgctl lock`, process start to exit
	Login       []float64 // `jg login` through a joined proxy, process start to exit
	Version     []float64 // `jg version`: the cost of starting a `jg` process
	FirstLogin  float64   // the auth server's first login, not in Login
	// Discovery: GET /v1/discover on one proxy from discoveryClients
	// goroutines, each over its own kept-alive TLS connection.
	DiscoveryRate float64   // requests per second
	Discovery     []float64 // one request's latency
	// RankUS is what GeoIP lookup and ranking of 50 proxies cost one
	// discovery request, in µs (BenchmarkLookupAndRank50, same run); 0
	// when it could not be run.
	RankUS float64
	Took   time.Duration
}

// ctlProc is one proxy or node of the control-plane cluster.
type ctlProc struct {
	name, role string // role as the "lock in force" line gives it
	proxyID    string // nodes: the proxy it tunnels to
}

// ctlCluster is the control-plane cluster started in e.
type ctlCluster struct {
	e       *env
	admin   []string // environment for jgctl
	proxies []string // proxy addresses, proxy1 (with auth) first
	caPin   string
	procs   []ctlProc
}

// runControl starts the control-plane cluster in a directory of its own
// (under parent when given, else a new temporary one), measures, and stops
// it again.
func runControl(ctx context.Context, bin string, p controlParams, parent string, keep bool) (*controlResult, error) {
	start := time.Now()
	for _, b := range []string{"jumpgate", "jg", "jgctl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("%s not built in %s: run make build first", b, bin)
		}
	}
	var dir string
	var err error
	if parent != "" {
		dir = filepath.Join(parent, "control")
		err = os.Mkdir(dir, 0o700)
	} else {
		dir, err = os.MkdirTemp("", "jumpgate-bench-control-")
	}
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, bin: bin, named: map[string]*exec.Cmd{}}
	defer e.close(keep)
	log.Printf("control plane: starting 1 auth+proxy, %d more proxies and %d nodes in %s", ctlProxies-1, ctlNodes, dir)
	c, err := startControlCluster(ctx, e)
	if err != nil {
		return nil, err
	}
	log.Printf("control plane: cluster up in %v", time.Since(start).Round(100*time.Millisecond))
	r := &controlResult{Params: p}
	if err := c.measureLocks(ctx, r, p.Locks); err != nil {
		return nil, err
	}
	log.Printf("control plane: lock in force p99 %.1f ms on proxies, %.1f ms on nodes, %.1f ms after jgctl returns",
		percentile(r.ProxyDelay, 99), percentile(r.NodeDelay, 99), percentile(r.AfterReturn, 99))
	if err := c.measureLogins(ctx, r, p.Logins); err != nil {
		return nil, err
	}
	log.Printf("control plane: jg login p50 %.1f ms p99 %.1f ms; jg version p50 %.1f ms", percentile(r.Login, 50), percentile(r.Login, 99), percentile(r.Version, 50))
	if err := c.measureDiscovery(ctx, r, 3*time.Second); err != nil {
		return nil, err
	}
	log.Printf("control plane: discovery %.0f requests/s, p99 %.2f ms", r.DiscoveryRate, percentile(r.Discovery, 99))
	if us, err := measureRanking(ctx); err != nil {
		log.Printf("control plane: GeoIP ranking benchmark: %v", err)
	} else {
		r.RankUS = us
		log.Printf("control plane: GeoIP lookup and ranking of 50 proxies %.2f µs", us)
	}
	r.Took = time.Since(start) // stopping the cluster (in defer) is not counted
	return r, nil
}

func startControlCluster(ctx context.Context, e *env) (*ctlCluster, error) {
	var authAddr, raftAddr, proxy1 string
	for _, a := range []*string{&authAddr, &raftAddr, &proxy1} {
		var err error
		if *a, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	authDir := filepath.Join(e.dir, "auth")
	c := &ctlCluster{e: e, admin: []string{"JUMPGATE_ADMIN_IDENTITY=" + filepath.Join(authDir, "admin"), "JUMPGATE_AUTH=" + authAddr}, proxies: []string{proxy1}}
	jumpgate := filepath.Join(e.bin, "jumpgate")
	// Info level: the "lock in force" lines are what is measured.
	if err := e.start("ctl-proxy1", jumpgate, "start", "--roles=auth,proxy", "--cluster-name=benchctl", "--proxy-id=proxy1",
		"--data-dir="+authDir, "--auth-listen="+authAddr, "--raft-listen="+raftAddr, "--proxy-listen="+proxy1, "--log-level=info"); err != nil {
		return nil, err
	}
	c.procs = append(c.procs, ctlProc{name: "ctl-proxy1", role: "proxy"})
	if err := waitFor(ctx, "the control-plane auth server", 30*time.Second, func() error { _, err := e.cmd(c.admin, "", "jgctl", "status"); return err }); err != nil {
		return nil, err
	}
	roles := filepath.Join(e.dir, "roles.yaml")
	if err := os.WriteFile(roles, []byte("kind: role\nname: benchlogin\nallow:\n  logins: [benchlogin]\n  node_labels: {\"*\": \"*\"}\n"), 0o600); err != nil {
		return nil, err
	}
	if _, err := e.cmd(c.admin, "", "jgctl", "roles", "apply", "-f", roles); err != nil {
		return nil, err
	}
	if _, err := e.cmd(c.admin, ctlPassword+"\n", "jgctl", "users", "add", "benchlogin", "--roles=benchlogin", "--password-stdin"); err != nil {
		return nil, err
	}
	for i := 2; i <= ctlProxies; i++ {
		id := fmt.Sprintf("proxy%d", i)
		tok, err := c.token("--type=proxy", "--name="+id)
		if err != nil {
			return nil, err
		}
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		name := "ctl-" + id
		if err := e.start(name, jumpgate, "start", "--roles=proxy", "--proxy-id="+id, "--data-dir="+filepath.Join(e.dir, id),
			"--auth="+authAddr, "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+addr, "--log-level=info"); err != nil {
			return nil, err
		}
		c.proxies = append(c.proxies, addr)
		c.procs = append(c.procs, ctlProc{name: name, role: "proxy"})
	}
	for i := 1; i <= ctlNodes; i++ {
		id := fmt.Sprintf("node%02d", i)
		tok, err := c.token("--type=node")
		if err != nil {
			return nil, err
		}
		c.caPin = tok.CAPin
		k := (i - 1) % ctlProxies
		// One tunnel each (--connection-count=1), to the proxy named here:
		// the node's lock updates then come from that proxy's watch stream.
		name := "ctl-" + id
		if err := e.start(name, jumpgate, "start", "--roles=node", "--node-name="+id, "--data-dir="+filepath.Join(e.dir, id),
			"--proxy="+c.proxies[k], "--connection-count=1", "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--log-level=info"); err != nil {
			return nil, err
		}
		c.procs = append(c.procs, ctlProc{name: name, role: "node", proxyID: fmt.Sprintf("proxy%d", k+1)})
	}
	// Every node has a tunnel to its proxy (it dials only once its cache
	// holds the cluster's state), as the auth server sees it.
	if err := waitFor(ctx, fmt.Sprintf("%d nodes online", ctlNodes), 60*time.Second, c.nodesOnline); err != nil {
		return nil, err
	}
	// Then one lock that every process must log before measuring starts:
	// it shows that each lock watcher has its first snapshot (a lock made
	// before that would never be logged) and takes the cold start out of
	// the figures.
	warm, err := c.lock("bench-lock-warmup")
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "every proxy and node to enforce a first lock", 30*time.Second, func() error {
		seen, err := c.seen()
		if err != nil {
			return err
		}
		for _, p := range c.procs {
			if _, ok := seen[p.name][warm.ID]; !ok {
				return fmt.Errorf("%s has not logged lock %s", p.name, warm.ID)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return c, nil
}

type joinToken struct {
	Token string `json:"token"`
	CAPin string `json:"ca_pin"`
}

func (c *ctlCluster) token(args ...string) (joinToken, error) {
	var t joinToken
	out, err := c.e.cmd(c.admin, "", "jgctl", append([]string{"tokens", "add", "--json"}, args...)...)
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal([]byte(out), &t); err != nil {
		return t, fmt.Errorf("jgctl tokens add: %v: %s", err, out)
	}
	return t, nil
}

func (c *ctlCluster) nodesOnline() error {
	out, err := c.e.cmd(c.admin, "", "jgctl", "nodes", "ls", "--json")
	if err != nil {
		return err
	}
	var nodes []struct {
		ID      string   `json:"id"`
		Online  bool     `json:"online"`
		Proxies []string `json:"proxies"`
	}
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return fmt.Errorf("jgctl nodes ls: %v: %s", err, out)
	}
	via := map[string][]string{}
	for _, n := range nodes {
		if n.Online {
			via[n.ID] = n.Proxies
		}
	}
	for _, p := range c.procs {
		if p.role != "node" {
			continue
		}
		id := strings.TrimPrefix(p.name, "ctl-")
		if !slices.Contains(via[id], p.proxyID) {
			return fmt.Errorf("%s has no tunnel to %s yet (%d of %d nodes online)", id, p.proxyID, len(via), ctlNodes)
		}
	}
	return nil
}

// madeLock is a lock as `jgctl lock --json` printed it, and when that
// command returned.
type madeLock struct {
	ID       string        `json:"id"`
	Created  time.Time     `json:"created"`
	Returned time.Time     `json:"-"`
	Took     time.Duration `json:"-"`
}

func (c *ctlCluster) lock(user string) (madeLock, error) {
	var l madeLock
	cmd := exec.Command(filepath.Join(c.e.bin, "jgctl"), "--json", "lock", "--user="+user, "--ttl=10m")
	cmd.Env = append(os.Environ(), c.admin...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	l.Returned = time.Now()
	l.Took = l.Returned.Sub(start)
	if err != nil {
		return l, fmt.Errorf("jgctl lock --user=%s: %v: %s", user, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(out, &l); err != nil || l.ID == "" || l.Created.IsZero() {
		return l, fmt.Errorf("jgctl lock --user=%s printed %q: %v", user, out, err)
	}
	return l, nil
}

// lockLine is one "lock in force" log line.
type lockLine struct {
	Lock, Target, Role string
	DelayMS            float64
}

// seen reads every process's log: process name → lock ID → its line.
func (c *ctlCluster) seen() (map[string]map[string]lockLine, error) {
	all := map[string]map[string]lockLine{}
	for _, p := range c.procs {
		f, err := os.Open(filepath.Join(c.e.dir, p.name+".log"))
		if err != nil {
			return nil, err
		}
		lines, err := lockLines(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s.log: %w", p.name, err)
		}
		m := map[string]lockLine{}
		for _, l := range lines {
			m[l.Lock] = l
		}
		all[p.name] = m
	}
	return all, nil
}

// lockLines picks the "lock in force" lines out of a text-format slog log:
//
//	time=... level=INFO msg="lock in force" lock=ID target="user U" role=node delay_ms=1.234 ended=0
func lockLines(r io.Reader) ([]lockLine, error) {
	var out []lockLine
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kv := logfmt(sc.Text())
		if kv["msg"] != "lock in force" {
			continue
		}
		d, err := strconv.ParseFloat(kv["delay_ms"], 64)
		if err != nil {
			return nil, fmt.Errorf("lock %s: delay_ms %q: %w", kv["lock"], kv["delay_ms"], err)
		}
		out = append(out, lockLine{Lock: kv["lock"], Target: kv["target"], Role: kv["role"], DelayMS: d})
	}
	return out, sc.Err()
}

// logfmt splits one slog text line into its keys and values; quoted values
// are unquoted. A line it cannot read yields what it read so far.
func logfmt(line string) map[string]string {
	kv := map[string]string{}
	s := line
	for {
		s = strings.TrimLeft(s, " ")
		k, rest, ok := strings.Cut(s, "=")
		if !ok || k == "" || strings.Contains(k, " ") {
			return kv
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return kv
			}
			v, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
		}
		kv[k] = v
		s = rest
	}
}

// measureLocks creates n locks one after another and collects, from every
// proxy's and node's log, when each was in force there.
func (c *ctlCluster) measureLocks(ctx context.Context, r *controlResult, n int) error {
	made := make([]madeLock, 0, n)
	for i := range n {
		l, err := c.lock(fmt.Sprintf("bench-lock-%d", i))
		if err != nil {
			return err
		}
		made = append(made, l)
		r.LockCmd = append(r.LockCmd, ms(l.Took))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(lockPace):
		}
	}
	var seen map[string]map[string]lockLine
	missing := func() error {
		var err error
		if seen, err = c.seen(); err != nil {
			return err
		}
		var miss []string
		for _, p := range c.procs {
			k := 0
			for _, l := range made {
				if _, ok := seen[p.name][l.ID]; !ok {
					k++
				}
			}
			if k > 0 {
				miss = append(miss, fmt.Sprintf("%s lacks %d of %d", p.name, k, n))
			}
		}
		if len(miss) > 0 {
			return fmt.Errorf("%s", strings.Join(miss, ", "))
		}
		return nil
	}
	if err := waitFor(ctx, "every lock in force on every proxy and node", 15*time.Second, missing); err != nil {
		return fmt.Errorf("lock propagation failed: %w (the processes' logs are in %s; -keep keeps them)", err, c.e.dir)
	}
	for i, l := range made {
		want := fmt.Sprintf("user bench-lock-%d", i)
		var last time.Time
		for _, p := range c.procs {
			ll := seen[p.name][l.ID]
			if ll.Target != want || ll.Role != p.role {
				return fmt.Errorf("%s logged lock %s as %q (role %s), want %q (role %s)", p.name, l.ID, ll.Target, ll.Role, want, p.role)
			}
			if p.role == "proxy" {
				r.ProxyDelay = append(r.ProxyDelay, ll.DelayMS)
			} else {
				r.NodeDelay = append(r.NodeDelay, ll.DelayMS)
			}
			// When the lock was in force there, on the one clock every
			// process here shares: its creation time (auth server) plus
			// the delay that process measured from it. This has the
			// microsecond resolution of delay_ms, where the log line's
			// time= has only milliseconds.
			at := l.Created.Add(time.Duration(ll.DelayMS * float64(time.Millisecond)))
			if at.After(last) {
				last = at
			}
		}
		// The processes may have the lock before jgctl has its answer
		// (the watch streams and the API response race); that counts as
		// 0: nothing was left to wait for once the command returned.
		// Returned is taken once the jgctl process has exited, a
		// millisecond or so after it printed the lock, so this errs low
		// by that much.
		r.AfterReturn = append(r.AfterReturn, max(0, ms(last.Sub(l.Returned))))
	}
	return nil
}

// measureLogins runs `jg login` n times through a joined proxy (not the
// one in the auth server's process, so the login crosses proxy → auth as
// it does in a real deployment), each into a fresh JUMPGATE_HOME, paired
// with a `jg version` run: the cost of starting `jg` at all.
func (c *ctlCluster) measureLogins(ctx context.Context, r *controlResult, n int) error {
	jg := filepath.Join(c.e.bin, "jg")
	home := filepath.Join(c.e.dir, "login-home")
	login := func() (time.Duration, error) {
		if err := os.RemoveAll(home); err != nil {
			return 0, err
		}
		return timed(ctx, []string{"JUMPGATE_HOME=" + home}, ctlPassword+"\n", jg, "login", "--proxy="+c.proxies[1], "--user=benchlogin", "--password-stdin", "--ca-pin="+c.caPin)
	}
	// The auth server's first login after it starts costs some 300 ms
	// more than the rest, through any proxy: it is kept out of the
	// percentiles (with 30 samples it alone would be the p99) and reported
	// on its own.
	d, err := login()
	if err != nil {
		return err
	}
	r.FirstLogin = ms(d)
	for range n {
		d, err := timed(ctx, nil, "", jg, "version")
		if err != nil {
			return err
		}
		r.Version = append(r.Version, ms(d))
		if d, err = login(); err != nil {
			return err
		}
		r.Login = append(r.Login, ms(d))
	}
	return nil
}

// timed runs a command to completion and returns its wall time, process
// start to exit.
func timed(ctx context.Context, extraEnv []string, stdin, exe string, args ...string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdin = strings.NewReader(stdin)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s %s: %v: %s", filepath.Base(exe), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return d, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile: the smallest sample with at
// least p% of the samples at or below it. With 30 samples p99 is the
// maximum; it never interpolates a value nobody measured.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// controlRow is one line of the control-plane table.
type controlRow struct {
	what    string
	xs      []float64
	target  float64 // p99 limit in ms; 0: none set
	targetT string  // how the Targets table names it; "" when not listed there
}

func (c *controlResult) rows() []controlRow {
	return []controlRow{
		{fmt.Sprintf("lock in force on the %d proxies, from its creation", ctlProxies), c.ProxyDelay, lockTargetMS, "lock propagation to the proxies, p99 < 1 s"},
		{fmt.Sprintf("lock in force on the %d nodes, from its creation", ctlNodes), c.NodeDelay, lockTargetMS, "lock propagation to the nodes, p99 < 1 s"},
		{fmt.Sprintf("lock in force on all %d, after `jgctl lock` returns", ctlProxies+ctlNodes), c.AfterReturn, lockTargetMS, "lock in force everywhere < 1 s after `jgctl lock` returns, p99"},
		{"`jgctl lock` (process start to exit)", c.LockCmd, 0, ""},
		{"`jg login` through a proxy (process start to exit)", c.Login, 0, ""},
		{"`jg version` (process start baseline)", c.Version, 0, ""},
		{fmt.Sprintf("`GET /v1/discover` on one proxy, %d clients (%.0f requests/s)", discoveryClients, c.DiscoveryRate), c.Discovery, 0, ""},
	}
}

func p99Verdict(p99, limit float64) string { return verdictOf(p99 < limit) }

// markdown is the "Control plane" section of RESULTS.md.
func (c *controlResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Control plane\n\n")
	fmt.Fprintf(&b, "A cluster of its own, started in the same run: one auth+proxy process, %d more proxies joined with proxy tokens, and %d nodes spread over the three (one QUIC tunnel each; a node follows the watch stream of its proxy, a proxy that of the auth server). ", ctlProxies-1, ctlNodes)
	fmt.Fprintf(&b, "%d locks (`jgctl lock --user=… --ttl=10m`) are made one after another, %d ms apart; each proxy and node logs when a new lock is in force there, with the delay from the lock's creation on the auth server (one machine, one clock), and must log every lock. ", c.Params.Locks, lockPace.Milliseconds())
	fmt.Fprintf(&b, "\"After `jgctl lock` returns\" is, per lock, the creation time plus the largest delay, minus when the command returned (0 when every process had the lock first). ")
	fmt.Fprintf(&b, "`jg login` is timed %d times through a joined proxy into a fresh `JUMPGATE_HOME`; the auth server hashes the password with argon2id (64 MiB, 3 passes) by design, and a `jg version` run in the same loop is the cost of starting `jg` at all. ", c.Params.Logins)
	fmt.Fprintf(&b, "Milliseconds; nearest-rank percentiles (below 100 samples p99 is the maximum). The section took %.0f s, starting the cluster included.\n\n", c.Took.Seconds())
	fmt.Fprintf(&b, "| Metric | Samples | p50 | p99 | max | Target | Result |\n|---|---:|---:|---:|---:|---|---|\n")
	for _, r := range c.rows() {
		if len(r.xs) == 0 {
			continue
		}
		target, result := "–", "–"
		if r.target > 0 {
			target = fmt.Sprintf("p99 < %g s", r.target/1000)
			result = p99Verdict(percentile(r.xs, 99), r.target)
		}
		fmt.Fprintf(&b, "| %s | %d | %.1f | %.1f | %.1f | %s | %s |\n", r.what, len(r.xs), percentile(r.xs, 50), percentile(r.xs, 99), slices.Max(r.xs), target, result)
	}
	fmt.Fprintf(&b, "\n`jg login` less the process start (medians): %.0f ms. The auth server's first login after it started, made before these and not counted in them, took %.0f ms.\n",
		percentile(c.Login, 50)-percentile(c.Version, 50), c.FirstLogin)
	if c.RankUS > 0 {
		fmt.Fprintf(&b, "\nGeoIP ranking: what a proxy of a 50-proxy mesh adds to a discovery request (a GeoIP lookup of the client, then ranking 50 candidates; `BenchmarkLookupAndRank50` in cmd/jumpgate, run in this same run) is %.2f µs, %.1f%% of the median `GET /v1/discover` above (those proxies run without a mesh, so that request is the HTTPS and JSON cost alone).\n",
			c.RankUS, 100*c.RankUS/(1000*percentile(c.Discovery, 50)))
	}
	return b.String()
}

// rankTargetUS is the GeoIP ranking target per discovery request.
const rankTargetUS = 5

// measureRanking runs BenchmarkLookupAndRank50 and returns its µs per
// operation.
func measureRanking(ctx context.Context) (float64, error) {
	out, err := goBench(ctx, "./cmd/jumpgate/", "^BenchmarkLookupAndRank50$", "-benchtime", "20000x", "-count", "3")
	if err != nil {
		return 0, err
	}
	var xs []float64
	// The benchmark's own log lines may split its result line: take the
	// number before each "ns/op" (only this benchmark runs).
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := 1; i < len(f); i++ {
			if f[i] == "ns/op" {
				if ns, err := strconv.ParseFloat(f[i-1], 64); err == nil {
					xs = append(xs, ns/1000)
				}
			}
		}
	}
	if len(xs) == 0 {
		return 0, fmt.Errorf("no result in: %s", out)
	}
	return percentile(xs, 50), nil
}

// targetRows are the control-plane lines of the Targets table.
func (c *controlResult) targetRows() string {
	var b strings.Builder
	for _, r := range c.rows() {
		if r.targetT == "" {
			continue
		}
		p99 := percentile(r.xs, 99)
		fmt.Fprintf(&b, "| %s | %.1f ms | %s |\n", r.targetT, p99, p99Verdict(p99, r.target))
	}
	if c.RankUS > 0 {
		fmt.Fprintf(&b, "| GeoIP lookup and ranking of 50 proxies per discovery request < %d µs | %.2f µs | %s |\n", rankTargetUS, c.RankUS, p99Verdict(c.RankUS, rankTargetUS))
	}
	return b.String()
}

// discoveryClients is how many clients ask for discovery at once.
const discoveryClients = 8

// measureDiscovery has discoveryClients clients ask proxy1's discovery as
// fast as they can for d. The control cluster's proxies run without a
// mesh, so this is the HTTPS and JSON cost of discovery, not ranking
// (BenchmarkLookupAndRank50 in cmd/jumpgate measures that).
func (c *ctlCluster) measureDiscovery(ctx context.Context, r *controlResult, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for range discoveryClients {
		cl, err := authapi.NewClient(authapi.ClientConfig{Addr: c.proxies[0], Trust: authapi.TrustConfig{CAPin: c.caPin, Kinds: []identity.Kind{identity.KindProxy}}})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			var lat []float64
			for ctx.Err() == nil {
				t0 := time.Now()
				_, err := cl.Discover(ctx)
				if ctx.Err() != nil {
					break
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("discovery: %w", err)
					}
					mu.Unlock()
					return
				}
				lat = append(lat, ms(time.Since(t0)))
			}
			mu.Lock()
			r.Discovery = append(r.Discovery, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	r.DiscoveryRate = float64(len(r.Discovery)) / time.Since(start).Seconds()
	return nil
}
