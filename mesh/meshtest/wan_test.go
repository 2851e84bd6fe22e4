package meshtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authtest"
)

// TestMain checks, after all tests, that none left a goroutine behind.
func TestMain(m *testing.M) { authtest.MainLeakCheck(m, LeakMarkers()...) }

func newWAN(t testing.TB, cfg WANConfig) *WAN {
	t.Helper()
	w, err := NewWAN(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func host(t testing.TB, w *WAN, region string) netip.Addr {
	t.Helper()
	ip, err := w.NewHost(region)
	if err != nil {
		t.Fatal(err)
	}
	return ip
}

func listenPacket(t testing.TB, w *WAN, region string) *PacketConn {
	t.Helper()
	pc, err := w.ListenPacket(netip.AddrPortFrom(host(t, w, region), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func TestNewWAN(t *testing.T) {
	w := newWAN(t, ThreeRegions())
	if got := w.RTT("c", "b"); got != 200*time.Millisecond {
		t.Errorf("RTT(c, b) = %v, want 200ms", got)
	}
	a, c := host(t, w, "a"), host(t, w, "c")
	if a != netip.MustParseAddr("127.0.1.1") || c != netip.MustParseAddr("127.0.3.1") {
		t.Errorf("first hosts of a and c = %v, %v; want 127.0.1.1, 127.0.3.1", a, c)
	}
	if r, ok := w.RegionOf(c); !ok || r != "c" {
		t.Errorf("RegionOf(%v) = %q, %v", c, r, ok)
	}
	if d := w.Latency(a, c); d != 70*time.Millisecond {
		t.Errorf("Latency(a, c) = %v, want 70ms", d)
	}
	if d := w.Latency(a, netip.MustParseAddr("127.0.0.1")); d != 0 {
		t.Errorf("Latency to 127.0.0.1 = %v, want 0 (no region)", d)
	}
	if _, err := w.NewHost("z"); err == nil || !strings.Contains(err.Error(), `unknown region "z"`) {
		t.Errorf("NewHost(z) error = %v", err)
	}

	for _, tc := range []struct {
		cfg  WANConfig
		want string
	}{
		{WANConfig{}, "Regions is required"},
		{WANConfig{Regions: []string{"a", "b"}}, "no RTT between regions b and a"},
		{WANConfig{Regions: []string{"a", "a"}}, "region a listed twice"},
		{WANConfig{Regions: []string{"a"}, RTT: map[[2]string]time.Duration{{"a", "x"}: 1}}, "not both in Regions"},
		{WANConfig{Regions: []string{"bad name"}}, "region"},
	} {
		if _, err := NewWAN(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewWAN(%+v) error = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// TestPacketConnDelay: a datagram and its answer take the RTT between the
// two regions, datagrams to one destination keep their order, and a full
// queue drops.
func TestPacketConnDelay(t *testing.T) {
	authtest.CheckLeaks(t, LeakMarkers()...)
	w := newWAN(t, ThreeRegions())
	a, c := listenPacket(t, w, "a"), listenPacket(t, w, "c")

	// Ping-pong: 140 ms between a and c.
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	buf := make([]byte, 64)
	for range 3 {
		start := time.Now()
		if _, err := a.WriteTo([]byte("ping"), c.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		a.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := a.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		rtt := time.Since(start)
		if rtt < 140*time.Millisecond || rtt > 240*time.Millisecond {
			t.Errorf("round trip a-c took %v, want 140 ms (+ up to 100 ms for this machine)", rtt)
		}
	}

	// Order: 200 datagrams, sent back to back, arrive in order. They
	// arrive at once (no bandwidth is emulated), so the receiver's
	// socket buffer must hold them all.
	b := listenPacket(t, w, "b")
	if err := b.SetReadBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	const count = 200
	for i := range count {
		var msg [4]byte
		binary.BigEndian.PutUint32(msg[:], uint32(i))
		a.WriteTo(msg[:], b.LocalAddr())
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range count {
		n, _, err := b.ReadFrom(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if got := binary.BigEndian.Uint32(buf[:n]); got != uint32(i) {
			t.Fatalf("datagram %d arrived as number %d: out of order", i, got)
		}
	}
	if tr := a.Traffic(); tr.Packets != count+3 || tr.Dropped != 0 {
		t.Errorf("a's traffic = %+v, want %d packets, none dropped", tr, count+3)
	}

	// A queue of 10: 50 datagrams at once, 40 dropped.
	small := newWAN(t, WANConfig{Regions: []string{"x", "y"}, RTT: map[[2]string]time.Duration{{"x", "y"}: 100 * time.Millisecond}, QueueLimit: 10})
	x, y := listenPacket(t, small, "x"), listenPacket(t, small, "y")
	for range 50 {
		x.WriteTo([]byte("z"), y.LocalAddr())
	}
	if tr := x.Traffic(); tr.Dropped != 40 {
		t.Errorf("dropped %d datagrams, want 40 (queue of 10)", tr.Dropped)
	}
	y.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := range 10 {
		if _, _, err := y.ReadFrom(buf); err != nil {
			t.Fatalf("datagram %d of 10: %v", i, err)
		}
	}

	// Close drops what is in flight and returns at once.
	x.WriteTo([]byte("lost"), y.LocalAddr())
	start := time.Now()
	x.Close()
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("Close took %v", d)
	}
	y.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, _, err := y.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("after the sender closed: read %q, %v; want nothing", buf, err)
	}
}

// TestBlackhole: a blackholed socket sends nothing and reads nothing.
func TestBlackhole(t *testing.T) {
	authtest.CheckLeaks(t, LeakMarkers()...)
	w := newWAN(t, ThreeRegions())
	a, b := listenPacket(t, w, "a"), listenPacket(t, w, "b")
	a.WriteTo([]byte("in flight"), b.LocalAddr())
	a.Blackhole()
	a.WriteTo([]byte("after"), b.LocalAddr())
	b.WriteTo([]byte("to a"), a.LocalAddr())
	buf := make([]byte, 64)
	b.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := b.ReadFrom(buf); err == nil {
		t.Errorf("b read %q from a blackholed socket", buf[:n])
	}
	a.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := a.ReadFrom(buf); err == nil {
		t.Errorf("blackholed a read %q", buf[:n])
	}
}

// TestConn: a TCP connection between regions a and b (70 ms) takes a
// round trip to connect and one per exchange, keeps order, honors read
// deadlines, and sends what was written before Close.
func TestConn(t *testing.T) {
	authtest.CheckLeaks(t, LeakMarkers()...)
	w := newWAN(t, ThreeRegions())
	ln, err := net.Listen("tcp", netip.AddrPortFrom(host(t, w, "b"), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var line [5]byte
				if _, err := io.ReadFull(c, line[:]); err != nil {
					return
				}
				c.Write(line[:]) // answer the first 5 bytes, then collect the rest
				rest, _ := io.ReadAll(c)
				got <- rest
			}()
		}
	}()
	from := host(t, w, "a")

	start := time.Now()
	c, err := w.Dial(context.Background(), from, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 70*time.Millisecond || d > 170*time.Millisecond {
		t.Errorf("dial took %v, want 70 ms (one RTT)", d)
	}
	if la, _ := addrOf(c.LocalAddr()); la.Addr() != from {
		t.Errorf("dialed from %v, want %v", c.LocalAddr(), from)
	}
	start = time.Now()
	c.Write([]byte("hello"))
	var ans [5]byte
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(c, ans[:]); err != nil || string(ans[:]) != "hello" {
		t.Fatalf("answer %q, %v", ans, err)
	}
	if d := time.Since(start); d < 70*time.Millisecond || d > 170*time.Millisecond {
		t.Errorf("exchange took %v, want 70 ms", d)
	}

	// A read deadline ends a read that has nothing to read.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(ans[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past the deadline: %v", err)
	}

	// Written, then closed at once: everything still arrives, in order.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	for i := 0; i < len(payload); i += 1000 {
		c.Write(payload[i:min(i+1000, len(payload))])
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case rest := <-got:
		if !bytes.Equal(rest, payload) {
			t.Errorf("server got %d bytes, want the %d written before Close", len(rest), len(payload))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server got nothing")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
	tr := w.TrafficFrom(netip.AddrPortFrom(from, 0))
	if tr.Streams != 1 || tr.StreamBytes != int64(10+len(payload)) {
		t.Errorf("traffic %+v, want 1 stream of %d bytes", tr, 10+len(payload))
	}
}
