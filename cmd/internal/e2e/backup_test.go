package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBackupRestore takes a backup of a running cluster with jgctl backup,
// checks what a careful operator would (mode 0600, jgctl backup verify, a
// damaged copy refused), then loses the auth server's raft state and
// rebuilds it with jumpgate restore: users log in and reach nodes again,
// and a write made after the backup is gone, so the state is the backup's.
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := bareCluster(t)
	c.proxy, c.auth = freeAddr(t), freeAddr(t)
	data := filepath.Join(c.dir, "auth")
	c.admin = filepath.Join(data, "admin")
	// A short drain: the proxy in the auth process holds node1's tunnel,
	// which SIGTERM would otherwise wait 10 s for.
	authArgs := []string{"--roles=auth,proxy", "--cluster-name=e2e", "--proxy-id=proxy1", "--data-dir=" + data,
		"--auth-listen=" + c.auth, "--proxy-listen=" + c.proxy, "--shutdown-timeout=1s"}
	admin := []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}
	waitAuth := func() {
		waitFor(t, "auth server", 30*time.Second, func() bool {
			out, code := c.run("", admin, "jgctl", "status")
			return code == 0 && strings.Contains(out, "e2e")
		})
	}
	c.start("auth", authArgs...)
	waitAuth()
	rf := filepath.Join(c.dir, "roles.yaml")
	os.WriteFile(rf, []byte(fmt.Sprintf("kind: role\nname: dev\nallow:\n  logins: [%s]\n  node_labels: {\"*\": \"*\"}\n", c.userLogin)), 0o600)
	c.jgctl("roles", "apply", "-f", rf)
	addUser := func(name string) {
		t.Helper()
		if out, code := c.run(name+"-password\n", admin, "jgctl", "users", "add", name, "--roles=dev", "--password-stdin"); code != 0 {
			t.Fatalf("add %s: %s", name, out)
		}
	}
	addUser("alice")
	tok := c.token()
	c.start("node1", "--roles=node", "--node-name=node1", "--data-dir="+filepath.Join(c.dir, "node1"),
		"--proxy="+c.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin)
	c.waitOnline("node1")
	c.login("alice", "alice-password")

	// Backup: verified, mode 0600, never overwritten by accident.
	file := filepath.Join(c.dir, "backup.json")
	out := c.jgctl("backup", "-o", file)
	if !strings.Contains(out, "verified: restored into a scratch store and compared") || !strings.Contains(out, "users 1") {
		t.Fatalf("jgctl backup:\n%s", out)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file mode %v, want 0600 (it holds password hashes and mesh keys)", fi.Mode().Perm())
	}
	if out, code := c.run("", admin, "jgctl", "backup", "-o", file); code == 0 || !strings.Contains(out, "exists") {
		t.Fatalf("backup over an existing file: exit %d: %s", code, out)
	}
	if out := c.jgctl("backup", "verify", file); !strings.Contains(out, "verified") || !strings.Contains(out, "cluster e2e") {
		t.Fatalf("jgctl backup verify:\n%s", out)
	}
	good, _ := os.ReadFile(file)
	for _, bad := range []struct{ name, want string }{
		{"flipped", "backup file is truncated or corrupt: checksum mismatch"},
		{"truncated", "backup file is truncated or corrupt"},
	} {
		b := bytes.Replace(good, []byte(`"alice"`), []byte(`"alicf"`), 1)
		if bad.name == "truncated" {
			b = good[:len(good)/2]
		}
		if bytes.Equal(b, good) {
			t.Fatal("the damaged copy is not damaged")
		}
		p := filepath.Join(c.dir, bad.name+".json")
		os.WriteFile(p, b, 0o600)
		if out, code := c.run("", admin, "jgctl", "backup", "verify", p); code == 0 || !strings.Contains(out, bad.want) {
			t.Errorf("verify a %s copy: exit %d: %s", bad.name, code, out)
		}
	}

	// A write after the backup, which the restore must not bring back.
	addUser("carol")

	// Lose the auth server's raft state.
	auth := c.procs["auth"]
	auth.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- auth.Wait() }()
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatal("auth server did not stop within 15s of SIGTERM")
	}
	restore := []string{"restore", "--backup", file, "--data-dir", data, "--auth-listen", c.auth}
	if out, code := c.run("", nil, "jumpgate", restore...); code == 0 || !strings.Contains(out, "move it aside") {
		t.Fatalf("restore over existing raft state: exit %d: %s", code, out)
	}
	raftDir := filepath.Join(data, "auth", "raft")
	if err := os.Rename(raftDir, raftDir+".lost"); err != nil {
		t.Fatal(err)
	}
	out, code := c.run("", nil, "jumpgate", restore...)
	if code != 0 || !strings.Contains(out, "Restored cluster e2e") {
		t.Fatalf("jumpgate restore: exit %d:\n%s", code, out)
	}
	t.Logf("jumpgate restore:\n%s", out)

	c.start("auth-restored", authArgs...)
	waitAuth()
	c.waitOnline("node1")
	alice := c.login("alice", "alice-password")
	if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "restored"); code != 0 || !strings.Contains(out, "restored") {
		t.Fatalf("jg ssh after restore: exit %d: %s", code, out)
	}
	users := c.jgctl("users", "ls")
	if !strings.Contains(users, "alice") || strings.Contains(users, "carol") {
		t.Fatalf("users after restore (want alice, and not carol, added after the backup):\n%s", users)
	}
	if out, code := c.run("carol-password\n", []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-carol")}, "jg", "login", "--proxy="+c.proxy,
		"--user=carol", "--password-stdin", "--ca-pin="+c.pin()); code == 0 || !strings.Contains(out, "wrong user name or password") {
		t.Fatalf("carol's login after restore: exit %d: %s", code, out)
	}
}
