package authapi

import (
	"context"
	"encoding/hex"
	"net/http"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// CreateLockRequest is `jgctl lock`.
type CreateLockRequest struct {
	User    string            `json:"user,omitempty"`
	Role    string            `json:"role,omitempty"`
	Node    string            `json:"node,omitempty"`
	Login   string            `json:"login,omitempty"`
	Message string            `json:"message,omitempty"`
	TTL     identity.Duration `json:"ttl,omitempty"` // 0: until removed
}

func (s *Server) listLocks(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.cfg.Store.Locks())
}

// createLock replicates a lock. It answers once the lock is committed and
// applied on this server: from there the watch streams carry it to every
// proxy and node, which refuse new sessions and end live ones.
func (s *Server) createLock(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var req CreateLockRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := s.cfg.Now().UTC()
	l := identity.Lock{ID: hex.EncodeToString(randomBytes(6)), User: req.User, Role: req.Role, Node: req.Node, Login: req.Login, Message: req.Message, Created: now, CreatedBy: caller.Name}
	if req.TTL < 0 {
		WriteError(w, http.StatusBadRequest, "lock ttl must not be negative")
		return
	}
	if req.TTL > 0 {
		l.Expires = now.Add(time.Duration(req.TTL))
	}
	if err := identity.CheckLock(l); err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, err := s.apply(state.TypeUpsertLock, state.UpsertLock{Lock: l, Now: now}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.LockCreated, User: caller.Name, Subject: l.ID, Command: l.Target(), Error: l.Message})
	s.cfg.Logger.Info("lock created", "lock", l.ID, "target", l.Target(), "user", caller.Name, "expires", l.Expires)
	WriteJSON(w, http.StatusCreated, l)
}

func (s *Server) deleteLock(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	id := r.PathValue("id")
	if _, err := s.apply(state.TypeDeleteLock, state.DeleteLock{ID: id}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.LockDeleted, User: caller.Name, Subject: id})
	WriteJSON(w, http.StatusOK, struct{}{})
}

// Locks lists every lock (lifted ones included).
func (c *Client) Locks(ctx context.Context) ([]identity.Lock, error) {
	var out []identity.Lock
	return out, c.do(ctx, "GET", "/v1/locks", nil, &out)
}

// CreateLock creates a lock and returns it.
func (c *Client) CreateLock(ctx context.Context, req CreateLockRequest) (*identity.Lock, error) {
	var out identity.Lock
	return &out, c.do(ctx, "POST", "/v1/locks", req, &out)
}

// DeleteLock removes a lock.
func (c *Client) DeleteLock(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/locks/"+id, nil, nil)
}
