package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedWriter is a bytes.Buffer safe to read while a process writes it.
type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Reset forgets what was written so far.
func (w *lockedWriter) Reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Reset()
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestLocks locks a user while she has two live sessions (jg and plain
// OpenSSH): both end, with the lock's message on her terminal, new
// sessions and logins are refused, and everything works again after
// unlock. The time from `jgctl lock` returning to each session's end is
// measured and reported, not asserted tightly (the machine is shared).
func TestLocks(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Fatal("OpenSSH client not installed: run make deps")
	}
	c := newCluster(t)
	alice := c.login("alice", "alice-password")
	cfgOut, code := c.run("", alice, "jg", "config")
	if code != 0 {
		t.Fatalf("jg config: %s", cfgOut)
	}
	sshCfg := filepath.Join(c.dir, "ssh_config")
	os.WriteFile(sshCfg, []byte(cfgOut+"    BatchMode yes\n    LogLevel ERROR\n"), 0o600)

	loop := "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done"
	type live struct {
		name string
		cmd  *exec.Cmd
		out  *lockedWriter
		done chan struct{}
		end  time.Time
	}
	start := func(name string, argv ...string) *live {
		l := &live{name: name, out: &lockedWriter{}, done: make(chan struct{})}
		l.cmd = exec.Command(argv[0], argv[1:]...)
		l.cmd.Env = append(os.Environ(), alice...)
		l.cmd.Stdout, l.cmd.Stderr = l.out, l.out
		if err := l.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { l.cmd.Wait(); l.end = time.Now(); close(l.done) }()
		t.Cleanup(func() { l.cmd.Process.Kill(); <-l.done })
		return l
	}
	sessions := []*live{
		start("jg ssh", filepath.Join(c.bin, "jg"), "ssh", "node1", "--", loop),
		start("OpenSSH", "/usr/bin/ssh", "-F", sshCfg, "node1", loop),
	}
	for _, s := range sessions {
		waitFor(t, s.name+" streaming", 30*time.Second, func() bool { return strings.Contains(s.out.String(), "tick 3") })
	}

	out := c.jgctl("lock", "--user=alice", "--ttl=1h", "--message=laptop reported stolen")
	locked := time.Now()
	if !strings.Contains(out, "Locked user alice") {
		t.Fatalf("jgctl lock: %s", out)
	}
	for _, s := range sessions {
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still running 10 s after the lock:\n%s", s.name, s.out.String())
		}
		t.Logf("%s ended %v after jgctl lock returned", s.name, s.end.Sub(locked).Round(time.Millisecond))
		if s.cmd.ProcessState.ExitCode() == 0 || strings.Contains(s.out.String(), "tick 600") {
			t.Errorf("%s ran to completion despite the lock", s.name)
		}
	}
	if o := sessions[0].out.String(); !strings.Contains(o, "laptop reported stolen") {
		t.Errorf("the jg session did not show the lock's message:\n%s", o[max(0, len(o)-400):])
	}

	out, code = c.run("", alice, "jg", "ssh", "node1", "--", "true")
	if code == 0 || !strings.Contains(out, "locked") || !strings.Contains(out, "laptop reported stolen") {
		t.Errorf("new session while locked: exit %d: %s", code, out)
	}
	out, code = c.run("alice-password\n", []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-alice-2")}, "jg", "login", "--proxy="+c.proxy, "--user=alice", "--password-stdin", "--ca-pin="+c.pin())
	if code == 0 || !strings.Contains(out, "locked") {
		t.Errorf("login while locked: exit %d: %s", code, out)
	}
	ls := c.jgctl("locks", "ls")
	if !strings.Contains(ls, "user alice") || !strings.Contains(ls, "in force") {
		t.Errorf("jgctl locks ls:\n%s", ls)
	}
	id := strings.Fields(strings.Split(ls, "\n")[1])[0]
	c.jgctl("unlock", id)
	waitFor(t, "alice's sessions allowed again", 10*time.Second, func() bool {
		out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "unlocked")
		return code == 0 && strings.Contains(out, "unlocked")
	})

	// A node lock: nobody reaches node2; node1 is unaffected.
	c.jgctl("lock", "--node=node2", "--message=maintenance")
	waitFor(t, "node2 locked", 10*time.Second, func() bool {
		out, code := c.run("", alice, "jg", "ssh", "node2", "--", "true")
		return code != 0 && strings.Contains(out, "node node2 is locked")
	})
	if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "still-fine"); code != 0 || !strings.Contains(out, "still-fine") {
		t.Errorf("node1 under a node2 lock: exit %d: %s", code, out)
	}

	// Both the node and the proxy wrote audit events for the ended session.
	for _, f := range []string{filepath.Join(c.dir, "node1", "audit.log"), filepath.Join(c.dir, "auth", "audit.log")} {
		b, _ := os.ReadFile(f)
		if !bytes.Contains(b, []byte(`"session.terminated"`)) {
			t.Errorf("%s has no session.terminated event", f)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(c.dir, "auth", "audit.log")); !bytes.Contains(b, []byte(`"lock.created"`)) {
		t.Error("the auth audit log has no lock.created event")
	}
	seen := validateAuditLogs(t, c.dir)
	for _, want := range []string{"lock.created", "lock.deleted", "session.terminated"} {
		if seen[want] == 0 {
			t.Errorf("no valid %s event (saw %v)", want, seen)
		}
	}
}
