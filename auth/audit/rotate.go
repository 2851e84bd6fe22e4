package audit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
)

// RotatingFile is an append-only audit file that rotates by size: when a
// write would take it past MaxBytes, path is renamed to path.1 (path.1 to
// path.2, ... up to Keep, the oldest removed) and a new path is created with
// mode 0600. A line is never split across files: give Write whole lines, as
// Writer does. Tail-based shippers (fluent-bit tail with Rotate_Wait, vector
// file source) follow renames, so nothing is lost.
//
// Files past Keep left by an earlier, larger Keep are not touched.
type RotatingFile struct {
	path     string
	maxBytes int64
	keep     int

	mu   sync.Mutex // guards following
	f    *os.File   // nil after Close
	size int64      // bytes in f
	err  error      // the last rotation's failure; nil after a success
}

var _ io.WriteCloser = (*RotatingFile)(nil)

// OpenRotating opens (appending) or creates the audit file path with mode
// 0600. maxBytes <= 0 never rotates; keep < 1 keeps 1 old file.
func OpenRotating(path string, maxBytes int64, keep int) (*RotatingFile, error) {
	if keep < 1 {
		keep = 1
	}
	f, size, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &RotatingFile{path: path, maxBytes: maxBytes, keep: keep, f: f, size: size}, nil
}

func openAppend(path string) (*os.File, int64, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open audit log: %w", err)
	}
	return f, fi.Size(), nil
}

// Write appends p, rotating first when p would take the file past
// maxBytes and the file is not empty (a line longer than maxBytes gets a
// file of its own). A failed rotation does not fail the write: p goes to
// the current file, and Err reports the failure. Safe for concurrent use.
func (f *RotatingFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return 0, fmt.Errorf("write audit log %s: %w", f.path, os.ErrClosed)
	}
	if f.maxBytes > 0 && f.size > 0 && f.size+int64(len(p)) > f.maxBytes {
		f.err = f.rotateLocked()
	}
	n, err := f.f.Write(p)
	f.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("write audit log %s: %w", f.path, err)
	}
	return n, nil
}

// Rotate rotates now, whatever the size: for SIGHUP, or tests. On failure
// the current file stays in use.
func (f *RotatingFile) Rotate() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return fmt.Errorf("rotate audit log %s: %w", f.path, os.ErrClosed)
	}
	f.err = f.rotateLocked()
	return f.err
}

// Err returns why the last rotation failed, or nil if it succeeded (or
// none was due yet). Events are never lost to a failed rotation, but the
// file grows past its limit until one succeeds: log this error.
func (f *RotatingFile) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Close closes the file. Writes after Close fail.
func (f *RotatingFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	if err != nil {
		return fmt.Errorf("close audit log %s: %w", f.path, err)
	}
	return nil
}

// rotateLocked shifts path.N-1 to path.N ... path to path.1 and opens a new
// path. Until a new file is open, f keeps the old one: the file it writes
// to may then be path.1, which is fine, as nothing is lost.
func (f *RotatingFile) rotateLocked() error {
	name := func(i int) string { return f.path + "." + strconv.Itoa(i) }
	// Renaming onto path.keep replaces the oldest.
	for i := f.keep - 1; i >= 1; i-- {
		if err := os.Rename(name(i), name(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return rotateError(f.path, err)
		}
	}
	// ErrNotExist: an earlier rotation moved path but could not create
	// the new one, or someone removed it.
	if err := os.Rename(f.path, name(1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rotateError(f.path, err)
	}
	nf, size, err := openAppend(f.path)
	if err != nil {
		return rotateError(f.path, err)
	}
	// Its data are written (no buffering): a close error loses nothing.
	f.f.Close()
	f.f, f.size = nf, size
	return nil
}

func rotateError(path string, err error) error {
	return fmt.Errorf("rotate audit log %s (events still go to the current file, which grows past its limit: check the directory's permissions and free space): %w", path, err)
}
