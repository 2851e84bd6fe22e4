package sshd

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// clientAs connects as alice with a certificate for login.
func (e *testEnv) clientAs(login string) *ssh.Client {
	e.t.Helper()
	k := e.certFor("alice", func(c *ssh.Certificate) ssh.Signer {
		c.ValidPrincipals = []string{login}
		return nil
	})
	c, banner, err := e.dial(k.signer, login)
	if err != nil {
		e.t.Fatalf("dial as %s: %v (banner %q)", login, err, banner)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// otherLoginWithShell finds a non-root user with a usable shell and home.
func otherLoginWithShell(t *testing.T) *user.User {
	t.Helper()
	b, err := os.ReadFile(passwdFile)
	if err != nil {
		t.Skipf("read %s: %v", passwdFile, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) != 7 || f[2] == "0" {
			continue
		}
		switch filepath.Base(f[6]) {
		case "bash", "sh", "dash", "zsh":
		default:
			continue
		}
		if _, err := os.Stat(f[6]); err != nil {
			continue
		}
		u, err := user.Lookup(f[0])
		if err != nil {
			continue
		}
		return u
	}
	t.Skip("no non-root user with a shell in /etc/passwd")
	return nil
}

func TestUserSwitchExec(t *testing.T) {
	e := newTestEnv(t)
	if e.srv.self.UID != 0 {
		t.Skip("user switching needs the node to run as root")
	}
	u := otherLoginWithShell(t)
	c := e.clientAs(u.Username)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.Output(`echo "$(id -u):$(id -g):$(id -un):$USER:$PWD"`)
	if err != nil {
		t.Fatalf("exec as %s: %v", u.Username, err)
	}
	wd := u.HomeDir
	if fi, err := os.Stat(wd); err != nil || !fi.IsDir() {
		wd = "/"
	}
	want := u.Uid + ":" + u.Gid + ":" + u.Username + ":" + u.Username + ":" + wd
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("exec as %s ran as %q, want %q", u.Username, got, want)
	}
}

// SFTP as another user runs in a helper process as that user: it must not
// be able to write where only root can.
func TestUserSwitchSFTP(t *testing.T) {
	e := newTestEnv(t)
	if e.srv.self.UID != 0 {
		t.Skip("user switching needs the node to run as root")
	}
	if _, err := e.srv.sftpHelper("nobody"); err != nil {
		t.Skipf("no SFTP helper on this machine: %v", err)
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip("no user nobody")
	}
	dir := t.TempDir() // 0700, owned by root
	c := e.clientAs("nobody")
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatalf("sftp as nobody: %v", err)
	}
	defer sc.Close()
	_, err = sc.Create(filepath.Join(dir, "x"))
	if !errors.Is(err, os.ErrPermission) {
		t.Errorf("create in root's directory as nobody: %v, want permission denied", err)
	}
	if _, err := sc.Stat("/etc/passwd"); err != nil {
		t.Errorf("stat /etc/passwd as nobody: %v", err)
	}
}

func TestSFTPHelper(t *testing.T) {
	e := startTestEnv(t)
	e.srv.sftpSearch = []string{filepath.Join(t.TempDir(), "sftp-server")}
	_, err := e.srv.sftpHelper("bob")
	if want := "node node1 has no SFTP helper to serve files as bob: install OpenSSH's sftp-server"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("no helper: %v, want %q", err, want)
	}
	helper := filepath.Join(t.TempDir(), "sftp-server")
	if err := os.WriteFile(helper, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	e.srv.sftpSearch = append(e.srv.sftpSearch, helper)
	if got, err := e.srv.sftpHelper("bob"); err != nil || len(got) != 1 || got[0] != helper {
		t.Errorf("found helper = %q, %v; want %s", got, err, helper)
	}
	e.srv.cfg.SFTPHelper = []string{"/opt/jumpgate", "sftp-server"}
	if got, err := e.srv.sftpHelper("bob"); err != nil || strings.Join(got, " ") != "/opt/jumpgate sftp-server" {
		t.Errorf("configured helper = %q, %v", got, err)
	}
}

func TestLookupLogin(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// A non-root node logs in only as itself.
	_, err = lookupLogin(selfUser{Name: "svc", UID: 999}, "n1", "root")
	var le *loginError
	if !errors.As(err, &le) || le.Error() != `node n1 runs as user svc and cannot log in as "root": run the node as root or log in as svc` {
		t.Errorf("lookupLogin as another user on a non-root node: %v", err)
	}
	// Logging in as the node's own user needs no switch.
	self := selfUser{Name: me.Username, UID: os.Geteuid()}
	l, err := lookupLogin(self, "n1", me.Username)
	if err != nil {
		t.Fatalf("lookupLogin self: %v", err)
	}
	if l.Switch || l.credential() != nil || l.Shell == "" {
		t.Errorf("self login = %+v, want no switch and a shell", l)
	}
	// A root node switches to other users, with their groups.
	if _, err := user.Lookup("nobody"); err == nil {
		l, err := lookupLogin(selfUser{Name: "root", UID: 0}, "n1", "nobody")
		if err != nil {
			t.Fatalf("lookupLogin nobody: %v", err)
		}
		cred := l.credential()
		if !l.Switch || cred == nil || cred.Uid == 0 || cred.Uid != l.UID || cred.Gid != l.GID || len(cred.Groups) == 0 {
			t.Errorf("nobody login = %+v, credential %+v", l, cred)
		}
		for _, kv := range l.environ() {
			if strings.HasPrefix(kv, "PATH=") && strings.Contains(kv, "sbin") {
				t.Errorf("non-root PATH has sbin: %s", kv)
			}
		}
	}
	_, err = lookupLogin(selfUser{Name: "root", UID: 0}, "n1", "jg-no-such-user-x")
	if err == nil || !strings.Contains(err.Error(), "does not exist on node n1") {
		t.Errorf("unknown login: %v", err)
	}
}

func TestParsePasswdShell(t *testing.T) {
	const passwd = `# comment
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken:x:2:2
relative:x:3:3::/home/r:bash
empty:x:4:4::/home/e:
`
	for name, want := range map[string]string{"root": "/bin/bash", "daemon": "/usr/sbin/nologin", "broken": "", "relative": "", "empty": "", "missing": ""} {
		got, ok := parsePasswdShell(strings.NewReader(passwd), name)
		if got != want || ok != (want != "") {
			t.Errorf("shell of %s = %q, %v; want %q", name, got, ok, want)
		}
	}
}
