package main

import (
	"fmt"
	"slices"
	"strings"
)

// results holds every sample of one run: MB/s for throughput, milliseconds
// for connects, keyed by path host alias.
type results struct {
	Mode                        string
	Params                      params
	Machine                     machine
	TCP                         []float64
	Throughput, Upload, Connect map[string][]float64
	// CPU seconds per GiB downloaded: the proxy process on the Jumpgate
	// path, the node process on the Jumpgate and node-direct paths.
	ProxyCPU map[string][]float64
	NodeCPU  map[string][]float64
	Sessions []sessionResult
	Control  *controlResult // nil: not measured
	Roll     *rollResult    // nil: not measured
	Idle     *idleResult    // nil: not measured
	Auth     *authResult    // nil: not measured
	Gossip   *gossipResult  // nil: not measured
}

// target is one goal from the performance issue, as a ratio of two medians.
type target struct {
	What     string
	Num, Den string // path hosts
	Metric   string // "download" or "connect"
	Limit    float64
	AtLeast  bool
}

var targets = []target{
	{"throughput via one proxy ≥ 1.2× ProxyJump", "jumpgate", "proxyjump", "download", 1.2, true},
	{"throughput via one proxy ≥ 0.6× direct ssh", "jumpgate", "direct", "download", 0.6, true},
	{"connect time via one proxy ≤ 0.8× ProxyJump", "jumpgate", "proxyjump", "connect", 0.8, false},
	{"connect time via one proxy ≤ 1.3× direct ssh", "jumpgate", "direct", "connect", 1.3, false},
	{"throughput via one proxy, TCP tunnel ≥ 1.2× ProxyJump", "jumpgatetcp", "proxyjump", "download", 1.2, true},
	{"throughput via one proxy, TCP tunnel ≥ 0.6× direct ssh", "jumpgatetcp", "direct", "download", 0.6, true},
	{"throughput via two peered proxies ≥ 1.0× ProxyJump", "jumpgate2", "proxyjump", "download", 1.0, true},
	{"resumable stream costs ≤ 5% throughput (via one proxy, with ≥ 0.95× without)", "jumpgate", "jumpgatenoresume", "download", 0.95, true},
	{"resumable stream costs ≤ 5% upload throughput", "jumpgate", "jumpgatenoresume", "upload", 0.95, true},
	{"connect time via two peered proxies ≤ 0.8× ProxyJump", "jumpgate2", "proxyjump", "connect", 0.8, false},
}

func spread(xs []float64, format string) string {
	if len(xs) == 0 {
		return "–"
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", median(xs), slices.Min(xs), slices.Max(xs))
}

func ratio(a, b []float64) string {
	if len(a) == 0 || len(b) == 0 || median(b) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", median(a)/median(b))
}

func (r *results) series(metric string) map[string][]float64 {
	switch metric {
	case "download":
		return r.Throughput
	case "upload":
		return r.Upload
	}
	return r.Connect
}

func (r *results) markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# Jumpgate benchmark results\n\n")
	fmt.Fprintf(&b, "Written by `make bench` (mode %s). Every figure below was measured in the same run on the machine described here; ratios compare medians from this run only. Re-run `make bench` on your own machine rather than trusting these numbers.\n\n", r.Mode)
	fmt.Fprintf(&b, "| | |\n|---|---|\n| Date | %s |\n| Commit | %s |\n| CPU | %s |\n| Cores | %d |\n| Kernel | %s |\n| Go | %s |\n| OpenSSH | %s |\n| Repetitions | %d × %s per path and direction; %d connects per path |\n\n",
		m.Date, m.Commit, m.CPU, m.Cores, m.Kernel, m.Go, m.OpenSSH, r.Params.Reps, human(r.Params.Bytes), r.Params.Connects)
	fmt.Fprintf(&b, "All paths use the same OpenSSH client with `Ciphers aes128-gcm@openssh.com`, no compression, on loopback. Jumpgate nodes record sessions, as by default (a 1 GiB transfer fills a recording up to node.recording_limit, 64 MiB, then stops recording); before each transfer the suite waits until the nodes have uploaded the previous recordings, so no measurement pays for another's upload. Medians with min–max in brackets.\n\n")

	fmt.Fprintf(&b, "## Paths\n\n| Path | What the bytes go through |\n|---|---|\n")
	fmt.Fprintf(&b, "| raw loopback TCP | one Go TCP connection, 256 KiB writes (the ceiling) |\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "| %s | %s |\n", p.Title, p.What)
	}

	fmt.Fprintf(&b, "\n## Throughput, %s (MB/s, higher is better)\n\n", human(r.Params.Bytes))
	fmt.Fprintf(&b, "Download is `ssh HOST head -c N /dev/zero`; upload is `ssh HOST wc -c` fed N bytes, and the byte count is checked.\n\n")
	fmt.Fprintf(&b, "| Path | Download | vs direct | vs ProxyJump | Upload | vs direct | vs ProxyJump |\n|---|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| raw loopback TCP | %s | | | | | |\n", spread(r.TCP, "%.0f"))
	for _, p := range paths {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", p.Title,
			spread(r.Throughput[p.Host], "%.0f"), ratio(r.Throughput[p.Host], r.Throughput["direct"]), ratio(r.Throughput[p.Host], r.Throughput["proxyjump"]),
			spread(r.Upload[p.Host], "%.0f"), ratio(r.Upload[p.Host], r.Upload["direct"]), ratio(r.Upload[p.Host], r.Upload["proxyjump"]))
	}

	fmt.Fprintf(&b, "\n### Where the CPU goes (download, CPU seconds per GiB)\n\n")
	fmt.Fprintf(&b, "| Process | via one proxy, QUIC tunnel | via one proxy, TCP tunnel | Jumpgate node, direct |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| proxy (TLS from `jg`, tunnel to the node) | %s | %s | |\n", spread(r.ProxyCPU["jumpgate"], "%.2f"), spread(r.ProxyCPU["jumpgatetcp"], "%.2f"))
	fmt.Fprintf(&b, "| node (SSH server, tunnel agent) | %s | %s | %s |\n", spread(r.NodeCPU["jumpgate"], "%.2f"), spread(r.NodeCPU["jumpgatetcp"], "%.2f"), spread(r.NodeCPU["jgnode"], "%.2f"))
	fmt.Fprintf(&b, "\nThe difference between the node's two columns is the cost of the node's end of the tunnel.\n")

	fmt.Fprintf(&b, "\n## Connect time, `ssh HOST true` (ms, lower is better)\n\n")
	fmt.Fprintf(&b, "Wall time of a whole `ssh` run: process start, key exchange, authentication, one exec, exit. Via Jumpgate this includes starting `jg proxy ssh`, its TLS handshake to the proxy and the dial through the tunnel.\n\n")
	fmt.Fprintf(&b, "| Path | Connect | vs direct | vs ProxyJump |\n|---|---:|---:|---:|\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", p.Title, spread(r.Connect[p.Host], "%.1f"),
			ratio(r.Connect[p.Host], r.Connect["direct"]), ratio(r.Connect[p.Host], r.Connect["proxyjump"]))
	}

	if len(r.Sessions) > 0 {
		fmt.Fprintf(&b, "\n## Concurrent sessions through one proxy\n\n")
		fmt.Fprintf(&b, "N SSH connections to one node through one proxy (QUIC tunnel), each with an open session channel, held at once; the live memory (Go heap in use plus goroutine stacks, after a forced GC) of the proxy and node processes before and after, divided by N. Target: at most 256 KiB per active session.\n\n")
		fmt.Fprintf(&b, "| Sessions | Time to open all | Proxy live memory before → after (MiB) | Proxy per session | Node live memory before → after (MiB) | Node per session |\n|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range r.Sessions {
			fmt.Fprintf(&b, "| %d | %.1f s | %.0f → %.0f | %.0f KiB | %.0f → %.0f | %.0f KiB |\n", s.N, s.Open.Seconds(),
				float64(s.ProxyBefore)/1024, float64(s.ProxyAfter)/1024, s.ProxyKiB, float64(s.NodeBefore)/1024, float64(s.NodeAfter)/1024, s.NodeKiB)
		}
	}

	if r.Idle != nil {
		b.WriteString(r.Idle.markdown())
	}
	if r.Control != nil {
		b.WriteString(r.Control.markdown())
	}
	if r.Auth != nil {
		b.WriteString(r.Auth.markdown())
	}
	if r.Gossip != nil {
		b.WriteString(r.Gossip.markdown())
	}
	if r.Roll != nil {
		b.WriteString(r.Roll.markdown())
	}

	fmt.Fprintf(&b, "\n## Targets\n\n| Target | Measured | Result |\n|---|---:|---|\n")
	for _, t := range targets {
		s := r.series(t.Metric)
		num, den := median(s[t.Num]), median(s[t.Den])
		got, verdict := "–", "not measured"
		if den > 0 {
			v := num / den
			got = fmt.Sprintf("%.2f×", v)
			verdict = verdictOf(t.AtLeast && v >= t.Limit || !t.AtLeast && v <= t.Limit)
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.What, got, verdict)
	}
	if r.Idle != nil {
		b.WriteString(r.Idle.targetRows())
	}
	if r.Control != nil {
		b.WriteString(r.Control.targetRows())
	}
	if r.Auth != nil {
		b.WriteString(r.Auth.targetRows())
	}
	if r.Gossip != nil {
		b.WriteString(r.Gossip.targetRows())
	}
	if r.Roll != nil {
		b.WriteString(r.Roll.targetRows())
	}

	fmt.Fprintf(&b, "\n## Measured elsewhere\n\n")
	fmt.Fprintf(&b, "1,000 concurrent sessions run in BENCH=full only (quick mode holds 100), and so do the idle tunnels with a longer tunnel_idle_timeout. The mesh gossip runs above use the proxies' default timing across 200 ms of RTT; the same benchmark with the fast test timing on plain loopback, tunnel-directory bandwidth and peer dial setup are Go benchmarks in mesh/meshtest, and the tunnels' own throughput against raw TCP is `BenchmarkTunnelThroughput` in tunnel/server (`make bench-go`; figures in README.md).\n")
	return b.String()
}

// verdictOf is a target's Result column.
func verdictOf(met bool) string {
	if met {
		return "met"
	}
	return "**missed**"
}
