package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// rollResult is the rolling upgrade measured by the end-to-end test
// TestRollingUpgrade (cmd/internal/e2e), which writes it as JSON: 6 proxies
// in 3 regions, one of the previous release killed with -9 and brought
// back, the other five drained and restarted with a new build, while every
// session streams lines through `cat` on a node and checks each comes back
// once, in order.
type rollResult struct {
	Sessions                     int
	Interval                     time.Duration
	BaseP50, BaseP99, BaseMax    time.Duration
	CrashP50, CrashP99, CrashMax time.Duration
	DrainP50, DrainP99, DrainMax time.Duration
	Lost                         int
	Resumptions                  float64
	Took                         time.Duration
}

// rollSessions is how many sessions the benchmark keeps through the roll.
const rollSessions = 200

// runRoll runs TestRollingUpgrade with rollSessions sessions.
func runRoll(ctx context.Context, dir string) (*rollResult, error) {
	report := filepath.Join(dir, "roll.json")
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-timeout=20m", "-run", "^TestRollingUpgrade$", "-v", "./cmd/internal/e2e/")
	cmd.Env = append(os.Environ(), fmt.Sprintf("JUMPGATE_ROLL_SESSIONS=%d", rollSessions), "JUMPGATE_ROLL_REPORT="+report)
	logPath := filepath.Join(dir, "roll.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	log.Printf("rolling upgrade: 6 proxies, %d sessions (TestRollingUpgrade; log in %s)", rollSessions, logPath)
	runErr := cmd.Run()
	b, err := os.ReadFile(report)
	if err != nil {
		return nil, fmt.Errorf("TestRollingUpgrade wrote no report (%v): see %s", runErr, logPath)
	}
	var r rollResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("roll report: %w", err)
	}
	if runErr != nil && r.Lost == 0 {
		return nil, fmt.Errorf("TestRollingUpgrade failed: %v: see %s", runErr, logPath)
	}
	return &r, nil
}

func (r *rollResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Rolling upgrade\n\n")
	fmt.Fprintf(&b, "TestRollingUpgrade with %d sessions (half `jg ssh`, half OpenSSH through `jg proxy ssh`, entering at all 6 proxies, each sending a line every %v through `cat` on a node and checking every line comes back once, in order). One proxy of the previous release is killed with -9 and restarted as the new build; the other five are drained (two by SIGTERM, three by `ops/rolling-upgrade.sh`) and restarted. A stall is the longest time a session went without a line coming back (so %v is no stall at all); the figures are over the sessions' longest stalls. Every client, proxy and node runs on this one machine, so the steady-state row (3 s with nothing happening) is the baseline: what the machine's load alone does to the measure.\n\n", r.Sessions, r.Interval, r.Interval)
	fmt.Fprintf(&b, "| | p50 | p99 | max |\n|---|---:|---:|---:|\n")
	ms := func(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
	fmt.Fprintf(&b, "| steady state (baseline) | %s | %s | %s |\n", ms(r.BaseP50), ms(r.BaseP99), ms(r.BaseMax))
	fmt.Fprintf(&b, "| stall after kill -9 (not drained) | %s | %s | %s |\n", ms(r.CrashP50), ms(r.CrashP99), ms(r.CrashMax))
	fmt.Fprintf(&b, "| stall during drains | %s | %s | %s |\n", ms(r.DrainP50), ms(r.DrainP99), ms(r.DrainMax))
	fmt.Fprintf(&b, "\nSessions lost: %d of %d. Resumptions at the nodes: %.0f. Whole test: %v.\n", r.Lost, r.Sessions, r.Resumptions, r.Took.Round(time.Second))
	return b.String()
}

func (r *rollResult) targetRows() string {
	lost, stall := verdictOf(r.Lost == 0), verdictOf(r.DrainP99 < time.Second)
	return fmt.Sprintf("| rolling upgrade of 6 proxies with %d sessions: 0 lost | %d lost | %s |\n| rolling upgrade: p99 stall during drains < 1 s | %d ms | %s |\n",
		r.Sessions, r.Lost, lost, r.DrainP99.Milliseconds(), stall)
}
