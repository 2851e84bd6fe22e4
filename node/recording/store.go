package recording

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
)

// ErrNotFound is returned (wrapped) by Store.Get, Open and Remove when the
// store has no recording with that session id.
var ErrNotFound = errors.New("recording not found")

const (
	// IndexFile is the name of the store's index in its directory.
	IndexFile = "index.jsonl"
	// castExt ends every recording's file name.
	castExt = ".cast"
	// maxIndexLine is the longest index line written or read: a Meta is
	// a few hundred bytes, unless its command is huge.
	maxIndexLine = 1 << 20
	// maxSessionLen is the longest session id.
	maxSessionLen = 64
	// markerSlack is how far over its limit a Writer may go: the one
	// truncation marker line, about 100 bytes.
	markerSlack = 256
)

// Meta describes one recording in a store's index.
type Meta struct {
	// Session is the session id, which names the file.
	Session string `json:"session"`
	// User is the Jumpgate user; Login the OS user on the node.
	User  string `json:"user"`
	Login string `json:"login"`
	// Node is the node the session ran on.
	Node string `json:"node"`
	// Command is the command run, "" for an interactive shell.
	Command string `json:"command,omitempty"`
	// Start and End are when the session started and ended, in UTC. End
	// is zero while the session runs.
	Start time.Time `json:"start"`
	End   time.Time `json:"end,omitzero"`
	// Cols and Rows are the terminal size at the start.
	Cols int `json:"cols"`
	Rows int `json:"rows"`
	// Bytes is the size of the .cast file.
	Bytes int64 `json:"bytes"`
	// Output and Input are the bytes of terminal output and input the
	// session produced, including any dropped after the size limit.
	Output int64 `json:"output_bytes"`
	Input  int64 `json:"input_bytes"`
	// Truncated is set when the recording reached its size limit.
	Truncated bool `json:"truncated,omitempty"`
	// File is the file name in the store's directory: SESSION.cast.
	File string `json:"file"`
}

// indexLine is one line of the index: a Meta, or a tombstone when Removed
// is set.
type indexLine struct {
	Meta
	Removed bool `json:"removed,omitempty"`
}

// IndexStats counts what ListWithStats read from the index.
type IndexStats struct {
	// Lines is the number of non-blank lines.
	Lines int
	// Malformed is the number of lines skipped: not a JSON object, a
	// missing or invalid session id, or over 1 MiB. A crash in the middle
	// of an append leaves one such line.
	Malformed int
}

// Store keeps recordings in one directory: a SESSION.cast file (mode 0600)
// per recording and the index, index.jsonl. See the package comment for
// the index's format.
//
// A Store is safe for concurrent use. Only one Store (and one process)
// should use a directory at a time: the refusal to overwrite a recording
// relies on it.
type Store struct {
	dir string

	mu     sync.Mutex      // guards following; held while appending to the index and while placing files
	active map[string]bool // sessions being written by a Recording
}

// OpenStore opens the store in dir, creating dir with mode 0700 if it does
// not exist.
func OpenStore(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open recording store: no directory given: set the recordings directory in the configuration")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open recording store: create directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open recording store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open recording store: %s is not a directory: point the recordings directory elsewhere", dir)
	}
	return &Store{dir: dir, active: make(map[string]bool)}, nil
}

// CheckSession returns an error unless id can be a session id of a store:
// 1 to 64 letters, digits, '.', '_' and '-', not starting with '.'. The id
// names a file, so this keeps paths such as "../x" out.
func CheckSession(id string) error {
	if id == "" {
		return errors.New("session id is empty: every recording needs its session's id")
	}
	if len(id) > maxSessionLen {
		return fmt.Errorf("session id %q... is %d bytes long: at most %d are allowed", id[:16], len(id), maxSessionLen)
	}
	if id[0] == '.' {
		return fmt.Errorf("session id %q starts with '.': ids must start with a letter, digit, '_' or '-'", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		case c >= utf8.RuneSelf:
			return fmt.Errorf("session id %q has the non-ASCII byte 0x%02x: only letters, digits, '.', '_' and '-' are allowed", id, c)
		default:
			return fmt.Errorf("session id %q has the character %q: only letters, digits, '.', '_' and '-' are allowed", id, rune(c))
		}
	}
	return nil
}

func (s *Store) castPath(session string) string {
	return filepath.Join(s.dir, session+castExt)
}

// Recording is a recording being written to a store: a Writer whose file
// and index line Finish completes. Call Finish, not Close, when the session
// ends.
type Recording struct {
	*Writer
	store *Store
	f     *os.File

	mu       sync.Mutex // guards following
	meta     Meta
	finished bool
	err      error
}

// Create starts a recording for the session m.Session: it creates
// SESSION.cast (refusing if it exists), writes the header and appends the
// start line (End zero) to the index.
//
// m.Start is the start of the recording (now if zero). The header's
// Width, Height and Command default to m.Cols, m.Rows and m.Command, and
// m.Cols and m.Rows to the header's size. m.File is set; m.End, Bytes,
// Output, Input and Truncated are left to Finish.
func (s *Store) Create(m Meta, h Header, opts WriterOptions) (*Recording, error) {
	if err := CheckSession(m.Session); err != nil {
		return nil, fmt.Errorf("create recording: %w", err)
	}
	start := m.Start
	if start.IsZero() {
		now := opts.Now
		if now == nil {
			now = time.Now
		}
		start = now()
	}
	if h.Width <= 0 {
		h.Width = m.Cols
	}
	if h.Height <= 0 {
		h.Height = m.Rows
	}
	h.Width = clampDimension(h.Width, DefaultWidth)
	h.Height = clampDimension(h.Height, DefaultHeight)
	if h.Command == "" {
		h.Command = m.Command
	}
	if m.Cols <= 0 {
		m.Cols = h.Width
	}
	if m.Rows <= 0 {
		m.Rows = h.Height
	}
	m.Start = start.UTC()
	m.End = time.Time{}
	m.File = m.Session + castExt
	m.Output, m.Input, m.Truncated = 0, 0, false

	s.mu.Lock()
	defer s.mu.Unlock()
	path := s.castPath(m.Session)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create recording %s: %s already exists: session ids must be unique, so this one was reused", m.Session, path)
	}
	if err != nil {
		return nil, fmt.Errorf("create recording %s: %w", m.Session, err)
	}
	fail := func(err error) (*Recording, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create recording %s: %w", m.Session, err)
	}
	w, err := NewWriter(f, h, start, opts)
	if err != nil {
		return fail(err)
	}
	m.Bytes = w.size()
	if err := s.appendIndex(indexLine{Meta: m}); err != nil {
		return fail(err)
	}
	s.active[m.Session] = true
	return &Recording{Writer: w, store: s, f: f, meta: m}, nil
}

// size returns the number of bytes written.
func (w *Writer) size() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written
}

// Finish ends the recording at end (now if zero): it closes the Writer,
// syncs and closes the file, and appends the final index line with End,
// Bytes, Output, Input and Truncated filled in. It returns that Meta and
// any error from writing the recording or the index; the line is appended
// even when the recording had a write error, as the file holds what was
// written. A second call returns the same Meta and error.
func (r *Recording) Finish(end time.Time) (Meta, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished {
		return r.meta, r.err
	}
	r.finished = true

	m := r.meta
	var errs []error
	if err := r.Writer.Close(); err != nil {
		errs = append(errs, fmt.Errorf("write %s: %w", m.File, err))
	}
	if err := r.f.Sync(); err != nil {
		errs = append(errs, fmt.Errorf("sync %s: %w", m.File, err))
	}
	if err := r.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close %s: %w", m.File, err))
	}
	if end.IsZero() {
		end = time.Now()
	}
	m.End = end.UTC()
	m.Bytes = r.Writer.size()
	m.Output = r.Writer.OutputBytes()
	m.Input = r.Writer.InputBytes()
	m.Truncated = r.Writer.Truncated()

	s := r.store
	s.mu.Lock()
	if err := s.appendIndex(indexLine{Meta: m}); err != nil {
		errs = append(errs, err)
	}
	delete(s.active, m.Session)
	s.mu.Unlock()

	r.meta = m
	if err := errors.Join(errs...); err != nil {
		r.err = fmt.Errorf("finish recording %s: %w", m.Session, err)
	}
	return r.meta, r.err
}

// appendIndex appends one line to the index with a single Write call to a
// file opened with O_APPEND, and syncs it. If the index does not end with
// a newline (a crash cut the last append short), the line starts with one,
// so the damage stays on one malformed line. s.mu must be held.
func (s *Store) appendIndex(l indexLine) error {
	b, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("encode index line for %s: %w", l.Session, err)
	}
	if len(b) > maxIndexLine {
		return fmt.Errorf("index line for %s is %d bytes, over the limit of %d: shorten the command or the names", l.Session, len(b), maxIndexLine)
	}
	path := filepath.Join(s.dir, IndexFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open index: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat index: %w", err)
	}
	line := make([]byte, 0, len(b)+2)
	if fi.Size() > 0 {
		var last [1]byte
		if _, err := f.ReadAt(last[:], fi.Size()-1); err != nil {
			return fmt.Errorf("read end of index: %w", err)
		}
		if last[0] != '\n' {
			line = append(line, '\n')
		}
	}
	line = append(line, b...)
	line = append(line, '\n')
	if _, err := f.Write(line); err != nil {
		return fmt.Errorf("append to index %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync index %s: %w", path, err)
	}
	return f.Close()
}

// List returns the recordings in the index, the last line of each session
// winning, without removed ones, sorted by Start and then Session.
// Malformed lines are skipped; ListWithStats counts them.
func (s *Store) List() ([]Meta, error) {
	ms, _, err := s.ListWithStats()
	return ms, err
}

// ListWithStats is List, also returning how many index lines it read and
// skipped as malformed.
func (s *Store) ListWithStats() ([]Meta, IndexStats, error) {
	entries, stats, err := s.readIndex()
	if err != nil {
		return nil, stats, err
	}
	ms := make([]Meta, 0, len(entries))
	for _, l := range entries {
		if !l.Removed {
			ms = append(ms, l.Meta)
		}
	}
	slices.SortFunc(ms, func(a, b Meta) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.Session, b.Session)
	})
	return ms, stats, nil
}

// readIndex reads the index into the last line of each session.
func (s *Store) readIndex() (map[string]indexLine, IndexStats, error) {
	var stats IndexStats
	entries := make(map[string]indexLine)
	f, err := os.Open(filepath.Join(s.dir, IndexFile))
	if errors.Is(err, fs.ErrNotExist) {
		return entries, stats, nil
	}
	if err != nil {
		return nil, stats, fmt.Errorf("read recording index: %w", err)
	}
	defer f.Close()
	err = forEachLine(f, maxIndexLine, func(line []byte, tooLong bool) {
		if !tooLong && len(bytes.TrimSpace(line)) == 0 {
			return
		}
		stats.Lines++
		var l indexLine
		if tooLong || json.Unmarshal(line, &l) != nil || CheckSession(l.Session) != nil {
			stats.Malformed++
			return
		}
		entries[l.Session] = l
	})
	if err != nil {
		return nil, stats, fmt.Errorf("read recording index: %w", err)
	}
	return entries, stats, nil
}

// forEachLine calls fn for each line of r, without its newline. A line
// longer than max bytes is passed as nil with tooLong set, after reading
// past it with bounded memory.
func forEachLine(r io.Reader, max int, fn func(line []byte, tooLong bool)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	tooLong := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > max+1 { // +1: the newline
				tooLong, line = true, line[:0]
			} else {
				line = append(line, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if len(line) > 0 || tooLong {
			line = bytes.TrimSuffix(line, []byte("\n"))
			if tooLong || len(line) > max {
				fn(nil, true)
			} else {
				fn(line, false)
			}
		}
		line, tooLong = line[:0], false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Get returns the index entry of session, or an error wrapping ErrNotFound.
func (s *Store) Get(session string) (Meta, error) {
	if err := CheckSession(session); err != nil {
		return Meta{}, fmt.Errorf("get recording: %w", err)
	}
	entries, _, err := s.readIndex()
	if err != nil {
		return Meta{}, err
	}
	l, ok := entries[session]
	if !ok || l.Removed {
		return Meta{}, fmt.Errorf("session %s: %w: check the session id, or the recording was removed", session, ErrNotFound)
	}
	return l.Meta, nil
}

// Open returns the .cast file of session for reading, and its index entry.
// A recording still being written can be opened; its file grows. The
// caller closes the file.
func (s *Store) Open(session string) (io.ReadCloser, Meta, error) {
	m, err := s.Get(session)
	if err != nil {
		return nil, Meta{}, err
	}
	f, err := os.Open(s.castPath(session))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Meta{}, fmt.Errorf("recording %s is in the index but its file is missing: %w", session, ErrNotFound)
	}
	if err != nil {
		return nil, Meta{}, fmt.Errorf("open recording %s: %w", session, err)
	}
	return f, m, nil
}

// Put stores a complete recording read from r, such as a node's upload to
// an auth server. It copies r to a temporary file in the store's directory
// while checking it all with NewReader and Next, then renames it to
// SESSION.cast and appends m to the index, with m.File and m.Bytes set,
// Start and End in UTC, and Cols, Rows and a zero Start taken from the
// header. A malformed recording, or one over the limit, is refused with an
// error saying why, and leaves nothing behind.
//
// limit is the Writer's limit the recording was made with (DefaultLimit if
// 0 or less): Put accepts what such a Writer writes, which may go over
// limit by one truncation marker line.
//
// Put can be retried: if SESSION.cast exists with the same content, Put
// returns its index entry (appending m if the index lacks it). If it exists
// with other content, Put returns an error and changes nothing.
func (s *Store) Put(m Meta, r io.Reader, limit int64) (Meta, error) {
	if err := CheckSession(m.Session); err != nil {
		return Meta{}, fmt.Errorf("store recording: %w", err)
	}
	if limit <= 0 {
		limit = DefaultLimit
	}
	limit = min(limit, math.MaxInt64-markerSlack-1) // no overflow below
	tmp, err := os.CreateTemp(s.dir, ".put-*.tmp")
	if err != nil {
		return Meta{}, fmt.Errorf("store recording %s: %w", m.Session, err)
	}
	tmpName := tmp.Name()
	placed := false
	defer func() {
		if !placed {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()

	lr := &sizeLimitReader{r: r, left: limit + markerSlack}
	tw := &stickyWriter{w: tmp}
	h, err := checkRecording(io.TeeReader(lr, tw))
	if tw.err != nil {
		return Meta{}, fmt.Errorf("store recording %s: write temporary file: %w", m.Session, tw.err)
	}
	if lr.over {
		return Meta{}, fmt.Errorf("store recording %s: it is larger than %d bytes (the limit of %d and room for a truncation marker): raise the recording size limit, or keep the file elsewhere", m.Session, limit+markerSlack, limit)
	}
	if err != nil {
		return Meta{}, fmt.Errorf("store recording %s: not a valid asciicast v2 recording, nothing stored: %w", m.Session, err)
	}
	if err := tmp.Sync(); err != nil {
		return Meta{}, fmt.Errorf("store recording %s: sync: %w", m.Session, err)
	}
	if err := tmp.Close(); err != nil {
		return Meta{}, fmt.Errorf("store recording %s: close: %w", m.Session, err)
	}

	if m.Cols <= 0 {
		m.Cols = h.Width
	}
	if m.Rows <= 0 {
		m.Rows = h.Height
	}
	if m.Start.IsZero() && h.Timestamp != 0 {
		m.Start = time.Unix(h.Timestamp, 0)
	}
	m.Start = m.Start.UTC()
	if !m.End.IsZero() {
		m.End = m.End.UTC()
	}
	m.File = m.Session + castExt
	m.Bytes = lr.n

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[m.Session] {
		return Meta{}, fmt.Errorf("store recording %s: this store is recording that session itself: session ids must be unique", m.Session)
	}
	path := s.castPath(m.Session)
	_, err = os.Lstat(path)
	switch {
	case err == nil:
		same, err := sameContent(tmpName, path)
		if err != nil {
			return Meta{}, fmt.Errorf("store recording %s: compare with the stored one: %w", m.Session, err)
		}
		if !same {
			return Meta{}, fmt.Errorf("store recording %s: a different recording with that session id is already stored: session ids must be unique; remove the stored one first if it is wrong", m.Session)
		}
		existing, err := s.Get(m.Session)
		if err == nil {
			return existing, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Meta{}, err
		}
		// The file was placed but the index line was lost: add it.
		if err := s.appendIndex(indexLine{Meta: m}); err != nil {
			return Meta{}, fmt.Errorf("store recording %s: %w", m.Session, err)
		}
		return m, nil
	case !errors.Is(err, fs.ErrNotExist):
		return Meta{}, fmt.Errorf("store recording %s: %w", m.Session, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return Meta{}, fmt.Errorf("store recording %s: %w", m.Session, err)
	}
	placed = true
	if err := s.appendIndex(indexLine{Meta: m}); err != nil {
		os.Remove(path)
		return Meta{}, fmt.Errorf("store recording %s: %w", m.Session, err)
	}
	return m, nil
}

// checkRecording reads a whole recording, returning its header or the
// first error.
func checkRecording(r io.Reader) (Header, error) {
	rd, err := NewReader(r)
	if err != nil {
		return Header{}, err
	}
	for {
		_, err := rd.Next()
		if err == io.EOF {
			return rd.Header(), nil
		}
		if err != nil {
			return Header{}, err
		}
	}
}

// sizeLimitReader reads at most left bytes from r; if r has more, it sets
// over and fails.
type sizeLimitReader struct {
	r    io.Reader
	left int64
	n    int64 // bytes read
	over bool
}

var errTooLarge = errors.New("recording over the size limit")

func (l *sizeLimitReader) Read(p []byte) (int, error) {
	if l.over {
		return 0, errTooLarge
	}
	// Ask for one byte more than allowed, to tell "exactly the limit"
	// from "over it".
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	if int64(n) > l.left {
		l.over = true
		n = int(l.left)
		err = errTooLarge
	}
	l.left -= int64(n)
	l.n += int64(n)
	return n, err
}

// stickyWriter remembers the first error of w, so that a failed write to
// the temporary file is not mistaken for a malformed recording.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// sameContent reports whether files a and b hold the same bytes.
func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ia, err := fa.Stat()
	if err != nil {
		return false, err
	}
	ib, err := fb.Stat()
	if err != nil {
		return false, err
	}
	if ia.Size() != ib.Size() {
		return false, nil
	}
	bufA := make([]byte, 32<<10)
	bufB := make([]byte, 32<<10)
	for {
		na, errA := io.ReadFull(fa, bufA)
		nb, errB := io.ReadFull(fb, bufB)
		if !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		endA := errA == io.EOF || errA == io.ErrUnexpectedEOF
		endB := errB == io.EOF || errB == io.ErrUnexpectedEOF
		if errA != nil && !endA {
			return false, errA
		}
		if errB != nil && !endB {
			return false, errB
		}
		if endA || endB {
			return endA == endB, nil
		}
	}
}

// Remove deletes the recording of session: its file, then a tombstone line
// in the index (its last Meta with "removed": true) so that List and Get
// no longer show it. It refuses a recording this store is still writing.
func (s *Store) Remove(session string) error {
	if err := CheckSession(session); err != nil {
		return fmt.Errorf("remove recording: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[session] {
		return fmt.Errorf("remove recording %s: it is still being recorded: finish the session first", session)
	}
	m, err := s.Get(session)
	if err != nil {
		return err
	}
	if err := os.Remove(s.castPath(session)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove recording %s: %w", session, err)
	}
	if err := s.appendIndex(indexLine{Meta: m, Removed: true}); err != nil {
		return fmt.Errorf("remove recording %s: %w", session, err)
	}
	return nil
}

// Recover closes a recording that a crash or restart left unfinished (its
// index has no End, and no Recording of this Store writes it): it cuts a
// partial last line from the file, so that it parses, and appends the
// final index line with End set to the file's last change and a marker
// saying the recording ended abruptly. It returns the recovered Meta.
func (s *Store) Recover(session string) (Meta, error) {
	if err := CheckSession(session); err != nil {
		return Meta{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[session] {
		return Meta{}, fmt.Errorf("recording %s is being written", session)
	}
	idx, _, err := s.readIndex()
	if err != nil {
		return Meta{}, err
	}
	l, ok := idx[session]
	if !ok || l.Removed {
		return Meta{}, ErrNotFound
	}
	m := l.Meta
	if !m.End.IsZero() {
		return m, nil
	}
	path := s.castPath(session)
	b, err := os.ReadFile(path)
	if err != nil {
		return Meta{}, fmt.Errorf("recover %s: %w", session, err)
	}
	keep := bytes.LastIndexByte(b, '\n') + 1
	f, err := os.OpenFile(path, os.O_WRONLY, 0o600)
	if err != nil {
		return Meta{}, fmt.Errorf("recover %s: %w", session, err)
	}
	defer f.Close()
	if err := f.Truncate(int64(keep)); err != nil {
		return Meta{}, fmt.Errorf("recover %s: %w", session, err)
	}
	size := int64(keep)
	if keep > 0 {
		// The header made it: mark where the recording stops.
		r, herr := NewReader(bytes.NewReader(b[:keep]))
		last := 0.0
		if herr == nil {
			for {
				ev, err := r.Next()
				if err != nil {
					break
				}
				last = ev.Time
			}
			marker, _ := json.Marshal([]any{last, CodeMarker, "recording ended abruptly: the node stopped during the session"})
			marker = append(marker, '\n')
			if _, err := f.WriteAt(marker, int64(keep)); err == nil {
				size += int64(len(marker))
			}
		}
	}
	if err := f.Sync(); err != nil {
		return Meta{}, fmt.Errorf("recover %s: %w", session, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return Meta{}, fmt.Errorf("recover %s: %w", session, err)
	}
	m.End, m.Bytes, m.Truncated = fi.ModTime().UTC(), size, true
	if m.End.Before(m.Start) {
		m.End = m.Start
	}
	if err := s.appendIndex(indexLine{Meta: m}); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// Compact rewrites the index with one line per recording (the last one),
// leaving out removed recordings and malformed lines; the index otherwise
// only grows. It writes a new file and renames it over the old one, so a
// crash leaves one or the other. It returns the lines before and after.
func (s *Store) Compact() (before, after int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	entries, stats, err := s.readIndex()
	if err != nil {
		return 0, 0, err
	}
	live := make([]indexLine, 0, len(entries))
	for _, l := range entries {
		if !l.Removed {
			live = append(live, l)
		}
	}
	slices.SortFunc(live, func(a, b indexLine) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.Session, b.Session)
	})
	var buf bytes.Buffer
	for _, l := range live {
		b, err := json.Marshal(l)
		if err != nil {
			return 0, 0, err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	path := filepath.Join(s.dir, IndexFile)
	tmp := path + ".compact"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, 0, fmt.Errorf("compact index: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact index: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact index: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact index: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact index: %w", err)
	}
	return stats.Lines, len(live), nil
}
