package recording

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// t0 is the start of every test recording.
var t0 = time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// lineWriter collects what a Writer writes and checks that every Write
// call is exactly one complete line.
type lineWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	bad []string
}

func (lw *lineWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if len(p) == 0 || p[len(p)-1] != '\n' || bytes.Count(p, []byte("\n")) != 1 {
		lw.bad = append(lw.bad, string(p))
	}
	return lw.buf.Write(p)
}

// check fails t if any Write was not one complete line.
func (lw *lineWriter) check(t *testing.T) {
	t.Helper()
	lw.mu.Lock()
	defer lw.mu.Unlock()
	for _, b := range lw.bad {
		t.Errorf("Write call was not one complete line: %q", b)
	}
}

func (lw *lineWriter) String() string {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.buf.String()
}

// failWriter accepts ok bytes, then fails.
type failWriter struct {
	ok  int
	buf bytes.Buffer
}

var errDiskFull = errors.New("disk full")

func (fw *failWriter) Write(p []byte) (int, error) {
	if fw.buf.Len()+len(p) > fw.ok {
		return 0, errDiskFull
	}
	return fw.buf.Write(p)
}

// newTestWriter returns a Writer on a lineWriter with a fake clock.
func newTestWriter(t *testing.T, h Header, opts WriterOptions) (*Writer, *lineWriter, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	lw := &lineWriter{}
	w, err := NewWriter(lw, h, t0, opts)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	return w, lw, clock
}

// readAll reads a whole recording, failing t on any error.
func readAll(t *testing.T, file string) (Header, []Event) {
	t.Helper()
	rd, err := NewReader(strings.NewReader(file))
	if err != nil {
		t.Fatalf("NewReader: %v\nfile:\n%s", err, file)
	}
	var evs []Event
	for {
		ev, err := rd.Next()
		if err != nil {
			if err != io.EOF {
				t.Fatalf("Next: %v\nfile:\n%s", err, file)
			}
			return rd.Header(), evs
		}
		evs = append(evs, ev)
	}
}

// textPieces are what random terminal output is made of: ASCII, escape
// sequences, line ends, characters of 2, 3 and 4 bytes, and characters
// JSON must escape or must not HTML-escape.
var textPieces = []string{
	"a", "Z", "hello world", "$ ", "\r\n", "\n", "\r", "\t", "\b",
	"\x1b[31m", "\x1b[0m", "\x1b]0;title\x07", "\x1b[?1049h",
	"é", "ß", "ñ", "€", "中文", "ア", "😀", "𝄞", "🇩🇪",
	`"`, `\`, "<b>&amp;</b>", "\x00", "\x7f", "\u2028", "\u00a0", "\ufeff", "\uffff",
	"\U0010ffff",
}

// randomText returns about n bytes of valid UTF-8 terminal output.
func randomText(rng *rand.Rand, n int) []byte {
	var b []byte
	for len(b) < n {
		b = append(b, textPieces[rng.IntN(len(textPieces))]...)
	}
	return b
}

// chunks splits b into chunks of 1 to maxSize bytes, cutting anywhere,
// also inside characters.
func chunks(rng *rand.Rand, b []byte, maxSize int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(1+rng.IntN(maxSize), len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}
