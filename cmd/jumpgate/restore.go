package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/ca"
	"jumpgate.dev/jumpgate/auth/raftnode"
	"jumpgate.dev/jumpgate/auth/state"
)

func restoreCmd() *cobra.Command {
	var backupFile, configPath string
	var f Config
	c := &cobra.Command{
		Use:   "restore --backup FILE --data-dir DIR",
		Short: "Rebuild an auth cluster from a jgctl backup, as a single auth server",
		Long: `Rebuild an auth cluster from a backup written by jgctl backup.

restore verifies the backup, checks that this server's keystore holds the
private key of one of the cluster's trusted TLS CAs (a backup holds no
private keys), and seeds <data-dir>/auth/raft so that jumpgate start runs a
new cluster, with this server as its only raft voter, whose state is the
backup's. It writes nothing else, and refuses a data dir that already holds
raft state: move that aside first.

Stop every auth server of the old cluster before starting the restored one.
Once it runs, the other auth servers join again (jgctl auth add ID, and an
empty data dir). Until then the auth server registry restored from the
backup still lists them, which is expected: they are not raft members of
the restored cluster, and each entry is replaced when its server joins.

Give the same data dir, auth id, addresses and keystore settings (--config)
that jumpgate start will use.`,
		Example: `  jumpgate restore --backup jumpgate-2026-03-01.json --data-dir /var/lib/jumpgate --auth-listen 10.0.0.5:3025
  jumpgate restore --backup jumpgate-2026-03-01.json --config /etc/jumpgate.yaml   # keystore on an HSM`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfigFile(configPath)
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if fl.Changed(name) || *dst == "" {
					*dst = v
				}
			}
			set("data-dir", &cfg.DataDir, f.DataDir)
			set("auth-id", &cfg.Auth.ID, f.Auth.ID)
			set("auth-listen", &cfg.Auth.Listen, f.Auth.Listen)
			set("raft-listen", &cfg.Auth.RaftListen, f.Auth.RaftListen)
			set("raft-advertise", &cfg.Auth.RaftAdvertise, f.Auth.RaftAdvertise)
			if backupFile == "" {
				return errors.New("give the backup file with --backup FILE (written by jgctl backup)")
			}
			return restore(cfg, backupFile, f.Auth.ClusterName)
		},
	}
	fl := c.Flags()
	fl.StringVar(&backupFile, "backup", "", "backup file written by jgctl backup")
	fl.StringVarP(&configPath, "config", "c", "", "the YAML config jumpgate start uses on this server (keystore settings, addresses); flags override it")
	fl.StringVar(&f.DataDir, "data-dir", "", "this auth server's data dir, as given to jumpgate start")
	fl.StringVar(&f.Auth.ClusterName, "cluster-name", "", "the cluster's name (default: the backup's; if given, it must match)")
	fl.StringVar(&f.Auth.ID, "auth-id", "", "this auth server's id (default auth-<cluster-name>)")
	fl.StringVar(&f.Auth.Listen, "auth-listen", "127.0.0.1:3025", "auth API address jumpgate start will use (the raft address defaults to its port + 1)")
	fl.StringVar(&f.Auth.RaftListen, "raft-listen", "", "raft address jumpgate start will use (default: auth port + 1)")
	fl.StringVar(&f.Auth.RaftAdvertise, "raft-advertise", "", "raft address other auth servers dial, when not --raft-listen")
	return c
}

// restore rebuilds the auth state of cfg's data dir from a backup file;
// see restoreCmd.
func restore(cfg Config, backupFile, clusterName string) error {
	raw, err := os.ReadFile(backupFile)
	if err != nil {
		return err
	}
	sum, err := state.VerifyBackup(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", backupFile, err)
	}
	var bk state.Backup
	if err := json.Unmarshal(raw, &bk); err != nil { // verified: cannot fail
		return fmt.Errorf("%s: %w", backupFile, err)
	}
	if clusterName != "" && clusterName != sum.Cluster {
		return fmt.Errorf("%s is a backup of cluster %s, not %s", backupFile, sum.Cluster, clusterName)
	}

	// The address and id defaults are jumpgate start's, for an auth server
	// that does not join (it leads the restored cluster).
	cfg.Roles = []string{"auth"}
	cfg.Auth.ClusterName = sum.Cluster
	cfg.Auth.JoinAddr, cfg.Auth.Token, cfg.Auth.CAPin = "", "", ""
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return err
	}
	authDir := filepath.Join(cfg.DataDir, "auth")
	raftDir := filepath.Join(authDir, "raft")
	for _, name := range []string{"raft.db", "snapshots"} {
		if _, err := os.Lstat(filepath.Join(raftDir, name)); err == nil {
			return fmt.Errorf("%s holds raft state: a restore never overwrites it; move it aside (mv %s %s.old) and run jumpgate restore again", raftDir, raftDir, raftDir)
		}
	}

	// The restored server signs with its own keystore's keys: one of them
	// must be a key the backup's cluster trusts.
	scratch := state.New(nil)
	if err := scratch.Restore(bk.Snapshot); err != nil {
		return fmt.Errorf("%s: %w", backupFile, err)
	}
	der, err := matchingTLSCA(cfg, authDir, scratch.CAs().TLS)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(authDir, 0o700); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(authDir, ownCAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write this server's TLS CA certificate: %w", err)
	}
	// The trusted set as the backup has it, for the transport before
	// the state is loaded (start rewrites it from state).
	var trusted bytes.Buffer
	for _, c := range scratch.CAs().TLS {
		pem.Encode(&trusted, &pem.Block{Type: "CERTIFICATE", Bytes: c}) //nolint:errcheck // bytes.Buffer
	}
	if err := writeFileAtomic(filepath.Join(authDir, trustedCAFile), trusted.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write the trusted TLS CAs: %w", err)
	}

	raftAddr := cfg.Auth.RaftListen
	if cfg.Auth.RaftAdvertise != "" {
		raftAddr = cfg.Auth.RaftAdvertise
	}
	if err := raftnode.RestoreSnapshot(raftDir, cfg.Auth.ID, raftAddr, bk.Snapshot, bk.Index); err != nil {
		return err
	}

	cert, _ := x509.ParseCertificate(der)
	fmt.Printf("Restored cluster %s at raft index %d (backup taken %s) into %s.\n",
		sum.Cluster, sum.Index, sum.Created.Local().Format(time.DateTime), raftDir)
	fmt.Printf("  users %d, roles %d, join tokens %d, nodes %d, mesh keys %d\n", sum.Users, sum.Roles, sum.Tokens, sum.Nodes, sum.MeshKeys)
	fmt.Printf("This server is auth server %s, the only raft voter, at raft address %s; it signs with TLS CA %s.\n", cfg.Auth.ID, raftAddr, ca.Pin(cert))
	var others []string
	for _, a := range scratch.AuthServers() {
		if a.ID != cfg.Auth.ID {
			others = append(others, a.ID)
		}
	}
	fmt.Printf("\nNext:\n")
	fmt.Printf("  1. Make sure no auth server of the old cluster is running.\n")
	fmt.Printf("  2. Start this server with the same data dir and addresses:\n       jumpgate start --roles=auth --cluster-name=%s --auth-id=%s --auth-listen=%s --data-dir=%s ...\n",
		sum.Cluster, cfg.Auth.ID, cfg.Auth.Listen, cfg.DataDir)
	fmt.Printf("  3. Check it: jgctl auth ls, jgctl status.\n")
	if len(others) > 0 {
		fmt.Printf("  4. The registry restored from the backup still lists %s: that is expected (they are not raft\n", strings.Join(others, ", "))
		fmt.Printf("     members of the restored cluster). Add each back with jgctl auth add ID --voter and an empty data dir:\n")
		fmt.Printf("     its entry is replaced when it joins.\n")
	}
	return nil
}

// errNoClusterKeys: the restore must run where the cluster's keys are.
var errNoClusterKeys = errors.New("this server's keystore holds none of the cluster's CA keys: restore on an auth server whose keys directory and passphrase (or HSM token) are the cluster's")

// matchingTLSCA returns the trusted TLS CA certificate (DER) whose private
// key is in this server's keystore.
func matchingTLSCA(cfg Config, authDir string, trusted [][]byte) ([]byte, error) {
	if cfg.Auth.Keystore.Backend == "software" {
		// A software keystore makes whatever it lacks (a passphrase, keys)
		// on first use: on a server without the cluster's keys that would
		// leave fresh, useless ones behind. Nothing is opened without them.
		passFile := cfg.Auth.KeystorePassphraseFile
		if passFile == "" {
			passFile = filepath.Join(authDir, "keystore.pass")
		}
		need := []string{passFile}
		for _, k := range []string{ca.KeyUserSSH, ca.KeyHostSSH, ca.KeyTLS} {
			need = append(need, filepath.Join(authDir, "keys", k+".key"))
		}
		for _, p := range need {
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("%w (%v)", errNoClusterKeys, err)
			}
		}
	}
	p := &process{log: newLogger(LogConfig{Level: "warn"})}
	defer func() {
		for i := len(p.cleanup) - 1; i >= 0; i-- {
			p.cleanup[i](context.Background())
		}
	}()
	ks, err := openKeystore(p, cfg, authDir)
	if err != nil {
		return nil, fmt.Errorf("open this server's keystore: %w", err)
	}
	if len(trusted) == 0 {
		return nil, errors.New("the backup trusts no TLS CA: it cannot be restored")
	}
	var lastErr error
	for _, der := range trusted {
		if _, lastErr = ca.New(ca.Config{ClusterName: cfg.Auth.ClusterName, Keystore: ks, TLSCACert: der}); lastErr == nil {
			return der, nil
		}
	}
	return nil, fmt.Errorf("%w (%d trusted TLS CAs tried; %v)", errNoClusterKeys, len(trusted), lastErr)
}
