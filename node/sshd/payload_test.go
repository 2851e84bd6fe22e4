package sshd

import (
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestParsePtyReq(t *testing.T) {
	p, size, err := parsePtyReq(ssh.Marshal(ptyRequest{Term: "xterm-256color", Cols: 132, Rows: 50, Modes: "\x00"}))
	if err != nil || p.Term != "xterm-256color" || size != (winsize{Rows: 50, Cols: 132}) {
		t.Errorf("parsePtyReq = %+v, %+v, %v", p, size, err)
	}
	_, size, err = parsePtyReq(ssh.Marshal(ptyRequest{Term: "", Cols: 1 << 20, Rows: 70000}))
	if err != nil || size != (winsize{Rows: maxWinsize, Cols: maxWinsize}) {
		t.Errorf("huge size = %+v, %v; want clamped", size, err)
	}
	for _, term := range []string{"x\x00y", "a=b", strings.Repeat("x", 65), "x\n"} {
		if _, _, err := parsePtyReq(ssh.Marshal(ptyRequest{Term: term})); err == nil {
			t.Errorf("terminal %q accepted", term)
		}
	}
	if _, _, err := parsePtyReq([]byte{0, 0, 0, 9, 'x'}); err == nil {
		t.Errorf("truncated pty-req accepted")
	}
}

func TestParseEnv(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		ok          bool
	}{
		{"LANG", "C.UTF-8", true},
		{"LC_ALL", "C", true},
		{"LC_", "C", false},
		{"LC_x", "C", false},
		{"TERM", "xterm", true},
		{"LD_PRELOAD", "/x.so", false},
		{"PATH", "/tmp", false},
		{"BASH_ENV", "/tmp/x", false},
		{"LANG", "a\x00b", false},
		{"LANG", strings.Repeat("x", maxEnvValueLen+1), false},
	} {
		name, value, ok, err := parseEnv(ssh.Marshal(envRequest{Name: tc.name, Value: tc.value}))
		if err != nil || ok != tc.ok || (ok && (name != tc.name || value != tc.value)) {
			t.Errorf("parseEnv(%q=%.20q) = %q, %.20q, %v, %v; want ok=%v", tc.name, tc.value, name, value, ok, err, tc.ok)
		}
	}
	if _, _, _, err := parseEnv([]byte{1, 2, 3}); err == nil {
		t.Errorf("malformed env accepted")
	}
}

func TestParseExecAndSignal(t *testing.T) {
	if cmd, err := parseExec(ssh.Marshal(execRequest{Command: "echo hi"})); err != nil || cmd != "echo hi" {
		t.Errorf("parseExec = %q, %v", cmd, err)
	}
	if _, err := parseExec(ssh.Marshal(execRequest{Command: "echo\x00hi"})); err == nil {
		t.Errorf("command with NUL accepted")
	}
	if sig, err := parseSignal(ssh.Marshal(signalRequest{Name: "TERM"})); err != nil || sig != syscall.SIGTERM {
		t.Errorf("parseSignal TERM = %v, %v", sig, err)
	}
	if sig, err := parseSignal(ssh.Marshal(signalRequest{Name: "SIGINT"})); err != nil || sig != syscall.SIGINT {
		t.Errorf("parseSignal SIGINT = %v, %v", sig, err)
	}
	if _, err := parseSignal(ssh.Marshal(signalRequest{Name: "STOP"})); err == nil {
		t.Errorf("signal STOP accepted")
	}
	if signalName(syscall.SIGKILL) != "KILL" || signalName(syscall.SIGSTOP) != "" {
		t.Errorf("signalName wrong")
	}
}

func TestParseDirectTCPIP(t *testing.T) {
	d, err := parseDirectTCPIP(ssh.Marshal(directTCPIP{Host: "db.internal", Port: 5432, OrigHost: "127.0.0.1", OrigPort: 5555}))
	if err != nil || d.Host != "db.internal" || d.Port != 5432 {
		t.Errorf("parseDirectTCPIP = %+v, %v", d, err)
	}
	for _, bad := range []directTCPIP{{Host: "", Port: 1}, {Host: "h", Port: 0}, {Host: "h", Port: 70000}, {Host: "a b", Port: 1}, {Host: "h\x00", Port: 1}} {
		if _, err := parseDirectTCPIP(ssh.Marshal(bad)); err == nil {
			t.Errorf("direct-tcpip %+v accepted", bad)
		}
	}
}

// FuzzParseRequests feeds every payload parser the same bytes: none may
// panic, and what they accept must be within the limits the server relies
// on.
func FuzzParseRequests(f *testing.F) {
	for _, seed := range [][]byte{
		ssh.Marshal(ptyRequest{Term: "xterm", Cols: 80, Rows: 24, Modes: "\x35\x00\x00\x00\x01\x00"}),
		ssh.Marshal(windowChange{Cols: 132, Rows: 50}),
		ssh.Marshal(envRequest{Name: "LANG", Value: "C.UTF-8"}),
		ssh.Marshal(envRequest{Name: "LC_ALL", Value: "C"}),
		ssh.Marshal(execRequest{Command: "echo hello; exit 3"}),
		ssh.Marshal(subsystemRequest{Name: "sftp"}),
		ssh.Marshal(signalRequest{Name: "TERM"}),
		ssh.Marshal(directTCPIP{Host: "127.0.0.1", Port: 22, OrigHost: "::1", OrigPort: 4000}),
		{},
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 1},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, size, err := parsePtyReq(b); err == nil {
			if p.Term == "" || len(p.Term) > maxTermLen || !printable(p.Term) || strings.ContainsAny(p.Term, "= ") {
				t.Errorf("pty-req accepted terminal %q", p.Term)
			}
			if uint32(size.Rows) != min(p.Rows, maxWinsize) || uint32(size.Cols) != min(p.Cols, maxWinsize) {
				t.Errorf("pty-req size %+v from %d x %d", size, p.Rows, p.Cols)
			}
		}
		if size, err := parseWindowChange(b); err == nil {
			var w windowChange
			if ssh.Unmarshal(b, &w) != nil || uint32(size.Rows) != min(w.Rows, maxWinsize) {
				t.Errorf("window-change size %+v from %+v", size, w)
			}
		}
		if name, value, ok, err := parseEnv(b); err == nil && ok {
			if !allowedEnv(name) || len(value) > maxEnvValueLen || strings.IndexByte(value, 0) >= 0 {
				t.Errorf("env accepted %q=%q", name, value)
			}
		}
		if cmd, err := parseExec(b); err == nil {
			if len(cmd) > maxCommandLen || strings.IndexByte(cmd, 0) >= 0 {
				t.Errorf("exec accepted %q", cmd)
			}
		}
		parseSubsystem(b)
		if sig, err := parseSignal(b); err == nil && signalName(sig) == "" {
			t.Errorf("signal accepted %v, which has no RFC 4254 name", sig)
		}
		if d, err := parseDirectTCPIP(b); err == nil {
			if d.Host == "" || len(d.Host) > maxHostLen || d.Port == 0 || d.Port > 65535 || !printable(d.Host) {
				t.Errorf("direct-tcpip accepted %+v", d)
			}
		}
	})
}
