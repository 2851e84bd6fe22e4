package state

import (
	"context"
	"fmt"
)

// resultRingSize is how many recent command results a Store remembers. A
// write forwarded from a follower to the leader is applied on the follower
// soon after the leader answers, and the follower reads its result here;
// 4096 covers any plausible backlog between the two.
const resultRingSize = 4096

// result is one applied command's outcome.
type result struct {
	index uint64
	value any
	err   error
}

// resultRing remembers the outcome of the last resultRingSize commands by
// raft index. Every server computes the same outcome for the same command
// (the FSM is deterministic), so a server that forwarded a write to the
// leader learns its outcome from its own FSM: no result ever crosses the
// network, and the caller is answered only once the write is visible here.
type resultRing struct {
	buf [resultRingSize]result
}

func (r *resultRing) put(index uint64, value any, err error) {
	r.buf[index%resultRingSize] = result{index: index, value: value, err: err}
}

func (r *resultRing) get(index uint64) (result, bool) {
	e := r.buf[index%resultRingSize]
	return e, e.index == index && index != 0
}

// WaitApplied waits until the store has applied the command at index (or a
// later one), or ctx ends.
func (s *Store) WaitApplied(ctx context.Context, index uint64) error {
	for {
		s.mu.RLock()
		done, ch := s.index >= index, s.applied
		s.mu.RUnlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("state: wait for index %d (applied %d): %w", index, s.Index(), ctx.Err())
		case <-ch:
		}
	}
}

// Result returns the outcome of the command applied at index, as Apply
// returned it. ok is false if the index is not applied yet, was not a
// command, or is too old to be remembered.
func (s *Store) Result(index uint64) (value any, err error, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.results.get(index)
	return r.value, r.err, ok
}

// advanceLocked records index as applied and wakes WaitApplied callers.
// s.mu must be held for writing.
func (s *Store) advanceLocked(index uint64) {
	s.index = index
	close(s.applied)
	s.applied = make(chan struct{})
}
