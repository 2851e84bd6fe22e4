package recording

import (
	"bytes"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzReader checks that no input makes the Reader panic or loop: when the
// header is accepted, Next ends with an error (io.EOF or another) within
// one call per line, and the events it returns keep the format's rules.
func FuzzReader(f *testing.F) {
	f.Add([]byte(playFile))
	f.Add([]byte(validHeader + "\n" + `[0.1, "o", "\u001b[1mhi\r\n"]` + "\n" + `[0.2, "r", "1x1"]`))
	f.Add([]byte(""))
	f.Add([]byte("\n\n\n"))
	f.Add([]byte(`{"version": 1, "width": 80, "height": 24}`))
	f.Add([]byte(`{"version": 2, "width": 80, "height": 24}` + "\n" + `[1, "o"]`))
	f.Add([]byte(`{"version": 2, "width": 80, "height": 24}` + "\n" + `[1, "o", "x"]` + "\n" + `[0.5, "o", "y"]`))
	f.Add([]byte(`{"version": 2, "width": 80, "height": 24}` + "\n" + `[-1, "", null]`))
	f.Add([]byte(`{"version": 2, "width": 80, "height": 24}` + "\n" + "[1e999, \"o\", \"\xff\"]"))
	f.Add([]byte("[0.1, \"o\", \"x\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data))
		if err != nil {
			if rd != nil {
				t.Fatal("NewReader returned a Reader and an error")
			}
			return
		}
		if h := rd.Header(); h.Width <= 0 || h.Height <= 0 || h.Width > MaxDimension || h.Height > MaxDimension {
			t.Fatalf("accepted header %+v", h)
		}
		maxCalls := bytes.Count(data, []byte("\n")) + 2
		last := 0.0
		for range maxCalls {
			ev, err := rd.Next()
			if err != nil {
				if err != io.EOF && !strings.HasPrefix(err.Error(), "line ") {
					t.Fatalf("error %q does not name the line", err)
				}
				return
			}
			if ev.Code == "" || ev.Time < 0 || ev.Time < last-timeSlack {
				t.Fatalf("accepted event %+v after time %v", ev, last)
			}
			last = max(last, ev.Time)
		}
		t.Fatalf("Next did not end after %d calls", maxCalls)
	})
}

// FuzzWriterRoundTrip writes data as output (and input) in chunks chosen
// by split, and checks that the recording parses and that Output returns
// data byte for byte if it is valid UTF-8, and with each invalid byte
// replaced by U+FFFD otherwise, however it was chunked.
func FuzzWriterRoundTrip(f *testing.F) {
	f.Add([]byte("hello, world\r\n"), uint8(0))
	f.Add([]byte("\x1b[31mé€😀𝄞\x1b[0m\r\n<&>\"\\"), uint8(1))
	f.Add([]byte("中文テキスト🇩🇪"), uint8(3))
	f.Add([]byte("\xff\xfe\xc0\x80\xed\xa0\x80\xe2\x82"), uint8(7))
	f.Add([]byte("\xf0\x9f\x98"), uint8(200))
	f.Add([]byte(""), uint8(9))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		// Longer inputs find nothing more (a character is at most 4 bytes,
		// a chunk at most 64) and make each run, and minimizing, slow.
		if len(data) > 512 {
			return
		}
		rng := rand.New(rand.NewPCG(uint64(split), 1))
		maxChunk := 1 + int(split)%64
		clock := newFakeClock()
		var buf bytes.Buffer
		w, err := NewWriter(&buf, Header{}, t0, WriterOptions{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		outChunks := chunks(rng, data, maxChunk)
		inChunks := chunks(rng, data, 1+maxChunk/2)
		for i := range max(len(outChunks), len(inChunks)) {
			if i < len(outChunks) {
				w.Output(outChunks[i])
			}
			if i < len(inChunks) {
				w.Input(inChunks[i])
			}
			clock.Advance(time.Duration(rng.Int64N(1e9)))
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		want := []byte(validString(data))
		if utf8.Valid(data) && !bytes.Equal(want, data) {
			t.Fatalf("validString changed valid UTF-8 %q to %q", data, want)
		}

		rd, err := NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("NewReader: %v", err)
		}
		var out, in []byte
		for {
			ev, err := rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Next: %v\n%s", err, buf.Bytes())
			}
			if ev.Data == "" {
				t.Fatalf("event with empty data: %+v", ev)
			}
			switch ev.Code {
			case CodeOutput:
				out = append(out, ev.Data...)
			case CodeInput:
				in = append(in, ev.Data...)
			default:
				t.Fatalf("unexpected event %+v", ev)
			}
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("output %q, want %q", out, want)
		}
		if !bytes.Equal(in, want) {
			t.Fatalf("input %q, want %q", in, want)
		}
	})
}
