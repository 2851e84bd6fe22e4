package sshd

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
)

func TestExec(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run("echo hello; echo oops >&2; exit 3")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("Run: %v, want exit status 3", err)
	}
	if got := stdout.String(); got != "hello\n" {
		t.Errorf("stdout = %q, want %q", got, "hello\n")
	}
	if got := stderr.String(); got != "oops\n" {
		t.Errorf("stderr = %q, want %q", got, "oops\n")
	}

	ex := e.audit.wait(t, audit.Exec, nil)
	if ex.Command != "echo hello; echo oops >&2; exit 3" || ex.User != "alice" || ex.Login != e.login || ex.Node != testNode || ex.Session == "" {
		t.Errorf("exec event = %+v", ex)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(ex.Session) {
		t.Errorf("session id %q is not 16 hex bytes", ex.Session)
	}
	end := e.audit.wait(t, audit.SessionEnd, nil)
	if end.Code != 3 || end.BytesOut != int64(len("hello\noops\n")) || end.Session != ex.Session {
		t.Errorf("session end event = %+v, want exit code 3, 11 bytes out, session %s", end, ex.Session)
	}
	if got := metricValue(t, e.reg, "jumpgate_node_sessions_total"); got != 1 {
		t.Errorf("sessions_total = %v, want 1", got)
	}
	waitUntil(t, "no active sessions", func() bool { return metricValue(t, e.reg, "jumpgate_node_sessions_active") == 0 })
}

func TestExecStdin(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	data := make([]byte, 256<<10)
	rand.Read(data)
	sess.Stdin = bytes.NewReader(data)
	out, err := sess.Output("cat")
	if err != nil {
		t.Fatalf("cat: %v", err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("cat returned %d bytes, want the %d sent", len(out), len(data))
	}
	end := e.audit.wait(t, audit.SessionEnd, nil)
	if end.BytesIn != int64(len(data)) || end.BytesOut != int64(len(data)) {
		t.Errorf("session end counts in=%d out=%d, want %d each", end.BytesIn, end.BytesOut, len(data))
	}
}

func TestEnv(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Setenv("LANG", "C.UTF-8"); err != nil {
		t.Fatalf("Setenv LANG: %v", err)
	}
	if err := sess.Setenv("LC_TIME", "C"); err != nil {
		t.Fatalf("Setenv LC_TIME: %v", err)
	}
	if err := sess.Setenv("LD_PRELOAD", "/tmp/evil.so"); err == nil {
		t.Errorf("Setenv LD_PRELOAD succeeded, want refused")
	}
	out, err := sess.Output(`echo "$LANG|$LC_TIME|$LD_PRELOAD|$USER|$HOME|$JUMPGATE_SESSION_ID|$JUMPGATE_USER"`)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), "|")
	if len(f) != 7 {
		t.Fatalf("output %q", out)
	}
	home, _ := os.UserHomeDir()
	if f[0] != "C.UTF-8" || f[1] != "C" || f[2] != "" || f[3] != e.login || (home != "" && f[4] != home) || len(f[5]) != 32 || f[6] != "alice" {
		t.Errorf("environment = %q", f)
	}
}

func TestShellPTY(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
		t.Fatalf("RequestPty: %v", err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := collect(stdout)
	if err := sess.Shell(); err != nil {
		t.Fatalf("Shell: %v", err)
	}
	// The arithmetic is expanded by the shell: seeing the result proves it
	// ran the command, not just echoed the typing.
	io.WriteString(stdin, "echo marker-$((6*7)) $TERM; tty\n")
	out.waitFor(t, "marker-42 xterm")
	out.waitFor(t, "/dev/pts/")

	if err := sess.WindowChange(50, 132); err != nil {
		t.Fatalf("WindowChange: %v", err)
	}
	// The resize (a channel request) and the typed command (channel data)
	// are handled by different goroutines on the server, so the command
	// may run first: ask again until the size shows, or the try limit.
	for try := 1; ; try++ {
		fmt.Fprintf(stdin, "echo try%d-$(stty size | tr ' ' x)\n", try)
		m := out.waitForMatch(t, regexp.MustCompile(fmt.Sprintf(`try%d-(\d+x\d+)`, try)))
		if m[1] == "50x132" {
			break
		}
		if try == 50 {
			t.Fatalf("stty size is still %s after window-change to 50x132", m[1])
		}
	}

	io.WriteString(stdin, "exit 7\n")
	err = sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 7 {
		t.Fatalf("Wait: %v, want exit status 7", err)
	}
	end := e.audit.wait(t, audit.SessionEnd, nil)
	if end.Code != 7 || end.BytesIn == 0 || end.BytesOut == 0 {
		t.Errorf("session end = %+v", end)
	}
}

func TestSignal(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := collect(stdout)
	if err := sess.Start("echo ready; exec sleep 600"); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "ready")
	if err := sess.Signal(ssh.SIGTERM); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	err = sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "TERM" {
		t.Fatalf("Wait: %v, want killed by TERM", err)
	}
	if end := e.audit.wait(t, audit.SessionEnd, nil); end.Code != 128+15 {
		t.Errorf("exit code in audit = %d, want 143", end.Code)
	}
}

func TestClientDisconnectKillsProcess(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The shell and a child in its process group.
	if err := sess.Start("sleep 600 & echo $$ $!; wait"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read pids: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(line) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pids %q: %v", line, err)
		}
		if processGone(pid) {
			t.Fatalf("process %d is not running", pid)
		}
		pids = append(pids, pid)
	}
	if len(pids) != 2 {
		t.Fatalf("pids %q, want shell and child", line)
	}
	c.Close() // the client vanishes mid-session

	// SessionEnd is written after the process group was killed and the
	// shell reaped.
	e.audit.wait(t, audit.SessionEnd, nil)
	for _, pid := range pids {
		waitUntil(t, "process "+strconv.Itoa(pid)+" to exit", func() bool { return processGone(pid) })
	}
	waitUntil(t, "no active sessions", func() bool { return metricValue(t, e.reg, "jumpgate_node_sessions_active") == 0 })
}

func TestSFTP(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatalf("sftp client: %v", err)
	}
	defer sc.Close()
	dir := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)

	remote := filepath.Join(dir, "up.bin")
	f, err := sc.Create(remote)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	onDisk, err := os.ReadFile(remote)
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("uploaded file differs (%d bytes, err %v)", len(onDisk), err)
	}

	g, err := sc.Open(remote)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	got, err := io.ReadAll(g)
	g.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("downloaded file differs (%d bytes, err %v)", len(got), err)
	}
	wd, err := sc.Getwd()
	if home, _ := os.UserHomeDir(); err != nil || (home != "" && wd != home) {
		t.Errorf("sftp working directory = %q (%v), want the home directory %q", wd, err, home)
	}
	ev := e.audit.wait(t, audit.SFTP, nil)
	if ev.User != "alice" || ev.Session == "" {
		t.Errorf("sftp event = %+v", ev)
	}
	sc.Close()
	end := e.audit.wait(t, audit.SessionEnd, nil)
	if end.BytesIn < int64(len(data)) || end.BytesOut < int64(len(data)) {
		t.Errorf("sftp session counted in=%d out=%d, want at least %d each", end.BytesIn, end.BytesOut, len(data))
	}
}

func TestDirectTCPIP(t *testing.T) {
	e := newTestEnv(t)
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
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()

	c := e.client()
	conn, err := c.Dial("tcp", echo.Addr().String())
	if err != nil {
		t.Fatalf("dial through node: %v", err)
	}
	msg := []byte("ping through the tunnel")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, %v", got, err)
	}
	conn.Close()
	ev := e.audit.wait(t, audit.PortForward, nil)
	if ev.Command != echo.Addr().String() || ev.Error != "" {
		t.Errorf("port forward event = %+v", ev)
	}

	// A port nothing listens on: the error says so.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	_, err = c.Dial("tcp", addr)
	if err == nil || !strings.Contains(err.Error(), "could not connect to "+addr) {
		t.Errorf("dial closed port: %v, want 'could not connect to %s'", err, addr)
	}
}

func TestRefusedRequests(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	// Remote forwarding is refused.
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Errorf("remote forwarding succeeded, want refused")
	}
	// keepalive@openssh.com gets a failure reply, as OpenSSH expects.
	ok, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
	if err != nil || ok {
		t.Errorf("keepalive: ok=%v err=%v, want a failure reply", ok, err)
	}
	// Unknown channel types are rejected.
	if _, _, err := c.OpenChannel("x11", nil); err == nil {
		t.Errorf("x11 channel opened, want rejected")
	}
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if ok, err := sess.SendRequest("auth-agent-req@openssh.com", true, nil); err != nil || ok {
		t.Errorf("agent forwarding: ok=%v err=%v, want refused", ok, err)
	}
	if err := sess.RequestSubsystem("netconf"); err == nil {
		t.Errorf("subsystem netconf accepted")
	}
	// The session still works.
	if out, err := sess.Output("echo still-here"); err != nil || string(out) != "still-here\n" {
		t.Errorf("exec after refusals: %q, %v", out, err)
	}
}

func TestGarbageDoesNotStopServer(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond })

	// A client that sends garbage is dropped.
	junk, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Close()
	garbage := make([]byte, 1024)
	rand.Read(garbage)
	junk.Write(garbage)
	junk.SetReadDeadline(time.Now().Add(waitLimit))
	// EOF, or a reset because the server did not read all the garbage.
	if _, err := io.Copy(io.Discard, junk); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("garbage connection was not closed by the server: %v", err)
	}

	// A client that stalls after connecting does not block others, and
	// is dropped at the handshake timeout.
	stall, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	stall.Write([]byte("SSH-2.0-"))

	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := sess.Output("echo alive"); err != nil || string(out) != "alive\n" {
		t.Fatalf("exec while another connection stalls: %q, %v", out, err)
	}

	stall.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.Copy(io.Discard, stall); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled connection was not closed at the handshake timeout: %v", err)
	}
}

func TestSessionLimit(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	for i := 0; i < maxSessions; i++ {
		s, err := c.NewSession()
		if err != nil {
			t.Fatalf("session %d: %v", i+1, err)
		}
		defer s.Close()
	}
	_, err := c.NewSession()
	if err == nil || !strings.Contains(err.Error(), "already has 10 sessions open") {
		t.Fatalf("session %d: %v, want refused", maxSessions+1, err)
	}
	// Port forwards are not sessions.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := c.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("port forward with the sessions full: %v", err)
	}
	conn.Close()
}
