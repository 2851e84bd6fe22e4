package e2e

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMetricsLint scrapes /metrics of a proxy (with the mesh on) and of a
// node, and runs Prometheus's own linter on each:
// `promtool check metrics` must find no naming or type problem.
func TestMetricsLint(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run make deps (it installs the prometheus package)")
	}
	c := newCluster(t) // auth+proxy, node1, node2 (without diagnostic listeners)
	proxyDiag, nodeDiag := freeAddr(t), freeAddr(t)
	gossip, peer := freeAddr(t), freeAddr(t)
	proxy2 := freeAddr(t)
	tok := c.proxyToken("proxy2")
	c.start("proxy2", "--roles=proxy", "--proxy-id=proxy2", "--data-dir="+filepath.Join(c.dir, "proxy2"), "--auth="+c.auth,
		"--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+proxy2, "--gossip-listen="+gossip, "--peer-listen="+peer, "--diag-listen="+proxyDiag)
	ntok := c.token()
	c.start("node3", "--roles=node", "--node-name=node3", "--data-dir="+filepath.Join(c.dir, "node3"), "--proxy="+proxy2,
		"--token="+ntok.Token, "--ca-pin="+ntok.CAPin, "--diag-listen="+nodeDiag)
	c.waitOnline("node3")
	for name, addr := range map[string]string{"proxy2": proxyDiag, "node3": nodeDiag} {
		var body []byte
		waitFor(t, name+" /metrics", 20*time.Second, func() bool {
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, _ = io.ReadAll(resp.Body)
			return resp.StatusCode == 200 && bytes.Contains(body, []byte("jumpgate_build_info"))
		})
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("promtool check metrics on %s: %v\n%s", name, err, out)
		}
		t.Logf("%s: %d metric families pass promtool check metrics", name, bytes.Count(body, []byte("# HELP ")))
	}
}
