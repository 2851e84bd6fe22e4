package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type authServerInfo struct {
	ID           string `json:"id"`
	Role         string `json:"role"`
	Region       string `json:"region"`
	AppliedIndex uint64 `json:"applied_index"`
	KeysTrusted  bool   `json:"keys_trusted"`
	ServerCerts  bool   `json:"signs_server_certs"`
	Error        string `json:"error"`
}

// authServers runs jgctl auth ls against addrs (comma-separated).
func (c *cluster) authServers(addrs string) ([]authServerInfo, bool) {
	out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + addrs}, "jgctl", "auth", "ls", "--json")
	if code != 0 {
		return nil, false
	}
	var ss []authServerInfo
	if err := json.Unmarshal([]byte(out), &ss); err != nil {
		return nil, false
	}
	return ss, true
}

// TestAuthHA runs three voting auth servers and one non-voter as real
// processes, with a proxy and a node that know all of them. While admins
// write through every server and a user's session streams, the leader is
// killed with SIGKILL: no acknowledged write may be lost, a new leader
// must serve within seconds, the session must go on, and logins and new
// sessions must work through the survivors.
func TestAuthHA(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := bareCluster(t)
	type server struct{ id, api, raft, region string }
	servers := []server{
		{"a1", freeAddr(t), freeAddr(t), "us"},
		{"a2", freeAddr(t), freeAddr(t), "us"},
		{"a3", freeAddr(t), freeAddr(t), "us"},
		{"n1", freeAddr(t), freeAddr(t), "eu"},
	}
	var all []string
	for _, s := range servers {
		all = append(all, s.api)
	}
	allAuth := strings.Join(all, ",")
	c.auth = servers[0].api
	c.admin = filepath.Join(c.dir, "a1", "admin")
	args := func(s server) []string {
		return []string{"--roles=auth", "--cluster-name=ha", "--auth-id=" + s.id, "--auth-listen=" + s.api, "--raft-listen=" + s.raft,
			"--region=" + s.region, "--data-dir=" + filepath.Join(c.dir, s.id)}
	}
	c.start("a1", args(servers[0])...)
	waitFor(t, "auth server a1", 30*time.Second, func() bool {
		out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0 && strings.Contains(out, "ha")
	})
	for _, s := range servers[1:] {
		add := []string{"auth", "add", s.id, "--json"}
		if s.region == "us" {
			add = append(add, "--voter")
		}
		var tok struct {
			Token string `json:"token"`
			CAPin string `json:"ca_pin"`
		}
		if err := json.Unmarshal([]byte(c.jgctl(add...)), &tok); err != nil {
			t.Fatal(err)
		}
		var env []string
		if s.id == "n1" {
			// The non-voter renews its own certificate, which the cluster
			// issued at join, from a server that signs server certificates.
			env = []string{"JUMPGATE_RENEW_AFTER=4s"}
		}
		c.startEnv(s.id, env, append(args(s), "--auth-join="+c.auth, "--token="+tok.Token, "--ca-pin="+tok.CAPin)...)
	}
	waitFor(t, "3 voters and a non-voter in jgctl auth ls", 60*time.Second, func() bool {
		ss, ok := c.authServers(c.auth)
		if !ok || len(ss) != 4 {
			return false
		}
		roles := map[string]string{}
		for _, s := range ss {
			if s.Error != "" || !s.KeysTrusted {
				return false
			}
			roles[s.ID] = s.Role
		}
		return roles["a1"] == "leader" && roles["a2"] == "voter" && roles["a3"] == "voter" && roles["n1"] == "non-voter"
	})
	out := c.jgctl("auth", "ls")
	t.Logf("jgctl auth ls:\n%s", out)
	n1cert := filepath.Join(c.dir, "n1", "auth", "identity", "tls.crt")
	first, _ := os.ReadFile(n1cert)
	waitFor(t, "n1 renewing its certificate", 30*time.Second, func() bool {
		now, _ := os.ReadFile(n1cert)
		return len(now) > 0 && !bytes.Equal(now, first)
	})
	waitFor(t, "n1 answering with its renewed certificate", 10*time.Second, func() bool {
		ss, ok := c.authServers(c.auth)
		for _, s := range ss {
			if s.ID == "n1" {
				return ok && s.Error == ""
			}
		}
		return false
	})
	if !strings.Contains(out, "non-voter") || !strings.Contains(out, "eu") {
		t.Fatalf("jgctl auth ls table:\n%s", out)
	}

	// A proxy that knows every auth server, a node behind it, a user.
	c.proxy = freeAddr(t)
	ptok := c.proxyToken("p1")
	c.start("p1", "--roles=proxy", "--proxy-id=p1", "--proxy-listen="+c.proxy, "--auth="+allAuth, "--data-dir="+filepath.Join(c.dir, "p1"),
		"--token="+ptok.Token, "--ca-pin="+ptok.CAPin)
	ntok := c.token()
	c.start("node1", "--roles=node", "--node-name=node1", "--data-dir="+filepath.Join(c.dir, "node1"), "--proxy="+c.proxy, "--token="+ntok.Token, "--ca-pin="+ntok.CAPin)
	c.waitOnline("node1")
	// Every auth server knows where node1's tunnel is, not only the one
	// p1 reports to: presence reports are shared.
	waitFor(t, "node1 online as seen by the non-voter", 30*time.Second, func() bool {
		out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + servers[3].api}, "jgctl", "nodes", "ls", "--json")
		return code == 0 && strings.Contains(out, `"online": true`)
	})
	rf := filepath.Join(c.dir, "roles.yaml")
	os.WriteFile(rf, []byte(fmt.Sprintf("kind: role\nname: dev\nallow:\n  logins: [%s]\n  node_labels: {\"*\": \"*\"}\n", c.userLogin)), 0o600)
	c.jgctl("roles", "apply", "-f", rf)
	if out, code := c.run("alice-password\n", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "users", "add", "alice", "--roles=dev", "--password-stdin"); code != 0 {
		t.Fatalf("add alice: %s", out)
	}
	alice := c.login("alice", "alice-password")

	// A session that streams for the whole failover.
	var sessOut bytes.Buffer
	sess := exec.Command(filepath.Join(c.bin, "jg"), "ssh", "node1", "--", "for i in $(seq 1 100); do echo tick $i; sleep 0.1; done")
	sess.Env = append(os.Environ(), alice...)
	sess.Stdout, sess.Stderr = &sessOut, &sessOut
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}

	// Writers: each write is a role, applied through any auth server.
	var (
		mu    sync.Mutex
		acked []string
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%d", w, i)
				f := filepath.Join(c.dir, name+".yaml")
				os.WriteFile(f, []byte("kind: role\nname: "+name+"\nallow:\n  logins: [x]\n"), 0o600)
				// Each writer starts at a different server and fails over.
				order := slices.Concat(all[w%len(all):], all[:w%len(all)])
				_, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + strings.Join(order, ",")}, "jgctl", "roles", "apply", "-f", f)
				if code == 0 {
					mu.Lock()
					acked = append(acked, name)
					mu.Unlock()
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitFor(t, "writes before the kill", 30*time.Second, func() bool { return count() >= 10 })

	ss, _ := c.authServers(allAuth)
	leader := ""
	for _, s := range ss {
		if s.Role == "leader" {
			leader = s.ID
		}
	}
	if leader == "" {
		t.Fatalf("no leader: %+v", ss)
	}
	killed := time.Now()
	c.procs[leader].Process.Kill()
	before := count()
	var survivors []string
	for _, s := range servers {
		if s.id != leader {
			survivors = append(survivors, s.api)
		}
	}
	newLeader := ""
	waitFor(t, "a new leader", 30*time.Second, func() bool {
		ss, ok := c.authServers(strings.Join(survivors, ","))
		if !ok {
			return false
		}
		for _, s := range ss {
			if s.Role == "leader" && s.ID != leader && s.Error == "" {
				newLeader = s.ID
				return true
			}
		}
		return false
	})
	elected := time.Since(killed)
	waitFor(t, "writes after the new leader", 30*time.Second, func() bool { return count() >= before+10 })
	close(stop)
	wg.Wait()
	t.Logf("killed leader %s; %s led after %v (measured through jgctl, so an upper bound); %d writes acknowledged, %d after the kill", leader, newLeader, elected.Round(time.Millisecond), count(), count()-before)
	if elected > 10*time.Second {
		t.Errorf("a new leader took %v", elected)
	}

	// Every acknowledged write is on every survivor, the non-voter too.
	mu.Lock()
	want := slices.Clone(acked)
	mu.Unlock()
	for _, addr := range survivors {
		waitFor(t, "all acknowledged writes on "+addr, 20*time.Second, func() bool {
			out, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + addr}, "jgctl", "roles", "ls", "--json")
			if code != 0 {
				return false
			}
			var roles []struct {
				Name string `json:"name"`
			}
			json.Unmarshal([]byte(out), &roles)
			have := map[string]bool{}
			for _, r := range roles {
				have[r.Name] = true
			}
			for _, n := range want {
				if !have[n] {
					return false
				}
			}
			return true
		})
	}

	// The session streamed through the failover.
	if err := sess.Wait(); err != nil || !strings.Contains(sessOut.String(), "tick 100") {
		t.Fatalf("session across the leader's death: %v\n%s", err, sessOut.String())
	}
	// Logins (signed by a surviving server's own keys) and new sessions
	// work through the survivors.
	c.auth = strings.Join(survivors, ",")
	alice = c.login("alice", "alice-password")
	if out, code := c.run("", alice, "jg", "ssh", "node1", "--", "echo", "after-failover"); code != 0 || !strings.Contains(out, "after-failover") {
		t.Fatalf("session after the failover: exit %d\n%s", code, out)
	}
}
