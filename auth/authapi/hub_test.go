package authapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"

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
