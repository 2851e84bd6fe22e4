package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	alertsFile     = "prometheus/alerts.yml"
	alertTestsFile = "prometheus/alerts_test.yml"
	configFile     = "prometheus/prometheus.yml"
	nodesExample   = "prometheus/targets-nodes.example.json"
	dashboardFile  = "grafana/jumpgate.json"
	readmeFile     = "README.md"
)

// knownMetrics are the jumpgate_ metrics the processes export (histograms
// by their base name). A name the alerts or the dashboard use that is not
// here is a typo or a metric that does not exist: the panel stays empty or
// the alert never fires, silently.
var knownMetrics = setOf(
	// every process
	"jumpgate_build_info",
	"jumpgate_cert_expiry_timestamp_seconds",
	"jumpgate_cert_renewals_total",
	"jumpgate_lock_propagation_seconds",
	// proxies
	"jumpgate_gossip_members",
	"jumpgate_gossip_directory_entries",
	"jumpgate_gossip_probe_rtt_seconds",
	"jumpgate_peer_connected_peers",
	"jumpgate_peer_dials_total",
	"jumpgate_peer_dial_duration_seconds",
	"jumpgate_peer_bytes_total",
	"jumpgate_peer_open_streams",
	"jumpgate_proxy_dials_total",
	"jumpgate_proxy_dial_duration_seconds",
	"jumpgate_proxy_sessions_active",
	"jumpgate_proxy_forwarded_bytes_total",
	"jumpgate_proxy_tls_handshake_failures_total",
	"jumpgate_proxy_session_moves_total",
	"jumpgate_proxy_drain_phase",
	"jumpgate_proxy_drain_remaining",
	"jumpgate_tunnel_connected_nodes",
	"jumpgate_tunnel_tunnels",
	"jumpgate_tunnel_dials_total",
	"jumpgate_tunnel_dial_duration_seconds",
	"jumpgate_discovery_decisions_total",
	"jumpgate_geoip_lookups_total",
	"jumpgate_mesh_peer_up",
	"jumpgate_mesh_peer_rtt_seconds",
	"jumpgate_mesh_node_without_tunnel",
	"jumpgate_mesh_peer_dials_total",
	"jumpgate_watch_lag_seconds", // proxies and nodes
	// nodes
	"jumpgate_node_sessions_active",
	"jumpgate_node_sessions_total",
	"jumpgate_node_auth_failures_total",
	"jumpgate_tunnel_agent_connected_proxies",
	"jumpgate_tunnel_agent_desired_proxies",
	"jumpgate_tunnel_agent_rehomes_total",
	"jumpgate_tunnel_agent_connects_total",
	"jumpgate_resume_sessions",
	"jumpgate_resume_resumptions_total",
	"jumpgate_resume_stall_seconds",
	"jumpgate_resume_replayed_bytes_total",
	"jumpgate_node_recordings_pending",
	"jumpgate_node_recording_uploads_total",
	"jumpgate_node_recording_upload_bytes_total",
	// auth servers
	"jumpgate_raft_state",
	"jumpgate_raft_has_leader",
	"jumpgate_raft_leader_changes_total",
	"jumpgate_raft_apply_duration_seconds",
	"jumpgate_raft_commit_duration_seconds",
	"jumpgate_raft_commit_index",
	"jumpgate_raft_applied_index",
	"jumpgate_raft_last_contact_seconds",
	"jumpgate_ca_certs_issued_total",
	"jumpgate_ca_sign_duration_seconds",
)

// histograms are the known metrics that are histograms: only these have
// _bucket, _sum and _count series.
var histograms = setOf(
	"jumpgate_lock_propagation_seconds",
	"jumpgate_gossip_probe_rtt_seconds",
	"jumpgate_peer_dial_duration_seconds",
	"jumpgate_proxy_dial_duration_seconds",
	"jumpgate_tunnel_dial_duration_seconds",
	"jumpgate_resume_stall_seconds",
	"jumpgate_raft_apply_duration_seconds",
	"jumpgate_raft_commit_duration_seconds",
	"jumpgate_ca_sign_duration_seconds",
)

// jobs are the scrape job names alerts.yml and the dashboard select on.
var jobs = []string{"jumpgate-auth", "jumpgate-proxy", "jumpgate-node"}

// requiredAlerts must exist in alerts.yml.
var requiredAlerts = []string{
	"JumpgateProxyDown", "JumpgatePeerLinkDown", "JumpgateNodeWithoutTunnel",
	"JumpgateRaftNoLeader", "JumpgateRaftLeaderFlapping", "JumpgateLockPropagationSlow",
	"JumpgateCertExpiringSoon", "JumpgateDrainStuck", "JumpgateWatchLagging",
	"JumpgateNodeUnderConnected", "JumpgateResumeRefusals", "JumpgateDialErrors",
	"JumpgateRecordingsNotUploaded", "JumpgateRecordingRefused", "JumpgatePeerDialsFailing",
}

// firingTests are the alerts alerts_test.yml must show firing (and, in the
// same tests, not firing on the series next to them).
var firingTests = []string{
	"JumpgateProxyDown", "JumpgatePeerLinkDown", "JumpgateNodeWithoutTunnel",
	"JumpgateRaftNoLeader", "JumpgateDrainStuck", "JumpgatePeerDialsFailing",
}

// dashboardRows are the dashboard's rows, in order, each with metrics its
// panels must show.
var dashboardRows = []struct {
	title   string
	metrics []string
}{
	{"Mesh overview", []string{"jumpgate_gossip_members", "jumpgate_mesh_peer_up", "jumpgate_mesh_node_without_tunnel",
		"jumpgate_proxy_sessions_active", "jumpgate_proxy_dials_total", "jumpgate_build_info"}},
	{"Per region", []string{"jumpgate_proxy_sessions_active", "jumpgate_proxy_dials_total", "jumpgate_discovery_decisions_total"}},
	{"Per proxy", []string{"jumpgate_proxy_sessions_active", "jumpgate_proxy_forwarded_bytes_total",
		"jumpgate_proxy_dial_duration_seconds", "jumpgate_mesh_peer_rtt_seconds", "jumpgate_tunnel_tunnels",
		"jumpgate_proxy_drain_phase", "jumpgate_proxy_drain_remaining", "jumpgate_proxy_session_moves_total",
		"jumpgate_mesh_peer_dials_total"}},
	{"Nodes", []string{"jumpgate_tunnel_agent_connected_proxies", "jumpgate_tunnel_agent_desired_proxies",
		"jumpgate_tunnel_agent_rehomes_total", "jumpgate_resume_resumptions_total", "jumpgate_resume_stall_seconds"}},
	{"Auth / raft", []string{"jumpgate_raft_state", "jumpgate_raft_has_leader", "jumpgate_raft_leader_changes_total",
		"jumpgate_raft_apply_duration_seconds", "jumpgate_raft_commit_duration_seconds", "jumpgate_raft_commit_index", "jumpgate_raft_applied_index",
		"jumpgate_ca_certs_issued_total", "jumpgate_ca_sign_duration_seconds", "jumpgate_lock_propagation_seconds",
		"jumpgate_watch_lag_seconds"}},
	{"Certificates", []string{"jumpgate_cert_expiry_timestamp_seconds"}},
}

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// promtool runs Prometheus's promtool with args and returns its combined
// output.
func promtool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found on PATH: run make deps (it installs the prometheus package)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return string(out), err
}

func TestAlertRulesCheck(t *testing.T) {
	if out, err := promtool(t, "check", "rules", alertsFile); err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", alertsFile, err, out)
	}
}

func TestAlertRulesUnitTests(t *testing.T) {
	out, err := promtool(t, "test", "rules", alertTestsFile)
	if err != nil {
		t.Fatalf("promtool test rules %s: %v\n%s", alertTestsFile, err, out)
	}
	// The unit tests must show each of these firing; a test whose
	// exp_alerts went missing would pass while checking nothing.
	tests := readFile(t, alertTestsFile)
	for _, name := range firingTests {
		re := regexp.MustCompile(`alertname: ` + name + `\n\s+exp_alerts:\n\s+- exp_labels:`)
		if !re.MatchString(tests) {
			t.Errorf("%s: no test where %s fires", alertTestsFile, name)
		}
	}
}

// TestPrometheusConfig checks prometheus.yml the way an operator uses it:
// in one directory with alerts.yml and the target files jgctl writes.
func TestPrometheusConfig(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, configFile, filepath.Join(dir, "prometheus.yml"))
	copyFile(t, alertsFile, filepath.Join(dir, "alerts.yml"))
	copyFile(t, nodesExample, filepath.Join(dir, "targets-nodes.json"))
	// As `jgctl targets` writes them.
	writeFile(t, filepath.Join(dir, "targets-proxies.json"),
		`[{"targets": ["10.0.1.1:3090"], "labels": {"proxy": "p1", "region": "eu-west"}}]`)
	writeFile(t, filepath.Join(dir, "targets-auth.json"),
		`[{"targets": ["10.0.0.1:3090"], "labels": {"auth": "auth-1"}}]`)
	out, err := promtool(t, "check", "config", filepath.Join(dir, "prometheus.yml"))
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	// A warning is a target file the config names but the docs do not
	// (promtool only warns about a missing file_sd file).
	if strings.Contains(out, "WARNING") || !strings.Contains(out, "1 rule files found") {
		t.Errorf("promtool check config: want no warnings and alerts.yml loaded:\n%s", out)
	}

	conf := readFile(t, configFile)
	var names []string
	for _, m := range regexp.MustCompile(`job_name:\s*(\S+)`).FindAllStringSubmatch(conf, -1) {
		names = append(names, m[1])
	}
	slices.Sort(names)
	want := slices.Sorted(slices.Values(jobs))
	if !slices.Equal(names, want) {
		t.Errorf("%s: scrape jobs %v, want %v", configFile, names, want)
	}
	for _, f := range []string{"targets-proxies.json", "targets-auth.json", "targets-nodes.json"} {
		if !strings.Contains(conf, "files: ["+f+"]") {
			t.Errorf("%s: no file_sd_configs entry for %s", configFile, f)
		}
	}
}

func TestNodesExample(t *testing.T) {
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	if err := json.Unmarshal([]byte(readFile(t, nodesExample)), &groups); err != nil {
		t.Fatalf("%s: %v", nodesExample, err)
	}
	if len(groups) != 2 {
		t.Fatalf("%s: %d target groups, want 2 nodes", nodesExample, len(groups))
	}
	for i, g := range groups {
		if len(g.Targets) != 1 || !strings.Contains(g.Targets[0], ":") || g.Labels["node"] == "" {
			t.Errorf("%s: group %d = %+v, want one host:port target and a node label", nodesExample, i, g)
		}
	}
}

// TestAlertRulesShape checks what promtool does not: every required alert
// exists, and each says how bad it is, what happened and where the
// runbook is (a section of ops/README.md that exists).
func TestAlertRulesShape(t *testing.T) {
	rules := readFile(t, alertsFile)
	anchors := readmeAnchors(t)
	blocks := strings.Split(rules, "      - alert: ")[1:]
	seen := map[string]bool{}
	for _, b := range blocks {
		name, _, _ := strings.Cut(b, "\n")
		seen[name] = true
		for _, field := range []string{"\n        expr:", "\n        for: ", "\n          severity: ", "\n          summary: ", "\n          description: "} {
			if !strings.Contains(b, field) {
				t.Errorf("alert %s has no %s", name, strings.TrimSpace(field))
			}
		}
		if m := regexp.MustCompile(`\n          severity: (\S+)`).FindStringSubmatch(b); m != nil && m[1] != "warning" && m[1] != "critical" {
			t.Errorf("alert %s: severity %q, want warning or critical", name, m[1])
		}
		m := regexp.MustCompile(`\n          runbook: "ops/README\.md#([^"]+)"`).FindStringSubmatch(b)
		switch {
		case m == nil:
			t.Errorf("alert %s has no runbook annotation pointing at ops/README.md", name)
		case !anchors[m[1]]:
			t.Errorf("alert %s: runbook ops/README.md#%s names no section of ops/README.md", name, m[1])
		}
	}
	for _, name := range requiredAlerts {
		if !seen[name] {
			t.Errorf("%s has no alert %s", alertsFile, name)
		}
	}
}

// readmeAnchors returns the GitHub anchors of ops/README.md's headings.
func readmeAnchors(t *testing.T) map[string]bool {
	t.Helper()
	anchors := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(readFile(t, readmeFile), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		anchors[strings.ReplaceAll(drop.ReplaceAllString(h, ""), " ", "-")] = true
	}
	return anchors
}

var metricRE = regexp.MustCompile(`\bjumpgate_[a-z0-9_]*[a-z0-9]`)

// unknownMetrics returns the jumpgate_ names in text that are not known
// metrics (a histogram's _bucket, _sum and _count series by its name).
func unknownMetrics(text string) []string {
	var bad []string
	for _, name := range metricRE.FindAllString(text, -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && histograms[b] {
				base = b
			}
		}
		if !knownMetrics[base] && !slices.Contains(bad, name) {
			bad = append(bad, name)
		}
	}
	return bad
}

func TestUnknownMetricsCatchesTypos(t *testing.T) {
	got := unknownMetrics(`rate(jumpgate_proxy_dials_total[5m]) + jumpgate_proxy_sesions_active` +
		` + jumpgate_resume_stall_seconds_bucket + jumpgate_raft_has_leader_count`)
	want := []string{"jumpgate_proxy_sesions_active", "jumpgate_raft_has_leader_count"}
	if !slices.Equal(got, want) {
		t.Errorf("unknownMetrics = %v, want %v", got, want)
	}
	for h := range histograms {
		if !knownMetrics[h] {
			t.Errorf("histogram %s is not in knownMetrics", h)
		}
	}
}

// TestMetricNames checks every jumpgate_ name in the rules, their tests
// and the dashboard (queries, variables, descriptions), and every job name
// they select on.
func TestMetricNames(t *testing.T) {
	jobRE := regexp.MustCompile(`job\s*=~?\s*\\?"([^"\\]*)\\?"`)
	for _, f := range []string{alertsFile, alertTestsFile, dashboardFile} {
		text := readFile(t, f)
		for _, name := range unknownMetrics(text) {
			t.Errorf("%s uses %s, which no Jumpgate process exports", f, name)
		}
		for _, m := range jobRE.FindAllStringSubmatch(text, -1) {
			if !slices.Contains(jobs, m[1]) {
				t.Errorf("%s selects job %q; the scrape jobs are %v", f, m[1], jobs)
			}
		}
	}
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		Expr       string `json:"expr"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type dashboard struct {
	Inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
			Query      struct {
				Query string `json:"query"`
			} `json:"query"`
			Multi      bool `json:"multi"`
			IncludeAll bool `json:"includeAll"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(readFile(t, dashboardFile)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// rowPanels returns the dashboard's panels (not rows) under each row's
// title, in order: a row holds the panels after it, or its own when
// collapsed.
func rowPanels(d dashboard) (titles []string, byRow map[string][]panel) {
	byRow = map[string][]panel{}
	cur := ""
	for _, p := range d.Panels {
		if p.Type == "row" {
			cur = p.Title
			titles = append(titles, cur)
			byRow[cur] = append(byRow[cur], p.Panels...)
			continue
		}
		byRow[cur] = append(byRow[cur], p)
	}
	return titles, byRow
}

const dsInput = "${DS_PROMETHEUS}"

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion != 39 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q: want 39 and both set", d.SchemaVersion, d.UID, d.Title)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].Type != "datasource" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("__inputs = %+v, want one prometheus datasource input DS_PROMETHEUS", d.Inputs)
	}

	vars := map[string]string{
		"region": `label_values(jumpgate_build_info{job="jumpgate-proxy"}, region)`,
		"proxy":  `label_values(jumpgate_build_info{job="jumpgate-proxy", region=~"$region"}, proxy)`,
	}
	for _, v := range d.Templating.List {
		want, ok := vars[v.Name]
		if !ok {
			continue
		}
		delete(vars, v.Name)
		if v.Type != "query" || v.Query.Query != want || v.Definition != want || !v.Multi || !v.IncludeAll ||
			v.Datasource == nil || v.Datasource.UID != dsInput {
			t.Errorf("variable %s = %+v, want a multi-value query %s with All, on %s", v.Name, v, want, dsInput)
		}
	}
	for name := range vars {
		t.Errorf("no template variable %s", name)
	}

	titles, byRow := rowPanels(d)
	var wantTitles []string
	for _, r := range dashboardRows {
		wantTitles = append(wantTitles, r.title)
	}
	if !slices.Equal(titles, wantTitles) {
		t.Errorf("rows %q, want %q", titles, wantTitles)
	}
	if len(byRow[""]) > 0 {
		t.Errorf("%d panels above the first row", len(byRow[""]))
	}

	ids := map[int]string{}
	for _, r := range dashboardRows {
		used := map[string]bool{}
		for _, p := range byRow[r.title] {
			checkPanel(t, p)
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			for _, tg := range p.Targets {
				for _, m := range metricRE.FindAllString(tg.Expr, -1) {
					used[strings.TrimSuffix(m, "_bucket")] = true
				}
			}
		}
		for _, m := range r.metrics {
			if !used[m] {
				t.Errorf("row %q shows no panel of %s", r.title, m)
			}
		}
	}
	checkLayout(t, d)
}

func checkPanel(t *testing.T, p panel) {
	t.Helper()
	name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
	if p.Title == "" {
		t.Errorf("%s has no title", name)
	}
	if !slices.Contains([]string{"timeseries", "stat", "table"}, p.Type) {
		t.Errorf("%s is a %q, want timeseries, stat or table", name, p.Type)
	}
	if p.Datasource == nil || p.Datasource.UID != dsInput || p.Datasource.Type != "prometheus" {
		t.Errorf("%s: datasource %+v, want prometheus %s", name, p.Datasource, dsInput)
	}
	if len(p.Targets) == 0 {
		t.Errorf("%s has no query", name)
	}
	quantiles, bytesRates := 0, 0
	for i, tg := range p.Targets {
		if strings.TrimSpace(tg.Expr) == "" {
			t.Errorf("%s: query %d has no expr", name, i)
		}
		if tg.Datasource == nil || tg.Datasource.UID != dsInput {
			t.Errorf("%s: query %d is not on %s", name, i, dsInput)
		}
		for _, m := range metricRE.FindAllString(tg.Expr, -1) {
			if histograms[m] {
				t.Errorf("%s: query %d reads histogram %s by its name; it has only _bucket, _sum and _count series", name, i, m)
			}
		}
		if strings.Contains(tg.Expr, "histogram_quantile(") {
			quantiles++
		}
		if strings.Contains(tg.Expr, "rate(") && strings.Contains(tg.Expr, "_bytes_total") {
			bytesRates++
		}
	}
	unit := p.FieldConfig.Defaults.Unit
	if quantiles == len(p.Targets) && quantiles > 0 && unit != "s" {
		t.Errorf("%s shows latencies in unit %q, want s", name, unit)
	}
	if bytesRates > 0 && unit != "Bps" && unit != "binBps" {
		t.Errorf("%s shows bytes per second in unit %q, want Bps", name, unit)
	}
}

// checkLayout checks that panels fit the 24-column grid and do not
// overlap (Grafana would push them around on import).
func checkLayout(t *testing.T, d dashboard) {
	t.Helper()
	type cell struct{ x, y int }
	taken := map[cell]string{}
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	for _, p := range all {
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v does not fit the 24-column grid", p.Title, g)
			continue
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if prev, ok := taken[cell{x, y}]; ok {
					t.Errorf("panels %q and %q overlap at %d,%d", prev, p.Title, x, y)
					return
				}
				taken[cell{x, y}] = p.Title
			}
		}
	}
}

// TestDashboardQueriesParse has promtool parse every dashboard query, as
// recording rules, with Grafana's variables filled in.
func TestDashboardQueriesParse(t *testing.T) {
	d := loadDashboard(t)
	fill := strings.NewReplacer("$__rate_interval", "5m", "$region", ".*", "$proxy", ".*")
	var rules bytes.Buffer
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	var exprs []string
	_, byRow := rowPanels(d)
	for _, r := range dashboardRows {
		for _, p := range byRow[r.title] {
			for _, tg := range p.Targets {
				exprs = append(exprs, fmt.Sprintf("%s: %s", p.Title, tg.Expr))
				q, _ := json.Marshal(fill.Replace(tg.Expr)) // a JSON string is a YAML string
				fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", len(exprs), q)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard.yml")
	writeFile(t, path, rules.String())
	if out, err := promtool(t, "check", "rules", path); err != nil {
		t.Errorf("promtool cannot parse a dashboard query: %v\n%s", err, out)
		for i, e := range exprs {
			if strings.Contains(out, fmt.Sprintf(`"dashboard:query_%d"`, i+1)) {
				t.Errorf("dashboard:query_%d is panel %s", i+1, e)
			}
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	writeFile(t, to, readFile(t, from))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
