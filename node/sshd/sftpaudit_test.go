package sshd

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/pkg/sftp"
)

// sftpPacket encodes an SFTP packet: fields are uint32, string (an SSH
// string) or []byte (raw bytes, for attrs and file data).
func sftpPacket(typ byte, fields ...any) []byte {
	body := []byte{typ}
	for _, f := range fields {
		switch v := f.(type) {
		case uint32:
			body = binary.BigEndian.AppendUint32(body, v)
		case string:
			body = binary.BigEndian.AppendUint32(body, uint32(len(v)))
			body = append(body, v...)
		case []byte:
			body = append(body, v...)
		default:
			panic("sftpPacket: unknown field type")
		}
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// More packet types, for what the auditor skips.
const (
	sftpClose   = 4
	sftpRead    = 5
	sftpWrite   = 6
	sftpLstat   = 7
	sftpReaddir = 12
	sftpStat    = 17
)

var noAttrs = []byte{0, 0, 0, 0} // attrs with no flags

func sftpInitPacket() []byte { return sftpPacket(sftpInit, uint32(3)) }

// auditSFTP feeds chunks to a new auditor and returns what it emitted.
func auditSFTP(chunks ...[]byte) []sftpOp {
	var ops []sftpOp
	a := newSFTPAuditor(func(op sftpOp) { ops = append(ops, op) })
	for _, c := range chunks {
		if n, err := a.Write(c); n != len(c) || err != nil {
			panic("sftpAuditor.Write did not take everything")
		}
	}
	return ops
}

// byteByByte splits b into one-byte chunks.
func byteByByte(b []byte) [][]byte {
	var out [][]byte
	for i := range b {
		out = append(out, b[i:i+1])
	}
	return out
}

func TestSFTPAuditorOps(t *testing.T) {
	long := strings.Repeat("p", 5000)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want []sftpOp // nil: nothing
	}{
		{"init", sftpInitPacket(), nil},
		{"open read", sftpPacket(sftpOpen, uint32(1), "/etc/passwd", uint32(sftpFlagRead), noAttrs), []sftpOp{{Op: "open", Path: "/etc/passwd", Flags: "read"}}},
		{"open create", sftpPacket(sftpOpen, uint32(2), "up.bin", uint32(sftpFlagWrite|sftpFlagCreat|sftpFlagTrunc), noAttrs), []sftpOp{{Op: "open", Path: "up.bin", Flags: "write,create,trunc"}}},
		{"open every flag", sftpPacket(sftpOpen, uint32(2), "f", uint32(0x3f|0x100), noAttrs), []sftpOp{{Op: "open", Path: "f", Flags: "read,write,create,trunc,append,excl"}}},
		{"open no flags", sftpPacket(sftpOpen, uint32(2), "f", uint32(0), noAttrs), []sftpOp{{Op: "open", Path: "f"}}},
		{"opendir", sftpPacket(sftpOpendir, uint32(3), "/var/log"), []sftpOp{{Op: "opendir", Path: "/var/log"}}},
		{"remove", sftpPacket(sftpRemove, uint32(4), "old.txt"), []sftpOp{{Op: "remove", Path: "old.txt"}}},
		{"mkdir", sftpPacket(sftpMkdir, uint32(5), "new", noAttrs), []sftpOp{{Op: "mkdir", Path: "new"}}},
		{"rmdir", sftpPacket(sftpRmdir, uint32(6), "new"), []sftpOp{{Op: "rmdir", Path: "new"}}},
		{"setstat", sftpPacket(sftpSetstat, uint32(7), "f", []byte{0, 0, 0, 4, 0, 0, 1, 0xed}), []sftpOp{{Op: "setstat", Path: "f"}}},
		{"rename", sftpPacket(sftpRename, uint32(8), "a", "b"), []sftpOp{{Op: "rename", Path: "a", Path2: "b"}}},
		{"symlink", sftpPacket(sftpSymlink, uint32(9), "target", "link"), []sftpOp{{Op: "symlink", Path: "target", Path2: "link"}}},
		{"posix-rename", sftpPacket(sftpExtended, uint32(10), "posix-rename@openssh.com", "a", "b"), []sftpOp{{Op: "rename", Path: "a", Path2: "b"}}},
		{"hardlink", sftpPacket(sftpExtended, uint32(11), "hardlink@openssh.com", "a", "b"), []sftpOp{{Op: "hardlink", Path: "a", Path2: "b"}}},
		{"lsetstat", sftpPacket(sftpExtended, uint32(12), "lsetstat@openssh.com", "l", noAttrs), []sftpOp{{Op: "setstat", Path: "l"}}},
		{"other extension", sftpPacket(sftpExtended, uint32(13), "statvfs@openssh.com", "/"), nil},
		{"stat", sftpPacket(sftpStat, uint32(14), "/etc/shadow"), nil},
		{"lstat", sftpPacket(sftpLstat, uint32(14), "/etc/shadow"), nil},
		{"read", sftpPacket(sftpRead, uint32(15), "h", uint64Bytes(0), uint32(32768)), nil},
		{"write", sftpPacket(sftpWrite, uint32(16), "h", uint64Bytes(0), "data"), nil},
		{"close", sftpPacket(sftpClose, uint32(17), "h"), nil},
		{"readdir", sftpPacket(sftpReaddir, uint32(18), "h"), nil},
		{"invalid UTF-8", sftpPacket(sftpRemove, uint32(19), "caf\xe9"), []sftpOp{{Op: "remove", Path: "caf\uFFFD"}}},
		{"long path", sftpPacket(sftpRemove, uint32(20), long), []sftpOp{{Op: "remove", Path: long[:sftpMaxPath]}}},
		{"malformed", sftpPacket(sftpRemove, uint32(21), []byte{0, 0, 0, 9, 'x'}), []sftpOp{{Op: "remove", Path: "(malformed)"}}},
		{"no id", sftpPacket(sftpMkdir), []sftpOp{{Op: "mkdir", Path: "(malformed)"}}},
		{"rename without newpath", sftpPacket(sftpRename, uint32(22), "a"), []sftpOp{{Op: "rename", Path: "a", Path2: "(malformed)"}}},
		{"malformed extension", sftpPacket(sftpExtended, uint32(23), []byte{0, 0, 1, 0}), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := auditSFTP(tc.pkt); !slices.Equal(got, tc.want) {
				t.Errorf("whole: got %+v, want %+v", got, tc.want)
			}
			if got := auditSFTP(byteByByte(tc.pkt)...); !slices.Equal(got, tc.want) {
				t.Errorf("byte by byte: got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func uint64Bytes(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// sftpSession is a short session as a client sends it: ops and file data.
func sftpSession() (stream []byte, want []sftpOp) {
	var b bytes.Buffer
	b.Write(sftpInitPacket())
	b.Write(sftpPacket(sftpOpen, uint32(1), "up.bin", uint32(sftpFlagWrite|sftpFlagCreat|sftpFlagTrunc), noAttrs))
	b.Write(sftpPacket(sftpWrite, uint32(2), "h1", uint64Bytes(0), strings.Repeat("\x00\x00\x00\x07", 1000)))
	b.Write(sftpPacket(sftpClose, uint32(3), "h1"))
	b.Write(sftpPacket(sftpRename, uint32(4), "up.bin", "final.bin"))
	b.Write(sftpPacket(sftpStat, uint32(5), "final.bin"))
	b.Write(sftpPacket(sftpExtended, uint32(6), "hardlink@openssh.com", "final.bin", "copy.bin"))
	b.Write(sftpPacket(sftpRemove, uint32(7), "copy.bin"))
	return b.Bytes(), []sftpOp{
		{Op: "open", Path: "up.bin", Flags: "write,create,trunc"},
		{Op: "rename", Path: "up.bin", Path2: "final.bin"},
		{Op: "hardlink", Path: "final.bin", Path2: "copy.bin"},
		{Op: "remove", Path: "copy.bin"},
	}
}

func TestSFTPAuditorAnySplit(t *testing.T) {
	stream, want := sftpSession()
	if got := auditSFTP(stream); !slices.Equal(got, want) {
		t.Fatalf("whole: got %+v, want %+v", got, want)
	}
	if got := auditSFTP(byteByByte(stream)...); !slices.Equal(got, want) {
		t.Errorf("byte by byte: got %+v, want %+v", got, want)
	}
	for cut := range len(stream) + 1 {
		if got := auditSFTP(stream[:cut], stream[cut:]); !slices.Equal(got, want) {
			t.Fatalf("split at %d: got %+v, want %+v", cut, got, want)
		}
	}
}

// A WRITE's data is skipped, not copied: feeding 1 MiB of it allocates
// nothing and leaves the buffer as small as it was.
func TestSFTPAuditorSkipsWriteData(t *testing.T) {
	var ops []sftpOp
	a := newSFTPAuditor(func(op sftpOp) { ops = append(ops, op) })
	a.Write(sftpPacket(sftpOpen, uint32(1), "big.bin", uint32(sftpFlagWrite|sftpFlagCreat), noAttrs))
	bufCap := cap(a.buf)

	write := sftpPacket(sftpWrite, uint32(2), "h1", uint64Bytes(0), strings.Repeat("x", 1<<20))
	allocs := testing.AllocsPerRun(20, func() {
		// In 32 KiB pieces, as the channel delivers them.
		for p := write; len(p) > 0; {
			n := min(len(p), 32<<10)
			a.Write(p[:n])
			p = p[n:]
		}
	})
	if allocs != 0 {
		t.Errorf("feeding a 1 MiB WRITE allocates %v times, want 0", allocs)
	}
	if cap(a.buf) != bufCap {
		t.Errorf("the buffer grew from %d to %d bytes over a WRITE", bufCap, cap(a.buf))
	}
	a.Write(sftpPacket(sftpRemove, uint32(3), "big.bin"))
	want := []sftpOp{{Op: "open", Path: "big.bin", Flags: "write,create"}, {Op: "remove", Path: "big.bin"}}
	if !slices.Equal(ops, want) {
		t.Errorf("got %+v, want %+v", ops, want)
	}
}

func TestSFTPAuditorLongPacket(t *testing.T) {
	huge := strings.Repeat("d/", 40<<10) // 80 KiB: more than an audited packet may be
	bigAttrs := make([]byte, 100<<10)
	stream := slices.Concat(
		sftpPacket(sftpMkdir, uint32(1), huge, noAttrs),
		sftpPacket(sftpRename, uint32(2), "short", huge),
		// A short path, then more attrs than are kept: the path is known.
		sftpPacket(sftpSetstat, uint32(3), "f", bigAttrs),
		sftpPacket(sftpRmdir, uint32(4), "after"),
	)
	want := []sftpOp{
		{Op: "mkdir", Path: "(path too long)"},
		{Op: "rename", Path: "short", Path2: "(path too long)"},
		{Op: "setstat", Path: "f"},
		{Op: "rmdir", Path: "after"},
	}
	a := newSFTPAuditor(func(sftpOp) {})
	var got []sftpOp
	a.emit = func(op sftpOp) { got = append(got, op) }
	a.Write(stream)
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if cap(a.buf) > 4096 {
		t.Errorf("the auditor keeps a %d-byte buffer after long packets", cap(a.buf))
	}
}

func TestSFTPAuditorGarbage(t *testing.T) {
	valid := sftpPacket(sftpRemove, uint32(1), "x")
	for _, tc := range []struct {
		name   string
		stream []byte
		want   []sftpOp
	}{
		{"zero length", slices.Concat(valid, []byte{0, 0, 0, 0, 3}, valid), []sftpOp{{Op: "remove", Path: "x"}, {Op: "unparseable"}}},
		{"zero length at the end", slices.Concat(valid, []byte{0, 0, 0, 0}), []sftpOp{{Op: "remove", Path: "x"}, {Op: "unparseable"}}},
		{"over 16 MiB", slices.Concat([]byte{1, 0, 0, 1, 3}, valid), []sftpOp{{Op: "unparseable"}}},
		{"a shell's output", slices.Concat([]byte("SSH-2.0-OpenSSH_9.6\r\n"), valid), []sftpOp{{Op: "unparseable"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := auditSFTP(tc.stream); !slices.Equal(got, tc.want) {
				t.Errorf("whole: got %+v, want %+v", got, tc.want)
			}
			if got := auditSFTP(byteByByte(tc.stream)...); !slices.Equal(got, tc.want) {
				t.Errorf("byte by byte: got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// rwc joins a reader and a write closer for pkg/sftp.
type rwc struct {
	io.Reader
	io.WriteCloser
}

// teeCloser writes to w and to a copy, and closes w.
type teeCloser struct {
	io.Writer
	io.Closer
}

// A real SFTP client talking to a real server: what it does is what the
// auditor reports.
func TestSFTPAuditorRealClient(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var ops []sftpOp
	aud := newSFTPAuditor(func(op sftpOp) { mu.Lock(); ops = append(ops, op); mu.Unlock() })

	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	srv, err := sftp.NewServer(rwc{c2sR, s2cW}, sftp.WithServerWorkingDirectory(dir))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(); s2cW.Close() }()
	c, err := sftp.NewClientPipe(s2cR, teeCloser{io.MultiWriter(c2sW, aud), c2sW})
	if err != nil {
		t.Fatal(err)
	}

	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check(c.Mkdir("d"))
	f, err := c.Create("d/up.bin")
	check(err)
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	_, err = f.Write(data)
	check(err)
	check(f.Close())
	check(c.Rename("d/up.bin", "d/a.bin"))
	check(c.PosixRename("d/a.bin", "d/b.bin"))
	check(c.Link("d/b.bin", "d/c.bin"))
	check(c.Symlink("b.bin", "d/s"))
	check(c.Chmod("d/b.bin", 0o600))
	_, err = c.ReadDir("d")
	check(err)
	f, err = c.Open("d/b.bin")
	check(err)
	got, err := io.ReadAll(f)
	check(err)
	check(f.Close())
	check(c.Remove("d/c.bin"))
	check(c.Remove("d/s"))
	check(c.Remove("d/b.bin"))
	check(c.RemoveDirectory("d"))
	check(c.Close())
	if err := <-served; err != nil {
		t.Errorf("server: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Error("the file read back differs from the one written: the auditor disturbed the transfer")
	}
	if _, err := os.Stat(filepath.Join(dir, "d")); !os.IsNotExist(err) {
		t.Errorf("d still exists: %v", err)
	}

	want := []sftpOp{
		{Op: "mkdir", Path: "d"},
		{Op: "open", Path: "d/up.bin", Flags: "read,write,create,trunc"},
		{Op: "rename", Path: "d/up.bin", Path2: "d/a.bin"},
		{Op: "rename", Path: "d/a.bin", Path2: "d/b.bin"},
		{Op: "hardlink", Path: "d/b.bin", Path2: "d/c.bin"},
		{Op: "symlink", Path: "b.bin", Path2: "d/s"}, // the target first, as OpenSSH sends it
		{Op: "setstat", Path: "d/b.bin"},
		{Op: "opendir", Path: "d"},
		{Op: "open", Path: "d/b.bin", Flags: "read"},
		{Op: "remove", Path: "d/c.bin"},
		{Op: "remove", Path: "d/s"},
		{Op: "remove", Path: "d/b.bin"},
		{Op: "rmdir", Path: "d"},
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(ops, want) {
		t.Errorf("audited:\n%+v\nwant:\n%+v", ops, want)
	}
}

func FuzzSFTPAuditor(f *testing.F) {
	stream, _ := sftpSession()
	f.Add(stream, uint16(7))
	f.Add(stream, uint16(300))
	f.Add(slices.Concat(sftpInitPacket(), sftpPacket(sftpExtended, uint32(1), "posix-rename@openssh.com", "a", "b")), uint16(20))
	f.Add(slices.Concat(sftpPacket(sftpSymlink, uint32(1), "t", "l"), []byte{0, 0, 0, 0}), uint16(3))
	f.Add(sftpPacket(sftpOpen, uint32(1), "caf\xe9", uint32(0xff), noAttrs), uint16(9))
	f.Add([]byte("SSH-2.0-x\r\n"), uint16(2))
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		whole := auditSFTP(data)
		c := int(cut) % (len(data) + 1)
		if split := auditSFTP(data[:c], data[c:]); !slices.Equal(whole, split) {
			t.Fatalf("split at %d: %+v, whole: %+v", c, split, whole)
		}
		for i, op := range whole {
			if op.Op == "unparseable" && i != len(whole)-1 {
				t.Fatalf("ops after unparseable: %+v", whole)
			}
			for _, p := range []string{op.Path, op.Path2, op.Flags} {
				if !utf8.ValidString(p) || len(p) > 3*sftpMaxPath {
					t.Fatalf("bad field %q in %+v", p, op)
				}
			}
		}
	})
}
