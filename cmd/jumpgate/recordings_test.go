package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/node/recording"
)

// TestUploader: finished recordings are uploaded once; one an auth server
// refuses for good is marked and does not hold up the others; a transient
// failure is retried; a recording a crash left open is recovered and
// uploaded; uploaded copies go after node.recording_keep.
func TestUploader(t *testing.T) {
	dir := t.TempDir()
	store, err := recording.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-10 * 24 * time.Hour)
	record := func(session string, start time.Time, finish bool) {
		rec, err := store.Create(recording.Meta{Session: session, User: "alice", Node: "n1", Start: start}, recording.Header{}, recording.WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rec.Output([]byte("hello " + session + "\r\n"))
		if finish {
			if _, err := rec.Finish(start.Add(time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	record("a-old", old, true)
	record("b-bad", time.Now(), true)
	record("c-flaky", time.Now(), true)
	record("d-crashed", time.Now(), false) // the node died during it

	got := map[string]string{}
	flaky := 1
	reg := prometheus.NewRegistry()
	um, err := newUploadMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	u := &uploader{dir: dir, keep: 7 * 24 * time.Hour, log: slog.New(slog.DiscardHandler), wake: make(chan struct{}, 1), metrics: um}
	u.send = func(_ context.Context, m recording.Meta, body io.Reader) error {
		b, _ := io.ReadAll(body)
		switch {
		case m.Session == "b-bad":
			return &authapi.APIError{Code: 400, Message: "malformed"}
		case m.Session == "c-flaky" && flaky > 0:
			flaky--
			return &authapi.APIError{Code: 503, Message: "no leader"}
		}
		out, err := recording.Output(bytes.NewReader(b))
		if err != nil {
			t.Errorf("%s uploaded unparsable: %v", m.Session, err)
		}
		got[m.Session] = string(out)
		return nil
	}
	// The crashed recording is "being written" by the store that made it:
	// the node restarts with a new store.
	if u.store, err = recording.OpenStore(dir); err != nil {
		t.Fatal(err)
	}
	left, err := u.pass(context.Background())
	if err == nil || left != 1 {
		t.Fatalf("first pass: %d left, %v (want the flaky one left, with its error)", left, err)
	}
	if got["a-old"] != "hello a-old\r\n" || got["d-crashed"] != "hello d-crashed\r\n" {
		t.Errorf("uploads: %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "b-bad.failed")); err != nil {
		t.Errorf("refused upload not marked: %v", err)
	}
	wantMetrics := func(when string, pending, ok, refused, failed float64) {
		t.Helper()
		m := func(name string, labels ...string) float64 { return authtest.Metric(t, reg, name, labels...) }
		const uploads = "jumpgate_node_recording_uploads_total"
		got := []float64{m("jumpgate_node_recordings_pending"), m(uploads, "result", uploadOK), m(uploads, "result", uploadRefused), m(uploads, "result", uploadError)}
		if want := []float64{pending, ok, refused, failed}; !slices.Equal(got, want) {
			t.Errorf("%s: pending, ok, refused, error = %v, want %v", when, got, want)
		}
	}
	wantMetrics("first pass", 1, 2, 1, 1)
	if left, err := u.pass(context.Background()); err != nil || left != 0 || got["c-flaky"] == "" {
		t.Errorf("second pass: %d left, %v, uploads %q", left, err, got)
	}
	wantMetrics("second pass", 0, 3, 1, 1)
	if b := authtest.Metric(t, reg, "jumpgate_node_recording_upload_bytes_total"); b <= 0 {
		t.Errorf("uploaded bytes = %v", b)
	}
	// Uploaded a while ago and older than keep: the node's copy goes.
	mark := filepath.Join(dir, "a-old.uploaded")
	os.Chtimes(mark, old, old)
	delete(got, "a-old")
	if _, err := u.pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := u.store.Get("a-old"); !errors.Is(err, recording.ErrNotFound) {
		t.Errorf("a-old kept past node.recording_keep: %v", err)
	}
	if _, err := u.store.Get("c-flaky"); err != nil {
		t.Errorf("a recent upload was removed: %v", err)
	}
	if len(got) != 2 || got["a-old"] != "" {
		t.Errorf("something was uploaded twice: %q", got)
	}
}
