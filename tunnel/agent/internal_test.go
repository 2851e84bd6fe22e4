package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestBackoffFullJitter(t *testing.T) {
	var asked []int64
	top := func(n int64) int64 { asked = append(asked, n); return n - 1 }
	b := backoff{min: 100 * time.Millisecond, max: time.Second, randN: top}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if d := b.next(); d != w*time.Millisecond {
			t.Fatalf("delay %d at the top of its range = %v, want %v", i, d, w*time.Millisecond)
		}
	}
	b.randN = func(int64) int64 { return 0 }
	if d := b.next(); d != 0 {
		t.Fatalf("delay at the bottom of its range = %v, want 0 (full jitter)", d)
	}
	b.reset()
	b.randN = top
	if d := b.next(); d != 100*time.Millisecond {
		t.Fatalf("delay after reset = %v", d)
	}
	// The real source stays in range.
	b = backoff{min: time.Millisecond, max: 8 * time.Millisecond}
	for range 1000 {
		c := b.ceiling()
		if d := b.next(); d < 0 || d > c {
			t.Fatalf("delay %v outside [0, %v]", d, c)
		}
	}
	// A huge attempt count does not overflow.
	b = backoff{min: time.Second, max: time.Hour, attempt: 1 << 20}
	if c := b.ceiling(); c != time.Hour {
		t.Fatalf("ceiling after many attempts = %v", c)
	}
}

func TestConfigNamesMissingField(t *testing.T) {
	full := func() Config {
		return Config{
			ProxyAddrs:           []string{"10.0.0.1:3024", "proxy.example:3024"},
			NodeID:               "web-1",
			ClusterName:          "prod",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, nil },
			RootCAs:              x509.NewCertPool,
		}
	}
	tests := []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.ProxyAddrs = nil }, "ProxyAddrs is required"},
		{func(c *Config) { c.NodeID = "" }, "NodeID is required"},
		{func(c *Config) { c.ClusterName = "" }, "ClusterName is required"},
		{func(c *Config) { c.GetClientCertificate = nil }, "GetClientCertificate is required"},
		{func(c *Config) { c.RootCAs = nil }, "RootCAs is required"},
		{func(c *Config) { c.NodeID = "web 1" }, "NodeID: name \"web 1\""},
		{func(c *Config) { c.ProxyAddrs = []string{"10.0.0.1"} }, "ProxyAddrs: proxy address \"10.0.0.1\""},
		{func(c *Config) { c.ProxyAddrs = []string{":3024"} }, "has no host"},
		{func(c *Config) { c.ProxyAddrs = []string{"a:0"} }, "bad port"},
		{func(c *Config) { c.ProxyAddrs = []string{"a:1", "a:1"} }, "lists a:1 twice"},
		{func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond }, "MaxBackoff 1ms is below MinBackoff 1s"},
		{func(c *Config) { c.ConnectionCount = -1 }, "ConnectionCount -1 is negative"},
		{func(c *Config) { c.Transport = "udp" }, `Transport "udp": want auto, quic or tcp`},
	}
	for _, tt := range tests {
		c := full()
		tt.mutate(&c)
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New = %v, want %q", err, tt.want)
		}
	}

	a, err := New(full())
	if err != nil {
		t.Fatal(err)
	}
	c := a.cfg
	if c.MinBackoff != 200*time.Millisecond || c.MaxBackoff != 15*time.Second || c.KeepAlivePeriod != 5*time.Second ||
		c.MaxIdleTimeout != 15*time.Second || c.AcceptTimeout != 5*time.Second || c.AcceptBacklog != 1024 || c.Logger == nil || c.Now == nil {
		t.Fatalf("defaults = %+v", c)
	}
	if c.ConnectionCount != 2 || c.RefreshInterval != 30*time.Second || c.FailoverAfter != 5*time.Second || c.Probe == nil {
		t.Fatalf("re-homing defaults = %+v", c)
	}
	if c.Transport != TransportAuto || c.QUICFallbackAfter != 3*time.Second || c.QUICRetryInterval != 5*time.Minute {
		t.Fatalf("transport defaults = %q, %v, %v", c.Transport, c.QUICFallbackAfter, c.QUICRetryInterval)
	}
	if m := a.muxConf; m.StreamWindow != 16<<20 || m.KeepAlivePeriod != 5*time.Second || m.IdleTimeout != 15*time.Second || m.AcceptBacklog != 1024 {
		t.Fatalf("yamux config = %+v", m)
	}
	q := a.quicConf
	if q.MaxIncomingStreams != 10000 || q.MaxIncomingUniStreams != -1 || q.KeepAlivePeriod != 5*time.Second || q.MaxIdleTimeout != 15*time.Second {
		t.Fatalf("quic config = %+v", q)
	}
	if st := a.Status(); len(st) != 2 || st[0].State != StateIdle || st[1].ProxyAddr != "proxy.example:3024" {
		t.Fatalf("Status() before Run = %+v", st)
	}
	if a.Addr().Network() != "jumpgate-tunnel" || a.Addr().String() != "web-1" {
		t.Fatalf("Addr() = %v", a.Addr())
	}
}

func TestRankCandidates(t *testing.T) {
	fail := errors.New("no route")
	var flips [2]int
	for range 200 {
		cs := []ranked{
			{Candidate: Candidate{ID: "drain", Draining: true}},
			{Candidate: Candidate{ID: "down-a"}, probeErr: fail},
			{Candidate: Candidate{ID: "far"}, rtt: 80 * time.Millisecond},
			{Candidate: Candidate{ID: "down-b"}, probeErr: fail},
			{Candidate: Candidate{ID: "near"}, rtt: 5 * time.Millisecond},
			{Candidate: Candidate{ID: "mid-a"}, rtt: 20 * time.Millisecond},
			{Candidate: Candidate{ID: "mid-b"}, rtt: 20 * time.Millisecond},
		}
		rankCandidates(cs)
		var ids []string
		for _, c := range cs {
			ids = append(ids, c.ID)
		}
		// Ties (equal round trips, failed probes) come in either order.
		if ids[1] == "mid-b" {
			ids[1], ids[2] = ids[2], ids[1]
			flips[0]++
		}
		if ids[4] == "down-b" {
			ids[4], ids[5] = ids[5], ids[4]
			flips[1]++
		}
		if want := []string{"near", "mid-a", "mid-b", "far", "down-a", "down-b", "drain"}; !slices.Equal(ids, want) {
			t.Fatalf("ranked %v, want %v (ties in any order)", ids, want)
		}
	}
	// Ties are broken at random, so agents do not all pick the same proxy.
	for i, n := range flips {
		if n < 40 || n > 160 {
			t.Errorf("tie %d broken the same way %d times of 200, want about half", i, 200-n)
		}
	}
}

func TestJitter(t *testing.T) {
	lo, hi := time.Hour, time.Duration(0)
	for range 1000 {
		d := jitter(10*time.Second, 0.2)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 8*time.Second || hi > 12*time.Second || hi-lo < 3*time.Second {
		t.Fatalf("jitter(10s, 20%%) ranged over [%v, %v], want most of [8s, 12s]", lo, hi)
	}
}

// Seeds beyond ConnectionCount settle on the nearest, whichever connects
// first.
func TestSurplusSeedsSettleOnNearest(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := New(Config{
		ProxyAddrs:           []string{"p4:1", "p3:1", "p1:1", "p2:1"},
		NodeID:               "web-1",
		ClusterName:          "prod",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, nil },
		RootCAs:              x509.NewCertPool,
		Discover:             func(context.Context) ([]Candidate, error) { return nil, nil },
		Logger:               slog.New(slog.DiscardHandler),
		Metrics:              reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &rehomer{a: a, avoid: make(map[string]time.Time)}
	var cands []ranked
	for i, id := range []string{"p1", "p2", "p3", "p4"} {
		cands = append(cands, ranked{Candidate: Candidate{ID: id, Addr: id + ":1"}, rtt: time.Duration(i+1) * time.Millisecond})
	}
	r.update(discovery{cands: cands})
	slots := make(map[string]*slot)
	for _, s := range a.slots {
		s.downSince = time.Now() // as Run does
		slots[s.addr] = s
	}
	connect := func(id string) {
		a.mu.Lock()
		defer a.mu.Unlock()
		s := slots[id+":1"]
		s.live = &liveTunnel{}
		s.status.State, s.status.ProxyID = StateConnected, id
	}
	have := func() []string {
		a.mu.Lock()
		defer a.mu.Unlock()
		var out []string
		for _, s := range a.slots {
			out = append(out, s.addr)
		}
		slices.Sort(out)
		return out
	}

	// The far seeds connect first: nothing is closed while the near ones
	// are still connecting.
	connect("p4")
	connect("p3")
	r.reconcile()
	if got := have(); len(got) != 4 {
		t.Fatalf("slots %v, want all 4 seeds while p1 and p2 connect", got)
	}
	connect("p1")
	r.reconcile()
	if got, want := have(), []string{"p1:1", "p2:1", "p3:1"}; !slices.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	connect("p2")
	r.reconcile()
	if got, want := have(), []string{"p1:1", "p2:1"}; !slices.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "jumpgate_tunnel_agent_rehomes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			want := 0.0
			if m.GetLabel()[0].GetValue() == rehomeSurplus {
				want = 2
			}
			if v := m.GetCounter().GetValue(); v != want {
				t.Errorf("rehomes{%s} = %v, want %v", m.GetLabel()[0].GetValue(), v, want)
			}
		}
	}
}
