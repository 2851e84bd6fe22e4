package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/tunnel/proto"
)

// drainNoticeTimeout bounds sending one Drain message to an agent.
const drainNoticeTimeout = 5 * time.Second

// Drain puts the server in draining mode: new tunnels are refused with a
// reason that sends their agents elsewhere, and every agent whose tunnel
// speaks protocol 2 or later is sent a Drain message so that it opens a
// tunnel to another proxy now (older agents learn it from discovery, or
// when Shutdown closes their tunnel). Dials through the existing tunnels go
// on working. It returns how many agents were told; calling it again tells
// only the tunnels that came up since (none: they are refused).
func (s *Server) Drain(reason string, deadline time.Time) int {
	s.mu.Lock()
	s.draining = true
	var notify []*tunnel
	for _, list := range s.nodes {
		for _, t := range list {
			if t.version >= 2 && !t.drainSent {
				t.drainSent = true
				notify = append(notify, t)
			}
		}
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, t := range notify {
		wg.Go(func() {
			if err := s.sendDrain(t, reason, deadline); err != nil {
				s.log.Info("could not tell an agent that this proxy drains; it learns it from discovery", "node", t.info.ID, "err", err)
			}
		})
	}
	wg.Wait()
	s.log.Info("draining: told agents to move their tunnels", "told", len(notify), "reason", reason)
	return len(notify)
}

func (s *Server) sendDrain(t *tunnel, reason string, deadline time.Time) error {
	ctx, cancel := context.WithTimeout(s.serveCtx, drainNoticeTimeout)
	defer cancel()
	st, err := t.conn.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	st.SetWriteDeadline(time.Now().Add(drainNoticeTimeout))
	if err := proto.WriteMessage(st, proto.Drain{Version: t.version, Reason: reason, Deadline: deadline}); err != nil {
		st.Abort(proto.StreamCanceled)
		return err
	}
	return st.Close()
}

// Draining reports whether Drain was called.
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Load is what a server holds: nodes with a tunnel here, tunnels, and
// dialed connections open through them.
type Load struct {
	Nodes, Tunnels, Streams int
}

// Load counts what the server holds now.
func (s *Server) Load() Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	var l Load
	l.Nodes = len(s.nodes)
	for _, list := range s.nodes {
		for _, t := range list {
			l.Tunnels++
			l.Streams += t.streams
		}
	}
	return l
}

// CloseStreams closes every dialed connection open through this server's
// tunnels, batch at a time with gap between batches, and returns how many
// it closed. A draining proxy calls it before closing its tunnels: the
// sessions on them (from users on other proxies) move to the nodes' new
// tunnels, and in batches they do not all queue for the same CPUs at once.
func (s *Server) CloseStreams(batch int, gap time.Duration) int {
	s.mu.Lock()
	var all []*conn
	for _, list := range s.nodes {
		for _, t := range list {
			for c := range t.conns {
				all = append(all, c)
			}
		}
	}
	s.mu.Unlock()
	for i, c := range all {
		if i > 0 && batch > 0 && i%batch == 0 {
			time.Sleep(gap)
		}
		c.Close()
	}
	return len(all)
}
