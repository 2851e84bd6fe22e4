package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/audit/audittest"
	"jumpgate.dev/jumpgate/node/recording"
)

// TestAccessControl runs the access-control and audit layer with real
// processes: roles applied from a directory with jgctl apply (twice: no
// change; then --prune), deny beating allow, label expressions and trait
// templates, a just-in-time request approved, used with per-session TOTP
// MFA, and expired, a session recorded at the node and replayed
// byte-exact, and every audit line of every process validated against the
// schema.
func TestAccessControl(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := newCluster(t) // node1 env=dev, node2 env=staging; alice [dev], bob [staging]
	dir := filepath.Join(c.dir, "access")
	os.MkdirAll(filepath.Join(dir, "roles"), 0o700)
	os.MkdirAll(filepath.Join(dir, "users"), 0o700)
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.ReplaceAll(body, "LOGIN", c.userLogin)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("roles/deny.yaml", `kind: role
name: no-staging
deny:
  node_labels: {env: staging}
---
kind: role
name: no-login-on-gitops
deny:
  logins: [LOGIN]
  node_labels: {env: gitops}
`)
	write("roles/staging.yaml", `kind: role
name: staging-re
allow:
  logins: ["{{internal.logins}}"]
  node_labels: {env: '^stag[a-z]+$'}
  request: {roles: [break-glass], max_duration: 1h}
---
kind: role
name: break-glass
allow:
  logins: [LOGIN]
  node_labels: {env: dev}
require_session_mfa: true
`)
	write("roles/extra.yaml", `kind: role
name: soon-gone
allow:
  logins: [nobody]
`)
	write("users/people.yaml", `kind: user
name: alice
roles: [dev, no-staging, no-login-on-gitops]
---
kind: user
name: bob
roles: [staging-re]
traits: {logins: [LOGIN]}
`)
	os.MkdirAll(filepath.Join(dir, "tokens"), 0o700)
	write("tokens/node9.yaml", `kind: token
type: node
name: node9
labels: {env: gitops}
ttl: 1h
secret_env: NODE9_TOKEN
`)
	node9Secret := strings.Repeat("9f", 32)
	admin := []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth, "NODE9_TOKEN=" + node9Secret}

	t.Run("apply", func(t *testing.T) {
		out, code := c.run("", admin, "jgctl", "apply", "-f", dir)
		if code != 0 {
			t.Fatalf("jgctl apply: exit %d\n%s", code, out)
		}
		for _, want := range []string{"+ role no-staging", "+ role no-login-on-gitops", "+ role staging-re", "+ role break-glass", "~ user alice", "~ user bob", "+ token node/node9"} {
			if !strings.Contains(out, want) {
				t.Errorf("first apply lacks %q:\n%s", want, out)
			}
		}
		// The token declared in git joins a node, with the secret from the
		// environment (as a CI secret store would give it).
		c.start("node9", "--roles=node", "--node-name=node9", "--data-dir="+filepath.Join(c.dir, "node9"), "--proxy="+c.proxy, "--token="+node9Secret, "--ca-pin="+c.pin())
		c.waitOnline("node9")
		if nodes := c.jgctl("nodes", "ls"); !strings.Contains(nodes, "env=gitops") {
			t.Errorf("node9 joined without the token's labels:\n%s", nodes)
		}
		out, code = c.run("", admin, "jgctl", "apply", "-f", dir, "--exit-code")
		if code != 0 || !strings.Contains(out, "unchanged") || strings.Contains(out, "+ ") || strings.Contains(out, "~ ") {
			t.Errorf("second apply is not a no-op: exit %d\n%s", code, out)
		}
		os.Remove(filepath.Join(dir, "roles/extra.yaml"))
		out, code = c.run("", admin, "jgctl", "apply", "-f", dir, "--prune", "--exit-code")
		if code != 2 || !strings.Contains(out, "- role soon-gone") {
			t.Errorf("prune: exit %d (want 2: changes)\n%s", code, out)
		}
		roles := c.jgctl("roles", "ls")
		if strings.Contains(roles, "soon-gone") || !strings.Contains(roles, "staging") || !strings.Contains(roles, "no-staging") {
			t.Errorf("after --prune, roles:\n%s", roles)
		}
		if _, code := c.run("", admin, "jgctl", "apply", "-f", dir, "--prune", "--exit-code"); code != 0 {
			t.Errorf("apply after prune changed something again")
		}
	})

	alice := c.login("alice", "alice-password")
	bob := c.login("bob", "bob-password")

	t.Run("deny beats allow", func(t *testing.T) {
		if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "ok-dev"); code != 0 || !strings.Contains(out, "ok-dev") {
			t.Errorf("alice to node1: exit %d: %s", code, out)
		}
		out, code := c.run("", alice, "jg", "ssh", "node2", "--", "true")
		if code == 0 || !strings.Contains(out, "role no-staging denies node node2") {
			t.Errorf("alice to node2 (dev allows every node, no-staging denies staging): exit %d: %s", code, out)
		}
		// A deny of one login on some nodes: the proxy lets the dial
		// through (other logins may be fine), the node refuses it.
		out, code = c.run("", alice, "jg", "ssh", "node9", "--", "true")
		if code == 0 || !strings.Contains(out, "role no-login-on-gitops denies login") {
			t.Errorf("alice to node9 as %s: exit %d: %s", c.userLogin, code, out)
		}
	})
	t.Run("label expressions and traits", func(t *testing.T) {
		if out, code := c.run("", bob, "jg", "ssh", "node2", "--", "echo", "ok-regex"); code != 0 || !strings.Contains(out, "ok-regex") {
			t.Errorf("bob to node2 (env ^stag[a-z]+$, login from his trait): exit %d: %s", code, out)
		}
		if out, code := c.run("", bob, "jg", "ssh", "node1", "--", "true"); code == 0 || !strings.Contains(out, "access denied") {
			t.Errorf("bob to node1: exit %d: %s", code, out)
		}
	})

	t.Run("recording replayed byte-exact", func(t *testing.T) {
		script := `seq 1 20000; printf '\303\274\342\202\254\360\235\204\236 end-of-recording\n'`
		cmd := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node1", "--", script)
		cmd.Env = append(os.Environ(), alice...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		want, err := cmd.Output()
		if err != nil || !bytes.Contains(want, []byte("end-of-recording")) {
			t.Fatalf("jg ssh: %v: %s", err, stderr.String())
		}
		var session string
		waitFor(t, "the recording at the auth server", 30*time.Second, func() bool {
			out, code := c.run("", admin, "jgctl", "sessions", "ls", "--user=alice", "--json")
			if code != 0 {
				return false
			}
			var l struct {
				Recordings []recording.Meta `json:"recordings"`
			}
			json.Unmarshal([]byte(out), &l)
			for _, r := range l.Recordings {
				if strings.Contains(r.Command, "end-of-recording") && !r.End.IsZero() {
					session = r.Session
					return true
				}
			}
			return false
		})
		cmd = exec.Command(filepath.Join(c.bin, "jg"), "play", "--raw", session)
		cmd.Env = append(os.Environ(), alice...)
		cast, err := cmd.Output()
		if err != nil {
			t.Fatalf("jg play --raw %s: %v", session, err)
		}
		got, err := recording.Output(bytes.NewReader(cast))
		if err != nil {
			t.Fatalf("the recording does not parse: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("replayed output (%d bytes) differs from what the session printed (%d bytes)", len(got), len(want))
		}
		if out, code := c.run("", alice, "jg", "play", "--speed=100", session); code != 0 || !strings.Contains(out, "end-of-recording") {
			t.Errorf("jg play: exit %d: %.300s", code, out)
		}
		if out, code := c.run("", bob, "jg", "play", "--raw", session); code == 0 || !strings.Contains(out, "review_sessions") {
			t.Errorf("bob replayed alice's session: exit %d: %.300s", code, out)
		}
		if out, _ := c.run("", alice, "jg", "play", "--list"); !strings.Contains(out, session) {
			t.Errorf("jg play --list lacks %s:\n%s", session, out)
		}
	})

	t.Run("request, MFA, expiry", func(t *testing.T) {
		key, err := totp.Generate(totp.GenerateOpts{Issuer: "e2e", AccountName: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		code := func(at time.Time) string {
			s, err := totp.GenerateCodeCustom(key.Secret(), at, totp.ValidateOpts{Period: 30, Skew: 1, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		// Codes of three successive time steps (one step of skew is
		// allowed): the last one's for enrolling, then one for jg ssh,
		// then the next one for OpenSSH. Each is newer than the last used.
		if out, rc := c.run(code(time.Now().Add(-30*time.Second))+"\n", bob, "jg", "mfa", "add", "--name=phone", "--secret="+key.Secret(), "--code-stdin"); rc != 0 || !strings.Contains(out, "MFA device phone added") {
			t.Fatalf("jg mfa add: exit %d: %s", rc, out)
		}
		out, rc := c.run("", bob, "jg", "request", "create", "--roles=break-glass", "--reason=INC-1 failover", "--duration=30s")
		m := regexp.MustCompile(`Access request (\S+) for`).FindStringSubmatch(out)
		if rc != 0 || m == nil {
			t.Fatalf("jg request create: exit %d: %s", rc, out)
		}
		id := m[1]
		if out, rc := c.run("", bob, "jg", "request", "create", "--roles=dev", "--reason=more"); rc == 0 || !strings.Contains(out, "may request role dev") {
			t.Errorf("requesting a role no role allows: exit %d: %s", rc, out)
		}
		if out, rc := c.run("", bob, "jg", "request", "assume", id); rc == 0 || !strings.Contains(out, "pending") {
			t.Errorf("assume before approval: exit %d: %s", rc, out)
		}
		if out := c.jgctl("requests", "ls", "--state=pending"); !strings.Contains(out, id) || !strings.Contains(out, "INC-1 failover") {
			t.Errorf("jgctl requests ls:\n%s", out)
		}
		c.jgctl("requests", "approve", id, "--reason=go ahead")
		if out, rc := c.run("", bob, "jg", "request", "assume", id); rc != 0 || !strings.Contains(out, "break-glass") {
			t.Fatalf("assume: exit %d: %s", rc, out)
		}
		approved := time.Now()
		// break-glass requires MFA: no code, no session.
		if out, rc := c.run("", bob, "jg", "ssh", "node1", "--", "true"); rc == 0 || !strings.Contains(out, "TOTP code") {
			t.Errorf("no code: exit %d: %s", rc, out)
		}
		next := code(time.Now())
		if out, rc := c.run("", bob, "jg", "ssh", "node1", "--mfa-code="+next, "--", "echo", "mfa-ok"); rc != 0 || !strings.Contains(out, "mfa-ok") {
			t.Fatalf("with a code: exit %d: %s", rc, out)
		}
		if out, rc := c.run("", bob, "jg", "ssh", "node1", "--mfa-code="+next, "--", "true"); rc == 0 || !strings.Contains(out, "used already") {
			t.Errorf("the same code again: exit %d: %s", rc, out)
		}
		if out, rc := c.run("", bob, "jg", "ssh", "node1", "--mfa-code=000000", "--", "true"); rc == 0 || !strings.Contains(out, "wrong") && !strings.Contains(out, "used already") {
			t.Errorf("a wrong code: exit %d: %s", rc, out)
		}
		// OpenSSH presents the login's certificate; jg proxy ssh gets the
		// per-session one (code from $JG_MFA_CODE here, the terminal
		// otherwise) and sends it to the node with the dial.
		if _, err := exec.LookPath("ssh"); err == nil {
			cfgOut, _ := c.run("", bob, "jg", "config")
			cfg := filepath.Join(c.dir, "bob_ssh_config")
			os.WriteFile(cfg, []byte(cfgOut+"    BatchMode yes\n"), 0o600)
			if out, rc := c.run("", bob, "/usr/bin/ssh", "-F", cfg, "node1", "true"); rc == 0 || !strings.Contains(out, "TOTP code") {
				t.Errorf("OpenSSH to an MFA node without a code: exit %d: %s", rc, out)
			}
			withCode := append(append([]string(nil), bob...), "JG_MFA_CODE="+code(time.Now().Add(30*time.Second)))
			if out, rc := c.run("", withCode, "/usr/bin/ssh", "-F", cfg, "node1", "echo", "mfa-openssh-ok"); rc != 0 || !strings.Contains(out, "mfa-openssh-ok") {
				t.Errorf("OpenSSH to an MFA node with a code: exit %d: %s", rc, out)
			}
		}
		// The approved 30 s end: the certificates from the login come back.
		if wait := time.Until(approved.Add(32 * time.Second)); wait > 0 {
			time.Sleep(wait)
		}
		out, rc = c.run("", bob, "jg", "ssh", "node1", "--mfa-code="+code(time.Now()), "--", "true")
		if rc == 0 || !strings.Contains(out, "has ended") || !strings.Contains(out, "access denied") {
			t.Errorf("after the access ended: exit %d: %s", rc, out)
		}
		if out, rc := c.run("", bob, "jg", "ssh", "node2", "--", "echo", "base-again"); rc != 0 || !strings.Contains(out, "base-again") {
			t.Errorf("bob's own roles after the request: exit %d: %s", rc, out)
		}
		if out := c.jgctl("requests", "ls", "--user=bob"); !strings.Contains(out, "expired") {
			t.Errorf("the request is not shown expired:\n%s", out)
		}
	})

	t.Run("sftp operations audited", func(t *testing.T) {
		if _, err := exec.LookPath("sftp"); err != nil {
			t.Skip("OpenSSH sftp not installed (make deps installs it)")
		}
		cfgOut, _ := c.run("", alice, "jg", "config")
		cfg := filepath.Join(c.dir, "alice_ssh_config")
		os.WriteFile(cfg, []byte(cfgOut+"    BatchMode yes\n    LogLevel ERROR\n"), 0o600)
		src := filepath.Join(c.dir, "sftp-src")
		os.WriteFile(src, []byte("hello sftp\n"), 0o600)
		dst := filepath.Join(c.dir, "sftp-dst")
		batch := filepath.Join(c.dir, "sftp-batch-access")
		os.WriteFile(batch, []byte(fmt.Sprintf("put %s %s\nrename %s %s.moved\nrm %s.moved\n", src, dst, dst, dst, dst)), 0o600)
		if out, rc := c.run("", alice, "/usr/bin/sftp", "-F", cfg, "-b", batch, "node1"); rc != 0 {
			t.Fatalf("sftp: exit %d: %s", rc, out)
		}
		waitFor(t, "sftp audit events", 10*time.Second, func() bool {
			b, _ := os.ReadFile(filepath.Join(c.dir, "node1", "audit.log"))
			return bytes.Contains(b, []byte(`"command":"rename"`)) && bytes.Contains(b, []byte(`"command":"remove"`)) && bytes.Contains(b, []byte(dst+`.moved"`))
		})
	})

	t.Run("audit log", func(t *testing.T) {
		seen := validateAuditLogs(t, c.dir)
		for _, want := range []string{audit.Login, audit.CertIssued, audit.SessionStart, audit.SessionEnd, audit.Exec, audit.SFTP, audit.SFTPOp,
			audit.DialDenied, audit.SessionDenied, audit.RoleUpserted, audit.RoleDeleted, audit.UserUpdated,
			audit.AccessRequestCreated, audit.AccessRequestApproved, audit.MFAEnrolled, audit.MFAVerified, audit.MFAFailed, audit.RecordingStored} {
			if seen[want] == 0 {
				t.Errorf("no %s event in any audit log (saw %v)", want, seen)
			}
		}
	})
}

// validateAuditLogs checks every line of every process's audit log under
// dir (DIR/*/audit.log) against the published schema, and returns how
// many events of each type there were.
func validateAuditLogs(t *testing.T, dir string) map[string]int {
	t.Helper()
	v, err := audittest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*", "audit.log"))
	if len(files) == 0 {
		t.Fatalf("no audit logs under %s", dir)
	}
	seen := map[string]int{}
	for _, f := range files {
		counts, err := v.ValidateFile(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
		for k, n := range counts {
			seen[k] += n
		}
	}
	return seen
}
