package meshtest

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"
)

// logSink keeps every proxy's logs of one Mesh in memory; they are
// printed only if the test fails (memberlist logs from goroutines that
// may outlive a test, where t.Log would panic).
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// Death is one proxy declaring another dead: memberlist's failure
// detector gave up on it (gossip logs "proxy failed"; a graceful leave is
// not a death).
type Death struct {
	Observer, Subject string
	At                time.Time
	// False is true when the subject was running at the time: a false
	// positive of the failure detector.
	False bool
}

// failedMsg is what gossip logs, at Info, when memberlist declares a
// proxy dead (mesh/gossip delegate.go NotifyLeave). The harness learns of
// deaths from it because it is the one place every death passes through
// exactly once; gossip's own tests rely on it too.
const failedMsg = "proxy failed"

// logHandler writes a proxy's records to the Mesh's sink and reports
// deaths it declares.
type logHandler struct {
	text     slog.Handler
	level    slog.Level
	observer string
	onDeath  func(observer, subject string)
}

var _ slog.Handler = (*logHandler)(nil)

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level || l >= slog.LevelInfo
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == failedMsg {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "proxy" {
				h.onDeath(h.observer, a.Value.String())
				return false
			}
			return true
		})
	}
	if r.Level < h.level {
		return nil
	}
	return h.text.Handle(ctx, r)
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.text = h.text.WithAttrs(as)
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.text = h.text.WithGroup(name)
	return &c
}
