package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Ports handed to the processes of these tests. A port from a listener on
// ":0" is in the kernel's ephemeral range, where any outgoing connection of
// the running mesh may take it before the process under test binds it; and
// an auth server binds raft on its API port + 1, which nothing checked. So
// ports come from below the ephemeral range, each with the port after it
// free and reserved too, and none is handed out twice in this test binary.
var ports struct {
	sync.Mutex
	used map[int]bool
}

// freeAddrOn returns an address on a loopback IP (each simulated region has
// its own 127.0.0.x) whose TCP and UDP ports and the next TCP port are free.
func freeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	lo, hi := 20000, 32000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var elo, ehi int
		if _, err := fmt.Sscan(string(b), &elo, &ehi); err == nil && elo > 11000 && elo-1 < hi {
			hi = elo - 1
		}
	}
	ports.Lock()
	defer ports.Unlock()
	if ports.used == nil {
		ports.used = map[int]bool{}
	}
	for i := 0; i < 500; i++ {
		p := lo + mrand.IntN(hi-lo-1)
		if ports.used[p] || ports.used[p+1] {
			continue
		}
		addr := net.JoinHostPort(ip, strconv.Itoa(p))
		if !bindable(addr) || !bindable(net.JoinHostPort(ip, strconv.Itoa(p+1))) {
			continue
		}
		ports.used[p], ports.used[p+1] = true, true
		return addr
	}
	t.Fatalf("no free port on %s", ip)
	return ""
}

// bindable reports whether TCP and UDP can both listen on addr right now.
func bindable(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// meshProxy is one proxy of the mesh test and the addresses it serves.
type meshProxy struct {
	id, region, ip       string
	listen, gossip, peer string
	args                 []string
}

type proxyInfo struct {
	ID      string `json:"id"`
	Tunnels int    `json:"tunnels"`
	Mesh    *struct {
		Region string `json:"region"`
		State  string `json:"state"`
		Peers  []struct {
			ID     string `json:"id"`
			Health string `json:"health"`
		} `json:"peers"`
	} `json:"mesh"`
}

// waitMesh waits until n proxies report and every one is seen alive by
// the others.
func (c *cluster) waitMesh(n int, timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("%d proxies that see each other alive", n), timeout, func() bool {
		ps := c.proxies()
		if len(ps) != n {
			return false
		}
		for _, p := range ps {
			if !seenAs(ps, p.ID, "alive") {
				return false
			}
		}
		return true
	})
}

func (c *cluster) proxies() []proxyInfo {
	c.t.Helper()
	var ps []proxyInfo
	if err := json.Unmarshal([]byte(c.jgctl("proxies", "ls", "--json")), &ps); err != nil {
		c.t.Fatal(err)
	}
	return ps
}

// seenAs reports whether every proxy other than id that reports a mesh
// view sees id in state health, and at least one does.
func seenAs(ps []proxyInfo, id, health string) bool {
	n := 0
	for _, p := range ps {
		if p.ID == id || p.Mesh == nil {
			continue
		}
		for _, pv := range p.Mesh.Peers {
			if pv.ID == id {
				if pv.Health != health {
					return false
				}
				n++
			}
		}
	}
	return n > 0
}

// TestMesh runs three regions with one proxy each as separate processes on
// 127.0.0.1, 127.0.0.2 and 127.0.0.3: node X holds a tunnel to region C only,
// node Y to C and B. A user logged in at A reaches both through the peers
// that hold them, with jg and with OpenSSH. A second proxy per region joins,
// each through a seed in another region, and a user at region A's second
// proxy reaches X. When C is killed, Y is reached without it and X re-homes
// to another proxy; when C comes back, it rejoins and serves users again.
func TestMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := bareCluster(t)
	a := &meshProxy{id: "pa", region: "region-a", ip: "127.0.0.1"}
	b := &meshProxy{id: "pb", region: "region-b", ip: "127.0.0.2"}
	cc := &meshProxy{id: "pc", region: "region-c", ip: "127.0.0.3"}
	for _, p := range []*meshProxy{a, b, cc} {
		p.listen, p.gossip, p.peer = freeAddrOn(t, p.ip), freeAddrOn(t, p.ip), freeAddrOn(t, p.ip)
	}
	c.proxy, c.auth = a.listen, freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	c.start("auth", "--roles=auth,proxy", "--cluster-name=mesh", "--proxy-id=pa", "--region=region-a", "--location=35.68,139.65",
		"--data-dir="+filepath.Join(c.dir, "auth"), "--auth-listen="+c.auth, "--proxy-listen="+a.listen,
		"--gossip-listen="+a.gossip, "--peer-listen="+a.peer)
	waitFor(t, "auth server", 30*time.Second, func() bool {
		_, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0
	})
	for _, p := range []*meshProxy{b, cc} {
		tok := c.proxyToken("")
		p.args = []string{"--roles=proxy", "--proxy-id=" + p.id, "--region=" + p.region, "--data-dir=" + filepath.Join(c.dir, p.id),
			"--auth=" + c.auth, "--token=" + tok.Token, "--ca-pin=" + tok.CAPin, "--proxy-listen=" + p.listen,
			"--gossip-listen=" + p.gossip, "--peer-listen=" + p.peer, "--seeds=" + a.gossip}
		c.start(p.id, p.args...)
	}
	waitFor(t, "three proxies that see each other alive", 60*time.Second, func() bool {
		ps := c.proxies()
		return len(ps) == 3 && seenAs(ps, "pa", "alive") && seenAs(ps, "pb", "alive") && seenAs(ps, "pc", "alive")
	})
	c.addAlice()
	// nodex keeps one tunnel, to C; nodey keeps two, starting from C and B.
	for _, n := range []struct{ name, proxies, count string }{{"nodex", cc.listen, "1"}, {"nodey", cc.listen + "," + b.listen, "2"}} {
		tok := c.token()
		c.start(n.name, "--roles=node", "--node-name="+n.name, "--data-dir="+filepath.Join(c.dir, n.name),
			"--proxy="+n.proxies, "--connection-count="+n.count, "--token="+tok.Token, "--ca-pin="+tok.CAPin)
	}
	c.waitOnline("nodex", "nodey")
	alice := c.login("alice", "alice-password")
	var a2 *meshProxy // the second proxy of region a, once started

	t.Run("proxies ls", func(t *testing.T) {
		out := c.jgctl("proxies", "ls")
		for _, want := range []string{"pa", "pb", "pc", "region-a", "region-b", "region-c", "active", "alive 2/2"} {
			if !strings.Contains(out, want) {
				t.Errorf("jgctl proxies ls lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("via peer", func(t *testing.T) {
		var out string
		// The directory reaches A a moment after the tunnel is up at C.
		waitFor(t, "nodex reachable from pa", 20*time.Second, func() bool {
			var code int
			out, code = c.run("", alice, "jg", "--debug", "ssh", "nodex", "--", "echo", "hello-x")
			return code == 0
		})
		if !strings.Contains(out, "hello-x") || !strings.Contains(out, "path peer pc") {
			t.Fatalf("jg --debug ssh nodex via pa: %s", out)
		}
	})
	t.Run("openssh via peer", func(t *testing.T) {
		cfgOut, code := c.run("", alice, "jg", "config")
		if code != 0 {
			t.Fatalf("jg config: %s", cfgOut)
		}
		sshCfg := filepath.Join(c.dir, "ssh_config")
		os.WriteFile(sshCfg, []byte(cfgOut+"    BatchMode yes\n    LogLevel ERROR\n"), 0o600)
		out, code := c.run("", alice, "/usr/bin/ssh", "-F", sshCfg, "nodex", "head -c 1048576 /dev/zero | wc -c")
		if code != 0 || strings.TrimSpace(out) != "1048576" {
			t.Fatalf("ssh nodex: exit %d: %q", code, out)
		}
	})
	t.Run("garbage on the peer and gossip ports", func(t *testing.T) {
		for _, addr := range []string{a.peer, a.gossip} {
			u, err := net.Dial("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				buf := make([]byte, 1200)
				rand.Read(buf)
				u.Write(buf)
			}
			u.Close()
		}
		if conn, err := net.Dial("tcp", a.gossip); err == nil {
			buf := make([]byte, 4096)
			rand.Read(buf)
			conn.Write(buf)
			conn.Close()
		}
		out, code := c.run("", alice, "jg", "ssh", "nodey", "--", "echo", "still-meshed")
		if code != 0 || !strings.Contains(out, "still-meshed") {
			t.Fatalf("after garbage: exit %d: %s", code, out)
		}
	})
	t.Run("two proxies per region", func(t *testing.T) {
		// A second proxy in each region joins through a different seed.
		seeds := map[string]string{"a": b.gossip, "b": cc.gossip, "c": a.gossip}
		for _, r := range []*meshProxy{a, b, cc} {
			p2 := &meshProxy{id: r.id + "2", region: r.region, ip: r.ip}
			p2.listen, p2.gossip, p2.peer = freeAddrOn(t, p2.ip), freeAddrOn(t, p2.ip), freeAddrOn(t, p2.ip)
			tok := c.proxyToken("")
			c.start(p2.id, "--roles=proxy", "--proxy-id="+p2.id, "--region="+p2.region, "--data-dir="+filepath.Join(c.dir, p2.id),
				"--auth="+c.auth, "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+p2.listen,
				"--gossip-listen="+p2.gossip, "--peer-listen="+p2.peer, "--seeds="+seeds[strings.TrimPrefix(r.region, "region-")])
			if r == a {
				a2 = p2
			}
		}
		c.waitMesh(6, 60*time.Second)
		home := []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-alice-pa2")}
		if out, code := c.run("alice-password\n", home, "jg", "login", "--proxy="+a2.listen, "--user=alice", "--password-stdin", "--ca-pin="+c.pin()); code != 0 {
			t.Fatalf("jg login at pa2: %s", out)
		}
		out, code := c.run("", home, "jg", "--debug", "ssh", "nodex", "--", "echo", "x-from-pa2")
		if code != 0 || !strings.Contains(out, "x-from-pa2") || !strings.Contains(out, "path peer pc") {
			t.Fatalf("nodex from pa2: exit %d: %s", code, out)
		}
	})
	t.Run("rotate the mesh key", func(t *testing.T) {
		before := c.jgctl("mesh", "keys", "--json")
		out := c.jgctl("mesh", "rotate-key", "--timeout=90s")
		if !strings.Contains(out, "rotation done") {
			t.Fatalf("rotate-key: %s", out)
		}
		var after struct {
			Keyring struct {
				KeyIDs []string `json:"key_ids"`
			} `json:"keyring"`
			Proxies []proxyInfo `json:"proxies"`
		}
		if err := json.Unmarshal([]byte(c.jgctl("mesh", "keys", "--json")), &after); err != nil {
			t.Fatal(err)
		}
		if len(after.Keyring.KeyIDs) != 1 || strings.Contains(before, after.Keyring.KeyIDs[0]) {
			t.Fatalf("keyring after rotation %v; before: %s", after.Keyring.KeyIDs, before)
		}
		// The mesh is still whole and still routes.
		ps := c.proxies()
		for _, p := range ps {
			if !seenAs(ps, p.ID, "alive") {
				t.Errorf("after rotation %s is not seen alive by every proxy", p.ID)
			}
		}
		if out, code := c.run("", alice, "jg", "ssh", "nodex", "--", "echo", "x-after-rotation"); code != 0 || !strings.Contains(out, "x-after-rotation") {
			t.Fatalf("nodex after rotation: exit %d: %s", code, out)
		}
	})
	t.Run("kill -9 a proxy", func(t *testing.T) {
		start := time.Now()
		c.procs["pc"].Process.Signal(syscall.SIGKILL)
		c.procs["pc"].Wait()
		waitFor(t, "pc marked dead by the mesh", 30*time.Second, func() bool { return seenAs(c.proxies(), "pc", "dead") })
		t.Logf("pc seen dead after %v", time.Since(start).Round(100*time.Millisecond))
		waitFor(t, "nodey reachable without pc", 30*time.Second, func() bool {
			out, code := c.run("", alice, "jg", "--debug", "ssh", "nodey", "--", "echo", "y-alive")
			return code == 0 && strings.Contains(out, "y-alive") && !strings.Contains(out, "peer pc")
		})
		t.Logf("nodey reachable after %v", time.Since(start).Round(100*time.Millisecond))
		// nodex had a tunnel to pc only: its agent re-homes to another proxy.
		var out string
		waitFor(t, "nodex re-homed and reachable", 60*time.Second, func() bool {
			var code int
			out, code = c.run("", alice, "jg", "--debug", "ssh", "nodex", "--", "echo", "x-rehomed")
			return code == 0 && strings.Contains(out, "x-rehomed")
		})
		t.Logf("nodex reachable again after %v: %s", time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(out))
		if strings.Contains(out, "peer pc") {
			t.Errorf("nodex dialed through the dead proxy: %s", out)
		}
	})
	t.Run("the proxy comes back", func(t *testing.T) {
		c.start("pc", cc.args...)
		waitFor(t, "pc alive again", 60*time.Second, func() bool { return seenAs(c.proxies(), "pc", "alive") })
		// A user who logs in at the restarted proxy reaches nodes held elsewhere.
		home := []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-alice-pc")}
		if out, code := c.run("alice-password\n", home, "jg", "login", "--proxy="+cc.listen, "--user=alice", "--password-stdin", "--ca-pin="+c.pin()); code != 0 {
			t.Fatalf("jg login at pc: %s", out)
		}
		waitFor(t, "nodex reachable from pc", 30*time.Second, func() bool {
			out, code := c.run("", home, "jg", "--debug", "ssh", "nodex", "--", "echo", "x-from-pc")
			return code == 0 && strings.Contains(out, "x-from-pc")
		})
	})
}
