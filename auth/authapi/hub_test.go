package authapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

func TestHubFanOut(t *testing.T) {
	h := NewHub()
	ch, cancel := h.Subscribe()
	defer cancel()
	if m := <-ch; m.Type != "snapshot" {
		t.Fatalf("first message %q", m.Type)
	}
	role, _ := json.Marshal(identity.Role{Name: "dev"})
	if err := h.Apply(WatchMessage{Type: "snapshot", Index: 1, Snapshot: &WatchSnapshot{Cluster: "c"}}); err != nil {
		t.Fatal(err)
	}
	if err := h.Apply(WatchMessage{Type: "event", Index: 2, Event: &state.Event{Kind: state.KindRole, Op: "put", Name: "dev", Object: role}}); err != nil {
		t.Fatal(err)
	}
	<-ch
	if m := <-ch; m.Event == nil || m.Event.Name != "dev" {
		t.Fatalf("event not forwarded: %+v", m)
	}
	if _, ok := h.Role("dev"); !ok || h.Cluster() != "c" {
		t.Fatal("hub did not apply")
	}
	select {
	case <-h.Ready():
	default:
		t.Fatal("not ready after snapshot")
	}
}

func FuzzWatchStream(f *testing.F) {
	f.Add([]byte(`{"type":"snapshot","index":1,"snapshot":{"cluster":"c","roles":[{"name":"r"}],"nodes":[{"id":"n"}]}}` + "\n" + `{"type":"event","event":{"kind":"role","op":"delete","name":"r"}}` + "\n"))
	f.Add([]byte(`{"type":"event","event":{"kind":"cas","op":"put","object":{"tls":["AAAA"]}}}`))
	f.Add([]byte(`{"type":"heartbeat"}{"type":"bogus"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h := NewHub()
		dec := json.NewDecoder(bufio.NewReader(bytes.NewReader(b)))
		for i := 0; i < 100; i++ {
			var m WatchMessage
			if dec.Decode(&m) != nil {
				return
			}
			if h.Apply(m) != nil {
				return
			}
		}
	})
}

func roleEvent(t *testing.T, index uint64, name string) WatchMessage {
	t.Helper()
	b, _ := json.Marshal(identity.Role{Name: name})
	return WatchMessage{Type: "event", Index: index, Event: &state.Event{Kind: state.KindRole, Op: "put", Name: name, Object: b}}
}

func TestHubResume(t *testing.T) {
	h := NewHub()
	if err := h.Apply(WatchMessage{Type: "snapshot", Index: 10, Snapshot: &WatchSnapshot{Cluster: "c"}}); err != nil {
		t.Fatal(err)
	}
	for i := uint64(11); i <= 15; i++ {
		if err := h.Apply(roleEvent(t, i, fmt.Sprintf("r%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	drain := func(ch <-chan WatchMessage) []WatchMessage {
		var out []WatchMessage
		for {
			select {
			case m := <-ch:
				out = append(out, m)
			default:
				return out
			}
		}
	}
	// Resuming from 13 gets a resume marker and events 13-15.
	ch, cancel := h.SubscribeFrom(13)
	got := drain(ch)
	cancel()
	if len(got) != 4 || got[0].Type != "resume" || got[1].Index != 13 || got[3].Index != 15 {
		t.Fatalf("resume from 13: %+v", got)
	}
	// From the snapshot's own index: every event after it.
	ch, cancel = h.SubscribeFrom(10)
	if got := drain(ch); len(got) != 6 || got[0].Type != "resume" {
		t.Fatalf("resume from 10: %d messages, first %q", len(got), got[0].Type)
	}
	cancel()
	// Older than the hub's snapshot: a snapshot.
	ch, cancel = h.SubscribeFrom(9)
	if got := drain(ch); len(got) != 1 || got[0].Type != "snapshot" {
		t.Fatalf("resume from 9: %+v", got)
	}
	cancel()
	// Past the ring: a snapshot.
	for i := uint64(16); i < 16+recentEvents; i++ {
		if err := h.Apply(roleEvent(t, i, "x")); err != nil {
			t.Fatal(err)
		}
	}
	ch, cancel = h.SubscribeFrom(14)
	if got := drain(ch); len(got) != 1 || got[0].Type != "snapshot" {
		t.Fatalf("resume from 14 after the ring moved on: first %q", got[0].Type)
	}
	cancel()
	ch, cancel = h.SubscribeFrom(20)
	if got := drain(ch); got[0].Type != "resume" {
		t.Fatalf("resume from 20: first %q", got[0].Type)
	}
	cancel()
}

// TestFollowResumes: after the first snapshot, Follow reconnects with the
// hub's index and applies a resumed stream without a snapshot.
func TestFollowResumes(t *testing.T) {
	up := NewHub()
	if err := up.Apply(WatchMessage{Type: "snapshot", Index: 5, Snapshot: &WatchSnapshot{Cluster: "c"}}); err != nil {
		t.Fatal(err)
	}
	var sinces []uint64
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
		mu.Lock()
		sinces = append(sinces, since)
		n := len(sinces)
		mu.Unlock()
		if n == 1 {
			// The first stream ends after the snapshot.
			ch, cancel := up.SubscribeFrom(since)
			defer cancel()
			json.NewEncoder(w).Encode(<-ch) //nolint:errcheck
			return
		}
		up.ServeWatch(w, r)
	}))
	defer srv.Close()
	open := func(ctx context.Context, since uint64) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/watch?since="+strconv.FormatUint(since, 10), nil)
		return http.DefaultClient.Do(req)
	}
	down := NewHub()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Follow(ctx, down, open, nil) }()
	<-down.Ready()
	if err := up.Apply(roleEvent(t, 6, "dev")); err != nil {
		t.Fatal(err)
	}
	authtestWait(t, func() bool { _, ok := down.Role("dev"); return ok })
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(sinces) < 2 || sinces[0] != 0 || sinces[1] != 5 {
		t.Fatalf("watch requests asked for since=%v, want 0 then 5", sinces)
	}
}

func authtestWait(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
