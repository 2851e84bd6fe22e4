package recording

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"strconv"
	"unicode/utf8"
)

// MaxLine is the longest line a Reader accepts, in bytes: 4 MiB. A Writer
// writes one event per Output call, and terminal output arrives in chunks
// of a few KiB, so a longer line means a damaged or hostile file, which must
// not make the reader hold it all in memory.
const MaxLine = 4 << 20

// timeSlack is how much an event's time may be before the previous one's:
// times are written with six decimals.
const timeSlack = 1e-6

// Reader reads a recording in asciicast v2 format, event by event. It is
// not safe for concurrent use.
type Reader struct {
	sc   *bufio.Scanner
	h    Header
	line int     // number of the last line read, from 1
	last float64 // time of the last event
	err  error   // sticky: returned by every Next after the first error
}

// NewReader reads and checks the header line of a recording: it must be a
// JSON object with version 2 and a width and height from 1 to MaxDimension.
// Unknown header fields (idle_time_limit, theme, ...) are ignored.
func NewReader(r io.Reader) (*Reader, error) {
	sc := bufio.NewScanner(r)
	// Room for a line of MaxLine bytes and its "\r\n": a longer line
	// stops the Scanner with ErrTooLong instead of growing the buffer.
	sc.Buffer(make([]byte, 0, 4<<10), MaxLine+2)
	rd := &Reader{sc: sc}
	line, err := rd.readLine()
	if err == io.EOF {
		return nil, errors.New("read asciicast header: the recording is empty: expected a header line such as {\"version\": 2, \"width\": 80, \"height\": 24}")
	}
	if err != nil {
		return nil, fmt.Errorf("read asciicast header: %w", err)
	}
	h, err := parseHeader(line)
	if err != nil {
		return nil, fmt.Errorf("read asciicast header: line 1: %w", err)
	}
	rd.h = h
	return rd, nil
}

func parseHeader(line []byte) (Header, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Header{}, fmt.Errorf("not a JSON object (%s): this is not an asciicast v2 file", abbrev(line))
	}
	var probe struct {
		Version json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(line, &probe); err != nil {
		return Header{}, fmt.Errorf("not a valid JSON object: %v: this is not an asciicast v2 file (version 1 files are a single multi-line JSON document: convert them with asciinema)", err)
	}
	if probe.Version == nil {
		return Header{}, errors.New("no \"version\" field: this is not an asciicast v2 file")
	}
	if v := string(bytes.TrimSpace(probe.Version)); v != "2" {
		return Header{}, fmt.Errorf("asciicast version %s is not supported: only version 2 can be read", abbrev([]byte(v)))
	}
	var h Header
	if err := json.Unmarshal(line, &h); err != nil {
		return Header{}, fmt.Errorf("bad header field: %v", err)
	}
	if h.Width <= 0 || h.Width > MaxDimension || h.Height <= 0 || h.Height > MaxDimension {
		return Header{}, fmt.Errorf("terminal size %dx%d is out of range: width and height must be from 1 to %d", h.Width, h.Height, MaxDimension)
	}
	return h, nil
}

// Header returns the header of the recording.
func (r *Reader) Header() Header {
	h := r.h
	h.Env = maps.Clone(h.Env)
	return h
}

// Next returns the next event. It returns io.EOF after the last one, and
// an error naming the line ("line 7: ...") if the file is malformed: a line
// over MaxLine bytes, a line that is not a JSON array [time, code, data], a
// time that is not a number, is negative or is before the previous event's
// (by more than a microsecond), a code that is not a non-empty string, or
// data that is not a string. Blank lines are skipped. Every call after an
// error returns the same error.
func (r *Reader) Next() (Event, error) {
	if r.err != nil {
		return Event{}, r.err
	}
	for {
		line, err := r.readLine()
		if err != nil {
			r.err = err
			return Event{}, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		ev, err := r.parseEvent(line)
		if err != nil {
			r.err = fmt.Errorf("line %d: %w", r.line, err)
			return Event{}, r.err
		}
		return ev, nil
	}
}

// readLine returns the next line, without its line ending. The slice is
// valid until the next call.
func (r *Reader) readLine() ([]byte, error) {
	if !r.sc.Scan() {
		err := r.sc.Err()
		switch {
		case err == nil:
			return nil, io.EOF
		case errors.Is(err, bufio.ErrTooLong):
			return nil, fmt.Errorf("line %d: longer than %d bytes: the recording is damaged or not an asciicast v2 file", r.line+1, MaxLine)
		default:
			return nil, fmt.Errorf("line %d: read: %w", r.line+1, err)
		}
	}
	r.line++
	line := r.sc.Bytes()
	if len(line) > MaxLine {
		return nil, fmt.Errorf("line %d: longer than %d bytes: the recording is damaged or not an asciicast v2 file", r.line, MaxLine)
	}
	return line, nil
}

func (r *Reader) parseEvent(line []byte) (Event, error) {
	var elems []json.RawMessage
	if err := json.Unmarshal(line, &elems); err != nil {
		return Event{}, fmt.Errorf("not a JSON array [time, code, data]: %v", err)
	}
	if len(elems) != 3 {
		return Event{}, fmt.Errorf("event has %d elements, want 3: [time, code, data]", len(elems))
	}
	var ev Event
	rawTime := bytes.TrimSpace(elems[0])
	if len(rawTime) == 0 || !(rawTime[0] == '-' || rawTime[0] >= '0' && rawTime[0] <= '9') {
		return Event{}, fmt.Errorf("event time %s is not a number", abbrev(rawTime))
	}
	// Unmarshal checked the line, so rawTime is a JSON number, whose
	// syntax ParseFloat accepts as json.Unmarshal would.
	t, err := strconv.ParseFloat(string(rawTime), 64)
	if err != nil {
		return Event{}, fmt.Errorf("event time %s is out of range", abbrev(rawTime))
	}
	ev.Time = t
	switch {
	case math.IsNaN(ev.Time) || math.IsInf(ev.Time, 0):
		return Event{}, fmt.Errorf("event time %s is not finite", abbrev(rawTime))
	case ev.Time < 0:
		return Event{}, fmt.Errorf("event time %s is negative: times count seconds from the start", abbrev(rawTime))
	case ev.Time < r.last-timeSlack:
		return Event{}, fmt.Errorf("event time %s is before the previous event's %f: events must be in time order", abbrev(rawTime), r.last)
	}
	r.last = max(r.last, ev.Time)

	if err := unmarshalString(elems[1], &ev.Code); err != nil {
		return Event{}, fmt.Errorf("event code: %w", err)
	}
	if ev.Code == "" {
		return Event{}, errors.New("event code is empty: want \"o\", \"i\", \"r\" or \"m\"")
	}
	if err := unmarshalString(elems[2], &ev.Data); err != nil {
		return Event{}, fmt.Errorf("event data: %w", err)
	}
	return ev, nil
}

// unmarshalString decodes a JSON string element of a line that
// json.Unmarshal has checked. Unlike json.Unmarshal it refuses null, which
// would leave s unchanged without an error.
func unmarshalString(raw json.RawMessage, s *string) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '"' {
		return fmt.Errorf("%s is not a string", abbrev(raw))
	}
	// Most strings have no escapes: take them as they are, as
	// json.Unmarshal would, but without its reflection.
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		*s = string(inner)
		return nil
	}
	return json.Unmarshal(raw, s)
}

// abbrev returns b for an error message: cut to 40 bytes, and quoted if
// it holds anything but printable ASCII.
func abbrev(b []byte) string {
	const n = 40
	suffix := ""
	if len(b) > n {
		b, suffix = b[:n], "..."
	}
	for _, c := range b {
		if c < ' ' || c > '~' {
			return strconv.Quote(string(b)) + suffix
		}
	}
	if len(b) == 0 {
		return "(nothing)"
	}
	return string(b) + suffix
}

// Output reads a whole recording from r and returns the data of its output
// events ("o") concatenated: the bytes the terminal received. On a
// malformed recording it returns the output before the bad line and the
// error.
func Output(r io.Reader) ([]byte, error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		ev, err := rd.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if ev.Code == CodeOutput {
			out = append(out, ev.Data...)
		}
	}
}
