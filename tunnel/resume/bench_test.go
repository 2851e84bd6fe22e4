package resume

import (
	"context"
	"io"
	"net"
	"testing"
)

// BenchmarkThroughput measures one-way bulk throughput over loopback TCP,
// raw and through the resumable layer, in the same run: compare the MB/s
// of the two sub-benchmarks for the cost of the layer. Both ends run in
// this process, so on a small machine the layer's extra work (a copy on
// each side) competes with the kernel's for the same cores.
func BenchmarkThroughput(b *testing.B) {
	const writeSize = 32 << 10
	run := func(b *testing.B, w io.Writer, r io.Reader) {
		done := make(chan error, 1)
		total := int64(b.N) * writeSize
		go func() {
			buf := make([]byte, writeSize)
			var got int64
			for got < total {
				n, err := r.Read(buf)
				got += int64(n)
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		buf := make([]byte, writeSize)
		b.SetBytes(writeSize)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := w.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
	}

	b.Run("raw", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		s := <-accepted
		defer s.Close()
		run(b, c, s)
	})

	b.Run("resume", func(b *testing.B) {
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		l, err := NewListener(inner, ServerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err == nil {
				accepted <- c
			}
		}()
		c, err := Dial(context.Background(), ClientConfig{Dial: dialTo(always(inner.Addr().String()))})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		s := <-accepted
		defer s.Close()
		run(b, c, s)
	})
}
