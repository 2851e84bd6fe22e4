package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestPrometheus has a real Prometheus server (apt prometheus) scrape a
// mesh of three proxies, an auth server and a node, found the way an
// operator would: `jgctl targets` writes the file_sd file for proxies and
// auth, and a hand-kept file lists the node. Prometheus loads the shipped
// alert rules (ops/prometheus/alerts.yml). The test asks its HTTP API that
// every target is up, that the series the dashboard and the alerts use are
// there, and that a proxy killed with -9 shows in the series its alerts
// use: up == 0, and its peers' jumpgate_mesh_peer_up == 0.
func TestPrometheus(t *testing.T) {
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
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, bin: build(t), dir: t.TempDir(), procs: map[string]*exec.Cmd{}, userLogin: me.Username}
	c.auth = freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	authDiag := freeAddr(t)
	c.start("auth", "--roles=auth", "--cluster-name=prom", "--data-dir="+filepath.Join(c.dir, "auth"), "--auth-listen="+c.auth, "--diag-listen="+authDiag)
	waitFor(t, "auth server", 30*time.Second, func() bool {
		_, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0
	})
	type proxy struct{ id, region, ip, listen, gossip, peer, diag string }
	var proxies []*proxy
	for i, r := range []struct{ id, ip string }{{"pa", "127.0.0.1"}, {"pb", "127.0.0.2"}, {"pc", "127.0.0.3"}} {
		p := &proxy{id: r.id, region: "region-" + r.id[1:], ip: r.ip}
		p.listen, p.gossip, p.peer, p.diag = freeAddrOn(t, r.ip), freeAddrOn(t, r.ip), freeAddrOn(t, r.ip), freeAddrOn(t, r.ip)
		proxies = append(proxies, p)
		var tok struct {
			Token string `json:"token"`
			CAPin string `json:"ca_pin"`
		}
		if err := json.Unmarshal([]byte(c.jgctl("tokens", "add", "--type=proxy", "--name="+p.id, "--json")), &tok); err != nil {
			t.Fatal(err)
		}
		seed := proxies[0].gossip
		if i == 0 {
			seed = freeAddr(t) // nobody there: the first proxy starts the mesh
		}
		c.start(p.id, "--roles=proxy", "--proxy-id="+p.id, "--region="+p.region, "--data-dir="+filepath.Join(c.dir, p.id), "--auth="+c.auth,
			"--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+p.listen, "--gossip-listen="+p.gossip, "--peer-listen="+p.peer,
			"--seeds="+seed, "--diag-listen="+p.diag)
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

	// Service discovery as the operator runs it.
	dir := t.TempDir()
	waitFor(t, "jgctl targets to list 3 proxies and the auth server", 30*time.Second, func() bool {
		out := c.jgctl("targets", "-o", filepath.Join(dir, "targets-jumpgate.json"))
		b, _ := os.ReadFile(filepath.Join(dir, "targets-jumpgate.json"))
		return out == "" && bytes.Count(b, []byte(`"job": "jumpgate-proxy"`)) == 3 && bytes.Count(b, []byte(`"job": "jumpgate-auth"`)) == 1
	})
	nodes := fmt.Sprintf(`[{"targets": [%q], "labels": {"job": "jumpgate-node", "node": "node1"}}]`, nodeDiag)
	if err := os.WriteFile(filepath.Join(dir, "targets-nodes.json"), []byte(nodes), 0o644); err != nil {
		t.Fatal(err)
	}
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
    # jgctl's file sets job (jumpgate-proxy, jumpgate-auth) per target.
    file_sd_configs: [{files: [targets-jumpgate.json], refresh_interval: 5s}]
  - job_name: jumpgate-node
    file_sd_configs: [{files: [targets-nodes.json], refresh_interval: 5s}]
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
	t.Run("the rules loaded", func(t *testing.T) {
		resp, err := http.Get("http://" + prom + "/api/v1/rules")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, alert := range []string{"JumpgateProxyDown", "JumpgatePeerLinkDown", "JumpgateNodeWithoutTunnel", "JumpgateRaftNoLeader", "JumpgateDrainStuck"} {
			if !bytes.Contains(b, []byte(`"name":"`+alert+`"`)) {
				t.Errorf("Prometheus did not load alert %s from ops/prometheus/alerts.yml", alert)
			}
		}
	})
	t.Run("the series the dashboard and alerts use", func(t *testing.T) {
		want := map[string]int{ // query: at least this many series
			`jumpgate_build_info{job="jumpgate-proxy"}`:                       3,
			`jumpgate_raft_has_leader{job="jumpgate-auth"} == 1`:              1,
			`jumpgate_raft_state{state="leader"} == 1`:                        1,
			`jumpgate_raft_apply_duration_seconds_count > 0`:                  1,
			`jumpgate_ca_certs_issued_total{kind="node",keystore="software"}`: 1,
			`jumpgate_mesh_peer_up == 1`:                                      6, // each of 3 proxies sees 2 peers
			`jumpgate_mesh_peer_rtt_seconds`:                                  6,
			`jumpgate_mesh_node_without_tunnel{node="node1"} == 0`:            3,
			`jumpgate_watch_lag_seconds{job="jumpgate-proxy"} < 30`:           3,
			`jumpgate_watch_lag_seconds{job="jumpgate-node"} < 30`:            1,
			`jumpgate_proxy_sessions_active`:                                  3,
			`jumpgate_tunnel_connected_nodes{proxy="pc"} == 1`:                1,
			`jumpgate_tunnel_agent_connected_proxies{node="node1"} == 1`:      1,
			`jumpgate_cert_expiry_timestamp_seconds`:                          4,
			`jumpgate_proxy_drain_phase`:                                      12,
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
	t.Run("a killed proxy shows in the alerts' series", func(t *testing.T) {
		c.procs["pc"].Process.Signal(syscall.SIGKILL)
		c.procs["pc"].Wait()
		waitFor(t, `up{proxy="pc"} == 0`, 30*time.Second, func() bool {
			r, err := promQuery(t, prom, `up{job="jumpgate-proxy",proxy="pc"} == 0`)
			return err == nil && len(r) == 1
		})
		waitFor(t, `both peers see pc down: jumpgate_mesh_peer_up{peer="pc"} == 0`, 30*time.Second, func() bool {
			r, err := promQuery(t, prom, `jumpgate_mesh_peer_up{peer="pc"} == 0`)
			return err == nil && len(r) == 2
		})
	})
}
