package sshd

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
)

// Agent forwarding (ssh -A): the session's programs find a socket in
// SSH_AUTH_SOCK; each connection to it opens an auth-agent@openssh.com
// channel back to the client, whose agent answers. The socket lives in a
// directory of its own, mode 0700 and owned by the session's login, and
// goes away with the session. Roles must grant agent_forwarding.

// agentForward is one session's forwarded agent socket.
type agentForward struct {
	dir  string
	sock string
	ln   net.Listener
	wg   sync.WaitGroup
}

// handleAgentRequest serves auth-agent-req@openssh.com: it reports
// whether forwarding was set up.
func (s *session) handleAgentRequest() bool {
	e := s.event(audit.PortForward)
	e.Command = "agent"
	if s.started || s.agent != nil {
		return false
	}
	if !s.c.policy.AgentForwarding {
		e.Error = "roles do not permit agent forwarding on this node"
		s.c.srv.cfg.Audit.Emit(e)
		s.log.Info("refused agent forwarding: roles do not permit it")
		s.tellUser(fmt.Sprintf("your roles do not permit agent forwarding on node %s", s.c.srv.cfg.NodeID))
		return false
	}
	if !s.c.permits("permit-agent-forwarding") {
		s.tellUser("your certificate does not permit agent forwarding")
		return false
	}
	login, err := lookupLogin(s.c.srv.self, s.c.srv.cfg.NodeID, s.c.sc.User())
	if err != nil {
		s.log.Info("agent forwarding: no login", "err", err)
		return false
	}
	a, err := listenAgent(login)
	if err != nil {
		e.Error = err.Error()
		s.c.srv.cfg.Audit.Emit(e)
		s.log.Warn("agent forwarding: cannot listen", "err", err)
		return false
	}
	s.agent = a
	s.env = append(s.env, "SSH_AUTH_SOCK="+a.sock)
	s.c.srv.cfg.Audit.Emit(e)
	a.wg.Go(func() { a.serve(s.c.sc, s) })
	return true
}

// listenAgent makes the socket directory and listens in it, both owned by
// login when the node runs as another user.
func listenAgent(login osLogin) (*agentForward, error) {
	dir, err := os.MkdirTemp("", "jumpgate-agent-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if login.Switch {
		for _, p := range []string{dir, sock} {
			if err := os.Chown(p, int(login.UID), int(login.GID)); err != nil {
				ln.Close()
				os.RemoveAll(dir)
				return nil, fmt.Errorf("give the agent socket to %s: %w", login.Name, err)
			}
		}
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	return &agentForward{dir: dir, sock: sock, ln: ln}, nil
}

// serve forwards each connection to the socket to the client's agent.
func (a *agentForward) serve(sc ssh.Conn, s *session) {
	for {
		conn, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.wg.Go(func() {
			defer conn.Close()
			ch, reqs, err := sc.OpenChannel("auth-agent@openssh.com", nil)
			if err != nil {
				s.log.Debug("agent forwarding: client refused the channel", "err", err)
				return
			}
			go ssh.DiscardRequests(reqs)
			defer ch.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(ch, conn) //nolint:errcheck
				ch.CloseWrite()   //nolint:errcheck
				close(done)
			}()
			io.Copy(conn, ch) //nolint:errcheck
			if uc, ok := conn.(*net.UnixConn); ok {
				uc.CloseWrite() //nolint:errcheck
			}
			<-done
		})
	}
}

// close removes the socket; connections in flight end with the session.
func (a *agentForward) close() {
	a.ln.Close()
	os.RemoveAll(a.dir)
}
