package main

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"
)

// nearestFirst orders addrs by TCP connect time (the best of three
// tries), unreachable ones last in their given order. It takes at most
// about 3×timeout.
func nearestFirst(ctx context.Context, addrs []string, timeout time.Duration) []string {
	rtt := make([]time.Duration, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			best := time.Duration(-1)
			for range 3 {
				d := &net.Dialer{Timeout: timeout}
				start := time.Now()
				c, err := d.DialContext(ctx, "tcp", a)
				if err != nil {
					continue
				}
				took := time.Since(start)
				c.Close()
				if best < 0 || took < best {
					best = took
				}
			}
			rtt[i] = best
		}()
	}
	wg.Wait()
	idx := make([]int, len(addrs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ra, rb := rtt[a], rtt[b]
		switch {
		case ra < 0 && rb < 0:
			return 0
		case ra < 0:
			return 1
		case rb < 0:
			return -1
		case ra < rb:
			return -1
		case ra > rb:
			return 1
		}
		return 0
	})
	out := make([]string, len(addrs))
	for i, k := range idx {
		out[i] = addrs[k]
	}
	return out
}
