package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
)

// fileSDGroup is one entry of Prometheus's file_sd format.
type fileSDGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// targetsCmd is `jgctl targets`: the cluster's diagnostic listeners as
// Prometheus file_sd JSON, from auth's live view (proxies that reported in
// the last minute, auth servers that answer, nodes online whose agents
// told their proxies where they serve /metrics; older nodes do not, and
// are listed by hand, as in ops/prometheus/targets-nodes.example.json).
func targetsCmd(g *globals) *cobra.Command {
	var job, out string
	c := &cobra.Command{Use: "targets", Short: "Print the /metrics addresses of the proxies, auth servers and online nodes as Prometheus file_sd JSON (for file_sd_configs)", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			var groups []fileSDGroup
			if job == "" || job == "jumpgate-proxy" {
				proxies, err := c.Proxies(ctx)
				if err != nil {
					return err
				}
				for _, p := range proxies {
					if p.Mesh == nil || p.Mesh.DiagAddr == "" || time.Since(p.LastSeen) > time.Minute {
						continue
					}
					groups = append(groups, fileSDGroup{Targets: []string{diagTarget(p.Mesh.DiagAddr, p.Mesh.PublicAddr)},
						Labels: map[string]string{"job": "jumpgate-proxy", "proxy": p.ID, "region": p.Mesh.Region}})
				}
			}
			if job == "" || job == "jumpgate-auth" {
				servers, err := c.AuthServers(ctx)
				if err != nil {
					return err
				}
				for _, s := range servers {
					if s.DiagAddr == "" {
						continue
					}
					labels := map[string]string{"job": "jumpgate-auth", "auth": s.ID}
					if s.Region != "" {
						labels["region"] = s.Region
					}
					groups = append(groups, fileSDGroup{Targets: []string{diagTarget(s.DiagAddr, s.APIAddr)}, Labels: labels})
				}
			}
			if job == "" || job == "jumpgate-node" {
				nodes, err := c.Nodes(ctx)
				if err != nil {
					return err
				}
				for _, n := range nodes {
					if !n.Online || n.DiagAddr == "" {
						continue
					}
					groups = append(groups, fileSDGroup{Targets: []string{n.DiagAddr}, Labels: map[string]string{"job": "jumpgate-node", "node": n.ID}})
				}
			}
			if job != "" && job != "jumpgate-proxy" && job != "jumpgate-auth" && job != "jumpgate-node" {
				return fmt.Errorf("--job %q: want jumpgate-proxy, jumpgate-auth or jumpgate-node", job)
			}
			slices.SortFunc(groups, func(a, b fileSDGroup) int { return strings.Compare(a.Targets[0], b.Targets[0]) })
			if groups == nil {
				groups = []fileSDGroup{}
			}
			b, _ := json.MarshalIndent(groups, "", "  ")
			b = append(b, '\n')
			if out == "" || out == "-" {
				_, err := os.Stdout.Write(b)
				return err
			}
			// Prometheus re-reads the file when it changes: replace it
			// whole, never half-written.
			tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
			if err := os.WriteFile(tmp, b, 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, out)
		})}
	c.Flags().StringVar(&job, "job", "", "only this job's targets: jumpgate-proxy, jumpgate-auth or jumpgate-node (default all)")
	c.Flags().StringVarP(&out, "output", "o", "", "write to this file atomically (default stdout)")
	return c
}

// diagTarget is diag ("host:port") with a wildcard or empty host replaced by
// the host of the process's public address.
func diagTarget(diag, public string) string {
	host, port, err := net.SplitHostPort(diag)
	if err != nil {
		return diag
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if h, _, err := net.SplitHostPort(public); err == nil && h != "" {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}
