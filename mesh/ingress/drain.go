package ingress

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

// Redirect names a healthy proxy that a draining one sends clients to.
type Redirect struct {
	ID, Addr string
}

// drainState is the ingress side of a drain (see Server.Drain).
type drainState struct {
	mu sync.Mutex // guards the following
	on bool
	// redirect picks a healthy proxy for a client at clientAddr; ok false
	// when there is none.
	redirect func(clientAddr string) (Redirect, bool)
}

// Drain makes the server refuse new dials with code "draining" and a
// pointer to a healthy proxy (from redirect, which may be nil). The HTTPS
// API keeps working: logins, discovery (which ranks this proxy last) and
// the watch streams of nodes still attached. Sessions being forwarded go
// on until MoveResumable, Shutdown or Close.
func (s *Server) Drain(redirect func(clientAddr string) (Redirect, bool)) {
	s.drain.mu.Lock()
	s.drain.on = true
	s.drain.redirect = redirect
	s.drain.mu.Unlock()
}

// Draining reports whether Drain was called.
func (s *Server) Draining() bool {
	s.drain.mu.Lock()
	defer s.drain.mu.Unlock()
	return s.drain.on
}

// drainRefusal is the answer to a dial while draining; nil when not
// draining.
func (s *Server) drainRefusal(req DialRequest, clientAddr string) *DialResponse {
	s.drain.mu.Lock()
	on, redirect := s.drain.on, s.drain.redirect
	s.drain.mu.Unlock()
	if !on {
		return nil
	}
	r := &DialResponse{V: req.V, Code: CodeDraining}
	var to Redirect
	ok := false
	if redirect != nil {
		to, ok = redirect(clientAddr)
	}
	if !ok {
		r.Error = fmt.Sprintf("proxy %s is draining (leaving the mesh for maintenance) and knows no healthy proxy to send you to: try again shortly", s.cfg.ProxyID)
		return r
	}
	r.Error = fmt.Sprintf("proxy %s is draining (leaving the mesh for maintenance): connect through proxy %s at %s", s.cfg.ProxyID, to.ID, to.Addr)
	if req.V >= 2 {
		r.Redirect, r.RedirectID = to.Addr, to.ID
	}
	return r
}

// Move pacing: MoveResumable asks moveBatch clients to move, then waits
// moveGap before the next batch (200 sessions take about 300 ms).
const (
	moveBatch = 16
	moveGap   = 25 * time.Millisecond
)

// MoveResumable asks every client whose session runs the resumable stream
// to move to another proxy: it ends this proxy's half of the client's TLS
// connection (close_notify) and stops forwarding the node's bytes to it.
// The client sees a clean end that its node did not send, reconnects
// through another proxy and resumes; the node replays what this proxy did
// not deliver. Sessions without the resumable stream (older clients) are
// left alone. It returns how many clients were asked.
func (s *Server) MoveResumable() int {
	s.mu.Lock()
	var move []*liveSession
	for ls := range s.live {
		if ls.resume {
			move = append(move, ls)
		}
	}
	s.mu.Unlock()
	for i, ls := range move {
		if i > 0 && i%moveBatch == 0 {
			// Clients moving all at once would queue for the CPU of the
			// proxies and nodes they move to (a TLS handshake and a
			// resume proof each), and every one of them would stall the
			// longer for it: move them in batches.
			time.Sleep(moveGap)
		}
		ls.moveOnce.Do(func() {
			if cw, ok := ls.client.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			} else {
				ls.client.Close()
			}
		})
	}
	if len(move) > 0 {
		s.metrics.moves.Add(float64(len(move)))
		s.cfg.Logger.Info("draining: asked resumable clients to move to another proxy", "sessions", len(move))
	}
	return len(move)
}

// SessionCounts returns the sessions being forwarded: all, and those of
// clients that can resume elsewhere.
func (s *Server) SessionCounts() (all, resumable int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ls := range s.live {
		all++
		if ls.resume {
			resumable++
		}
	}
	return all, resumable
}

// startDrain serves POST /v1/drain: an admin asks this proxy to drain.
func (s *Server) startDrain(w http.ResponseWriter, r *http.Request) {
	id, ok := s.caller(w, r, identity.KindAdmin)
	if !ok {
		return
	}
	if s.cfg.StartDrain == nil {
		authapi.WriteError(w, http.StatusNotImplemented, "this proxy cannot be drained through its API")
		return
	}
	var req authapi.DrainRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Timeout < 0 {
		authapi.WriteError(w, http.StatusBadRequest, "drain timeout must not be negative")
		return
	}
	if req.Reason == "" {
		req.Reason = "drain requested by " + id.String()
	}
	st, err := s.cfg.StartDrain(req)
	if err != nil {
		authapi.WriteError(w, http.StatusConflict, err.Error())
		return
	}
	s.cfg.Logger.Info("drain requested", "by", id.String(), "timeout", req.Timeout, "reason", req.Reason)
	authapi.WriteJSON(w, http.StatusAccepted, st)
}

// drainStatus serves GET /v1/drain: 404 when the proxy is not draining.
func (s *Server) drainStatus(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.caller(w, r, identity.KindAdmin); !ok {
		return
	}
	var st *authapi.DrainStatus
	if s.cfg.DrainStatus != nil {
		st = s.cfg.DrainStatus()
	}
	if st == nil {
		authapi.WriteError(w, http.StatusNotFound, fmt.Sprintf("proxy %s is not draining", s.cfg.ProxyID))
		return
	}
	authapi.WriteJSON(w, http.StatusOK, st)
}
