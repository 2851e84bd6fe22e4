package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// idleRow is one run of BenchmarkIdleTunnels (tunnel/server): N simulated
// agents holding idle QUIC tunnels to one proxy.
type idleRow struct {
	Tunnels  int     // N
	Idle     string  // tunnel_idle_timeout, "" for the default
	CorePct  float64 // the proxy's CPU at idle, % of one core
	HeapKiB  float64 // Go heap and stacks per tunnel
	RSSKiB   float64 // resident set per tunnel
	ConnectS float64 // seconds to bring all N up
}

// idleResult is the idle-tunnel section: every row run, in order.
type idleResult struct {
	Rows []idleRow
}

// Targets of the performance issue for idle tunnels.
const (
	idleTargetKiB     = 64
	idleTargetCorePct = 5.0
	idleTargetTunnels = 10000
)

// idleModes are the sub-benchmarks each mode runs: quick measures the
// default setting; full adds the longer idle timeouts that trade noticing
// a dead peer later for less CPU.
var idleModes = map[string]string{
	"quick": `^BenchmarkIdleTunnels$/^(1000|10000)$`,
	"full":  `^BenchmarkIdleTunnels$`,
}

// runIdle runs BenchmarkIdleTunnels in its own process (a tunnel server in
// the benchmark process, the agents in a child) and parses its figures. It
// runs before anything else in the suite, when the machine is quiet.
func runIdle(ctx context.Context, mode string) (*idleResult, error) {
	re, ok := idleModes[mode]
	if !ok {
		return nil, fmt.Errorf("mode %q", mode)
	}
	out, err := goBench(ctx, "./tunnel/server/", re, "-benchtime", "1x", "-timeout", "30m")
	if err != nil {
		return nil, err
	}
	rows, err := parseIdle(out)
	if err != nil {
		return nil, err
	}
	return &idleResult{Rows: rows}, nil
}

// parseIdle reads the result lines of go test -bench IdleTunnels.
func parseIdle(out string) ([]idleRow, error) {
	lines, err := parseGoBench(out, "BenchmarkIdleTunnels", "%core-idle", "KiB/tunnel-heap", "KiB/tunnel-rss", "s-to-connect")
	if err != nil {
		return nil, fmt.Errorf("idle tunnels: %w", err)
	}
	var rows []idleRow
	for _, l := range lines {
		var r idleRow
		n, idle, _ := strings.Cut(l.Sub, "-")
		if r.Tunnels, err = strconv.Atoi(n); err != nil {
			return nil, fmt.Errorf("idle tunnels: sub-benchmark %q: want a tunnel count first", l.Sub)
		}
		r.Idle = strings.TrimPrefix(idle, "idle=")
		r.CorePct, r.HeapKiB, r.RSSKiB, r.ConnectS = l.Metrics["%core-idle"], l.Metrics["KiB/tunnel-heap"], l.Metrics["KiB/tunnel-rss"], l.Metrics["s-to-connect"]
		rows = append(rows, r)
	}
	return rows, nil
}

// markdown is the section of RESULTS.md.
func (r *idleResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Idle tunnels on one proxy\n\n")
	fmt.Fprintf(&b, "`BenchmarkIdleTunnels` (tunnel/server), run first in this same run while nothing else was busy: a real tunnel server on a socket opened as the proxy opens it; N simulated agents in a child process (so the figures are the proxy's alone), each a QUIC tunnel with its own node certificate, the agent's Hello, then nothing but keepalives. Memory is the Go heap and stacks after a forced collection, and the resident set, both per tunnel; CPU is the proxy's over at least 20 s and two keepalive periods. `tunnel_idle_timeout` is set on both ends (keepalives every third of it); the default is 15 s, and longer ones trade how soon a node notices a proxy that vanished without a trace for less CPU (ops/README.md, \"Mesh operations\").\n\n")
	fmt.Fprintf(&b, "| Tunnels | tunnel_idle_timeout | Heap and stacks per tunnel | RSS per tunnel | CPU at idle | Time to connect all |\n|---:|---|---:|---:|---:|---:|\n")
	for _, x := range r.Rows {
		idle := "15s (default)"
		if x.Idle != "" {
			idle = x.Idle
		}
		fmt.Fprintf(&b, "| %d | %s | %.1f KiB | %.1f KiB | %.2f%% of a core | %.1f s |\n", x.Tunnels, idle, x.HeapKiB, x.RSSKiB, x.CorePct, x.ConnectS)
	}
	return b.String()
}

// targetRows are the idle-tunnel lines of the Targets table: memory at the
// largest count with the default setting, and CPU for 10,000 tunnels at
// each setting measured.
func (r *idleResult) targetRows() string {
	var b strings.Builder
	for _, x := range r.Rows {
		if x.Tunnels != idleTargetTunnels {
			continue
		}
		setting := "default tunnel_idle_timeout (15s)"
		if x.Idle != "" {
			setting = "tunnel_idle_timeout " + x.Idle
		}
		if x.Idle == "" {
			fmt.Fprintf(&b, "| memory per idle tunnel ≤ %d KiB (10,000 tunnels, heap and stacks) | %.1f KiB | %s |\n", idleTargetKiB, x.HeapKiB, verdictOf(x.HeapKiB <= idleTargetKiB))
			fmt.Fprintf(&b, "| memory per idle tunnel ≤ %d KiB (10,000 tunnels, resident set) | %.1f KiB | %s |\n", idleTargetKiB, x.RSSKiB, verdictOf(x.RSSKiB <= idleTargetKiB))
		}
		fmt.Fprintf(&b, "| 10,000 idle tunnels on one proxy < %.0f%% of one core, %s | %.2f%% | %s |\n", idleTargetCorePct, setting, x.CorePct, verdictOf(x.CorePct < idleTargetCorePct))
	}
	return b.String()
}
