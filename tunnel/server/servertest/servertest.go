package servertest

import (
	"github.com/prometheus/client_golang/prometheus"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authtest"
)

// CA is a TLS certificate authority for tests; see auth/authtest.
type CA = authtest.CA

// NewCA creates a self-signed CA named name.
func NewCA(t testing.TB, name string) *CA { t.Helper(); return authtest.NewCA(t, name) }

// Metric reads one series of a registry; see auth/authtest.Metric.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	return authtest.Metric(t, g, name, labels...)
}

// WaitFor polls cond until it returns true or timeout passes; see auth/authtest.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	authtest.WaitFor(t, timeout, what, cond)
}

// leakMarkers are the stack frames that betray a goroutine of the tunnel
// packages or of their transports, quic-go and yamux.
var leakMarkers = []string{"jumpgate.dev/jumpgate/tunnel/", "github.com/quic-go/quic-go", "github.com/hashicorp/yamux"}

// Leaked returns the stacks of goroutines, other than the caller's, that run
// tunnel, quic-go or yamux code, waiting up to timeout for them to end.
func Leaked(timeout time.Duration) []string { return authtest.Leaked(timeout, leakMarkers...) }

// CheckLeaks fails t, at its end, if goroutines of the tunnel packages, of
// quic-go or of yamux are still running a few seconds after its other
// cleanups. Call it first in a test, so that its cleanup runs last. Do not
// combine it with t.Parallel.
func CheckLeaks(t testing.TB) { t.Helper(); authtest.CheckLeaks(t, leakMarkers...) }

// MainLeakCheck runs the tests of a package, then checks that no tunnel,
// quic-go or yamux goroutine survives them. Use it as TestMain:
//
//	func TestMain(m *testing.M) { servertest.MainLeakCheck(m) }
func MainLeakCheck(m *testing.M) { authtest.MainLeakCheck(m, leakMarkers...) }
