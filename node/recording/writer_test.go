package recording

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// TestRoundTripChunked checks that random valid UTF-8 output, cut into
// chunks of 1 to 64 bytes anywhere (also inside characters), comes back
// byte for byte, and that input, resize and marker events between the
// chunks do not leak into it.
func TestRoundTripChunked(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			out := randomText(rng, 200+rng.IntN(4000))
			in := randomText(rng, 50+rng.IntN(200))
			w, lw, clock := newTestWriter(t, Header{}, WriterOptions{})
			outChunks, inChunks := chunks(rng, out, 64), chunks(rng, in, 8)
			for i, c := range outChunks {
				clock.Advance(time.Duration(rng.IntN(300)) * time.Millisecond)
				w.Output(c)
				if i < len(inChunks) {
					w.Input(inChunks[i])
				}
				switch rng.IntN(20) {
				case 0:
					w.Resize(100+i, 30)
				case 1:
					w.Marker(fmt.Sprint("mark ", i))
				}
			}
			for _, c := range inChunks[min(len(inChunks), len(outChunks)):] {
				w.Input(c)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			lw.check(t)

			got, err := Output(strings.NewReader(lw.String()))
			if err != nil {
				t.Fatalf("Output: %v", err)
			}
			if !bytes.Equal(got, out) {
				t.Fatalf("output does not round-trip:\n got %q\nwant %q", got, out)
			}
			_, evs := readAll(t, lw.String())
			var gotIn []byte
			for _, ev := range evs {
				if (ev.Code == CodeOutput || ev.Code == CodeInput) && ev.Data == "" {
					t.Errorf("event with empty data: %+v", ev)
				}
				if ev.Code == CodeInput {
					gotIn = append(gotIn, ev.Data...)
				}
			}
			if !bytes.Equal(gotIn, in) {
				t.Errorf("input does not round-trip:\n got %q\nwant %q", gotIn, in)
			}
			if w.OutputBytes() != int64(len(out)) || w.InputBytes() != int64(len(in)) {
				t.Errorf("OutputBytes, InputBytes = %d, %d; want %d, %d", w.OutputBytes(), w.InputBytes(), len(out), len(in))
			}
		})
	}
}

// TestUTF8Handling checks split characters, invalid bytes (each becomes
// U+FFFD) and what Close does with an incomplete character.
func TestUTF8Handling(t *testing.T) {
	const rep = "\uFFFD"
	tests := []struct {
		name      string
		chunks    []string
		want      string
		wantCount int // "o" events
	}{
		{"split 2-byte", []string{"\xc3", "\xa9"}, "é", 1},
		{"split 3-byte 1+2", []string{"\xe2", "\x82\xac"}, "€", 1},
		{"split 3-byte byte by byte", []string{"\xe2", "\x82", "\xac"}, "€", 1},
		{"split 4-byte 3+1", []string{"a\xf0\x9f\x98", "\x80b"}, "a😀b", 2},
		{"split 4-byte 1+3", []string{"\xf0", "\x9f\x98\x80"}, "😀", 1},
		{"lone continuation", []string{"\x80"}, rep, 1},
		{"invalid byte ff", []string{"a\xffb"}, "a" + rep + "b", 1},
		{"overlong", []string{"\xc0\x80"}, rep + rep, 1},
		{"surrogate", []string{"\xed\xa0\x80"}, rep + rep + rep, 1},
		{"interrupted sequence", []string{"\xe2\x82", "A"}, rep + rep + "A", 1},
		{"invalid second byte held not", []string{"\xe0\x80", "x"}, rep + rep + "x", 2},
		{"incomplete at close", []string{"ok\xe2\x82"}, "ok" + rep + rep, 2},
		{"only incomplete at close", []string{"\xf0\x9f\x98"}, rep + rep + rep, 1},
		{"beyond U+10FFFF", []string{"\xf4\x90\x80\x80"}, rep + rep + rep + rep, 1},
		{"empty chunks", []string{"", "x", ""}, "x", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, lw, _ := newTestWriter(t, Header{}, WriterOptions{})
			for _, c := range tt.chunks {
				w.Output([]byte(c))
			}
			w.Input([]byte("\xe2")) // held apart from output, flushed at Close
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			lw.check(t)
			_, evs := readAll(t, lw.String())
			var got string
			count := 0
			for _, ev := range evs {
				switch ev.Code {
				case CodeOutput:
					got += ev.Data
					count++
				case CodeInput:
					if ev.Data != rep {
						t.Errorf("input event %q, want %q", ev.Data, rep)
					}
				}
			}
			if got != tt.want {
				t.Errorf("output %q, want %q", got, tt.want)
			}
			if count != tt.wantCount {
				t.Errorf("%d output events, want %d", count, tt.wantCount)
			}
			if !utf8.ValidString(lw.String()) {
				t.Errorf("file is not valid UTF-8: %q", lw.String())
			}
		})
	}
}

func TestHeader(t *testing.T) {
	tests := []struct {
		name string
		in   Header
		want Header
	}{
		{
			name: "defaults",
			in:   Header{},
			want: Header{Version: 2, Width: 80, Height: 24, Timestamp: t0.Unix()},
		},
		{
			name: "negative size and wrong version",
			in:   Header{Version: 1, Width: -1, Height: -5},
			want: Header{Version: 2, Width: 80, Height: 24, Timestamp: t0.Unix()},
		},
		{
			name: "too large is clamped",
			in:   Header{Width: 20000, Height: 10001},
			want: Header{Version: 2, Width: MaxDimension, Height: MaxDimension, Timestamp: t0.Unix()},
		},
		{
			name: "all fields kept",
			in: Header{Width: 132, Height: 43, Timestamp: 1234, Command: "top", Title: "db1 <prod>",
				Env: map[string]string{"TERM": "xterm-256color", "SHELL": "/bin/zsh"}},
			want: Header{Version: 2, Width: 132, Height: 43, Timestamp: 1234, Command: "top", Title: "db1 <prod>",
				Env: map[string]string{"TERM": "xterm-256color", "SHELL": "/bin/zsh"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, lw, _ := newTestWriter(t, tt.in, WriterOptions{})
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			lw.check(t)
			got, evs := readAll(t, lw.String())
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("header %+v, want %+v", got, tt.want)
			}
			if len(evs) != 0 {
				t.Errorf("events %v, want none", evs)
			}
			if strings.Contains(lw.String(), `\u003c`) {
				t.Errorf("header is HTML-escaped: %s", lw.String())
			}
		})
	}
}

func TestNewWriterErrors(t *testing.T) {
	if _, err := NewWriter(nil, Header{}, t0, WriterOptions{}); err == nil || !strings.Contains(err.Error(), "nil") {
		t.Errorf("NewWriter(nil) error %v, want one about the nil writer", err)
	}
	_, err := NewWriter(&failWriter{}, Header{}, t0, WriterOptions{})
	if !errors.Is(err, errDiskFull) || !strings.Contains(err.Error(), "header") {
		t.Errorf("NewWriter on a failing writer: error %v, want the write error for the header", err)
	}
}

// TestEventLines checks the exact event lines: six decimals, times that
// never go back, no HTML escaping, the codes and the resize format.
func TestEventLines(t *testing.T) {
	w, lw, clock := newTestWriter(t, Header{}, WriterOptions{})
	clock.Set(t0.Add(1500 * time.Millisecond))
	w.Output([]byte("<b>a & b</b>\r\n"))
	clock.Set(t0.Add(500 * time.Millisecond)) // the clock steps back
	w.Input([]byte("q"))
	clock.Set(t0.Add(2*time.Second + 400*time.Nanosecond))
	w.Resize(120, 40)
	clock.Set(t0.Add(-10 * time.Second)) // before the start
	w.Marker("end")
	w.Resize(0, 40) // dropped
	w.Marker("")
	clock.Set(t0.Add(3*time.Second + 1234567*time.Nanosecond))
	w.Output([]byte("\x1b[0m\"\\"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lw.check(t)
	lines := strings.SplitAfterN(lw.String(), "\n", 2)
	want := `[1.500000, "o", "<b>a & b</b>\r\n"]
[1.500000, "i", "q"]
[2.000000, "r", "120x40"]
[2.000000, "m", "end"]
[2.000000, "m", ""]
[3.001235, "o", "\u001b[0m\"\\"]
`
	if lines[1] != want {
		t.Errorf("events:\n%s\nwant:\n%s", lines[1], want)
	}
}

func TestLimit(t *testing.T) {
	hdr := Header{Env: map[string]string{"TERM": "xterm"}}
	var probe lineWriter
	if _, err := NewWriter(&probe, hdr, t0, WriterOptions{}); err != nil {
		t.Fatal(err)
	}
	headerLen := int64(len(probe.String()))
	eventLen := int64(len("[0.000000, \"o\", \"0123456789\"]\n"))
	tests := []struct {
		name       string
		limit      int64
		wantEvents int // output events kept
	}{
		{"room for three", headerLen + 3*eventLen, 3},
		{"room for three and a bit", headerLen + 3*eventLen + eventLen - 1, 3},
		{"room for none", headerLen, 0},
		{"smaller than the header", 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, lw, _ := newTestWriter(t, hdr, WriterOptions{Limit: tt.limit})
			for range 10 {
				w.Output([]byte("0123456789"))
			}
			for range 10 {
				w.Input([]byte("x")) // dropped, but counted
			}
			w.Output([]byte("\xe2")) // held, then dropped at Close
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			lw.check(t)
			if !w.Truncated() {
				t.Error("Truncated() = false, want true")
			}
			if w.OutputBytes() != 101 || w.InputBytes() != 10 {
				t.Errorf("OutputBytes, InputBytes = %d, %d; want 101, 10", w.OutputBytes(), w.InputBytes())
			}
			_, evs := readAll(t, lw.String())
			markers, outputs := 0, 0
			for _, ev := range evs {
				switch ev.Code {
				case CodeMarker:
					markers++
					want := fmt.Sprintf("recording truncated: limit of %d bytes reached", tt.limit)
					if ev.Data != want {
						t.Errorf("marker %q, want %q", ev.Data, want)
					}
				case CodeOutput:
					outputs++
				}
			}
			if markers != 1 || outputs != tt.wantEvents {
				t.Errorf("%d markers and %d output events, want 1 and %d:\n%s", markers, outputs, tt.wantEvents, lw.String())
			}
			if last := evs[len(evs)-1]; last.Code != CodeMarker {
				t.Errorf("last event %+v, want the truncation marker", last)
			}
			if size := int64(len(lw.String())); size > max(tt.limit, headerLen)+markerSlack {
				t.Errorf("file is %d bytes, more than the limit %d plus one marker line", size, tt.limit)
			}
		})
	}
	t.Run("default limit", func(t *testing.T) {
		w, _, _ := newTestWriter(t, hdr, WriterOptions{})
		if w.limit != DefaultLimit {
			t.Errorf("limit %d, want %d", w.limit, DefaultLimit)
		}
	})
}

func TestWriteError(t *testing.T) {
	fw := &failWriter{ok: 200}
	w, err := NewWriter(fw, Header{}, t0, WriterOptions{Now: newFakeClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		w.Output([]byte("0123456789"))
		w.Input([]byte("i"))
		w.Resize(10, 10)
		w.Marker("m")
	}
	if !errors.Is(w.Err(), errDiskFull) {
		t.Errorf("Err() = %v, want %v", w.Err(), errDiskFull)
	}
	if err := w.Close(); !errors.Is(err, errDiskFull) {
		t.Errorf("Close() = %v, want %v", err, errDiskFull)
	}
	if err := w.Close(); !errors.Is(err, errDiskFull) {
		t.Errorf("second Close() = %v, want %v", err, errDiskFull)
	}
	if w.OutputBytes() != 200 {
		t.Errorf("OutputBytes() = %d, want 200", w.OutputBytes())
	}
	// What was written before the error is a readable recording.
	readAll(t, fw.buf.String())
}

// TestConcurrent writes output and input from two goroutines, as a session
// does; run with -race.
func TestConcurrent(t *testing.T) {
	w, lw, clock := newTestWriter(t, Header{}, WriterOptions{})
	rng := rand.New(rand.NewPCG(1, 2))
	out := randomText(rng, 20000)
	in := randomText(rng, 5000)
	outChunks, inChunks := chunks(rng, out, 64), chunks(rng, in, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for _, c := range outChunks {
			w.Output(c)
			clock.Advance(time.Millisecond)
		}
	})
	wg.Go(func() {
		for _, c := range inChunks {
			w.Input(c)
			clock.Advance(time.Millisecond)
		}
	})
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lw.check(t)
	got, err := Output(strings.NewReader(lw.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, out) {
		t.Error("output does not round-trip with concurrent input")
	}
}

// TestAfterClose checks that events after Close are dropped.
func TestAfterClose(t *testing.T) {
	w, lw, _ := newTestWriter(t, Header{}, WriterOptions{})
	w.Output([]byte("before"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w.Output([]byte("after"))
	w.Marker("after")
	got, err := Output(strings.NewReader(lw.String()))
	if err != nil || string(got) != "before" {
		t.Errorf("Output = %q, %v; want \"before\", nil", got, err)
	}
}

// TestBigEvents checks that huge chunks, labels and headers still make
// lines the Reader accepts, and that big output still round-trips.
func TestBigEvents(t *testing.T) {
	big := bytes.Repeat([]byte("\x01é"), 400<<10) // 1.2 MiB, each \x01 escaped to 6 bytes
	w, lw, _ := newTestWriter(t, Header{Command: strings.Repeat("c", 5<<20), Title: "€" + strings.Repeat("t", 5<<20)}, WriterOptions{})
	w.Output(big)
	w.Marker(strings.Repeat("€", 2<<20))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lw.check(t)
	h, evs := readAll(t, lw.String())
	if len(h.Command) != maxHeaderField || !utf8.ValidString(h.Title) || len(h.Title) > maxHeaderField {
		t.Errorf("header command %d bytes, title %d bytes (valid UTF-8: %v); want them cut to %d", len(h.Command), len(h.Title), utf8.ValidString(h.Title), maxHeaderField)
	}
	var out []byte
	outputs := 0
	for _, ev := range evs {
		switch ev.Code {
		case CodeOutput:
			out = append(out, ev.Data...)
			outputs++
		case CodeMarker:
			if len(ev.Data) > maxEventData || !utf8.ValidString(ev.Data) {
				t.Errorf("marker of %d bytes, want at most %d of valid UTF-8", len(ev.Data), maxEventData)
			}
		}
	}
	if !bytes.Equal(out, big) {
		t.Error("big output does not round-trip")
	}
	if outputs != 3 {
		t.Errorf("%d output events, want 3", outputs)
	}
}
