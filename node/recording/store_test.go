package recording

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTestStore(t *testing.T) (*Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "recordings")
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func testMeta(session string, start time.Time) Meta {
	return Meta{Session: session, User: "alice", Login: "root", Node: "db1", Start: start}
}

// indexLines returns the index's lines.
func indexLines(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// dirNames returns the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestStoreRecording(t *testing.T) {
	s, dir := openTestStore(t)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("store directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	clock := newFakeClock()
	m := testMeta("0123abcd", t0)
	m.Command = "top"
	m.Cols, m.Rows = 100, 30
	rec, err := s.Create(m, Header{Env: map[string]string{"TERM": "xterm"}}, WriterOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}

	// While it runs, the index has it without an end.
	running, err := s.Get("0123abcd")
	if err != nil {
		t.Fatal(err)
	}
	if !running.End.IsZero() || running.File != "0123abcd.cast" || running.Cols != 100 || running.Rows != 30 || running.Bytes == 0 {
		t.Errorf("running recording: %+v", running)
	}

	clock.Advance(time.Second)
	rec.Output([]byte("top - 10:00:00 up 1 day\r\n"))
	rec.Input([]byte("q"))
	rec.Output([]byte("\xe2\x82"))
	rec.Output([]byte("\xac\r\n"))
	end := t0.Add(2 * time.Second)
	got, err := rec.Finish(end)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "0123abcd.cast"))
	if err != nil {
		t.Fatal(err)
	}
	want := Meta{
		Session: "0123abcd", User: "alice", Login: "root", Node: "db1", Command: "top",
		Start: t0, End: end, Cols: 100, Rows: 30,
		Bytes: fi.Size(), Output: 30, Input: 1, File: "0123abcd.cast",
	}
	if !metaEqual(got, want) {
		t.Errorf("Finish = %+v\nwant     %+v", got, want)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("recording mode %v, want 0600", fi.Mode())
	}
	if again, err := rec.Finish(end.Add(time.Hour)); err != nil || !metaEqual(again, want) {
		t.Errorf("second Finish = %+v, %v; want the same Meta and nil", again, err)
	}
	if g, err := s.Get("0123abcd"); err != nil || !metaEqual(g, want) {
		t.Errorf("Get = %+v, %v\nwant %+v", g, err, want)
	}
	if n := len(indexLines(t, dir)); n != 2 {
		t.Errorf("index has %d lines, want 2 (start and end)", n)
	}

	rc, om, err := s.Open("0123abcd")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if !metaEqual(om, want) {
		t.Errorf("Open meta %+v", om)
	}
	rd, err := NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	if h := rd.Header(); h.Width != 100 || h.Height != 30 || h.Command != "top" || h.Timestamp != t0.Unix() || h.Env["TERM"] != "xterm" {
		t.Errorf("header %+v", h)
	}
	var out []byte
	for {
		ev, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Code == CodeOutput {
			out = append(out, ev.Data...)
		}
	}
	if string(out) != "top - 10:00:00 up 1 day\r\n€\r\n" {
		t.Errorf("recorded output %q", out)
	}

	if _, err := s.Create(testMeta("0123abcd", t0), Header{}, WriterOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Create of an existing session: %v, want an error saying it exists", err)
	}
}

// metaEqual compares Metas with time.Time.Equal.
func metaEqual(a, b Meta) bool {
	if !a.Start.Equal(b.Start) || !a.End.Equal(b.End) {
		return false
	}
	a.Start, a.End, b.Start, b.End = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return a == b
}

func TestStoreTruncated(t *testing.T) {
	s, _ := openTestStore(t)
	rec, err := s.Create(testMeta("big", t0), Header{}, WriterOptions{Limit: 200, Now: newFakeClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		rec.Output([]byte("0123456789"))
	}
	m, err := rec.Finish(t0)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Truncated || m.Output != 500 || m.Bytes > 200+markerSlack {
		t.Errorf("Meta %+v, want truncated with 500 output bytes", m)
	}
	// Put accepts what a Writer with the same limit writes.
	rc, _, err := s.Open("big")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	other, _ := openTestStore(t)
	if _, err := other.Put(m, rc, 200); err != nil {
		t.Errorf("Put of a truncated recording with its limit: %v", err)
	}
}

func TestStoreListOrderAndLastLineWins(t *testing.T) {
	s, dir := openTestStore(t)
	starts := map[string]time.Time{
		"c": t0.Add(time.Minute),
		"b": t0,
		"a": t0,
		"d": t0.Add(-time.Minute),
	}
	for _, id := range []string{"c", "b", "a", "d"} {
		rec, err := s.Create(testMeta(id, starts[id]), Header{}, WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if id != "a" { // a is still running
			if _, err := rec.Finish(starts[id].Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Damage: a line cut short by a crash (no newline), which the next
	// append must not glue itself to, and junk.
	f, err := os.OpenFile(filepath.Join(dir, IndexFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(f, "not json\n[1,2]\nnull\n{\"session\":\"../etc\"}\n\n{\"session\":\"c\",\"user\":\"mallory\"")
	f.Close()
	if _, err := s.Put(testMeta("e", t0.Add(time.Hour)), strings.NewReader(validHeader+"\n"), 0); err != nil {
		t.Fatal(err)
	}

	ms, stats, err := s.ListWithStats()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.Session)
	}
	if want := []string{"d", "a", "b", "c", "e"}; !slices.Equal(ids, want) {
		t.Errorf("List order %v, want %v", ids, want)
	}
	// c's last complete line is its Finish line: the cut-short line is
	// malformed, and e's line was not glued to it.
	for _, m := range ms {
		if m.Session == "c" && (m.User != "alice" || m.End.IsZero()) {
			t.Errorf("c = %+v, want its finished line", m)
		}
		if m.Session == "a" && !m.End.IsZero() {
			t.Errorf("a = %+v, want it running", m)
		}
	}
	if stats.Malformed != 5 || stats.Lines != 7+5+1 {
		t.Errorf("stats %+v, want 5 malformed of 13 lines", stats)
	}

	// A later line wins, whatever it says.
	later := testMeta("b", t0.Add(-time.Hour))
	later.User = "bob"
	s.mu.Lock()
	err = s.appendIndex(indexLine{Meta: later})
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	ms, err = s.List()
	if err != nil {
		t.Fatal(err)
	}
	if ms[0].Session != "b" || ms[0].User != "bob" {
		t.Errorf("after another line for b, List()[0] = %+v, want b by bob first", ms[0])
	}
}

func TestStoreEmpty(t *testing.T) {
	s, _ := openTestStore(t)
	ms, err := s.List()
	if err != nil || len(ms) != 0 {
		t.Errorf("List of an empty store = %v, %v", ms, err)
	}
	if _, err := s.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get = %v, want ErrNotFound", err)
	}
	if _, _, err := s.Open("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open = %v, want ErrNotFound", err)
	}
	if err := s.Remove("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove = %v, want ErrNotFound", err)
	}
}

func TestOpenStoreErrors(t *testing.T) {
	if _, err := OpenStore(""); err == nil {
		t.Error("OpenStore(\"\") succeeded")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(file); err == nil {
		t.Error("OpenStore of a file succeeded")
	}
}

func TestSessionIDs(t *testing.T) {
	s, dir := openTestStore(t)
	valid := []string{"a", "0123456789abcdef0123456789abcdef", "A.b_c-D9", "-x", "_", strings.Repeat("x", 64), "index"}
	invalid := []struct {
		id, wantErr string
	}{
		{"", "empty"},
		{"../x", "starts with '.'"},
		{"..", "starts with '.'"},
		{".hidden", "starts with '.'"},
		{"a/b", "'/'"},
		{"a b", "' '"},
		{"ü", "byte 0xc3"},
		{"a\x00", "'\\x00'"},
		{strings.Repeat("x", 65), "65 bytes"},
	}
	for _, id := range valid {
		if err := CheckSession(id); err != nil {
			t.Errorf("CheckSession(%q) = %v, want nil", id, err)
		}
	}
	for _, tt := range invalid {
		t.Run(fmt.Sprintf("%q", tt.id), func(t *testing.T) {
			check := func(op string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), "session id") || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("%s: error %v, want one about the session id containing %q", op, err, tt.wantErr)
				}
			}
			_, err := s.Create(testMeta(tt.id, t0), Header{}, WriterOptions{})
			check("Create", err)
			_, err = s.Get(tt.id)
			check("Get", err)
			_, _, err = s.Open(tt.id)
			check("Open", err)
			_, err = s.Put(testMeta(tt.id, t0), strings.NewReader(validHeader+"\n"), 0)
			check("Put", err)
			check("Remove", s.Remove(tt.id))
		})
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("bad ids left files behind: %v", names)
	}
}

func TestStorePut(t *testing.T) {
	good := validHeader + "\n" + `[0.5, "o", "hello"]` + "\n" + `[1.5, "o", " world"]` + "\n"
	tests := []struct {
		name    string
		data    string
		limit   int64
		wantErr []string
	}{
		{"empty", "", 0, []string{"not a valid asciicast", "empty"}},
		{"not asciicast", "#!/bin/sh\nrm -rf /\n", 0, []string{"not a valid asciicast", "line 1"}},
		{"bad event", validHeader + "\n" + `[0.5, "o", "x"]` + "\n" + `[0.1, "o", "y"]` + "\n", 0, []string{"not a valid asciicast", "line 3", "before the previous"}},
		{"cut short", good[:len(good)-8], 0, []string{"line 3"}},
		{"over the limit", good + strings.Repeat(`[2, "o", "xxxxxxxxxxxxxxxx"]`+"\n", 20), 10, []string{"larger than 266 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, dir := openTestStore(t)
			_, err := s.Put(testMeta("up1", t0), strings.NewReader(tt.data), tt.limit)
			if err == nil {
				t.Fatal("Put succeeded")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("Put left %v behind", names)
			}
		})
	}

	t.Run("store and retry", func(t *testing.T) {
		s, dir := openTestStore(t)
		m := testMeta("up1", time.Time{})
		m.End = time.Date(2023, 11, 14, 23, 0, 0, 0, time.FixedZone("X", 3600))
		m.Output = 11
		got, err := s.Put(m, strings.NewReader(good), int64(len(good)))
		if err != nil {
			t.Fatal(err)
		}
		want := Meta{Session: "up1", User: "alice", Login: "root", Node: "db1",
			Start: time.Unix(1700000000, 0), End: m.End, Cols: 80, Rows: 24,
			Bytes: int64(len(good)), Output: 11, File: "up1.cast"}
		if !metaEqual(got, want) || got.Start.Location() != time.UTC || got.End.Location() != time.UTC {
			t.Errorf("Put = %+v\nwant  %+v, in UTC", got, want)
		}
		b, err := os.ReadFile(filepath.Join(dir, "up1.cast"))
		if err != nil || string(b) != good {
			t.Errorf("stored file %q, %v", b, err)
		}
		if fi, err := os.Stat(filepath.Join(dir, "up1.cast")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("stored file mode %v, %v; want 0600", fi.Mode(), err)
		}

		// A retry with the same content returns the stored Meta, even
		// with another Meta, and adds no index line.
		other := m
		other.User = "mallory"
		again, err := s.Put(other, strings.NewReader(good), 0)
		if err != nil || !metaEqual(again, got) {
			t.Errorf("retried Put = %+v, %v; want %+v, nil", again, err, got)
		}
		if n := len(indexLines(t, dir)); n != 1 {
			t.Errorf("index has %d lines after a retry, want 1", n)
		}

		// Other content under the same id is refused.
		_, err = s.Put(m, strings.NewReader(good+`[2, "o", "!"]`+"\n"), 0)
		if err == nil || !strings.Contains(err.Error(), "different recording") {
			t.Errorf("Put of other content: %v, want an error about a different recording", err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "up1.cast")); string(b) != good {
			t.Error("Put of other content changed the stored file")
		}
		if names := dirNames(t, dir); !slices.Equal(names, []string{IndexFile, "up1.cast"}) {
			t.Errorf("directory holds %v", names)
		}
	})

	t.Run("index line lost", func(t *testing.T) {
		s, dir := openTestStore(t)
		if err := os.WriteFile(filepath.Join(dir, "up1.cast"), []byte(good), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := s.Put(testMeta("up1", t0), strings.NewReader(good), 0)
		if err != nil {
			t.Fatal(err)
		}
		if g, err := s.Get("up1"); err != nil || !metaEqual(g, got) {
			t.Errorf("Get = %+v, %v; want %+v", g, err, got)
		}
	})

	t.Run("session being recorded", func(t *testing.T) {
		s, _ := openTestStore(t)
		rec, err := s.Create(testMeta("live", t0), Header{}, WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer rec.Finish(t0)
		if _, err := s.Put(testMeta("live", t0), strings.NewReader(good), 0); err == nil || !strings.Contains(err.Error(), "recording that session") {
			t.Errorf("Put of a session being recorded: %v", err)
		}
	})
}

func TestStoreRemove(t *testing.T) {
	s, dir := openTestStore(t)
	rec, err := s.Create(testMeta("gone", t0), Header{}, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("gone"); err == nil || !strings.Contains(err.Error(), "still being recorded") {
		t.Errorf("Remove of a running recording: %v", err)
	}
	if _, err := rec.Finish(t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(testMeta("kept", t0), Header{}, WriterOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gone.cast")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file after Remove: %v, want it gone", err)
	}
	if _, err := s.Get("gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove = %v, want ErrNotFound", err)
	}
	if err := s.Remove("gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	ms, err := s.List()
	if err != nil || len(ms) != 1 || ms[0].Session != "kept" {
		t.Errorf("List after Remove = %+v, %v; want only kept", ms, err)
	}
	lines := indexLines(t, dir)
	if last := lines[len(lines)-1]; !strings.Contains(last, `"session":"gone"`) || !strings.Contains(last, `"removed":true`) {
		t.Errorf("last index line %s, want a tombstone for gone", last)
	}
	// The id can be used again.
	rec, err = s.Create(testMeta("gone", t0.Add(time.Hour)), Header{}, WriterOptions{})
	if err != nil {
		t.Fatalf("Create after Remove: %v", err)
	}
	if _, err := rec.Finish(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("gone"); err != nil {
		t.Errorf("Get of the new recording: %v", err)
	}
}

func TestStoreOpenMissingFile(t *testing.T) {
	s, dir := openTestStore(t)
	rec, err := s.Create(testMeta("lost", t0), Header{}, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Finish(t0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "lost.cast")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Open("lost"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "file is missing") {
		t.Errorf("Open = %v, want ErrNotFound saying the file is missing", err)
	}
}

// TestStoreConcurrent records sessions from many goroutines; run with -race.
func TestStoreConcurrent(t *testing.T) {
	s, dir := openTestStore(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("s%02d", i)
			rec, err := s.Create(testMeta(id, t0.Add(time.Duration(i)*time.Second)), Header{}, WriterOptions{})
			if err != nil {
				errs <- err
				return
			}
			rec.Output([]byte(id))
			if _, err := rec.Finish(time.Time{}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ms, stats, err := s.ListWithStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != n || stats.Lines != 2*n || stats.Malformed != 0 {
		t.Fatalf("List: %d recordings, stats %+v; want %d, no malformed lines", len(ms), stats, n)
	}
	for i, m := range ms {
		id := fmt.Sprintf("s%02d", i)
		if m.Session != id || m.End.IsZero() {
			t.Errorf("List()[%d] = %+v", i, m)
		}
		b, err := os.ReadFile(filepath.Join(dir, m.File))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := Output(bytes.NewReader(b)); err != nil || string(out) != id {
			t.Errorf("%s output %q, %v", id, out, err)
		}
	}
}
