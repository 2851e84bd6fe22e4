package authapi

import (
	"context"
	"crypto/x509"
	"net/http"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// RotateRequest moves the CA rotation to Phase ("init", "update_clients",
// "update_servers", "standby", "rollback").
type RotateRequest struct {
	Phase string `json:"phase"`
	// Mode and Grace are recorded at init ("manual" or "auto").
	Mode  string            `json:"mode,omitempty"`
	Grace identity.Duration `json:"grace,omitempty"`
}

// CAStatus is `jgctl ca status`.
type CAStatus struct {
	Rotation state.Rotation `json:"rotation"`
	// PhaseName is Rotation.Phase as operators see it.
	PhaseName string `json:"phase_name"`
	// Next is where the rotation may go from here.
	Next    []string         `json:"next,omitempty"`
	Servers []CAServerStatus `json:"servers"`
	// Pins of the trusted TLS CAs (for --ca-pin).
	Pins []string `json:"pins"`
}

// CAServerStatus is one auth server's part in the rotation.
type CAServerStatus struct {
	ID         string `json:"id"`
	Generation int    `json:"generation"`
	// Published: it has made and published its keys for the rotation.
	Published        bool `json:"published"`
	SignsServerCerts bool `json:"signs_server_certs"`
}

func (s *Server) caStatus(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, s.CAStatus())
}

// CAStatus reports the rotation and each server's part in it.
func (s *Server) CAStatus() CAStatus {
	rot := s.cfg.Store.Rotation()
	st := CAStatus{Rotation: rot, PhaseName: state.PhaseName(rot.Phase), Servers: []CAServerStatus{}}
	for _, p := range state.NextPhases(rot.Phase) {
		st.Next = append(st.Next, state.PhaseName(p))
	}
	for _, a := range s.cfg.Store.AuthServers() {
		st.Servers = append(st.Servers, CAServerStatus{ID: a.ID, Generation: a.Generation, Published: len(a.NextKeys.TLS) > 0, SignsServerCerts: a.SignsServerCerts})
	}
	for _, der := range s.cfg.Store.CAs().TLS {
		if c, err := x509.ParseCertificate(der); err == nil {
			st.Pins = append(st.Pins, ca.Pin(c))
		}
	}
	return st
}

// rotateCA moves the rotation one phase (jgctl ca rotate).
func (s *Server) rotateCA(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var req RotateRequest
	if !readJSON(w, r, &req) {
		return
	}
	phase := req.Phase
	if phase == "standby" {
		phase = state.PhaseStandby
	}
	from := s.cfg.Store.Rotation().Phase
	if _, err := s.apply(state.TypeRotateCA, state.RotateCA{Phase: phase, Mode: req.Mode, Grace: time.Duration(req.Grace), Now: s.cfg.Now().UTC()}); err != nil {
		s.applyErr(w, err)
		return
	}
	if s.cfg.OnRotate != nil {
		s.cfg.OnRotate()
	}
	s.cfg.Audit.Emit(auditCA(caller.Name, state.PhaseName(from), state.PhaseName(phase)))
	s.cfg.Logger.Info("CA rotation phase", "from", state.PhaseName(from), "to", state.PhaseName(phase), "user", caller.Name)
	WriteJSON(w, http.StatusOK, s.CAStatus())
}

// CAStatus fetches the CA rotation status.
func (c *Client) CAStatus(ctx context.Context) (*CAStatus, error) {
	var out CAStatus
	return &out, c.do(ctx, "GET", "/v1/ca", nil, &out)
}

// RotateCA moves the CA rotation to req.Phase.
func (c *Client) RotateCA(ctx context.Context, req RotateRequest) (*CAStatus, error) {
	var out CAStatus
	return &out, c.do(ctx, "POST", "/v1/ca/rotate", req, &out)
}

func auditCA(user, from, to string) audit.Event {
	return audit.Event{Type: audit.CertAuthorityX, User: user, Command: "rotate " + from + " -> " + to}
}
