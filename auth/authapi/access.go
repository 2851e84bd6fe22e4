package authapi

// Users' own calls: access requests, certificates with approved requests,
// MFA devices and per-session MFA certificates, session recordings.
//
// Users never talk to auth servers directly. Their jg calls the proxy at
// /v1/user/..., signing each call with its certificate's key (proof.go);
// the proxy checks the user's certificate and forwards the call here with
// the certificate in HeaderUserCert and the signature. The auth server
// checks the certificate again against the cluster's TLS CAs and the
// signature against its key, so a proxy can forward a user's call but
// never make one up.

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// HeaderUserCert carries the DER of the user's TLS certificate (base64) on
// calls a proxy forwards for a user.
const HeaderUserCert = "Jumpgate-User-Cert"

// userHandler serves a user's call forwarded by a proxy.
type userHandler func(w http.ResponseWriter, r *http.Request, user identity.Identity, proxy identity.Identity)

// requireUser checks that a proxy forwards the call and that the user's
// certificate it carries is valid for this cluster and not locked.
func (s *Server) requireUser(h userHandler) http.HandlerFunc {
	return s.require(func(w http.ResponseWriter, r *http.Request, proxy identity.Identity) {
		user, cert, err := s.forwardedCert(r, identity.KindUser)
		if err != nil {
			WriteError(w, http.StatusUnauthorized, err.Error())
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			WriteError(w, http.StatusRequestEntityTooLarge, "request body too large")
			return
		}
		if err := verifyUserCall(cert.PublicKey, r, body, s.cfg.Now()); err != nil {
			WriteError(w, http.StatusUnauthorized, err.Error())
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err := identity.CheckLocks(s.cfg.Store.Locks(), identity.LockTarget{User: user.Name, Roles: user.Roles}, s.cfg.Now()); err != nil {
			WriteError(w, http.StatusForbidden, err.Error())
			return
		}
		r = r.WithContext(withUserCert(r.Context(), cert))
		h(w, r, user, proxy)
	}, identity.KindProxy)
}

// --- access requests --------------------------------------------------------

// CreateAccessRequest is a user's request for roles (jg request create).
type CreateAccessRequest struct {
	Roles  []string `json:"roles"`
	Reason string   `json:"reason"`
	// Duration asks for a shorter access than the roles allow ("" for
	// the most they allow).
	Duration identity.Duration `json:"duration,omitempty"`
}

// ReviewRequest approves or denies an access request (jgctl requests).
type ReviewRequest struct {
	Approve bool   `json:"approve"`
	Reason  string `json:"reason,omitempty"`
}

// RequestPendingFor is how long a request waits for a review.
const RequestPendingFor = 24 * time.Hour

func (s *Server) createRequest(w http.ResponseWriter, r *http.Request, user, proxy identity.Identity) {
	var req CreateAccessRequest
	if !readJSON(w, r, &req) {
		return
	}
	req.Reason = strings.TrimSpace(req.Reason)
	switch {
	case len(req.Roles) == 0:
		WriteError(w, http.StatusBadRequest, "name the roles you need: jg request create --roles=ROLE --reason=...")
		return
	case req.Reason == "":
		WriteError(w, http.StatusBadRequest, "give a reason: reviewers see it, and it goes into the audit log")
		return
	case len(req.Reason) > 1024:
		WriteError(w, http.StatusBadRequest, "the reason is longer than 1024 characters")
		return
	case len(req.Roles) > 16:
		WriteError(w, http.StatusBadRequest, "at most 16 roles per request")
		return
	}
	// What may be requested follows from the user's own roles, not from
	// roles an earlier request granted: requests do not chain.
	base := user
	base.Roles = s.baseRoles(user)
	var longest time.Duration = identity.MaxRequestDuration
	for _, role := range req.Roles {
		if _, ok := s.cfg.Store.Role(role); !ok {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("role %s does not exist", role))
			return
		}
		if slices.Contains(user.Roles, role) {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("you have role %s already", role))
			return
		}
		d, err := identity.CheckRequest(base, s.cfg.Store.Role, role)
		if err != nil {
			s.cfg.Audit.Emit(audit.Event{Type: audit.AccessRequestCreated, User: user.Name, Roles: req.Roles, Reason: req.Reason, Proxy: proxy.Name, Error: err.Error()})
			WriteError(w, http.StatusForbidden, err.Error())
			return
		}
		longest = min(longest, d)
	}
	if d := time.Duration(req.Duration); d > 0 && d < longest {
		longest = d
	}
	now := s.cfg.Now().UTC()
	ar := state.AccessRequest{ID: newRequestID(), User: user.Name, Roles: req.Roles, Reason: req.Reason, Duration: identity.Duration(longest),
		Created: now, PendingUntil: now.Add(RequestPendingFor)}
	res, err := s.apply(state.TypeCreateAccessRequest|state.FlagIgnorable, state.CreateAccessRequest{Request: ar})
	if err != nil {
		s.applyErr(w, err)
		return
	}
	if res == nil {
		WriteError(w, http.StatusServiceUnavailable, "the auth cluster is being upgraded and cannot take access requests yet: try again when every auth server runs this version")
		return
	}
	ar = res.(state.AccessRequest)
	s.cfg.Audit.Emit(audit.Event{Type: audit.AccessRequestCreated, User: user.Name, Roles: ar.Roles, Reason: ar.Reason, Request: ar.ID, Proxy: proxy.Name})
	s.cfg.Logger.Info("access request created", "id", ar.ID, "user", user.Name, "roles", ar.Roles)
	WriteJSON(w, http.StatusCreated, ar)
}

func newRequestID() string {
	b := randomBytes(10)
	return strings.ToLower(strings.TrimRight(base32Enc.EncodeToString(b), "="))
}

func (s *Server) listOwnRequests(w http.ResponseWriter, r *http.Request, user, _ identity.Identity) {
	WriteJSON(w, http.StatusOK, orEmpty(s.cfg.Store.AccessRequests(user.Name)))
}

func (s *Server) getOwnRequest(w http.ResponseWriter, r *http.Request, user, _ identity.Identity) {
	ar, ok := s.cfg.Store.AccessRequest(r.PathValue("id"))
	if !ok || ar.User != user.Name {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("you have no access request %s: jg request ls lists yours", r.PathValue("id")))
		return
	}
	WriteJSON(w, http.StatusOK, ar)
}

func (s *Server) listRequests(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	all := s.cfg.Store.AccessRequests(r.URL.Query().Get("user"))
	if st := r.URL.Query().Get("state"); st != "" {
		now := s.cfg.Now()
		all = slices.DeleteFunc(all, func(a state.AccessRequest) bool { return a.Status(now) != st })
	}
	WriteJSON(w, http.StatusOK, orEmpty(all))
}

func (s *Server) reviewRequest(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	var req ReviewRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := s.cfg.Now().UTC()
	res, err := s.apply(state.TypeReviewAccessRequest|state.FlagIgnorable, state.ReviewAccessRequest{ID: r.PathValue("id"), Approve: req.Approve, Reviewer: caller.Name, Reason: req.Reason, Now: now})
	if err != nil {
		if errors.Is(err, state.ErrRequestReviewed) {
			WriteError(w, http.StatusConflict, err.Error())
			return
		}
		s.applyErr(w, err)
		return
	}
	if res == nil {
		WriteError(w, http.StatusServiceUnavailable, "the auth cluster is being upgraded: try again when every auth server runs this version")
		return
	}
	ar := res.(state.AccessRequest)
	ev := audit.Event{Type: audit.AccessRequestDenied, User: caller.Name, Subject: ar.User, Request: ar.ID, Roles: ar.Roles, Reason: req.Reason}
	if req.Approve {
		ev.Type, ev.Expires = audit.AccessRequestApproved, ar.AccessUntil
	}
	s.cfg.Audit.Emit(ev)
	s.cfg.Logger.Info("access request reviewed", "id", ar.ID, "user", ar.User, "state", ar.State, "reviewer", caller.Name)
	WriteJSON(w, http.StatusOK, ar)
}

// --- certificates with approved requests ---------------------------------------

// ReissueRequest asks for new user certificates for the caller's keys,
// carrying the roles of approved access requests (none: back to the
// user's own roles).
type ReissueRequest struct {
	SSHPublic string   `json:"ssh_public"`
	TLSPublic []byte   `json:"tls_public"`
	Requests  []string `json:"requests,omitempty"`
}

func (s *Server) reissue(w http.ResponseWriter, r *http.Request, user, proxy identity.Identity) {
	req, ok := signingRequest[ReissueRequest](s, w, r)
	if !ok {
		return
	}
	now := s.cfg.Now()
	cert := userCertFrom(r.Context())
	sshPub, tlsPub, ok := parseKeys(w, req.SSHPublic, req.TLSPublic)
	if !ok {
		return
	}
	if !samePublicKey(tlsPub, cert.PublicKey) {
		WriteError(w, http.StatusBadRequest, "new certificates are issued for the keys of the certificate you call with: keep your TLS key")
		return
	}
	base := s.baseRoles(user)
	roles := slices.Clone(base)
	until := user.Expires
	for _, id := range req.Requests {
		ar, ok := s.cfg.Store.AccessRequest(id)
		if !ok || ar.User != user.Name {
			WriteError(w, http.StatusNotFound, fmt.Sprintf("you have no access request %s", id))
			return
		}
		if st := ar.Status(now); st != state.RequestApproved {
			WriteError(w, http.StatusForbidden, fmt.Sprintf("access request %s is %s, not approved", id, st))
			return
		}
		for _, role := range ar.Roles {
			if !slices.Contains(roles, role) {
				roles = append(roles, role)
			}
		}
		if ar.AccessUntil.Before(until) {
			until = ar.AccessUntil
		}
	}
	var defs []identity.Role
	for _, n := range roles {
		if d, ok := s.cfg.Store.Role(n); ok {
			defs = append(defs, d)
		}
	}
	ttl := identity.SessionTTL(defs, until.Sub(now))
	if ttl < 10*time.Second {
		WriteError(w, http.StatusForbidden, "less than 10 seconds of access are left: run jg login")
		return
	}
	if err := identity.CheckLocks(s.cfg.Store.Locks(), identity.LockTarget{User: user.Name, Roles: roles}, now); err != nil {
		WriteError(w, http.StatusForbidden, err.Error())
		return
	}
	id := identity.Identity{Kind: identity.KindUser, Name: user.Name, Cluster: user.Cluster, Roles: roles, Traits: user.Traits,
		Logins: identity.Logins(defs, user.Traits), Requests: slices.Clone(req.Requests)}
	creds, err := s.issue(id, sshPub, tlsPub, ttl, nil, nil)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "issue certificates: "+err.Error())
		return
	}
	creds.RequireMFA = identity.RequiresMFA(defs)
	creds.Requests = id.Requests
	s.cfg.Audit.Emit(audit.Event{Type: audit.CertIssued, User: user.Name, Roles: roles, Cluster: id.Cluster, Proxy: proxy.Name,
		Request: strings.Join(req.Requests, ","), Expires: creds.Expires.UTC(), Command: "user certificates with access requests"})
	s.cfg.Logger.Info("user certificates reissued", "user", user.Name, "requests", req.Requests, "roles", roles, "ttl", ttl.Round(time.Second))
	WriteJSON(w, http.StatusOK, creds)
}

// baseRoles are the roles a user holds without access requests: a known
// user's own; otherwise (an SSO user) those of the certificate that no
// request it carries granted.
func (s *Server) baseRoles(user identity.Identity) []string {
	if u, ok := s.cfg.Store.User(user.Name); ok && len(u.Roles) > 0 {
		return slices.Clone(u.Roles)
	}
	granted := map[string]bool{}
	for _, id := range user.Requests {
		if ar, ok := s.cfg.Store.AccessRequest(id); ok {
			for _, role := range ar.Roles {
				granted[role] = true
			}
		}
	}
	var out []string
	for _, role := range user.Roles {
		if !granted[role] {
			out = append(out, role)
		}
	}
	return out
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// RequestRetention is how long ended access requests stay listed.
const RequestRetention = 7 * 24 * time.Hour

// SweepRequests runs on the raft leader: it audits each access grant that
// ended (access_request.expired, once per leader term and request) and
// removes requests that ended more than RequestRetention ago. It returns
// when ctx ends.
func (s *Server) SweepRequests(ctx context.Context, every time.Duration) {
	reported := map[string]bool{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.cfg.Raft == nil || !s.cfg.Raft.IsLeader() {
			clear(reported)
			continue
		}
		now := s.cfg.Now()
		old := false
		for _, ar := range s.cfg.Store.AccessRequests("") {
			old = old || ar.Ended().Before(now.Add(-RequestRetention))
			if ar.Status(now) != "expired" || reported[ar.ID] {
				continue
			}
			reported[ar.ID] = true
			if now.Sub(ar.Ended()) > 10*time.Minute {
				continue // ended long before this leader: reported by an earlier one
			}
			s.cfg.Audit.Emit(audit.Event{Type: audit.AccessRequestExpired, Subject: ar.User, Request: ar.ID, Roles: ar.Roles})
		}
		if !old {
			continue
		}
		if _, err := s.apply(state.TypePruneAccessRequests|state.FlagIgnorable, state.PruneAccessRequests{Before: now.Add(-RequestRetention)}); err != nil {
			s.cfg.Logger.Warn("prune old access requests", "err", err)
		}
	}
}

// signingRequest reads the body of a call that issues certificates, once
// this server may sign them (else it has answered 503).
func signingRequest[T any](s *Server, w http.ResponseWriter, r *http.Request) (T, bool) {
	var req T
	if !s.canSign(w, false) {
		return req, false
	}
	return req, readJSON(w, r, &req)
}

// parseKeys parses the SSH (authorized_keys) and TLS (PKIX DER) public keys
// of a certificate request, answering 400 if either is malformed.
func parseKeys(w http.ResponseWriter, sshLine string, tlsDER []byte) (ssh.PublicKey, any, bool) {
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sshLine))
	if err != nil {
		WriteError(w, http.StatusBadRequest, "malformed SSH public key: "+err.Error())
		return nil, nil, false
	}
	tlsPub, err := x509.ParsePKIXPublicKey(tlsDER)
	if err != nil {
		WriteError(w, http.StatusBadRequest, "malformed TLS public key: "+err.Error())
		return nil, nil, false
	}
	return sshPub, tlsPub, true
}
