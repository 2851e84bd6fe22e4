package authapi

import (
	"context"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// WatchLocks calls enforce with the hub's locks each time they may have
// changed (a snapshot, a lock event), until ctx ends: proxies and nodes
// end the live sessions a new lock applies to from here. enforce runs in
// WatchLocks' goroutine, one call at a time.
func (h *Hub) WatchLocks(ctx context.Context, enforce func([]identity.Lock)) {
	for ctx.Err() == nil {
		ch, cancel := h.Subscribe()
		h.watchLocksOnce(ctx, ch, enforce)
		cancel()
	}
}

func (h *Hub) watchLocksOnce(ctx context.Context, ch <-chan WatchMessage, enforce func([]identity.Lock)) {
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return // dropped as too slow: resubscribe, which starts with a snapshot
			}
			if m.Type == "snapshot" || (m.Type == "event" && m.Event != nil && m.Event.Kind == state.KindLock && m.Event.Op == "put") {
				enforce(h.Locks())
			}
		}
	}
}
