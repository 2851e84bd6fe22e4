package identity

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Lock stops a user, role, node or login cold: while it is in force, no
// certificate is issued to what it names, no new session is allowed, and
// live sessions are ended, at every auth server, proxy and node. A lock
// names one or more targets; it applies when all of them match (a lock on
// user alice and node db-1 stops alice on db-1 only).
type Lock struct {
	ID      string `json:"id"`
	User    string `json:"user,omitempty"`
	Role    string `json:"role,omitempty"`
	Node    string `json:"node,omitempty"`
	Login   string `json:"login,omitempty"`
	Message string `json:"message,omitempty"`
	// Expires is when the lock lifts by itself; zero: never.
	Expires   time.Time `json:"expires,omitzero"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// LockTarget is what a lock is checked against: an attempt or a session.
// Empty fields are unknown and match no lock field that is set (a login
// issuing a certificate knows no node).
type LockTarget struct {
	User  string
	Roles []string
	Node  string
	Login string
}

// CheckLock validates a new lock.
func CheckLock(l Lock) error {
	if l.User == "" && l.Role == "" && l.Node == "" && l.Login == "" {
		return fmt.Errorf("a lock needs a target: a user, role, node or login")
	}
	for _, f := range []struct{ what, v string }{{"user", l.User}, {"role", l.Role}, {"node", l.Node}} {
		if f.v != "" {
			if err := CheckName(f.v); err != nil {
				return fmt.Errorf("lock %s: %w", f.what, err)
			}
		}
	}
	if len(l.Message) > 1024 {
		return fmt.Errorf("lock message: at most 1024 bytes")
	}
	return nil
}

// Active reports whether the lock is in force at now.
func (l Lock) Active(now time.Time) bool { return l.Expires.IsZero() || now.Before(l.Expires) }

// Matches reports whether the lock applies to t (ignoring expiry).
func (l Lock) Matches(t LockTarget) bool {
	if l.User != "" && l.User != t.User {
		return false
	}
	if l.Role != "" && !slices.Contains(t.Roles, l.Role) {
		return false
	}
	if l.Node != "" && l.Node != t.Node {
		return false
	}
	if l.Login != "" && l.Login != t.Login {
		return false
	}
	return l.User != "" || l.Role != "" || l.Node != "" || l.Login != ""
}

// Target describes what the lock names: "user alice", "role prod on node
// db-1".
func (l Lock) Target() string {
	var parts []string
	for _, f := range []struct{ what, v string }{{"user", l.User}, {"role", l.Role}, {"login", l.Login}, {"node", l.Node}} {
		if f.v != "" {
			parts = append(parts, f.what+" "+f.v)
		}
	}
	return strings.Join(parts, " on ")
}

// LockedError is an attempt refused by a lock. Users see Error().
type LockedError struct {
	Lock Lock
}

func (e *LockedError) Error() string {
	msg := fmt.Sprintf("%s is locked (lock %s)", e.Lock.Target(), e.Lock.ID)
	if e.Lock.Message != "" {
		msg += ": " + e.Lock.Message
	}
	if !e.Lock.Expires.IsZero() {
		msg += fmt.Sprintf("; the lock lifts at %s", e.Lock.Expires.UTC().Format(time.RFC3339))
	}
	return msg
}

// FindLock returns the first lock in force at now that applies to t.
func FindLock(locks []Lock, t LockTarget, now time.Time) (Lock, bool) {
	for _, l := range locks {
		if l.Active(now) && l.Matches(t) {
			return l, true
		}
	}
	return Lock{}, false
}

// CheckLocks returns a *LockedError if a lock in force applies to t.
func CheckLocks(locks []Lock, t LockTarget, now time.Time) error {
	if l, ok := FindLock(locks, t, now); ok {
		return &LockedError{Lock: l}
	}
	return nil
}
