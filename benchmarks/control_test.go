package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestLockLines feeds lockLines what cmd/jumpgate's lock watcher writes
// through slog's text handler, among other lines, and checks that it finds
// the lock lines with their values and nothing else.
func TestLockLines(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	log.Info("proxy cache in sync with auth", "auth", "127.0.0.1:3025")
	log.Info("lock in force", "lock", "l-1", "target", "user bench-lock-0", "role", "node", "delay_ms", 3.25, "ended", 0)
	log.With("component", "ingress").Warn("dial failed", "msg2", `a "quoted" = value`, "node", "n1")
	log.Info("lock in force", "lock", "l-2", "target", "user bench-lock-1 on node db 1", "role", "proxy", "delay_ms", float64(1234)/1000, "ended", 2)
	got, err := lockLines(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatal(err)
	}
	want := []lockLine{
		{Lock: "l-1", Target: "user bench-lock-0", Role: "node", DelayMS: 3.25},
		{Lock: "l-2", Target: "user bench-lock-1 on node db 1", Role: "proxy", DelayMS: 1.234},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %+v, want %+v\nlog:\n%s", len(got), got, want, buf.String())
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestLockLinesBadDelay(t *testing.T) {
	_, err := lockLines(strings.NewReader(`time=x level=INFO msg="lock in force" lock=l-1 target="user u" role=node delay_ms=soon` + "\n"))
	if err == nil || !strings.Contains(err.Error(), "delay_ms") {
		t.Fatalf("err = %v, want one naming delay_ms", err)
	}
}

func TestPercentile(t *testing.T) {
	xs := make([]float64, 30)
	for i := range xs {
		xs[i] = float64(30 - i) // 30 .. 1, unsorted
	}
	for _, c := range []struct{ p, want float64 }{{50, 15}, {99, 30}, {100, 30}, {1, 1}, {0, 1}} {
		if got := percentile(xs, c.p); got != c.want {
			t.Errorf("p%v of 1..30 = %v, want %v", c.p, got, c.want)
		}
	}
	big := make([]float64, 200)
	for i := range big {
		big[i] = float64(i + 1)
	}
	if got := percentile(big, 99); got != 198 {
		t.Errorf("p99 of 1..200 = %v, want 198", got)
	}
	if xs[0] != 30 {
		t.Error("percentile sorted its argument in place")
	}
}
