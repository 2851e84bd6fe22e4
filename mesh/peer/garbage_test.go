package peer

import (
	"crypto/rand"
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"testing"

	"jumpgate.dev/jumpgate/auth/authtest"
)

// TestGarbage throws what a stranger might at a proxy's peer port. Each is
// refused with a log line saying why and counted, and a live stream through
// the proxy carries on.
func TestGarbage(t *testing.T) {
	otherCA := authtest.NewCA(t, "someone else's CA")
	handshake := func(cert func(*env) *tls.Certificate, alpn string) func(*testing.T, *env, string) error {
		return func(t *testing.T, e *env, addr string) error {
			var c *tls.Certificate
			if cert != nil {
				c = cert(e)
			}
			qc, err := rawDial(t, addr, c, alpn)
			if err != nil {
				return err
			}
			_, err = rawExchange(t, qc, mustRequest(t, DialRequest{Version: 1, Node: "web-1"}))
			return err
		}
	}
	issue := func(kind, name, clusterName string) func(*env) *tls.Certificate {
		return func(e *env) *tls.Certificate { return e.ca.Issue(t, identityOf(kind, name, clusterName)) }
	}
	for _, tc := range []struct {
		name string
		send func(*testing.T, *env, string) error
		// what the sender sees; empty for fire-and-forget packets
		senderErr string
		// words of b's log line, and the counter that counts it
		log          []string
		metric       string
		label, value string
	}{
		{
			name:   "random bytes",
			send:   sendPackets(100, func() []byte { return randomPacket() }),
			log:    []string{"level=WARN", "dropped packets on the peer port"},
			metric: "jumpgate_peer_dropped_packets_total",
		},
		{
			name:   "not QUIC",
			send:   sendPackets(1, func() []byte { return []byte("\x00\x01 is this the DNS server?") }),
			log:    []string{"level=WARN", "dropped packets on the peer port", "not_quic=1", "remote=127.0.0.1:"},
			metric: "jumpgate_peer_dropped_packets_total", label: "reason", value: dropNotQUIC,
		},
		{
			name:      "QUIC with another ALPN",
			send:      handshake(issue("proxy", "c", cluster), "h3"),
			senderErr: "no application protocol",
			log:       []string{"level=WARN", "refused peer handshake", `client offered application protocols`, `h3`},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonALPN,
		},
		{
			name:      "no client certificate",
			send:      handshake(nil, ALPN),
			senderErr: "CRYPTO_ERROR",
			log:       []string{"level=WARN", "refused peer handshake", "no client certificate"},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonNoCert,
		},
		{
			name:      "certificate from another CA",
			send:      handshake(func(*env) *tls.Certificate { return otherCA.Issue(t, identityOf("proxy", "c", cluster)) }, ALPN),
			senderErr: "CRYPTO_ERROR",
			log:       []string{"level=WARN", "refused peer handshake", `client certificate \"c\" is not trusted`},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonUntrusted,
		},
		{
			name:      "node certificate",
			send:      handshake(issue("node", "web-1", cluster), ALPN),
			senderErr: "of kind node: peering needs a proxy certificate",
			log:       []string{"level=WARN", "refused peer connection", "cert=\"node web-1@prod\"", "peering needs a proxy certificate"},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonWrongKind,
		},
		{
			name:      "user certificate",
			send:      handshake(issue("user", "alice", cluster), ALPN),
			senderErr: "of kind user",
			log:       []string{"level=WARN", "refused peer connection", "cert=\"user alice@prod\""},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonWrongKind,
		},
		{
			name:      "proxy of another cluster",
			send:      handshake(issue("proxy", "c", "staging"), ALPN),
			senderErr: `certificate is for cluster "staging"`,
			log:       []string{"level=WARN", "refused peer connection", `certificate is for cluster \"staging\"`},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonWrongCluster,
		},
		{
			name:      "this proxy's own id",
			send:      handshake(issue("proxy", "b", cluster), ALPN),
			senderErr: "this proxy's own id",
			log:       []string{"level=WARN", "refused peer connection", "two proxies share an id"},
			metric:    "jumpgate_peer_handshake_failures_total", label: "reason", value: reasonSelf,
		},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			e := newEnv(t)
			a, b := e.start("a"), e.start("b")
			live := a.dial(t, b, "web-1")
			defer live.Close()
			echoOnce(t, live, "before")

			err := tc.send(t, e, b.addr)
			switch {
			case tc.senderErr == "" && err != nil:
				t.Fatalf("send: %v", err)
			case tc.senderErr != "" && (err == nil || !strings.Contains(err.Error(), tc.senderErr)):
				t.Fatalf("the sender saw %v, want an error with %q", err, tc.senderErr)
			}
			labels := []string{}
			if tc.label != "" {
				labels = []string{tc.label, tc.value}
			}
			authtest.WaitFor(t, waitFor, "the refusal to be counted and logged", func() bool {
				return b.metric(t, tc.metric, labels...) > 0 && b.log.Count(tc.log...) == 1
			})
			if tc.metric == "jumpgate_peer_handshake_failures_total" {
				if got := b.metricSum(t, tc.metric); got != 1 {
					t.Errorf("%v handshake failures counted, want 1", got)
				}
			}
			if tc.name == "random bytes" {
				authtest.WaitFor(t, waitFor, "every random packet to be counted", func() bool {
					return b.metricSum(t, "jumpgate_peer_dropped_packets_total") >= 90
				})
			}

			echoOnce(t, live, "after")
			c := a.dial(t, b, "web-1")
			echoOnce(t, c, "new dial")
			c.Close()
			if b.m.connCount() != 1 || len(b.m.Peers()) != 1 {
				t.Errorf("b holds %d connections (%+v), want only a's", b.m.connCount(), b.m.Peers())
			}
			checkLabels(t, a)
			checkLabels(t, b)
		})
	}
}

func sendPackets(n int, packet func() []byte) func(*testing.T, *env, string) error {
	return func(t *testing.T, _ *env, addr string) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		for range n {
			if _, err := c.Write(packet()); err != nil {
				return err
			}
		}
		return nil
	}
}

func randomPacket() []byte {
	var n [2]byte
	rand.Read(n[:])
	p := make([]byte, 1+(int(n[0])<<8|int(n[1]))%1400)
	rand.Read(p)
	return p
}

// checkLabels fails if a metric of p has a label value outside the closed
// sets: no peer ids, no free text.
func checkLabels(t *testing.T, p *proxy) {
	t.Helper()
	allowed := slices.Concat(outcomes, reasons, drops, []string{"in", "out", "inbound", "outbound"})
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "jumpgate_peer_") {
			t.Errorf("metric %s is not named jumpgate_peer_*", mf.GetName())
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(allowed, l.GetValue()) {
					t.Errorf("metric %s has label %s=%q, not in the closed set", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}
