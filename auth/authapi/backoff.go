package authapi

import (
	"math/rand/v2"
	"time"
)

// backoff is exponential backoff with full jitter: the wait is uniform in
// [0, min(max, base*2^n)), so many clients that lost the same server do not
// return in step.
type backoff struct {
	base, max time.Duration
	n         int
}

func newBackoff(base, max time.Duration) *backoff { return &backoff{base: base, max: max} }

func (b *backoff) next() time.Duration {
	d := b.base << min(b.n, 20)
	if d <= 0 || d > b.max {
		d = b.max
	}
	b.n++
	return time.Duration(rand.Int64N(int64(d))) + time.Millisecond
}

func (b *backoff) reset() { b.n = 0 }
