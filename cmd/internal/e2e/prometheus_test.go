package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/cmd/internal/creds"
	"jumpgate.dev/jumpgate/mesh/meshpage/meshpagetest"
)

// promQuery runs an instant query against Prometheus's HTTP API and returns
// the result vector's samples as label sets with values.
func promQuery(t *testing.T, prom, q string) ([]map[string]string, error) {
	t.Helper()
	resp, err := http.Get("http://" + prom + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  []any             `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, r.Error)
	}
	var out []map[string]string
	for _, s := range r.Data.Result {
		m := s.Metric
		if len(s.Value) == 2 {
			m["__value__"], _ = s.Value[1].(string)
		}
		out = append(out, m)
	}
	return out, nil
}

// TestObservability has a real Prometheus server (apt prometheus) scrape a
// mesh of three proxies, an auth server and a node, found the way an
// operator would: `jgctl targets` writes the file_sd file for proxies and
// auth, and a hand-kept file lists the node. Prometheus loads the shipped
// alert rules (ops/prometheus/alerts.yml). The test asks its HTTP API that
// every target is up, that the series the dashboard and the alerts use are
// there, that every process's diagnostic listener answers /healthz and
// /readyz, that a session through a peer shows in the dial and byte
// counters, and that a proxy killed with -9 shows in the series its alerts
// use: up == 0, its peers' jumpgate_mesh_peer_up == 0, and
// jumpgate_mesh_node_without_tunnel == 1 for the node whose only tunnel it
// held, until the node re-homes. Headless
// Chromium loads a proxy's mesh page while another proxy drains, checks
// what it shows and saves a screenshot (t.ArtifactDir: go test -artifacts
// keeps it).
func TestObservability(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: run make deps (apt package prometheus)")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run make deps (apt package prometheus)")
	}
	c := bareCluster(t)
	c.auth = freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	authDiag := freeAddr(t)
	// The auth server logs JSON (--log-format=json), checked at the end.
	c.start("auth", "--roles=auth", "--cluster-name=prom", "--data-dir="+filepath.Join(c.dir, "auth"), "--auth-listen="+c.auth, "--diag-listen="+authDiag, "--log-format=json")
	waitFor(t, "auth server", 30*time.Second, func() bool {
		_, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0
	})
	type proxy struct{ id, region, ip, listen, gossip, peer, diag string }
	var proxies []*proxy
	for i, r := range []struct{ id, ip, loc string }{{"pa", "127.0.0.1", "35.68,139.65"}, {"pb", "127.0.0.2", "50.11,8.68"}, {"pc", "127.0.0.3", "39.04,-77.49"}} {
		p := &proxy{id: r.id, region: "region-" + r.id[1:], ip: r.ip}
		p.listen, p.gossip, p.peer, p.diag = freeAddrOn(t, r.ip), freeAddrOn(t, r.ip), freeAddrOn(t, r.ip), freeAddrOn(t, r.ip)
		proxies = append(proxies, p)
		tok := c.proxyToken(p.id)
		seed := proxies[0].gossip
		if i == 0 {
			seed = freeAddr(t) // nobody there: the first proxy starts the mesh
		}
		c.start(p.id, "--roles=proxy", "--proxy-id="+p.id, "--region="+p.region, "--data-dir="+filepath.Join(c.dir, p.id), "--auth="+c.auth,
			"--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+p.listen, "--gossip-listen="+p.gossip, "--peer-listen="+p.peer,
			"--seeds="+seed, "--diag-listen="+p.diag, "--location="+r.loc)
	}
	c.proxy = proxies[0].listen
	c.waitMesh(3, 60*time.Second)
	nodeDiag := freeAddr(t)
	tok := c.token()
	// The node holds its one tunnel at pc: when pc dies it has none until
	// it re-homes.
	c.start("node1", "--roles=node", "--node-name=node1", "--data-dir="+filepath.Join(c.dir, "node1"), "--proxy="+proxies[2].listen,
		"--connection-count=1", "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--diag-listen="+nodeDiag)
	c.waitOnline("node1")
	c.addAlice()

	// Service discovery as the operator runs it.
	dir := t.TempDir()
	waitFor(t, "jgctl targets to list 3 proxies, the auth server and the node", 30*time.Second, func() bool {
		out := c.jgctl("targets", "-o", filepath.Join(dir, "targets-jumpgate.json"))
		b, _ := os.ReadFile(filepath.Join(dir, "targets-jumpgate.json"))
		return out == "" && bytes.Count(b, []byte(`"job": "jumpgate-proxy"`)) == 3 && bytes.Count(b, []byte(`"job": "jumpgate-auth"`)) == 1 &&
			bytes.Count(b, []byte(`"job": "jumpgate-node"`)) == 1 && bytes.Contains(b, []byte(nodeDiag))
	})
	root, _ := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	rules, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(root)), "ops", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644)
	cfg := `global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: jumpgate
    # jgctl's file sets job (jumpgate-proxy, jumpgate-auth, jumpgate-node) per target.
    file_sd_configs: [{files: [targets-jumpgate.json], refresh_interval: 5s}]
`
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", filepath.Join(dir, "prometheus.yml")).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	prom := freeAddr(t)
	logf, _ := os.Create(filepath.Join(c.dir, "prometheus.log"))
	cmd := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+prom, "--log.level=warn")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.dir, "prometheus.log"))
			t.Logf("---- prometheus log ----\n%s", tail(b, 4000))
		}
	})
	waitFor(t, "prometheus ready", 60*time.Second, func() bool {
		resp, err := http.Get("http://" + prom + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	t.Run("every target up", func(t *testing.T) {
		waitFor(t, "5 targets up", 60*time.Second, func() bool {
			r, err := promQuery(t, prom, `up == 1`)
			return err == nil && len(r) == 5
		})
		r, _ := promQuery(t, prom, `up`)
		jobs := map[string]int{}
		for _, m := range r {
			jobs[m["job"]]++
		}
		if jobs["jumpgate-proxy"] != 3 || jobs["jumpgate-auth"] != 1 || jobs["jumpgate-node"] != 1 {
			t.Errorf("targets by job: %v", jobs)
		}
	})
	t.Run("every diagnostic listener healthy and ready", func(t *testing.T) {
		diags := map[string]string{"auth": authDiag, "node1": nodeDiag}
		for _, p := range proxies {
			diags[p.id] = p.diag
		}
		for name, addr := range diags {
			for _, path := range []string{"/healthz", "/readyz"} {
				resp, err := http.Get("http://" + addr + path)
				if err != nil {
					t.Errorf("%s: GET %s: %v", name, path, err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%s: GET %s: %d %s, want 200", name, path, resp.StatusCode, bytes.TrimSpace(b))
				}
			}
		}
	})
	t.Run("the rules loaded", func(t *testing.T) {
		resp, err := http.Get("http://" + prom + "/api/v1/rules")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, alert := range []string{"JumpgateProxyDown", "JumpgatePeerLinkDown", "JumpgateNodeWithoutTunnel", "JumpgateRaftNoLeader", "JumpgateDrainStuck", "JumpgatePeerDialsFailing"} {
			if !bytes.Contains(b, []byte(`"name":"`+alert+`"`)) {
				t.Errorf("Prometheus did not load alert %s from ops/prometheus/alerts.yml", alert)
			}
		}
	})
	t.Run("the series the dashboard and alerts use", func(t *testing.T) {
		want := map[string]int{ // query: at least this many series
			`jumpgate_build_info{job="jumpgate-proxy"}`:                                          3,
			`jumpgate_raft_has_leader{job="jumpgate-auth"} == 1`:                                 1,
			`jumpgate_raft_state{state="leader"} == 1`:                                           1,
			`jumpgate_raft_apply_duration_seconds_count > 0`:                                     1,
			`jumpgate_ca_certs_issued_total{kind="node",keystore="software"}`:                    1,
			`jumpgate_mesh_peer_up == 1`:                                                         6, // each of 3 proxies sees 2 peers
			`jumpgate_mesh_peer_rtt_seconds`:                                                     6,
			`jumpgate_mesh_node_without_tunnel{node="node1"} == 0`:                               3,
			`jumpgate_watch_lag_seconds{job="jumpgate-proxy"} < 30`:                              3,
			`jumpgate_watch_lag_seconds{job="jumpgate-node"} < 30`:                               1,
			`jumpgate_proxy_sessions_active`:                                                     3,
			`jumpgate_tunnel_connected_nodes{proxy="pc"} == 1`:                                   1,
			`jumpgate_tunnel_agent_connected_proxies{node="node1"} == 1`:                         1,
			`jumpgate_cert_expiry_timestamp_seconds`:                                             4,
			`jumpgate_cert_expiry_timestamp_seconds{job="jumpgate-auth",kind="auth"} > time()`:   1,
			`jumpgate_cert_expiry_timestamp_seconds{job="jumpgate-auth",kind="tls_ca"} > time()`: 1,
			`jumpgate_raft_commit_duration_seconds_count > 0`:                                    1,
			`jumpgate_proxy_drain_phase`:                                                         12,
		}
		waitFor(t, "every expected series", 60*time.Second, func() bool {
			for q, n := range want {
				if r, err := promQuery(t, prom, q); err != nil || len(r) < n {
					return false
				}
			}
			return true
		})
		if t.Failed() {
			for q, n := range want {
				r, err := promQuery(t, prom, q)
				t.Logf("%s: %d series (want %d) %v", q, len(r), n, err)
			}
		}
	})
	t.Run("auth metrics pass promtool", func(t *testing.T) {
		resp, err := http.Get("http://" + authDiag + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lint := exec.Command(promtool, "check", "metrics")
		lint.Stdin = bytes.NewReader(body)
		if out, err := lint.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("promtool check metrics on the auth server: %v\n%s", err, out)
		}
	})
	t.Run("a session through a peer in the dial and byte counters", func(t *testing.T) {
		// pa holds no tunnel to node1 (pc holds its only one): pa dials
		// node1 through its peer pc.
		home := filepath.Join(c.dir, "home-pa")
		env := []string{"JUMPGATE_HOME=" + home}
		if out, code := c.run("alice-password\n", env, "jg", "login", "--proxy="+proxies[0].listen, "--user=alice", "--password-stdin", "--ca-pin="+c.pin()); code != 0 {
			t.Fatalf("jg login: %s", out)
		}
		if err := creds.SetProxy(home, proxies[0].listen); err != nil {
			t.Fatal(err)
		}
		if out, code := c.run("", env, "jg", "ssh", "node1", "--", "echo", "via-pa-and-pc"); code != 0 || !strings.Contains(out, "via-pa-and-pc") {
			t.Fatalf("jg ssh node1 through pa: exit %d: %s", code, out)
		}
		// The byte counters grow when a session ends, in both directions.
		for _, q := range []string{
			`jumpgate_mesh_peer_dials_total{proxy="pa",peer="pc",result="ok"} >= 1`,
			`jumpgate_proxy_forwarded_bytes_total{proxy="pa",direction="to_node"} > 0`,
			`jumpgate_proxy_forwarded_bytes_total{proxy="pa",direction="to_client"} > 0`,
		} {
			waitFor(t, q, 30*time.Second, func() bool {
				r, err := promQuery(t, prom, q)
				return err == nil && len(r) == 1
			})
		}
	})
	t.Run("a draining proxy on the mesh page and in Prometheus", func(t *testing.T) {
		// A session without the resumable stream (an older client) keeps
		// pb in its drain's last phase until the session ends.
		home := filepath.Join(c.dir, "home-pb")
		env := []string{"JUMPGATE_HOME=" + home, "JUMPGATE_BIND=127.0.0.2"}
		if out, code := c.run("alice-password\n", env, "jg", "login", "--proxy="+proxies[1].listen, "--user=alice", "--password-stdin", "--ca-pin="+c.pin()); code != 0 {
			t.Fatalf("jg login: %s", out)
		}
		if err := creds.SetProxy(home, proxies[1].listen); err != nil {
			t.Fatal(err)
		}
		sess := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node1", "--", "echo started; sleep 300")
		sess.Env = append(os.Environ(), append(env, "JG_RESUME=off")...)
		stdout, _ := sess.StdoutPipe()
		if err := sess.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sess.Process.Kill(); sess.Wait() })
		if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.Contains(line, "started") {
			t.Fatalf("session through pb did not start: %q", line)
		}
		out := c.jgctl("proxy", "drain", "pb", "--timeout=120s", "--wait=false")
		if !strings.Contains(out, "Proxy pb is draining") {
			t.Fatalf("jgctl proxy drain: %s", out)
		}
		pa := "http://" + proxies[0].diag + "/mesh/"
		waitFor(t, "pa's mesh data to show pb draining", 30*time.Second, func() bool {
			resp, err := http.Get(pa + "data.json")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var snap struct {
				Proxies []struct{ ID, State string }
			}
			json.NewDecoder(resp.Body).Decode(&snap)
			for _, p := range snap.Proxies {
				if p.ID == "pb" && p.State == "draining" {
					return true
				}
			}
			return false
		})
		waitFor(t, `jumpgate_proxy_drain_phase{proxy="pb",phase="waiting"} == 1`, 30*time.Second, func() bool {
			r, err := promQuery(t, prom, `jumpgate_proxy_drain_phase{proxy="pb",phase="waiting"} == 1`)
			return err == nil && len(r) == 1
		})
		// The session's dial went pb → pc; pb still holds the session.
		for _, q := range []string{
			`jumpgate_mesh_peer_dials_total{proxy="pb",peer="pc",result="ok"} >= 1`,
			`jumpgate_proxy_drain_remaining{proxy="pb",kind="sessions"} == 1`,
		} {
			waitFor(t, q, 30*time.Second, func() bool {
				r, err := promQuery(t, prom, q)
				return err == nil && len(r) == 1
			})
		}
		// A draining proxy tells load balancers and wait-ready it is not
		// ready.
		if resp, err := http.Get("http://" + proxies[1].diag + "/readyz"); err != nil {
			t.Errorf("pb: GET /readyz: %v", err)
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(b, []byte("draining")) {
				t.Errorf("draining pb: GET /readyz: %d %s, want 503 saying draining", resp.StatusCode, bytes.TrimSpace(b))
			}
		}
		chrome := meshpagetest.FindChromium(t)
		dom := meshpagetest.DumpDOM(t, chrome, pa)
		rows := meshpagetest.FindElements(dom, "tr", "proxy")
		states := map[string]string{}
		for _, r := range rows {
			states[r.Attrs["data-proxy"]] = r.Attrs["data-state"]
			if r.Attrs["data-proxy"] == "pb" && !strings.Contains(r.Text, "draining") {
				t.Errorf("pb's row does not say draining: %q", r.Text)
			}
		}
		if states["pa"] != "active" || states["pb"] != "draining" || states["pc"] != "active" {
			t.Errorf("proxy rows on pa's mesh page: %v", states)
		}
		links := meshpagetest.FindElements(dom, "tr", "link")
		to := map[string]string{}
		for _, l := range links {
			to[l.Attrs["data-to"]] = l.Text
		}
		for _, peer := range []string{"pb", "pc"} {
			// "pb alive 0.9": health and the RTT in ms.
			if f := strings.Fields(to[peer]); len(f) != 3 || f[1] != "alive" || !regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`).MatchString(f[2]) {
				t.Errorf("pa's link to %s shows no RTT: %q", peer, to[peer])
			}
		}
		// pb's own page shows its drain's progress.
		pbDOM := meshpagetest.DumpDOM(t, chrome, "http://"+proxies[1].diag+"/mesh/")
		for _, r := range meshpagetest.FindElements(pbDOM, "tr", "proxy") {
			if r.Attrs["data-proxy"] == "pb" && !strings.Contains(r.Text, "waiting: 1 session") {
				t.Errorf("pb's own page does not show its drain progress: %q", r.Text)
			}
		}
		shot := filepath.Join(t.ArtifactDir(), "mesh-page.png")
		meshpagetest.Run(t, chrome, "--screenshot="+shot, "--window-size=1400,1000", pa)
		if b, err := os.ReadFile(shot); err != nil || len(b) < 10<<10 || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("screenshot %s: %d bytes, %v", shot, len(b), err)
		}
		t.Logf("screenshot of pa's mesh page, pb draining: %s", shot)
	})
	t.Run("JSON logs with stable keys", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(c.dir, "auth.log"))
		if err != nil {
			t.Fatal(err)
		}
		keys := map[string]int{}
		lines := 0
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var rec map[string]any
			if err := json.Unmarshal(line, &rec); err != nil {
				t.Fatalf("auth log line is not JSON: %v: %s", err, line)
			}
			for _, k := range []string{"time", "level", "msg"} {
				if _, ok := rec[k]; !ok {
					t.Fatalf("auth log line without %q: %s", k, line)
				}
			}
			for k := range rec {
				keys[k]++
			}
			lines++
		}
		if lines < 5 || keys["auth_server"] == 0 {
			t.Errorf("%d JSON log lines, keys seen %v: want the auth_server key on the auth server's lines", lines, keys)
		}
	})
	t.Run("a killed proxy shows in the alerts' series", func(t *testing.T) {
		killed := time.Now()
		c.procs["pc"].Process.Signal(syscall.SIGKILL)
		c.procs["pc"].Wait()
		waitFor(t, `up{proxy="pc"} == 0`, 30*time.Second, func() bool {
			r, err := promQuery(t, prom, `up{job="jumpgate-proxy",proxy="pc"} == 0`)
			return err == nil && len(r) == 1
		})
		// pa sees pc down (pb may have finished its drain and exited: its
		// last session went through pc).
		waitFor(t, `pa sees pc down: jumpgate_mesh_peer_up{proxy="pa",peer="pc"} == 0`, 30*time.Second, func() bool {
			r, err := promQuery(t, prom, `jumpgate_mesh_peer_up{proxy="pa",peer="pc"} == 0`)
			return err == nil && len(r) == 1
		})
		// node1 held its one tunnel at pc (--connection-count=1). pa's
		// directory drops pc's tunnels once gossip no longer sees pc
		// alive, and node1 holds none until its agent notices (QUIC idle
		// timeout, 15 s) and re-homes. Asked over the time since the kill,
		// as that window may close before Prometheus is asked.
		waitFor(t, `pa: jumpgate_mesh_node_without_tunnel{node="node1"} == 1 after the kill`, 30*time.Second, func() bool {
			since := int(time.Since(killed).Seconds()) + 1
			r, err := promQuery(t, prom, fmt.Sprintf(`max_over_time(jumpgate_mesh_node_without_tunnel{proxy="pa",node="node1"}[%ds]) == 1`, since))
			return err == nil && len(r) == 1
		})
		// Then node1 re-homes to a surviving proxy, and the gauge says so.
		waitFor(t, `pa: jumpgate_mesh_node_without_tunnel{node="node1"} == 0 after node1 re-homes`, 60*time.Second, func() bool {
			r, err := promQuery(t, prom, `jumpgate_mesh_node_without_tunnel{proxy="pa",node="node1"} == 0`)
			return err == nil && len(r) == 1
		})
	})
}
