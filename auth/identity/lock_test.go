package identity

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLocks(t *testing.T) {
	now := time.Now()
	locks := []Lock{
		{ID: "l1", User: "alice", Message: "laptop stolen"},
		{ID: "l2", Role: "prod", Node: "db-1"},
		{ID: "l3", Login: "root", Expires: now.Add(-time.Minute)}, // lifted
	}
	cases := []struct {
		t    LockTarget
		want string
	}{
		{LockTarget{User: "alice"}, "l1"},
		{LockTarget{User: "alice", Node: "web-1", Login: "ubuntu"}, "l1"},
		{LockTarget{User: "bob", Roles: []string{"prod"}, Node: "db-1"}, "l2"},
		{LockTarget{User: "bob", Roles: []string{"prod"}, Node: "db-2"}, ""},
		{LockTarget{User: "bob", Roles: []string{"prod"}}, ""}, // node unknown: l2 needs both
		{LockTarget{User: "bob", Login: "root"}, ""},           // expired
	}
	for _, c := range cases {
		l, ok := FindLock(locks, c.t, now)
		if got := map[bool]string{true: l.ID, false: ""}[ok]; got != c.want {
			t.Errorf("%+v: lock %q, want %q", c.t, got, c.want)
		}
	}
	err := CheckLocks(locks, LockTarget{User: "alice"}, now)
	var le *LockedError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "user alice is locked") || !strings.Contains(err.Error(), "laptop stolen") {
		t.Fatalf("error: %v", err)
	}
	if (Lock{}).Matches(LockTarget{User: "x"}) {
		t.Fatal("an empty lock matched")
	}
	if CheckLock(Lock{Message: "x"}) == nil {
		t.Fatal("a lock without a target was accepted")
	}
	if CheckLock(Lock{User: "../x"}) == nil {
		t.Fatal("a bad user name was accepted")
	}
}
