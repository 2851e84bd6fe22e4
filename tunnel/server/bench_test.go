package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/agent"
	"jumpgate.dev/jumpgate/tunnel/server"
	"jumpgate.dev/jumpgate/tunnel/server/servertest"
)

const benchChunk = 1 << 20

// BenchmarkTunnelThroughput moves bytes over one connection on loopback:
// raw TCP and TLS-over-TCP as baselines, then server.Dial → agent.Accept
// with several receive-window settings, in both directions ("up" is proxy
// → node, like an upload; "down" is node → proxy): "tunnel" over QUIC,
// "tcp-tunnel" over yamux over TLS over TCP (the TCP transport; its window
// is yamux's stream window). The defaults in config.go quote its results.
//
//	go test -run XXX -bench TunnelThroughput -benchtime 256x ./tunnel/server
func BenchmarkTunnelThroughput(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchStream(b, tcpPair(b, false)) })
	b.Run("tls-tcp", func(b *testing.B) { benchStream(b, tcpPair(b, true)) })
	windows := []struct {
		name         string
		stream, conn uint64
	}{
		{"win=1M/4M", 1 << 20, 4 << 20},
		{"win=6M/15M(quic-go)", 6 << 20, 15 << 20},
		{"win=16M/32M", 16 << 20, 32 << 20},
		{"win=32M/64M", 32 << 20, 64 << 20},
	}
	muxWindows := []struct {
		name   string
		stream uint64
	}{
		{"win=256K(yamux)", 256 << 10},
		{"win=1M", 1 << 20},
		{"win=4M", 4 << 20},
		{"win=16M", 16 << 20},
		{"win=32M", 32 << 20},
	}
	run := func(name string, dir string, pair func(b *testing.B) (net.Conn, net.Conn)) {
		b.Run(name+"/"+dir, func(b *testing.B) {
			proxySide, nodeSide := pair(b)
			if dir == "up" {
				benchStream(b, [2]net.Conn{proxySide, nodeSide})
			} else {
				benchStream(b, [2]net.Conn{nodeSide, proxySide})
			}
		})
	}
	for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
		for _, w := range windows {
			for _, dir := range []string{"up", "down"} {
				run(fmt.Sprintf("tunnel/rtt=%v/%s", rtt, w.name), dir, func(b *testing.B) (net.Conn, net.Conn) {
					return tunnelPair(b, w.stream, w.conn, rtt)
				})
			}
		}
		for _, w := range muxWindows {
			for _, dir := range []string{"up", "down"} {
				run(fmt.Sprintf("tcp-tunnel/rtt=%v/%s", rtt, w.name), dir, func(b *testing.B) (net.Conn, net.Conn) {
					return tcpTunnelPair(b, w.stream, rtt)
				})
			}
		}
	}
}

// delayConn delays every datagram the proxy sends by d, emulating a WAN
// round trip on loopback (windows only matter when the round trip is long).
// Without it the proxy's socket is a *net.UDPConn, with GSO and batched
// reads; with it, quic-go falls back to plain WriteTo/ReadFrom, so compare
// delayed runs with each other only.
type delayConn struct {
	net.PacketConn
	d     time.Duration
	queue chan delayed
	done  chan struct{}

	mu     sync.Mutex
	closed bool
}

type delayed struct {
	b   []byte
	to  net.Addr
	due time.Time
}

func newDelayConn(pc net.PacketConn, d time.Duration) *delayConn {
	// quic-go cannot size the buffers of a wrapped socket; do it here,
	// or the proxy drops packets at its socket and the test measures that.
	if u, ok := pc.(*net.UDPConn); ok {
		u.SetReadBuffer(8 << 20)
		u.SetWriteBuffer(8 << 20)
	}
	c := &delayConn{PacketConn: pc, d: d, queue: make(chan delayed, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for p := range c.queue {
			time.Sleep(time.Until(p.due)) // a network emulator's clock, not a test waiting
			c.PacketConn.WriteTo(p.b, p.to)
		}
	}()
	return c
}

func (c *delayConn) WriteTo(b []byte, to net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.queue <- delayed{b: append([]byte(nil), b...), to: to, due: time.Now().Add(c.d)}
	return len(b), nil
}

func (c *delayConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.queue)
	}
	c.mu.Unlock()
	<-c.done
	return c.PacketConn.Close()
}

// benchStream writes b.N chunks on pair[0] and reads them on pair[1].
func benchStream(b *testing.B, pair [2]net.Conn) {
	w, r := pair[0], pair[1]
	defer w.Close()
	defer r.Close()
	buf := make([]byte, benchChunk)
	done := make(chan int64, 1)
	go func() {
		// 32 KiB reads, as an SSH server's would be (io.Discard alone
		// would read 8 KiB at a time).
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, r, make([]byte, 32<<10))
		done <- n
	}()
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	w.(interface{ CloseWrite() error }).CloseWrite()
	if n := <-done; n != int64(b.N)*benchChunk {
		b.Fatalf("read %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
	b.StopTimer()
}

func tcpPair(b *testing.B, useTLS bool) [2]net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var cert *tls.Certificate
	if useTLS {
		cert = servertest.NewCA(b, "bench CA").Issue(b, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: cluster})
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		if useTLS {
			c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}})
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	if useTLS {
		c = tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // baseline only
	}
	return [2]net.Conn{c, <-accepted}
}

// tunnelPair returns both ends of one dialed tunnel stream.
func tunnelPair(b *testing.B, stream, conn uint64, rtt time.Duration) (proxySide, nodeSide net.Conn) {
	e := newEnvWith(b, func(pc net.PacketConn) net.PacketConn {
		if rtt == 0 {
			return pc
		}
		return newDelayConn(pc, rtt)
	}, func(c *server.Config) {
		c.StreamReceiveWindow, c.ConnectionReceiveWindow = stream, conn
	})
	a := e.startAgent("bench", func(c *agent.Config) {
		c.StreamReceiveWindow, c.ConnectionReceiveWindow = stream, conn
	})
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := a.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := e.proxy.srv.Dial(context.Background(), "bench", dialReq())
	if err != nil {
		b.Fatal(err)
	}
	return c, <-accepted
}

// tcpTunnelPair returns both ends of one dialed tunnel stream over the TCP
// transport. With rtt, the agent reaches the proxy through delayProxy.
func tcpTunnelPair(b *testing.B, window uint64, rtt time.Duration) (proxySide, nodeSide net.Conn) {
	e := newEnv(b, func(c *server.Config) { c.StreamReceiveWindow = window })
	addr := e.proxy.addr
	if rtt > 0 {
		addr = delayProxy(b, addr, rtt)
	}
	cfg := e.agentConfig("bench", e.nodeCert("bench"))
	cfg.ProxyAddrs = []string{addr}
	cfg.Transport = agent.TransportTCP
	cfg.StreamReceiveWindow = window
	a := runAgent(b, cfg)
	servertest.WaitFor(b, waitFor, "the node to connect", func() bool { return e.proxy.hasNode("bench") })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := a.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := e.proxy.srv.Dial(context.Background(), "bench", dialReq())
	if err != nil {
		b.Fatal(err)
	}
	return c, <-accepted
}

// delayProxy forwards TCP connections to target and delays every byte the
// target (the proxy) sends by d: a WAN round trip on loopback, as delayConn
// emulates for QUIC. It returns its address; it stops at the end of the
// benchmark.
func delayProxy(b *testing.B, target string, d time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, t)
			mu.Unlock()
			wg.Go(func() {
				io.Copy(t, c)
				t.(*net.TCPConn).CloseWrite()
			})
			wg.Go(func() {
				type chunk struct {
					b   []byte
					due time.Time
				}
				q := make(chan chunk, 1<<14)
				wg.Go(func() {
					defer c.(*net.TCPConn).CloseWrite()
					for ch := range q {
						time.Sleep(time.Until(ch.due)) // the emulated network's clock
						if _, err := c.Write(ch.b); err != nil {
							for range q {
							}
							return
						}
					}
				})
				defer close(q)
				for {
					buf := make([]byte, 64<<10)
					n, err := t.Read(buf)
					if n > 0 {
						q <- chunk{buf[:n], time.Now().Add(d)}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
