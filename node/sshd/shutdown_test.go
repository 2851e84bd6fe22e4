package sshd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// startSleeper runs "sleep 600" in a new session and returns its pid.
func startSleeper(t *testing.T, c *ssh.Client) (*ssh.Session, int) {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("echo $$; exec sleep 600"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("pid %q: %v", line, err)
	}
	return sess, pid
}

// Shutdown with a session that does not end: it waits until its context
// ends, then kills the session, and no goroutine or process is left.
func TestShutdownCutsLiveSession(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		e := newTestEnv(t)
		c := e.client()
		idle := e.client() // a connection without channels closes at once
		sess, pid := startSleeper(t, c)

		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err := e.srv.Shutdown(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want context.DeadlineExceeded after cutting the session", err)
		}
		if err := <-e.serveErr; err != nil {
			t.Errorf("Serve = %v, want nil after Shutdown", err)
		}
		e.serveErr <- nil // for the cleanup's check
		if !processGone(pid) {
			t.Errorf("session process %d survived Shutdown", pid)
		}
		if err := sess.Wait(); err == nil {
			t.Errorf("session ended cleanly, want cut")
		}
		if err := idle.Wait(); err == nil {
			t.Errorf("idle connection still open")
		}
		c.Close()
		idle.Close()
	}()
	waitUntil(t, "goroutines of the server and its clients to end", func() bool {
		return runtime.NumGoroutine() <= base
	})
}

// Shutdown waits for a live session to end on its own and refuses new
// connections and channels meanwhile.
func TestShutdownWaitsForSession(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		e := newTestEnv(t)
		c := e.client()
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
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
		if err := sess.Start("echo ready; read line; echo got-$line; exit 4"); err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, "ready")

		done := make(chan error, 1)
		go func() { done <- e.srv.Shutdown(context.Background()) }()

		// Serve returns once draining started; then the listener is
		// closed and new channels are refused.
		if err := <-e.serveErr; err != nil {
			t.Errorf("Serve = %v, want nil after Shutdown", err)
		}
		e.serveErr <- nil
		if conn, err := net.Dial("tcp", e.addr); err == nil {
			conn.Close()
			t.Errorf("new connection accepted during Shutdown")
		}
		if _, err := c.NewSession(); err == nil || !strings.Contains(err.Error(), "shutting down") {
			t.Errorf("new session during Shutdown: %v, want refused as shutting down", err)
		}
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v while a session was live", err)
		default:
		}

		io.WriteString(stdin, "bye\n")
		err = sess.Wait()
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 4 {
			t.Errorf("Wait = %v, want exit status 4", err)
		}
		out.waitFor(t, "got-bye")
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Shutdown = %v, want nil", err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("Shutdown did not return after the last session ended")
		}
		c.Close()
	}()
	waitUntil(t, "goroutines of the server and its clients to end", func() bool {
		return runtime.NumGoroutine() <= base
	})
}

func TestCloseKillsSessions(t *testing.T) {
	e := newTestEnv(t)
	c := e.client()
	_, pid := startSleeper(t, c)
	if err := e.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !processGone(pid) {
		t.Errorf("process %d survived Close", pid)
	}
	// Serve after Close returns at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Serve(ln); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Errorf("Serve after Close left its listener open")
	}
}
