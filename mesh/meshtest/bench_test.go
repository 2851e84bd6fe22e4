package meshtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/mesh/gossip"
)

// These benchmarks measure the mesh rather than a loop of operations: each
// iteration builds a mesh, measures it and tears it down, and the figures
// are reported with b.ReportMetric (ns/op is the iteration's wall time).
// Run them alone, not in parallel with other tests, and once:
//
//	go test -run '^$' -bench . -benchtime 1x ./mesh/meshtest

// until polls cond every tick until it holds or timeout passes, and says
// how long that took.
func until(timeout, tick time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	t := time.NewTicker(tick)
	defer t.Stop()
	for !cond() {
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		<-t.C
	}
	return time.Since(start), true
}

// cpuTime returns the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// udpRcvbufErrors returns the host's count of UDP datagrams the kernel
// dropped for a full socket receive buffer (/proc/net/snmp; -1 if it
// cannot be read). It counts every process, but on a test machine the
// benchmark is the one sending.
func udpRcvbufErrors() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var names []string
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					return -1
				}
				return v
			}
		}
	}
	return -1
}

// cores measures how many of the machine's cores the process keeps busy
// during f.
func cores(f func()) float64 {
	c0, t0 := cpuTime(), time.Now()
	f()
	return (cpuTime() - c0).Seconds() / time.Since(t0).Seconds()
}

// BenchmarkGossipConvergence starts N proxies, each joining through the
// first, and measures:
//
//   - s/converge: from the first start until every proxy sees every other
//     alive (s/start of it is spent starting them, one after another);
//     late-pairs: (observer, member) pairs still not alive after 10 s,
//     left for memberlist's push/pull to repair (the long tail);
//   - cores: CPU the idle mesh then uses, in cores (the machine has
//     runtime.NumCPU());
//   - s/detect: from killing one proxy until every other marks it dead;
//   - false-deaths: live proxies marked dead at any time, and refutes:
//     suspicions memberlist refuted (a live proxy suspected, not killed);
//   - dropped: datagrams lost to the emulator's full queues, and
//     kernel-drops: to full socket receive buffers (the host's count);
//
// with FastTiming on plain loopback and with DefaultTiming across 200 ms
// of RTT between every two proxies.
func BenchmarkGossipConvergence(b *testing.B) {
	for _, tc := range []struct {
		name   string
		timing gossip.Timing
		rtt    time.Duration
	}{
		{"fast/loopback", gossip.FastTiming(), 0},
		{"default/rtt=200ms", gossip.DefaultTiming(), 200 * time.Millisecond},
	} {
		for _, n := range []int{10, 50, 100} {
			b.Run(fmt.Sprintf("%s/n=%d", tc.name, n), func(b *testing.B) {
				var sum convergence
				for range b.N {
					r := convergeOnce(b, n, tc.timing, tc.rtt)
					sum.converge += r.converge
					sum.start += r.start
					sum.detect += r.detect
					sum.cores += r.cores
					sum.falseDeaths += r.falseDeaths
					sum.refutes += r.refutes
					sum.late += r.late
					sum.dropped += r.dropped
					sum.kernelDrops += r.kernelDrops
				}
				N := float64(b.N)
				b.ReportMetric(sum.converge.Seconds()/N, "s/converge")
				b.ReportMetric(sum.start.Seconds()/N, "s/start")
				b.ReportMetric(sum.detect.Seconds()/N, "s/detect")
				b.ReportMetric(sum.cores/N, "cores")
				b.ReportMetric(float64(sum.falseDeaths)/N, "false-deaths")
				b.ReportMetric(float64(sum.refutes)/N, "refutes")
				b.ReportMetric(float64(sum.late)/N, "late-pairs")
				b.ReportMetric(float64(sum.dropped)/N, "dropped")
				b.ReportMetric(float64(sum.kernelDrops)/N, "kernel-drops")
			})
		}
	}
}

type convergence struct {
	converge, start, detect time.Duration
	cores                   float64
	falseDeaths, refutes    int
	dropped, kernelDrops    int64
	late                    int
}

func convergeOnce(b *testing.B, n int, timing gossip.Timing, rtt time.Duration) convergence {
	b.Helper()
	wcfg := WANConfig{Regions: []string{"local"}}
	if rtt > 0 {
		wcfg = UniformRegions(n, rtt)
	}
	m := New(b, Config{WAN: wcfg, Timing: timing})
	defer m.Close()
	regions := m.WAN().Regions()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("p%03d", i)
	}
	var r convergence
	drops0 := udpRcvbufErrors()
	begin := time.Now()
	for i, id := range ids {
		m.Start(id, regions[i%len(regions)])
	}
	r.start = time.Since(begin)

	// Each proxy is checked until it sees all the others alive once.
	done := make(map[string]bool, n)
	seesAll := func(p *Proxy) bool {
		g := p.Gossip()
		for _, id := range ids {
			if mem, ok := g.Member(id); !ok || mem.Health != gossip.HealthAlive {
				return false
			}
		}
		return true
	}
	// memberlist spreads each join by gossip, which now and then misses a
	// proxy; the periodic push/pull repairs that, every 30 s (stretched
	// to 60 s above 32 proxies, 90 s above 64): the tail is long.
	late := -1
	_, ok := until(3*time.Minute, 10*time.Millisecond, func() bool {
		for _, p := range m.Running() {
			if !done[p.ID()] && seesAll(p) {
				done[p.ID()] = true
			}
		}
		if late < 0 && time.Since(begin) > 10*time.Second {
			late = 0
			for _, p := range m.Running() {
				for _, id := range ids {
					if mem, ok := p.Gossip().Member(id); !ok || mem.Health != gossip.HealthAlive {
						late++
					}
				}
			}
			b.Logf("%d proxies: %d (observer, member) pairs not alive 10 s after the first start: %s", n, late, m.unconverged())
		}
		return len(done) == n
	})
	r.converge = time.Since(begin)
	r.late = max(late, 0)
	if !ok {
		b.Logf("%d proxies: only %d saw all the others alive after %v; measuring failure detection anyway", n, len(done), r.converge)
	}

	// The converged mesh, left alone for 3 s.
	r.cores = cores(func() {
		t := time.NewTimer(3 * time.Second)
		<-t.C
	})

	victim := m.Proxy(ids[n/2])
	killed := time.Now()
	victim.Kill()
	dead := make(map[string]bool, n)
	_, ok = until(time.Minute, 10*time.Millisecond, func() bool {
		for _, p := range m.Running() {
			if dead[p.ID()] {
				continue
			}
			if mem, ok := p.Gossip().Member(victim.ID()); ok && (mem.Health == gossip.HealthDead || mem.Health == gossip.HealthLeft) {
				dead[p.ID()] = true
			}
		}
		return len(dead) == n-1
	})
	r.detect = time.Since(killed)
	if !ok {
		b.Fatalf("%d proxies: only %d of %d saw the killed proxy dead after %v", n, len(dead), n-1, r.detect)
	}
	r.falseDeaths = len(m.FalseDeaths())
	for _, d := range m.FalseDeaths() {
		b.Logf("false death: %s saw %s dead at %v (kill at %v)", d.Observer, d.Subject, d.At.Format("15:04:05.000"), killed.Format("15:04:05.000"))
	}
	r.refutes = strings.Count(m.Logs(), "Refuting a suspect message")
	r.dropped = m.WAN().TotalTraffic().Dropped
	r.kernelDrops = udpRcvbufErrors() - drops0
	b.Logf("%d proxies, %d cores: started in %v, converged %v after the first start; idle mesh uses %.2f cores; kill detected everywhere in %v; %d false deaths, %d suspicions refuted; %d datagrams dropped by the emulator, %d by the kernel",
		n, runtime.NumCPU(), r.start.Round(time.Millisecond), r.converge.Round(time.Millisecond), r.cores, r.detect.Round(time.Millisecond), r.falseDeaths, r.refutes, r.dropped, r.kernelDrops)
	return r
}

// ec2Name is a node name like an EC2 host's: the common suffix repeats, so
// the directory's front coding saves little (doc.go: 30 B/node).
func ec2Name(i int) string {
	return fmt.Sprintf("ip-10-%d-%d-%d.eu-west-1.compute.internal", i>>16&255, i>>8&255, i&255)
}

// BenchmarkDirectoryBandwidth: one proxy of 10 holds 10,000 nodes (EC2
// host names). Measured:
//
//   - s/spread: from the holder adding them until every proxy's directory
//     has all 10,000 (the batch is too big for deltas: the holder pushes
//     its full state to every peer);
//   - B/s/proxy: gossip bytes on the wire at steady state, per proxy and
//     second (each byte counted once, at its sender; a proxy receives
//     about as much as it sends), over a 5 s window;
//   - B/pushpull: bytes of one push/pull exchange, both ways, after
//     memberlist's compression and encryption;
//   - s/newcomer: for an 11th proxy, joining through one seed, to learn
//     the whole directory.
//
// With FastTiming (push/pull every second) the window holds enough
// push/pulls to measure; default-est-B/s/proxy scales the measured rates
// to DefaultTiming (probes every 0.4 s instead of 0.2 s, push/pull every
// 30 s instead of 1 s). The rtt=200ms case runs DefaultTiming across 200 ms
// of RTT, where the window rarely holds a push/pull: its B/s/proxy is
// probes and gossip only.
func BenchmarkDirectoryBandwidth(b *testing.B) {
	const proxies, nodes = 10, 10000
	for _, tc := range []struct {
		name   string
		timing gossip.Timing
		rtt    time.Duration
	}{
		{"fast/loopback", gossip.FastTiming(), 0},
		{"default/rtt=200ms", gossip.DefaultTiming(), 200 * time.Millisecond},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				wcfg := WANConfig{Regions: []string{"local"}}
				if tc.rtt > 0 {
					wcfg = UniformRegions(proxies+1, tc.rtt)
				}
				m := New(b, Config{WAN: wcfg, Timing: tc.timing})
				regions := m.WAN().Regions()
				var ps []*Proxy
				for i := range proxies {
					ps = append(ps, m.Start(fmt.Sprintf("p%02d", i), regions[i%len(regions)]))
				}
				if _, ok := until(time.Minute, 10*time.Millisecond, m.Converged); !ok {
					b.Fatal("the mesh did not converge in a minute")
				}
				holder := ps[proxies/2]
				names := make([]string, nodes)
				for i := range names {
					names[i] = ec2Name(i)
				}
				// The benchmark dials none of them.
				noDial := func(context.Context) (net.Conn, error) { return nil, errors.New("benchmark node: not dialable") }
				start := time.Now()
				for _, n := range names {
					holder.AddTunnelFunc(n, noDial)
				}
				full := func(p *Proxy) bool {
					g := p.Gossip()
					return len(g.Holders(names[0])) == 1 && len(g.Holders(names[nodes-1])) == 1 && len(g.Directory()) == nodes
				}
				took, ok := until(time.Minute, 5*time.Millisecond, func() bool {
					for _, p := range ps {
						if !full(p) {
							return false
						}
					}
					return true
				})
				if !ok {
					b.Fatalf("the directory did not reach every proxy in %v", took)
				}
				spread := time.Since(start)

				// Steady state: let the big push settle, then a 5 s window.
				settle := time.NewTimer(2 * time.Second)
				<-settle.C
				before := trafficOf(ps)
				window := 5 * time.Second
				var tr Traffic
				cpu := cores(func() {
					t := time.NewTimer(window)
					<-t.C
					tr = trafficOf(ps).Sub(before)
				})
				perProxy := float64(tr.Bytes()) / window.Seconds() / proxies
				b.ReportMetric(spread.Seconds(), "s/spread")
				b.ReportMetric(perProxy, "B/s/proxy")
				b.ReportMetric(cpu, "cores")
				var perPushPull float64
				if tr.Streams > 0 {
					perPushPull = float64(tr.StreamBytes) / float64(tr.Streams)
					b.ReportMetric(perPushPull, "B/pushpull")
				}
				if tc.rtt == 0 {
					def, fast := gossip.DefaultTiming(), tc.timing
					udp := float64(tr.PacketBytes) / window.Seconds() / proxies * fast.ProbeInterval.Seconds() / def.ProbeInterval.Seconds()
					tcp := float64(tr.StreamBytes) / window.Seconds() / proxies * fast.PushPullInterval.Seconds() / def.PushPullInterval.Seconds()
					b.ReportMetric(udp+tcp, "default-est-B/s/proxy")
				}

				// A newcomer, joining through p00 (not the holder).
				joined := time.Now()
				newcomer := m.Start("newcomer", regions[proxies%len(regions)])
				took, ok = until(time.Minute, 5*time.Millisecond, func() bool { return full(newcomer) })
				if !ok {
					b.Fatalf("the newcomer did not learn the directory in %v", took)
				}
				learn := time.Since(joined)
				b.ReportMetric(learn.Seconds(), "s/newcomer")
				b.Logf("%d proxies, one holding %d nodes: directory everywhere in %v; steady state %d B in %v (%d packets = %d B, %d streams = %d B): %.0f B/s a proxy; %.0f B a push/pull; newcomer had the directory %v after starting; %.2f cores",
					proxies, nodes, spread.Round(time.Millisecond), tr.Bytes(), window, tr.Packets, tr.PacketBytes, tr.Streams, tr.StreamBytes, perProxy, perPushPull, learn.Round(time.Millisecond), cpu)
				m.Close()
			}
		})
	}
}

func trafficOf(ps []*Proxy) Traffic {
	var t Traffic
	for _, p := range ps {
		t = t.Add(p.GossipTraffic())
	}
	return t
}

// BenchmarkPeerDialSetup measures dial setup (Dial until the holder's OK
// answer; no bytes) from a1: to a node it holds itself (local) and to a
// node held by b1 over the warm QUIC connection (peer), at 0 and 70 ms of
// RTT between the two. ms/op is per dial; local-ms is the local dial
// measured alongside; added-ms is what going through the peer adds, and
// over-rtt-ms that minus one RTT (the target is at most 2 ms). net-rtt-ms
// is a bare UDP round trip through the emulator between the two regions
// (the configured RTT plus the emulator's own lateness), and
// over-net-rtt-ms what the peer dial adds beyond it. cold-ms is the first
// dial, which also makes the QUIC connection.
func BenchmarkPeerDialSetup(b *testing.B) {
	for _, rtt := range []time.Duration{0, 70 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) {
			wan := WANConfig{Regions: []string{"a", "b"}, RTT: map[[2]string]time.Duration{{"a", "b"}: rtt}}
			timing := gossip.FastTiming()
			if rtt > 0 {
				timing = gossip.DefaultTiming()
			}
			m := New(b, Config{WAN: wan, Timing: timing})
			a1, b1 := m.Start("a1", "a"), m.Start("b1", "b")
			m.AddNode("local", nil)
			m.AddNode("remote", nil)
			a1.AddTunnel("local")
			b1.AddTunnel("remote")
			if _, ok := until(time.Minute, 5*time.Millisecond, func() bool {
				return m.Converged() && len(a1.Gossip().Holders("remote")) == 1
			}); !ok {
				b.Fatal("a1 does not see b1 holding the node")
			}
			ctx := context.Background()
			dial := func(node, via string) time.Duration {
				start := time.Now()
				c, path, err := m.Dial(ctx, "a1", node)
				d := time.Since(start)
				if err != nil || path.Via != via {
					b.Fatalf("dial %s: path %v, err %v; want via %s", node, path, err, via)
				}
				c.Close()
				return d
			}
			cold := dial("remote", "b1")
			var local time.Duration
			const localDials = 50
			for range localDials {
				local += dial("local", "a1")
			}
			local /= localDials
			netRTT := udpRTT(b, m.WAN(), "a", "b", 20)

			b.ResetTimer()
			var peer time.Duration
			for range b.N {
				peer += dial("remote", "b1")
			}
			b.StopTimer()
			peer /= time.Duration(b.N)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(peer), "ms/op")
			b.ReportMetric(ms(local), "local-ms")
			b.ReportMetric(ms(peer-local), "added-ms")
			b.ReportMetric(ms(peer-local-rtt), "over-rtt-ms")
			b.ReportMetric(ms(netRTT), "net-rtt-ms")
			b.ReportMetric(ms(peer-local-netRTT), "over-net-rtt-ms")
			b.ReportMetric(ms(cold), "cold-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// udpRTT measures the mean round trip of a datagram between two new
// wrapped sockets in regions from and to.
func udpRTT(b *testing.B, w *WAN, from, to string, n int) time.Duration {
	b.Helper()
	listen := func(region string) *PacketConn {
		ip, err := w.NewHost(region)
		if err != nil {
			b.Fatal(err)
		}
		pc, err := w.ListenPacket(netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			b.Fatal(err)
		}
		return pc
	}
	a, z := listen(from), listen(to)
	defer a.Close()
	defer z.Close()
	echoed := make(chan struct{})
	go func() {
		defer close(echoed)
		buf := make([]byte, 64)
		for {
			k, addr, err := z.ReadFrom(buf)
			if err != nil {
				return
			}
			z.WriteTo(buf[:k], addr)
		}
	}()
	buf := make([]byte, 64)
	var total time.Duration
	for range n {
		start := time.Now()
		a.WriteTo([]byte("ping"), z.LocalAddr())
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := a.ReadFrom(buf); err != nil {
			b.Fatalf("UDP round trip %s-%s: %v", from, to, err)
		}
		total += time.Since(start)
	}
	z.Close()
	<-echoed
	return total / time.Duration(n)
}
