package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/node/recording"
)

// uploader sends a node's finished session recordings, through a proxy, to
// the auth servers, and marks each one sent (SESSION.uploaded next to it)
// once an auth server has stored it. It runs at start (recordings left by
// a restart), when a session ends, and every minute while some wait; a
// failed upload is retried with backoff. The node keeps its own copies.
type uploader struct {
	store *recording.Store
	dir   string        // the store's directory
	keep  time.Duration // how long uploaded recordings stay (node.recording_keep)
	// send uploads one recording (authapi.Client.UploadRecording).
	send    func(ctx context.Context, m recording.Meta, body io.Reader) error
	log     *slog.Logger
	wake    chan struct{}
	metrics *uploadMetrics // nil: none
}

// uploadMetrics tell an SRE whether a node's recordings reach the auth
// servers: jumpgate_node_recordings_pending (finished, not uploaded yet),
// jumpgate_node_recording_uploads_total{result} and
// jumpgate_node_recording_upload_bytes_total.
type uploadMetrics struct {
	pending prometheus.Gauge
	uploads *prometheus.CounterVec
	bytes   prometheus.Counter
}

// Upload results, the values of the result label.
const (
	uploadOK      = "ok"      // an auth server stored it
	uploadRefused = "refused" // an auth server will never take it (marked .failed, kept on the node)
	uploadError   = "error"   // failed for now; retried with backoff
)

func newUploadMetrics(reg prometheus.Registerer) (*uploadMetrics, error) {
	m := &uploadMetrics{
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jumpgate_node_recordings_pending",
			Help: "Finished session recordings on this node not uploaded to an auth server yet (at the end of the last upload pass).",
		}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jumpgate_node_recording_uploads_total",
			Help: "Session recording uploads from this node, by result (ok, refused: kept on the node for good, error: retried).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jumpgate_node_recording_upload_bytes_total",
			Help: "Bytes of session recordings this node uploaded successfully.",
		}),
	}
	for _, r := range []string{uploadOK, uploadRefused, uploadError} {
		m.uploads.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.pending, m.uploads, m.bytes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register recording upload metrics: %w", err)
		}
	}
	return m, nil
}

// count records one upload's result.
func (u *uploader) count(result string, bytes int64) {
	if u.metrics == nil {
		return
	}
	u.metrics.uploads.WithLabelValues(result).Inc()
	if result == uploadOK {
		u.metrics.bytes.Add(float64(bytes))
	}
}

// setPending records how many recordings wait for an upload.
func (u *uploader) setPending(n int) {
	if u.metrics != nil {
		u.metrics.pending.Set(float64(n))
	}
}

// kick wakes the uploader: a recording has finished.
func (u *uploader) kick(recording.Meta) {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

func (u *uploader) run(ctx context.Context) {
	backoff := time.Second
	for {
		pending, err := u.pass(ctx)
		wait := time.Minute
		switch {
		case err != nil:
			u.log.Warn("uploading session recordings failed; retrying", "pending", pending, "in", backoff, "err", err)
			wait, backoff = backoff, min(2*backoff, 5*time.Minute)
		default:
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-u.wake:
		case <-time.After(wait):
		}
	}
}

// pass uploads every finished recording not sent yet; it returns how many
// are left and the first error.
func (u *uploader) pass(ctx context.Context) (int, error) {
	all, stats, err := u.store.ListWithStats()
	if err != nil {
		return 0, err
	}
	if stats.Lines > 2*len(all)+64 {
		// The index only grows (two lines per session, tombstones):
		// rewrite it with one line per recording now and then.
		if before, after, err := u.store.Compact(); err != nil {
			u.log.Warn("compact the recording index", "err", err)
		} else {
			u.log.Info("compacted the recording index", "lines_before", before, "lines_after", after)
		}
	}
	var pending []recording.Meta
	for _, m := range all {
		if m.End.IsZero() {
			// Still recording, or left open by a crash or restart of
			// the node: Recover closes the latter (and refuses the
			// former), so that a session never escapes its upload.
			rm, err := u.store.Recover(m.Session)
			if err != nil {
				continue
			}
			u.log.Warn("recovered a session recording the node left open (it stopped during the session)", "session", m.Session)
			m = rm
		}
		if fi, err := os.Stat(u.mark(m, ".uploaded")); err == nil {
			if u.keep > 0 && time.Since(fi.ModTime()) > u.keep && time.Since(m.End) > u.keep {
				if err := u.store.Remove(m.Session); err == nil {
					os.Remove(u.mark(m, ".uploaded"))
					u.log.Debug("removed the node's copy of an uploaded session recording", "session", m.Session)
				}
			}
			continue
		}
		if _, err := os.Stat(u.mark(m, ".failed")); err == nil {
			continue
		}
		pending = append(pending, m)
	}
	left := len(pending)
	u.setPending(left)
	defer func() { u.setPending(left) }()
	var first error
	for _, m := range pending {
		err := u.upload(ctx, m)
		var ae *authapi.APIError
		switch {
		case err == nil:
			if err := os.WriteFile(u.mark(m, ".uploaded"), nil, 0o600); err != nil {
				return left, err
			}
			left--
			u.count(uploadOK, m.Bytes)
			u.log.Info("session recording uploaded", "session", m.Session, "bytes", m.Bytes)
		case errors.As(err, &ae) && ae.Code/100 == 4 && ae.Code != 408 && ae.Code != 429:
			// The auth server will never take it: say so, keep the
			// file, and go on with the others.
			left--
			u.count(uploadRefused, 0)
			u.log.Error("an auth server refused a session recording: it stays on this node only", "session", m.Session, "err", err)
			if err := os.WriteFile(u.mark(m, ".failed"), []byte(err.Error()+"\n"), 0o600); err != nil {
				return left, err
			}
		default:
			u.count(uploadError, 0)
			if first == nil {
				first = err
			}
		}
	}
	return left, first
}

// mark is the file that says what became of a recording's upload.
func (u *uploader) mark(m recording.Meta, ext string) string {
	return filepath.Join(u.dir, m.Session+ext)
}

func (u *uploader) upload(ctx context.Context, m recording.Meta) error {
	rc, _, err := u.store.Open(m.Session)
	if errors.Is(err, recording.ErrNotFound) {
		return nil // removed meanwhile
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return u.send(ctx, m, rc)
}

// watchAuditRotation logs a failed audit log rotation (events still go to
// the current file; nothing is lost, but the file grows).
func watchAuditRotation(ctx context.Context, f *audit.RotatingFile, log *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	var last string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := f.Err(); err != nil && err.Error() != last {
			log.Error("audit log rotation failed: events go on into the current file", "err", err)
			last = err.Error()
		} else if err == nil {
			last = ""
		}
	}
}
