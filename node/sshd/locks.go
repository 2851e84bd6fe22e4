package sshd

import (
	"fmt"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

func (c *serverConn) trackChannel(ch ssh.Channel, open bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if open {
		if c.chans == nil {
			c.chans = map[ssh.Channel]struct{}{}
		}
		c.chans[ch] = struct{}{}
		return
	}
	delete(c.chans, ch)
}

// EnforceLocks ends every connection that a lock in force applies to (its
// user, one of its roles, its login, or this node), telling each of its
// sessions why on stderr first. It returns how many connections it ended.
// New connections are refused by Config.Authorize, which the caller makes
// check the same locks.
func (s *Server) EnforceLocks(locks []identity.Lock) int {
	now := s.cfg.Now()
	s.mu.Lock()
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	ended := 0
	for _, c := range conns {
		c.mu.Lock()
		t, authed := c.target, c.authed
		chans := make([]ssh.Channel, 0, len(c.chans))
		for ch := range c.chans {
			chans = append(chans, ch)
		}
		c.mu.Unlock()
		if !authed {
			continue
		}
		l, ok := identity.FindLock(locks, t, now)
		if !ok {
			continue
		}
		reason := (&identity.LockedError{Lock: l}).Error()
		for _, ch := range chans {
			fmt.Fprintf(ch.Stderr(), "\r\njumpgate: %s: this session is ended\r\n", reason)
		}
		e := c.auditEvent(audit.SessionTerminated)
		e.Error = reason
		s.cfg.Audit.Emit(e)
		c.log.Warn("connection ended by a lock", "lock", l.ID, "target", l.Target())
		s.metrics.locked.Inc()
		c.cancel()
		c.nc.Close()
		ended++
	}
	return ended
}
