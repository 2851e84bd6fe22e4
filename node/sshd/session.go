package sshd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/node/recording"
)

const (
	// defaultWaitDelay bounds how long a finished program's leftovers
	// hold the session: a background job that keeps stdout open (no PTY),
	// or a process that survives SIGKILL of its group for a moment.
	defaultWaitDelay = 5 * time.Second
	// defaultPTYDrain bounds reading the terminal after the shell exits:
	// its last output is read in full, but a background job that keeps the
	// terminal open does not keep the session.
	defaultPTYDrain = time.Second
)

// session is one "session" channel: at most one program (shell, exec
// command or SFTP) with its I/O.
type session struct {
	c   *serverConn
	ch  ssh.Channel
	id  string
	log *slog.Logger

	// ctx ends when the channel closes or the connection ends; the
	// program's process group is killed then.
	ctx    context.Context
	cancel context.CancelFunc

	wg sync.WaitGroup // the program's waiter and I/O goroutines

	// Owned by the request loop (handleSession's goroutine).
	env     []string
	pty     *ptyRequest
	size    winsize
	started bool
	command string    // exec command or "sftp"; "" for a shell
	proc    *exec.Cmd // nil before start and for in-process SFTP
	ptmx    *os.File  // terminal master, when the program has a PTY

	// startReplied is closed once the client has the reply to its shell, exec
	// or subsystem request: a fast program's exit status and channel
	// close must not overtake the reply, or the client sees the channel
	// gone before it learns the program started.
	startReplied chan struct{}

	bytesIn, bytesOut atomic.Int64
	exitCode          int // set by the waiter; read after wg.Wait

	// rec records the program's output (Config.Recordings), from start
	// until the session ends.
	rec *recording.Recording
	// sftpAudit audits a helper-served SFTP session's operations.
	sftpAudit *sftpAuditor
	// agent is the forwarded agent socket (ssh -A), if any.
	agent *agentForward
}

// newSessionID returns 16 random bytes in hex.
func newSessionID() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// handleSession owns a session channel until it closes.
func (c *serverConn) handleSession(nch ssh.NewChannel) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		c.log.Debug("accept session channel", "err", err)
		return
	}
	c.trackChannel(ch, true)
	defer c.trackChannel(ch, false)
	ctx, cancel := context.WithCancel(c.ctx)
	s := &session{c: c, ch: ch, id: newSessionID(), ctx: ctx, cancel: cancel, startReplied: make(chan struct{})}
	s.log = c.log.With("session", s.id)

	m := c.srv.metrics
	m.total.Inc()
	m.active.Inc()
	defer m.active.Dec()
	started := time.Now()
	c.srv.cfg.Audit.Emit(s.event(audit.SessionStart))
	s.log.Info("session started")

	for req := range reqs {
		s.handleRequest(req)
	}
	// The channel is closed: by the client, by the waiter after the
	// program ended, or because the connection is gone.
	cancel()
	if s.agent != nil {
		s.agent.close()
	}
	s.wg.Wait()
	ch.Close()
	s.finishRecording()

	e := s.event(audit.SessionEnd)
	e.Command = s.command
	e.Code = s.exitCode
	e.BytesIn = s.bytesIn.Load()
	e.BytesOut = s.bytesOut.Load()
	c.srv.cfg.Audit.Emit(e)
	s.log.Info("session ended", "exit_code", s.exitCode, "bytes_in", e.BytesIn, "bytes_out", e.BytesOut,
		"duration", time.Since(started).Round(time.Millisecond))
}

func (s *session) event(typ string) audit.Event {
	e := s.c.auditEvent(typ)
	e.Session = s.id
	return e
}

// handleRequest serves one channel request. Reply does nothing when the
// client wants none.
func (s *session) handleRequest(req *ssh.Request) {
	ok, starts := false, false
	switch req.Type {
	case "pty-req":
		ok = s.handlePtyReq(req.Payload)
	case "env":
		ok = s.handleEnv(req.Payload)
	case "shell":
		ok = s.handleStart("shell", "")
		starts = ok
	case "exec":
		cmd, err := parseExec(req.Payload)
		if err != nil {
			s.log.Info("refused exec request", "err", err)
			s.tellUser(err.Error())
			break
		}
		if !s.c.policy.SFTP && isFileTransfer(cmd) {
			e := s.event(audit.Exec)
			e.Command, e.Error = cmd, "roles do not permit file transfer on this node"
			s.c.srv.cfg.Audit.Emit(e)
			s.tellUser(fmt.Sprintf("your roles do not permit file transfer (SFTP, scp) on node %s: ask an administrator", s.c.srv.cfg.NodeID))
			break
		}
		ok = s.handleStart("exec", cmd)
		starts = ok
	case "subsystem":
		name, err := parseSubsystem(req.Payload)
		if err != nil || name != "sftp" {
			s.log.Info("refused subsystem request", "subsystem", name, "err", err)
			s.tellUser(fmt.Sprintf("subsystem %.40q is not supported: only sftp is", name))
			break
		}
		if !s.c.policy.SFTP {
			e := s.event(audit.SFTP)
			e.Command, e.Error = "sftp", "roles do not permit SFTP on this node"
			s.c.srv.cfg.Audit.Emit(e)
			s.log.Info("refused sftp: roles do not permit it")
			s.tellUser(fmt.Sprintf("your roles do not permit SFTP (or scp) on node %s: ask an administrator", s.c.srv.cfg.NodeID))
			break
		}
		ok = s.handleStart("sftp", "")
		starts = ok
	case "auth-agent-req@openssh.com":
		ok = s.handleAgentRequest()
	case "window-change":
		ok = s.handleWindowChange(req.Payload)
	case "signal":
		ok = s.handleSignal(req.Payload)
	default:
		// x11-req: not supported;
		// keepalive@openssh.com: OpenSSH expects a failure reply.
		s.log.Debug("refused channel request", "type", req.Type)
	}
	if err := req.Reply(ok, nil); err != nil {
		s.log.Debug("reply to channel request", "type", req.Type, "err", err)
	}
	if starts {
		close(s.startReplied)
	}
}

// tellUser writes a message for the user to the channel's stderr.
func (s *session) tellUser(msg string) {
	if _, err := fmt.Fprintf(s.ch.Stderr(), "jumpgate: %s\r\n", msg); err != nil {
		s.log.Debug("write message to client", "err", err)
	}
}

func (s *session) handlePtyReq(payload []byte) bool {
	if s.started {
		return false
	}
	if !s.c.permits("permit-pty") {
		s.tellUser("your certificate does not permit a terminal: ask an administrator")
		return false
	}
	p, size, err := parsePtyReq(payload)
	if err != nil {
		s.log.Info("refused pty request", "err", err)
		return false
	}
	s.pty, s.size = &p, size
	return true
}

func (s *session) handleEnv(payload []byte) bool {
	name, value, ok, err := parseEnv(payload)
	if err != nil {
		s.log.Debug("refused env request", "err", err)
		return false
	}
	if !ok || s.started || len(s.env) >= maxEnvVars {
		return false
	}
	s.env = append(s.env, name+"="+value)
	return true
}

func (s *session) handleWindowChange(payload []byte) bool {
	size, err := parseWindowChange(payload)
	if err != nil {
		s.log.Debug("refused window-change request", "err", err)
		return false
	}
	s.size = size
	if s.rec != nil {
		s.rec.Resize(int(size.Cols), int(size.Rows))
	}
	if s.ptmx != nil {
		if err := setWinsize(s.ptmx, size); err != nil {
			s.log.Debug("resize terminal", "err", err)
			return false
		}
	}
	return true
}

func (s *session) handleSignal(payload []byte) bool {
	sig, err := parseSignal(payload)
	if err != nil {
		s.log.Debug("refused signal request", "err", err)
		return false
	}
	if s.proc == nil || s.proc.Process == nil {
		return false
	}
	if err := s.proc.Process.Signal(sig); err != nil {
		s.log.Debug("deliver signal", "signal", sig, "err", err)
		return false
	}
	s.log.Info("delivered signal", "signal", sig)
	return true
}

// handleStart starts the session's program: kind is "shell", "exec" or
// "sftp".
func (s *session) handleStart(kind, command string) bool {
	if s.started {
		return false
	}
	err := s.startRecording(kind, command)
	if err == nil {
		err = s.start(kind, command)
	}
	if kind == "exec" || kind == "sftp" {
		typ, cmdText := audit.Exec, command
		if kind == "sftp" {
			typ, cmdText = audit.SFTP, "sftp"
		}
		e := s.event(typ)
		e.Command = cmdText
		if err != nil {
			e.Error = err.Error()
		}
		s.c.srv.cfg.Audit.Emit(e)
	}
	if err != nil {
		s.log.Warn("start session program", "kind", kind, "err", err)
		s.tellUser(err.Error())
		return false
	}
	s.started = true
	s.command = command
	if kind == "sftp" {
		s.command = "sftp"
	}
	s.log.Info("session program started", "kind", kind, "command", command)
	return true
}

// start runs the program as the session's OS login. Its errors are shown to
// the user.
func (s *session) start(kind, command string) error {
	srv := s.c.srv
	login, err := lookupLogin(srv.self, srv.cfg.NodeID, s.c.sc.User())
	if err != nil {
		return err
	}
	shellName := filepath.Base(login.Shell)
	switch kind {
	case "shell":
		// "-bash": a login shell, as OpenSSH starts it.
		return s.startProcess(login, login.Shell, []string{"-" + shellName}, s.pty != nil)
	case "exec":
		return s.startProcess(login, login.Shell, []string{shellName, "-c", command}, s.pty != nil)
	case "sftp":
		if !login.Switch {
			return s.startSFTP(login)
		}
		// The node's process cannot serve files as another user: a helper
		// process started as that user does.
		helper, err := srv.sftpHelper(login.Name)
		if err != nil {
			return err
		}
		s.sftpAudit = s.sftpAuditor()
		return s.startProcess(login, helper[0], helper, false)
	}
	return fmt.Errorf("unknown session kind %q", kind)
}

// environ is the program's environment: the login's, Jumpgate's, the
// terminal's, then what the client sent and the allow-list accepted.
func (s *session) environ(login osLogin, withPty bool) []string {
	env := login.environ()
	env = append(env,
		"JUMPGATE_SESSION_ID="+s.id,
		"JUMPGATE_USER="+s.c.ident.Name,
		"JUMPGATE_CLUSTER="+s.c.ident.Cluster,
		"JUMPGATE_NODE="+s.c.srv.cfg.NodeID,
	)
	if withPty {
		env = append(env, "TERM="+s.pty.Term)
	}
	return append(env, s.env...)
}

// startProcess starts path with args as login, in its own process group
// (and session, with a PTY) so that the whole group can be killed when the
// client goes away.
func (s *session) startProcess(login osLogin, path string, args []string, withPty bool) error {
	cmd := exec.CommandContext(s.ctx, path)
	cmd.Args = args
	cmd.Dir = login.Home
	cmd.Env = s.environ(login, withPty)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: login.credential()}
	cmd.Cancel = func() error {
		// The group's id is the leader's pid (Setpgid or Setsid).
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = s.c.srv.waitDelay
	startErr := func(err error) error {
		return fmt.Errorf("could not start %s as %s on node %s (%v): ask an administrator to check the login's shell and home directory", path, login.Name, s.c.srv.cfg.NodeID, err)
	}

	if withPty {
		ptmx, tty, err := openPTY(s.size)
		if err != nil {
			return fmt.Errorf("could not allocate a terminal on node %s (%v): retry without one (ssh -T)", s.c.srv.cfg.NodeID, err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0 // the child's stdin
		err = cmd.Start()
		tty.Close() // the child has its copy; EIO on ptmx once it and its children close theirs
		if err != nil {
			ptmx.Close()
			return startErr(err)
		}
		s.proc, s.ptmx = cmd, ptmx
		outDone := make(chan struct{})
		s.wg.Go(func() {
			defer close(outDone)
			io.Copy(s.recorded(countingWriter{s.ch, &s.bytesOut}), ptmx)
		})
		s.wg.Go(func() {
			io.Copy(ptmx, countingReader{s.ch, &s.bytesIn})
		})
		s.wg.Go(func() {
			err := cmd.Wait()
			if err := ptmx.SetReadDeadline(time.Now().Add(s.c.srv.ptyDrain)); err != nil {
				ptmx.Close()
			}
			<-outDone
			ptmx.Close()
			s.finish(cmd.ProcessState, err)
		})
		return nil
	}

	cmd.SysProcAttr.Setpgid = true
	cmd.Stdout = s.recorded(countingWriter{s.ch, &s.bytesOut})
	cmd.Stderr = s.recorded(countingWriter{s.ch.Stderr(), &s.bytesOut})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return startErr(err)
	}
	if err := cmd.Start(); err != nil {
		return startErr(err)
	}
	s.proc = cmd
	s.wg.Go(func() {
		var in io.Reader = countingReader{s.ch, &s.bytesIn}
		if s.sftpAudit != nil {
			in = io.TeeReader(in, s.sftpAudit)
		}
		io.Copy(stdin, in)
		stdin.Close() // the client's EOF
	})
	s.wg.Go(func() {
		err := cmd.Wait()
		s.finish(cmd.ProcessState, err)
	})
	return nil
}

// startSFTP serves SFTP in process; only for logins the node runs as.
func (s *session) startSFTP(login osLogin) error {
	rw := &sftpChannel{ch: s.ch, in: &s.bytesIn, out: &s.bytesOut, audit: s.sftpAuditor()}
	srv, err := sftp.NewServer(rw, sftp.WithServerWorkingDirectory(login.Home))
	if err != nil {
		return fmt.Errorf("could not start SFTP on node %s (%v): ask an administrator to check the node's logs", s.c.srv.cfg.NodeID, err)
	}
	s.wg.Go(func() {
		// Serve returns when the client closes the channel, or when it
		// is closed under it (connection gone, server closed).
		code := 0
		if err := srv.Serve(); err != nil {
			s.log.Info("sftp session ended with an error", "err", err)
			code = 1
		}
		s.exitCode = code
		s.sendExit(exitStatus{Status: uint32(code)}, nil)
	})
	return nil
}

// finish reports how the program ended and closes the channel.
func (s *session) finish(ps *os.ProcessState, err error) {
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			s.log.Warn("wait for session program", "err", err)
		}
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		s.log.Info("session program exited but left its output open; closed it", "wait_delay", s.c.srv.waitDelay)
	}
	code := 255
	var sig *exitSignal
	if ps != nil {
		ws, ok := ps.Sys().(syscall.WaitStatus)
		switch {
		case ok && ws.Signaled():
			code = 128 + int(ws.Signal())
			if name := signalName(ws.Signal()); name != "" {
				sig = &exitSignal{Signal: name, CoreDumped: ws.CoreDump()}
			}
		default:
			code = ps.ExitCode()
		}
	}
	s.exitCode = code
	s.sendExit(exitStatus{Status: uint32(code)}, sig)
}

// sendExit sends exit-signal if sig is set, else exit-status, then EOF and
// close (RFC 4254 section 6.10). Errors mean the client is gone.
func (s *session) sendExit(st exitStatus, sig *exitSignal) {
	<-s.startReplied
	var err error
	if sig != nil {
		_, err = s.ch.SendRequest("exit-signal", false, ssh.Marshal(sig))
	} else {
		_, err = s.ch.SendRequest("exit-status", false, ssh.Marshal(&st))
	}
	if err != nil {
		s.log.Debug("send exit status", "err", err)
	}
	s.ch.CloseWrite()
	s.ch.Close()
}

// countingWriter and countingReader count the bytes of a session.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// sftpChannel is the channel as pkg/sftp sees it, with byte counts.
type sftpChannel struct {
	ch      ssh.Channel
	in, out *atomic.Int64
	audit   *sftpAuditor // sees what the client sends
}

func (c *sftpChannel) Read(p []byte) (int, error) {
	n, err := c.ch.Read(p)
	c.in.Add(int64(n))
	if c.audit != nil && n > 0 {
		c.audit.Write(p[:n]) //nolint:errcheck // never fails
	}
	return n, err
}

func (c *sftpChannel) Write(p []byte) (int, error) {
	n, err := c.ch.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// Close is called by pkg/sftp only on errors, to stop reading.
func (c *sftpChannel) Close() error { return c.ch.Close() }

// sftpServerPaths are where OpenSSH's sftp-server lives on common
// distributions.
func sftpServerPaths() []string {
	return []string{
		"/usr/lib/openssh/sftp-server",     // Debian, Ubuntu
		"/usr/libexec/openssh/sftp-server", // RHEL, Fedora
		"/usr/lib/ssh/sftp-server",         // Arch, Alpine
		"/usr/libexec/sftp-server",         // FreeBSD, macOS
	}
}

// sftpHelper returns the SFTP helper command for a session as login.
func (s *Server) sftpHelper(login string) ([]string, error) {
	if len(s.cfg.SFTPHelper) > 0 {
		return s.cfg.SFTPHelper, nil
	}
	for _, p := range s.sftpSearch {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return []string{p}, nil
		}
	}
	return nil, fmt.Errorf("node %s has no SFTP helper to serve files as %s: install OpenSSH's sftp-server (openssh-sftp-server) on the node, or configure the node's SFTP helper", s.cfg.NodeID, login)
}

// ServeSFTP serves the SFTP protocol on in and out until the client closes
// in; relative paths are resolved against workDir, or the current
// directory when it is "". An SFTP helper program (Config.SFTPHelper)
// calls it on its stdin and stdout, running as the session's OS user.
func ServeSFTP(in io.Reader, out io.Writer, workDir string) error {
	var opts []sftp.ServerOption
	if workDir != "" {
		opts = append(opts, sftp.WithServerWorkingDirectory(workDir))
	}
	srv, err := sftp.NewServer(stdio{in, out}, opts...)
	if err != nil {
		return fmt.Errorf("start sftp server: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return fmt.Errorf("serve sftp: %w", err)
	}
	return nil
}

// stdio joins a reader and a writer; Close closes whichever can be.
type stdio struct {
	io.Reader
	io.Writer
}

func (s stdio) Close() error {
	if c, ok := s.Reader.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
