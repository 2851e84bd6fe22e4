package main

import (
	"strings"
	"testing"
)

const idleOut = `goos: linux
goarch: amd64
pkg: jumpgate.dev/jumpgate/tunnel/server
cpu: Intel(R) Xeon(R) Processor
BenchmarkIdleTunnels/1000-2         	       1	24070891766 ns/op	         3.041 %core-idle	        59.78 KiB/tunnel-heap	        71.74 KiB/tunnel-rss	         0.8491 s-to-connect
--- BENCH: BenchmarkIdleTunnels/1000-2
    idle_bench_test.go:289: 1000 tunnels up in 849ms; client process: ready 1000 tunnels in 849ms (no dial retried)
BenchmarkIdleTunnels/10000-2        	       1	36675845706 ns/op	        21.07 %core-idle	        59.30 KiB/tunnel-heap	        68.70 KiB/tunnel-rss	        11.76 s-to-connect
BenchmarkIdleTunnels/10000-idle=120s-2         	       1	94625787640 ns/op	         4.05 %core-idle	        56.60 KiB/tunnel-heap	        64.40 KiB/tunnel-rss	         9.4 s-to-connect
PASS
ok  	jumpgate.dev/jumpgate/tunnel/server	60.796s
`

func TestParseIdle(t *testing.T) {
	rows, err := parseIdle(idleOut)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(rows), rows)
	}
	if r := rows[1]; r.Tunnels != 10000 || r.Idle != "" || r.CorePct != 21.07 || r.HeapKiB != 59.30 || r.RSSKiB != 68.70 || r.ConnectS != 11.76 {
		t.Fatalf("10000 row: %+v", r)
	}
	if r := rows[2]; r.Tunnels != 10000 || r.Idle != "120s" || r.CorePct != 4.05 {
		t.Fatalf("idle=120s row: %+v", r)
	}
	got := (&idleResult{Rows: rows}).targetRows()
	for _, want := range []string{
		"| memory per idle tunnel ≤ 64 KiB (10,000 tunnels, heap and stacks) | 59.3 KiB | met |",
		"| memory per idle tunnel ≤ 64 KiB (10,000 tunnels, resident set) | 68.7 KiB | **missed** |",
		"| 10,000 idle tunnels on one proxy < 5% of one core, default tunnel_idle_timeout (15s) | 21.07% | **missed** |",
		"| 10,000 idle tunnels on one proxy < 5% of one core, tunnel_idle_timeout 120s | 4.05% | met |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("targets lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "| 1000 ") || strings.Count(got, "\n") != 4 {
		t.Errorf("targets should cover the 10,000 rows only:\n%s", got)
	}
}

func TestParseIdleRefusesPartialLines(t *testing.T) {
	for _, out := range []string{
		"PASS\n",
		"BenchmarkIdleTunnels/1000-2 1 24070891766 ns/op 3.041 %core-idle 59.78 KiB/tunnel-heap\n", // metrics missing
		"BenchmarkIdleTunnels/many-2 1 24070891766 ns/op 3.041 %core-idle 59.78 KiB/tunnel-heap 71.74 KiB/tunnel-rss 0.8 s-to-connect\n",
	} {
		if rows, err := parseIdle(out); err == nil {
			t.Errorf("parsed %q as %+v", out, rows)
		}
	}
}
