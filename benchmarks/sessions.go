package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sessionResult is one concurrent-sessions run: N SSH connections held open
// at once through one proxy to one node, and what they cost the processes.
type sessionResult struct {
	N                       int
	Open                    time.Duration // to open all N
	ProxyKiB, NodeKiB       float64       // live memory (heap + stacks) per session
	ProxyBefore, ProxyAfter int64         // KiB
	NodeBefore, NodeAfter   int64
}

// jgDialer speaks Jumpgate's dial protocol (ALPN jumpgate-dial/1) with the
// identity `jg login` saved, so that the suite can hold many sessions
// without a `jg` process each.
type jgDialer struct {
	proxy string
	tls   *tls.Config
	ssh   *ssh.ClientConfig
}

func newJGDialer(home, proxy, login string) (*jgDialer, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(home, "tls.crt"), filepath.Join(home, "tls.key"))
	if err != nil {
		return nil, err
	}
	cas, err := os.ReadFile(filepath.Join(home, "cas.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cas)
	keyPEM, err := os.ReadFile(filepath.Join(home, "key"))
	if err != nil {
		return nil, err
	}
	key, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	certLine, err := os.ReadFile(filepath.Join(home, "key-cert.pub"))
	if err != nil {
		return nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(certLine)
	if err != nil {
		return nil, err
	}
	sshCert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("%s/key-cert.pub is not a certificate", home)
	}
	signer, err := ssh.NewCertSigner(sshCert, key)
	if err != nil {
		return nil, err
	}
	hostCheck, err := knownhosts.New(filepath.Join(home, "known_hosts"))
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(proxy)
	if err != nil {
		return nil, err
	}
	return &jgDialer{
		proxy: proxy,
		tls:   &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, NextProtos: []string{"jumpgate-dial/1"}, ServerName: host, MinVersion: tls.VersionTLS13},
		ssh:   &ssh.ClientConfig{User: login, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hostCheck, Timeout: 30 * time.Second},
	}, nil
}

// dial opens an SSH connection to node through the proxy.
func (d *jgDialer) dial(ctx context.Context, node string) (*ssh.Client, error) {
	td := &tls.Dialer{Config: d.tls}
	c, err := td.DialContext(ctx, "tcp", d.proxy)
	if err != nil {
		return nil, err
	}
	req, _ := json.Marshal(map[string]any{"v": 1, "node": node, "login": d.ssh.User})
	if _, err := c.Write(append(req, '\n')); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dial response: %w", err)
	}
	var resp struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(line), &resp); err != nil || !resp.OK {
		c.Close()
		return nil, fmt.Errorf("proxy refused the dial: %s", strings.TrimSpace(line))
	}
	sc, chans, reqs, err := ssh.NewClientConn(&bufConn{Conn: c, r: br}, node+":22", d.ssh)
	if err != nil {
		c.Close()
		return nil, err
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// liveKiB is the memory a Jumpgate process holds for live objects: Go heap
// in use plus goroutine stacks, read from its /metrics right after forcing a
// garbage collection through /debug/pprof/heap?gc=1 (the suite starts the
// processes with --diag-pprof). Unlike RSS it does not count memory the
// runtime has not yet returned to the OS.
func liveKiB(diag string) (int64, error) {
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + diag + "/debug/pprof/heap?gc=1")
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	resp, err = hc.Get("http://" + diag + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var total float64
	for _, l := range strings.Split(string(b), "\n") {
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes "} {
			if v, ok := strings.CutPrefix(l, name); ok {
				var f float64
				fmt.Sscan(v, &f)
				total += f
			}
		}
	}
	if total == 0 {
		return 0, fmt.Errorf("no Go memory metrics at %s/metrics", diag)
	}
	return int64(total / 1024), nil
}

// concurrentSessions opens n SSH connections to node1 through the proxy at
// once (64 dialing in parallel), each with an open session channel, holds
// them, and measures the proxy's and the node's resident memory per
// session.
func (e *env) concurrentSessions(ctx context.Context, n int) (sessionResult, error) {
	d, err := newJGDialer(e.jgHome, e.proxy, e.login)
	if err != nil {
		return sessionResult{}, err
	}
	var r sessionResult
	r.N = n
	if r.ProxyBefore, err = liveKiB(e.diagProxy); err != nil {
		return r, err
	}
	if r.NodeBefore, err = liveKiB(e.diagNode); err != nil {
		return r, err
	}
	clients := make([]*ssh.Client, n)
	sessions := make([]*ssh.Session, n)
	defer func() {
		for i := range clients {
			if sessions[i] != nil {
				sessions[i].Close()
			}
			if clients[i] != nil {
				clients[i].Close()
			}
		}
	}()
	start := time.Now()
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := d.dial(ctx, "node1")
			if err == nil {
				clients[i] = c
				sessions[i], err = c.NewSession()
			}
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("session %d: %w", i, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.Open = time.Since(start)
	if firstErr != nil {
		return r, firstErr
	}
	if r.ProxyAfter, err = liveKiB(e.diagProxy); err != nil {
		return r, err
	}
	if r.NodeAfter, err = liveKiB(e.diagNode); err != nil {
		return r, err
	}
	r.ProxyKiB = float64(r.ProxyAfter-r.ProxyBefore) / float64(n)
	r.NodeKiB = float64(r.NodeAfter-r.NodeBefore) / float64(n)
	return r, nil
}
