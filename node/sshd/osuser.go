package sshd

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// passwdFile is where login shells are looked up; os/user does not expose
// them.
const passwdFile = "/etc/passwd"

// Default PATHs, as Debian's /etc/profile sets them.
const (
	rootPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	userPath = "/usr/local/bin:/usr/bin:/bin:/usr/games"
)

// osLogin is the OS account a session runs as.
type osLogin struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32
	Home   string // working directory: the home directory, or "/" if it does not exist
	Shell  string // login shell from /etc/passwd, or /bin/sh
	Switch bool   // the node must change uid and gid to run as this login
}

// selfUser is the OS user the node runs as.
type selfUser struct {
	Name string
	UID  int
}

func currentUser() (selfUser, error) {
	u, err := user.Current()
	if err != nil {
		return selfUser{}, fmt.Errorf("look up the user this node runs as: %w", err)
	}
	return selfUser{Name: u.Username, UID: os.Geteuid()}, nil
}

// loginError is a login the node cannot run sessions as. Users see Error().
type loginError struct{ msg string }

func (e *loginError) Error() string { return e.msg }

// lookupLogin resolves login to an OS account, applying the user switching
// rules: a node running as root may run sessions as any existing user; any
// other node only as the user it runs as.
func lookupLogin(self selfUser, node, login string) (osLogin, error) {
	if self.UID != 0 && login != self.Name {
		return osLogin{}, &loginError{fmt.Sprintf("node %s runs as user %s and cannot log in as %q: run the node as root or log in as %s", node, self.Name, login, self.Name)}
	}
	u, err := user.Lookup(login)
	if err != nil {
		return osLogin{}, &loginError{fmt.Sprintf("login %q does not exist on node %s: ask an administrator to create it, or log in as another user", login, node)}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return osLogin{}, &loginError{fmt.Sprintf("login %q on node %s has a non-numeric uid or gid: ask an administrator to check /etc/passwd", login, node)}
	}
	l := osLogin{
		Name:   u.Username,
		UID:    uint32(uid),
		GID:    uint32(gid),
		Home:   u.HomeDir,
		Shell:  loginShell(u.Username),
		Switch: int(uid) != self.UID,
	}
	if fi, err := os.Stat(l.Home); err != nil || !fi.IsDir() {
		l.Home = "/"
	}
	if l.Switch {
		gids, err := u.GroupIds()
		if err != nil {
			gids = []string{u.Gid}
		}
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				l.Groups = append(l.Groups, uint32(n))
			}
		}
	}
	return l, nil
}

// credential is what the child process runs as; nil when no switch is
// needed (setting it anyway would fail for a non-root node, which may not
// call setgroups).
func (l osLogin) credential() *syscall.Credential {
	if !l.Switch {
		return nil
	}
	return &syscall.Credential{Uid: l.UID, Gid: l.GID, Groups: l.Groups}
}

// environ is the base environment of a session.
func (l osLogin) environ() []string {
	path := userPath
	if l.UID == 0 {
		path = rootPath
	}
	return []string{
		"HOME=" + l.Home,
		"USER=" + l.Name,
		"LOGNAME=" + l.Name,
		"SHELL=" + l.Shell,
		"PATH=" + path,
	}
}

// loginShell returns the shell of name in /etc/passwd, or /bin/sh.
func loginShell(name string) string {
	f, err := os.Open(passwdFile)
	if err != nil {
		return "/bin/sh"
	}
	defer f.Close()
	if sh, ok := parsePasswdShell(f, name); ok {
		return sh
	}
	return "/bin/sh"
}

// parsePasswdShell finds the shell field of name in a passwd(5) file. Only
// absolute paths count.
func parsePasswdShell(r io.Reader, name string) (string, bool) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 7 || f[0] != name {
			continue
		}
		if sh := f[6]; filepath.IsAbs(sh) {
			return sh, true
		}
		return "", false
	}
	return "", false
}
