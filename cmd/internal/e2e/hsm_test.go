package e2e

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

const softhsmModule = "/usr/lib/softhsm/libsofthsm2.so"

// softhsmToken creates a SoftHSM2 token in a directory of its own and
// returns the environment that shows it to a process (SOFTHSM2_CONF) and
// its PIN file.
func softhsmToken(t *testing.T, dir, label string) (env []string, pinFile string) {
	t.Helper()
	for _, tool := range []string{"softhsm2-util", "pkcs11-tool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run make deps (it installs softhsm2 and opensc)", tool)
		}
	}
	if _, err := os.Stat(softhsmModule); err != nil {
		t.Fatalf("SoftHSM2's PKCS#11 module: %v: run make deps", err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
	env = []string{"SOFTHSM2_CONF=" + conf}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-secret-1", "--pin", "user-secret-1")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	pinFile = filepath.Join(dir, "hsm.pin")
	os.WriteFile(pinFile, []byte("user-secret-1\n"), 0o600)
	return env, pinFile
}

// TestHSM runs the auth server with its CA keys generated inside SoftHSM2:
// a full login and OpenSSH session work with certificates it signed, and
// the user certificate's signing key is the HSM's key, which the token
// refuses to export.
func TestHSM(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	hsmDir := t.TempDir()
	env, pinFile := softhsmToken(t, hsmDir, "jumpgate-e2e")
	c := newClusterWith(t, []string{"--keystore=pkcs11", "--hsm-module=" + softhsmModule, "--hsm-token-label=jumpgate-e2e", "--hsm-pin-file=" + pinFile}, env)
	alice := c.login("alice", "alice-password")

	// The user CA key is in the token, sensitive and never extractable.
	tool := func(args ...string) string {
		cmd := exec.Command("pkcs11-tool", append([]string{"--module", softhsmModule, "--token-label", "jumpgate-e2e", "--login", "--pin", "user-secret-1"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	objs := tool("--list-objects", "--type", "privkey")
	if !strings.Contains(objs, "jumpgate-user-ssh-ca") || !strings.Contains(objs, "never extractable") || !strings.Contains(objs, "sensitive") {
		t.Fatalf("the user CA's private key in the token:\n%s", objs)
	}
	der := filepath.Join(c.dir, "user-ca.der")
	tool("--read-object", "--type", "pubkey", "--label", "jumpgate-user-ssh-ca", "--output-file", der)
	b, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(b)
	if err != nil {
		t.Fatalf("HSM public key: %v", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	hsmFP := ssh.FingerprintSHA256(sshPub)

	// ssh-keygen -L names the HSM key as the certificate's signer.
	certFile := filepath.Join(strings.TrimPrefix(alice[0], "JUMPGATE_HOME="), "key-cert.pub")
	out, code := c.run("", nil, "/usr/bin/ssh-keygen", "-L", "-f", certFile)
	if code != 0 {
		t.Fatalf("ssh-keygen -L: %s", out)
	}
	if !strings.Contains(out, "Signing CA: ECDSA "+hsmFP) {
		t.Fatalf("ssh-keygen -L does not name the HSM key %s as the signer:\n%s", hsmFP, out)
	}
	t.Logf("alice's certificate, signed inside SoftHSM2:\n%s", out)
	// The node accepts it: jg and OpenSSH sessions.
	if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "hsm-signed"); code != 0 || !strings.Contains(out, "hsm-signed") {
		t.Fatalf("jg ssh: exit %d: %s", code, out)
	}
	testOpenSSH(t, c, alice)
}
