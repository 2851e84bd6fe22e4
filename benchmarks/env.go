package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// env is everything the suite started: two OpenSSH sshds, a Jumpgate
// auth+proxy process and a node, and the ssh_config that names each path.
type env struct {
	dir, bin             string
	login                string
	sshConfig, jgHome    string
	sshVersion           string
	procs                []*exec.Cmd
	named                map[string]*exec.Cmd
	direct, bastion, jgd string // loopback addresses
	proxy, auth          string
	proxyB               string // a second proxy, peered with the first; node2 tunnels to it only
	diagProxy, diagNode  string // diagnostic listeners with /debug/pprof/
	diagNode2, diagNode3 string // node2's and node3's diagnostic listeners (/metrics)
}

// setup starts the baselines and the cluster. On error the returned env (if
// any) still needs close.
func setup(ctx context.Context, bin string) (*env, error) {
	for _, b := range []string{"jumpgate", "jg", "jgctl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("%s not built in %s: run make build first", b, bin)
		}
	}
	sshd, err := findSSHD()
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s not found: install openssh-client (make deps)", b)
		}
	}
	me, err := user.Current()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "jumpgate-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, bin: bin, login: me.Username, jgHome: filepath.Join(dir, "jghome"), named: map[string]*exec.Cmd{}}
	if v, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		e.sshVersion = strings.TrimSpace(string(v))
	}
	log.Printf("work directory %s", dir)

	// OpenSSH baselines: a target sshd and a bastion, each with its own host
	// key and config, trusting one client key.
	if err := e.keygen("id_client"); err != nil {
		return e, err
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id_client.pub"))
	if err != nil {
		return e, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return e, err
	}
	if os.Geteuid() == 0 {
		// sshd refuses to start as root without its privilege separation directory.
		_ = os.MkdirAll("/run/sshd", 0o755)
	}
	var knownHosts bytes.Buffer
	for _, s := range []struct {
		name string
		addr *string
	}{{"sshd-target", &e.direct}, {"sshd-bastion", &e.bastion}} {
		if err := e.keygen(s.name + "_host"); err != nil {
			return e, err
		}
		hp, _ := os.ReadFile(filepath.Join(dir, s.name+"_host.pub"))
		fmt.Fprintf(&knownHosts, "%s %s", s.name, hp)
		*s.addr, err = freeAddr()
		if err != nil {
			return e, err
		}
		_, port, _ := net.SplitHostPort(*s.addr)
		cfg := filepath.Join(dir, s.name+".conf")
		conf := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
PrintMotd no
`, port, filepath.Join(dir, s.name+"_host"), filepath.Join(dir, "authorized_keys"), filepath.Join(dir, s.name+".pid"))
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			return e, err
		}
		if err := e.start(s.name, sshd, "-D", "-e", "-f", cfg); err != nil {
			return e, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), knownHosts.Bytes(), 0o600); err != nil {
		return e, err
	}

	// Jumpgate: auth+proxy in one process, and a node that dials its tunnel.
	if e.proxy, err = freeAddr(); err != nil {
		return e, err
	}
	if e.auth, err = freeAddr(); err != nil {
		return e, err
	}
	if e.jgd, err = freeAddr(); err != nil {
		return e, err
	}
	if e.diagProxy, err = freeAddr(); err != nil {
		return e, err
	}
	for _, a := range []*string{&e.diagNode, &e.diagNode2, &e.diagNode3} {
		if *a, err = freeAddr(); err != nil {
			return e, err
		}
	}
	jgAuthDir := filepath.Join(dir, "jg-auth")
	var gossipA, peerA, gossipB, peerB string
	for _, a := range []*string{&e.proxyB, &gossipA, &peerA, &gossipB, &peerB} {
		if *a, err = freeAddr(); err != nil {
			return e, err
		}
	}
	if err := e.start("jumpgate-auth-proxy", filepath.Join(bin, "jumpgate"), "start", "--roles=auth,proxy", "--cluster-name=bench", "--proxy-id=proxy1",
		"--data-dir="+jgAuthDir, "--auth-listen="+e.auth, "--proxy-listen="+e.proxy, "--log-level=warn",
		"--gossip-listen="+gossipA, "--peer-listen="+peerA, "--region=a",
		"--diag-listen="+e.diagProxy, "--diag-pprof"); err != nil {
		return e, err
	}
	admin := []string{"JUMPGATE_ADMIN_IDENTITY=" + filepath.Join(jgAuthDir, "admin"), "JUMPGATE_AUTH=" + e.auth}
	if err := waitFor(ctx, "the auth server", 30*time.Second, func() error { _, err := e.cmd(admin, "", "jgctl", "status"); return err }); err != nil {
		return e, err
	}
	roles := filepath.Join(dir, "roles.yaml")
	if err := os.WriteFile(roles, []byte(fmt.Sprintf("kind: role\nname: bench\nallow:\n  logins: [%s]\n  node_labels: {\"*\": \"*\"}\n", e.login)), 0o600); err != nil {
		return e, err
	}
	if _, err := e.cmd(admin, "", "jgctl", "roles", "apply", "-f", roles); err != nil {
		return e, err
	}
	if _, err := e.cmd(admin, "bench-password\n", "jgctl", "users", "add", "bench", "--roles=bench", "--password-stdin"); err != nil {
		return e, err
	}
	out, err := e.cmd(admin, "", "jgctl", "tokens", "add", "--type=node", "--json")
	if err != nil {
		return e, err
	}
	var tok struct {
		Token string `json:"token"`
		CAPin string `json:"ca_pin"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		return e, fmt.Errorf("jgctl tokens add: %v: %s", err, out)
	}
	ptok, err := e.cmd(admin, "", "jgctl", "tokens", "add", "--type=proxy", "--json")
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(ptok), &tok); err != nil {
		return e, fmt.Errorf("jgctl tokens add: %v: %s", err, ptok)
	}
	if err := e.start("jumpgate-proxy-b", filepath.Join(bin, "jumpgate"), "start", "--roles=proxy", "--proxy-id=proxy2", "--region=b",
		"--data-dir="+filepath.Join(dir, "jg-proxy-b"), "--auth="+e.auth, "--token="+tok.Token, "--ca-pin="+tok.CAPin,
		"--proxy-listen="+e.proxyB, "--gossip-listen="+gossipB, "--peer-listen="+peerB, "--seeds="+gossipA, "--log-level=warn"); err != nil {
		return e, err
	}
	if out, err = e.cmd(admin, "", "jgctl", "tokens", "add", "--type=node", "--json"); err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		return e, fmt.Errorf("jgctl tokens add: %v: %s", err, out)
	}
	if err := e.start("jumpgate-node2", filepath.Join(bin, "jumpgate"), "start", "--roles=node", "--node-name=node2", "--labels=env=bench",
		"--data-dir="+filepath.Join(dir, "jg-node2"), "--proxy="+e.proxyB, "--connection-count=1", "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--log-level=warn", "--diag-listen="+e.diagNode2); err != nil {
		return e, err
	}
	if out, err = e.cmd(admin, "", "jgctl", "tokens", "add", "--type=node", "--json"); err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		return e, fmt.Errorf("jgctl tokens add: %v: %s", err, out)
	}
	// node3: like node1, but its tunnel is TLS over TCP (yamux) instead of QUIC.
	if err := e.start("jumpgate-node3", filepath.Join(bin, "jumpgate"), "start", "--roles=node", "--node-name=node3", "--labels=env=bench",
		"--data-dir="+filepath.Join(dir, "jg-node3"), "--proxy="+e.proxy, "--connection-count=1", "--tunnel-transport=tcp",
		"--token="+tok.Token, "--ca-pin="+tok.CAPin, "--log-level=warn", "--diag-listen="+e.diagNode3); err != nil {
		return e, err
	}
	if out, err = e.cmd(admin, "", "jgctl", "tokens", "add", "--type=node", "--json"); err != nil {
		return e, err
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		return e, fmt.Errorf("jgctl tokens add: %v: %s", err, out)
	}
	if err := e.start("jumpgate-node", filepath.Join(bin, "jumpgate"), "start", "--roles=node", "--node-name=node1", "--labels=env=bench", "--connection-count=1",
		"--data-dir="+filepath.Join(dir, "jg-node"), "--proxy="+e.proxy, "--token="+tok.Token, "--ca-pin="+tok.CAPin,
		"--bench-ssh-listen="+e.jgd, "--log-level=warn", "--diag-listen="+e.diagNode, "--diag-pprof"); err != nil {
		return e, err
	}
	user := []string{"JUMPGATE_HOME=" + e.jgHome}
	if _, err := e.cmd(user, "bench-password\n", "jg", "login", "--proxy="+e.proxy, "--user=bench", "--password-stdin", "--ca-pin="+tok.CAPin); err != nil {
		return e, err
	}

	_, dport, _ := net.SplitHostPort(e.direct)
	_, bport, _ := net.SplitHostPort(e.bastion)
	jh, jport, _ := net.SplitHostPort(e.jgd)
	e.sshConfig = filepath.Join(dir, "ssh_config")
	self, err := os.Executable()
	if err != nil {
		return e, err
	}
	jgIdentity := fmt.Sprintf(`    IdentityFile %[1]s/key
    CertificateFile %[1]s/key-cert.pub
    UserKnownHostsFile %[1]s/known_hosts
`, e.jgHome)
	conf := fmt.Sprintf(`# Written by the Jumpgate benchmark suite. Every path uses the same client and cipher.
Host direct
    HostName 127.0.0.1
    Port %[1]s
    HostKeyAlias sshd-target
    IdentityFile %[2]s/id_client
Host directpipe
    HostName 127.0.0.1
    Port %[1]s
    HostKeyAlias sshd-target
    IdentityFile %[2]s/id_client
    ProxyCommand %[9]s pipe %%h:%%p
Host bastion
    HostName 127.0.0.1
    Port %[3]s
    HostKeyAlias sshd-bastion
    IdentityFile %[2]s/id_client
Host proxyjump
    HostName 127.0.0.1
    Port %[1]s
    HostKeyAlias sshd-target
    IdentityFile %[2]s/id_client
    ProxyJump bastion
Host jumpgate
    HostName node1
    ProxyCommand %[4]s/jg proxy ssh %%r@%%h:%%p
%[5]sHost jumpgatenoresume
    HostName node1
    ProxyCommand env JG_RESUME=off %[4]s/jg proxy ssh %%r@%%h:%%p
%[5]sHost jumpgatetcp
    HostName node3
    ProxyCommand %[4]s/jg proxy ssh %%r@%%h:%%p
%[5]sHost jumpgate2
    HostName node2
    ProxyCommand %[4]s/jg proxy ssh %%r@%%h:%%p
%[5]sHost jgnode
    HostName %[6]s
    Port %[7]s
    HostKeyAlias node1
%[5]sHost *
    User %[8]s
    Ciphers aes128-gcm@openssh.com
    Compression no
    BatchMode yes
    IdentitiesOnly yes
    StrictHostKeyChecking yes
    UserKnownHostsFile %[2]s/known_hosts
    ControlMaster no
    ControlPath none
    LogLevel ERROR
    ConnectTimeout 10
`, dport, dir, bport, bin, jgIdentity, jh, jport, e.login, self)
	if err := os.WriteFile(e.sshConfig, []byte(conf), 0o600); err != nil {
		return e, err
	}
	for _, pa := range paths {
		if err := waitFor(ctx, pa.Title, 60*time.Second, func() error { _, err := e.connect(ctx, pa.Host); return err }); err != nil {
			return e, err
		}
	}
	return e, nil
}

// cpuSeconds is the user+system CPU time a started process has used so far.
func (e *env) cpuSeconds(name string) float64 {
	c := e.named[name]
	if c == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start at ")".
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st float64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

func findSSHD() (string, error) {
	if p, err := exec.LookPath("sshd"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("sshd not found: install openssh-server (make deps)")
}

func (e *env) keygen(name string) error {
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "jumpgate-bench", "-f", filepath.Join(e.dir, name)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ssh-keygen: %v: %s", err, out)
	}
	return nil
}

// start runs a long-lived process logging to <dir>/<name>.log.
func (e *env) start(name, exe string, args ...string) error {
	lf, err := os.Create(filepath.Join(e.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	lf.Close()
	e.procs = append(e.procs, cmd)
	e.named[name] = cmd
	return nil
}

// cmd runs one of the Jumpgate CLIs to completion.
func (e *env) cmd(extraEnv []string, stdin, name string, args ...string) (string, error) {
	c := exec.Command(filepath.Join(e.bin, name), args...)
	c.Env = append(os.Environ(), extraEnv...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (e *env) close(keep bool) {
	e.stop()
	if keep {
		log.Printf("kept %s", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}

// stop ends every process the environment started (SIGTERM, then SIGKILL
// after 10 s) and keeps its directory. Calling it again does nothing.
func (e *env) stop() {
	for _, c := range e.procs {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	for _, c := range e.procs {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }() //nolint:errcheck
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	e.procs = nil
}

// freeAddr returns a loopback address whose TCP and UDP ports are both free
// (the proxy listens on both).
func freeAddr() (string, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("no free loopback port")
}

func waitFor(ctx context.Context, what string, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s waiting for %s: %v", errTimeout, timeout, what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
