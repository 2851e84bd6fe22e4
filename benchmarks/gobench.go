package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// benchLine is one result line of go test -bench: the sub-benchmark's name
// (without the benchmark's and the -GOMAXPROCS suffix) and the metrics the
// benchmark reported (ns/op included).
type benchLine struct {
	Sub     string
	Metrics map[string]float64
}

// goBench runs `go test -run '^$' -bench re` with flags on one package and
// returns its output. It needs the source tree and the Go toolchain, which
// `make bench` (go run ./benchmarks) has. A failure carries the output.
func goBench(ctx context.Context, pkg, re string, flags ...string) (string, error) {
	args := append([]string{"test", "-run", "^$", "-bench", re}, flags...)
	out, err := exec.CommandContext(ctx, "go", append(args, pkg)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return string(out), nil
}

// benchResult matches a result line: name, iterations, then value-unit
// pairs, the first being ns/op.
var benchResult = regexp.MustCompile(`(?m)^(Benchmark[^\s/]+)(?:/(\S+?))?(?:-\d+)?\s+\d+((?:[ \t]+[0-9.e+-]+ [^\s]+)+)[ \t]*$`)

// parseGoBench returns the result lines of benchmark name in out, each of
// which must carry every metric in want. A line split by the benchmark's
// own output does not match, and no line at all is an error.
func parseGoBench(out, name string, want ...string) ([]benchLine, error) {
	var lines []benchLine
	for _, m := range benchResult.FindAllStringSubmatch(out, -1) {
		if m[1] != name {
			continue
		}
		l := benchLine{Sub: m[2], Metrics: map[string]float64{}}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s/%s: %q is not a number", name, m[2], f[i])
			}
			l.Metrics[f[i+1]] = v
		}
		for _, w := range want {
			if _, ok := l.Metrics[w]; !ok {
				return nil, fmt.Errorf("%s/%s: no %s in %q", name, m[2], w, strings.TrimSpace(m[0]))
			}
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("no result line of %s in: %s", name, out)
	}
	return lines, nil
}

// authResult is the certificate and raft section: Go benchmarks in auth/ca
// and auth/raftnode, run in the same run.
type authResult struct {
	Sign  []benchLine // BenchmarkSignUserSSH, one per keystore
	Apply []benchLine // BenchmarkApply, one per writer count
}

// Targets of the auth HA issue that these benchmarks check.
const (
	signTargetPerS  = 5000 // software signings per second
	applyTargetPerS = 2000 // raft writes per second with 64 writers
)

// runAuth runs the certificate-issuance and raft-write benchmarks. SoftHSM2
// comes from `make deps`; without it that row is missing.
func runAuth(ctx context.Context) (*authResult, error) {
	var r authResult
	out, err := goBench(ctx, "./auth/ca/", "^BenchmarkSignUserSSH$", "-benchtime", "3000x")
	if err != nil {
		return nil, fmt.Errorf("certificate issuance: %w", err)
	}
	if r.Sign, err = parseGoBench(out, "BenchmarkSignUserSSH", "certs/s", "p99-ms"); err != nil {
		return nil, err
	}
	out, err = goBench(ctx, "./auth/raftnode/", "^BenchmarkApply$", "-benchtime", "3000x")
	if err != nil {
		return nil, fmt.Errorf("raft writes: %w", err)
	}
	if r.Apply, err = parseGoBench(out, "BenchmarkApply", "writes/s", "p99-ms"); err != nil {
		return nil, err
	}
	return &r, nil
}

// markdown is the section of RESULTS.md.
func (r *authResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Certificates and raft\n\n")
	fmt.Fprintf(&b, "Go benchmarks run in this same run. `BenchmarkSignUserSSH` (auth/ca): user SSH certificates signed by 8 goroutines, 3,000 in all, with the software keystore (ECDSA P-256), software Ed25519, and ECDSA P-256 inside SoftHSM2 through PKCS#11; what a login costs the auth server besides the password hash. `BenchmarkApply` (auth/raftnode): replicated writes through the leader of 3 voters over mutual TLS on loopback, each with its own BoltDB log and fsync, 3,000 in all, by one writer and by 64 at once.\n\n")
	fmt.Fprintf(&b, "| Benchmark | Rate | p99 of one |\n|---|---:|---:|\n")
	for _, l := range r.Sign {
		fmt.Fprintf(&b, "| certificate issuance, %s | %.0f certs/s | %.2f ms |\n", l.Sub, l.Metrics["certs/s"], l.Metrics["p99-ms"])
	}
	for _, l := range r.Apply {
		fmt.Fprintf(&b, "| raft writes, %s | %.0f writes/s | %.2f ms |\n", strings.ReplaceAll(l.Sub, "=", " "), l.Metrics["writes/s"], l.Metrics["p99-ms"])
	}
	return b.String()
}

// targetRows are the lines of the Targets table.
func (r *authResult) targetRows() string {
	var b strings.Builder
	for _, l := range r.Sign {
		if strings.HasPrefix(l.Sub, "software-") {
			v := l.Metrics["certs/s"]
			fmt.Fprintf(&b, "| certificate issuance, %s ≥ %d/s | %.0f/s | %s |\n", l.Sub, signTargetPerS, v, verdictOf(v >= signTargetPerS))
		}
	}
	for _, l := range r.Apply {
		if l.Sub == "writers=64" {
			v := l.Metrics["writes/s"]
			fmt.Fprintf(&b, "| raft writes with 64 writers ≥ %d/s | %.0f/s | %s |\n", applyTargetPerS, v, verdictOf(v >= applyTargetPerS))
		}
	}
	return b.String()
}
