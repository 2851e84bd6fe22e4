package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cluster is a running auth+proxy process and its nodes.
type cluster struct {
	t         *testing.T
	bin, dir  string
	proxy     string
	auth      string
	admin     string
	procs     map[string]*exec.Cmd
	userLogin string
	env       []string // extra environment of every jumpgate process
}

func build(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+"/", "jumpgate.dev/jumpgate/cmd/jumpgate", "jumpgate.dev/jumpgate/cmd/jg", "jumpgate.dev/jumpgate/cmd/jgctl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a loopback address on 127.0.0.1 whose TCP and UDP ports
// are free; see freeAddrOn.
func freeAddr(t *testing.T) string { t.Helper(); return freeAddrOn(t, "127.0.0.1") }

func (c *cluster) start(name string, args ...string) { c.t.Helper(); c.startEnv(name, nil, args...) }

// startEnv is start with more environment for this process only.
func (c *cluster) startEnv(name string, env []string, args ...string) {
	c.t.Helper()
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(c.bin, "jumpgate"), append([]string{"start", "--log-level=debug"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(append(os.Environ(), c.env...), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.procs[name] = cmd
	c.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if c.t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.dir, name+".log"))
			c.t.Logf("---- %s log ----\n%s", name, tail(b, 4000))
		}
	})
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// run runs a binary from bin with env and stdin, returning combined output
// and the exit code.
func (c *cluster) run(stdin string, env []string, name string, args ...string) (string, int) {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	if strings.Contains(name, "/") {
		cmd = exec.Command(name, args...)
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out), code
}

func (c *cluster) jgctl(args ...string) string {
	c.t.Helper()
	out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", args...)
	if code != 0 {
		c.t.Fatalf("jgctl %v: exit %d\n%s", args, code, out)
	}
	return out
}

func waitFor(t *testing.T, what string, timeout time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newCluster(t *testing.T) *cluster { return newClusterWith(t, nil, nil) }

// bareCluster is a cluster with nothing started yet: the binaries built, a
// directory, and the test's own login as the one roles grant.
func bareCluster(t *testing.T) *cluster {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, bin: build(t), dir: t.TempDir(), procs: map[string]*exec.Cmd{}, userLogin: me.Username}
}

// newClusterWith is newCluster with more arguments for the auth process
// and more environment for every process.
func newClusterWith(t *testing.T, authArgs, env []string) *cluster {
	c := bareCluster(t)
	c.env = env
	c.proxy, c.auth = freeAddr(t), freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	c.start("auth", append([]string{"--roles=auth,proxy", "--cluster-name=e2e", "--proxy-id=proxy1", "--data-dir=" + filepath.Join(c.dir, "auth"),
		"--auth-listen=" + c.auth, "--proxy-listen=" + c.proxy}, authArgs...)...)
	waitFor(t, "auth server", 30*time.Second, func() bool {
		out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0 && strings.Contains(out, "e2e")
	})
	roles := fmt.Sprintf(`kind: role
name: dev
allow:
  logins: [%[1]s]
  node_labels: {"*": "*"}
---
kind: role
name: staging
allow:
  logins: [%[1]s]
  node_labels: {env: staging}
`, c.userLogin)
	rf := filepath.Join(c.dir, "roles.yaml")
	os.WriteFile(rf, []byte(roles), 0o600)
	c.jgctl("roles", "apply", "-f", rf)
	if out, code := c.run("alice-password\n", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "users", "add", "alice", "--roles=dev", "--password-stdin"); code != 0 {
		t.Fatalf("add alice: %s", out)
	}
	if out, code := c.run("bob-password\n", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "users", "add", "bob", "--roles=staging", "--password-stdin"); code != 0 {
		t.Fatalf("add bob: %s", out)
	}
	for _, n := range []struct{ name, env string }{{"node1", "dev"}, {"node2", "staging"}} {
		tok := c.token()
		c.start(n.name, "--roles=node", "--node-name="+n.name, "--labels=env="+n.env, "--data-dir="+filepath.Join(c.dir, n.name),
			"--proxy="+c.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin)
	}
	c.waitOnline("node1", "node2")
	return c
}

// addAlice applies role dev (every node, as the test's own login) and adds
// user alice with it, password "alice-password".
func (c *cluster) addAlice() {
	c.t.Helper()
	rf := filepath.Join(c.dir, "roles-dev.yaml")
	os.WriteFile(rf, []byte(fmt.Sprintf("kind: role\nname: dev\nallow:\n  logins: [%s]\n  node_labels: {\"*\": \"*\"}\n", c.userLogin)), 0o600)
	c.jgctl("roles", "apply", "-f", rf)
	if out, code := c.run("alice-password\n", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "users", "add", "alice", "--roles=dev", "--password-stdin"); code != 0 {
		c.t.Fatalf("add alice: %s", out)
	}
}

// joinToken is a join token and the CA pin that goes with it.
type joinToken struct {
	Token string `json:"token"`
	CAPin string `json:"ca_pin"`
}

// token makes a node join token.
func (c *cluster) token() joinToken { return c.newToken("--type=node") }

// proxyToken makes a proxy join token, for the proxy named name ("": any).
func (c *cluster) proxyToken(name string) joinToken {
	if name == "" {
		return c.newToken("--type=proxy")
	}
	return c.newToken("--type=proxy", "--name="+name)
}

func (c *cluster) newToken(args ...string) (r joinToken) {
	c.t.Helper()
	out := c.jgctl(append(append([]string{"tokens", "add"}, args...), "--json")...)
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		c.t.Fatalf("token: %v: %s", err, out)
	}
	return r
}

func (c *cluster) waitOnline(nodes ...string) {
	waitFor(c.t, "nodes online: "+strings.Join(nodes, ","), 60*time.Second, func() bool {
		out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "nodes", "ls", "--json")
		if code != 0 {
			return false
		}
		var ns []struct {
			ID     string `json:"id"`
			Online bool   `json:"online"`
		}
		json.Unmarshal([]byte(out), &ns)
		up := 0
		for _, n := range ns {
			for _, want := range nodes {
				if n.ID == want && n.Online {
					up++
				}
			}
		}
		return up == len(nodes)
	})
}

// login logs user in with JUMPGATE_HOME=home and returns the env to use.
func (c *cluster) login(user, password string) []string {
	c.t.Helper()
	home := filepath.Join(c.dir, "home-"+user)
	env := []string{"JUMPGATE_HOME=" + home}
	pin := c.pin()
	out, code := c.run(password+"\n", env, "jg", "login", "--proxy="+c.proxy, "--user="+user, "--password-stdin", "--ca-pin="+pin)
	if code != 0 {
		c.t.Fatalf("jg login %s: %s", user, out)
	}
	return env
}

func (c *cluster) pin() string {
	out := c.jgctl("status", "--json")
	var st struct {
		Pins []string `json:"ca_pins"`
	}
	json.Unmarshal([]byte(out), &st)
	if len(st.Pins) == 0 {
		c.t.Fatalf("no CA pin in status: %s", out)
	}
	return st.Pins[0]
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := newCluster(t)
	alice := c.login("alice", "alice-password")

	t.Run("ls", func(t *testing.T) {
		out, code := c.run("", alice, "jg", "ls")
		if code != 0 || !strings.Contains(out, "node1") || !strings.Contains(out, "node2") || !strings.Contains(out, "env=staging") {
			t.Fatalf("jg ls: exit %d\n%s", code, out)
		}
	})
	t.Run("jg ssh command and exit status", func(t *testing.T) {
		out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "hello-from-$(hostname)")
		if code != 0 || !strings.Contains(out, "hello-from-") {
			t.Fatalf("exit %d: %s", code, out)
		}
		_, code = c.run("", alice, "jg", "ssh", "node1", "--", "exit 7")
		if code != 7 {
			t.Fatalf("exit status: got %d, want 7", code)
		}
	})
	t.Run("denials", func(t *testing.T) {
		out, code := c.run("", alice, "jg", "ssh", "nosuchnode", "--", "true")
		if code == 0 || !strings.Contains(out, "not known") {
			t.Errorf("unknown node: exit %d: %s", code, out)
		}
		out, code = c.run("", alice, "jg", "ssh", "not-a-login@node1", "--", "true")
		if code == 0 || !strings.Contains(out, "not-a-login") {
			t.Errorf("disallowed login: exit %d: %s", code, out)
		}
		out, code = c.run("wrong\n", []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-x")}, "jg", "login", "--proxy="+c.proxy, "--user=alice", "--password-stdin", "--ca-pin="+c.pin())
		if code == 0 || !strings.Contains(out, "wrong user name or password") {
			t.Errorf("wrong password: exit %d: %s", code, out)
		}
		out, code = c.run("wrong\n", []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-y")}, "jg", "login", "--proxy="+c.proxy, "--user=alice", "--password-stdin", "--ca-pin=sha256:"+strings.Repeat("00", 32))
		if code == 0 || !strings.Contains(out, "does not match --ca-pin") {
			t.Errorf("wrong CA pin: exit %d: %s", code, out)
		}
		bob := c.login("bob", "bob-password")
		out, code = c.run("", bob, "jg", "ssh", "node1", "--", "true")
		if code == 0 || !strings.Contains(out, "access denied") {
			t.Errorf("bob to node1: exit %d: %s", code, out)
		}
		out, code = c.run("", bob, "jg", "ssh", "node2", "--", "echo", "ok-bob")
		if code != 0 || !strings.Contains(out, "ok-bob") {
			t.Errorf("bob to node2: exit %d: %s", code, out)
		}
		out, _ = c.run("", bob, "jg", "ls")
		if strings.Contains(out, "node1") {
			t.Errorf("bob's jg ls shows node1:\n%s", out)
		}
	})
	t.Run("used join token", func(t *testing.T) {
		tok := c.token()
		c.start("node3", "--roles=node", "--node-name=node3", "--data-dir="+filepath.Join(c.dir, "node3"), "--proxy="+c.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin)
		c.waitOnline("node3")
		out, code := c.run("", nil, "jumpgate", "start", "--roles=node", "--node-name=node4", "--data-dir="+filepath.Join(c.dir, "node4"), "--proxy="+c.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin)
		if code == 0 || !strings.Contains(out, "already used") {
			t.Errorf("reused token: exit %d: %s", code, out)
		}
	})
	t.Run("node over the TCP tunnel transport", func(t *testing.T) { testTCPTransport(t, c, alice) })
	t.Run("garbage on the proxy port", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			conn, err := net.Dial("tcp", c.proxy)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			rand.Read(buf)
			conn.Write(buf)
			conn.Close()
		}
		u, _ := net.Dial("udp", c.proxy)
		for i := 0; i < 20; i++ {
			buf := make([]byte, 1200)
			rand.Read(buf)
			u.Write(buf)
		}
		u.Close()
		out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "still-serving")
		if code != 0 || !strings.Contains(out, "still-serving") {
			t.Fatalf("after garbage: exit %d: %s", code, out)
		}
	})
	t.Run("openssh", func(t *testing.T) { testOpenSSH(t, c, alice) })
	t.Run("audit", func(t *testing.T) {
		b, _ := os.ReadFile(filepath.Join(c.dir, "node1", "audit.log"))
		if !bytes.Contains(b, []byte(`"session.start"`)) || !bytes.Contains(b, []byte(`"user":"alice"`)) {
			t.Errorf("node1 audit log lacks alice's session.start:\n%s", tail(b, 2000))
		}
		b, _ = os.ReadFile(filepath.Join(c.dir, "auth", "audit.log"))
		for _, ev := range []string{`"user.login"`, `"user.login.failed"`, `"proxy.dial.denied"`, `"node.join.failed"`} {
			if !bytes.Contains(b, []byte(ev)) {
				t.Errorf("auth/proxy audit log lacks %s", ev)
			}
		}
		// Every line of every process's log follows the schema; OpenSSH's
		// scp, sftp and ssh -L above wrote their events too.
		seen := validateAuditLogs(t, c.dir)
		for _, want := range []string{"session.port_forward", "session.sftp", "session.sftp.op", "session.exec", "node.joined", "cert.issued"} {
			if seen[want] == 0 {
				t.Errorf("no %s event (saw %v)", want, seen)
			}
		}
	})
	t.Run("no drain of a proxy that shares its process with auth", func(t *testing.T) {
		out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "proxy", "drain", "proxy1", "--addr="+c.proxy)
		if code == 0 || !strings.Contains(out, "same process as an auth server") {
			t.Fatalf("jgctl proxy drain proxy1 (auth in the same process): exit %d: %s", code, out)
		}
		if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "still-serving"); code != 0 || !strings.Contains(out, "still-serving") {
			t.Fatalf("after the refused drain: exit %d: %s", code, out)
		}
	})
	t.Run("node dies mid-session", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node2", "--", "echo started; sleep 60")
		cmd.Env = append(os.Environ(), alice...)
		stdout, _ := cmd.StdoutPipe()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		if !strings.Contains(line, "started") {
			t.Fatalf("session did not start: %q %s", line, stderr.String())
		}
		c.procs["node2"].Process.Kill()
		done := make(chan error, 1)
		go func() { io.Copy(io.Discard, stdout); done <- cmd.Wait() }()
		// The proxy learns that the node's tunnel is dead at the tunnel
		// idle timeout (15 s); jg then tries to resume until proxies have
		// answered for 30 s that none reaches the node.
		select {
		case err := <-done:
			if err == nil {
				t.Error("jg exited 0 after the node died")
			}
			if !strings.Contains(stderr.String(), "node2") || !strings.Contains(stderr.String(), "died or restarted") {
				t.Errorf("jg's message when the node died does not say so: %s", stderr.String())
			}
		case <-time.After(75 * time.Second):
			cmd.Process.Kill()
			t.Fatal("jg did not notice the node died within 75s")
		}
		out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "others-fine")
		if code != 0 || !strings.Contains(out, "others-fine") {
			t.Fatalf("node1 after node2 died: exit %d: %s", code, out)
		}
		out, _ = c.run("", alice, "jg", "ssh", "node2", "--", "true")
		if !strings.Contains(out, "offline") {
			t.Errorf("dial to dead node2 should say offline: %s", out)
		}
	})
}

func testOpenSSH(t *testing.T, c *cluster, env []string) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("OpenSSH client not installed (make deps installs it)")
	}
	cfgOut, code := c.run("", env, "jg", "config")
	if code != 0 {
		t.Fatalf("jg config: %s", cfgOut)
	}
	sshCfg := filepath.Join(c.dir, "ssh_config")
	os.WriteFile(sshCfg, []byte(cfgOut+"    BatchMode yes\n    LogLevel ERROR\n"), 0o600)
	run := func(name string, args ...string) (string, int) {
		return c.run("", env, "/usr/bin/"+name, append([]string{"-F", sshCfg}, args...)...)
	}
	out, code := run("ssh", "node1", "echo", "via-openssh")
	if code != 0 || !strings.Contains(out, "via-openssh") {
		t.Fatalf("ssh node1: exit %d: %s\nconfig:\n%s", code, out, cfgOut)
	}
	if _, code := run("ssh", "node1.e2e", "exit 3"); code != 3 {
		t.Errorf("ssh node1.e2e exit 3: got %d", code)
	}
	// scp both ways, 2 MiB of random bytes.
	src := filepath.Join(c.dir, "payload")
	data := make([]byte, 2<<20)
	rand.Read(data)
	os.WriteFile(src, data, 0o600)
	remote := filepath.Join(c.dir, "remote-copy")
	if out, code := run("scp", "-q", src, "node1:"+remote); code != 0 {
		t.Fatalf("scp to node: %s", out)
	}
	back := filepath.Join(c.dir, "back")
	if out, code := run("scp", "-q", "node1:"+remote, back); code != 0 {
		t.Fatalf("scp from node: %s", out)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Fatalf("scp round trip corrupted the file (%d bytes back)", len(got))
	}
	// sftp batch.
	batch := filepath.Join(c.dir, "sftp-batch")
	sftpOut := filepath.Join(c.dir, "sftp-out")
	os.WriteFile(batch, []byte(fmt.Sprintf("put %s %s\nls -l %s\n", src, sftpOut, sftpOut)), 0o600)
	if out, code := run("sftp", "-b", batch, "node1"); code != 0 {
		t.Fatalf("sftp: exit %d: %s", code, out)
	}
	if got, _ := os.ReadFile(sftpOut); !bytes.Equal(got, data) {
		t.Fatal("sftp put corrupted the file")
	}
	// ssh -L to an echo server on loopback.
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			conn, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
	local := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fwd := exec.CommandContext(ctx, "/usr/bin/ssh", "-F", sshCfg, "-N", "-o", "ExitOnForwardFailure=yes", "-L", local+":"+echo.Addr().String(), "node1")
	fwd.Env = append(os.Environ(), env...)
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); fwd.Wait() }()
	var conn net.Conn
	waitFor(t, "ssh -L listener", 20*time.Second, func() bool {
		conn, err = net.Dial("tcp", local)
		return err == nil
	})
	defer conn.Close()
	msg := []byte("through the port forward\n")
	conn.Write(msg)
	got := make([]byte, len(msg))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("port forward echo: %q, %v", got, err)
	}
}
