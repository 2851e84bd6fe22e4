package ingress

import (
	"io"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// countingReader counts every read, as the peer links count their bytes
// (the most often a data-path counter is touched).
type countingReader struct {
	r io.Reader
	c prometheus.Counter
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.c.Add(float64(n))
	return n, err
}

// BenchmarkInstrumentation measures what metrics cost on the data path:
// Pipe between two loopback TCP connections with its byte counters, with
// a counter touched on every read as well, and with no counters at all
// (metrics compiled out). The ratio between them is the instrumentation's
// cost; issue 7's target is at most 2%.
func BenchmarkInstrumentation(b *testing.B) {
	const chunk = 1 << 20
	run := func(b *testing.B, counters, perRead bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		// source → [client conn | Pipe | node conn] → sink
		srcA, srcB := tcpPair(b, ln)
		nodeA, nodeB := tcpPair(b, ln)
		var toNode, toClient prometheus.Counter
		if counters {
			toNode = prometheus.NewCounter(prometheus.CounterOpts{Name: "to_node"})
			toClient = prometheus.NewCounter(prometheus.CounterOpts{Name: "to_client"})
		}
		var client io.Reader = srcB
		if perRead {
			client = countingReader{srcB, prometheus.NewCounter(prometheus.CounterOpts{Name: "reads"})}
		}
		done := make(chan struct{})
		go func() {
			Pipe(srcB, client, nodeA, toNode, toClient)
			close(done)
		}()
		sunk := make(chan int64, 1)
		go func() {
			n, _ := io.Copy(io.Discard, nodeB)
			sunk <- n
		}()
		buf := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		for range b.N {
			if _, err := srcA.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		srcA.(*net.TCPConn).CloseWrite()
		if n := <-sunk; n != int64(b.N)*chunk {
			b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*chunk)
		}
		b.StopTimer()
		nodeB.Close()
		srcA.Close()
		<-done
	}
	b.Run("no-metrics", func(b *testing.B) { run(b, false, false) })
	b.Run("metrics", func(b *testing.B) { run(b, true, false) })
	b.Run("metrics-per-read", func(b *testing.B) { run(b, true, true) })
}

func tcpPair(b *testing.B, ln net.Listener) (net.Conn, net.Conn) {
	b.Helper()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	return c, <-acc
}

// BenchmarkCounterAdd is the cost of one data-path count: what a peer
// link pays per read (reads move up to 64 KiB), and Pipe per direction
// of a whole session.
func BenchmarkCounterAdd(b *testing.B) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "bytes_total"})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(32768)
		}
	})
}
