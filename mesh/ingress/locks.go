package ingress

import (
	"net"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

// LockGrace is how long the proxy lets a locked session's node end it
// first: the node writes the reason to the user's terminal, which the
// proxy (forwarding encrypted bytes) cannot. Then the proxy cuts it
// anyway, so a lock holds even against a node that is not enforcing.
const LockGrace = 250 * time.Millisecond

// liveSession is one forwarded session.
type liveSession struct {
	target       identity.LockTarget
	client, node net.Conn
	remote       string
	cutOnce      sync.Once
	resume       bool      // the client runs the resumable stream (dial v2)
	moveOnce     sync.Once // MoveResumable
}

func (s *Server) trackLive(ls *liveSession, open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if open {
		s.live[ls] = struct{}{}
	} else {
		delete(s.live, ls)
	}
}

// EnforceLocks ends every forwarded session that a lock in force applies
// to (after LockGrace) and returns how many it found. Dials are checked
// against the Cache's locks as they come.
func (s *Server) EnforceLocks(locks []identity.Lock) int {
	now := time.Now()
	s.mu.Lock()
	var hit []*liveSession
	var why []identity.Lock
	for ls := range s.live {
		if l, ok := identity.FindLock(locks, ls.target, now); ok {
			hit = append(hit, ls)
			why = append(why, l)
		}
	}
	s.mu.Unlock()
	for i, ls := range hit {
		l := why[i]
		ls.cutOnce.Do(func() {
			reason := (&identity.LockedError{Lock: l}).Error()
			s.cfg.Logger.Warn("ending session: locked", "user", ls.target.User, "node", ls.target.Node, "login", ls.target.Login, "lock", l.ID)
			s.cfg.Audit.Emit(audit.Event{Type: audit.SessionTerminated, User: ls.target.User, Roles: ls.target.Roles, Node: ls.target.Node, Login: ls.target.Login, RemoteAddr: ls.remote, Error: reason})
			time.AfterFunc(LockGrace, func() {
				ls.client.Close()
				ls.node.Close()
			})
		})
	}
	return len(hit)
}
