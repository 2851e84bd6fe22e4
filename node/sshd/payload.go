package sshd

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// This file holds the parsers for the request and channel payloads of RFC
// 4254 that the server reads itself. Every parser takes the raw payload from
// the client, never panics, and returns a value that is safe to use: strings
// are bounded and free of NUL bytes, numbers are in range.

// Limits on what a client may send.
const (
	maxTermLen     = 64        // TERM value in pty-req
	maxEnvNameLen  = 64        // env variable name
	maxEnvValueLen = 4096      // env variable value
	maxEnvVars     = 64        // env requests honoured per session
	maxCommandLen  = 128 << 10 // exec command; Linux refuses longer arguments (MAX_ARG_STRLEN)
	maxHostLen     = 255       // direct-tcpip host (DNS name limit)
	maxWinsize     = 1<<16 - 1 // rows and columns are uint16 in the kernel
)

// ptyRequest is the payload of "pty-req" (RFC 4254 section 6.2).
type ptyRequest struct {
	Term     string
	Cols     uint32
	Rows     uint32
	WidthPx  uint32
	HeightPx uint32
	Modes    string // encoded terminal modes; not applied
}

// windowChange is the payload of "window-change" (RFC 4254 section 6.7).
type windowChange struct {
	Cols     uint32
	Rows     uint32
	WidthPx  uint32
	HeightPx uint32
}

// envRequest is the payload of "env" (RFC 4254 section 6.4).
type envRequest struct {
	Name  string
	Value string
}

// execRequest is the payload of "exec" (RFC 4254 section 6.5).
type execRequest struct {
	Command string
}

// subsystemRequest is the payload of "subsystem" (RFC 4254 section 6.5).
type subsystemRequest struct {
	Name string
}

// signalRequest is the payload of "signal" (RFC 4254 section 6.9).
type signalRequest struct {
	Name string
}

// directTCPIP is the extra data of a "direct-tcpip" channel open (RFC 4254
// section 7.2).
type directTCPIP struct {
	Host     string
	Port     uint32
	OrigHost string
	OrigPort uint32
}

// exitStatus and exitSignal are the requests the server sends when the
// program ends (RFC 4254 section 6.10).
type exitStatus struct {
	Status uint32
}

type exitSignal struct {
	Signal     string
	CoreDumped bool
	Error      string
	Lang       string
}

// winsize is a terminal size clamped to what the kernel can hold.
type winsize struct {
	Rows, Cols uint16
}

func clampWinsize(rows, cols uint32) winsize {
	return winsize{Rows: uint16(min(rows, maxWinsize)), Cols: uint16(min(cols, maxWinsize))}
}

// parsePtyReq parses a pty-req payload. The terminal name must be printable
// ASCII; an empty one becomes "xterm".
func parsePtyReq(payload []byte) (ptyRequest, winsize, error) {
	var p ptyRequest
	if err := ssh.Unmarshal(payload, &p); err != nil {
		return ptyRequest{}, winsize{}, fmt.Errorf("parse pty-req: %w", err)
	}
	if p.Term == "" {
		p.Term = "xterm"
	}
	if len(p.Term) > maxTermLen || !printable(p.Term) || strings.ContainsAny(p.Term, "= ") {
		return ptyRequest{}, winsize{}, fmt.Errorf("parse pty-req: terminal name %.20q is not valid", p.Term)
	}
	return p, clampWinsize(p.Rows, p.Cols), nil
}

// parseWindowChange parses a window-change payload.
func parseWindowChange(payload []byte) (winsize, error) {
	var w windowChange
	if err := ssh.Unmarshal(payload, &w); err != nil {
		return winsize{}, fmt.Errorf("parse window-change: %w", err)
	}
	return clampWinsize(w.Rows, w.Cols), nil
}

// parseEnv parses an env payload. ok is false for variables the server does
// not pass on (see allowedEnv); err is set only for malformed payloads.
func parseEnv(payload []byte) (name, value string, ok bool, err error) {
	var e envRequest
	if err := ssh.Unmarshal(payload, &e); err != nil {
		return "", "", false, fmt.Errorf("parse env: %w", err)
	}
	if len(e.Name) > maxEnvNameLen || len(e.Value) > maxEnvValueLen || strings.IndexByte(e.Value, 0) >= 0 {
		return "", "", false, nil
	}
	if !allowedEnv(e.Name) {
		return "", "", false, nil
	}
	return e.Name, e.Value, true, nil
}

// allowedEnv is the allow-list of variables a client may set, as OpenSSH's
// default AcceptEnv on Debian: locale, terminal and time zone. Anything that
// changes how programs load (LD_*, PATH, BASH_ENV) is never accepted.
func allowedEnv(name string) bool {
	switch name {
	case "LANG", "LANGUAGE", "TERM", "COLORTERM", "TZ":
		return true
	}
	if rest, ok := strings.CutPrefix(name, "LC_"); ok && rest != "" {
		for _, c := range rest {
			if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				return false
			}
		}
		return true
	}
	return false
}

// parseExec parses an exec payload.
func parseExec(payload []byte) (string, error) {
	var e execRequest
	if err := ssh.Unmarshal(payload, &e); err != nil {
		return "", fmt.Errorf("parse exec: %w", err)
	}
	if len(e.Command) > maxCommandLen {
		return "", fmt.Errorf("parse exec: command is %d bytes, the limit is %d", len(e.Command), maxCommandLen)
	}
	if strings.IndexByte(e.Command, 0) >= 0 {
		return "", errors.New("parse exec: command contains a NUL byte")
	}
	return e.Command, nil
}

// parseSubsystem parses a subsystem payload.
func parseSubsystem(payload []byte) (string, error) {
	var s subsystemRequest
	if err := ssh.Unmarshal(payload, &s); err != nil {
		return "", fmt.Errorf("parse subsystem: %w", err)
	}
	return s.Name, nil
}

// rfcSignals lists the signals of RFC 4254 section 6.10 with their names
// (without "SIG"). A function, not a package variable: no mutable globals.
func rfcSignals() []struct {
	name string
	sig  syscall.Signal
} {
	return []struct {
		name string
		sig  syscall.Signal
	}{
		{"ABRT", syscall.SIGABRT}, {"ALRM", syscall.SIGALRM}, {"FPE", syscall.SIGFPE},
		{"HUP", syscall.SIGHUP}, {"ILL", syscall.SIGILL}, {"INT", syscall.SIGINT},
		{"KILL", syscall.SIGKILL}, {"PIPE", syscall.SIGPIPE}, {"QUIT", syscall.SIGQUIT},
		{"SEGV", syscall.SIGSEGV}, {"TERM", syscall.SIGTERM}, {"USR1", syscall.SIGUSR1},
		{"USR2", syscall.SIGUSR2},
	}
}

// parseSignal parses a signal payload into a signal the server delivers.
func parseSignal(payload []byte) (syscall.Signal, error) {
	var s signalRequest
	if err := ssh.Unmarshal(payload, &s); err != nil {
		return 0, fmt.Errorf("parse signal: %w", err)
	}
	name := strings.TrimPrefix(s.Name, "SIG")
	for _, rs := range rfcSignals() {
		if rs.name == name {
			return rs.sig, nil
		}
	}
	return 0, fmt.Errorf("parse signal: unknown signal %.20q", s.Name)
}

// signalName is the RFC 4254 name of sig, or "" if it has none; exit-signal
// falls back to exit-status for those.
func signalName(sig syscall.Signal) string {
	for _, rs := range rfcSignals() {
		if rs.sig == sig {
			return rs.name
		}
	}
	return ""
}

// parseDirectTCPIP parses the extra data of a direct-tcpip channel open.
func parseDirectTCPIP(data []byte) (directTCPIP, error) {
	var d directTCPIP
	if err := ssh.Unmarshal(data, &d); err != nil {
		return directTCPIP{}, fmt.Errorf("parse direct-tcpip: %w", err)
	}
	if d.Host == "" || len(d.Host) > maxHostLen || !printable(d.Host) || strings.ContainsAny(d.Host, " /") {
		return directTCPIP{}, fmt.Errorf("parse direct-tcpip: host %.40q is not a host name or address", d.Host)
	}
	if d.Port == 0 || d.Port > 65535 {
		return directTCPIP{}, fmt.Errorf("parse direct-tcpip: port %d is out of range", d.Port)
	}
	return d, nil
}

// printable reports whether s is printable ASCII.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
