package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/mesh/geo/geotest"
)

// discoverFrom asks proxy addr's discovery, the request leaving from
// source (a loopback address the test GeoIP database places somewhere),
// with extra headers.
func discoverFrom(t *testing.T, addr, source, pin string, header http.Header) (*authapi.Discovery, error) {
	t.Helper()
	tcfg := authapi.ClientTLS(authapi.TrustConfig{CAPin: pin, Kinds: []identity.Kind{identity.KindProxy}}, nil, "http/1.1")
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tcfg, DialContext: d.DialContext}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", "https://"+addr+"/v1/discover", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /v1/discover: %s", resp.Status)
	}
	var out authapi.Discovery
	return &out, json.NewDecoder(resp.Body).Decode(&out)
}

// TestNearestProxy: three proxies, in Virginia, Frankfurt and Tokyo, with
// a GeoIP database that places 127.1/16 in Tokyo, 127.2/16 in Frankfurt and
// 127.3/16 in Virginia. Clients from each land on their own region's
// proxy, whichever proxy they ask; a spoofed X-Forwarded-For changes
// nothing; jg login settles on the nearest proxy; when the nearest dies,
// discovery sends them to the next nearest.
func TestNearestProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test in -short mode")
	}
	c := bareCluster(t)
	var err error
	db := filepath.Join(c.dir, "GeoLite2-City-test.mmdb")
	geotest.WriteTestDB(t, db, geotest.Loopback3())
	us := &meshProxy{id: "proxy-us", region: "us-east", ip: "127.0.0.1"}
	eu := &meshProxy{id: "proxy-eu", region: "eu-central", ip: "127.0.0.2"}
	ap := &meshProxy{id: "proxy-ap", region: "ap-northeast", ip: "127.0.0.3"}
	loc := map[string]string{"proxy-us": "39.04,-77.49", "proxy-eu": "50.11,8.68", "proxy-ap": "35.68,139.69"}
	for _, p := range []*meshProxy{us, eu, ap} {
		p.listen, p.gossip, p.peer = freeAddrOn(t, p.ip), freeAddrOn(t, p.ip), freeAddrOn(t, p.ip)
	}
	c.proxy, c.auth = us.listen, freeAddr(t)
	c.admin = filepath.Join(c.dir, "auth", "admin")
	c.start("auth", "--roles=auth,proxy", "--cluster-name=geo", "--proxy-id=proxy-us", "--region=us-east", "--location="+loc["proxy-us"],
		"--data-dir="+filepath.Join(c.dir, "auth"), "--auth-listen="+c.auth, "--proxy-listen="+us.listen,
		"--gossip-listen="+us.gossip, "--peer-listen="+us.peer, "--geoip-db="+db)
	waitFor(t, "auth server", 30*time.Second, func() bool {
		_, code := c.run("", []string{"JUMPGATE_ADMIN_IDENTITY=" + c.admin, "JUMPGATE_AUTH=" + c.auth}, "jgctl", "status")
		return code == 0
	})
	for _, p := range []*meshProxy{eu, ap} {
		tok := c.proxyToken(p.id)
		c.start(p.id, "--roles=proxy", "--proxy-id="+p.id, "--region="+p.region, "--location="+loc[p.id], "--data-dir="+filepath.Join(c.dir, p.id),
			"--auth="+c.auth, "--token="+tok.Token, "--ca-pin="+tok.CAPin, "--proxy-listen="+p.listen,
			"--gossip-listen="+p.gossip, "--peer-listen="+p.peer, "--seeds="+us.gossip, "--geoip-db="+db)
	}
	waitFor(t, "three proxies alive", 60*time.Second, func() bool {
		ps := c.proxies()
		return len(ps) == 3 && seenAs(ps, "proxy-us", "alive") && seenAs(ps, "proxy-eu", "alive") && seenAs(ps, "proxy-ap", "alive")
	})
	pin := c.pin()

	clients := []struct{ source, city, want string }{
		{"127.1.0.5", "Tokyo", "proxy-ap"},
		{"127.2.0.5", "Frankfurt", "proxy-eu"},
		{"127.3.0.5", "Ashburn", "proxy-us"},
	}
	for _, p := range []*meshProxy{us, eu, ap} {
		for _, cl := range clients {
			var d *authapi.Discovery
			waitFor(t, "discovery at "+p.id+" from "+cl.city, 20*time.Second, func() bool {
				d, err = discoverFrom(t, p.listen, cl.source, pin, nil)
				return err == nil && len(d.Proxies) == 3
			})
			if d.Proxies[0].ID != cl.want || !d.Client.Located || d.Client.City != cl.city {
				t.Errorf("client in %s asking %s got %s first (client %+v, why %q)", cl.city, p.id, d.Proxies[0].ID, d.Client, d.Why)
			}
		}
	}
	d, _ := discoverFrom(t, eu.listen, "127.1.0.5", pin, nil)
	t.Logf("discovery for a client in Tokyo, asked at proxy-eu: why %q; ranked %s, %s, %s", d.Why, d.Proxies[0].ID, d.Proxies[1].ID, d.Proxies[2].ID)

	// A spoofed X-Forwarded-For from a peer that is not a trusted hop
	// changes nothing, and is logged.
	d, err = discoverFrom(t, eu.listen, "127.2.0.5", pin, http.Header{"X-Forwarded-For": {"127.1.0.9"}})
	if err != nil || d.Proxies[0].ID != "proxy-eu" || d.Client.IP != "127.2.0.5" {
		t.Fatalf("spoofed X-Forwarded-For: %v %+v", err, d)
	}
	waitFor(t, "the spoof logged", 10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(c.dir, "proxy-eu.log"))
		return strings.Contains(string(b), "X-Forwarded-For from an untrusted peer: ignored")
	})

	// jg login from Tokyo, through the Virginia proxy, settles on Tokyo's.
	c.addAlice()
	tokyo := []string{"JUMPGATE_HOME=" + filepath.Join(c.dir, "home-tokyo"), "JUMPGATE_BIND=127.1.0.5"}
	out, code := c.run("alice-password\n", tokyo, "jg", "login", "--proxy="+us.listen, "--user=alice", "--password-stdin", "--ca-pin="+pin)
	if code != 0 || !strings.Contains(out, "Home proxy: proxy-ap") {
		t.Fatalf("jg login from Tokyo: exit %d: %s", code, out)
	}
	out, code = c.run("", tokyo, "jg", "status")
	if code != 0 || !strings.Contains(out, "Home:    proxy-ap (ap-northeast)") || !strings.Contains(out, "Why:") || !strings.Contains(out, ap.listen) {
		t.Fatalf("jg status: exit %d: %s", code, out)
	}
	t.Logf("jg status from Tokyo:\n%s", out)

	// The nearest proxy dies: Tokyo's clients are sent to Frankfurt's
	// (9,300 km) rather than Virginia's (10,900 km).
	c.procs["proxy-ap"].Process.Signal(syscall.SIGKILL)
	waitFor(t, "proxy-ap out of discovery", 30*time.Second, func() bool {
		d, err := discoverFrom(t, us.listen, "127.1.0.5", pin, nil)
		return err == nil && len(d.Proxies) == 2 && d.Proxies[0].ID == "proxy-eu"
	})
	// jg notices its home is gone at the next check and moves.
	out, code = c.run("", tokyo, "jg", "status")
	if code != 0 || !strings.Contains(out, "Home:    proxy-eu") {
		t.Fatalf("jg status after proxy-ap died: exit %d: %s", code, out)
	}
}
