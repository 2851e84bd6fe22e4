package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/term"
)

// runSession runs a shell (no command) or a command on client, with a PTY
// when stdin is a terminal and either no command was given or tty is set.
// The remote exit status becomes jg's.
func runSession(client *ssh.Client, command []string, forceTTY, forwardAgent bool) error {
	sess, err := client.NewSession()
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer sess.Close()
	if forwardAgent {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return errors.New("-A: no agent to forward (SSH_AUTH_SOCK is not set)")
		}
		if err := agent.ForwardToRemote(client, sock); err != nil {
			return fmt.Errorf("forward the agent: %w", err)
		}
		if err := agent.RequestAgentForwarding(sess); err != nil {
			fmt.Fprintln(os.Stderr, "jg: the node refused agent forwarding (roles without agent_forwarding?): going on without it")
		}
	}
	sess.Stdin, sess.Stdout, sess.Stderr = os.Stdin, os.Stdout, os.Stderr
	for _, k := range []string{"LANG", "LC_ALL", "LC_CTYPE"} {
		if v := os.Getenv(k); v != "" {
			_ = sess.Setenv(k, v) // the node may refuse; that's fine
		}
	}
	fd := int(os.Stdin.Fd())
	interactive := term.IsTerminal(fd) && (len(command) == 0 || forceTTY)
	if interactive {
		w, h, err := term.GetSize(fd)
		if err != nil {
			w, h = 80, 24
		}
		termName := os.Getenv("TERM")
		if termName == "" {
			termName = "xterm-256color"
		}
		if err := sess.RequestPty(termName, h, w, ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 14400, ssh.TTY_OP_OSPEED: 14400}); err != nil {
			return fmt.Errorf("request terminal: %w", err)
		}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer term.Restore(fd, old) //nolint:errcheck
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(fd); err == nil {
					_ = sess.WindowChange(h, w)
				}
			}
		}()
	}
	if len(command) == 0 {
		if err := sess.Shell(); err != nil {
			return fmt.Errorf("start shell: %w", err)
		}
		err = sess.Wait()
	} else {
		err = sess.Run(strings.Join(command, " "))
	}
	var ee *ssh.ExitError
	var me *ssh.ExitMissingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		if ee.Signal() != "" {
			fmt.Fprintf(os.Stderr, "jg: remote command killed by signal %s\n", ee.Signal())
			return exitError{code: 128 + 15}
		}
		return exitError{code: ee.ExitStatus()}
	case errors.As(err, &me):
		// Say why the connection ended when the transport knows (the
		// resumable stream gave up, with its reason).
		werr := make(chan error, 1)
		go func() { werr <- client.Wait() }()
		select {
		case e := <-werr:
			if e != nil && !errors.Is(e, io.EOF) {
				return fmt.Errorf("the session ended without an exit status: %w", e)
			}
		case <-time.After(time.Second):
		}
		return errors.New("the session ended without an exit status: the connection to the node was lost")
	}
	return err
}
