package recording

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// playFile has output at 0.5, 1.5, 11.5 (a 10 s pause) and again at 11.5,
// with input, resize and marker events between.
const playFile = validHeader + "\n" +
	`[0.5, "o", "one "]` + "\n" +
	`[1.0, "i", "typed"]` + "\n" +
	`[1.5, "o", "two "]` + "\n" +
	`[2.0, "r", "100x40"]` + "\n" +
	`[11.5, "o", "three "]` + "\n" +
	`[11.5, "m", "mark"]` + "\n" +
	`[11.5, "o", "four"]` + "\n"

// fakeSleep records the durations Play asks for, without waiting.
type fakeSleep struct {
	got []time.Duration
	// onCall, if set, runs at each call with its number, from 1.
	onCall func(n int)
}

func (s *fakeSleep) Sleep(ctx context.Context, d time.Duration) error {
	s.got = append(s.got, d)
	if s.onCall != nil {
		s.onCall(len(s.got))
	}
	return ctx.Err()
}

func newPlayReader(t *testing.T, file string) *Reader {
	t.Helper()
	rd, err := NewReader(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	return rd
}

func TestPlayPace(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name    string
		speed   float64
		maxIdle time.Duration
		want    []time.Duration
	}{
		{"defaults", 0, 0, []time.Duration{500 * ms, 1000 * ms, 2000 * ms}},
		{"negative speed is real time", -3, 0, []time.Duration{500 * ms, 1000 * ms, 2000 * ms}},
		{"twice as fast", 2, 0, []time.Duration{250 * ms, 500 * ms, 1000 * ms}},
		{"half speed", 0.5, 0, []time.Duration{1000 * ms, 2000 * ms, 4000 * ms}},
		{"never shorten", 1, -1, []time.Duration{500 * ms, 1000 * ms, 10000 * ms}},
		{"cap then scale", 2, 5 * time.Second, []time.Duration{250 * ms, 500 * ms, 2500 * ms}},
		{"tiny cap", 1, 100 * ms, []time.Duration{100 * ms, 100 * ms, 100 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			sleep := &fakeSleep{}
			err := Play(t.Context(), &out, newPlayReader(t, playFile), PlayOptions{Speed: tt.speed, MaxIdle: tt.maxIdle, Sleep: sleep.Sleep})
			if err != nil {
				t.Fatalf("Play: %v", err)
			}
			if out.String() != "one two three four" {
				t.Errorf("played %q, want only the output events", out.String())
			}
			if !slices.Equal(sleep.got, tt.want) {
				t.Errorf("slept %v, want %v", sleep.got, tt.want)
			}
		})
	}
}

func TestPlayCancel(t *testing.T) {
	tests := []struct {
		name     string
		ignore   bool // the fake Sleep returns nil even when ctx ends
		wantOut  string
		canceled int // the Sleep call that cancels
	}{
		{"canceled in the first pause", false, "", 1},
		{"canceled in the second pause", false, "one ", 2},
		{"sleep ignores ctx", true, "one two ", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var out strings.Builder
			sleep := &fakeSleep{onCall: func(n int) {
				if n == tt.canceled {
					cancel()
				}
			}}
			sleepFn := sleep.Sleep
			if tt.ignore {
				sleepFn = func(ctx context.Context, d time.Duration) error {
					_ = sleep.Sleep(context.Background(), d)
					return nil
				}
			}
			err := Play(ctx, &out, newPlayReader(t, playFile), PlayOptions{Sleep: sleepFn})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Play = %v, want context.Canceled", err)
			}
			if out.String() != tt.wantOut {
				t.Errorf("played %q, want %q", out.String(), tt.wantOut)
			}
		})
	}
	t.Run("canceled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		var out strings.Builder
		if err := Play(ctx, &out, newPlayReader(t, playFile), PlayOptions{Sleep: (&fakeSleep{}).Sleep}); err != context.Canceled {
			t.Errorf("Play = %v, want context.Canceled", err)
		}
		if out.Len() != 0 {
			t.Errorf("played %q, want nothing", out.String())
		}
	})
}

func TestPlayMalformed(t *testing.T) {
	file := validHeader + "\n" + `[0.1, "o", "good "]` + "\n" + `[0.2, "o"]` + "\n" + `[0.3, "o", "never"]` + "\n"
	var out strings.Builder
	err := Play(t.Context(), &out, newPlayReader(t, file), PlayOptions{Sleep: (&fakeSleep{}).Sleep})
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("Play = %v, want an error naming line 3", err)
	}
	if out.String() != "good " {
		t.Errorf("played %q, want the output before the bad line", out.String())
	}
}

func TestPlayWriteError(t *testing.T) {
	err := Play(t.Context(), &failWriter{ok: 2}, newPlayReader(t, playFile), PlayOptions{Sleep: (&fakeSleep{}).Sleep})
	if !errors.Is(err, errDiskFull) {
		t.Errorf("Play = %v, want %v", err, errDiskFull)
	}
}

// TestPlayRealTimer plays with the default Sleep in a synctest bubble,
// whose clock moves only when every goroutine waits.
func TestPlayRealTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var out strings.Builder
		if err := Play(t.Context(), &out, newPlayReader(t, playFile), PlayOptions{Speed: 2}); err != nil {
			t.Fatal(err)
		}
		if got, want := time.Since(start), 1750*time.Millisecond; got != want {
			t.Errorf("played in %v, want %v", got, want)
		}
		if out.String() != "one two three four" {
			t.Errorf("played %q", out.String())
		}
	})
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		var out strings.Builder
		err := Play(ctx, &out, newPlayReader(t, playFile), PlayOptions{MaxIdle: -1})
		if err != context.DeadlineExceeded {
			t.Errorf("Play = %v, want context.DeadlineExceeded", err)
		}
		if got := time.Since(start); got != time.Second {
			t.Errorf("stopped after %v, want 1s", got)
		}
		if out.String() != "one " {
			t.Errorf("played %q, want \"one \"", out.String())
		}
	})
}

func TestPause(t *testing.T) {
	tests := []struct {
		gap     float64
		maxIdle time.Duration
		speed   float64
		want    time.Duration
	}{
		{0, time.Second, 1, 0},
		{-0.000001, time.Second, 1, 0},
		{1e300, -1, 1, time.Duration(1<<63 - 1)},
		{1, -1, 1e-300, time.Duration(1<<63 - 1)},
		{0.000001, -1, 1, time.Microsecond},
	}
	for _, tt := range tests {
		if got := pause(tt.gap, tt.maxIdle, tt.speed); got != tt.want {
			t.Errorf("pause(%v, %v, %v) = %v, want %v", tt.gap, tt.maxIdle, tt.speed, got, tt.want)
		}
	}
}
