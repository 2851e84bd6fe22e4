package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testTCPTransport starts a node whose tunnel runs over TLS over TCP
// (--tunnel-transport=tcp, as on a network that blocks UDP) and checks that
// users reach it as any other node: it is online in jgctl nodes ls, and jg
// ssh runs commands and moves data both ways through it.
func testTCPTransport(t *testing.T, c *cluster, env []string) {
	tok := c.token()
	c.start("node-tcp", "--roles=node", "--node-name=node-tcp", "--labels=env=dev", "--data-dir="+filepath.Join(c.dir, "node-tcp"),
		"--proxy="+c.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--tunnel-transport=tcp")
	c.waitOnline("node-tcp")

	out, code := c.run("", env, "jg", "ssh", "node-tcp", "--", "echo", "hello-over-tcp")
	if code != 0 || !strings.Contains(out, "hello-over-tcp") {
		t.Fatalf("jg ssh node-tcp: exit %d: %s", code, out)
	}
	// 4 MB down and up: more than a stream window's first grant.
	out, code = c.run("", env, "jg", "ssh", "node-tcp", "--", "head -c 4000000 /dev/zero | wc -c")
	if code != 0 || strings.TrimSpace(out) != "4000000" {
		t.Fatalf("download through the TCP tunnel: exit %d: %q", code, out)
	}
	out, code = c.run(strings.Repeat("x", 4000000), env, "jg", "ssh", "node-tcp", "--", "wc -c")
	if code != 0 || strings.TrimSpace(out) != "4000000" {
		t.Fatalf("upload through the TCP tunnel: exit %d: %q", code, out)
	}
	// The tunnel really is the TCP one, and QUIC was never tried.
	log, err := os.ReadFile(filepath.Join(c.dir, "node-tcp.log"))
	if err != nil {
		t.Fatal(err)
	}
	var up []string
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, `msg="tunnel up"`) {
			up = append(up, line)
		}
	}
	if len(up) == 0 || strings.Contains(strings.Join(up, "\n"), "transport=quic") || !strings.Contains(up[0], "transport=tcp") {
		t.Fatalf("node-tcp's tunnels, want TCP only:\n%s", strings.Join(up, "\n"))
	}
	// Still online after the sessions (jgctl nodes ls).
	c.waitOnline("node-tcp")
}
