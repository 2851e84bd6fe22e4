package sshd

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// killLater kills a background job a test left behind on purpose.
func killLater(t *testing.T, text string) {
	t.Helper()
	m := regexp.MustCompile(`bgpid=(\d+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no background pid in %q", text)
	}
	pid, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
}

// A background job that keeps the terminal open does not keep the session
// once the shell has exited.
func TestPTYBackgroundJobDoesNotHoldSession(t *testing.T) {
	e := startTestEnv(t)
	e.srv.ptyDrain = 100 * time.Millisecond
	e.serve()
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	out := collect(stdout)
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "sleep 600 & echo bgpid=$!; echo last-$((1+1))\n")
	killLater(t, out.waitFor(t, "last-2"))
	io.WriteString(stdin, "exit 0\n")
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Wait = %v, want exit status 0", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("session still open after the shell exited")
	}
}

// The same without a PTY: the job holds stdout, and the session ends after
// the wait delay.
func TestExecBackgroundJobDoesNotHoldSession(t *testing.T) {
	e := startTestEnv(t)
	e.srv.waitDelay = 100 * time.Millisecond
	e.serve()
	c := e.client()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	stdout, _ := sess.StdoutPipe()
	out := collect(stdout)
	if err := sess.Start("sleep 600 & echo bgpid=$!; exit 2"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err := <-done:
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 2 {
			t.Errorf("Wait = %v, want exit status 2", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("session still open after the command exited")
	}
	<-out.done
	killLater(t, out.String())
}

func TestServeSFTP(t *testing.T) {
	dir := t.TempDir()
	clientIn, serverOut := io.Pipe()
	serverIn, clientOut := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- ServeSFTP(serverIn, serverOut, dir)
		serverOut.Close()
	}()
	c, err := sftp.NewClientPipe(clientIn, clientOut)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	if wd, err := c.Getwd(); err != nil || wd != dir {
		t.Errorf("Getwd = %q, %v; want %q", wd, err, dir)
	}
	f, err := c.Create("relative.txt")
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	f.Write([]byte("hi"))
	f.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "relative.txt")); err != nil || string(b) != "hi" {
		t.Errorf("file in workDir = %q, %v", b, err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeSFTP = %v, want nil when the client closes", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("ServeSFTP did not return after the client closed")
	}
}
