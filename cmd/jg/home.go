package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
	"jumpgate.dev/jumpgate/mesh/route"
)

// homeState is the home proxy jg settled on, kept in ~/.jumpgate/home.json
// for jg status and for the next re-check's hysteresis.
type homeState struct {
	Cluster string    `json:"cluster"`
	ID      string    `json:"id"`
	Region  string    `json:"region,omitempty"`
	Addr    string    `json:"addr"`
	RTTms   float64   `json:"rtt_ms"`
	Why     string    `json:"why"`
	Checked time.Time `json:"checked"`
	// Entry is the proxy jg asked (jg login --proxy).
	Entry string `json:"entry"`
	// Probed: the RTTs of the last check, by proxy id.
	Probed map[string]float64 `json:"probed_ms,omitempty"`
	// Proxies are the addresses of every proxy discovery offered, best
	// first: where a session whose proxy drains or dies may resume.
	Proxies []string `json:"proxies,omitempty"`
}

var proxyKinds = []identity.Kind{identity.KindProxy}

// recheckEvery is how old a home choice may get before jg checks it again
// (in the background of jg ssh and jg ls, and at every jg status).
const recheckEvery = 30 * time.Minute

// probeCandidates is how many of discovery's best proxies jg measures.
const probeCandidates = 3

func homeFile() string { return filepath.Join(home(), "home.json") }

func loadHome() (*homeState, error) {
	b, err := os.ReadFile(homeFile())
	if err != nil {
		return nil, err
	}
	var h homeState
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", homeFile(), err)
	}
	return &h, nil
}

func saveHome(h *homeState) error {
	b, _ := json.MarshalIndent(h, "", "  ")
	tmp := homeFile() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, homeFile())
}

// bindAddr is $JUMPGATE_BIND: the local IP jg's connections leave from, on
// a machine with several addresses (and in tests that place clients in
// simulated regions by source address).
func bindAddr() string { return os.Getenv("JUMPGATE_BIND") }

func netDialer(timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
	if ip := net.ParseIP(bindAddr()); ip != nil {
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return d
}

// probeRTT is the best of three TCP connects to addr; false if none
// succeeded within timeout each.
func probeRTT(ctx context.Context, addr string, timeout time.Duration) (time.Duration, bool) {
	best, ok := time.Duration(0), false
	for range 3 {
		start := time.Now()
		c, err := netDialer(timeout).DialContext(ctx, "tcp", addr)
		if err != nil {
			continue
		}
		d := time.Since(start)
		c.Close()
		if !ok || d < best {
			best, ok = d, true
		}
	}
	return best, ok
}

// chooseHome asks entry's discovery for the ranked proxies, measures RTT
// to the best few (and to the current home), and applies hysteresis
// against the current home. It returns the new state and whether the
// home changed.
func chooseHome(ctx context.Context, cl *authapi.Client, entry string, cur *homeState) (*homeState, bool, error) {
	d, err := cl.Discover(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("discovery at %s: %w", entry, err)
	}
	byID := map[string]authapi.DiscoveredProxy{}
	var probe []authapi.DiscoveredProxy
	for _, p := range d.Proxies {
		byID[p.ID] = p
		if p.State != "draining" && len(probe) < probeCandidates {
			probe = append(probe, p)
		}
	}
	if len(probe) == 0 && len(d.Proxies) > 0 {
		probe = d.Proxies[:1] // everything is draining: still somewhere to go
	}
	// Hysteresis runs against the current home, or, with none, against
	// discovery's first choice: measured RTTs overrule the map only when
	// another proxy is clearly faster.
	curID, hadHome := "", false
	if cur != nil && cur.Cluster != "" {
		if p, ok := byID[cur.ID]; ok && p.State != "draining" {
			curID, hadHome = cur.ID, true
			if !containsProxy(probe, cur.ID) {
				probe = append(probe, p)
			}
		}
	}
	if curID == "" && len(probe) > 0 {
		curID = probe[0].ID
	}
	rtts := map[string]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range probe {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d, ok := probeRTT(ctx, p.PublicAddr, time.Second); ok {
				mu.Lock()
				rtts[p.ID] = d
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(rtts) == 0 {
		return nil, false, errors.New("none of the proxies discovery offered answered: " + proxyList(probe))
	}
	id, switched, why := route.ChooseHome(curID, rtts)
	p := byID[id]
	h := &homeState{ID: id, Region: p.Region, Addr: p.PublicAddr, RTTms: ms(rtts[id]), Checked: time.Now().UTC(), Entry: entry, Probed: map[string]float64{}}
	if cur != nil {
		h.Cluster = cur.Cluster
	}
	for pid, d := range rtts {
		h.Probed[pid] = ms(d)
	}
	h.Proxies = append(h.Proxies, p.PublicAddr)
	for _, dp := range d.Proxies {
		if dp.ID != id && dp.PublicAddr != "" {
			h.Proxies = append(h.Proxies, dp.PublicAddr)
		}
	}
	h.Why = why
	if len(d.Proxies) > 0 && d.Proxies[0].ID == id && d.Why != "" {
		h.Why += "; discovery: " + d.Why
	}
	return h, switched && hadHome, nil
}

func containsProxy(ps []authapi.DiscoveredProxy, id string) bool {
	for _, p := range ps {
		if p.ID == id {
			return true
		}
	}
	return false
}

func proxyList(ps []authapi.DiscoveredProxy) string {
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += ", "
		}
		s += p.ID + " (" + p.PublicAddr + ")"
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// recheckHome re-checks the home proxy of the logged-in identity and, if
// another is clearly better, moves to it. It returns the state (nil if
// there is no home to check).
func recheckHome(ctx context.Context, id *creds.Identity) (*homeState, bool, error) {
	cur, err := loadHome()
	if err != nil || cur.Cluster != id.Meta.Cluster {
		return nil, false, err
	}
	cl, err := authapi.NewClient(authapi.ClientConfig{Addr: id.Meta.Proxy, Addrs: []string{cur.Entry}, LocalAddr: bindAddr(), Timeout: 5 * time.Second,
		Trust: authapi.TrustConfig{RootCAs: id.RootCAs, Kinds: proxyKinds}})
	if err != nil {
		return nil, false, err
	}
	defer cl.Close()
	h, switched, err := chooseHome(ctx, cl, cur.Entry, cur)
	if err != nil {
		return cur, false, err
	}
	h.Cluster = cur.Cluster
	if switched || h.Addr != id.Meta.Proxy {
		if err := creds.SetProxy(id.Dir, h.Addr); err != nil {
			return cur, false, err
		}
	}
	return h, switched, saveHome(h)
}

// backgroundRecheck re-checks a stale home choice while the command runs;
// the result is for the next command.
func backgroundRecheck(id *creds.Identity) {
	cur, err := loadHome()
	if err != nil || time.Since(cur.Checked) < recheckEvery {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		recheckHome(ctx, id) //nolint:errcheck // best effort; jg status shows errors
	}()
}

// printHome prints the home proxy section of jg status.
func printHome(h *homeState) {
	fmt.Printf("Home:    %s (%s) %s, RTT %.2f ms, checked %s\n", h.ID, orDash(h.Region), h.Addr, h.RTTms, h.Checked.Local().Format(time.DateTime))
	fmt.Printf("Why:     %s\n", h.Why)
	if len(h.Probed) > 1 {
		ids := make([]string, 0, len(h.Probed))
		for id := range h.Probed {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return h.Probed[ids[i]] < h.Probed[ids[j]] })
		s := ""
		for i, id := range ids {
			if i > 0 {
				s += ", "
			}
			s += fmt.Sprintf("%s %.2f ms", id, h.Probed[id])
		}
		fmt.Printf("Probed:  %s\n", s)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
