package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

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
	store  *recording.Store
	dir    string // the store's directory
	client *authapi.Client
	log    *slog.Logger
	wake   chan struct{}
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
	all, err := u.store.List()
	if err != nil {
		return 0, err
	}
	var pending []recording.Meta
	for _, m := range all {
		if m.End.IsZero() {
			continue // still recording
		}
		if _, err := os.Stat(u.mark(m)); err == nil {
			continue
		}
		pending = append(pending, m)
	}
	for i, m := range pending {
		if err := u.upload(ctx, m); err != nil {
			return len(pending) - i, err
		}
		if err := os.WriteFile(u.mark(m), nil, 0o600); err != nil {
			return len(pending) - i, err
		}
		u.log.Info("session recording uploaded", "session", m.Session, "bytes", m.Bytes)
	}
	return 0, nil
}

func (u *uploader) mark(m recording.Meta) string { return filepath.Join(u.dir, m.Session+".uploaded") }

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
	return u.client.UploadRecording(ctx, m, rc)
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
