package recording

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRecover: a recording a crash left open (no End in the index, a
// partial last line) is closed by a new Store: the file parses, keeps what
// was written, says it ended abruptly, and the index has an End.
func TestRecover(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Minute).UTC()
	rec, err := s.Create(Meta{Session: "crashed", User: "alice", Node: "n1", Start: start}, Header{Width: 80, Height: 24}, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.Output([]byte("before the crash\r\n"))
	// The process dies: no Finish; the last write was cut short.
	f, err := os.OpenFile(filepath.Join(dir, "crashed.cast"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`[1.5, "o", "half a li`)
	f.Close()

	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s2.Recover("crashed")
	if err != nil {
		t.Fatal(err)
	}
	if m.End.IsZero() || !m.Truncated || m.User != "alice" {
		t.Errorf("recovered meta %+v", m)
	}
	rc, _, err := s2.Open("crashed")
	if err != nil {
		t.Fatal(err)
	}
	b := new(bytes.Buffer)
	b.ReadFrom(rc)
	rc.Close()
	out, err := Output(bytes.NewReader(b.Bytes()))
	if err != nil || string(out) != "before the crash\r\n" {
		t.Fatalf("recovered output %q: %v", out, err)
	}
	if !strings.Contains(b.String(), "ended abruptly") || int64(b.Len()) != m.Bytes {
		t.Errorf("recovered file (%d bytes, meta says %d):\n%s", b.Len(), m.Bytes, b.String())
	}
	if got, _ := s2.Get("crashed"); got.End.IsZero() {
		t.Error("index still has no end")
	}
	if m2, err := s2.Recover("crashed"); err != nil || !m2.End.Equal(m.End) {
		t.Errorf("second Recover: %+v %v", m2, err)
	}
	if _, err := s2.Recover("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown session: %v", err)
	}
}

// TestCompact: the index keeps one line per recording, without removed
// ones, and everything still lists and opens as before.
func TestCompact(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		rec, err := s.Create(Meta{Session: id, User: "u", Node: "n", Start: now}, Header{}, WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rec.Output([]byte(id))
		if _, err := rec.Finish(now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove("b"); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(dir, IndexFile), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("not json\n")
	f.Close()
	before, _ := s.List()
	nb, na, err := s.Compact()
	if err != nil || nb != 8 || na != 2 {
		t.Fatalf("compact: %d → %d lines, %v", nb, na, err)
	}
	after, stats, err := s.ListWithStats()
	if err != nil || stats.Lines != 2 || stats.Malformed != 0 || len(after) != len(before) {
		t.Fatalf("after compacting: %+v %+v %v (before %+v)", after, stats, err, before)
	}
	for i := range before {
		if before[i].Session != after[i].Session || !before[i].End.Equal(after[i].End) || before[i].Bytes != after[i].Bytes {
			t.Errorf("%+v became %+v", before[i], after[i])
		}
	}
	if _, err := s.Get("b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed recording back: %v", err)
	}
}
