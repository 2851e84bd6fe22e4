package peer

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// strayLogInterval is the least time between two log lines about stray
// packets. Anyone can send UDP packets to the peer port; the first is logged
// at once, the rest are summed into one line per interval (the metric counts
// every one).
const strayLogInterval = 10 * time.Second

// strays counts and logs packets on the peer port that belong to no
// connection and start none: port scans, misdirected clients, random bytes,
// late packets of connections from before a restart. quic-go drops them
// silently; this makes them visible.
type strays struct {
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex // guards the following
	last    time.Time  // of the last log line
	pending map[string]int
	from    string // remote address of the latest stray, if known
}

func newStrays(log *slog.Logger, m *metrics) *strays {
	return &strays{log: log, metrics: m, pending: make(map[string]int)}
}

func (s *strays) add(reason string, from net.Addr) {
	s.metrics.droppedPackets.WithLabelValues(reason).Inc()
	s.mu.Lock()
	s.pending[reason]++
	if from != nil {
		s.from = from.String()
	}
	now := time.Now()
	if !s.last.IsZero() && now.Sub(s.last) < strayLogInterval {
		s.mu.Unlock()
		return
	}
	s.last = now
	counts, remote := s.pending, s.from
	s.pending, s.from = make(map[string]int), ""
	s.mu.Unlock()

	var attrs []any
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		attrs = append(attrs, k, counts[k])
	}
	if remote != "" {
		attrs = append(attrs, "remote", remote)
	}
	s.log.Warn("dropped packets on the peer port that belong to no peer connection (a port scan, a client at the wrong port, or a peer that restarted)", attrs...)
}

// readNonQUIC takes the packets quic-go classifies as not QUIC at all (the
// first two bits clear) until ctx ends. Without a reader quic-go drops them
// unseen.
func (s *strays) readNonQUIC(ctx context.Context, tr *quic.Transport) {
	buf := make([]byte, 1500)
	for {
		_, from, err := tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		s.add(dropNotQUIC, from)
	}
}

// recorder is the transport's qlog recorder: it hears the packets quic-go's
// transport and server drop before any connection sees them.
func (s *strays) recorder() qlogwriter.Recorder { return strayRecorder{s} }

type strayRecorder struct{ s *strays }

func (r strayRecorder) RecordEvent(ev qlogwriter.Event) {
	switch e := ev.(type) {
	case qlog.PacketDropped:
		r.s.add(dropReason(e.Trigger), nil)
	case qlog.VersionNegotiationSent:
		r.s.add(dropVersion, nil)
	}
}

func (strayRecorder) Close() error { return nil }

func dropReason(t qlog.PacketDropReason) string {
	switch t {
	case qlog.PacketDropUnknownConnectionID:
		return dropUnknownConn
	case qlog.PacketDropHeaderParseError, qlog.PacketDropPayloadDecryptError, qlog.PacketDropUnexpectedPacket, qlog.PacketDropProtocolViolation:
		return dropMalformed
	case qlog.PacketDropUnsupportedVersion, qlog.PacketDropUnexpectedVersion:
		return dropVersion
	case qlog.PacketDropDOSPrevention:
		return dropOverload
	}
	return dropOther
}
