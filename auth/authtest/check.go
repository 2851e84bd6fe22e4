package authtest

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric returns the value of the series of metric name whose labels
// include the given name/value pairs: a counter's or gauge's value, or a
// histogram's sample count. It fails the test when no series matches.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	m := series(t, g, name, labels, func(m *dto.Metric) bool { return m.Counter != nil || m.Gauge != nil || m.Histogram != nil })
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return float64(m.Histogram.GetSampleCount())
}

// HistogramSum returns the sum of the observations of the histogram
// series of metric name whose labels include the given name/value pairs.
// It fails the test when no series matches.
func HistogramSum(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	return series(t, g, name, labels, func(m *dto.Metric) bool { return m.Histogram != nil }).Histogram.GetSampleSum()
}

// series returns the first series of metric name whose labels include the
// given name/value pairs and that ok accepts; it fails the test when none
// does.
func series(t testing.TB, g prometheus.Gatherer, name string, labels []string, ok func(*dto.Metric) bool) *dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m.GetLabel(), labels) && ok(m) {
				return m
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return nil
}

// MetricSum adds the values of every counter series of metric name (0 when
// there is none).
func MetricSum(t testing.TB, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func labelsMatch(have []*dto.LabelPair, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		found := false
		for _, l := range have {
			if l.GetName() == want[i] && l.GetValue() == want[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Leaked returns the stacks of goroutines, other than the caller's and the
// test framework's, whose stack mentions any of markers (package paths such
// as "jumpgate.dev/jumpgate/mesh/peer" or "github.com/quic-go/quic-go"),
// waiting up to timeout for them to end.
func Leaked(timeout time.Duration, markers ...string) []string {
	deadline := time.Now().Add(timeout)
	for {
		leaked := goroutinesWith(markers)
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting and hoping
	}
}

func goroutinesWith(markers []string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		// The first goroutine is the caller's; the others named here are
		// the testing framework running the caller.
		if i == 0 || strings.Contains(g, "authtest.Leaked") || strings.Contains(g, "testing.(*T).Run") || strings.Contains(g, "testing.tRunner") {
			continue
		}
		for _, m := range markers {
			if strings.Contains(g, m) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// CheckLeaks fails t, at its end, if goroutines matching markers still run
// a few seconds after its other cleanups. Call it first in a test, so that
// its cleanup runs last. Do not combine it with t.Parallel.
func CheckLeaks(t testing.TB, markers ...string) {
	t.Helper()
	t.Cleanup(func() {
		if leaked := Leaked(5*time.Second, markers...); len(leaked) > 0 {
			t.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

// MainLeakCheck runs a package's tests, then fails the run if goroutines
// matching markers survive them. Use it as TestMain.
func MainLeakCheck(m *testing.M, markers ...string) {
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(5*time.Second, markers...); len(leaked) > 0 {
			os.Stderr.WriteString("goroutines leaked by the tests:\n\n" + strings.Join(leaked, "\n\n") + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
