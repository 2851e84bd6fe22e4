package authapi

import (
	"context"
	"net/http"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

// sharePresence passes a proxy's presence report on to the other auth
// servers, so that each answers `jgctl nodes ls` and `proxies ls` for
// every proxy, not only those that report to it. Presence is soft state
// (it expires with its TTL) and never goes through raft; a report that
// does not get through is replaced by the next one.
func (s *Server) sharePresence(rep PresenceReport) {
	if s.cfg.PeerClient == nil {
		return
	}
	for _, a := range s.cfg.Store.AuthServers() {
		if a.ID == s.cfg.ID {
			continue
		}
		go func() {
			c, err := s.peerClient(a.APIAddr)
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.do(ctx, http.MethodPost, "/v1/internal/presence", rep, nil); err != nil {
				s.cfg.Logger.Debug("share presence report", "auth_server", a.ID, "proxy", rep.Proxy, "err", err)
			}
		}()
	}
}

// internalPresence stores a presence report another auth server received.
func (s *Server) internalPresence(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	var rep PresenceReport
	if !readJSON(w, r, &rep) {
		return
	}
	if err := identity.CheckName(rep.Proxy); err != nil {
		WriteError(w, http.StatusBadRequest, "presence report: proxy: "+err.Error())
		return
	}
	s.storePresence(rep)
	w.WriteHeader(http.StatusNoContent)
}

// storePresence keeps a proxy's report for its TTL (30 s when missing or
// over 5 minutes).
func (s *Server) storePresence(rep PresenceReport) {
	ttl := time.Duration(rep.TTL)
	if ttl <= 0 || ttl > 5*time.Minute {
		ttl = 30 * time.Second
	}
	now := s.cfg.Now()
	s.mu.Lock()
	s.presence[rep.Proxy] = presence{report: rep, expires: now.Add(ttl), seen: now}
	s.mu.Unlock()
}
