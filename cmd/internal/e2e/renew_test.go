package e2e

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestRenewal has every process renew its certificates 3s after getting
// them (JUMPGATE_RENEW_AFTER, with a short jitter), as a CA rotation
// would make them do at each phase, and checks what a user and an
// operator would: node1's saved TLS certificate changes (new serial, new
// key) while its SSH host key stays; the auth server audits the renewal;
// a jg session opened before the renewal goes on after it; new jg
// sessions work; OpenSSH is shown the new host certificate; and node1,
// restarted, comes back with the renewed certificates from its data dir.
func TestRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := newClusterWith(t, nil, []string{"JUMPGATE_RENEW_AFTER=3s", "JUMPGATE_RENEW_JITTER=500ms"})
	alice := c.login("alice", "alice-password")
	dir := filepath.Join(c.dir, "node1", "node")
	read := func(name string) []byte {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return b
	}
	tlsSerial := func() string {
		blk, _ := pem.Decode(read("tls.crt"))
		if blk == nil {
			return ""
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return ""
		}
		return cert.SerialNumber.String()
	}
	hostSerial := func() string {
		k, _, _, _, err := ssh.ParseAuthorizedKey(read("key-cert.pub"))
		if err != nil {
			return ""
		}
		return fmt.Sprint(k.(*ssh.Certificate).Serial)
	}

	// A session that echoes what it is sent, opened before the renewal.
	sess := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node1", "--", `echo started; while read l; do echo "echo:$l"; done`)
	sess.Env = append(os.Environ(), alice...)
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Process.Kill(); sess.Wait() })
	lines := bufio.NewReader(stdout)
	if line, _ := lines.ReadString('\n'); !strings.Contains(line, "started") {
		t.Fatalf("session did not start: %q %s", line, stderr.String())
	}

	tls0, host0, tlsKey0, hostKey0 := tlsSerial(), hostSerial(), read("tls.key"), read("key.pub")
	if tls0 == "" || host0 == "" {
		t.Fatalf("node1's data dir holds no certificates: tls %q host %q", tls0, host0)
	}
	waitFor(t, "node1 to save renewed certificates", 15*time.Second, func() bool {
		return tlsSerial() != tls0 && tlsSerial() != "" && hostSerial() != host0 && hostSerial() != ""
	})
	if bytes.Equal(read("tls.key"), tlsKey0) {
		t.Error("the renewed TLS certificate is for the old TLS key: each renewal should bring a new key")
	}
	if !bytes.Equal(read("key.pub"), hostKey0) {
		t.Error("the node's SSH host key changed with the renewal: it must stay what the inventory holds")
	}

	out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "renewed")
	if code != 0 || !strings.Contains(out, "renewed") {
		t.Fatalf("jg ssh after the renewal: exit %d: %s", code, out)
	}

	// OpenSSH is shown the certificate node1 saved last (renewals go on
	// every few seconds, so allow a retry for one that lands in between).
	if _, err := exec.LookPath("ssh"); err == nil {
		cfgOut, code := c.run("", alice, "jg", "config")
		if code != 0 {
			t.Fatalf("jg config: %s", cfgOut)
		}
		sshCfg := filepath.Join(c.dir, "ssh_config")
		os.WriteFile(sshCfg, []byte(cfgOut+"    BatchMode yes\n    LogLevel ERROR\n"), 0o600)
		re := regexp.MustCompile(`Server host certificate: \S+ \S+ serial (\d+)`)
		var presented, saved string
		waitFor(t, "OpenSSH to be shown node1's renewed host certificate", 15*time.Second, func() bool {
			saved = hostSerial()
			out, code := c.run("", alice, "/usr/bin/ssh", "-v", "-F", sshCfg, "node1", "true")
			m := re.FindStringSubmatch(out)
			if code != 0 || m == nil {
				t.Logf("ssh -v node1: exit %d: %s", code, tail([]byte(out), 1000))
				return false
			}
			presented = m[1]
			return presented == saved && presented != host0
		})
	} else {
		t.Log("OpenSSH client not installed: the presented host certificate is not checked")
	}

	// The session opened before the renewal still works.
	fmt.Fprintln(stdin, "after-renewal")
	got := make(chan string, 1)
	go func() { l, _ := lines.ReadString('\n'); got <- l }()
	select {
	case l := <-got:
		if strings.TrimSpace(l) != "echo:after-renewal" {
			t.Fatalf("session after the renewal answered %q (stderr %s)", l, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the session opened before the renewal did not answer after it (stderr %s)", stderr.String())
	}
	stdin.Close()
	io.Copy(io.Discard, stdout)
	if err := sess.Wait(); err != nil {
		t.Errorf("session opened before the renewal ended with %v: %s", err, stderr.String())
	}

	// Logs and audit say what happened.
	if b, _ := os.ReadFile(filepath.Join(c.dir, "node1.log")); !bytes.Contains(b, []byte(`msg="certificate renewed" component=renew kind=node`)) {
		t.Errorf("node1's log does not report a renewal:\n%s", tail(b, 2000))
	}
	if b, _ := os.ReadFile(filepath.Join(c.dir, "auth.log")); !bytes.Contains(b, []byte(`msg="certificate renewed" component=renew kind=proxy`)) {
		t.Errorf("the proxy beside the auth server does not report renewing its own certificate:\n%s", tail(b, 2000))
	}
	if b, _ := os.ReadFile(filepath.Join(c.dir, "auth", "audit.log")); !regexp.MustCompile(`"type":"cert.issued"[^\n]*"node":"node1"[^\n]*"command":"renewed"`).Match(b) {
		t.Errorf("the auth audit log has no renewal for node1:\n%s", tail(b, 2000))
	}

	// Restarted, node1 serves with what it saved.
	n1 := c.procs["node1"]
	n1.Process.Signal(syscall.SIGTERM)
	n1.Wait()
	c.start("node1-restarted", "--roles=node", "--node-name=node1", "--labels=env=dev", "--data-dir="+filepath.Join(c.dir, "node1"), "--proxy="+c.proxy)
	waitFor(t, "node1 back with its renewed certificates", 20*time.Second, func() bool {
		out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "after-restart")
		return code == 0 && strings.Contains(out, "after-restart")
	})
}
