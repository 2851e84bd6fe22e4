package main

import (
	"strings"
	"testing"
)

// gossipOut is go test -bench output of BenchmarkGossipConvergence with
// -count 2, in the shape it has (log lines after each result line); the
// second 100-proxy run had one false death and a slow detection.
const gossipOut = `goos: linux
goarch: amd64
pkg: jumpgate.dev/jumpgate/mesh/meshtest
cpu: Intel(R) Xeon(R) Processor
BenchmarkGossipConvergence/default/rtt=200ms/n=10-2         	       1	5511295707 ns/op	         0.03002 cores	         0 dropped	         0 false-deaths	         0 kernel-drops	         0 late-pairs	         0 refutes	         0.6187 s/converge	         1.891 s/detect	         0.008153 s/start
--- BENCH: BenchmarkGossipConvergence/default/rtt=200ms/n=10-2
    bench_test.go:267: 10 proxies, 2 cores: started in 8ms, converged 619ms after the first start; idle mesh uses 0.03 cores; kill detected everywhere in 1.891s; 0 false deaths, 0 suspicions refuted; 0 datagrams dropped by the emulator, 0 by the kernel
BenchmarkGossipConvergence/default/rtt=200ms/n=100-2        	       1	8614844490 ns/op	         1.168 cores	         0 dropped	         0 false-deaths	         0 kernel-drops	         0 late-pairs	         0 refutes	         2.978 s/converge	         2.630 s/detect	         0.06684 s/start
--- BENCH: BenchmarkGossipConvergence/default/rtt=200ms/n=100-2
    bench_test.go:267: 100 proxies, 2 cores: started in 66ms, converged 2.978s after the first start
BenchmarkGossipConvergence/default/rtt=200ms/n=10-2         	       1	5498000000 ns/op	         0.02900 cores	         0 dropped	         0 false-deaths	         0 kernel-drops	         0 late-pairs	         0 refutes	         0.7010 s/converge	         2.102 s/detect	         0.008000 s/start
BenchmarkGossipConvergence/default/rtt=200ms/n=100-2        	       1	9914844490 ns/op	         1.200 cores	         0 dropped	         1 false-deaths	         0 kernel-drops	         3 late-pairs	         2 refutes	         2.500 s/converge	         3.700 s/detect	         0.07000 s/start
PASS
ok  	jumpgate.dev/jumpgate/mesh/meshtest	22.534s
`

func TestParseGossip(t *testing.T) {
	r, err := parseGossip(gossipOut, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Sizes) != 2 || r.Sizes[0] != 10 || r.Sizes[1] != 100 {
		t.Fatalf("sizes %v, want [10 100]", r.Sizes)
	}
	if got := r.series(100, "s/detect"); len(got) != 2 || got[0] != 2.630 || got[1] != 3.700 {
		t.Fatalf("detect at 100: %v", got)
	}
	md := r.markdown()
	for _, want := range []string{
		"| 10 | 0.66 (0.62–0.70) | 2.00 (1.89–2.10) | 0 | 0 | 0 | 0.03 (0.03–0.03) |",
		"| 100 | 2.74 (2.50–2.98) | 3.17 (2.63–3.70) | 1 | 2 | 3 | 1.18 (1.17–1.20) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	rows := r.targetRows()
	for _, want := range []string{
		"| 100 proxies converge in < 3 s (median of 2; max 2.98 s) | 2.74 s | met |",
		"| 100 proxies notice a dead proxy in < 3 s (median of 2; max 3.70 s) | 3.17 s | **missed** |",
		"| 100 proxies: no live proxy marked dead (2 runs) | 1 | **missed** |",
	} {
		if !strings.Contains(rows, want) {
			t.Errorf("targets lack %q:\n%s", want, rows)
		}
	}

	// A size that ran fewer times than asked is an error, not a short median.
	if _, err := parseGossip(gossipOut, 3); err == nil || !strings.Contains(err.Error(), "2 result lines, want 3") {
		t.Errorf("a short run: err %v", err)
	}
	// Without the 100-proxy runs there is no target row to judge.
	small, err := parseGossip(strings.Join(strings.Split(gossipOut, "\n")[4:7], "\n"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if rows := small.targetRows(); rows != "" {
		t.Errorf("targets without 100 proxies: %q", rows)
	}
}
