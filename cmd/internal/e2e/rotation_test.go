package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type caStatus struct {
	PhaseName string `json:"phase_name"`
	Rotation  struct {
		Current int `json:"current"`
	} `json:"rotation"`
	Pins []string `json:"pins"`
}

func (c *cluster) caStatus() caStatus {
	c.t.Helper()
	var st caStatus
	if err := json.Unmarshal([]byte(c.jgctl("ca", "status", "--json")), &st); err != nil {
		c.t.Fatal(err)
	}
	return st
}

// TestCARotation rotates every CA key with jgctl ca rotate --auto while a
// session streams: the session goes on, the user logs in again during the
// rotation (as users do within a certificate lifetime), and afterwards
// the old keys are gone, nodes present host certificates from the new
// keys, and jg, OpenSSH and a new node join all work.
func TestCARotation(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := newClusterWith(t, nil, []string{"JUMPGATE_RENEW_JITTER=200ms"})
	alice := c.login("alice", "alice-password")
	before := c.caStatus()
	if before.PhaseName != "standby" || before.Rotation.Current != 0 {
		t.Fatalf("before: %+v", before)
	}

	sess := &lockedWriter{}
	cmd := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node1", "--", "for i in $(seq 1 250); do echo tick $i; sleep 0.1; done")
	cmd.Env = append(os.Environ(), alice...)
	cmd.Stdout, cmd.Stderr = sess, sess
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, "session streaming", 20*time.Second, func() bool { return strings.Contains(sess.String(), "tick 2") })

	rot := &lockedWriter{}
	rcmd := exec.Command(filepath.Join(c.bin, "jgctl"), "ca", "rotate", "--auto", "--grace=4s")
	rcmd.Env = append(os.Environ(), "JUMPGATE_ADMIN_IDENTITY="+c.admin, "JUMPGATE_AUTH="+c.auth)
	rcmd.Stdout, rcmd.Stderr = rot, rot
	if err := rcmd.Start(); err != nil {
		t.Fatal(err)
	}
	rdone := make(chan error, 1)
	go func() { rdone <- rcmd.Wait() }()
	// Users log in again during the rotation; here, once update_clients
	// began, so the new certificate is signed with the new keys.
	waitFor(t, "update_clients", 30*time.Second, func() bool { return strings.Contains(rot.String(), "phase update_clients") })
	alice = c.login("alice", "alice-password")
	select {
	case err := <-rdone:
		if err != nil {
			t.Fatalf("jgctl ca rotate --auto: %v\n%s", err, rot.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("rotation did not finish:\n%s", rot.String())
	}
	t.Logf("jgctl ca rotate --auto:\n%s", rot.String())
	after := c.caStatus()
	if after.PhaseName != "standby" || after.Rotation.Current != 1 {
		t.Fatalf("after: %+v", after)
	}
	for _, p := range after.Pins {
		for _, old := range before.Pins {
			if p == old {
				t.Fatalf("the old TLS CA %s is still trusted after the rotation", old)
			}
		}
	}

	// The session streamed through every phase.
	select {
	case err := <-done:
		if err != nil || !strings.Contains(sess.String(), "tick 250") {
			t.Fatalf("session across the rotation: %v\n%s", err, sess.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("session did not end")
	}

	// Everything works with the new keys only: jg (which checks the
	// node's host certificate against the host CAs it got at login),
	// OpenSSH, and a node joining now.
	if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "rotated"); code != 0 || !strings.Contains(out, "rotated") {
		t.Fatalf("jg ssh after the rotation: exit %d: %s", code, out)
	}
	testOpenSSH(t, c, alice)

	// A second rotation, by hand, rolled back from update_servers (after
	// nodes renewed with the new keys): back on generation 1, and
	// everything still works, old sessions and new.
	c.jgctl("ca", "rotate", "--phase=init")
	waitFor(t, "new keys published", 20*time.Second, func() bool {
		return strings.Contains(c.jgctl("ca", "status"), "yes")
	})
	c.jgctl("ca", "rotate", "--phase=update_clients")
	alice = c.login("alice", "alice-password")
	c.jgctl("ca", "rotate", "--phase=update_servers")
	time.Sleep(2 * time.Second) // nodes renew (jitter 200 ms)
	if out, code := c.run("", alice, "jg", "ssh", "node2", "--", "echo", "mid-rotation"); code != 0 || !strings.Contains(out, "mid-rotation") {
		t.Fatalf("jg ssh in update_servers: exit %d: %s", code, out)
	}
	c.jgctl("ca", "rotate", "--phase=rollback")
	time.Sleep(2 * time.Second) // nodes renew with the old keys again
	c.jgctl("ca", "rotate", "--phase=standby")
	if st := c.caStatus(); st.PhaseName != "standby" || st.Rotation.Current != 1 || len(st.Pins) != len(after.Pins) || st.Pins[0] != after.Pins[0] {
		t.Fatalf("after the rollback: %+v (before it: %+v)", st, after)
	}
	alice = c.login("alice", "alice-password")
	waitFor(t, "jg ssh after the rollback", 20*time.Second, func() bool {
		out, code := c.run("", alice, "jg", "ssh", "node2", "--", "echo", "rolled-back")
		return code == 0 && strings.Contains(out, "rolled-back")
	})

	tok := c.token()
	c.start("node3", "--roles=node", "--node-name=node3", "--data-dir="+filepath.Join(c.dir, "node3"), "--proxy="+c.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin)
	c.waitOnline("node3")
	if out, code := c.run("", alice, "jg", "ssh", "node3", "--", "echo", "joined-after"); code != 0 || !strings.Contains(out, "joined-after") {
		t.Fatalf("jg ssh to a node that joined after the rotation: exit %d: %s", code, out)
	}
}
