package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte("data_dir: /tmp/x\nroles: [auth, proxy]\nauth: {cluster_name: prod}\nproxy: {id: p1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.Auth.Listen != "127.0.0.1:3025" || c.Proxy.Listen != "127.0.0.1:3080" || !c.Has("proxy") {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if _, err := ParseConfig([]byte("data_dri: /tmp\n")); err == nil || !strings.Contains(err.Error(), "data_dri") {
		t.Fatalf("misspelt key not reported: %v", err)
	}
	bad := []string{
		"roles: [auth]\ndata_dir: /x\n",                                       // no cluster name
		"roles: [wizard]\ndata_dir: /x\n",                                     // unknown role
		"roles: [node]\ndata_dir: /x\nnode: {name: n1}\n",                     // no proxy
		"roles: [node]\ndata_dir: /x\nnode: {name: 'bad name', proxy: a:1}\n", // bad name
		"roles: [auth]\ndata_dir: /x\nauth: {cluster_name: c, listen: nope}\n",
		"roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, bench_ssh_listen: '0.0.0.0:22'}\n", // bench listener off loopback
		"roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, bench_ssh_listen: 'localhost'}\n",
		"roles: [proxy]\ndata_dir: /x\nproxy: {id: p2, token: t}\n",                                           // no auth_addr
		"roles: [proxy]\ndata_dir: /x\nproxy: {id: p2, auth_addr: 'a:1', token: t}\n",                         // token without pin
		"roles: [proxy]\ndata_dir: /x\nproxy: {id: p2, auth_addr: 'a:1', mesh: {advertise_addr: 'h:3082'}}\n", // advertise with a port
		"roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, tunnel_transport: udp}\n",
		"roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, tunnel_idle_timeout: 1s}\n", // keepalive under a second
		"roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, tunnel_idle_timeout: 1h}\n", // NAT mappings expire
		"roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, tunnel_idle_timeout: -15s}\n",
		"roles: [auth, proxy]\ndata_dir: /x\nauth: {cluster_name: c}\nproxy: {id: p1, tunnel_idle_timeout: 2s}\n",
	}
	if ok, err := ParseConfig([]byte("roles: [auth, proxy, node]\ndata_dir: /x\nauth: {cluster_name: c}\nproxy: {id: p1}\nnode: {name: n1}\n")); err != nil || ok.CheckAndSetDefaults() != nil {
		t.Fatal("all-in-one config refused")
	} else if ok.Proxy.TunnelIdleTimeout != 15*time.Second || ok.Node.TunnelIdleTimeout != 15*time.Second {
		t.Fatalf("tunnel_idle_timeout defaults: proxy %v, node %v, want 15s", ok.Proxy.TunnelIdleTimeout, ok.Node.TunnelIdleTimeout)
	}
	if ok, err := ParseConfig([]byte("roles: [auth, proxy, node]\ndata_dir: /x\nauth: {cluster_name: c}\nproxy: {id: p1, tunnel_idle_timeout: 2m}\nnode: {name: n1, tunnel_idle_timeout: 90s}\n")); err != nil || ok.CheckAndSetDefaults() != nil {
		t.Fatal("tunnel_idle_timeout 2m / 90s refused")
	} else if ok.Proxy.TunnelIdleTimeout != 2*time.Minute || ok.Node.TunnelIdleTimeout != 90*time.Second {
		t.Fatalf("tunnel_idle_timeout: proxy %v, node %v, want 2m and 90s", ok.Proxy.TunnelIdleTimeout, ok.Node.TunnelIdleTimeout)
	}
	// A joined proxy restarts with neither token nor pin.
	restart, err := ParseConfig([]byte("roles: [proxy]\ndata_dir: /x\nproxy: {id: p2, auth_addr: 'a:1', mesh: {gossip_listen: '0.0.0.0:3082', peer_listen: '0.0.0.0:3081', advertise_addr: '203.0.113.7'}}\n"))
	if err == nil {
		err = restart.CheckAndSetDefaults()
	}
	if err != nil {
		t.Fatalf("proxy restart config refused: %v", err)
	}
	ok, err := ParseConfig([]byte("roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, bench_ssh_listen: '127.0.0.1:0'}\n"))
	if err == nil {
		err = ok.CheckAndSetDefaults()
	}
	if err != nil {
		t.Fatalf("loopback bench listener refused: %v", err)
	}
	if ok.Node.TunnelTransport != "auto" {
		t.Fatalf("tunnel_transport default = %q, want auto", ok.Node.TunnelTransport)
	}
	tcp, err := ParseConfig([]byte("roles: [node]\ndata_dir: /x\nnode: {name: n1, proxy: a:1, tunnel_transport: tcp}\n"))
	if err == nil {
		err = tcp.CheckAndSetDefaults()
	}
	if err != nil || tcp.Node.TunnelTransport != "tcp" {
		t.Fatalf("tunnel_transport tcp: %q, %v", tcp.Node.TunnelTransport, err)
	}
	for _, b := range bad {
		c, err := ParseConfig([]byte(b))
		if err == nil {
			err = c.CheckAndSetDefaults()
		}
		if err == nil {
			t.Errorf("config accepted:\n%s", b)
		}
	}
}

func TestParseLabels(t *testing.T) {
	l, err := ParseLabels("env=prod, team=db")
	if err != nil || l["env"] != "prod" || l["team"] != "db" {
		t.Fatalf("%v %v", l, err)
	}
	if _, err := ParseLabels("env"); err == nil {
		t.Fatal("label without = accepted")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("data_dir: /var/lib/jumpgate\nroles: [auth, proxy, node]\nauth: {cluster_name: c}\nproxy: {id: p}\nnode: {name: n, labels: {a: b}}\n"))
	f.Add([]byte("roles: !!binary AAAA\n"))
	f.Add([]byte("{{{{"))
	f.Add([]byte("auth:\n  user_cert_ttl: 12h\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		_ = c.CheckAndSetDefaults()
	})
}

// TestExampleConfig: the example in examples/ parses and passes the checks.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("../../examples/jumpgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("examples/jumpgate.yaml: %v", err)
	}
	if err := c.CheckAndSetDefaults(); err != nil {
		t.Fatalf("examples/jumpgate.yaml: %v", err)
	}
	if c.Auth.Keystore.Backend != "pkcs11" || c.Auth.RaftListen != "10.0.0.10:3026" || len(c.Proxy.AuthAddrs) != 2 {
		t.Fatalf("examples/jumpgate.yaml parsed as %+v", c.Auth)
	}
}
