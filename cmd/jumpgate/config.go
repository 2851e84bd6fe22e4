package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Config is jumpgate.yaml. Flags of `jumpgate start` override its fields.
//
//	data_dir: /var/lib/jumpgate
//	roles: [auth, proxy, node]
//	log: {level: info, format: text}
//	diag_listen: 127.0.0.1:3090        # /metrics /healthz /readyz
//	diag_pprof: false                  # true adds /debug/pprof/ to diag_listen
//	auth:
//	  cluster_name: example
//	  listen: 127.0.0.1:3025
//	  keystore_passphrase_file: /etc/jumpgate/keystore.pass
//	  user_cert_ttl: 12h
//	  oidc:                             # single sign-on: jg login --sso (see OIDCConfig)
//	    issuer: https://login.example.com
//	    client_id: jumpgate
//	    client_secret_file: /etc/jumpgate/oidc-secret
//	    roles: [{group: sre, roles: [dev]}]
//	proxy:
//	  id: proxy-eu-1
//	  listen: 0.0.0.0:3080              # TLS on TCP (clients, and tunnels of UDP-blocked nodes) and tunnels (QUIC) on UDP, same port
//	  public_addrs: [proxy.example.com, 203.0.113.7]
//	  auth_addr: auth.example.com:3025  # when auth runs elsewhere
//	  token: <proxy join token>
//	  ca_pin: sha256:...
//	  region: eu-central                # shown in jgctl proxies ls; used by routing
//	  location: {lat: 50.11, lon: 8.68} # where the proxy is, for nearest-proxy choices
//	  tunnel_idle_timeout: 15s          # drop a silent node's tunnel after this; ping every third of it
//	  mesh:                             # off when gossip_listen is empty (a lone proxy)
//	    gossip_listen: 0.0.0.0:3082     # membership and tunnel directory, TCP and UDP
//	    peer_listen: 0.0.0.0:3081       # proxy-to-proxy QUIC (UDP)
//	    advertise_addr: 203.0.113.7     # the address other proxies use, when not the listen host
//	    seeds: [proxy-us-1.example.com:3082]
//	node:
//	  name: db-1
//	  labels: {env: prod, team: data}
//	  proxy: proxy.example.com:3080
//	  token: <node join token>
//	  ca_pin: sha256:...
//	  connection_count: 2               # tunnels to this many distinct proxies, nearest first
//	  tunnel_transport: auto            # auto (QUIC, TLS over TCP where UDP is blocked), quic or tcp
//	  tunnel_idle_timeout: 15s          # leave a silent proxy after this; ping every third of it
//	  bench_ssh_listen: 127.0.0.1:3022  # benchmarks only: SSH server also on this loopback address
type Config struct {
	DataDir    string    `yaml:"data_dir"`
	Roles      []string  `yaml:"roles"`
	Log        LogConfig `yaml:"log"`
	DiagListen string    `yaml:"diag_listen"`
	// DiagPprof adds Go's /debug/pprof handlers to the diagnostic listener.
	// Off by default: profiles reveal code paths and command lines.
	DiagPprof bool        `yaml:"diag_pprof"`
	AuditLog  string      `yaml:"audit_log"`
	Audit     AuditConfig `yaml:"audit"`
	Auth      AuthConfig  `yaml:"auth"`
	Proxy     ProxyConfig `yaml:"proxy"`
	Node      NodeConfig  `yaml:"node"`
}

// LogConfig configures logging.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// AuthConfig configures the auth role.
type AuthConfig struct {
	// ID names this auth server in raft and `jgctl auth ls`. Default
	// "auth-<cluster_name>" (the first server's name); every server that
	// joins must have its own.
	ID                     string        `yaml:"id"`
	ClusterName            string        `yaml:"cluster_name"`
	Listen                 string        `yaml:"listen"`
	KeystorePassphraseFile string        `yaml:"keystore_passphrase_file"`
	UserCertTTL            time.Duration `yaml:"user_cert_ttl"`
	// RecordingRetention removes session recordings that ended longer
	// ago than this from this auth server (0, the default: keep them).
	RecordingRetention time.Duration `yaml:"recording_retention"`
	// Keystore says where the CA private keys live.
	Keystore KeystoreConfig `yaml:"keystore"`
	// AdvertiseAddr is the API address other auth servers and proxies
	// use, when Listen's host is a wildcard. Default: Listen.
	AdvertiseAddr string `yaml:"advertise_addr"`
	// RaftListen is the raft transport address (mutual TLS, auth servers
	// only). Default: Listen's host, Listen's port + 1.
	RaftListen string `yaml:"raft_listen"`
	// RaftAdvertise is the raft address other auth servers dial, when not
	// RaftListen.
	RaftAdvertise string `yaml:"raft_advertise"`
	// Region is shown in `jgctl auth ls`.
	Region string `yaml:"region"`
	// JoinAddr, Token and CAPin join this server to an existing cluster
	// (first start only): JoinAddr is any of its auth servers, Token comes
	// from `jgctl auth add ID`, which also prints CAPin.
	JoinAddr string `yaml:"join_addr"`
	Token    string `yaml:"token"`
	CAPin    string `yaml:"ca_pin"`
	// OIDC lets users log in through an OpenID Connect provider.
	OIDC *OIDCConfig `yaml:"oidc"`
}

// OIDCConfig configures single sign-on (`jg login --sso`) through an
// OpenID Connect provider. Register Jumpgate with the provider as a
// confidential web client with one redirect URI per proxy,
// https://PROXY_PUBLIC_ADDR/v1/sso/callback: the browser comes back to the
// proxy the user started from.
//
//	oidc:
//	  issuer: https://login.example.com
//	  client_id: jumpgate
//	  client_secret_file: /etc/jumpgate/oidc-secret  # mode 0600
//	  scopes: [openid, email, profile, groups]       # the default
//	  username_claim: email                          # the default
//	  groups_claim: groups                           # the default
//	  roles:                                         # a user in none of these groups is refused
//	    - {group: sre, roles: [dev, prod]}
//	    - {group: contractors, roles: [staging]}
//	  max_ttl: 8h                                    # default auth.user_cert_ttl
type OIDCConfig struct {
	Issuer           string            `yaml:"issuer"`
	ClientID         string            `yaml:"client_id"`
	ClientSecretFile string            `yaml:"client_secret_file"`
	Scopes           []string          `yaml:"scopes"`
	UsernameClaim    string            `yaml:"username_claim"`
	GroupsClaim      string            `yaml:"groups_claim"`
	Roles            []OIDCRoleMapping `yaml:"roles"`
	MaxTTL           time.Duration     `yaml:"max_ttl"`
}

// OIDCRoleMapping gives the members of a provider group Jumpgate roles.
type OIDCRoleMapping struct {
	Group string   `yaml:"group"`
	Roles []string `yaml:"roles"`
}

func (o *OIDCConfig) check() error {
	u, err := url.Parse(o.Issuer)
	switch {
	case o.Issuer == "":
		return errors.New("auth.oidc: issuer is required (the provider's issuer URL)")
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return fmt.Errorf("auth.oidc: issuer %q: want the provider's https:// URL", o.Issuer)
	case o.ClientID == "":
		return errors.New("auth.oidc: client_id is required")
	case o.ClientSecretFile == "":
		return errors.New("auth.oidc: client_secret_file is required (a file of mode 0600 holding the client secret)")
	case len(o.Roles) == 0:
		return errors.New("auth.oidc: roles is required: map at least one provider group to Jumpgate roles ({group: sre, roles: [dev]})")
	case o.MaxTTL < 0:
		return fmt.Errorf("auth.oidc: max_ttl %s: want a positive duration", o.MaxTTL)
	}
	for i, m := range o.Roles {
		if m.Group == "" || len(m.Roles) == 0 {
			return fmt.Errorf("auth.oidc: roles[%d]: give a group and at least one role", i)
		}
		for _, r := range m.Roles {
			if err := identity.CheckName(r); err != nil {
				return fmt.Errorf("auth.oidc: roles[%d]: role: %w", i, err)
			}
		}
	}
	// Scopes and claims left empty take authapi.SSOConfig's defaults.
	return nil
}

// KeystoreConfig chooses the CA keystore: "software" (default: keys in
// the data dir, encrypted with the passphrase in keystore_passphrase_file)
// or "pkcs11" (keys generated inside an HSM, which never gives them out).
//
//	keystore:
//	  backend: pkcs11
//	  module: /usr/lib/softhsm/libsofthsm2.so   # the HSM vendor's PKCS#11 library
//	  token_label: jumpgate
//	  pin_file: /etc/jumpgate/hsm.pin           # mode 0600; or pin_env
//	  key_label_prefix: jumpgate-auth-us-1-     # distinct per auth server sharing a token
//
// The PIN comes from a file or an environment variable, never from a flag:
// flags show in ps(1) and shell history.
type KeystoreConfig struct {
	Backend        string `yaml:"backend"`
	Module         string `yaml:"module"`
	TokenLabel     string `yaml:"token_label"`
	PINFile        string `yaml:"pin_file"`
	PINEnv         string `yaml:"pin_env"`
	KeyLabelPrefix string `yaml:"key_label_prefix"`
}

// ProxyConfig configures the proxy role.
type ProxyConfig struct {
	ID          string   `yaml:"id"`
	Listen      string   `yaml:"listen"`
	PublicAddrs []string `yaml:"public_addrs"`
	AuthAddr    string   `yaml:"auth_addr"`
	// AuthAddrs are more auth servers to fail over to, nearest first
	// after AuthAddr. --auth takes a comma-separated list.
	AuthAddrs []string   `yaml:"auth_addrs"`
	Token     string     `yaml:"token"`
	CAPin     string     `yaml:"ca_pin"`
	Region    string     `yaml:"region"`
	Location  *Location  `yaml:"location"`
	Mesh      MeshConfig `yaml:"mesh"`
	// Discovery: how GET /v1/discover locates clients.
	Discovery DiscoveryConfig `yaml:"discovery"`
	// DrainTimeout, when set, makes SIGTERM drain the proxy first (as
	// `jgctl proxy drain` does) for at most this long, then exit; a second
	// signal stops at once. Zero (the default): SIGTERM shuts down after
	// --shutdown-timeout. Give systemd a TimeoutStopSec above it.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// TunnelIdleTimeout closes a node's tunnel after this long without a
	// packet from it (a node that vanished without closing), and sets how
	// often the proxy pings idle tunnels: a third of it. Default 15s. See
	// node.tunnel_idle_timeout: QUIC uses the lower of the two.
	TunnelIdleTimeout time.Duration `yaml:"tunnel_idle_timeout"`
}

// DiscoveryConfig tells a proxy where its clients are.
//
//	discovery:
//	  geoip_db: /var/lib/GeoIP/GeoLite2-City.mmdb   # or a DB-IP Lite City .mmdb; reloaded when it changes
//	  proxy_protocol: required        # off (default), optional or required: PROXY v1/v2 headers
//	  load_balancers: [10.0.0.0/24]   # who may send them
//	  trusted_hops: [10.0.1.0/24]     # HTTP proxies whose X-Forwarded-For is believed
//
// Without a database, discovery ranks by latency. A PROXY header or an
// X-Forwarded-For from anyone not listed is ignored (and logged).
type DiscoveryConfig struct {
	GeoIPDB       string   `yaml:"geoip_db"`
	ProxyProtocol string   `yaml:"proxy_protocol"`
	LoadBalancers []string `yaml:"load_balancers"`
	TrustedHops   []string `yaml:"trusted_hops"`
}

// prefixes parses CIDRs (a bare address is a /32 or /128).
func prefixes(what string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is neither a CIDR nor an IP address", what, s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Location is a point on Earth in degrees.
type Location struct {
	Lat float64 `yaml:"lat"`
	Lon float64 `yaml:"lon"`
}

// MeshConfig joins a proxy to the other proxies of its cluster.
type MeshConfig struct {
	GossipListen  string   `yaml:"gossip_listen"`
	PeerListen    string   `yaml:"peer_listen"`
	AdvertiseAddr string   `yaml:"advertise_addr"`
	Seeds         []string `yaml:"seeds"`
}

// Enabled reports whether this proxy joins a mesh.
func (m MeshConfig) Enabled() bool { return m.GossipListen != "" }

// NodeConfig configures the node role.
// AuditConfig rotates the audit log (see docs/audit.md).
type AuditConfig struct {
	// MaxSize is the size in bytes past which audit.log is renamed to
	// audit.log.1 and a new one started (default 100 MiB; -1: never).
	MaxSize int64 `yaml:"max_size"`
	// Keep is how many rotated files are kept (default 10).
	Keep int `yaml:"keep"`
}

type NodeConfig struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
	// Proxy is the proxy the node joins through and keeps a tunnel to;
	// Proxies adds more, each held as its own tunnel, so the node stays
	// reachable when one proxy dies. --proxy takes a comma-separated list.
	Proxy   string   `yaml:"proxy"`
	Proxies []string `yaml:"proxies"`
	// ConnectionCount is how many distinct proxies the node keeps tunnels
	// to, chosen nearest first from the mesh's proxies (the configured ones
	// are only where it starts). Default 2.
	ConnectionCount int `yaml:"connection_count"`
	// TunnelTransport says how tunnels are carried: "auto" (default: QUIC,
	// falling back to TLS over TCP, per proxy, where UDP is blocked, and
	// back to QUIC when it works again), "quic" or "tcp" (for networks known
	// to block UDP; TCP also costs the proxy and node less CPU per byte).
	TunnelTransport string `yaml:"tunnel_transport"`
	Token           string `yaml:"token"`
	CAPin           string `yaml:"ca_pin"`
	// LockMode is what the node does when it has not heard from the
	// cluster for LockStaleAfter, and so may miss new locks: "best_effort"
	// (default) keeps applying the locks it knows; "strict" refuses every
	// new session until it hears from the cluster again.
	LockMode       string        `yaml:"lock_mode"`
	LockStaleAfter time.Duration `yaml:"lock_stale_after"`
	// BenchSSHListen also serves the node's SSH server directly on this
	// loopback address, bypassing the tunnel. It exists for the benchmark
	// suite, which separates the mesh's cost from the SSH server's; a node in
	// production is reachable only through its tunnels.
	BenchSSHListen string `yaml:"bench_ssh_listen"`
	// Recording is "on" (default: every shell and exec session is
	// recorded in asciicast v2 under <data_dir>/recordings and uploaded
	// to the auth servers when it ends; a session that cannot be
	// recorded is refused) or "off".
	Recording string `yaml:"recording"`
	// RecordingLimit bounds one recording, in bytes (default 64 MiB);
	// past it the session goes on unrecorded and the recording says so.
	RecordingLimit int64 `yaml:"recording_limit"`
	// RecordingKeep is how long the node keeps its own copy of a
	// recording an auth server has stored (default 168h; the auth
	// servers keep theirs). Recordings not uploaded yet are never removed.
	RecordingKeep time.Duration `yaml:"recording_keep"`
	// ResumeWindow is how long the node keeps a session whose client lost
	// its path (a proxy drained or died) for the client to resume it
	// through another proxy. Default 5 minutes.
	ResumeWindow time.Duration `yaml:"resume_window"`
	// TunnelIdleTimeout is how long the node waits for a packet from a
	// proxy before it gives that tunnel up and connects elsewhere (a proxy
	// that died without closing, or a path that broke), and sets how often
	// it pings idle tunnels: a third of it, which also keeps NAT mappings
	// open (above 90s, some NATs forget an idle mapping between two pings).
	// Default 15s. A QUIC tunnel uses the lower of the node's and the
	// proxy's proxy.tunnel_idle_timeout, so raise both together. Longer
	// timeouts cost the proxy less CPU per idle tunnel (benchmarks/README.md)
	// and notice a dead proxy later; a drained or restarted proxy is left at
	// once either way.
	TunnelIdleTimeout time.Duration `yaml:"tunnel_idle_timeout"`
}

// Tunnel idle timeouts (proxy.tunnel_idle_timeout, node.tunnel_idle_timeout):
// the default notices a vanished peer within seconds. The bounds keep a
// keepalive (a third of it) at least a second, and at most 40 s: RFC 4787
// asks NATs to keep an idle UDP mapping for two minutes, but many keep it
// for 30 s to a minute, and a node whose mapping expired loses its tunnel
// until the timeout runs out.
const (
	defaultTunnelIdleTimeout = 15 * time.Second
	minTunnelIdleTimeout     = 3 * time.Second
	maxTunnelIdleTimeout     = 2 * time.Minute
)

// checkTunnelIdleTimeout applies the default to *d, or says why it is out
// of bounds.
func checkTunnelIdleTimeout(name string, d *time.Duration) error {
	switch {
	case *d == 0:
		*d = defaultTunnelIdleTimeout
	case *d < minTunnelIdleTimeout || *d > maxTunnelIdleTimeout:
		return fmt.Errorf("%s %v: want %v to %v (default %v; pings go out every third of it)", name, *d, minTunnelIdleTimeout, maxTunnelIdleTimeout, defaultTunnelIdleTimeout)
	}
	return nil
}

// defaultResumeWindow is node.resume_window's default: longer than jg's
// own default window (2 minutes), so that the client gives up first and
// says so.
const defaultResumeWindow = 5 * time.Minute

// loadConfigFile reads and parses the config file at path ("" for none:
// an empty Config, flags only).
func loadConfigFile(path string) (Config, error) {
	if path == "" {
		return Config{}, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig reads a YAML config strictly: unknown keys are errors (a
// misspelt key silently ignored is how outages start).
func ParseConfig(data []byte) (Config, error) {
	var c Config
	if len(bytes.TrimSpace(data)) == 0 {
		return c, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// Has reports whether the config enables role r.
func (c *Config) Has(r string) bool {
	for _, x := range c.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// CheckAndSetDefaults validates a config after flags were applied.
func (c *Config) CheckAndSetDefaults() error {
	if len(c.Roles) == 0 {
		return errors.New("no roles: give --roles=auth,proxy,node (any combination) or roles: in the config")
	}
	for _, r := range c.Roles {
		if r != "auth" && r != "proxy" && r != "node" {
			return fmt.Errorf("unknown role %q: want auth, proxy or node", r)
		}
	}
	if c.DataDir == "" {
		return errors.New("data_dir is required (--data-dir)")
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return fmt.Errorf("log format %q: want text or json", c.Log.Format)
	}
	if c.Has("auth") {
		if c.Auth.ClusterName == "" {
			return errors.New("auth: cluster_name is required (--cluster-name)")
		}
		if err := identity.CheckName(c.Auth.ClusterName); err != nil {
			return fmt.Errorf("auth: cluster_name: %w", err)
		}
		if c.Auth.Listen == "" {
			c.Auth.Listen = "127.0.0.1:3025"
		}
		if err := checkHostPort("auth.listen", c.Auth.Listen); err != nil {
			return err
		}
		if c.Auth.ID == "" {
			if c.Auth.JoinAddr != "" {
				return errors.New("auth: a server that joins an existing cluster needs its own id (--auth-id), the one given to jgctl auth add")
			}
			c.Auth.ID = "auth-" + c.Auth.ClusterName
		}
		if err := identity.CheckName(c.Auth.ID); err != nil {
			return fmt.Errorf("auth: id: %w", err)
		}
		if c.Auth.AdvertiseAddr == "" {
			c.Auth.AdvertiseAddr = c.Auth.Listen
		}
		if err := checkHostPort("auth.advertise_addr", c.Auth.AdvertiseAddr); err != nil {
			return err
		}
		if c.Auth.RaftListen == "" {
			host, port, _ := net.SplitHostPort(c.Auth.Listen)
			n, err := strconv.Atoi(port)
			if err != nil || n == 0 || n == 65535 {
				return fmt.Errorf("auth: give raft_listen (--raft-listen): it cannot be derived from listen %s", c.Auth.Listen)
			}
			c.Auth.RaftListen = net.JoinHostPort(host, strconv.Itoa(n+1))
		}
		if err := checkHostPort("auth.raft_listen", c.Auth.RaftListen); err != nil {
			return err
		}
		if c.Auth.RaftAdvertise != "" {
			if err := checkHostPort("auth.raft_advertise", c.Auth.RaftAdvertise); err != nil {
				return err
			}
		}
		if c.Auth.JoinAddr != "" {
			if err := checkHostPort("auth.join_addr", c.Auth.JoinAddr); err != nil {
				return err
			}
		}
		if c.Auth.OIDC != nil {
			if err := c.Auth.OIDC.check(); err != nil {
				return err
			}
		}
		switch ks := &c.Auth.Keystore; ks.Backend {
		case "", "software":
			ks.Backend = "software"
		case "pkcs11":
			if ks.Module == "" || ks.TokenLabel == "" {
				return errors.New("auth.keystore: the pkcs11 backend needs module (the HSM's PKCS#11 library) and token_label")
			}
			if (ks.PINFile == "") == (ks.PINEnv == "") {
				return errors.New("auth.keystore: give the token's PIN in exactly one of pin_file (mode 0600) or pin_env")
			}
		default:
			return fmt.Errorf("auth.keystore.backend %q: want software or pkcs11", ks.Backend)
		}
	}
	if c.Has("proxy") {
		if err := checkTunnelIdleTimeout("proxy.tunnel_idle_timeout", &c.Proxy.TunnelIdleTimeout); err != nil {
			return err
		}
	}
	if c.Proxy.DrainTimeout < 0 {
		return fmt.Errorf("proxy.drain_timeout %v: must not be negative (0 turns drain-on-SIGTERM off)", c.Proxy.DrainTimeout)
	}
	if c.Has("proxy") {
		if c.Proxy.ID == "" {
			return errors.New("proxy: id is required (--proxy-id)")
		}
		if err := identity.CheckName(c.Proxy.ID); err != nil {
			return fmt.Errorf("proxy: id: %w", err)
		}
		if c.Proxy.Listen == "" {
			c.Proxy.Listen = "127.0.0.1:3080"
		}
		if err := checkHostPort("proxy.listen", c.Proxy.Listen); err != nil {
			return err
		}
		if c.Proxy.Region == "" {
			c.Proxy.Region = "default"
		}
		if err := identity.CheckName(c.Proxy.Region); err != nil {
			return fmt.Errorf("proxy: region: %w", err)
		}
		switch d := &c.Proxy.Discovery; d.ProxyProtocol {
		case "":
			d.ProxyProtocol = "off"
		case "off", "optional", "required":
		default:
			return fmt.Errorf("proxy.discovery.proxy_protocol %q: want off, optional or required", d.ProxyProtocol)
		}
		if _, err := prefixes("proxy.discovery.load_balancers", c.Proxy.Discovery.LoadBalancers); err != nil {
			return err
		}
		if _, err := prefixes("proxy.discovery.trusted_hops", c.Proxy.Discovery.TrustedHops); err != nil {
			return err
		}
		if c.Proxy.Discovery.ProxyProtocol != "off" && len(c.Proxy.Discovery.LoadBalancers) == 0 {
			return errors.New("proxy.discovery.proxy_protocol is on but load_balancers is empty: list the load balancers allowed to send PROXY headers")
		}
		if l := c.Proxy.Location; l != nil && (l.Lat < -90 || l.Lat > 90 || l.Lon < -180 || l.Lon > 180) {
			return fmt.Errorf("proxy: location %v,%v: latitude must be within ±90 and longitude within ±180", l.Lat, l.Lon)
		}
		if a := c.Proxy.Mesh.AdvertiseAddr; a != "" && (strings.ContainsAny(a, ":/ ") && net.ParseIP(a) == nil) {
			return fmt.Errorf("proxy: mesh.advertise_addr %q: want a host name or IP address without a port", a)
		}
		if m := &c.Proxy.Mesh; m.Enabled() {
			if err := checkHostPort("proxy.mesh.gossip_listen", m.GossipListen); err != nil {
				return err
			}
			if m.PeerListen == "" {
				return errors.New("proxy: mesh.peer_listen is required with mesh.gossip_listen (--peer-listen)")
			}
			if err := checkHostPort("proxy.mesh.peer_listen", m.PeerListen); err != nil {
				return err
			}
			for _, s := range m.Seeds {
				if err := checkHostPort("proxy.mesh.seeds", s); err != nil {
					return err
				}
			}
		} else if len(c.Proxy.Mesh.Seeds) > 0 || c.Proxy.Mesh.PeerListen != "" {
			return errors.New("proxy: mesh seeds or peer_listen given without mesh.gossip_listen (--gossip-listen)")
		}
		if !c.Has("auth") && c.Proxy.AuthAddr == "" {
			return errors.New("proxy: without the auth role in this process, auth_addr (--auth) is required; on first start also give token and ca_pin")
		}
		if (c.Proxy.Token == "") != (c.Proxy.CAPin == "") && !c.Has("auth") {
			return errors.New("proxy: give token and ca_pin together (jgctl tokens add --type=proxy prints both)")
		}

	}
	if c.Has("node") {
		if c.Node.Name == "" {
			return errors.New("node: name is required (--node-name)")
		}
		switch c.Node.LockMode {
		case "":
			c.Node.LockMode = "best_effort"
		case "best_effort", "strict":
		default:
			return fmt.Errorf("node.lock_mode %q: want best_effort or strict", c.Node.LockMode)
		}
		switch c.Node.Recording {
		case "", "on", "off":
		default:
			return fmt.Errorf("node.recording %q: want on or off", c.Node.Recording)
		}
		if c.Node.RecordingKeep == 0 {
			c.Node.RecordingKeep = 7 * 24 * time.Hour
		}
		if c.Node.RecordingKeep < 0 {
			return fmt.Errorf("node.recording_keep %s: want a duration such as 168h", c.Node.RecordingKeep)
		}
		if c.Node.RecordingLimit < 0 {
			return fmt.Errorf("node.recording_limit %d: want a size in bytes (0 for the default, 64 MiB)", c.Node.RecordingLimit)
		}
		if c.Node.LockStaleAfter == 0 {
			// Watch streams carry a heartbeat every 10 s: a minute is six
			// missed in a row.
			c.Node.LockStaleAfter = time.Minute
		}
		switch {
		case c.Node.ResumeWindow < 0:
			return fmt.Errorf("node.resume_window %v: must not be negative", c.Node.ResumeWindow)
		case c.Node.ResumeWindow == 0:
			c.Node.ResumeWindow = defaultResumeWindow
		}
		if err := checkTunnelIdleTimeout("node.tunnel_idle_timeout", &c.Node.TunnelIdleTimeout); err != nil {
			return err
		}
		if err := identity.CheckName(c.Node.Name); err != nil {
			return fmt.Errorf("node: name: %w", err)
		}
		if c.Node.Proxy == "" && len(c.Node.Proxies) == 0 {
			if !c.Has("proxy") {
				return errors.New("node: proxy is required (--proxy host:port)")
			}
			c.Node.Proxy = c.Proxy.Listen
		}
		list := append(strings.Split(c.Node.Proxy, ","), c.Node.Proxies...)
		c.Node.Proxy, c.Node.Proxies = "", nil
		for _, a := range list {
			a = strings.TrimSpace(a)
			if a == "" || slices.Contains(c.Node.Proxies, a) {
				continue
			}
			if err := checkHostPort("node.proxy", a); err != nil {
				return err
			}
			c.Node.Proxies = append(c.Node.Proxies, a)
		}
		if len(c.Node.Proxies) == 0 {
			return errors.New("node: proxy is required (--proxy host:port)")
		}
		c.Node.Proxy = c.Node.Proxies[0]
		if c.Node.ConnectionCount < 0 || c.Node.ConnectionCount > 16 {
			return fmt.Errorf("node: connection_count %d: want 1 to 16 (default 2)", c.Node.ConnectionCount)
		}
		switch c.Node.TunnelTransport {
		case "":
			c.Node.TunnelTransport = "auto"
		case "auto", "quic", "tcp":
		default:
			return fmt.Errorf("node: tunnel_transport %q: want auto, quic or tcp (--tunnel-transport)", c.Node.TunnelTransport)
		}
		if c.Node.BenchSSHListen != "" {
			h, _, err := net.SplitHostPort(c.Node.BenchSSHListen)
			if ip := net.ParseIP(h); err != nil || ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("node.bench_ssh_listen %q: want a loopback address such as 127.0.0.1:3022 (it bypasses the tunnel and exists for benchmarks)", c.Node.BenchSSHListen)
			}
		}
		for k, v := range c.Node.Labels {
			if k == "" || strings.ContainsAny(k+v, ",=\n") {
				return fmt.Errorf("node: label %q=%q: keys and values may not contain , = or newlines", k, v)
			}
		}
	}
	return nil
}

func checkHostPort(what, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s %q: want host:port", what, addr)
	}
	return nil
}

// ParseLabels reads "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}
