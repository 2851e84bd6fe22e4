package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
	"jumpgate.dev/jumpgate/mesh/ingress"
	"jumpgate.dev/jumpgate/tunnel/resume"
)

// defaultResumeWindow is how long jg tries to resume a session whose path
// broke before it gives up ($JG_RESUME_WINDOW or --resume-window). The
// node keeps a detached session longer (node.resume_window, 5 minutes).
const defaultResumeWindow = 2 * time.Minute

// avoidFor is how long a proxy that failed or asked the client to move is
// tried only after every other one.
const avoidFor = 30 * time.Second

// offlineFor is how long proxies may answer that they cannot reach the
// node before jg stops trying to resume: its agent re-homes within seconds
// when a proxy dies, so a node unreachable this long has died or
// restarted, and its sessions with it.
const offlineFor = 30 * time.Second

// dialProxy asks the proxy at addr for a byte stream to node's SSH server.
// resume says the client runs the resumable stream under SSH (dial
// protocol 2); a proxy too old for version 2 is asked again in version 1.
func dialProxy(ctx context.Context, id *creds.Identity, addr, node, login string, resume bool, mfa string) (net.Conn, *ingress.DialResponse, error) {
	c, resp, err := dialProxyVersion(ctx, id, addr, node, login, resume, mfa, ingress.DialVersion)
	var de *ingress.DialError
	// A proxy of dial protocol 1 answers a version 2 request with
	// "version", or, for the "resume" field it does not know, with
	// "bad_request": ask again in version 1 (the resumable stream still
	// works through it; it only cannot move the client early when it
	// drains).
	if errors.As(err, &de) && (de.Code == ingress.CodeVersion || de.Code == ingress.CodeBadRequest) {
		return dialProxyVersion(ctx, id, addr, node, login, false, mfa, 1)
	}
	return c, resp, err
}

func dialProxyVersion(ctx context.Context, id *creds.Identity, addr, node, login string, resume bool, mfa string, v int) (net.Conn, *ingress.DialResponse, error) {
	start := time.Now()
	tcfg := authapi.ClientTLS(authapi.TrustConfig{RootCAs: id.RootCAs, Kinds: []identity.Kind{identity.KindProxy}}, id.GetClientCertificate, ingress.ALPNDial)
	d := &tls.Dialer{NetDialer: netDialer(10 * time.Second), Config: tcfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to proxy %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
	if tc.ConnectionState().NegotiatedProtocol != ingress.ALPNDial {
		c.Close()
		return nil, nil, fmt.Errorf("proxy %s does not speak %s: is it a Jumpgate proxy of a compatible version?", addr, ingress.ALPNDial)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) }) //nolint:errcheck
	defer stop()
	if err := ingress.WriteLine(c, ingress.DialRequest{V: v, Node: node, Login: login, Resume: resume && v >= 2, MFA: mfa}); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("proxy %s: %w", addr, err)
	}
	br := bufio.NewReader(c)
	var resp ingress.DialResponse
	if err := ingress.ReadLine(br, &resp); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("proxy %s: %w", addr, err)
	}
	if !resp.OK {
		c.Close()
		debugf("proxy %s refused the dial to %s in %v: %s: %s", addr, node, time.Since(start).Round(time.Millisecond), resp.Code, resp.Error)
		return nil, &resp, &ingress.DialError{Code: resp.Code, Message: resp.Error}
	}
	debugf("connected to %s via proxy %s (path %s) in %v", resp.Node, addr, resp.Path, time.Since(start).Round(time.Millisecond))
	return &bufConn{Conn: c, r: br}, &resp, nil
}

// finalDial reports whether a refused dial cannot succeed through any other
// proxy either: access denied (a lock, a role change) or an unknown node.
func finalDial(err error) bool {
	var de *ingress.DialError
	return errors.As(err, &de) && (de.Code == ingress.CodeDenied || de.Code == ingress.CodeUnknown || de.Code == ingress.CodeBadRequest)
}

// paths picks the proxy for each transport of a resumable session: the
// home proxy first; after a failure or a move, the best other proxy that
// discovery offers, then the rest. It remembers the proxies that failed.
type paths struct {
	id         *creds.Identity
	node       string
	login      string
	resume     bool
	mfa        string     // per-session MFA certificate for the node (jg proxy ssh), or ""
	mu         sync.Mutex // guards the following
	current    string
	known      []string // proxy addresses, best first, from the last discovery
	avoidUntil map[string]time.Time
	// drained: proxies avoided because they were draining, not because
	// they failed; discovery showing one active again (restarted after an
	// upgrade) lifts that.
	drained map[string]bool
	offline time.Time // when proxies first answered that they cannot reach the node; zero while they can
}

func newPaths(id *creds.Identity, node, login string) *paths {
	known := []string{id.Meta.Proxy}
	if h, err := loadHome(); err == nil && h.Cluster == id.Meta.Cluster {
		for _, a := range append(h.Proxies, h.Entry) {
			if a != "" && !slices.Contains(known, a) {
				known = append(known, a)
			}
		}
	}
	return &paths{id: id, node: node, login: login, resume: true, current: id.Meta.Proxy, known: known, avoidUntil: map[string]time.Time{}, drained: map[string]bool{}}
}

// dial opens a transport for attempt a of resume.Client.
func (p *paths) dial(ctx context.Context, a resume.Attempt) (net.Conn, error) {
	if a.N == 0 {
		return p.elsewhere(ctx) // the home proxy first
	}
	p.mu.Lock()
	if p.current != "" && !a.Moved {
		// The path failed (reset, timeout): the proxy may be dead. A
		// clean end (Moved) comes from a proxy that drains, which
		// discovery then says, or from one whose path behind it (the
		// node's tunnel) moved: it is still the best way in.
		p.avoidUntil[p.current] = time.Now().Add(avoidFor)
		delete(p.drained, p.current)
	}
	p.mu.Unlock()
	debugf("path to %s lost (%v, moved %v); reconnecting (attempt %d)", p.node, a.Err, a.Moved, a.N)
	c, err := p.elsewhere(ctx)
	var de *ingress.DialError
	switch {
	case err == nil:
		p.offline = time.Time{}
	case finalDial(err):
		// No proxy will let this user reach the node now (a lock, a
		// role change): resuming cannot help.
		return nil, fmt.Errorf("%w: %v", resume.ErrRefused, err)
	case errors.As(err, &de):
		// Proxies answer but none reaches the node (offline, its tunnel
		// broken). While no proxy answers at all (the client's own
		// network is down), jg keeps trying for the whole window.
		if p.offline.IsZero() {
			p.offline = time.Now()
		} else if time.Since(p.offline) >= offlineFor {
			return nil, fmt.Errorf("%w: no proxy has reached node %s for %v (last: %v): it died or restarted, and the session with it", resume.ErrRefused, p.node, offlineFor, de)
		}
	}
	return c, err
}

// elsewhere finds a path: the home proxy first when it is not to be
// avoided (one TLS handshake; a draining home names a healthy proxy),
// then, after asking discovery, the best of the others, those to avoid
// last.
func (p *paths) elsewhere(ctx context.Context) (net.Conn, error) {
	var errs []error
	home := p.id.Meta.Proxy
	tried := map[string]bool{}
	if !p.avoided(home) {
		tried[home] = true
		c, err := p.try(ctx, home)
		if err == nil || finalDial(err) {
			return c, err
		}
		errs = append(errs, err)
	}
	p.refresh(ctx)
	p.mu.Lock()
	var order, later []string
	for _, addr := range append([]string{home}, p.known...) {
		if tried[addr] || slices.Contains(order, addr) || slices.Contains(later, addr) {
			continue
		}
		if time.Now().Before(p.avoidUntil[addr]) {
			later = append(later, addr)
		} else {
			order = append(order, addr)
		}
	}
	p.mu.Unlock()
	for _, addr := range append(order, later...) {
		if ctx.Err() != nil {
			break
		}
		c, err := p.try(ctx, addr)
		if err == nil || finalDial(err) {
			return c, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no proxy could reach node %s: %w", p.node, errors.Join(errs...))
}

func (p *paths) avoided(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Now().Before(p.avoidUntil[addr])
}

// try dials the node through the proxy at addr, or through the healthy
// proxy it names if it is draining.
func (p *paths) try(ctx context.Context, addr string) (net.Conn, error) {
	c, resp, err := dialProxy(ctx, p.id, addr, p.node, p.login, p.resume, p.mfa)
	if err != nil && resp != nil && resp.Code == ingress.CodeDraining {
		p.mu.Lock()
		p.avoidUntil[addr] = time.Now().Add(avoidFor)
		p.drained[addr] = true
		p.mu.Unlock()
		if resp.Redirect != "" {
			addr = resp.Redirect
			c, _, err = dialProxy(ctx, p.id, addr, p.node, p.login, p.resume, p.mfa)
		}
	}
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.current = addr
	p.mu.Unlock()
	return c, nil
}

// refresh asks discovery, through the first proxy that answers, for the
// proxies ranked for this client, healthy ones first.
func (p *paths) refresh(ctx context.Context) {
	p.mu.Lock()
	now := time.Now()
	var ask, later []string
	for _, addr := range p.known {
		if now.Before(p.avoidUntil[addr]) {
			later = append(later, addr)
		} else {
			ask = append(ask, addr)
		}
	}
	p.mu.Unlock()
	for _, addr := range append(ask, later...) {
		cl, err := authapi.NewClient(authapi.ClientConfig{Addr: addr, LocalAddr: bindAddr(), Timeout: 2 * time.Second,
			Trust: authapi.TrustConfig{RootCAs: p.id.RootCAs, Kinds: proxyKinds}})
		if err != nil {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		start := time.Now()
		d, err := cl.Discover(dctx)
		cancel()
		cl.Close()
		if err != nil || len(d.Proxies) == 0 {
			debugf("discovery through %s failed after %v: %v", addr, time.Since(start).Round(time.Millisecond), err)
			continue
		}
		debugf("discovery through %s answered in %v", addr, time.Since(start).Round(time.Millisecond))
		var active, draining []string
		for _, dp := range d.Proxies {
			if dp.State == "draining" {
				draining = append(draining, dp.PublicAddr)
			} else {
				active = append(active, dp.PublicAddr)
			}
		}
		p.mu.Lock()
		fresh := append(active, draining...)
		for _, a := range p.known {
			if !slices.Contains(fresh, a) {
				fresh = append(fresh, a) // not offered now (dead?); last resort
			}
		}
		p.known = fresh
		for _, dp := range d.Proxies {
			switch {
			case dp.State == "draining":
				p.avoidUntil[dp.PublicAddr] = time.Now().Add(avoidFor)
				p.drained[dp.PublicAddr] = true
			case p.drained[dp.PublicAddr] && dp.Health == "alive":
				// It drained and is back (an upgrade's restart): it
				// takes its place in the order again, and the home
				// proxy is tried first again.
				delete(p.avoidUntil, dp.PublicAddr)
				delete(p.drained, dp.PublicAddr)
			}
		}
		p.mu.Unlock()
		return
	}
}

// resumeWindow is $JG_RESUME_WINDOW, else the default.
func resumeWindow(flag time.Duration) (time.Duration, error) {
	if flag > 0 {
		return flag, nil
	}
	if v := os.Getenv("JG_RESUME_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("JG_RESUME_WINDOW=%q: want a positive duration such as 2m", v)
		}
		return d, nil
	}
	return defaultResumeWindow, nil
}

// openNode opens the byte stream that SSH runs over: the resumable stream
// through the home proxy (moving to another proxy when the path breaks),
// or, with JG_RESUME=off or an older node, a plain dial.
func openNode(ctx context.Context, id *creds.Identity, node, login string, window time.Duration, mfa string) (net.Conn, error) {
	p := newPaths(id, node, login)
	p.mfa = mfa
	if strings.EqualFold(os.Getenv("JG_RESUME"), "off") {
		p.resume = false
		c, _, err := dialProxy(ctx, id, p.current, node, login, false, mfa)
		return c, err
	}
	var log *slog.Logger // nil: discarded
	if debug {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	rc, err := resume.Dial(ctx, resume.ClientConfig{
		Dial:   p.dial,
		Window: window,
		Logger: log,
		OnResume: func(ri resume.ResumeInfo) {
			debugf("session to %s resumed via %s after %v (%d attempts, %d bytes replayed)", node, p.current, ri.Stall.Round(time.Millisecond), ri.Attempts, ri.Replayed)
		},
	})
	if errors.Is(err, resume.ErrUnsupported) {
		debugf("node %s does not support resumable sessions (an older node); connecting without", node)
		p.resume = false
		c, _, err := dialProxy(ctx, id, p.current, node, login, false, mfa)
		return c, err
	}
	if err != nil {
		return nil, err
	}
	return rc, nil
}
