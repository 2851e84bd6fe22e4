package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
)

// A backup file is one JSON object: a header naming the format, the
// cluster and the raft index, the SHA-256 of the snapshot, and the snapshot
// itself (exactly what Snapshot returns and Restore reads). It holds
// password hashes and the mesh gossip keys, never CA private keys: those
// stay in each auth server's keystore, so a backup is restored on an auth
// server that holds one of the cluster's CA keys.
const (
	BackupFormat  = "jumpgate-backup"
	BackupVersion = 1
)

// Backup is a backup file.
type Backup struct {
	Format  string    `json:"format"`  // BackupFormat
	Version int       `json:"version"` // BackupVersion
	Cluster string    `json:"cluster"`
	Index   uint64    `json:"index"` // raft index of the last command in the snapshot
	Created time.Time `json:"created"`
	// SHA256 is the hex SHA-256 of Snapshot in compact form (as Snapshot
	// writes it), so that re-indenting the file does not break it.
	SHA256   string          `json:"sha256"`
	Snapshot json.RawMessage `json:"snapshot"`
}

// NewBackup snapshots s. The caller makes s current first (see
// auth/authapi, which applies a TypeNoop through raft): NewBackup takes
// what s has applied.
func NewBackup(s *Store, now time.Time) (*Backup, error) {
	snap, index, err := s.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("state: backup: %w", err)
	}
	// The cluster name as the snapshot has it (not s.Cluster(), read
	// under another lock).
	var head struct {
		Data struct {
			Cluster string `json:"cluster"`
		} `json:"data"`
	}
	if err := json.Unmarshal(snap, &head); err != nil {
		return nil, fmt.Errorf("state: backup: %w", err)
	}
	if head.Data.Cluster == "" {
		return nil, errors.New("state: backup: nothing to back up: the cluster is not bootstrapped yet")
	}
	sum := sha256.Sum256(snap) // Snapshot's output is compact already
	return &Backup{Format: BackupFormat, Version: BackupVersion, Cluster: head.Data.Cluster, Index: index,
		Created: now.UTC(), SHA256: hex.EncodeToString(sum[:]), Snapshot: snap}, nil
}

// BackupSummary describes a verified backup.
type BackupSummary struct {
	Cluster     string    `json:"cluster"`
	Index       uint64    `json:"index"`
	Created     time.Time `json:"created"`
	Users       int       `json:"users"`
	Roles       int       `json:"roles"`
	Tokens      int       `json:"tokens"`
	Nodes       int       `json:"nodes"`
	AuthServers int       `json:"auth_servers"`
	// TrustedCAKeys counts the trusted public keys of each CA.
	TrustedCAKeys TrustedCAKeys `json:"trusted_ca_keys"`
	MeshKeys      int           `json:"mesh_keys"`
}

// TrustedCAKeys counts a backup's trusted CA public keys per CA.
type TrustedCAKeys struct {
	UserSSH int `json:"user_ssh"`
	HostSSH int `json:"host_ssh"`
	TLS     int `json:"tls"`
}

// errCorrupt prefixes every failure that means the bytes are damaged.
const errCorrupt = "backup file is truncated or corrupt"

// VerifyBackup checks a backup file end to end: it parses it, checks the
// format, version and checksum, restores the snapshot into a scratch store,
// snapshots that store again and checks the result equals the original
// (as decoded JSON, not bytes: the order of map keys may differ). A backup
// that passes restores to exactly the state it was taken from; one written
// by a newer Jumpgate with fields this one does not know fails, rather
// than restoring with them silently dropped.
func VerifyBackup(b []byte) (*BackupSummary, error) {
	var bk Backup
	if err := json.Unmarshal(b, &bk); err != nil {
		return nil, fmt.Errorf("%s: %v", errCorrupt, err)
	}
	switch {
	case bk.Format != BackupFormat:
		return nil, fmt.Errorf("not a Jumpgate backup file (format %q, want %q)", bk.Format, BackupFormat)
	case bk.Version != BackupVersion:
		return nil, fmt.Errorf("backup file version %d is not supported by this version of Jumpgate, which reads version %d: use the Jumpgate release that wrote it", bk.Version, BackupVersion)
	case len(bk.Snapshot) == 0 || string(bk.Snapshot) == "null":
		return nil, fmt.Errorf("%s: it holds no snapshot", errCorrupt)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, bk.Snapshot); err != nil {
		return nil, fmt.Errorf("%s: snapshot: %v", errCorrupt, err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, bk.SHA256) {
		return nil, fmt.Errorf("%s: checksum mismatch (the file says sha256 %s, its snapshot hashes to %s)", errCorrupt, short(bk.SHA256), short(got))
	}

	// The checksum matches: what follows can only fail for a backup that
	// was wrong when it was written (or a Jumpgate version mismatch).
	var orig snapshot
	if err := json.Unmarshal(bk.Snapshot, &orig); err != nil {
		return nil, fmt.Errorf("backup snapshot: %w", err)
	}
	switch {
	case orig.Version != 1:
		return nil, fmt.Errorf("backup snapshot version %d is not supported by this version of Jumpgate", orig.Version)
	case orig.Data.Cluster == "":
		return nil, errors.New("backup snapshot holds no cluster: it was taken before the cluster was bootstrapped")
	case orig.Data.Cluster != bk.Cluster:
		return nil, fmt.Errorf("backup header says cluster %s, its snapshot cluster %s", bk.Cluster, orig.Data.Cluster)
	case orig.Index != bk.Index:
		return nil, fmt.Errorf("backup header says raft index %d, its snapshot index %d", bk.Index, orig.Index)
	case orig.Index == 0:
		return nil, errors.New("backup snapshot has raft index 0: it was not taken from a running cluster")
	}

	scratch := New(nil)
	if err := scratch.Restore(bk.Snapshot); err != nil {
		return nil, fmt.Errorf("restore the backup into a scratch store: %w", err)
	}
	again, index, err := scratch.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("snapshot the scratch store: %w", err)
	}
	if index != bk.Index {
		return nil, fmt.Errorf("the scratch store restored from the backup is at raft index %d, the backup at %d", index, bk.Index)
	}
	if err := sameData(bk.Snapshot, again); err != nil {
		return nil, fmt.Errorf("restoring the backup does not reproduce it: %w", err)
	}

	// The FSM's invariants, which the commands enforce and a hand-made
	// snapshot may not keep: a server restored from it would fail later.
	keys, primary := scratch.MeshKeyring()
	if len(keys) > 0 && (primary < 0 || primary >= len(keys)) {
		return nil, fmt.Errorf("backup snapshot: mesh primary key %d is not in the keyring of %d", primary, len(keys))
	}
	for i, k := range keys {
		if len(k) != MeshKeyBytes {
			return nil, fmt.Errorf("backup snapshot: mesh key %d is %d bytes, want %d", i, len(k), MeshKeyBytes)
		}
	}
	cas := scratch.CAs()
	return &BackupSummary{
		Cluster: bk.Cluster, Index: bk.Index, Created: bk.Created,
		Users: len(scratch.Users()), Roles: len(scratch.Roles()), Tokens: len(scratch.Tokens()),
		Nodes: len(scratch.Nodes()), AuthServers: len(scratch.AuthServers()),
		TrustedCAKeys: TrustedCAKeys{UserSSH: len(cas.UserSSH), HostSSH: len(cas.HostSSH), TLS: len(cas.TLS)},
		MeshKeys:      len(keys),
	}, nil
}

// sameData compares the "data" of two snapshots as generic JSON (numbers
// kept exact). Every field of the original must come back unchanged, which
// also catches fields Data does not know (a backup from a newer Jumpgate):
// they would be dropped. A field only the round trip has must be empty: a
// newer Jumpgate reading an older backup fills in its new fields' zero
// values, and null and empty collections are the same thing.
func sameData(orig, again []byte) error {
	a, err := genericData(orig)
	if err != nil {
		return err
	}
	b, err := genericData(again)
	if err != nil {
		return err
	}
	var diff []string
	for k, v := range a {
		if w, ok := b[k]; !sameJSON(v, w) && !(isEmpty(v) && (!ok || isEmpty(w))) {
			diff = append(diff, k)
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok && !isEmpty(w) {
			diff = append(diff, k)
		}
	}
	if len(diff) == 0 {
		return nil
	}
	slices.Sort(diff)
	return fmt.Errorf("field %s changed in a round trip through this version of Jumpgate (a backup written by a newer version, or edited by hand?)", strings.Join(diff, ", "))
}

// sameJSON compares decoded JSON values the way sameData compares the
// top level: inside objects too, a field only one side has must be empty.
func sameJSON(a, b any) bool {
	switch a := a.(type) {
	case map[string]any:
		bm, ok := b.(map[string]any)
		if !ok {
			return false
		}
		for k, v := range a {
			if w, ok := bm[k]; !sameJSON(v, w) && !(isEmpty(v) && (!ok || isEmpty(w))) {
				return false
			}
		}
		for k, w := range bm {
			if _, ok := a[k]; !ok && !isEmpty(w) {
				return false
			}
		}
		return true
	case []any:
		bl, ok := b.([]any)
		if !ok || len(a) != len(bl) {
			return false
		}
		for i := range a {
			if !sameJSON(a[i], bl[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

// isEmpty reports whether a decoded JSON value is null, "", 0, false or an
// empty array or object.
func isEmpty(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case bool:
		return !v
	case json.Number:
		f, err := v.Float64()
		return err == nil && f == 0
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

func genericData(snap []byte) (map[string]any, error) {
	var s struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(snap, &s); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(s.Data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("snapshot data: %w", err)
	}
	return m, nil
}

func short(sum string) string {
	if len(sum) > 16 {
		return sum[:16] + "…"
	}
	return sum
}
