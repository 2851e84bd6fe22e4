// Command jumpgate is the Jumpgate daemon: auth server, proxy and node
// roles in any combination (`jumpgate start`), and a whole cluster on one
// machine for trying it out (`jumpgate demo`).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	root := &cobra.Command{Use: "jumpgate", Short: "Jumpgate access proxy daemon", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(startCmd(), demoCmd(), restoreCmd(), versionCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "jumpgate:", err)
		os.Exit(1)
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print the version", Run: func(*cobra.Command, []string) { fmt.Println("jumpgate", version) }}
}

func startCmd() *cobra.Command {
	var (
		configPath, roles, labels, location, authAddrs string
		drain                                          time.Duration
		f                                              Config
	)
	c := &cobra.Command{
		Use:   "start",
		Short: "Run the auth, proxy and/or node roles",
		Example: `  jumpgate start --roles=auth,proxy --cluster-name=example --data-dir=/var/lib/jumpgate --proxy-id=proxy1
  jumpgate start --roles=node --node-name=db1 --labels=env=prod --proxy=proxy.example.com:3080 --token=... --ca-pin=sha256:...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfigFile(configPath)
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if fl.Changed(name) {
					*dst = v
				}
			}
			if fl.Changed("roles") {
				cfg.Roles = strings.Split(roles, ",")
			}
			set("data-dir", &cfg.DataDir, f.DataDir)
			set("log-level", &cfg.Log.Level, f.Log.Level)
			set("log-format", &cfg.Log.Format, f.Log.Format)
			set("diag-listen", &cfg.DiagListen, f.DiagListen)
			if fl.Changed("diag-pprof") {
				cfg.DiagPprof = f.DiagPprof
			}
			set("audit-log", &cfg.AuditLog, f.AuditLog)
			set("cluster-name", &cfg.Auth.ClusterName, f.Auth.ClusterName)
			set("auth-listen", &cfg.Auth.Listen, f.Auth.Listen)
			set("proxy-id", &cfg.Proxy.ID, f.Proxy.ID)
			set("proxy-listen", &cfg.Proxy.Listen, f.Proxy.Listen)
			if fl.Changed("auth") {
				addrs := strings.Split(authAddrs, ",")
				cfg.Proxy.AuthAddr, cfg.Proxy.AuthAddrs = addrs[0], addrs[1:]
			}
			set("auth-id", &cfg.Auth.ID, f.Auth.ID)
			set("auth-advertise", &cfg.Auth.AdvertiseAddr, f.Auth.AdvertiseAddr)
			set("raft-listen", &cfg.Auth.RaftListen, f.Auth.RaftListen)
			set("raft-advertise", &cfg.Auth.RaftAdvertise, f.Auth.RaftAdvertise)
			set("auth-join", &cfg.Auth.JoinAddr, f.Auth.JoinAddr)
			set("keystore", &cfg.Auth.Keystore.Backend, f.Auth.Keystore.Backend)
			set("hsm-module", &cfg.Auth.Keystore.Module, f.Auth.Keystore.Module)
			set("hsm-token-label", &cfg.Auth.Keystore.TokenLabel, f.Auth.Keystore.TokenLabel)
			set("hsm-pin-file", &cfg.Auth.Keystore.PINFile, f.Auth.Keystore.PINFile)
			set("hsm-pin-env", &cfg.Auth.Keystore.PINEnv, f.Auth.Keystore.PINEnv)
			set("hsm-key-prefix", &cfg.Auth.Keystore.KeyLabelPrefix, f.Auth.Keystore.KeyLabelPrefix)
			set("node-name", &cfg.Node.Name, f.Node.Name)
			set("proxy", &cfg.Node.Proxy, f.Node.Proxy)
			if fl.Changed("connection-count") {
				cfg.Node.ConnectionCount = f.Node.ConnectionCount
			}
			set("tunnel-transport", &cfg.Node.TunnelTransport, f.Node.TunnelTransport)
			set("lock-mode", &cfg.Node.LockMode, f.Node.LockMode)
			set("recording", &cfg.Node.Recording, f.Node.Recording)
			set("bench-ssh-listen", &cfg.Node.BenchSSHListen, f.Node.BenchSSHListen)
			set("region", &cfg.Proxy.Region, f.Proxy.Region)
			set("region", &cfg.Auth.Region, f.Proxy.Region)
			set("geoip-db", &cfg.Proxy.Discovery.GeoIPDB, f.Proxy.Discovery.GeoIPDB)
			set("proxy-protocol", &cfg.Proxy.Discovery.ProxyProtocol, f.Proxy.Discovery.ProxyProtocol)
			if fl.Changed("load-balancers") {
				cfg.Proxy.Discovery.LoadBalancers = f.Proxy.Discovery.LoadBalancers
			}
			if fl.Changed("trusted-hops") {
				cfg.Proxy.Discovery.TrustedHops = f.Proxy.Discovery.TrustedHops
			}
			set("gossip-listen", &cfg.Proxy.Mesh.GossipListen, f.Proxy.Mesh.GossipListen)
			set("peer-listen", &cfg.Proxy.Mesh.PeerListen, f.Proxy.Mesh.PeerListen)
			set("advertise-addr", &cfg.Proxy.Mesh.AdvertiseAddr, f.Proxy.Mesh.AdvertiseAddr)
			if fl.Changed("seeds") {
				cfg.Proxy.Mesh.Seeds = f.Proxy.Mesh.Seeds
			}
			if fl.Changed("location") {
				var l Location
				if _, err := fmt.Sscanf(location, "%g,%g", &l.Lat, &l.Lon); err != nil {
					return fmt.Errorf("--location %q: want LAT,LON in degrees, e.g. 50.11,8.68", location)
				}
				cfg.Proxy.Location = &l
			}
			if fl.Changed("drain-timeout") {
				cfg.Proxy.DrainTimeout = f.Proxy.DrainTimeout
			}
			if fl.Changed("resume-window") {
				cfg.Node.ResumeWindow = f.Node.ResumeWindow
			}
			if fl.Changed("tunnel-idle-timeout") {
				cfg.Proxy.TunnelIdleTimeout, cfg.Node.TunnelIdleTimeout = f.Node.TunnelIdleTimeout, f.Node.TunnelIdleTimeout
			}
			if fl.Changed("public-addr") {
				cfg.Proxy.PublicAddrs = f.Proxy.PublicAddrs
			}
			if fl.Changed("token") {
				cfg.Node.Token, cfg.Proxy.Token, cfg.Auth.Token = f.Node.Token, f.Node.Token, f.Node.Token
			}
			if fl.Changed("ca-pin") {
				cfg.Node.CAPin, cfg.Proxy.CAPin, cfg.Auth.CAPin = f.Node.CAPin, f.Node.CAPin, f.Node.CAPin
			}
			if fl.Changed("labels") {
				l, err := ParseLabels(labels)
				if err != nil {
					return err
				}
				cfg.Node.Labels = l
			}
			if err := cfg.CheckAndSetDefaults(); err != nil {
				return err
			}
			log := newLogger(cfg.Log)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, cfg, log, drain)
		},
	}
	fl := c.Flags()
	fl.StringVarP(&configPath, "config", "c", "", "YAML config file (flags override it)")
	fl.StringVar(&roles, "roles", "", "roles to run: auth, proxy, node (comma-separated)")
	fl.StringVar(&f.DataDir, "data-dir", "", "where state, keys and certificates live")
	fl.StringVar(&f.Log.Level, "log-level", "info", "debug, info, warn, error")
	fl.StringVar(&f.Log.Format, "log-format", "text", "text or json")
	fl.StringVar(&f.DiagListen, "diag-listen", "", "address for /metrics, /healthz and /readyz (off when empty)")
	fl.BoolVar(&f.DiagPprof, "diag-pprof", false, "serve Go's /debug/pprof/ on the diagnostic listener")
	fl.StringVar(&f.AuditLog, "audit-log", "", "audit log file (default <data-dir>/audit.log)")
	fl.StringVar(&f.Auth.ClusterName, "cluster-name", "", "cluster name (auth, first start)")
	fl.StringVar(&f.Auth.Listen, "auth-listen", "127.0.0.1:3025", "auth API address")
	fl.StringVar(&f.Proxy.ID, "proxy-id", "", "this proxy's id")
	fl.StringVar(&f.Proxy.Listen, "proxy-listen", "127.0.0.1:3080", "proxy address: TLS on TCP, tunnels on UDP (and over TCP)")
	fl.StringSliceVar(&f.Proxy.PublicAddrs, "public-addr", nil, "names and IPs clients use to reach this proxy (go into its certificate)")
	fl.StringVar(&f.Proxy.Region, "region", "", "this proxy's region (default \"default\")")
	fl.StringVar(&f.Proxy.Discovery.GeoIPDB, "geoip-db", "", "GeoIP City database (.mmdb, MaxMind or DB-IP Lite) for nearest-proxy discovery; reloaded when it changes")
	fl.StringVar(&f.Proxy.Discovery.ProxyProtocol, "proxy-protocol", "", "PROXY protocol v1/v2 on the proxy port: off (default), optional or required (with --load-balancers)")
	fl.StringSliceVar(&f.Proxy.Discovery.LoadBalancers, "load-balancers", nil, "CIDRs of load balancers allowed to send PROXY headers")
	fl.StringSliceVar(&f.Proxy.Discovery.TrustedHops, "trusted-hops", nil, "CIDRs of HTTP proxies whose X-Forwarded-For is believed")
	fl.StringVar(&location, "location", "", "this proxy's location as LAT,LON in degrees")
	fl.StringVar(&f.Proxy.Mesh.GossipListen, "gossip-listen", "", "mesh membership address, TCP and UDP (mesh off when empty)")
	fl.StringVar(&f.Proxy.Mesh.PeerListen, "peer-listen", "", "proxy-to-proxy QUIC address (UDP)")
	fl.StringVar(&f.Proxy.Mesh.AdvertiseAddr, "advertise-addr", "", "address other proxies use to reach this one, when not the listen host")
	fl.StringSliceVar(&f.Proxy.Mesh.Seeds, "seeds", nil, "gossip addresses of other proxies to join through")
	fl.StringVar(&authAddrs, "auth", "", "auth server addresses (comma-separated, nearest first), for a proxy without the auth role")
	fl.StringVar(&f.Auth.ID, "auth-id", "", "this auth server's id (default auth-<cluster-name>; required when joining)")
	fl.StringVar(&f.Auth.AdvertiseAddr, "auth-advertise", "", "auth API address other servers use, when not --auth-listen")
	fl.StringVar(&f.Auth.RaftListen, "raft-listen", "", "raft address, mutual TLS between auth servers (default: auth port + 1)")
	fl.StringVar(&f.Auth.RaftAdvertise, "raft-advertise", "", "raft address other auth servers dial, when not --raft-listen")
	fl.StringVar(&f.Auth.Keystore.Backend, "keystore", "software", "where CA private keys live: software (data dir) or pkcs11 (an HSM)")
	fl.StringVar(&f.Auth.Keystore.Module, "hsm-module", "", "pkcs11: the HSM's PKCS#11 library")
	fl.StringVar(&f.Auth.Keystore.TokenLabel, "hsm-token-label", "", "pkcs11: the token's label")
	fl.StringVar(&f.Auth.Keystore.PINFile, "hsm-pin-file", "", "pkcs11: file holding the token's user PIN (mode 0600); never pass a PIN itself on the command line")
	fl.StringVar(&f.Auth.Keystore.PINEnv, "hsm-pin-env", "", "pkcs11: environment variable holding the token's user PIN")
	fl.StringVar(&f.Auth.Keystore.KeyLabelPrefix, "hsm-key-prefix", "", "pkcs11: prefix of this server's key labels (distinct per server sharing a token; default jumpgate-)")
	fl.StringVar(&f.Auth.JoinAddr, "auth-join", "", "join the auth cluster through this auth server (first start; with --token and --ca-pin from jgctl auth add)")
	fl.StringVar(&f.Node.Name, "node-name", "", "this node's name")
	fl.StringVar(&labels, "labels", "", "node labels, k=v,k2=v2")
	fl.StringVar(&f.Node.Proxy, "proxy", "", "proxy address the node dials (host:port)")
	fl.StringVar(&f.Node.Recording, "recording", "", "record shell and exec sessions: on (default) or off (node.recording)")
	fl.IntVar(&f.Node.ConnectionCount, "connection-count", 0, "tunnels to this many distinct proxies, nearest first (default 2)")
	fl.StringVar(&f.Node.TunnelTransport, "tunnel-transport", "auto", "how tunnels are carried: auto (QUIC, TLS over TCP where UDP is blocked), quic or tcp")
	fl.StringVar(&f.Node.LockMode, "lock-mode", "", "node: best_effort (default: keep the last known locks when cut off from the cluster) or strict (refuse new sessions when cut off)")
	fl.StringVar(&f.Node.Token, "token", "", "join token (first start only)")
	fl.StringVar(&f.Node.CAPin, "ca-pin", "", "cluster CA pin, sha256:... (first start only)")
	fl.StringVar(&f.Node.BenchSSHListen, "bench-ssh-listen", "", "benchmarks only: also serve the node's SSH server on this loopback address")
	_ = fl.MarkHidden("bench-ssh-listen")
	fl.DurationVar(&drain, "shutdown-timeout", 10*time.Second, "how long shutting down waits for live sessions")
	fl.DurationVar(&f.Proxy.DrainTimeout, "drain-timeout", 0, "proxy: on SIGTERM, drain first (agents and resumable sessions move to other proxies) for at most this long; 0: no drain")
	fl.DurationVar(&f.Node.TunnelIdleTimeout, "tunnel-idle-timeout", 0, "proxy and node: drop a tunnel after this long without a packet from the other end, and ping idle tunnels every third of it (default 15s; proxy.tunnel_idle_timeout, node.tunnel_idle_timeout)")
	fl.DurationVar(&f.Node.ResumeWindow, "resume-window", 0, "node: how long a session whose client lost its path waits to be resumed (default 5m)")
	return c
}

func newLogger(c LogConfig) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
