package servertest

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authtest"
)

// CA is a TLS certificate authority for tests; see auth/authtest.
type CA = authtest.CA

// NewCA creates a self-signed CA named name.
func NewCA(t testing.TB, name string) *CA { t.Helper(); return authtest.NewCA(t, name) }

// WaitFor polls cond until it returns true or timeout passes; see auth/authtest.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	authtest.WaitFor(t, timeout, what, cond)
}

// leakMarkers are the stack frames that betray a goroutine of the tunnel
// packages or of quic-go.
var leakMarkers = []string{"jumpgate.dev/jumpgate/tunnel/", "github.com/quic-go/quic-go"}

// Leaked returns the stacks of goroutines, other than the caller's, that run
// tunnel or quic-go code, waiting up to timeout for them to end.
func Leaked(timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		leaked := tunnelGoroutines()
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting and hoping
	}
}

func tunnelGoroutines() []string {
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
	// The first goroutine is the caller's.
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.Contains(g, "servertest.Leaked") || strings.Contains(g, "testing.(*T).Run") || strings.Contains(g, "testing.tRunner") {
			continue
		}
		for _, m := range leakMarkers {
			if strings.Contains(g, m) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// CheckLeaks fails t, at its end, if goroutines of the tunnel packages or of
// quic-go are still running a few seconds after its other cleanups. Call it
// first in a test, so that its cleanup runs last. Do not combine it with
// t.Parallel.
func CheckLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		if leaked := Leaked(5 * time.Second); len(leaked) > 0 {
			t.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

// MainLeakCheck runs the tests of a package, then checks that no tunnel or
// quic-go goroutine survives them. Use it as TestMain:
//
//	func TestMain(m *testing.M) { servertest.MainLeakCheck(m) }
func MainLeakCheck(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(5 * time.Second); len(leaked) > 0 {
			os.Stderr.WriteString("goroutines leaked by the tests:\n\n" + strings.Join(leaked, "\n\n") + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
