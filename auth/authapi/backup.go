package authapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// backup answers GET /v1/backup with a state.Backup of the cluster.
//
// Any auth server may answer, a follower's state may lag the leader's by
// a few entries, and a backup must hold every write acknowledged before it
// was asked for. So the server first replicates a no-op: it goes through
// the leader, which commits it after every write it acknowledged, and
// s.apply returns once this server has applied it, and with it everything
// before. The snapshot taken then is current.
func (s *Server) backup(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	if _, err := s.apply(state.TypeNoop|state.FlagIgnorable, state.Noop{}); err != nil {
		s.applyErr(w, fmt.Errorf("bring this auth server's state up to date for the backup: %w", err))
		return
	}
	b, err := state.NewBackup(s.cfg.Store, s.cfg.Now())
	if err != nil {
		WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.BackupTaken, User: caller.Name, Cluster: b.Cluster, RemoteAddr: r.RemoteAddr,
		Subject: fmt.Sprintf("raft index %d", b.Index)})
	s.cfg.Logger.Info("backup taken", "user", caller.Name, "index", b.Index)
	w.Header().Set("Cache-Control", "no-store") // password hashes, mesh keys
	WriteJSON(w, http.StatusOK, b)
}

// Backup fetches a backup of the cluster's state: the state.Backup JSON as
// the server sent it, for state.VerifyBackup and a file. It holds password
// hashes and the mesh gossip keys.
func (c *Client) Backup(ctx context.Context) ([]byte, error) {
	var out json.RawMessage
	if err := c.do(ctx, "GET", "/v1/backup", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}
