package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

func demoCmd() *cobra.Command {
	var dir, proxyAddr, authAddr, password string
	var keep bool
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole cluster on this machine: auth, three proxies in three simulated regions, and two nodes reachable only through tunnels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, demoOptions{dir: dir, proxy: proxyAddr, auth: authAddr, password: password, keep: keep})
		},
	}
	c.Flags().StringVar(&dir, "dir", ".demo", "working directory for the demo's data and logs (removed at exit)")
	c.Flags().StringVar(&proxyAddr, "proxy-listen", "127.0.0.1:3080", "first proxy's address; the others use the same port on 127.0.0.2 and 127.0.0.3")
	c.Flags().StringVar(&authAddr, "auth-listen", "127.0.0.1:3025", "auth server address")
	c.Flags().StringVar(&password, "password", "", "password for the demo user alice (default: random)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the demo directory at exit")
	return c
}

type demoOptions struct {
	dir, proxy, auth, password string
	keep                       bool
}

// demoRegion is one simulated region of the demo: its proxy listens on its
// own loopback address, as a proxy in another city would on its own host.
type demoRegion struct {
	proxyID, region, ip, location string
	listen, peer, gossip          string
}

func demoRegions(proxyListen string) ([]demoRegion, error) {
	host, portStr, err := net.SplitHostPort(proxyListen)
	if err != nil {
		return nil, fmt.Errorf("--proxy-listen %q: %w", proxyListen, err)
	}
	var port int
	if _, err := fmt.Sscan(portStr, &port); err != nil || port < 1 || port > 65533 {
		return nil, fmt.Errorf("--proxy-listen %q: want a port below 65534", proxyListen)
	}
	rs := []demoRegion{
		{proxyID: "proxy-us", region: "us-east", ip: host, location: "39.04,-77.49"},             // Ashburn
		{proxyID: "proxy-eu", region: "eu-central", ip: "127.0.0.2", location: "50.11,8.68"},     // Frankfurt
		{proxyID: "proxy-ap", region: "ap-northeast", ip: "127.0.0.3", location: "35.68,139.65"}, // Tokyo
	}
	for i := range rs {
		r := &rs[i]
		r.listen = net.JoinHostPort(r.ip, fmt.Sprint(port))
		r.peer = net.JoinHostPort(r.ip, fmt.Sprint(port+1))
		r.gossip = net.JoinHostPort(r.ip, fmt.Sprint(port+2))
	}
	return rs, nil
}

func runDemo(ctx context.Context, o demoOptions) error {
	regions, err := demoRegions(o.proxy)
	if err != nil {
		return err
	}
	busy := []string{o.auth}
	for _, r := range regions {
		busy = append(busy, r.listen, r.peer, r.gossip)
	}
	for _, a := range busy {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("address %s is busy (is another demo running?): %w", a, err)
		}
		l.Close()
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	}
	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			c.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		}
		for _, c := range children {
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }() //nolint:errcheck
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				c.Process.Kill() //nolint:errcheck
				<-done
			}
		}
		fmt.Println("\nJumpgate demo stopped and cleaned up.")
	}()
	start := func(name string, args ...string) error {
		logf, err := os.Create(filepath.Join(dir, "logs", name+".log"))
		if err != nil {
			return err
		}
		c := exec.Command(exe, append([]string{"start"}, args...)...)
		c.Stdout, c.Stderr = logf, logf
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			return err
		}
		children = append(children, c)
		return nil
	}
	meshArgs := func(r demoRegion) []string {
		args := []string{"--proxy-id=" + r.proxyID, "--region=" + r.region, "--location=" + r.location,
			"--proxy-listen=" + r.listen, "--peer-listen=" + r.peer, "--gossip-listen=" + r.gossip, "--diag-listen=" + demoDiag(r)}
		if r.proxyID != regions[0].proxyID {
			args = append(args, "--seeds="+regions[0].gossip)
		}
		return args
	}
	fmt.Println("Starting the Jumpgate demo cluster...")
	if err := start("auth-"+regions[0].proxyID, append([]string{"--roles=auth,proxy", "--cluster-name=demo",
		"--data-dir=" + filepath.Join(dir, "auth"), "--auth-listen=" + o.auth}, meshArgs(regions[0])...)...); err != nil {
		return err
	}
	adminDir := filepath.Join(dir, "auth", "admin")
	admin, err := waitAdmin(ctx, adminDir, o.auth)
	if err != nil {
		return fmt.Errorf("auth server did not come up (see %s): %w", filepath.Join(dir, "logs", "auth-"+regions[0].proxyID+".log"), err)
	}
	defer admin.Close()
	for _, r := range regions[1:] {
		tok, err := admin.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindProxy, TTL: identity.Duration(10 * time.Minute)})
		if err != nil {
			return err
		}
		if err := start(r.proxyID, append([]string{"--roles=proxy", "--data-dir=" + filepath.Join(dir, r.proxyID), "--auth=" + o.auth,
			"--token=" + tok.Token, "--ca-pin=" + tok.CAPin}, meshArgs(r)...)...); err != nil {
			return err
		}
	}
	me, err := user.Current()
	if err != nil {
		return err
	}
	roles := []identity.Role{
		{Name: "dev", Allow: identity.Rules{Logins: []string{me.Username}, NodeLabels: identity.Labels{"*": {"*"}}}, MaxSessionTTL: identity.Duration(12 * time.Hour)},
		{Name: "staging-only", Allow: identity.Rules{Logins: []string{me.Username}, NodeLabels: identity.Labels{"env": {"staging"}}}},
	}
	if err := admin.ApplyRoles(ctx, roles); err != nil {
		return err
	}
	pw := o.password
	if pw == "" {
		b := make([]byte, 6)
		rand.Read(b) //nolint:errcheck
		pw = "demo-" + hex.EncodeToString(b)
	}
	if err := admin.CreateUser(ctx, authapi.CreateUserRequest{Name: "alice", Roles: []string{"dev"}, Password: pw}); err != nil {
		return err
	}
	if err := admin.CreateUser(ctx, authapi.CreateUserRequest{Name: "bob", Roles: []string{"staging-only"}, Password: pw}); err != nil {
		return err
	}
	// node1 sits in Frankfurt with a tunnel to the EU proxy only; node2 in
	// Tokyo keeps tunnels to the AP and US proxies.
	nodes := []struct{ name, env, proxies string }{
		{"node1", "dev", regions[1].listen},
		{"node2", "staging", regions[2].listen + "," + regions[0].listen},
	}
	var pin string
	for _, n := range nodes {
		tok, err := admin.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindNode, TTL: identity.Duration(10 * time.Minute)})
		if err != nil {
			return err
		}
		pin = tok.CAPin
		if err := start(n.name, "--roles=node", "--node-name="+n.name, "--labels=env="+n.env, "--data-dir="+filepath.Join(dir, n.name),
			"--proxy="+n.proxies, "--token="+tok.Token, "--ca-pin="+tok.CAPin); err != nil {
			return err
		}
	}
	if err := waitOnline(ctx, admin, len(nodes)); err != nil {
		return fmt.Errorf("nodes did not connect (see %s): %w", filepath.Join(dir, "logs"), err)
	}
	if err := waitProxies(ctx, admin, len(regions)); err != nil {
		return fmt.Errorf("proxies did not form a mesh (see %s): %w", filepath.Join(dir, "logs"), err)
	}
	bin := filepath.Dir(exe)
	fmt.Printf(`
Jumpgate demo is running: cluster "demo" with three proxies in three simulated
regions, each on its own loopback address, gossiping and peering over QUIC:

  proxy-us  us-east       %[1]s   (also runs the auth server)
  proxy-eu  eu-central    %[8]s
  proxy-ap  ap-northeast  %[9]s

node1 (env=dev) holds a tunnel to proxy-eu only; node2 (env=staging) to
proxy-ap and proxy-us. The nodes listen on no port. Log in at any proxy and
reach every node: the mesh carries the connection to the proxy holding the
node's tunnel.

In another terminal:

  export PATH=%[2]s:$PATH
  jg login --proxy=%[1]s --user=alice --ca-pin=%[3]s
      (password: %[4]s)
  jg ls
  jg ssh node1
  jg --debug ssh node1 -- uname -a      (says which path it took: peer proxy-eu)

Plain OpenSSH works too:

  jg config >> ~/.ssh/config
  ssh node1 hostname;  scp somefile node2:/tmp/;  sftp node1

bob (same password) has role staging-only: he may reach node2 but not node1.
Admin commands (users, roles, tokens, nodes, proxies, status):

  export JUMPGATE_ADMIN_IDENTITY=%[5]s JUMPGATE_AUTH=%[6]s
  jgctl proxies ls
  jgctl nodes ls
  jgctl sessions ls          (every shell and command is recorded; jg play SESSION replays yours)
  jgctl requests ls          (jg request create --roles=R --reason=... asks for more access)

Each proxy's mesh page (map, peer links, tunnels, nodes without a tunnel) and
its Prometheus metrics:

  http://%[10]s/mesh/    http://%[10]s/metrics
  http://%[11]s/mesh/    http://%[12]s/mesh/

Logs: %[7]s    Press Ctrl-C to stop the demo.
`, regions[0].listen, bin, pin, pw, adminDir, o.auth, filepath.Join(dir, "logs"), regions[1].listen, regions[2].listen,
		demoDiag(regions[0]), demoDiag(regions[1]), demoDiag(regions[2]))
	done := make(chan error, len(children))
	for _, c := range children {
		go func() { done <- c.Wait() }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-done:
		return fmt.Errorf("a demo process exited (see %s): %v", filepath.Join(dir, "logs"), err)
	}
}

// waitProxies waits until n proxies report to auth and each sees all the
// others alive.
func waitProxies(ctx context.Context, c *authapi.Client, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ps, err := c.Proxies(ctx)
		if err == nil && len(ps) >= n {
			whole := true
			for _, p := range ps {
				alive := 0
				if p.Mesh != nil {
					for _, pv := range p.Mesh.Peers {
						if pv.Health == "alive" {
							alive++
						}
					}
				}
				whole = whole && alive >= n-1
			}
			if whole {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("timed out after 60s")
}

func waitAdmin(ctx context.Context, dir, addr string) (*authapi.Client, error) {
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		if id, err := creds.Load(dir); err == nil {
			c, err := authapi.NewClient(authapi.ClientConfig{Addr: addr, Trust: authapi.TrustConfig{RootCAs: id.RootCAs, Kinds: []identity.Kind{identity.KindAuth}}, GetClientCertificate: id.GetClientCertificate})
			if err != nil {
				return nil, err
			}
			if _, lastErr = c.Status(ctx); lastErr == nil {
				return c, nil
			}
			c.Close()
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, lastErr
}

func waitOnline(ctx context.Context, c *authapi.Client, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		nodes, err := c.Nodes(ctx)
		if err == nil {
			online := 0
			for _, nd := range nodes {
				if nd.Online {
					online++
				}
			}
			if online >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("timed out after 60s")
}

// demoDiag is a demo proxy's diagnostic address: its proxy address's host,
// port 3090.
func demoDiag(r demoRegion) string {
	host, _, _ := net.SplitHostPort(r.listen)
	return net.JoinHostPort(host, "3090")
}
