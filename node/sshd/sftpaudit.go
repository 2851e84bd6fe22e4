package sshd

import (
	"encoding/binary"
	"strings"
)

// SFTP auditing from the byte stream.
//
// SFTP may be served by a helper process running as the session's OS user,
// whose file operations the node cannot see, so the node audits what the
// client asks for instead: a copy of the client-to-server bytes goes
// through an sftpAuditor. SFTP version 3 (draft-ietf-secsh-filexfer-02,
// the version OpenSSH speaks) frames every packet as
//
//	uint32 length   (of what follows: type and body)
//	byte   type
//	uint32 request id   (every request but INIT)
//	...    the request's fields; a string is uint32 length + bytes
//
// The auditor decodes the requests that change or reveal the file tree by
// name (table below) and skips everything else, READ and WRITE above all,
// without copying it: a WRITE carries up to ~256 KiB of file data. It sees
// requests, not their results: a refused request is audited as well.

// SFTP packet types (draft-ietf-secsh-filexfer-02 section 3).
const (
	sftpInit     = 1
	sftpOpen     = 3
	sftpSetstat  = 9
	sftpOpendir  = 11
	sftpRemove   = 13
	sftpMkdir    = 14
	sftpRmdir    = 15
	sftpRename   = 18
	sftpSymlink  = 20
	sftpExtended = 200
)

// SFTP_FXP_OPEN pflags.
const (
	sftpFlagRead   = 0x01
	sftpFlagWrite  = 0x02
	sftpFlagAppend = 0x04
	sftpFlagCreat  = 0x08
	sftpFlagTrunc  = 0x10
	sftpFlagExcl   = 0x20
)

const (
	// sftpMaxAudited is the longest audited packet the auditor keeps
	// whole; of a longer one it keeps this much, and a path that does not
	// fit is "(path too long)".
	sftpMaxAudited = 64 << 10
	// sftpMaxPacket is the longest packet length taken as SFTP. OpenSSH's
	// sftp-server refuses packets over 256 KiB; a length over this means
	// the bytes are not SFTP, or the stream lost its framing.
	sftpMaxPacket = 16 << 20
	// sftpMaxPath is the most bytes of a path an event carries.
	sftpMaxPath = 4096
)

// sftpAudited are the packet types the auditor decodes; it also decodes
// EXTENDED, and then looks at the extension's name.
var sftpAudited = [256]string{
	sftpOpen:    "open",
	sftpSetstat: "setstat",
	sftpOpendir: "opendir",
	sftpRemove:  "remove",
	sftpMkdir:   "mkdir",
	sftpRmdir:   "rmdir",
	sftpRename:  "rename",
	sftpSymlink: "symlink",
}

// sftpExtensions are the audited EXTENDED requests: each sends one or two
// paths after its name.
var sftpExtensions = map[string]struct {
	op    string
	paths int
}{
	"posix-rename@openssh.com": {"rename", 2},
	"hardlink@openssh.com":     {"hardlink", 2},
	// lsetstat changes a symbolic link's own attributes: a setstat that
	// does not follow the link.
	"lsetstat@openssh.com": {"setstat", 1},
}

// sftpOp is one audited SFTP operation.
type sftpOp struct {
	Op    string // open, opendir, remove, rename, mkdir, rmdir, setstat, symlink, hardlink (posix-rename@openssh.com is a rename); "unparseable" once the stream is not SFTP
	Path  string
	Path2 string // rename and symlink/hardlink targets: the second path as sent
	Flags string // open only: "read,write,create,trunc,append,excl" subset, comma-joined in that order
}

// sftpAuditor is an io.Writer fed a copy of what the client sends; it calls
// emit for each operation. Write never fails and never blocks on anything
// but emit: auditing must not break the transfer. An operation is emitted
// once its whole packet has arrived. Not safe for concurrent use: one
// stream, one writer.
type sftpAuditor struct {
	emit func(sftpOp)

	hdr  [5]byte // the packet's length and type, as they arrive
	hdrN int     // bytes of hdr in; 5 inside a packet's body
	typ  byte    // the current packet's type
	left uint32  // bytes of the current packet's body still to come
	keep bool    // whether the body is audited (and kept in buf)
	long bool    // the packet is longer than sftpMaxAudited: buf has its start
	buf  []byte  // an audited body, or its start
	dead bool    // the stream is not SFTP: ignore the rest
}

// newSFTPAuditor returns an auditor that calls emit for each operation.
func newSFTPAuditor(emit func(sftpOp)) *sftpAuditor {
	return &sftpAuditor{emit: emit}
}

// Write parses p. It always returns len(p), nil.
func (a *sftpAuditor) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !a.dead {
		if a.hdrN < 4 {
			c := copy(a.hdr[a.hdrN:4], p)
			a.hdrN += c
			p = p[c:]
			if a.hdrN == 4 {
				a.checkLength()
			}
			continue
		}
		if a.hdrN == 4 {
			a.hdr[4] = p[0]
			a.hdrN = 5
			p = p[1:]
			a.begin()
			continue
		}
		c := uint32(min(uint64(a.left), uint64(len(p))))
		if a.keep {
			room := sftpMaxAudited - 1 - len(a.buf) // the type byte counts
			a.buf = append(a.buf, p[:min(int(c), room)]...)
		}
		a.left -= c
		p = p[c:]
		if a.left == 0 {
			a.end()
		}
	}
	return n, nil
}

// checkLength gives up on the stream once a packet's length is in, if it
// cannot be SFTP's.
func (a *sftpAuditor) checkLength() {
	if length := binary.BigEndian.Uint32(a.hdr[:4]); length == 0 || length > sftpMaxPacket {
		a.dead = true
		a.emit(sftpOp{Op: "unparseable"})
	}
}

// begin starts a packet once its length and type are in.
func (a *sftpAuditor) begin() {
	length := binary.BigEndian.Uint32(a.hdr[:4])
	a.typ = a.hdr[4]
	a.left = length - 1
	a.keep = a.typ == sftpExtended || sftpAudited[a.typ] != ""
	a.long = length > sftpMaxAudited
	a.buf = a.buf[:0]
	if a.left == 0 {
		a.end()
	}
}

// end finishes a packet: decodes it if audited, and readies for the next.
func (a *sftpAuditor) end() {
	a.hdrN = 0
	if !a.keep {
		return
	}
	if op, ok := decodeSFTPRequest(a.typ, a.buf, a.long); ok {
		a.emit(op)
	}
	if cap(a.buf) > 4096 {
		// One long path must not pin 64 KiB for the session's life.
		a.buf = nil
	}
}

// decodeSFTPRequest decodes an audited request's body (after the type
// byte); truncated says body is only the start of a longer packet. ok is
// false for an EXTENDED request that is not audited.
func decodeSFTPRequest(typ byte, body []byte, truncated bool) (op sftpOp, ok bool) {
	r := sftpReader{b: body, truncated: truncated}
	r.uint32() // request id
	paths := 1
	switch typ {
	case sftpRename, sftpSymlink:
		paths = 2
	case sftpExtended:
		name, ok := r.string()
		if !ok {
			return sftpOp{}, false
		}
		ext, ok := sftpExtensions[string(name)]
		if !ok {
			return sftpOp{}, false
		}
		op.Op, paths = ext.op, ext.paths
	}
	if op.Op == "" {
		op.Op = sftpAudited[typ]
	}
	op.Path = r.path()
	if paths == 2 {
		op.Path2 = r.path()
	}
	if typ == sftpOpen {
		if flags, ok := r.uint32(); ok {
			op.Flags = sftpOpenFlags(flags)
		}
	}
	return op, true
}

// sftpOpenFlags names pflags, in a fixed order.
func sftpOpenFlags(f uint32) string {
	names := [...]struct {
		bit  uint32
		name string
	}{
		{sftpFlagRead, "read"},
		{sftpFlagWrite, "write"},
		{sftpFlagCreat, "create"},
		{sftpFlagTrunc, "trunc"},
		{sftpFlagAppend, "append"},
		{sftpFlagExcl, "excl"},
	}
	var s []string
	for _, n := range names {
		if f&n.bit != 0 {
			s = append(s, n.name)
		}
	}
	return strings.Join(s, ",")
}

// sftpPath is a path for an event: valid UTF-8, at most sftpMaxPath bytes
// of what was sent.
func sftpPath(b []byte) string {
	if len(b) > sftpMaxPath {
		b = b[:sftpMaxPath]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// sftpReader reads SSH wire fields from a request's body.
type sftpReader struct {
	b         []byte
	truncated bool // b is the start of a longer body
}

func (r *sftpReader) uint32() (uint32, bool) {
	if len(r.b) < 4 {
		r.b = nil
		return 0, false
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v, true
}

func (r *sftpReader) string() ([]byte, bool) {
	n, ok := r.uint32()
	if !ok || uint64(n) > uint64(len(r.b)) {
		r.b = nil
		return nil, false
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s, true
}

// path reads a path. One that does not fit is "(path too long)" when the
// packet was too long to keep, "(malformed)" when the packet itself is
// short: the server refuses it, but it was sent.
func (r *sftpReader) path() string {
	truncated := r.truncated
	s, ok := r.string()
	switch {
	case ok:
		return sftpPath(s)
	case truncated:
		return "(path too long)"
	default:
		return "(malformed)"
	}
}
