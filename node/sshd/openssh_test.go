package sshd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// openSSH runs the real OpenSSH clients against a test server.
type openSSH struct {
	t    *testing.T
	e    *testEnv
	dir  string
	opts []string // -o options shared by ssh, scp and sftp
}

// newOpenSSH writes a key, its certificate (changed by mod, as in certFor)
// and a known_hosts file trusting the host CA.
func newOpenSSH(t *testing.T, e *testEnv, mod func(*ssh.Certificate) ssh.Signer) *openSSH {
	t.Helper()
	dir := t.TempDir()
	k := e.certFor("alice", mod)
	block, err := ssh.MarshalPrivateKey(k.priv, "alice")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "id_ed25519")
	certFile := keyFile + "-cert.pub"
	knownHosts := filepath.Join(dir, "known_hosts")
	write := func(path string, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, pem.EncodeToMemory(block))
	write(certFile, ssh.MarshalAuthorizedKey(k.cert))
	write(knownHosts, append([]byte("@cert-authority * "), ssh.MarshalAuthorizedKey(e.hostCA.PublicKey())...))
	_, port, err := net.SplitHostPort(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	var opts []string
	for _, o := range []string{
		"UserKnownHostsFile=" + knownHosts,
		"GlobalKnownHostsFile=/dev/null",
		"StrictHostKeyChecking=yes",
		"IdentityFile=" + keyFile,
		"CertificateFile=" + certFile,
		"IdentitiesOnly=yes",
		"BatchMode=yes",
		"PasswordAuthentication=no",
		"KbdInteractiveAuthentication=no",
		"ConnectTimeout=10",
		"User=" + e.login,
		"Port=" + port,
	} {
		opts = append(opts, "-o", o)
	}
	return &openSSH{t: t, e: e, dir: dir, opts: opts}
}

// run runs an OpenSSH client (ssh, scp, sftp) with the shared options
// before args, and returns its output and exit code.
func (o *openSSH) run(bin string, args ...string) (stdout, stderr string, code int) {
	o.t.Helper()
	path := filepath.Join("/usr/bin", bin)
	if _, err := os.Stat(path); err != nil {
		p, err := exec.LookPath(bin)
		if err != nil {
			o.t.Skipf("OpenSSH %s is not installed: %v", bin, err)
		}
		path = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append(append([]string{"-F", "/dev/null"}, o.opts...), args...)...)
	// No agent, no ~/.ssh: only the files written for this test.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SSH_AUTH_SOCK=") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+o.dir)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		o.t.Fatalf("run %s: %v", bin, err)
	}
	if ctx.Err() != nil {
		o.t.Fatalf("%s %q timed out; stderr: %s", bin, args, errOut.String())
	}
	return out.String(), errOut.String(), code
}

func TestOpenSSHExec(t *testing.T) {
	e := newTestEnv(t)
	o := newOpenSSH(t, e, nil)

	want, err := exec.Command("uname", "-a").Output()
	if err != nil {
		t.Fatalf("local uname: %v", err)
	}
	out, errOut, code := o.run("ssh", "127.0.0.1", "uname", "-a")
	if code != 0 || out != string(want) {
		t.Fatalf("ssh uname -a: exit %d, stdout %q, stderr %q; want %q", code, out, errOut, want)
	}

	_, errOut, code = o.run("ssh", "127.0.0.1", "echo to-stderr >&2; exit 5")
	if code != 5 || !strings.Contains(errOut, "to-stderr") {
		t.Errorf("ssh 'exit 5': exit %d, stderr %q; want 5 and to-stderr", code, errOut)
	}

	// -tt forces a PTY even though stdin is not a terminal.
	out, errOut, code = o.run("ssh", "-tt", "127.0.0.1", "tty; echo term=$TERM")
	if code != 0 || !strings.Contains(out, "/dev/pts/") {
		t.Errorf("ssh -tt tty: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestOpenSSHExpiredBanner(t *testing.T) {
	e := newTestEnv(t)
	o := newOpenSSH(t, e, func(c *ssh.Certificate) ssh.Signer {
		c.ValidAfter = uint64(time.Now().Add(-10 * time.Hour).Unix())
		c.ValidBefore = uint64(time.Now().Add(-3*time.Hour - time.Minute).Unix())
		return nil
	})
	_, errOut, code := o.run("ssh", "127.0.0.1", "true")
	if code != 255 {
		t.Errorf("ssh with an expired certificate: exit %d, want 255", code)
	}
	if want := "jumpgate: certificate expired 3h ago: run jg login"; !strings.Contains(errOut, want) {
		t.Errorf("stderr = %q, want %q", errOut, want)
	}
	// OpenSSH offers the certificate, then the plain key: the user sees
	// one message, not two.
	if n := strings.Count(errOut, "jumpgate:"); n != 1 {
		t.Errorf("stderr has %d jumpgate messages, want 1: %q", n, errOut)
	}
}

func TestOpenSSHSCP(t *testing.T) {
	e := newTestEnv(t)
	o := newOpenSSH(t, e, nil)
	dir := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)
	src := filepath.Join(dir, "src.bin")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// Default (SFTP protocol since OpenSSH 9.0) and legacy (-O: runs
	// "scp -t" over exec).
	for _, mode := range []struct{ name, flag string }{{"sftp", "-q"}, {"legacy", "-O"}} {
		t.Run(mode.name, func(t *testing.T) {
			remote := filepath.Join(dir, "remote-"+mode.name+".bin")
			back := filepath.Join(dir, "back-"+mode.name+".bin")
			if _, errOut, code := o.run("scp", mode.flag, src, "127.0.0.1:"+remote); code != 0 {
				t.Fatalf("scp upload: exit %d: %s", code, errOut)
			}
			if got, err := os.ReadFile(remote); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("uploaded file differs: %d bytes, %v", len(got), err)
			}
			if _, errOut, code := o.run("scp", mode.flag, "127.0.0.1:"+remote, back); code != 0 {
				t.Fatalf("scp download: exit %d: %s", code, errOut)
			}
			if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("downloaded file differs: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestOpenSSHSFTPBatch(t *testing.T) {
	e := newTestEnv(t)
	o := newOpenSSH(t, e, nil)
	dir := t.TempDir()
	data := make([]byte, 300<<10)
	rand.Read(data)
	src := filepath.Join(dir, "src.bin")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	remoteDir := filepath.Join(dir, "remote")
	remote := filepath.Join(remoteDir, "file.bin")
	back := filepath.Join(dir, "back.bin")
	batch := filepath.Join(dir, "batch")
	script := strings.Join([]string{
		"mkdir " + remoteDir,
		"put " + src + " " + remote,
		"ls -l " + remoteDir,
		"get " + remote + " " + back,
		"rename " + remote + " " + remote + ".old",
		"rm " + remote + ".old",
		"rmdir " + remoteDir,
	}, "\n") + "\n"
	if err := os.WriteFile(batch, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := o.run("sftp", "-b", batch, "127.0.0.1")
	if code != 0 {
		t.Fatalf("sftp -b: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "file.bin") {
		t.Errorf("ls output does not list file.bin: %s", out)
	}
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, data) {
		t.Errorf("file fetched with sftp differs: %d bytes, %v", len(got), err)
	}
	if _, err := os.Stat(remoteDir); !os.IsNotExist(err) {
		t.Errorf("remote directory still exists after rmdir: %v", err)
	}
}
