package resume

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestMetricsLint: the node's metrics follow Prometheus conventions (promlint)
// and the project's names, and every series exists from the start.
func TestMetricsLint(t *testing.T) {
	checkLeaks(t)
	node := newTestNode(t, ServerConfig{})
	mfs, err := node.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	want := map[string]int{
		"jumpgate_resume_sessions":             2,
		"jumpgate_resume_resumptions_total":    4,
		"jumpgate_resume_stall_seconds":        1,
		"jumpgate_resume_replayed_bytes_total": 1,
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "jumpgate_resume_") {
			t.Errorf("metric %s is not named jumpgate_resume_*", mf.GetName())
		}
		if mf.GetHelp() == "" {
			t.Errorf("metric %s has no help text", mf.GetName())
		}
		if n, ok := want[mf.GetName()]; !ok || n != len(mf.GetMetric()) {
			t.Errorf("metric %s has %d series, want %d", mf.GetName(), len(mf.GetMetric()), n)
		}
		delete(want, mf.GetName())
	}
	for name := range want {
		t.Errorf("metric %s is missing", name)
	}
}
