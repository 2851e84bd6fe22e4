package state

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Access requests and MFA devices. These commands carry FlagIgnorable
// when sent (see the package comment): during a rolling upgrade an older
// follower skips them, and the requests and devices exist on the upgraded
// servers only until every server runs this version.
const (
	TypeCreateAccessRequest Type = 21
	TypeReviewAccessRequest Type = 22
	TypeAddMFADevice        Type = 23
	TypeRemoveMFADevice     Type = 24
	TypeUseMFA              Type = 25
	TypePruneAccessRequests Type = 26
	TypeMFAFailure          Type = 27
)

// States of an access request.
const (
	RequestPending  = "pending"
	RequestApproved = "approved"
	RequestDenied   = "denied"
)

// AccessRequest is a user's request for more roles for a while.
type AccessRequest struct {
	ID     string   `json:"id"`
	User   string   `json:"user"`
	Roles  []string `json:"roles"`
	Reason string   `json:"reason"`
	// Duration is how long the access lasts once approved (already
	// capped by the requester's roles when the request was made).
	Duration identity.Duration `json:"duration"`
	State    string            `json:"state"`
	Created  time.Time         `json:"created"`
	// PendingUntil: a request nobody reviewed by then can no longer be
	// approved.
	PendingUntil time.Time `json:"pending_until"`
	Reviewer     string    `json:"reviewer,omitempty"`
	ReviewReason string    `json:"review_reason,omitempty"`
	Reviewed     time.Time `json:"reviewed,omitzero"`
	// AccessUntil is when approved access ends.
	AccessUntil time.Time `json:"access_until,omitzero"`
}

// Status is the request's state at now: pending, approved, denied, or
// expired (approved access that ended, or a pending request too old to
// approve).
func (r AccessRequest) Status(now time.Time) string {
	switch {
	case r.State == RequestApproved && !now.Before(r.AccessUntil):
		return "expired"
	case r.State == RequestPending && !now.Before(r.PendingUntil):
		return "expired"
	}
	return r.State
}

// CreateAccessRequest records a new pending request.
type CreateAccessRequest struct {
	Request AccessRequest `json:"request"`
}

// ReviewAccessRequest approves or denies a pending request.
type ReviewAccessRequest struct {
	ID       string    `json:"id"`
	Approve  bool      `json:"approve"`
	Reviewer string    `json:"reviewer"`
	Reason   string    `json:"reason,omitempty"`
	Now      time.Time `json:"now"`
}

// PruneAccessRequests removes requests that ended before Before.
type PruneAccessRequests struct {
	Before time.Time `json:"before"`
}

// ErrRequestReviewed is returned when a request is no longer pending.
var ErrRequestReviewed = errors.New("access request is no longer pending")

// MaxPendingRequests bounds one user's pending requests, so that a user
// cannot fill the replicated state.
const MaxPendingRequests = 10

func applyCreateAccessRequest(d *Data, c CreateAccessRequest) (any, []Event, error) {
	r := c.Request
	if r.ID == "" || r.User == "" || len(r.Roles) == 0 {
		return nil, nil, errors.New("access request needs an id, a user and roles")
	}
	if _, ok := d.Requests[r.ID]; ok {
		return nil, nil, fmt.Errorf("access request %s exists already", r.ID)
	}
	pending := 0
	for _, o := range d.Requests {
		if o.User == r.User && o.Status(r.Created) == RequestPending {
			pending++
		}
	}
	if pending >= MaxPendingRequests {
		return nil, nil, fmt.Errorf("%s has %d pending access requests already: wait for a review, or ask a reviewer to deny old ones", r.User, pending)
	}
	r.State = RequestPending
	if d.Requests == nil {
		d.Requests = map[string]AccessRequest{}
	}
	d.Requests[r.ID] = r
	return r, nil, nil
}

func applyReviewAccessRequest(d *Data, c ReviewAccessRequest) (any, []Event, error) {
	r, ok := d.Requests[c.ID]
	if !ok {
		return nil, nil, fmt.Errorf("access request %s: %w", c.ID, ErrNotFound)
	}
	if st := r.Status(c.Now); st != RequestPending {
		return nil, nil, fmt.Errorf("access request %s is %s: %w", c.ID, st, ErrRequestReviewed)
	}
	if c.Reviewer == r.User {
		return nil, nil, fmt.Errorf("%s cannot review their own access request", c.Reviewer)
	}
	r.Reviewer, r.ReviewReason, r.Reviewed = c.Reviewer, c.Reason, c.Now
	if c.Approve {
		r.State = RequestApproved
		r.AccessUntil = c.Now.Add(time.Duration(r.Duration))
	} else {
		r.State = RequestDenied
	}
	d.Requests[r.ID] = r
	return r, nil, nil
}

// Ended is when the request stopped mattering: its review (denied), the
// end of its access (approved), or of its wait for a review (pending).
func (r AccessRequest) Ended() time.Time {
	switch r.State {
	case RequestApproved:
		return r.AccessUntil
	case RequestDenied:
		return r.Reviewed
	}
	return r.PendingUntil
}

func applyPruneAccessRequests(d *Data, c PruneAccessRequests) (any, []Event, error) {
	n := 0
	for id, r := range d.Requests {
		if r.Ended().Before(c.Before) {
			delete(d.Requests, id)
			n++
		}
	}
	return n, nil, nil
}

// AccessRequest returns one request.
func (s *Store) AccessRequest(id string) (AccessRequest, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.data.Requests[id]
	return r, ok
}

// AccessRequests returns the requests of user (all users when ""), newest
// first.
func (s *Store) AccessRequests(user string) []AccessRequest {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []AccessRequest
	for _, r := range s.data.Requests {
		if user == "" || r.User == user {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// MFADevice is a user's TOTP authenticator.
type MFADevice struct {
	Name string `json:"name"`
	// Secret is the TOTP secret (base32). It is in the replicated state,
	// and so in snapshots and backups: protect them as the cluster's
	// secrets they are.
	Secret string    `json:"secret"`
	Added  time.Time `json:"added"`
	// LastStep is the TOTP time step of the last code accepted: a code is
	// accepted once.
	LastStep uint64 `json:"last_step,omitempty"`
}

// AddMFADevice adds a TOTP device to a user.
type AddMFADevice struct {
	User   string    `json:"user"`
	Device MFADevice `json:"device"`
}

// RemoveMFADevice removes a user's device ("" removes all).
type RemoveMFADevice struct {
	User string `json:"user"`
	Name string `json:"name,omitempty"`
}

// UseMFA records that a code of time step Step was accepted: it fails if
// that step, or a later one, was accepted already (a replayed code).
type UseMFA struct {
	User   string `json:"user"`
	Device string `json:"device"`
	Step   uint64 `json:"step"`
}

// MFAFailure records a wrong TOTP code for a user: the count (reset by the
// next accepted code) slows guessing down on every auth server alike.
type MFAFailure struct {
	User string    `json:"user"`
	Now  time.Time `json:"now"`
}

func applyMFAFailure(d *Data, c MFAFailure) (any, []Event, error) {
	u, ok := d.Users[c.User]
	if !ok {
		return nil, nil, fmt.Errorf("user %s: %w", c.User, ErrNotFound)
	}
	if c.Now.Sub(u.MFAFailedAt) > time.Hour {
		u.MFAFailures = 0
	}
	u.MFAFailures++
	u.MFAFailedAt = c.Now
	d.Users[c.User] = u
	return u.MFAFailures, nil, nil
}

// ErrMFAReplay is a TOTP code that was used already.
var ErrMFAReplay = errors.New("this code was used already: wait for the next one")

// MaxMFADevices bounds a user's devices.
const MaxMFADevices = 5

func applyAddMFADevice(d *Data, c AddMFADevice) (any, []Event, error) {
	u, ok := d.Users[c.User]
	if !ok {
		return nil, nil, fmt.Errorf("user %s: %w: only users known to the cluster (jgctl users add, jgctl apply) can add an MFA device", c.User, ErrNotFound)
	}
	if err := identity.CheckName(c.Device.Name); err != nil {
		return nil, nil, fmt.Errorf("device name: %w", err)
	}
	if slices.ContainsFunc(u.MFA, func(m MFADevice) bool { return m.Name == c.Device.Name }) {
		return nil, nil, fmt.Errorf("%s has a device named %s already", c.User, c.Device.Name)
	}
	if len(u.MFA) >= MaxMFADevices {
		return nil, nil, fmt.Errorf("%s has %d MFA devices, the most allowed: remove one first", c.User, len(u.MFA))
	}
	u.MFA = append(slices.Clone(u.MFA), c.Device)
	d.Users[c.User] = u
	return nil, nil, nil
}

func applyRemoveMFADevice(d *Data, c RemoveMFADevice) (any, []Event, error) {
	u, ok := d.Users[c.User]
	if !ok {
		return nil, nil, fmt.Errorf("user %s: %w", c.User, ErrNotFound)
	}
	if c.Name == "" {
		u.MFA = nil
	} else {
		i := slices.IndexFunc(u.MFA, func(m MFADevice) bool { return m.Name == c.Name })
		if i < 0 {
			return nil, nil, fmt.Errorf("%s has no MFA device %s: %w", c.User, c.Name, ErrNotFound)
		}
		u.MFA = slices.Delete(slices.Clone(u.MFA), i, i+1)
	}
	d.Users[c.User] = u
	return nil, nil, nil
}

func applyUseMFA(d *Data, c UseMFA) (any, []Event, error) {
	u, ok := d.Users[c.User]
	if !ok {
		return nil, nil, fmt.Errorf("user %s: %w", c.User, ErrNotFound)
	}
	i := slices.IndexFunc(u.MFA, func(m MFADevice) bool { return m.Name == c.Device })
	if i < 0 {
		return nil, nil, fmt.Errorf("%s has no MFA device %s: %w", c.User, c.Device, ErrNotFound)
	}
	if c.Step <= u.MFA[i].LastStep {
		return nil, nil, ErrMFAReplay
	}
	u.MFA = slices.Clone(u.MFA)
	u.MFA[i].LastStep = c.Step
	u.MFAFailures, u.MFAFailedAt = 0, time.Time{}
	d.Users[c.User] = u
	return nil, nil, nil
}

// redactMFA returns devices without their secrets, for listings.
func redactMFA(ds []MFADevice) []MFADevice {
	if len(ds) == 0 {
		return nil
	}
	out := make([]MFADevice, len(ds))
	for i, d := range ds {
		out[i] = MFADevice{Name: d.Name, Added: d.Added, LastStep: d.LastStep}
	}
	return out
}
