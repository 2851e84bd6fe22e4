package authtest

import (
	"bytes"
	"strings"
	"sync"
)

// LogBuf collects log output from concurrent writers (give it to
// slog.NewTextHandler); tests print it when they fail and count lines in it.
type LogBuf struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *LogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *LogBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Count returns how many non-empty lines contain all of words.
func (l *LogBuf) Count(words ...string) int {
	n := 0
	for line := range strings.SplitSeq(l.String(), "\n") {
		ok := line != ""
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			n++
		}
	}
	return n
}
