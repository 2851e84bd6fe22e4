package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/state"
)

func backupCmd(g *globals) *cobra.Command {
	var out string
	var force bool
	b := &cobra.Command{
		Use:   "backup -o FILE",
		Short: "Write a verified backup of the cluster's state to FILE (it holds secrets: see --help)",
		Long: `Write a backup of the cluster's replicated state to FILE: users, roles, join
tokens, nodes, the auth server registry, the trusted CA public keys and the
mesh gossip keys.

The backup is consistent: the auth server first brings its state up to date
through raft, so it holds every write acknowledged before the command ran.
It is verified before anything is written: the checksum, then a restore into
a scratch store whose state is compared with the original. FILE is written
atomically, mode 0600, and never replaced without --force.

FILE HOLDS SECRETS: user password hashes and the mesh gossip keys. Keep it
as carefully as an auth server's data directory. It holds no CA private
keys: those stay in each auth server's keystore (or HSM), so a backup is
restored (jumpgate restore) on an auth server whose keys are the cluster's.`,
		Example: `  jgctl backup -o /var/backups/jumpgate-$(date +%F).json
  jgctl backup verify /var/backups/jumpgate-2026-03-01.json`,
		Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			if out == "" {
				return errors.New("give the file to write with -o FILE")
			}
			if !force {
				if _, err := os.Lstat(out); err == nil {
					return fmt.Errorf("%s exists: choose another file, or pass --force to replace it", out)
				}
			}
			raw, err := c.Backup(ctx)
			if err != nil {
				return err
			}
			sum, err := state.VerifyBackup(raw)
			if err != nil {
				return fmt.Errorf("the backup the auth server sent does not verify, so nothing was written: %w", err)
			}
			raw = append(raw, '\n')
			if err := writeBackup(out, raw, force); err != nil {
				return err
			}
			// What reached the disk, not only what was sent.
			if back, err := os.ReadFile(out); err != nil || !bytes.Equal(back, raw) {
				return fmt.Errorf("%s does not read back as written (%v): check the disk and run jgctl backup again", out, err)
			}
			if g.jsonOut {
				return g.printJSON(map[string]any{"file": out, "bytes": len(raw), "verified": true, "summary": sum})
			}
			fmt.Printf("Backup of cluster %s at raft index %d written to %s (%d bytes, mode 0600).\n", sum.Cluster, sum.Index, out, len(raw))
			printSummary(sum)
			fmt.Println("verified: restored into a scratch store and compared")
			fmt.Println("The file holds password hashes and the mesh gossip keys: keep it secret.")
			return nil
		}),
	}
	b.Flags().StringVarP(&out, "output", "o", "", "file to write (mode 0600; it holds password hashes and the mesh gossip keys)")
	b.Flags().BoolVar(&force, "force", false, "replace FILE if it exists")

	verify := &cobra.Command{Use: "verify FILE", Short: "Check a backup file: its checksum, and a restore into a scratch store compared with the original", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			sum, err := state.VerifyBackup(raw)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if g.jsonOut {
				return g.printJSON(map[string]any{"file": args[0], "verified": true, "summary": sum})
			}
			fmt.Printf("%s: backup of cluster %s at raft index %d, taken %s.\n", args[0], sum.Cluster, sum.Index, sum.Created.Local().Format("2006-01-02 15:04:05 MST"))
			printSummary(sum)
			fmt.Println("verified: restored into a scratch store and compared")
			return nil
		}}
	b.AddCommand(verify)
	return b
}

func printSummary(s *state.BackupSummary) {
	fmt.Printf("  users %d, roles %d, join tokens %d, nodes %d, auth servers %d, mesh keys %d\n",
		s.Users, s.Roles, s.Tokens, s.Nodes, s.AuthServers, s.MeshKeys)
	fmt.Printf("  trusted CA keys: user SSH %d, host SSH %d, TLS %d\n", s.TrustedCAKeys.UserSSH, s.TrustedCAKeys.HostSSH, s.TrustedCAKeys.TLS)
}

// writeBackup writes b to path atomically with mode 0600: a temporary file
// in the same directory, synced, then linked (which fails if path exists:
// no check-then-write race) or, with force, renamed over path.
func writeBackup(path string, b []byte, force bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write backup: %w", err)
	}
	tmp := f.Name()
	defer func() {
		os.Remove(tmp) // after a link, path keeps the data; after a rename, tmp is gone
	}()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write backup: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write backup %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write backup %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write backup %s: %w", path, err)
	}
	if force {
		err = os.Rename(tmp, path)
	} else if err = os.Link(tmp, path); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists: choose another file, or pass --force to replace it", path)
	} else if err != nil {
		// No hard links here (some network file systems): check, then rename.
		if _, serr := os.Lstat(path); serr == nil {
			return fmt.Errorf("%s exists: choose another file, or pass --force to replace it", path)
		}
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write backup %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: the file itself is synced
		d.Close()
	}
	return nil
}
