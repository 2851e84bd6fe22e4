package agent

import (
	"math/rand/v2"
	"time"
)

// backoff computes reconnect delays with "full jitter": the n-th delay in a
// row is uniform in [0, min(max, min*2^n)]. Spreading each delay over the
// whole range, rather than adding a little jitter to a fixed delay, is what
// keeps a fleet of agents from reconnecting in lockstep after a proxy
// restart (see "Exponential Backoff And Jitter", AWS Architecture Blog).
type backoff struct {
	min, max time.Duration
	attempt  int
	// randN returns a uniform value in [0, n); nil means math/rand/v2.
	randN func(n int64) int64
}

// ceiling returns the upper bound of the next delay.
func (b *backoff) ceiling() time.Duration {
	c := b.min
	for i := 0; i < b.attempt && c < b.max; i++ {
		c *= 2
	}
	return min(c, b.max)
}

// next returns the next delay and advances the attempt count.
func (b *backoff) next() time.Duration {
	c := b.ceiling()
	if c < b.max {
		b.attempt++
	}
	randN := b.randN
	if randN == nil {
		randN = rand.Int64N
	}
	return time.Duration(randN(int64(c) + 1))
}

// reset starts over from min, after a tunnel stayed up a while.
func (b *backoff) reset() { b.attempt = 0 }
