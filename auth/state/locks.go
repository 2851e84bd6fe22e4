package state

import (
	"fmt"
	"sort"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Lock commands.
const (
	TypeUpsertLock Type = 17
	TypeDeleteLock Type = 18
)

// KindLock: locks are watched, so every proxy and node enforces them
// (and ends matching sessions) as soon as the event reaches it.
const KindLock = "lock"

// UpsertLock adds or replaces a lock. Now drops locks that lifted more
// than a day ago.
type UpsertLock struct {
	Lock identity.Lock `json:"lock"`
	Now  time.Time     `json:"now"`
}

// DeleteLock removes a lock.
type DeleteLock struct {
	ID string `json:"id"`
}

func applyUpsertLock(d *Data, c UpsertLock) (any, []Event, error) {
	if c.Lock.ID == "" {
		return nil, nil, fmt.Errorf("lock: id is required")
	}
	if err := identity.CheckLock(c.Lock); err != nil {
		return nil, nil, err
	}
	var evs []Event
	for id, l := range d.Locks {
		if !l.Expires.IsZero() && c.Now.Sub(l.Expires) > 24*time.Hour {
			delete(d.Locks, id)
			evs = append(evs, event(KindLock, "delete", id, nil))
		}
	}
	d.Locks[c.Lock.ID] = c.Lock
	return nil, append(evs, event(KindLock, "put", c.Lock.ID, c.Lock)), nil
}

func applyDeleteLock(d *Data, c DeleteLock) (any, []Event, error) {
	if _, ok := d.Locks[c.ID]; !ok {
		return nil, nil, fmt.Errorf("lock %s: %w", c.ID, ErrNotFound)
	}
	delete(d.Locks, c.ID)
	return nil, []Event{event(KindLock, "delete", c.ID, nil)}, nil
}

// Locks returns every lock, lifted ones included, sorted by creation.
func (s *Store) Locks() []identity.Lock {
	s.mu.RLock()
	out := make([]identity.Lock, 0, len(s.data.Locks))
	for _, l := range s.data.Locks {
		out = append(out, l)
	}
	s.mu.RUnlock()
	SortLocks(out)
	return out
}

// SortLocks orders locks by creation time, then id.
func SortLocks(ls []identity.Lock) {
	sort.Slice(ls, func(i, j int) bool {
		if !ls[i].Created.Equal(ls[j].Created) {
			return ls[i].Created.Before(ls[j].Created)
		}
		return ls[i].ID < ls[j].ID
	})
}
