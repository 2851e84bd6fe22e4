package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
)

var backupTime = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// backupStore is a store with something of every kind in it.
func backupStore(t testing.TB) *Store {
	s := New(nil)
	k1, k2 := bytes.Repeat([]byte{1}, MeshKeyBytes), bytes.Repeat([]byte{2}, MeshKeyBytes)
	steps := []struct {
		t Type
		b any
	}{
		{TypeBootstrap, Bootstrap{Cluster: "c1", CAs: CAs{UserSSH: []string{"ecdsa-sha2-nistp256 AAAA user\n"}, HostSSH: []string{"ecdsa-sha2-nistp256 AAAA host\n"}, TLS: [][]byte{{0x30, 1, 2}}}}},
		{TypeUpsertRole, UpsertRole{Role: identity.Role{Name: "dev", Allow: identity.Rules{Logins: []string{"dev"}}}}},
		{TypeUpsertRole, UpsertRole{Role: identity.Role{Name: "ops"}}},
		{TypeUpsertUser, UpsertUser{User: User{Name: "alice", Roles: []string{"dev"}, PasswordHash: "$argon2id$alice", Created: backupTime}, Create: true}},
		{TypeUpsertUser, UpsertUser{User: User{Name: "bob", Roles: []string{"ops"}, PasswordHash: "$argon2id$bob <&>", Created: backupTime}, Create: true}},
		{TypeCreateToken, CreateToken{Token: Token{Hash: strings.Repeat("ab", 32), Kind: identity.KindNode, Labels: map[string]string{"env": "a&b"}, Expires: backupTime.Add(time.Hour), Created: backupTime}}},
		{TypeUpsertNode, UpsertNode{Node: Node{ID: "n1", Labels: map[string]string{"env": "dev"}, HostKey: "ecdsa-sha2-nistp256 AAAA", Joined: backupTime}}},
		{TypeUpsertAuthServer, UpsertAuthServer{Server: AuthServer{ID: "auth-c1", APIAddr: "127.0.0.1:3025", RaftAddr: "127.0.0.1:3026", Joined: backupTime, SignsServerCerts: true}}},
		{TypeSetMeshKeys, SetMeshKeys{Keys: [][]byte{k1, k2}, Primary: 1}},
	}
	// A no-op moves the index and nothing else.
	steps = append(steps, struct {
		t Type
		b any
	}{TypeNoop | FlagIgnorable, Noop{}})
	for i, st := range steps {
		cmd, err := Encode(st.t, st.b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Apply(uint64(i+1), cmd); err != nil {
			t.Fatalf("apply %d: %v", st.t, err)
		}
	}
	return s
}

func backupBytes(t testing.TB, s *Store) []byte {
	t.Helper()
	bk, err := NewBackup(s, backupTime)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(bk)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBackupRoundTrip(t *testing.T) {
	s := backupStore(t)
	b := backupBytes(t, s)
	sum, err := VerifyBackup(b)
	if err != nil {
		t.Fatal(err)
	}
	want := BackupSummary{Cluster: "c1", Index: 10, Created: backupTime, Users: 2, Roles: 2, Tokens: 1, Nodes: 1, AuthServers: 1,
		TrustedCAKeys: TrustedCAKeys{UserSSH: 1, HostSSH: 1, TLS: 1}, MeshKeys: 2}
	if *sum != want {
		t.Fatalf("summary\n got %+v\nwant %+v", *sum, want)
	}

	// The snapshot inside restores the state, secrets included.
	var bk Backup
	if err := json.Unmarshal(b, &bk); err != nil {
		t.Fatal(err)
	}
	r := New(nil)
	if err := r.Restore(bk.Snapshot); err != nil {
		t.Fatal(err)
	}
	if u, ok := r.User("bob"); !ok || u.PasswordHash != "$argon2id$bob <&>" {
		t.Fatalf("bob after restore: %+v", u)
	}
	if got := r.MeshKeys(); len(got) != 2 || got[0][0] != 2 {
		t.Fatalf("mesh keys after restore: %v", got)
	}
	if r.Index() != 10 || r.Cluster() != "c1" {
		t.Fatalf("restored index %d cluster %q", r.Index(), r.Cluster())
	}

	// Re-indenting the file (an operator's jq) keeps it valid.
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyBackup(pretty.Bytes()); err != nil {
		t.Fatalf("indented backup: %v", err)
	}
}

func TestNewBackupRefusesEmptyStore(t *testing.T) {
	if _, err := NewBackup(New(nil), backupTime); err == nil || !strings.Contains(err.Error(), "not bootstrapped") {
		t.Fatalf("backup of an empty store: %v", err)
	}
}

// reseal edits a backup's JSON with f and fixes up its checksum, as a
// backup written wrong (not damaged later) would be.
func reseal(t *testing.T, b []byte, f func(bk map[string]any, snap map[string]any)) []byte {
	t.Helper()
	var bk map[string]any
	if err := json.Unmarshal(b, &bk); err != nil {
		t.Fatal(err)
	}
	snap := bk["snapshot"].(map[string]any)
	f(bk, snap)
	sb, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(sb)
	bk["snapshot"], bk["sha256"] = json.RawMessage(sb), hex.EncodeToString(sum[:])
	out, err := json.Marshal(bk)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerifyBackupRejects(t *testing.T) {
	good := backupBytes(t, backupStore(t))
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"empty file", "truncated or corrupt", nil},
		{"truncated", "backup file is truncated or corrupt: unexpected end of JSON input", good[:len(good)/2]},
		{"one byte changed", "backup file is truncated or corrupt: checksum mismatch", bytes.Replace(good, []byte(`"alice"`), []byte(`"alicf"`), 1)},
		{"not a backup", `not a Jumpgate backup file (format ""`, []byte(`{"users":{}}`)},
		{"no snapshot", "it holds no snapshot", []byte(`{"format":"jumpgate-backup","version":1}`)},
		{"newer version", "backup file version 2 is not supported by this version of Jumpgate, which reads version 1", bytes.Replace(good, []byte(`"version":1,`), []byte(`"version":2,`), 1)},
		{"header index differs", "header says raft index 11, its snapshot index 10", reseal(t, good, func(bk, _ map[string]any) { bk["index"] = 11 })},
		{"field unknown to this version", "field widgets changed in a round trip", reseal(t, good, func(_, snap map[string]any) {
			snap["data"].(map[string]any)["widgets"] = map[string]any{"w1": 1}
		})},
		{"mesh primary out of range", "mesh primary key 5 is not in the keyring of 2", reseal(t, good, func(_, snap map[string]any) {
			snap["data"].(map[string]any)["mesh_primary"] = 5
		})},
		{"future snapshot version", "snapshot version 9 is not supported", reseal(t, good, func(_, snap map[string]any) { snap["version"] = 9 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := VerifyBackup(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Fields this version has and the backup lacks (an older backup) are
	// fine when empty: here the auth server registry, which is omitted
	// when empty, and users given as null.
	old := reseal(t, good, func(_, snap map[string]any) {
		d := snap["data"].(map[string]any)
		delete(d, "auth_servers")
		d["tokens"] = nil
	})
	if sum, err := VerifyBackup(old); err != nil || sum.AuthServers != 0 || sum.Tokens != 0 {
		t.Fatalf("older backup: %+v %v", sum, err)
	}
}

// TestVerifyBackupGolden keeps version 1 backups readable: the file was
// written by the first release with backups. Never regenerate it to make
// this test pass; a format change needs a new version and a reader for the
// old one.
func TestVerifyBackupGolden(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "backup-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := VerifyBackup(b)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Cluster != "c1" || sum.Index != 10 || sum.Users != 2 || sum.MeshKeys != 2 {
		t.Fatalf("golden summary: %+v", sum)
	}
}

func FuzzVerifyBackup(f *testing.F) {
	good := backupBytes(f, backupStore(f))
	golden, err := os.ReadFile(filepath.Join("testdata", "backup-v1.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(golden)
	f.Add(good[:len(good)-7])
	f.Add([]byte(`{"format":"jumpgate-backup","version":1,"snapshot":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) {
			sum, err := VerifyBackup(b)
			if err != nil {
				return
			}
			// A backup that verifies restores into a store whose own
			// backup verifies to the same summary.
			var bk Backup
			if err := json.Unmarshal(b, &bk); err != nil {
				t.Fatalf("verified backup does not parse: %v", err)
			}
			s := New(nil)
			if err := s.Restore(bk.Snapshot); err != nil {
				t.Fatalf("verified backup does not restore: %v", err)
			}
			s.MeshKeys() // must not panic
			again, err := NewBackup(s, bk.Created)
			if err != nil {
				t.Fatalf("backup of a restored backup: %v", err)
			}
			ab, _ := json.Marshal(again)
			sum2, err := VerifyBackup(ab)
			if err != nil {
				t.Fatalf("backup of a restored backup does not verify: %v", err)
			}
			if *sum2 != *sum {
				t.Fatalf("summary changed in a round trip:\n%+v\n%+v", *sum, *sum2)
			}
		}
		check(b)
		// Random bytes almost never carry a matching checksum: also try
		// the input with its checksum fixed up, so the fuzzer reaches the
		// snapshot checks behind it.
		var bk Backup
		if json.Unmarshal(b, &bk) != nil {
			return
		}
		var compact bytes.Buffer
		if json.Compact(&compact, bk.Snapshot) != nil {
			return
		}
		sum := sha256.Sum256(compact.Bytes())
		bk.SHA256 = hex.EncodeToString(sum[:])
		if rb, err := json.Marshal(bk); err == nil {
			check(rb)
		}
	})
}
