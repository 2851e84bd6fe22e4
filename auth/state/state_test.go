package state

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

func mustApply(t *testing.T, s *Store, idx uint64, typ Type, body any) any {
	t.Helper()
	cmd, err := Encode(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Apply(idx, cmd)
	if err != nil {
		t.Fatalf("apply %d: %v", typ, err)
	}
	return res
}

func TestCommands(t *testing.T) {
	var events []Event
	s := New(func(_ uint64, evs []Event) { events = append(events, evs...) })
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1", CAs: CAs{UserSSH: []string{"k"}}})
	mustApply(t, s, 2, TypeUpsertRole, UpsertRole{Role: identity.Role{Name: "dev"}})
	mustApply(t, s, 3, TypeUpsertUser, UpsertUser{User: User{Name: "alice", Roles: []string{"dev"}, PasswordHash: "h"}, Create: true})
	// A failing command changes nothing and reports why.
	cmd, _ := Encode(TypeUpsertUser, UpsertUser{User: User{Name: "alice"}, Create: true})
	if _, err := s.Apply(4, cmd); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate user: %v", err)
	}
	if u, _ := s.User("alice"); u.PasswordHash != "h" {
		t.Fatal("failed command changed state")
	}
	if s.Index() != 4 {
		t.Fatalf("index %d", s.Index())
	}
	// Unknown commands: skipped with the flag, an error without.
	if _, err := s.Apply(5, []byte{byte(0x7f), '{', '}'}); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown command: %v", err)
	}
	if _, err := s.Apply(6, []byte{byte(0x7f | FlagIgnorable), '{', '}'}); err != nil {
		t.Fatalf("ignorable unknown command: %v", err)
	}
	if len(events) != 3 || events[2].Kind != KindRole {
		t.Fatalf("events: %+v", events)
	}
}

func TestTokens(t *testing.T) {
	s := New(nil)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	hash := strings.Repeat("ab", 32)
	mustApply(t, s, 1, TypeCreateToken, CreateToken{Token: Token{Hash: hash, Kind: identity.KindNode, Expires: now.Add(time.Hour), Created: now}})
	consume := func(idx uint64, kind identity.Kind, at time.Time) error {
		cmd, _ := Encode(TypeConsumeToken, ConsumeToken{Hash: hash, Kind: kind, Name: "n1", Now: at})
		_, err := s.Apply(idx, cmd)
		return err
	}
	if err := consume(2, identity.KindProxy, now); err == nil || !strings.Contains(err.Error(), "not a proxy") {
		t.Fatalf("wrong kind: %v", err)
	}
	if err := consume(3, identity.KindNode, now.Add(2*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired 1h ago") {
		t.Fatalf("expired: %v", err)
	}
	if err := consume(4, identity.KindNode, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := consume(5, identity.KindNode, now.Add(2*time.Minute)); err == nil || !strings.Contains(err.Error(), "already used by n1") {
		t.Fatalf("reuse: %v", err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	s := New(nil)
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1"})
	mustApply(t, s, 2, TypeUpsertNode, UpsertNode{Node: Node{ID: "n1", Labels: map[string]string{"env": "dev"}}})
	b, idx, err := s.Snapshot()
	if err != nil || idx != 2 {
		t.Fatal(err, idx)
	}
	reset := false
	s2 := New(func(_ uint64, evs []Event) { reset = evs[0].Op == "reset" })
	if err := s2.Restore(b); err != nil {
		t.Fatal(err)
	}
	if n, ok := s2.Node("n1"); !ok || n.Labels["env"] != "dev" || s2.Cluster() != "c1" || s2.Index() != 2 || !reset {
		t.Fatalf("restored: %+v %v", n, s2.Cluster())
	}
	if err := s2.Restore([]byte(`{"version":9}`)); err == nil {
		t.Fatal("future snapshot version accepted")
	}
}

func FuzzApply(f *testing.F) {
	now := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		t Type
		b any
	}{
		{TypeBootstrap, Bootstrap{Cluster: "c"}},
		{TypeUpsertRole, UpsertRole{Role: identity.Role{Name: "r"}}},
		{TypeDeleteToken, DeleteToken{ID: "abcdef"}},
		{TypeUpsertLock, UpsertLock{Lock: identity.Lock{ID: "l1", User: "alice"}, Now: now}},
		{TypeDeleteLock, DeleteLock{ID: "l1"}},
		{TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "a2", APIAddr: "x:1", RaftAddr: "x:2"}}},
		{TypeTrustServerKeys, TrustServerKeys{ID: "a1"}},
		{TypeRotateCA, RotateCA{Phase: PhaseUpdateClients, Now: now}},
		{TypePublishNextKeys, PublishNextKeys{ID: "a1", Generation: 1, Keys: keysN("a1-1")}},
		{TypeConsumeToken, ConsumeToken{Hash: strings.Repeat("a", 64), Kind: identity.KindNode, Name: "n", Now: now}},
	} {
		cmd, _ := Encode(c.t, c.b)
		f.Add(cmd)
	}
	f.Fuzz(func(t *testing.T, cmd []byte) {
		// A cluster mid-rotation, with a server, a token and a lock.
		s := New(nil)
		for i, c := range []struct {
			t Type
			b any
		}{
			{TypeBootstrap, Bootstrap{Cluster: "c"}},
			{TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "a1", APIAddr: "x:1", RaftAddr: "x:2", Keys: keysN("a1-0")}}},
			{TypeCreateToken, CreateToken{Token: Token{Hash: strings.Repeat("a", 64), Kind: identity.KindNode, Expires: now.Add(time.Hour)}}},
			{TypeUpsertLock, UpsertLock{Lock: identity.Lock{ID: "l0", Role: "r"}, Now: now}},
			{TypeRotateCA, RotateCA{Phase: PhaseInit, Now: now}},
		} {
			setup, _ := Encode(c.t, c.b)
			if _, err := s.Apply(uint64(i+1), setup); err != nil {
				t.Fatal(err)
			}
		}
		before, _, _ := s.Snapshot()
		_, err := s.Apply(10, cmd)
		after, _, serr := s.Snapshot()
		if serr != nil {
			t.Fatal(serr)
		}
		if err != nil {
			// A failed command leaves no trace (apart from the index).
			var a, b snapshot
			json.Unmarshal(before, &a)
			json.Unmarshal(after, &b)
			ja, _ := json.Marshal(a.Data)
			jb, _ := json.Marshal(b.Data)
			if string(ja) != string(jb) {
				t.Fatalf("command %x failed (%v) but changed the state", cmd, err)
			}
		}
	})
}

func TestMeshKeys(t *testing.T) {
	var events []Event
	s := New(func(_ uint64, evs []Event) { events = append(events, evs...) })
	k1, k2 := make([]byte, MeshKeyBytes), make([]byte, MeshKeyBytes)
	k2[0] = 1
	mustApply(t, s, 1, TypeSetMeshKeys, SetMeshKeys{Keys: [][]byte{k1, k2}})
	got := s.MeshKeys()
	if len(got) != 2 || got[1][0] != 1 {
		t.Fatalf("keys %v", got)
	}
	got[0][0] = 9 // a copy: the store is not changed through it
	if s.MeshKeys()[0][0] != 0 {
		t.Fatal("MeshKeys returned the live slice")
	}
	if len(events) != 0 {
		t.Fatalf("mesh keys leaked into watch events: %+v", events)
	}
	for name, keys := range map[string][][]byte{
		"none":      nil,
		"short":     {make([]byte, 16)},
		"duplicate": {k1, k1},
		"too many":  {k1, k2, {2: 0, 31: 1}, {3: 0, 31: 2}, {4: 0, 31: 3}},
	} {
		cmd, _ := Encode(TypeSetMeshKeys, SetMeshKeys{Keys: keys})
		if _, err := s.Apply(2, cmd); err == nil {
			t.Errorf("%s: keyring accepted", name)
		}
	}
	if len(s.MeshKeys()) != 2 {
		t.Fatal("refused keyring changed state")
	}
	// Promoting keeps creation order: the newest stays last.
	mustApply(t, s, 3, TypeSetMeshKeys, SetMeshKeys{Keys: [][]byte{k1, k2}, Primary: 1})
	if got := s.MeshKeys(); got[0][0] != 1 || got[1][0] != 0 {
		t.Fatalf("primary first: %v", got)
	}
	if keys, p := s.MeshKeyring(); p != 1 || keys[1][0] != 1 {
		t.Fatalf("creation order lost: %v, primary %d", keys, p)
	}
	cmd, _ := Encode(TypeSetMeshKeys, SetMeshKeys{Keys: [][]byte{k1, k2}, Primary: 2})
	if _, err := s.Apply(4, cmd); err == nil {
		t.Error("primary outside the keyring accepted")
	}
	// Keys survive a snapshot.
	b, _, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s2 := New(nil)
	if err := s2.Restore(b); err != nil {
		t.Fatal(err)
	}
	if len(s2.MeshKeys()) != 2 {
		t.Fatal("mesh keys lost in snapshot")
	}
}

func TestAuthServersAndBoundTokens(t *testing.T) {
	s := New(nil)
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1"})
	a := AuthServer{ID: "auth-2", APIAddr: "127.0.0.2:3025", RaftAddr: "127.0.0.2:3026", Region: "eu"}
	mustApply(t, s, 2, TypeUpsertAuthServer, UpsertAuthServer{Server: a})
	if got, ok := s.AuthServer("auth-2"); !ok || got.RaftAddr != a.RaftAddr {
		t.Fatalf("registry: %+v %v", got, ok)
	}
	// Snapshots carry the registry.
	b, _, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s2 := New(nil)
	if err := s2.Restore(b); err != nil {
		t.Fatal(err)
	}
	if len(s2.AuthServers()) != 1 {
		t.Fatalf("restored registry: %+v", s2.AuthServers())
	}
	cmd, _ := Encode(TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "auth-3"}})
	if _, err := s.Apply(3, cmd); err == nil {
		t.Fatal("an auth server without addresses was accepted")
	}
	mustApply(t, s, 4, TypeDeleteAuthServer, DeleteAuthServer{ID: "auth-2"})
	if len(s.AuthServers()) != 0 {
		t.Fatal("delete left the server")
	}

	// Auth tokens must name their server; a named token joins only as it.
	now := time.Now()
	cmd, _ = Encode(TypeCreateToken, CreateToken{Token: Token{Hash: strings.Repeat("a", 64), Kind: identity.KindAuth, Expires: now.Add(time.Hour)}})
	if _, err := s.Apply(5, cmd); err == nil {
		t.Fatal("an auth token without a name was accepted")
	}
	mustApply(t, s, 6, TypeCreateToken, CreateToken{Token: Token{Hash: strings.Repeat("b", 64), Kind: identity.KindProxy, Name: "proxy-eu", Expires: now.Add(time.Hour)}})
	cmd, _ = Encode(TypeConsumeToken, ConsumeToken{Hash: strings.Repeat("b", 64), Kind: identity.KindProxy, Name: "proxy-us", Now: now})
	var te *TokenError
	if _, err := s.Apply(7, cmd); !errors.As(err, &te) || !strings.Contains(err.Error(), "proxy-eu") {
		t.Fatalf("named token used under another name: %v", err)
	}
	mustApply(t, s, 8, TypeConsumeToken, ConsumeToken{Hash: strings.Repeat("b", 64), Kind: identity.KindProxy, Name: "proxy-eu", Now: now})
}

func TestResultsAndWaitApplied(t *testing.T) {
	s := New(nil)
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1"})
	cmd, _ := Encode(TypeDeleteUser, DeleteUser{Name: "nobody"})
	s.Apply(2, cmd) //nolint:errcheck // the outcome is read back below

	if _, err, ok := s.Result(2); !ok || !errors.Is(err, ErrNotFound) {
		t.Fatalf("result of 2: %v %v", err, ok)
	}
	if _, _, ok := s.Result(3); ok {
		t.Fatal("result of an index not applied yet")
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- s.WaitApplied(ctx, 3)
	}()
	select {
	case err := <-done:
		t.Fatalf("WaitApplied returned before index 3: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	mustApply(t, s, 3, TypeUpsertRole, UpsertRole{Role: identity.Role{Name: "dev"}})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An index far in the past is forgotten, not confused with a new one.
	if _, _, ok := s.Result(3 + resultRingSize); ok {
		t.Fatal("result for an index never applied")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.WaitApplied(ctx, 99); err == nil {
		t.Fatal("WaitApplied for a future index returned nil")
	}
}

// TestFailedCommandsLeaveNoTrace: handlers change maps in place, so each
// must check everything before it changes anything. A failing command of
// each kind must leave the whole state as it was.
func TestFailedCommandsLeaveNoTrace(t *testing.T) {
	now := time.Now().UTC()
	s := New(nil)
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1"})
	mustApply(t, s, 2, TypeUpsertUser, UpsertUser{User: User{Name: "alice"}})
	mustApply(t, s, 3, TypeCreateToken, CreateToken{Token: Token{Hash: strings.Repeat("a", 64), Kind: identity.KindNode, Expires: now.Add(-48 * time.Hour)}})
	mustApply(t, s, 4, TypeCreateToken, CreateToken{Token: Token{Hash: strings.Repeat("b", 64), Kind: identity.KindProxy, Name: "p1", Expires: now.Add(time.Hour)}})
	failing := []struct {
		typ  Type
		body any
	}{
		{TypeBootstrap, Bootstrap{Cluster: "c2"}},
		{TypeUpsertUser, UpsertUser{User: User{Name: "alice"}, Create: true}},
		{TypeUpsertUser, UpsertUser{User: User{Name: "../x"}}},
		{TypeDeleteUser, DeleteUser{Name: "nobody"}},
		{TypeUpsertRole, UpsertRole{Role: identity.Role{Name: ""}}},
		{TypeDeleteRole, DeleteRole{Name: "nobody"}},
		{TypeCreateToken, CreateToken{Token: Token{Hash: "short", Kind: identity.KindNode}}},
		{TypeDeleteToken, DeleteToken{ID: "ffffff"}},
		// Would garbage-collect token a if it succeeded.
		{TypeConsumeToken, ConsumeToken{Hash: strings.Repeat("b", 64), Kind: identity.KindProxy, Name: "p2", Now: now}},
		{TypeUpsertNode, UpsertNode{Node: Node{ID: ""}}},
		{TypeDeleteNode, DeleteNode{ID: "nobody"}},
		{TypeSetNodeLabel, SetNodeLabels{ID: "nobody"}},
		{TypeSetMeshKeys, SetMeshKeys{Keys: [][]byte{{1}}}},
		{TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "a"}}},
		{TypeDeleteAuthServer, DeleteAuthServer{ID: "nobody"}},
		{TypeTrustServerKeys, TrustServerKeys{ID: "nobody"}},
		{TypeUpsertLock, UpsertLock{Lock: identity.Lock{ID: "l"}, Now: now}},
		{TypeDeleteLock, DeleteLock{ID: "nobody"}},
	}
	for i, c := range failing {
		before, _, _ := s.Snapshot()
		cmd, _ := Encode(c.typ, c.body)
		if _, err := s.Apply(uint64(10+i), cmd); err == nil {
			t.Errorf("command type %d %+v did not fail", c.typ, c.body)
			continue
		}
		after, _, _ := s.Snapshot()
		var a, b snapshot
		json.Unmarshal(before, &a)
		json.Unmarshal(after, &b)
		ja, _ := json.Marshal(a.Data)
		jb, _ := json.Marshal(b.Data)
		if string(ja) != string(jb) {
			t.Errorf("failed command type %d changed the state", c.typ)
		}
	}
}
