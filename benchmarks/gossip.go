package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// gossipResult is the mesh section: BenchmarkGossipConvergence
// (mesh/meshtest) with the proxies' default gossip timing across 200 ms of
// emulated RTT, repeated, for each mesh size.
type gossipResult struct {
	Runs  int
	Sizes []int               // proxies, ascending
	Lines map[int][]benchLine // every run, by size
}

// gossipSizes are the mesh sizes the performance issue names.
var gossipSizes = []int{10, 50, 100}

// gossipRuns is how often each mode repeats each size: about 6-9 s a run
// on 2 cores.
var gossipRuns = map[string]int{"quick": 3, "full": 7}

// Targets of the mesh issue, for the largest mesh: convergence and
// failure detection under 3 s, and no live proxy declared dead.
const (
	gossipTargetProxies = 100
	gossipTargetS       = 3.0
)

// gossipMetrics are the figures each result line must carry.
var gossipMetrics = []string{"s/converge", "s/detect", "false-deaths", "refutes", "late-pairs", "cores"}

// runGossip runs the convergence benchmark runs times for every size, in
// one go test process, and parses every line.
func runGossip(ctx context.Context, runs int) (*gossipResult, error) {
	sizes := make([]string, len(gossipSizes))
	for i, n := range gossipSizes {
		sizes[i] = strconv.Itoa(n)
	}
	re := `^BenchmarkGossipConvergence$/^default/rtt=200ms/n=(` + strings.Join(sizes, "|") + `)$`
	out, err := goBench(ctx, "./mesh/meshtest/", re, "-benchtime", "1x", "-count", strconv.Itoa(runs), "-timeout", "30m")
	if err != nil {
		return nil, err
	}
	return parseGossip(out, runs)
}

// parseGossip groups BenchmarkGossipConvergence's lines by mesh size and
// checks that each size ran runs times.
func parseGossip(out string, runs int) (*gossipResult, error) {
	lines, err := parseGoBench(out, "BenchmarkGossipConvergence", gossipMetrics...)
	if err != nil {
		return nil, err
	}
	r := &gossipResult{Runs: runs, Lines: map[int][]benchLine{}}
	for _, l := range lines {
		_, size, ok := strings.Cut(l.Sub, "/n=")
		n, err := strconv.Atoi(size)
		if !ok || err != nil {
			return nil, fmt.Errorf("BenchmarkGossipConvergence/%s: no mesh size in the name", l.Sub)
		}
		if _, seen := r.Lines[n]; !seen {
			r.Sizes = append(r.Sizes, n)
		}
		r.Lines[n] = append(r.Lines[n], l)
	}
	slices.Sort(r.Sizes)
	for _, n := range r.Sizes {
		if got := len(r.Lines[n]); got != runs {
			return nil, fmt.Errorf("BenchmarkGossipConvergence n=%d: %d result lines, want %d", n, got, runs)
		}
	}
	return r, nil
}

// series is one metric over every run of mesh size n.
func (r *gossipResult) series(n int, metric string) []float64 {
	var xs []float64
	for _, l := range r.Lines[n] {
		xs = append(xs, l.Metrics[metric])
	}
	return xs
}

// sum adds one metric over every run of mesh size n.
func (r *gossipResult) sum(n int, metric string) int {
	var s float64
	for _, v := range r.series(n, metric) {
		s += v
	}
	return int(s)
}

// markdown is the section of RESULTS.md.
func (r *gossipResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Mesh gossip\n\n")
	fmt.Fprintf(&b, "`BenchmarkGossipConvergence` (mesh/meshtest), run %d times per size in this same run. N proxies in one process, each what a proxy runs for the mesh (memberlist gossip with its key, the QUIC peer link, certificates from one CA), on addresses of their own in 127.0.0.0/8 behind an emulated WAN that delays every datagram and stream by 200 ms of round trip between any two proxies, with the default gossip timing. Each proxy joins through the first. *Converge* is from the first start until every proxy has seen every other alive; *detect* is from silencing one proxy (as kill -9 does: no leave message) until every other marks it dead; *false deaths* are live proxies marked dead at any time, and *suspicions refuted* live proxies suspected and cleared. All N share this machine's cores (the idle mesh's CPU is in the last column), which proxies on separate machines would not. Seconds; medians with min–max; counts are totals over all runs.\n\n", r.Runs)
	fmt.Fprintf(&b, "| Proxies | Converge | Detect | False deaths | Suspicions refuted | Pairs not alive after 10 s | Idle mesh, cores |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range r.Sizes {
		fmt.Fprintf(&b, "| %d | %s | %s | %d | %d | %d | %s |\n", n,
			spread(r.series(n, "s/converge"), "%.2f"), spread(r.series(n, "s/detect"), "%.2f"),
			r.sum(n, "false-deaths"), r.sum(n, "refutes"), r.sum(n, "late-pairs"), spread(r.series(n, "cores"), "%.2f"))
	}
	return b.String()
}

// targetRows are the lines of the Targets table, for the largest mesh the
// targets name (nothing if it did not run).
func (r *gossipResult) targetRows() string {
	n := gossipTargetProxies
	if len(r.Lines[n]) == 0 {
		return ""
	}
	var b strings.Builder
	for _, m := range []struct{ what, metric string }{
		{"converge", "s/converge"},
		{"notice a dead proxy", "s/detect"},
	} {
		xs := r.series(n, m.metric)
		v := median(xs)
		fmt.Fprintf(&b, "| %d proxies %s in < %.0f s (median of %d; max %.2f s) | %.2f s | %s |\n",
			n, m.what, gossipTargetS, len(xs), slices.Max(xs), v, verdictOf(v < gossipTargetS))
	}
	fd := r.sum(n, "false-deaths")
	fmt.Fprintf(&b, "| %d proxies: no live proxy marked dead (%d runs) | %d | %s |\n", n, len(r.Lines[n]), fd, verdictOf(fd == 0))
	return b.String()
}
