package peer

import (
	"context"
	"io"
	"net"
	"testing"
)

const benchChunk = 1 << 20

// BenchmarkPeerThroughput moves bytes over one connection on loopback: raw
// TCP as the baseline, then one peer stream, a.Dial → b, with b's Handler
// piping it to a TCP connection standing in for the node's tunnel. "up" is
// dialer → node (a user's upload), "down" node → dialer.
//
//	go test -run XXX -bench PeerThroughput -benchtime 256x ./mesh/peer
func BenchmarkPeerThroughput(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchStream(b, tcpPair(b)) })
	b.Run("peer/up", func(b *testing.B) {
		dialer, node := peerPair(b)
		benchStream(b, [2]net.Conn{dialer, node})
	})
	b.Run("peer/down", func(b *testing.B) {
		dialer, node := peerPair(b)
		benchStream(b, [2]net.Conn{node, dialer})
	})
}

// benchStream writes b.N chunks on pair[0] and reads them on pair[1].
func benchStream(b *testing.B, pair [2]net.Conn) {
	w, r := pair[0], pair[1]
	defer w.Close()
	defer r.Close()
	buf := make([]byte, benchChunk)
	done := make(chan int64, 1)
	go func() {
		// 32 KiB reads, as an SSH server's would be.
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{r}, make([]byte, 32<<10))
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

func tcpPair(b *testing.B) [2]net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		b.Fatal("accept failed")
	}
	return [2]net.Conn{c, s}
}

// peerPair returns the dialer's end of a peer stream and the node's end of
// the TCP connection the holder pipes it to.
func peerPair(b *testing.B) (dialer, node net.Conn) {
	e := newEnv(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	holder := e.start("b", func(c *Config) {
		c.Handler = HandlerFunc(func(ctx context.Context, from string, req DialRequest) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		})
	})
	a := e.start("a")
	dialer = a.dial(b, holder, "bench")
	node = <-accepted
	if node == nil {
		b.Fatal("accept failed")
	}
	return dialer, node
}
