package raftnode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// The layout of a raft directory, as Open creates it.
const (
	logStoreFile = "raft.db"   // BoltDB: the log and the stable store (current term, vote)
	snapshotsDir = "snapshots" // raft.FileSnapshotStore's directory inside Dir
	// snapshotsRetained is how many snapshots the file store keeps; Open
	// uses the same value.
	snapshotsRetained = 2
)

// keyCurrentTerm is where raft keeps its current term in the stable store
// (hashicorp/raft raft.go, unexported). raft.HasExistingState reads it.
var keyCurrentTerm = []byte("CurrentTerm")

// RestoreSnapshot seeds an empty raft directory (what Config.Dir would be)
// with snapshot, the state machine's serialised state at raft index
// index, so that Open (Bootstrap or not: the directory then has state)
// starts a new single-voter cluster with id as its voter, whose state is
// the snapshot. Used to rebuild a cluster from a backup.
//
// It writes what raft itself would have after taking that snapshot: a
// file snapshot at (index, term 1) whose configuration lists id as the
// only voter at raftAddr, and current term 1 in the stable store; the log
// is empty. At start raft restores the state machine from the snapshot,
// takes its configuration from the snapshot's metadata, and, being the
// only voter, elects itself at term 2 and appends from index+1.
//
// Addresses: raft (protocol 3) identifies servers by ID only. Whether this
// server may vote or stand for election (hasVote, electSelf) compares
// ServerIDs, and the address the leader announces as its own comes from
// its transport, not from the configuration. So raftAddr need not match
// the transport's address for the server to elect itself and serve alone.
// Other servers, though, dial a member at its configuration address: give
// the address `jumpgate start` will listen on (or advertise), or re-address
// the member later (AddVoter with the same id and the new address).
//
// The directory must hold no raft state: RestoreSnapshot refuses to
// replace a log, which is how acknowledged writes would be lost by
// mistake. On failure it removes what it created.
func RestoreSnapshot(dir, id, raftAddr string, snapshot []byte, index uint64) (err error) {
	switch {
	case dir == "":
		return errors.New("raftnode: restore: a raft directory is required")
	case id == "":
		return errors.New("raftnode: restore: the server id is required")
	case raftAddr == "":
		return errors.New("raftnode: restore: the server's raft address is required")
	case index == 0:
		return errors.New("raftnode: restore: the snapshot's raft index must be above 0")
	case len(snapshot) == 0:
		return errors.New("raftnode: restore: the snapshot is empty")
	}
	for _, name := range []string{logStoreFile, snapshotsDir} {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("raftnode: restore: %s holds raft state (%s): move the directory aside first", dir, p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("raftnode: restore: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("raftnode: restore: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(filepath.Join(dir, snapshotsDir))
			os.Remove(filepath.Join(dir, logStoreFile))
		}
	}()

	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, snapshotsRetained, hclog.NewNullLogger())
	if err != nil {
		return fmt.Errorf("raftnode: restore: open snapshot store: %w", err)
	}
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(raftAddr)}}}
	// Create encodes the voters in the pre-protocol-3 peer format as well,
	// through a transport's EncodePeer, and so needs one (it dereferences
	// a nil one). Every raft transport encodes a peer as its address.
	_, enc := raft.NewInmemTransport(raft.ServerAddress(raftAddr))
	defer enc.Close() //nolint:errcheck // in memory: nothing to flush
	// Term 1: raft checks a snapshot's term only against log entries,
	// and there are none. The configuration is committed at the
	// snapshot's own index.
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, conf, index, enc)
	if err != nil {
		return fmt.Errorf("raftnode: restore: create snapshot: %w", err)
	}
	if _, err := sink.Write(snapshot); err != nil {
		sink.Cancel()
		return fmt.Errorf("raftnode: restore: write snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("raftnode: restore: write snapshot: %w", err)
	}

	bolt, err := raftboltdb.NewBoltStore(filepath.Join(dir, logStoreFile))
	if err != nil {
		return fmt.Errorf("raftnode: restore: create log store: %w", err)
	}
	defer func() {
		if cerr := bolt.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("raftnode: restore: close log store: %w", cerr)
		}
	}()
	// As raft.BootstrapCluster does: a server with a current term has
	// state, and will not be bootstrapped over.
	if err := bolt.SetUint64(keyCurrentTerm, 1); err != nil {
		return fmt.Errorf("raftnode: restore: set current term: %w", err)
	}
	has, err := raft.HasExistingState(bolt, bolt, snaps)
	if err != nil {
		return fmt.Errorf("raftnode: restore: %w", err)
	}
	if !has {
		return errors.New("raftnode: restore: raft does not see the seeded state")
	}
	return nil
}
