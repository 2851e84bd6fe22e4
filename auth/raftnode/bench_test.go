package raftnode

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkApply measures replicated writes on 3 voters over mutual TLS on
// loopback, through the leader: one writer at a time, and 64 at once
// (each write its own Apply; raft batches what is queued into one append
// and one fsync per follower). Reported: writes/s and the p99 latency of
// one write. The target (issue: auth HA) is 2,000 writes/s with 64
// writers. Run:
//
//	go test -run '^$' -bench Apply -benchtime 3000x ./auth/raftnode
func BenchmarkApply(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			c := startCluster(b, "a2", "a3")
			var leader *Node
			deadline := time.Now().Add(10 * time.Second)
			for leader == nil && time.Now().Before(deadline) {
				leader = c.leader()
				time.Sleep(10 * time.Millisecond)
			}
			if leader == nil {
				b.Fatal("no leader")
			}
			cmds := make([][]byte, b.N)
			for i := range cmds {
				cmds[i] = userCmd(b, fmt.Sprintf("u%d", i), false)
			}
			var seq atomic.Int64
			lat := make([]time.Duration, b.N)
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := seq.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t0 := time.Now()
						if _, err := leader.Apply(cmds[i]); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(b.N)/el.Seconds(), "writes/s")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
