package sshd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

const (
	testCluster = "test-cluster"
	testNode    = "node1"
	waitLimit   = 15 * time.Second // upper bound for anything a test waits for
)

// testEnv is a Server on a loopback listener with its CAs.
type testEnv struct {
	t        *testing.T
	userCA   ssh.Signer
	hostCA   ssh.Signer
	srv      *Server
	ln       net.Listener
	addr     string
	login    string // the current OS user: tests pass as root or not
	audit    *recorder
	reg      *prometheus.Registry
	serveErr chan error
}

type envOption func(*Config)

// newTestEnv starts a server. Authorize allows everyone, except users named
// "mallory" (an AccessError) and "broken" (another error).
func newTestEnv(t *testing.T, opts ...envOption) *testEnv {
	t.Helper()
	e := startTestEnv(t, opts...)
	e.serve()
	return e
}

// startTestEnv builds the server without serving yet.
func startTestEnv(t *testing.T, opts ...envOption) *testEnv {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatalf("current user: %v", err)
	}
	e := &testEnv{
		t:        t,
		userCA:   newSigner(t),
		hostCA:   newSigner(t),
		login:    u.Username,
		audit:    newRecorder(),
		reg:      prometheus.NewRegistry(),
		serveErr: make(chan error, 1),
	}
	hostKey := newSigner(t)
	hostCert := &ssh.Certificate{
		Key:             hostKey.PublicKey(),
		CertType:        ssh.HostCert,
		KeyId:           testNode,
		ValidPrincipals: []string{testNode, "127.0.0.1", "localhost"},
		ValidAfter:      uint64(time.Now().Add(-time.Minute).Unix()),
		ValidBefore:     uint64(time.Now().Add(time.Hour).Unix()),
	}
	if err := hostCert.SignCert(rand.Reader, e.hostCA); err != nil {
		t.Fatalf("sign host cert: %v", err)
	}
	hostSigner, err := ssh.NewCertSigner(hostCert, hostKey)
	if err != nil {
		t.Fatalf("host cert signer: %v", err)
	}
	cfg := Config{
		NodeID:      testNode,
		ClusterName: testCluster,
		HostSigner:  func() (ssh.Signer, error) { return hostSigner, nil },
		UserCAs:     func() []ssh.PublicKey { return []ssh.PublicKey{e.userCA.PublicKey()} },
		Authorize: func(id identity.Identity, login string) error {
			switch id.Name {
			case "mallory":
				return &identity.AccessError{Reason: fmt.Sprintf("none of your roles allow login %s on node %s", login, testNode)}
			case "broken":
				return errors.New("role cache not loaded")
			}
			return nil
		},
		Audit:   e.audit,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics: e.reg,
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	e.ln = ln
	e.addr = ln.Addr().String()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

func (e *testEnv) serve() {
	go func() { e.serveErr <- e.srv.Serve(e.ln) }()
	e.t.Cleanup(func() {
		e.srv.Close()
		select {
		case err := <-e.serveErr:
			if err != nil {
				e.t.Errorf("Serve returned %v, want nil after Close", err)
			}
		case <-time.After(waitLimit):
			e.t.Errorf("Serve did not return after Close")
		}
	})
}

// testWriter sends logs to t.Log, and drops them once the test is over
// (goroutines may outlive it by a moment).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { recover() }() // t.Log after the test ends panics
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("signer: %v", err)
	}
	return s
}

// userKey is a user's key pair and certificate.
type userKey struct {
	priv   ed25519.PrivateKey
	cert   *ssh.Certificate
	signer ssh.Signer // certificate signer
}

// certFor issues a user certificate for name with the env's login as
// principal, valid for an hour; mod may change it before e.userCA (or
// another CA, if mod returns one) signs it.
func (e *testEnv) certFor(name string, mod func(*ssh.Certificate) ssh.Signer) userKey {
	e.t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		e.t.Fatalf("generate key: %v", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		e.t.Fatal(err)
	}
	id := identity.Identity{Kind: identity.KindUser, Name: name, Cluster: testCluster, Roles: []string{"dev"}}
	cert := &ssh.Certificate{
		Key:             sshPub,
		CertType:        ssh.UserCert,
		KeyId:           name,
		ValidPrincipals: []string{e.login},
		ValidAfter:      uint64(time.Now().Add(-time.Minute).Unix()),
		ValidBefore:     uint64(time.Now().Add(time.Hour).Unix()),
		Permissions:     ssh.Permissions{Extensions: id.SSHExtensions()},
	}
	ca := e.userCA
	if mod != nil {
		if other := mod(cert); other != nil {
			ca = other
		}
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		e.t.Fatalf("sign user cert: %v", err)
	}
	keySigner, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		e.t.Fatal(err)
	}
	signer, err := ssh.NewCertSigner(cert, keySigner)
	if err != nil {
		e.t.Fatal(err)
	}
	return userKey{priv: priv, cert: cert, signer: signer}
}

// dial connects with signer as login and returns the client or the error,
// and every banner the server sent.
func (e *testEnv) dial(signer ssh.Signer, login string) (*ssh.Client, string, error) {
	e.t.Helper()
	var mu sync.Mutex
	var banner strings.Builder
	hostCA := e.hostCA.PublicKey().Marshal()
	checker := &ssh.CertChecker{IsHostAuthority: func(k ssh.PublicKey, _ string) bool { return bytes.Equal(k.Marshal(), hostCA) }}
	cfg := &ssh.ClientConfig{
		User:            login,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: checker.CheckHostKey,
		BannerCallback: func(msg string) error {
			mu.Lock()
			defer mu.Unlock()
			banner.WriteString(msg)
			return nil
		},
		Timeout: waitLimit,
	}
	c, err := ssh.Dial("tcp", e.addr, cfg)
	mu.Lock()
	defer mu.Unlock()
	return c, banner.String(), err
}

// client connects as alice with the env's login, and fails the test if it
// cannot.
func (e *testEnv) client() *ssh.Client {
	e.t.Helper()
	c, banner, err := e.dial(e.certFor("alice", nil).signer, e.login)
	if err != nil {
		e.t.Fatalf("dial: %v (banner %q)", err, banner)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// recorder is an audit.Sink that keeps events and lets tests wait for them.
type recorder struct {
	mu      sync.Mutex // guards following
	events  []audit.Event
	changed chan struct{} // closed and replaced on every event
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Emit(e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
}

// wait returns the first event of type typ that match accepts, waiting for
// it up to waitLimit.
func (r *recorder) wait(t *testing.T, typ string, match func(audit.Event) bool) audit.Event {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for _, e := range r.events {
			if e.Type == typ && (match == nil || match(e)) {
				r.mu.Unlock()
				return e
			}
		}
		changed := r.changed
		n := len(r.events)
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s audit event after %v; %d events: %+v", typ, waitLimit, n, r.all())
		}
	}
}

func (r *recorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

func (r *recorder) count(typ string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// output collects a reader's bytes in the background and lets a test wait
// for a substring.
type output struct {
	mu      sync.Mutex // guards following
	buf     bytes.Buffer
	err     error
	changed chan struct{}
	done    chan struct{}
}

func collect(r io.Reader) *output {
	o := &output{changed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(o.done)
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			o.mu.Lock()
			o.buf.Write(b[:n])
			if err != nil {
				o.err = err
			}
			close(o.changed)
			o.changed = make(chan struct{})
			o.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return o
}

// waitFor waits until the output contains s and returns the output so far.
func (o *output) waitFor(t *testing.T, s string) string {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		text, err, changed := o.buf.String(), o.err, o.changed
		o.mu.Unlock()
		if strings.Contains(text, s) {
			return text
		}
		if err != nil {
			t.Fatalf("output ended (%v) without %q: %q", err, s, text)
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %q in output after %v: %q", s, waitLimit, text)
		}
	}
}

// waitForMatch waits until the output matches re and returns the match.
func (o *output) waitForMatch(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		text, err, changed := o.buf.String(), o.err, o.changed
		o.mu.Unlock()
		if m := re.FindStringSubmatch(text); m != nil {
			return m
		}
		if err != nil {
			t.Fatalf("output ended (%v) without a match for %s: %q", err, re, text)
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no match for %s in output after %v: %q", re, waitLimit, text)
		}
	}
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitUntil polls cond until it holds or waitLimit passes. It is for
// conditions nothing signals, such as a goroutine count.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
	}
}

// metricValue reads a counter or gauge from the registry; labels are
// name=value pairs.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

// processGone reports whether pid has exited (a zombie counts: its
// parent, if not this test's server, may never reap it).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}
