package audit_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"jumpgate.dev/jumpgate/auth/audit"
)

// line is a 10-byte line: "lineNNNNN\n".
func line(i int) []byte { return fmt.Appendf(nil, "line%05d\n", i) }

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustWrite(t *testing.T, f *audit.RotatingFile, p []byte) {
	t.Helper()
	if n, err := f.Write(p); err != nil || n != len(p) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(p))
	}
}

func TestRotateAtSizeBoundary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 30, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 3 { // exactly 30 bytes: no rotation yet
		mustWrite(t, f, line(i))
	}
	if _, err := os.Stat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rotated at 30 of 30 bytes: %v", err)
	}
	mustWrite(t, f, line(3)) // 40 > 30: rotates first
	if got, want := readFile(t, path+".1"), "line00000\nline00001\nline00002\n"; got != want {
		t.Errorf("audit.log.1 = %q, want %q", got, want)
	}
	if got, want := readFile(t, path), "line00003\n"; got != want {
		t.Errorf("audit.log = %q, want %q", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new audit.log has mode %v, want 0600", fi.Mode().Perm())
	}
	if f.Err() != nil {
		t.Errorf("Err() = %v after good rotations", f.Err())
	}
}

func TestRotateLongLineGetsItsOwnFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 15, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	long := []byte(strings.Repeat("x", 40) + "\n")
	mustWrite(t, f, long) // an empty file takes it whole
	mustWrite(t, f, line(1))
	if got := readFile(t, path+".1"); got != string(long) {
		t.Errorf("audit.log.1 = %q, want the long line alone", got)
	}
	if got := readFile(t, path); got != string(line(1)) {
		t.Errorf("audit.log = %q", got)
	}
}

func TestRotateKeepRemovesOldest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 10, 2) // one line per file
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 5 {
		mustWrite(t, f, line(i))
	}
	for name, want := range map[string]string{
		path:        string(line(4)),
		path + ".1": string(line(3)),
		path + ".2": string(line(2)),
	} {
		if got := readFile(t, name); got != want {
			t.Errorf("%s = %q, want %q", filepath.Base(name), got, want)
		}
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("audit.log.3 exists with keep 2: %v", err)
	}
}

func TestRotateKeepAtLeastOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 3 {
		mustWrite(t, f, line(i))
	}
	if got := readFile(t, path+".1"); got != string(line(1)) {
		t.Errorf("audit.log.1 = %q, want %q", got, line(1))
	}
	if _, err := os.Stat(path + ".2"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("audit.log.2 exists with keep 0 (1): %v", err)
	}
}

func TestRotateNever(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 100 {
		mustWrite(t, f, line(i))
	}
	if _, err := os.Stat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("maxBytes 0 rotated: %v", err)
	}
	if got := len(readFile(t, path)); got != 1000 {
		t.Errorf("audit.log has %d bytes, want 1000", got)
	}
}

func TestRotateReopenAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 30, 3)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, line(0))
	mustWrite(t, f, line(1))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(line(9)); err == nil {
		t.Error("Write after Close succeeded")
	}

	// A restart: the size is known, so the third line still fits and the
	// fourth rotates.
	f, err = audit.OpenRotating(path, 30, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustWrite(t, f, line(2))
	if got, want := readFile(t, path), "line00000\nline00001\nline00002\n"; got != want {
		t.Fatalf("after reopen audit.log = %q, want %q", got, want)
	}
	mustWrite(t, f, line(3))
	if got := readFile(t, path+".1"); got != "line00000\nline00001\nline00002\n" {
		t.Errorf("audit.log.1 = %q", got)
	}
	if got := readFile(t, path); got != string(line(3)) {
		t.Errorf("audit.log = %q", got)
	}
}

func TestRotateNow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenRotating(path, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustWrite(t, f, line(0))
	if err := f.Rotate(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, line(1))
	if got := readFile(t, path+".1"); got != string(line(0)) {
		t.Errorf("audit.log.1 = %q", got)
	}
	if got := readFile(t, path); got != string(line(1)) {
		t.Errorf("audit.log = %q", got)
	}
}

// A failed rotation loses nothing: the line goes to the current file and
// Err says why; a later rotation that can succeed does.
func TestRotateFailureKeepsWriting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	f, err := audit.OpenRotating(path, 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A non-empty directory where audit.log.1 goes: renaming onto it fails,
	// even for root.
	if err := os.MkdirAll(filepath.Join(path+".1", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		mustWrite(t, f, line(i))
	}
	if got, want := readFile(t, path), "line00000\nline00001\nline00002\n"; got != want {
		t.Errorf("audit.log = %q, want every line", got)
	}
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "rotate audit log") {
		t.Errorf("Err() = %v, want the rotation's failure", err)
	}

	if err := os.RemoveAll(path + ".1"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, line(3))
	if f.Err() != nil {
		t.Errorf("Err() = %v after a good rotation", f.Err())
	}
	if got, want := readFile(t, path+".1"), "line00000\nline00001\nline00002\n"; got != want {
		t.Errorf("audit.log.1 = %q, want %q", got, want)
	}
	if got := readFile(t, path); got != string(line(3)) {
		t.Errorf("audit.log = %q", got)
	}
}

// Concurrent writers, through audit.Writer and directly, with rotations all
// the time:
// every line is whole, in one file, and none is lost.
func TestRotateConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	const writers, each = 8, 200
	f, err := audit.OpenRotating(path, 8000, 200) // about 50 rotations: keep enough to lose nothing
	if err != nil {
		t.Fatal(err)
	}
	w := audit.NewWriter(f, "node/n1", nil)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				// Lines of different lengths, some long.
				e := audit.Event{Type: audit.Exec, User: fmt.Sprintf("u%d", g), Command: fmt.Sprintf("%d %s", i, strings.Repeat("y", (g*37+i)%300))}
				if g%2 == 0 {
					w.Emit(e)
					continue
				}
				// Half write to f directly: its own lock must hold.
				b, _ := json.Marshal(e)
				if _, err := f.Write(append(b, '\n')); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if f.Err() != nil {
		t.Fatalf("rotation failed: %v", f.Err())
	}

	files, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("only %d files: the test did not rotate much", len(files))
	}
	seen := map[string]bool{}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Errorf("%s ends in the middle of a line", filepath.Base(name))
		}
		for l := range bytes.Lines(b) {
			var e audit.Event
			if err := json.Unmarshal(l, &e); err != nil {
				t.Fatalf("%s: a split or interleaved line %q: %v", filepath.Base(name), l, err)
			}
			key := e.User + " " + e.Command
			if seen[key] {
				t.Errorf("line written twice: %s", key)
			}
			seen[key] = true
		}
	}
	if len(seen) != writers*each {
		t.Errorf("found %d lines, want %d", len(seen), writers*each)
	}
}
