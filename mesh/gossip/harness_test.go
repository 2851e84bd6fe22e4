package gossip

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"jumpgate.dev/jumpgate/auth/authtest"
)

// logBuf collects log output; see authtest.LogBuf.
type logBuf = authtest.LogBuf

var (
	testKey  = bytes.Repeat([]byte{0x42}, 32)
	otherKey = bytes.Repeat([]byte{0x17}, 32)
)

// logBuf collects the logs of a test's proxies; they are printed only if
// the test fails (memberlist may log from goroutines that outlive the
// test, where t.Log would panic).
// env is one test's mesh: proxies sharing a log buffer.
type env struct {
	t    *testing.T
	logs *logBuf
}

func newEnv(t *testing.T) *env {
	t.Helper()
	checkGoroutines(t)
	e := &env{t: t, logs: &logBuf{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", e.logs.String())
		}
	})
	return e
}

// proxy is a Cluster with its registry and a count of OnChange calls.
type proxy struct {
	*Cluster
	reg     *prometheus.Registry
	changes *atomic.Int64
}

func (e *env) config(id string, seeds ...string) Config {
	return Config{
		BindAddr: "127.0.0.1:0",
		Seeds:    seeds,
		Keys:     [][]byte{testKey},
		Meta: Meta{
			ID:         id,
			Region:     "region-" + id,
			Lat:        float64(len(id)),
			Lon:        -float64(len(id)),
			HasCoords:  true,
			PublicAddr: "127.0.0.1:3023",
			PeerAddr:   "127.0.0.1:3024",
			Version:    "v0.0.0-test",
		},
		Timing: FastTiming(),
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
}

// start starts a proxy from cfg and shuts it down at the end of the test.
func (e *env) start(cfg Config) *proxy {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	var n atomic.Int64
	cfg.Metrics = reg
	cfg.OnChange = func() { n.Add(1) }
	c, err := New(cfg)
	if err != nil {
		e.t.Fatalf("New(%s): %v", cfg.Meta.ID, err)
	}
	e.t.Cleanup(func() { c.Shutdown() })
	return &proxy{Cluster: c, reg: reg, changes: &n}
}

func (e *env) proxy(id string, seeds ...string) *proxy {
	e.t.Helper()
	return e.start(e.config(id, seeds...))
}

// mesh starts proxies with the given IDs, each joining through the first.
func (e *env) mesh(ids ...string) []*proxy {
	e.t.Helper()
	ps := []*proxy{e.proxy(ids[0])}
	for _, id := range ids[1:] {
		ps = append(ps, e.proxy(id, ps[0].LocalAddr()))
	}
	waitAlive(e.t, ps, ids...)
	return ps
}

// waitAlive waits until every proxy in ps sees each of ids alive.
func waitAlive(t *testing.T, ps []*proxy, ids ...string) {
	t.Helper()
	for _, p := range ps {
		authtest.WaitFor(t, 10*time.Second, fmt.Sprintf("%s to see %v alive", p.Self().ID, ids), func() bool {
			for _, id := range ids {
				m, ok := p.Member(id)
				if !ok || (m.Health != HealthAlive && m.Health != HealthSuspect) {
					return false
				}
			}
			return true
		})
	}
}

func (p *proxy) health(id string) Health {
	m, ok := p.Member(id)
	if !ok {
		return ""
	}
	return m.Health
}

func (p *proxy) holds(node string, want ...string) bool {
	return slices.Equal(p.Holders(node), want)
}

func (p *proxy) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return authtest.Metric(t, p.reg, name, labels...)
}

// checkGoroutines fails the test if goroutines started during it are
// still running once its cleanups (registered later, so run earlier)
// have shut everything down.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d goroutines before the test, %d after:\n%s", before, runtime.NumGoroutine(), buf)
				return
			}
			<-tick.C
		}
	})
}

func nodeNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%05d", prefix, i)
	}
	return out
}

func containsLine(logs, substr string) bool {
	for line := range strings.SplitSeq(logs, "\n") {
		if strings.Contains(line, substr) {
			return true
		}
	}
	return false
}

// directorySnapshot returns the sorted nodes of each origin set the
// Cluster has, counted or not.
func (c *Cluster) directorySnapshot() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{c.meta.ID: slices.Sorted(maps.Keys(c.dir.own.nodes))}
	for o, s := range c.dir.others {
		out[o] = slices.Sorted(maps.Keys(s.nodes))
	}
	return out
}
