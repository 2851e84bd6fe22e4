package authapi

import (
	"context"
	"crypto"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base32"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// TOTP parameters: RFC 6238 defaults, which every authenticator app uses.
var totpOpts = totp.ValidateOpts{Period: 30, Skew: 1, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

var base32Enc = base32.StdEncoding

// SessionCertTTL is how long a per-session MFA certificate may be used to
// open its session. The session itself lives on: the certificate is only
// checked at the SSH handshake, and the node accepts it once.
const SessionCertTTL = time.Minute

// AddMFADeviceRequest enrolls a TOTP device: jg made the secret and
// showed it to the user, who proves the authenticator has it with a code.
type AddMFADeviceRequest struct {
	Name   string `json:"name"`
	Secret string `json:"secret"` // base32
	Code   string `json:"code"`
	// ExistingCode is a code from a device the user has already: adding
	// a second device needs the first.
	ExistingCode string `json:"existing_code,omitempty"`
}

// MFADeviceInfo describes a device, without its secret.
type MFADeviceInfo struct {
	Name  string    `json:"name"`
	Added time.Time `json:"added"`
}

// SessionCertRequest asks for a per-session certificate after a TOTP code.
type SessionCertRequest struct {
	Node      string `json:"node"`
	Login     string `json:"login"`
	Code      string `json:"code"`
	SSHPublic string `json:"ssh_public"`
}

// SessionCert is a per-session MFA certificate.
type SessionCert struct {
	SSHCert string    `json:"ssh_cert"` // authorized_keys format
	Expires time.Time `json:"expires"`
	Session string    `json:"session"` // the binding's id
}

// checkTOTP finds the device and time step code belongs to, and records
// the step through raft so that the code is accepted once, on any auth
// server.
func (s *Server) checkTOTP(user string, devices []state.MFADevice, code string, now time.Time) (string, error) {
	code = strings.TrimSpace(code)
	if len(code) != 6 || strings.Trim(code, "0123456789") != "" {
		return "", errors.New("a TOTP code is 6 digits")
	}
	// One check at a time per user on this server, so that concurrent
	// guesses cannot all pass the wait before any failure is counted.
	mu, _ := s.mfaLocks.LoadOrStore(user, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if u, ok := s.cfg.Store.User(user); ok {
		if wait := penaltyLeft(u.MFAFailures, u.MFAFailedAt, now); wait > 0 {
			return "", fmt.Errorf("too many wrong codes: try again in %s", identity.HumanDuration(wait))
		}
	}
	for _, d := range devices {
		step, ok := matchTOTP(d.Secret, code, now)
		if !ok {
			continue
		}
		if _, err := s.apply(state.TypeUseMFA|state.FlagIgnorable, state.UseMFA{User: user, Device: d.Name, Step: step}); err != nil {
			if errors.Is(err, state.ErrMFAReplay) {
				return "", err
			}
			return "", fmt.Errorf("record the code's use: %w", err)
		}
		return d.Name, nil
	}
	// Counted through raft, so that every auth server slows the next
	// guesses down, not only this one.
	if _, err := s.apply(state.TypeMFAFailure|state.FlagIgnorable, state.MFAFailure{User: user, Now: now}); err != nil {
		s.cfg.Logger.Warn("record a wrong TOTP code", "user", user, "err", err)
	}
	return "", errors.New("wrong TOTP code (check the time on the device that makes them)")
}

// matchTOTP reports whether code is secret's code for a time step within
// the skew of now, and which step.
func matchTOTP(secret, code string, now time.Time) (uint64, bool) {
	cur := uint64(now.Unix()) / uint64(totpOpts.Period)
	for _, step := range []uint64{cur, cur - 1, cur + 1} {
		want, err := totp.GenerateCodeCustom(secret, time.Unix(int64(step*uint64(totpOpts.Period)), 0), totpOpts)
		if err == nil && subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			return step, true
		}
	}
	return 0, false
}

func (s *Server) addMFADevice(w http.ResponseWriter, r *http.Request, user, proxy identity.Identity) {
	var req AddMFADeviceRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := s.cfg.Now()
	u, ok := s.cfg.Store.User(user.Name)
	if !ok {
		WriteError(w, http.StatusForbidden, fmt.Sprintf("%s is not a user of the cluster (an SSO login that was never added): ask an administrator to add you with jgctl users add or jgctl apply", user.Name))
		return
	}
	secret := strings.ToUpper(strings.TrimSpace(req.Secret))
	if b, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(strings.TrimRight(secret, "=")); err != nil || len(b) < 16 {
		WriteError(w, http.StatusBadRequest, "the TOTP secret must be base32 and at least 128 bits")
		return
	}
	if len(u.MFA) > 0 {
		if _, err := s.checkTOTP(u.Name, u.MFA, req.ExistingCode, now); err != nil {
			s.cfg.Audit.Emit(audit.Event{Type: audit.MFAFailed, User: u.Name, Proxy: proxy.Name, Error: "adding a device: " + err.Error()})
			WriteError(w, http.StatusForbidden, "you have an MFA device already: give a code from it to add another ("+err.Error()+")")
			return
		}
	}
	step, ok := matchTOTP(secret, strings.TrimSpace(req.Code), now)
	if !ok {
		WriteError(w, http.StatusBadRequest, "the code does not match the new secret: check that the authenticator took the secret, and the time on it")
		return
	}
	dev := state.MFADevice{Name: req.Name, Secret: secret, Added: now.UTC(), LastStep: step}
	res, err := s.apply(state.TypeAddMFADevice|state.FlagIgnorable, state.AddMFADevice{User: u.Name, Device: dev})
	if err != nil {
		s.applyErr(w, err)
		return
	}
	_ = res
	s.cfg.Audit.Emit(audit.Event{Type: audit.MFAEnrolled, User: u.Name, Subject: req.Name, Proxy: proxy.Name})
	WriteJSON(w, http.StatusCreated, MFADeviceInfo{Name: dev.Name, Added: dev.Added})
}

func (s *Server) listMFADevices(w http.ResponseWriter, r *http.Request, user, _ identity.Identity) {
	u, _ := s.cfg.Store.User(user.Name)
	out := []MFADeviceInfo{}
	for _, d := range u.MFA {
		out = append(out, MFADeviceInfo{Name: d.Name, Added: d.Added})
	}
	WriteJSON(w, http.StatusOK, out)
}

// resetMFA removes a user's devices (admins: a lost phone).
func (s *Server) resetMFA(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	name := r.PathValue("name")
	if _, err := s.apply(state.TypeRemoveMFADevice|state.FlagIgnorable, state.RemoveMFADevice{User: name, Name: r.URL.Query().Get("device")}); err != nil {
		s.applyErr(w, err)
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.MFARemoved, User: caller.Name, Subject: name, Command: r.URL.Query().Get("device")})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) sessionCert(w http.ResponseWriter, r *http.Request, user, proxy identity.Identity) {
	req, ok := signingRequest[SessionCertRequest](s, w, r)
	if !ok {
		return
	}
	now := s.cfg.Now()
	ev := audit.Event{Type: audit.MFAFailed, User: user.Name, Node: req.Node, Login: req.Login, Proxy: proxy.Name, Roles: user.Roles}
	fail := func(code int, msg string) {
		ev.Error = msg
		s.cfg.Audit.Emit(ev)
		WriteError(w, code, msg)
	}
	node, ok := s.cfg.Store.Node(req.Node)
	if !ok {
		fail(http.StatusNotFound, fmt.Sprintf("node %s is not known to cluster %s", req.Node, s.cfg.Store.Cluster()))
		return
	}
	if err := identity.CheckLogin(user, s.cfg.Store.Role, node.ID, node.Labels, req.Login); err != nil {
		fail(http.StatusForbidden, err.Error())
		return
	}
	if !slices.Contains(user.Logins, req.Login) {
		// Principals are what the login's certificate carries: a role's
		// "*" allows a login at the node's check but never becomes one.
		fail(http.StatusForbidden, fmt.Sprintf("your certificate does not carry login %s", req.Login))
		return
	}
	if err := identity.CheckLocks(s.cfg.Store.Locks(), identity.LockTarget{User: user.Name, Roles: user.Roles, Node: node.ID, Login: req.Login}, now); err != nil {
		fail(http.StatusForbidden, err.Error())
		return
	}
	u, ok := s.cfg.Store.User(user.Name)
	if !ok || len(u.MFA) == 0 {
		fail(http.StatusForbidden, "your roles require MFA for every session and you have no MFA device: add one with jg mfa add")
		return
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.SSHPublic))
	if err != nil {
		fail(http.StatusBadRequest, "malformed SSH public key: "+err.Error())
		return
	}
	dev, err := s.checkTOTP(u.Name, u.MFA, req.Code, now)
	if err != nil {
		fail(http.StatusForbidden, err.Error())
		return
	}
	id := user
	id.Logins = []string{req.Login}
	id.MFA = &identity.MFABinding{ID: newRequestID(), Node: node.ID, Login: req.Login}
	ttl := min(SessionCertTTL, user.Expires.Sub(now))
	if ttl <= 0 {
		fail(http.StatusForbidden, "your certificate has expired: run jg login")
		return
	}
	cert, err := s.signer(false).SignUserSSH(pub, id, ttl)
	if err != nil {
		fail(http.StatusInternalServerError, "issue certificate: "+err.Error())
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.MFAVerified, User: user.Name, Node: node.ID, Login: req.Login, Proxy: proxy.Name, Roles: user.Roles,
		Session: id.MFA.ID, MFA: true, Subject: dev, Expires: now.Add(ttl).UTC()})
	WriteJSON(w, http.StatusOK, SessionCert{SSHCert: string(ssh.MarshalAuthorizedKey(cert)), Expires: now.Add(ttl), Session: id.MFA.ID})
}

// samePublicKey compares two crypto public keys.
func samePublicKey(a, b crypto.PublicKey) bool {
	ka, err1 := x509.MarshalPKIXPublicKey(a)
	kb, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && slices.Equal(ka, kb)
}

type userCertKey struct{}

func withUserCert(ctx context.Context, c *x509.Certificate) context.Context {
	return context.WithValue(ctx, userCertKey{}, c)
}

func userCertFrom(ctx context.Context) *x509.Certificate {
	c, _ := ctx.Value(userCertKey{}).(*x509.Certificate)
	return c
}
