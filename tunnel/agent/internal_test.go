package agent

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"
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
