package recording

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"
)

// DefaultMaxIdle is the longest pause Play keeps when PlayOptions.MaxIdle
// is 0: a user who walked away for an hour should not make a replay wait
// an hour.
const DefaultMaxIdle = 2 * time.Second

// PlayOptions tunes Play. The zero value plays in real time with pauses
// shortened to DefaultMaxIdle.
type PlayOptions struct {
	// Speed divides every pause: 1 is real time (used when Speed is 0 or
	// less), 2 twice as fast.
	Speed float64
	// MaxIdle is the longest pause of the recording kept: longer ones are
	// shortened to it before Speed divides them, as asciinema's
	// idle_time_limit. 0 means DefaultMaxIdle; a negative value keeps
	// every pause.
	MaxIdle time.Duration
	// Sleep waits for d or until ctx ends, returning ctx.Err() then. nil
	// means a timer. Tests pass a fake that records the durations.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Play writes the output events ("o") of r to dst at the pace they were
// recorded: before each it waits for the time since the previous output
// event (or the start), shortened to MaxIdle and divided by Speed. Input,
// resize and marker events are not written.
//
// Play returns nil at the end of the recording, ctx.Err() when ctx ends,
// the Reader's error (naming the line) if the recording is malformed, after
// writing the output before it, or the error of a write to dst.
func Play(ctx context.Context, dst io.Writer, r *Reader, opts PlayOptions) error {
	speed := opts.Speed
	if !(speed > 0) || math.IsInf(speed, 0) {
		speed = 1
	}
	maxIdle := opts.MaxIdle
	if maxIdle == 0 {
		maxIdle = DefaultMaxIdle
	}
	sleep := opts.Sleep
	if sleep == nil {
		sleep = sleepContext
	}
	var prev float64 // time of the previous output event
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ev, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if ev.Code != CodeOutput {
			continue
		}
		d := pause(ev.Time-prev, maxIdle, speed)
		prev = ev.Time
		if d > 0 {
			if err := sleep(ctx, d); err != nil {
				return err
			}
			// A Sleep that ignores ctx must not make Play go on.
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if ev.Data == "" {
			continue
		}
		if _, err := io.WriteString(dst, ev.Data); err != nil {
			return fmt.Errorf("play recording: write output: %w", err)
		}
	}
}

// pause turns a gap of the recording, in seconds, into a wait: capped at
// maxIdle (unless negative), then divided by speed. Gaps of centuries or a
// tiny speed give the longest Duration rather than overflowing.
func pause(gap float64, maxIdle time.Duration, speed float64) time.Duration {
	if !(gap > 0) {
		return 0
	}
	ns := gap * float64(time.Second)
	if maxIdle > 0 {
		ns = min(ns, float64(maxIdle))
	}
	ns /= speed
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(math.Round(ns))
}

// sleepContext waits for d or until ctx ends.
func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
