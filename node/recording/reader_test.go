package recording

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

const validHeader = `{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000, "idle_time_limit": 2, "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"}}`

func TestReaderValid(t *testing.T) {
	file := validHeader + "\r\n" +
		`[0.5, "o", "hello\r\n"]` + "\r\n" +
		"\n" +
		"   \t\n" +
		`  [ 0.5000000 , "i" , "q" ]  ` + "\n" +
		`[0.4999995, "x", ""]` + "\n" + // within a microsecond: allowed
		`[1e1, "m", "<&>"]` // no newline at the end
	h, evs := readAll(t, file)
	if h.Version != 2 || h.Width != 80 || h.Height != 24 || h.Timestamp != 1700000000 || h.Env["TERM"] != "xterm-256color" {
		t.Errorf("header %+v", h)
	}
	want := []Event{
		{0.5, "o", "hello\r\n"},
		{0.5, "i", "q"},
		{0.4999995, "x", ""},
		{10, "m", "<&>"},
	}
	if len(evs) != len(want) {
		t.Fatalf("events %+v, want %+v", evs, want)
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Errorf("event %d: %+v, want %+v", i, evs[i], want[i])
		}
	}
}

func TestReaderEOFSticks(t *testing.T) {
	rd, err := NewReader(strings.NewReader(validHeader + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := rd.Next(); err != io.EOF {
			t.Fatalf("Next = %v, want io.EOF", err)
		}
	}
}

func TestReaderHeaderErrors(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		wantErr []string
	}{
		{"empty", "", []string{"empty"}},
		{"version 1", `{"version": 1, "width": 80, "height": 24}`, []string{"line 1", "version 1 is not supported", "version 2"}},
		{"version 3", `{"version":3,"term":{"cols":80,"rows":24}}`, []string{"line 1", "version 3"}},
		{"version as string", `{"version": "2", "width": 80, "height": 24}`, []string{"line 1", `version "2"`}},
		{"no version", `{"width": 80, "height": 24}`, []string{"line 1", "no \"version\""}},
		{"v1 multi-line", "{\n  \"version\": 1,\n", []string{"line 1", "not a valid JSON object"}},
		{"not JSON", "hello world", []string{"line 1", "not a JSON object"}},
		{"array", `[0.1, "o", "x"]`, []string{"line 1", "not a JSON object"}},
		{"zero width", `{"version": 2, "width": 0, "height": 24}`, []string{"line 1", "0x24", "out of range"}},
		{"no height", `{"version": 2, "width": 80}`, []string{"line 1", "80x0"}},
		{"huge width", `{"version": 2, "width": 10001, "height": 24}`, []string{"line 1", "10001x24"}},
		{"width not a number", `{"version": 2, "width": "80", "height": 24}`, []string{"line 1", "bad header field"}},
		{"blank first line", "\n" + validHeader, []string{"line 1", "not a JSON object"}},
		{"huge header", `{"version": 2, "title": "` + strings.Repeat("x", MaxLine) + `"}`, []string{"line 1", "longer than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewReader(strings.NewReader(tt.file))
			if err == nil {
				t.Fatal("NewReader succeeded, want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestReaderEventErrors(t *testing.T) {
	ok := `[1.0, "o", "x"]` + "\n"
	tests := []struct {
		name    string
		events  string // after the header and ok, so the bad line is line 3 (unless blank lines come first)
		wantErr []string
	}{
		{"not JSON", "hello\n", []string{"line 3", "not a JSON array"}},
		{"object", `{"t": 1}` + "\n", []string{"line 3", "not a JSON array"}},
		{"null", "null\n", []string{"line 3", "0 elements"}},
		{"two elements", `[2.0, "o"]` + "\n", []string{"line 3", "2 elements, want 3"}},
		{"four elements", `[2.0, "o", "x", "y"]` + "\n", []string{"line 3", "4 elements"}},
		{"trailing garbage", `[2.0, "o", "x"] x` + "\n", []string{"line 3", "not a JSON array"}},
		{"decreasing time", `[0.5, "o", "x"]` + "\n", []string{"line 3", "before the previous"}},
		{"negative time", `[-0.5, "o", "x"]` + "\n", []string{"line 3", "negative"}},
		{"time as string", `["2", "o", "x"]` + "\n", []string{"line 3", `time "2" is not a number`}},
		{"time null", `[null, "o", "x"]` + "\n", []string{"line 3", "not a number"}},
		{"time out of range", `[1e400, "o", "x"]` + "\n", []string{"line 3", "time 1e400"}},
		{"code empty", `[2.0, "", "x"]` + "\n", []string{"line 3", "code is empty"}},
		{"code number", `[2.0, 1, "x"]` + "\n", []string{"line 3", "code", "not a string"}},
		{"code null", `[2.0, null, "x"]` + "\n", []string{"line 3", "code", "not a string"}},
		{"data null", `[2.0, "o", null]` + "\n", []string{"line 3", "data", "not a string"}},
		{"data array", `[2.0, "o", ["x"]]` + "\n", []string{"line 3", "data", "not a string"}},
		{"after blank lines", "\n\n" + `[2.0, "o"]` + "\n", []string{"line 5", "2 elements"}},
		{"huge line", `[2.0, "o", "` + strings.Repeat("x", MaxLine) + `"]` + "\n" + ok, []string{"line 3", "longer than 4194304 bytes"}},
		{"huge line without newline", strings.Repeat("[", MaxLine+5), []string{"line 3", "longer than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd, err := NewReader(strings.NewReader(validHeader + "\n" + ok + tt.events + ok))
			if err != nil {
				t.Fatal(err)
			}
			if ev, err := rd.Next(); err != nil || ev.Data != "x" {
				t.Fatalf("first event %+v, %v; want the valid one", ev, err)
			}
			_, err = rd.Next()
			if err == nil || err == io.EOF {
				t.Fatalf("Next = %v, want an error", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if _, again := rd.Next(); again != err {
				t.Errorf("Next after an error = %v, want the same error %v", again, err)
			}
		})
	}
}

// TestReaderLongestLine checks that a line of exactly MaxLine bytes is read.
func TestReaderLongestLine(t *testing.T) {
	line := `[1, "o", "` + strings.Repeat("y", MaxLine-len(`[1, "o", ""]`)) + `"]`
	if len(line) != MaxLine {
		t.Fatalf("test line is %d bytes", len(line))
	}
	got, err := Output(strings.NewReader(validHeader + "\r\n" + line + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxLine-len(`[1, "o", ""]`) {
		t.Errorf("output %d bytes", len(got))
	}
}

func TestReaderReadError(t *testing.T) {
	errBoom := errors.New("boom")
	r := io.MultiReader(strings.NewReader(validHeader+"\n"+`[1, "o", "x"]`+"\n"), iotest.ErrReader(errBoom))
	got, err := Output(r)
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("Output error %v, want line 3 and %v", err, errBoom)
	}
	if string(got) != "x" {
		t.Errorf("Output = %q, want the output before the error", got)
	}
}

// TestOutputSkipsOtherEvents checks that Output returns only "o" data.
func TestOutputSkipsOtherEvents(t *testing.T) {
	file := validHeader + "\n" +
		`[0.1, "o", "a"]` + "\n" +
		`[0.2, "i", "SECRET"]` + "\n" +
		`[0.3, "r", "100x40"]` + "\n" +
		`[0.4, "m", "mark"]` + "\n" +
		`[0.5, "o", "b\u00e9"]` + "\n"
	got, err := Output(strings.NewReader(file))
	if err != nil || string(got) != "abé" {
		t.Errorf("Output = %q, %v; want \"abé\"", got, err)
	}
}

// TestUnmarshalString checks the fast path against encoding/json.
func TestUnmarshalString(t *testing.T) {
	for _, raw := range []string{
		`""`, `"plain"`, `"<&>"`, `"é€😀"`, "\"\xff\xfe\"", "\"a\xe2\x82\"", `"\u001b[0m"`,
		`"\ud83d\ude00"`, `"\ud800"`, `"tab\tx"`, `"\\"`, `"\""`, ` "padded" `,
	} {
		var want, got string
		if err := json.Unmarshal([]byte(raw), &want); err != nil {
			continue // not a JSON string; a line with it never gets here
		}
		if err := unmarshalString(json.RawMessage(raw), &got); err != nil || got != want {
			t.Errorf("unmarshalString(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
	for _, raw := range []string{`null`, `1`, `["x"]`, `{}`, `true`, ``} {
		var s string
		if err := unmarshalString(json.RawMessage(raw), &s); err == nil {
			t.Errorf("unmarshalString(%q) succeeded, want an error", raw)
		}
	}
}
