package recording

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Limits and defaults of the format as this package writes and reads it.
const (
	// DefaultLimit is the size limit of a recording when
	// WriterOptions.Limit is 0: 256 MiB, hours of a busy terminal.
	DefaultLimit int64 = 256 << 20
	// DefaultWidth and DefaultHeight are the terminal size written in the
	// header when the caller does not know it: the classic VT100 80x24.
	DefaultWidth  = 80
	DefaultHeight = 24
	// maxEventData is the most bytes of data one event carries: a longer
	// Output or Input is split into several events, a longer marker label
	// cut. JSON escaping makes a control byte six bytes long ("\u0001"),
	// so lines stay well under MaxLine.
	maxEventData = 512 << 10
	// maxHeaderField is the longest command, title or environment value
	// kept in the header; a longer one is cut.
	maxHeaderField = 64 << 10
	// MaxDimension is the largest width or height a header may have. The
	// Writer clamps to it and the Reader refuses more: no real terminal is
	// that large, and players allocate a screen of width*height cells.
	MaxDimension = 10000
)

// Event codes of asciicast v2.
const (
	CodeOutput = "o" // bytes the program wrote to the terminal
	CodeInput  = "i" // bytes the user typed
	CodeResize = "r" // the terminal was resized; data is "COLSxROWS"
	CodeMarker = "m" // a marker (chapter) with a label
)

// Header is the first line of an asciicast v2 file.
type Header struct {
	// Version is the format version, always 2.
	Version int `json:"version"`
	// Width and Height are the terminal's size in columns and rows when
	// the recording starts.
	Width  int `json:"width"`
	Height int `json:"height"`
	// Timestamp is the start of the recording in Unix seconds.
	Timestamp int64 `json:"timestamp,omitempty"`
	// Command is the command that was run, empty for a login shell.
	Command string `json:"command,omitempty"`
	// Title is a title for players to show.
	Title string `json:"title,omitempty"`
	// Env holds the environment variables players care about: TERM and
	// SHELL.
	Env map[string]string `json:"env,omitempty"`
}

// Event is one event line of an asciicast v2 file: [time, code, data].
type Event struct {
	// Time is the number of seconds since the start of the recording.
	Time float64
	// Code is CodeOutput, CodeInput, CodeResize or CodeMarker. A Reader
	// passes on other codes as it finds them; players ignore them.
	Code string
	// Data is the output or input (UTF-8 text), the new size "COLSxROWS",
	// or the marker's label.
	Data string
}

// WriterOptions tunes a Writer. The zero value is ready to use.
type WriterOptions struct {
	// Now returns the current time; nil means time.Now. Tests pass a fake
	// clock.
	Now func() time.Time
	// Limit is the most bytes the Writer writes, header included; 0 or
	// less means DefaultLimit. When an event would go over it, the Writer
	// writes one marker event saying so instead (the only line allowed to
	// go over the limit, by about 100 bytes) and drops every later event.
	Limit int64
}

// Writer writes one recording in asciicast v2 format. Output and input
// usually come from different goroutines: all methods are safe for
// concurrent use.
//
// Events are written to the underlying io.Writer at once, one complete
// line per Write call, so that a recording cut short by a crash is still
// readable up to its last line. The Writer does not buffer; give it a
// buffered writer if many small events are expected and crash safety
// matters less.
//
// A Writer never panics and never blocks on its own: after the first write
// error, or after the size limit, it drops events and counts bytes only.
type Writer struct {
	now   func() time.Time
	start time.Time
	limit int64

	mu        sync.Mutex // guards following
	w         io.Writer
	written   int64
	last      float64 // time of the last event, seconds
	err       error   // first write error
	truncated bool
	closed    bool
	out, in   stream
	outBytes  int64
	inBytes   int64
	line      bytes.Buffer  // the event being encoded
	enc       *json.Encoder // JSON strings into line, without HTML escaping
}

// NewWriter writes the header line of a recording to w and returns a Writer
// for its events. Event times are measured from start.
//
// The header is h with Version set to 2, a Width or Height of 0 or less
// replaced by 80x24, one over MaxDimension clamped to it, a zero Timestamp
// set to start (when start is not zero), and Command, Title and Env values
// cut to 64 KiB.
func NewWriter(w io.Writer, h Header, start time.Time, opts WriterOptions) (*Writer, error) {
	if w == nil {
		return nil, errors.New("new recording writer: the io.Writer is nil: pass the file or stream to record to")
	}
	h.Version = 2
	h.Width = clampDimension(h.Width, DefaultWidth)
	h.Height = clampDimension(h.Height, DefaultHeight)
	if h.Timestamp == 0 && !start.IsZero() {
		h.Timestamp = start.Unix()
	}
	h.Command = cutUTF8(h.Command, maxHeaderField)
	h.Title = cutUTF8(h.Title, maxHeaderField)
	if h.Env != nil {
		env := make(map[string]string, len(h.Env))
		for k, v := range h.Env {
			env[cutUTF8(k, maxHeaderField)] = cutUTF8(v, maxHeaderField)
		}
		h.Env = env
	}
	rw := &Writer{
		now:   opts.Now,
		start: start,
		limit: opts.Limit,
		w:     w,
	}
	if rw.now == nil {
		rw.now = time.Now
	}
	if rw.limit <= 0 {
		rw.limit = DefaultLimit
	}
	rw.enc = json.NewEncoder(&rw.line)
	rw.enc.SetEscapeHTML(false)

	if err := rw.enc.Encode(h); err != nil {
		// Only an unencodable value fails here, and Header has none.
		return nil, fmt.Errorf("encode asciicast header: %w", err)
	}
	if err := rw.writeLine(); err != nil {
		return nil, fmt.Errorf("write asciicast header: %w", err)
	}
	return rw, nil
}

func clampDimension(n, def int) int {
	switch {
	case n <= 0:
		return def
	case n > MaxDimension:
		return MaxDimension
	}
	return n
}

// Output records p as an output event ("o"): bytes the program wrote to the
// terminal. See the package comment for how UTF-8 split across calls and
// invalid UTF-8 are handled.
func (w *Writer) Output(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.outBytes += int64(len(p))
	w.text(&w.out, CodeOutput, p)
}

// Input records p as an input event ("i"): bytes the user typed. It keeps
// its own incomplete UTF-8 sequence, apart from Output's.
func (w *Writer) Input(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inBytes += int64(len(p))
	w.text(&w.in, CodeInput, p)
}

// Resize records a resize event ("r") with data "COLSxROWS". A size with
// cols or rows of 0 or less means nothing to a player and is dropped.
func (w *Writer) Resize(cols, rows int) {
	if cols <= 0 || rows <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.event(CodeResize, strconv.Itoa(cols)+"x"+strconv.Itoa(rows))
}

// Marker records a marker event ("m") with label, which players show as a
// chapter. An empty label is allowed (asciinema writes such markers);
// invalid UTF-8 in label becomes U+FFFD, and a label over 512 KiB is cut.
func (w *Writer) Marker(label string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.event(CodeMarker, cutUTF8(validString([]byte(label)), maxEventData))
}

// Close writes out the incomplete UTF-8 sequences still held for output and
// input, each byte as U+FFFD, and drops every later event. It does not
// close the underlying io.Writer. It returns the first write error, as Err
// does; calling it again does no harm.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.flushHeld(&w.out, CodeOutput)
		w.flushHeld(&w.in, CodeInput)
		w.closed = true
	}
	return w.err
}

// Err returns the first error the underlying io.Writer returned, or nil.
// Events after that error are dropped.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Truncated reports whether the size limit was reached: the recording ends
// with a marker saying so and later events were dropped.
func (w *Writer) Truncated() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.truncated
}

// OutputBytes returns the number of bytes given to Output, including any
// dropped after the limit, an error or Close.
func (w *Writer) OutputBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.outBytes
}

// InputBytes returns the number of bytes given to Input, including any
// dropped after the limit, an error or Close.
func (w *Writer) InputBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inBytes
}

// stream holds the incomplete UTF-8 sequence at the end of the last chunk
// of one stream (output or input), to be put in front of the next chunk.
type stream struct {
	held [utf8.UTFMax - 1]byte
	n    int
}

// take returns the held bytes followed by p, less a trailing incomplete
// UTF-8 sequence, which it holds instead.
func (s *stream) take(p []byte) []byte {
	buf := p
	if s.n > 0 {
		buf = make([]byte, 0, s.n+len(p))
		buf = append(buf, s.held[:s.n]...)
		buf = append(buf, p...)
	}
	k := incompleteTail(buf)
	s.n = copy(s.held[:], buf[len(buf)-k:])
	return buf[:len(buf)-k]
}

// incompleteTail returns the length of the incomplete but so far valid
// UTF-8 sequence at the end of b: 0 to 3 bytes.
func incompleteTail(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
		c := b[i]
		if c < utf8.RuneSelf {
			return 0 // ASCII ends any sequence
		}
		if c >= 0xC0 { // a leading byte
			// FullRune is true for a complete sequence and for one that
			// is already invalid (wrong second or third byte): both are
			// written now.
			if utf8.FullRune(b[i:]) {
				return 0
			}
			return len(b) - i
		}
		// A continuation byte: look for its leading byte.
	}
	return 0
}

// validString returns p as a string with each byte that is not part of a
// valid UTF-8 sequence replaced by U+FFFD.
func validString(p []byte) string {
	if utf8.Valid(p) {
		return string(p)
	}
	out := make([]byte, 0, len(p)+8)
	for len(p) > 0 {
		r, size := utf8.DecodeRune(p)
		if r == utf8.RuneError && size == 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
		} else {
			out = append(out, p[:size]...)
		}
		p = p[size:]
	}
	return string(out)
}

// text writes an output or input event for p. w.mu must be held.
func (w *Writer) text(s *stream, code string, p []byte) {
	if w.dropping() {
		return
	}
	data := validString(s.take(p))
	for len(data) > 0 {
		part := cutUTF8(data, maxEventData)
		w.event(code, part)
		data = data[len(part):]
	}
}

// cutUTF8 returns the longest prefix of s of at most n bytes that does not
// end inside a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	if i == 0 { // not UTF-8 at all: cut anywhere rather than return nothing
		i = n
	}
	return s[:i]
}

// flushHeld writes the bytes s holds as U+FFFD, one per byte: a stream
// that ends inside a UTF-8 sequence is invalid there. w.mu must be held.
func (w *Writer) flushHeld(s *stream, code string) {
	if s.n == 0 {
		return
	}
	n := s.n
	s.n = 0
	data := make([]byte, 0, n*utf8.RuneLen(utf8.RuneError))
	for range n {
		data = utf8.AppendRune(data, utf8.RuneError)
	}
	w.event(code, string(data))
}

// dropping reports whether events are dropped. w.mu must be held.
func (w *Writer) dropping() bool {
	return w.err != nil || w.truncated || w.closed
}

// event writes one event line, or the truncation marker when the line
// would go over the limit. w.mu must be held.
func (w *Writer) event(code, data string) {
	if w.dropping() {
		return
	}
	t := w.elapsed()
	w.encodeEvent(t, code, data)
	if w.written+int64(w.line.Len()) > w.limit {
		w.truncated = true
		w.encodeEvent(t, CodeMarker, fmt.Sprintf("recording truncated: limit of %d bytes reached", w.limit))
	}
	w.err = w.writeLine()
}

// elapsed returns the seconds since the start, never less than the time of
// the previous event, so that a clock stepping back cannot make the file
// unreadable. w.mu must be held.
func (w *Writer) elapsed() float64 {
	t := w.now().Sub(w.start).Seconds()
	if !(t > w.last) { // also catches NaN, which Seconds never returns
		t = w.last
	}
	w.last = t
	return t
}

// encodeEvent puts the line [t, code, data] into w.line. The time has six
// decimals as asciinema writes it; rounding is monotonic, so times stay in
// order. w.mu must be held.
func (w *Writer) encodeEvent(t float64, code, data string) {
	w.line.Reset()
	w.line.WriteByte('[')
	w.line.Write(strconv.AppendFloat(w.line.AvailableBuffer(), t, 'f', 6, 64))
	w.line.WriteString(", ")
	w.encodeString(code)
	w.line.WriteString(", ")
	w.encodeString(data)
	w.line.WriteString("]\n")
}

// encodeString appends s to w.line as a JSON string, without escaping <, >
// and &. w.mu must be held.
func (w *Writer) encodeString(s string) {
	// Encoding a string cannot fail.
	_ = w.enc.Encode(s)
	w.line.Truncate(w.line.Len() - 1) // Encode's newline
}

// writeLine writes w.line with one Write call. w.mu must be held.
func (w *Writer) writeLine() error {
	n, err := w.w.Write(w.line.Bytes())
	w.written += int64(n)
	if err == nil && n < w.line.Len() {
		err = io.ErrShortWrite
	}
	return err
}
