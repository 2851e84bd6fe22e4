package gossip

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records at the matching level. memberlist's Config.Logger is a
// *log.Logger, which calls Write once per line.
type logWriter struct{ log *slog.Logger }

var logLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG] ", slog.LevelDebug},
	{"[INFO] ", slog.LevelInfo},
	{"[WARN] ", slog.LevelWarn},
	{"[ERR] ", slog.LevelError},
	{"[ERROR] ", slog.LevelError},
}

func (w logWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\r\n")
	level := slog.LevelInfo
	for _, l := range logLevels {
		if strings.HasPrefix(line, l.prefix) {
			level = l.level
			line = line[len(l.prefix):]
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	// memberlist repeats this for every copy of a refused member's alive
	// message; the Cluster logs the refusal itself, once, at Warn.
	if strings.HasPrefix(line, "ignoring alive message for") {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}
