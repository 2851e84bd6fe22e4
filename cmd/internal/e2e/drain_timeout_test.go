package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// TestDrainTimeout drains a proxy that carries a session which cannot
// resume (JG_RESUME=off): the drain waits for it, shows it in `jgctl
// proxies ls`, and ends at its deadline: the proxy exits and the session
// ends with it. The session reaches its node through the other proxy's
// tunnel (path "peer p2"), so closing the drained proxy's tunnels does not
// end it early.
func TestDrainTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := bareCluster(t)
	admin := func() []string { return []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth} }
	c.auth = freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	c.start("auth", "--roles=auth", "--cluster-name=drain", "--data-dir="+filepath.Join(c.dir, "auth"), "--auth-listen="+c.auth)
	waitFor(t, "auth server", 30*time.Second, func() bool {
		_, code := c.run("", admin(), "jgctl", "status")
		return code == 0
	})
	p1 := &meshProxy{id: "p1", region: "region-a", ip: "127.0.0.1"}
	p2 := &meshProxy{id: "p2", region: "region-a", ip: "127.0.0.1"}
	for _, p := range []*meshProxy{p1, p2} {
		p.listen, p.gossip, p.peer = freeAddrOn(t, p.ip), freeAddrOn(t, p.ip), freeAddrOn(t, p.ip)
	}
	for _, p := range []*meshProxy{p1, p2} {
		tok := c.proxyToken(p.id)
		seed := p2.gossip
		if p == p2 {
			seed = p1.gossip
		}
		c.start(p.id, "--roles=proxy", "--proxy-id="+p.id, "--region="+p.region, "--data-dir="+filepath.Join(c.dir, p.id),
			"--auth="+c.auth, "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+p.listen,
			"--gossip-listen="+p.gossip, "--peer-listen="+p.peer, "--seeds="+seed)
	}
	c.waitMesh(2, 60*time.Second)
	c.addAlice()
	tok := c.token()
	c.start("node1", "--roles=node", "--node-name=node1", "--data-dir="+filepath.Join(c.dir, "node1"),
		"--proxy="+p2.listen, "--connection-count=1", "--token="+tok.Token, "--ca-pin="+tok.CAPin)
	c.waitOnline("node1")
	c.proxy = p1.listen
	alice := c.login("alice", "alice-password")
	if err := creds.SetProxy(filepath.Join(c.dir, "home-alice"), p1.listen); err != nil {
		t.Fatal(err)
	}

	// p1's exit, watched from now on. (This cleanup runs before start's,
	// which must not Wait for the process at the same time.)
	p1cmd := c.procs["p1"]
	exited := make(chan time.Time, 1)
	go func() { p1cmd.Wait(); exited <- time.Now() }()
	t.Cleanup(func() {
		p1cmd.Process.Kill()
		exited <- <-exited
	})

	// The session: `cat` on node1 through p1, which reaches node1 through
	// p2's tunnel. The directory reaches p1 a moment after the tunnel is
	// up at p2.
	var sess *exec.Cmd
	var in io.WriteCloser
	var out *bufio.Reader
	stderr := &lockedWriter{}
	sessDone := make(chan error, 1)
	waitFor(t, "a session to node1 through p1", 20*time.Second, func() bool {
		sess = exec.Command(filepath.Join(c.bin, "jg"), "--debug", "ssh", "node1", "--", "cat")
		sess.Env = append(append(os.Environ(), alice...), "JG_RESUME=off")
		stderr.Reset()
		sess.Stderr = stderr
		in, _ = sess.StdinPipe()
		stdout, _ := sess.StdoutPipe()
		out = bufio.NewReader(stdout)
		if err := sess.Start(); err != nil {
			t.Fatal(err)
		}
		io.WriteString(in, "line 1\n")
		if line, err := out.ReadString('\n'); err != nil || line != "line 1\n" {
			sess.Process.Kill()
			sess.Wait()
			return false
		}
		go func() { sessDone <- sess.Wait() }()
		return true
	})
	t.Cleanup(func() { sess.Process.Kill() })
	if s := stderr.String(); !strings.Contains(s, "via proxy "+p1.listen+" (path peer p2)") || strings.Contains(s, "resum") {
		t.Fatalf("the session should run through p1 to p2's tunnel, without the resumable stream; jg said:\n%s", s)
	}
	echo := func(line string) error {
		if _, err := io.WriteString(in, line+"\n"); err != nil {
			return err
		}
		got, err := out.ReadString('\n')
		if err == nil && got != line+"\n" {
			err = fmt.Errorf("got %q back", got)
		}
		return err
	}

	const timeout = 6 * time.Second
	drainOut := &lockedWriter{}
	drain := exec.Command(filepath.Join(c.bin, "jgctl"), "proxy", "drain", "p1", "--timeout="+timeout.String())
	drain.Env = append(os.Environ(), admin()...)
	drain.Stdout, drain.Stderr = drainOut, drainOut
	start := time.Now()
	if err := drain.Start(); err != nil {
		t.Fatal(err)
	}
	drainDone := make(chan error, 1)
	go func() { drainDone <- drain.Wait() }()
	t.Cleanup(func() { drain.Process.Kill() })

	// While it drains, auth's list of proxies shows the drain's phase and
	// the session it waits for; the session still works.
	var row string
	waitFor(t, "jgctl proxies ls to show p1 waiting for its session", timeout-time.Second, func() bool {
		for _, l := range strings.Split(c.jgctl("proxies", "ls"), "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == "p1" {
				row = l
			}
		}
		return strings.Contains(row, "waiting: 1 sessions (0 resumable), 0 tunnels left")
	})
	if !strings.Contains(row, " draining ") {
		t.Errorf("p1's row in jgctl proxies ls does not say draining: %s", row)
	}
	t.Logf("%v into the drain: %s", time.Since(start).Round(time.Millisecond), row)
	if err := echo("line 2, during the drain"); err != nil {
		t.Fatalf("the session during the drain: %v", err)
	}

	// At the deadline the proxy exits, and the session with it.
	var took time.Duration
	select {
	case at := <-exited:
		took = at.Sub(start)
		exited <- at
	case <-time.After(20 * time.Second):
		t.Fatalf("p1 still runs %v after a drain with timeout %v; jgctl said:\n%s", time.Since(start).Round(time.Millisecond), timeout, drainOut.String())
	}
	t.Logf("p1 exited %v after the drain started (timeout %v)", took.Round(time.Millisecond), timeout)
	if took < timeout-time.Second || took > timeout+9*time.Second {
		// (A late exit has been the shutdown after the drain waiting
		// --shutdown-timeout for the sessions the drain gave up on.)
		t.Errorf("p1 exited %v after a drain with timeout %v; want it to exit at about the deadline, as jgctl proxy drain --timeout promises", took.Round(time.Millisecond), timeout)
	}
	select {
	case err := <-sessDone:
		if err == nil {
			t.Errorf("the session ended with status 0 when its proxy exited; jg said:\n%s", stderr.String())
		}
		t.Logf("session ended %v after p1 exited: %v", time.Since(start)-took, err)
	case <-time.After(5 * time.Second):
		t.Errorf("the session still runs 5s after its proxy exited")
	}
	select {
	case err := <-drainDone:
		if s := drainOut.String(); err != nil || !strings.Contains(s, "Proxy p1 has drained and exited") {
			t.Errorf("jgctl proxy drain: %v:\n%s", err, s)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("jgctl proxy drain still runs 10s after p1 exited:\n%s", drainOut.String())
	}
	if b, _ := os.ReadFile(filepath.Join(c.dir, "p1.log")); !strings.Contains(string(b), "drain timeout: exiting with sessions still open") {
		t.Errorf("p1's log does not say the drain timed out with a session open")
	}
}
