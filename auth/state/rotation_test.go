package state

import (
	"strings"
	"testing"
	"time"
)

func keysN(n string) ServerKeys {
	return ServerKeys{UserSSH: "user-" + n, HostSSH: "host-" + n, TLS: []byte("tls-" + n)}
}

func TestRotation(t *testing.T) {
	now := time.Now().UTC()
	s := New(nil)
	k0 := keysN("a1-0")
	mustApply(t, s, 1, TypeBootstrap, Bootstrap{Cluster: "c1", CAs: CAs{UserSSH: []string{k0.UserSSH}, HostSSH: []string{k0.HostSSH}, TLS: [][]byte{k0.TLS}}})
	mustApply(t, s, 2, TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "a1", APIAddr: "a:1", RaftAddr: "a:2", Keys: k0, SignsServerCerts: true}})
	mustApply(t, s, 3, TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "a2", APIAddr: "b:1", RaftAddr: "b:2", Keys: keysN("a2-0")}})
	mustApply(t, s, 4, TypeTrustServerKeys, TrustServerKeys{ID: "a2"})
	idx := uint64(4)
	apply := func(typ Type, body any) error {
		idx++
		cmd, _ := Encode(typ, body)
		_, err := s.Apply(idx, cmd)
		return err
	}
	// Out of order: refused.
	if err := apply(TypeRotateCA, RotateCA{Phase: PhaseUpdateServers, Now: now}); err == nil || !strings.Contains(err.Error(), "can go to init") {
		t.Fatalf("standby -> update_servers: %v", err)
	}
	if err := apply(TypeRotateCA, RotateCA{Phase: PhaseInit, Now: now}); err != nil {
		t.Fatal(err)
	}
	if r := s.Rotation(); r.Next != 1 || r.Phase != PhaseInit || s.CAs().Phase != PhaseInit {
		t.Fatalf("after init: %+v", r)
	}
	// Not every server has published: refused, naming it.
	if err := apply(TypePublishNextKeys, PublishNextKeys{ID: "a1", Generation: 1, Keys: keysN("a1-1")}); err != nil {
		t.Fatal(err)
	}
	if err := apply(TypeRotateCA, RotateCA{Phase: PhaseUpdateClients, Now: now}); err == nil || !strings.Contains(err.Error(), "a2") {
		t.Fatalf("update_clients before a2 published: %v", err)
	}
	if err := apply(TypePublishNextKeys, PublishNextKeys{ID: "a2", Generation: 7, Keys: keysN("a2-1")}); err == nil {
		t.Fatal("keys of the wrong generation accepted")
	}
	if err := apply(TypePublishNextKeys, PublishNextKeys{ID: "a2", Generation: 1, Keys: keysN("a2-1")}); err != nil {
		t.Fatal(err)
	}
	// Old and new keys are trusted side by side.
	if cas := s.CAs(); len(cas.TLS) != 4 || len(cas.UserSSH) != 4 {
		t.Fatalf("trusted during the rotation: %d TLS, %d user keys", len(cas.TLS), len(cas.UserSSH))
	}
	for _, p := range []string{PhaseUpdateClients, PhaseUpdateServers, PhaseStandby} {
		if err := apply(TypeRotateCA, RotateCA{Phase: p, Now: now}); err != nil {
			t.Fatalf("to %s: %v", PhaseName(p), err)
		}
	}
	cas := s.CAs()
	if len(cas.TLS) != 2 || string(cas.TLS[0]) != "tls-a1-1" || string(cas.TLS[1]) != "tls-a2-1" || cas.Phase != "" {
		t.Fatalf("trusted after the rotation: %q", cas.TLS)
	}
	a2, _ := s.AuthServer("a2")
	if r := s.Rotation(); r.Current != 1 || r.Next != 0 || a2.Generation != 1 || !a2.SignsServerCerts || a2.Keys.UserSSH != "user-a2-1" {
		t.Fatalf("after completion: rotation %+v, a2 %+v", r, a2)
	}

	// A rolled-back rotation leaves the keys of generation 1 alone.
	for _, step := range []func() error{
		func() error { return apply(TypeRotateCA, RotateCA{Phase: PhaseInit, Now: now}) },
		func() error {
			return apply(TypePublishNextKeys, PublishNextKeys{ID: "a1", Generation: 2, Keys: keysN("a1-2")})
		},
		func() error { return apply(TypeRotateCA, RotateCA{Phase: PhaseRollback, Now: now}) },
		func() error { return apply(TypeRotateCA, RotateCA{Phase: PhaseStandby, Now: now}) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cas = s.CAs()
	if len(cas.TLS) != 2 || string(cas.TLS[0]) != "tls-a1-1" || s.Rotation().Current != 1 {
		t.Fatalf("after a rollback: %q, rotation %+v", cas.TLS, s.Rotation())
	}
	if a1, _ := s.AuthServer("a1"); len(a1.NextKeys.TLS) != 0 {
		t.Fatal("next keys left after a rollback")
	}
}
