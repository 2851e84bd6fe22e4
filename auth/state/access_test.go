package state

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

func tryApply(s *Store, idx uint64, typ Type, body any) error {
	cmd, err := Encode(typ, body)
	if err != nil {
		return err
	}
	_, err = s.Apply(idx, cmd)
	return err
}

func TestAccessRequestCommands(t *testing.T) {
	now := time.Now().UTC()
	s := New(nil)
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1"})
	idx := uint64(2)
	next := func() uint64 { idx++; return idx }
	req := func(id string) AccessRequest {
		return AccessRequest{ID: id, User: "alice", Roles: []string{"prod"}, Reason: "r", Duration: identity.Duration(time.Hour), Created: now, PendingUntil: now.Add(24 * time.Hour)}
	}
	for i := 0; i < MaxPendingRequests; i++ {
		mustApply(t, s, next(), TypeCreateAccessRequest, CreateAccessRequest{Request: req(fmt.Sprint("r", i))})
	}
	if err := tryApply(s, next(), TypeCreateAccessRequest, CreateAccessRequest{Request: req("one-too-many")}); err == nil || !strings.Contains(err.Error(), "pending access requests already") {
		t.Errorf("11th pending request: %v", err)
	}
	if err := tryApply(s, next(), TypeCreateAccessRequest, CreateAccessRequest{Request: req("r0")}); err == nil {
		t.Error("duplicate id accepted")
	}
	if err := tryApply(s, next(), TypeReviewAccessRequest, ReviewAccessRequest{ID: "r0", Approve: true, Reviewer: "alice", Now: now}); err == nil || !strings.Contains(err.Error(), "own") {
		t.Errorf("self review: %v", err)
	}
	res := mustApply(t, s, next(), TypeReviewAccessRequest, ReviewAccessRequest{ID: "r0", Approve: true, Reviewer: "bob", Reason: "ok", Now: now})
	if ar := res.(AccessRequest); ar.State != RequestApproved || !ar.AccessUntil.Equal(now.Add(time.Hour)) || ar.Status(now) != RequestApproved || ar.Status(now.Add(2*time.Hour)) != "expired" {
		t.Errorf("approved: %+v", ar)
	}
	if err := tryApply(s, next(), TypeReviewAccessRequest, ReviewAccessRequest{ID: "r0", Reviewer: "bob", Now: now}); !errors.Is(err, ErrRequestReviewed) {
		t.Errorf("second review: %v", err)
	}
	mustApply(t, s, next(), TypeReviewAccessRequest, ReviewAccessRequest{ID: "r1", Reviewer: "bob", Now: now})
	if err := tryApply(s, next(), TypeReviewAccessRequest, ReviewAccessRequest{ID: "r2", Approve: true, Reviewer: "bob", Now: now.Add(25 * time.Hour)}); !errors.Is(err, ErrRequestReviewed) {
		t.Errorf("approving a request past its wait: %v", err)
	}
	if got := len(s.AccessRequests("alice")); got != MaxPendingRequests {
		t.Errorf("%d requests", got)
	}
	// Prune: r0 (access ended at now+1h) and r1 (denied now) go; the
	// pending ones (waiting until now+24h) stay.
	n := mustApply(t, s, next(), TypePruneAccessRequests, PruneAccessRequests{Before: now.Add(2 * time.Hour)})
	if n != 2 || len(s.AccessRequests("")) != MaxPendingRequests-2 {
		t.Errorf("pruned %v, left %d", n, len(s.AccessRequests("")))
	}
}

func TestMFACommands(t *testing.T) {
	s := New(nil)
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1"})
	mustApply(t, s, 2, TypeUpsertUser, UpsertUser{User: User{Name: "alice", PasswordHash: "h"}})
	dev := MFADevice{Name: "phone", Secret: "SECRET", LastStep: 10}
	mustApply(t, s, 3, TypeAddMFADevice, AddMFADevice{User: "alice", Device: dev})
	if err := tryApply(s, 4, TypeAddMFADevice, AddMFADevice{User: "alice", Device: dev}); err == nil {
		t.Error("duplicate device name accepted")
	}
	if err := tryApply(s, 5, TypeAddMFADevice, AddMFADevice{User: "nobody", Device: dev}); !errors.Is(err, ErrNotFound) {
		t.Errorf("device for an unknown user: %v", err)
	}
	if err := tryApply(s, 6, TypeUseMFA, UseMFA{User: "alice", Device: "phone", Step: 10}); !errors.Is(err, ErrMFAReplay) {
		t.Errorf("replayed step: %v", err)
	}
	mustApply(t, s, 7, TypeUseMFA, UseMFA{User: "alice", Device: "phone", Step: 11})
	if err := tryApply(s, 8, TypeUseMFA, UseMFA{User: "alice", Device: "phone", Step: 11}); !errors.Is(err, ErrMFAReplay) {
		t.Errorf("the same step twice: %v", err)
	}
	// An upsert (jgctl apply, a role change) keeps the devices.
	mustApply(t, s, 9, TypeUpsertUser, UpsertUser{User: User{Name: "alice", Roles: []string{"dev"}}})
	u, _ := s.User("alice")
	if len(u.MFA) != 1 || u.MFA[0].Secret != "SECRET" || u.MFA[0].LastStep != 11 || u.PasswordHash != "h" {
		t.Errorf("after an upsert: %+v", u)
	}
	if l := s.Users(); l[0].MFA[0].Secret != "" || l[0].MFA[0].Name != "phone" {
		t.Errorf("Users() shows secrets: %+v", l[0].MFA)
	}
	mustApply(t, s, 10, TypeRemoveMFADevice, RemoveMFADevice{User: "alice"})
	if u, _ := s.User("alice"); len(u.MFA) != 0 {
		t.Errorf("devices left: %+v", u.MFA)
	}
}
