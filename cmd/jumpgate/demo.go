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
		Short: "Run a whole cluster on this machine: auth, a proxy and two nodes reachable only through tunnels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, demoOptions{dir: dir, proxy: proxyAddr, auth: authAddr, password: password, keep: keep})
		},
	}
	c.Flags().StringVar(&dir, "dir", ".demo", "working directory for the demo's data and logs (removed at exit)")
	c.Flags().StringVar(&proxyAddr, "proxy-listen", "127.0.0.1:3080", "proxy address")
	c.Flags().StringVar(&authAddr, "auth-listen", "127.0.0.1:3025", "auth server address")
	c.Flags().StringVar(&password, "password", "", "password for the demo user alice (default: random)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the demo directory at exit")
	return c
}

type demoOptions struct {
	dir, proxy, auth, password string
	keep                       bool
}

func runDemo(ctx context.Context, o demoOptions) error {
	for _, a := range []string{o.proxy, o.auth} {
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
	fmt.Println("Starting the Jumpgate demo cluster...")
	if err := start("auth-proxy", "--roles=auth,proxy", "--cluster-name=demo", "--proxy-id=proxy1",
		"--data-dir="+filepath.Join(dir, "auth"), "--auth-listen="+o.auth, "--proxy-listen="+o.proxy); err != nil {
		return err
	}
	adminDir := filepath.Join(dir, "auth", "admin")
	admin, err := waitAdmin(ctx, adminDir, o.auth)
	if err != nil {
		return fmt.Errorf("auth server did not come up (see %s): %w", filepath.Join(dir, "logs", "auth-proxy.log"), err)
	}
	defer admin.Close()
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
	var pin string
	for i, env := range []string{"dev", "staging"} {
		tok, err := admin.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.KindNode, TTL: identity.Duration(10 * time.Minute)})
		if err != nil {
			return err
		}
		pin = tok.CAPin
		name := fmt.Sprintf("node%d", i+1)
		if err := start(name, "--roles=node", "--node-name="+name, "--labels=env="+env, "--data-dir="+filepath.Join(dir, name),
			"--proxy="+o.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin); err != nil {
			return err
		}
	}
	if err := waitOnline(ctx, admin, 2); err != nil {
		return fmt.Errorf("nodes did not connect (see %s): %w", filepath.Join(dir, "logs"), err)
	}
	bin := filepath.Dir(exe)
	fmt.Printf(`
Jumpgate demo is running: cluster "demo", one auth server and proxy (%[1]s),
and two nodes, node1 (env=dev) and node2 (env=staging). The nodes listen on no
port: they are reachable only through their reverse tunnels to the proxy.

In another terminal:

  export PATH=%[2]s:$PATH
  jg login --proxy=%[1]s --user=alice --ca-pin=%[3]s
      (password: %[4]s)
  jg ls
  jg ssh node1
  jg ssh node2 -- uname -a

Plain OpenSSH works too:

  jg config >> ~/.ssh/config
  ssh node1 hostname;  scp somefile node2:/tmp/;  sftp node1

bob (same password) has role staging-only: he may reach node2 but not node1.
Admin commands (users, roles, tokens, nodes, status):

  JUMPGATE_ADMIN_IDENTITY=%[5]s jgctl --auth=%[6]s nodes ls

Logs: %[7]s    Press Ctrl-C to stop the demo.
`, o.proxy, bin, pin, pw, adminDir, o.auth, filepath.Join(dir, "logs"))
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
