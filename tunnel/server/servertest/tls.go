package servertest

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/udpgro"
)

// ListenBoth opens a UDP socket and a TCP listener on the same free port of
// host ("127.0.0.1"), as a proxy has: QUIC tunnels on UDP, TLS (and tunnels
// over TCP) on TCP. Both are closed at the end of the test.
func ListenBoth(t testing.TB, host string) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 50 {
		pc, err := udpgro.Listen(net.JoinHostPort(host, "0")) // as the proxy does
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close() // the TCP port is taken: try another
			continue
		}
		t.Cleanup(func() {
			ln.Close()
			pc.Close()
		})
		return pc, ln
	}
	t.Fatal("no port free on both UDP and TCP")
	return nil, nil
}

// ServeTLS accepts connections on ln as mesh/ingress does for tunnels: TLS
// 1.3 with ALPN proto.ALPN, a client certificate verified against
// clientCAs if one is given (ingress also serves clients without one), and
// each connection handed to handle, a tunnel server's HandleTLS, once the
// handshake is done. The returned stop closes ln and waits for the
// handshakes in progress; it also runs at the end of the test.
func ServeTLS(t testing.TB, ln net.Listener, cert *tls.Certificate, clientCAs func() *x509.CertPool, handle func(*tls.Conn)) (stop func()) {
	base := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}, NextProtos: []string{proto.ALPN}}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = clientCAs()
		return c, nil
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				tc := tls.Server(raw, base)
				raw.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					// As mesh/ingress does: let the alert reach the
					// client before closing, instead of a reset.
					raw.(*net.TCPConn).CloseWrite()
					raw.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
					io.Copy(io.Discard, io.LimitReader(raw, 64<<10))
					raw.Close()
					return
				}
				raw.SetDeadline(time.Time{})
				handle(tc)
			})
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}

// DropConn is a PacketConn that, while blocked, drops every datagram it
// receives, as a firewall that blocks UDP does: the other side's QUIC
// handshake gets no answer at all.
type DropConn struct {
	net.PacketConn
	blocked atomic.Bool
}

// NewDropConn wraps pc, blocked or not.
func NewDropConn(pc net.PacketConn, blocked bool) *DropConn {
	c := &DropConn{PacketConn: pc}
	c.blocked.Store(blocked)
	return c
}

// SetBlocked blocks or unblocks c.
func (c *DropConn) SetBlocked(b bool) { c.blocked.Store(b) }

// ReadFrom returns the next datagram that arrives while c is not blocked.
func (c *DropConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil || !c.blocked.Load() {
			return n, addr, err
		}
	}
}

// SetReadBuffer sizes the socket's receive buffer, as quic-go asks of every
// socket (it cannot see through the wrapper).
func (c *DropConn) SetReadBuffer(n int) error {
	if u, ok := c.PacketConn.(interface{ SetReadBuffer(int) error }); ok {
		return u.SetReadBuffer(n)
	}
	return nil
}

// SetWriteBuffer sizes the socket's send buffer; see SetReadBuffer.
func (c *DropConn) SetWriteBuffer(n int) error {
	if u, ok := c.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		return u.SetWriteBuffer(n)
	}
	return nil
}
