package udpgro

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

func listen(t *testing.T) *Conn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	pc, ok := Wrap(c)
	if !ok {
		t.Skip("this kernel refuses UDP_GRO")
	}
	return pc.(*Conn)
}

func sender(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// segmentOOB is the control message that makes one sendmsg a GSO send.
func segmentOOB(size int) []byte {
	b := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafeCmsg(b))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	b[unix.CmsgLen(0)] = byte(size)
	b[unix.CmsgLen(0)+1] = byte(size >> 8)
	return b
}

func newMsgs(n, size int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, size)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

// readAll reads datagrams in batches of 3 until want have arrived.
func readAll(t *testing.T, c *Conn, want int) (got [][]byte, from []net.Addr, oob [][]byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ms := newMsgs(3, 1452)
	for len(got) < want {
		n, err := c.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		if n == 0 || n > len(ms) {
			t.Fatalf("ReadBatch returned %d messages for a batch of %d", n, len(ms))
		}
		for _, m := range ms[:n] {
			got = append(got, bytes.Clone(m.Buffers[0][:m.N]))
			from = append(from, m.Addr)
			oob = append(oob, bytes.Clone(m.OOB[:m.NN]))
		}
	}
	return got, from, oob
}

func payload(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	copy(b, []byte{byte(i >> 8), byte(i)})
	return b
}

// A GSO send arrives as one buffer and is handed out segment by segment,
// the short last one included, with the sender's address and the ECN
// control message on each, and without UDP_GRO.
func TestGSOBufferSplitIntoDatagrams(t *testing.T) {
	r := listen(t)
	raw, _ := r.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	s := sender(t)

	const seg = 1200
	var buf []byte
	var want [][]byte
	for i := range 10 {
		want = append(want, payload(i, seg))
		buf = append(buf, want[i]...)
	}
	want = append(want, payload(10, 500))
	buf = append(buf, want[10]...)
	if _, _, err := s.WriteMsgUDP(buf, segmentOOB(seg), r.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Skipf("GSO send refused: %v", err)
	}
	got, from, oob := readAll(t, r, len(want))
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes starting %x, want %d bytes starting %x", i, len(got[i]), got[i][:2], len(want[i]), want[i][:2])
		}
		if from[i].String() != s.LocalAddr().String() {
			t.Fatalf("datagram %d from %v, want %v", i, from[i], s.LocalAddr())
		}
		msgs, err := unix.ParseSocketControlMessage(oob[i])
		if err != nil {
			t.Fatalf("datagram %d control messages: %v", i, err)
		}
		var tos bool
		for _, m := range msgs {
			if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_GRO {
				t.Fatalf("datagram %d still carries UDP_GRO", i)
			}
			tos = tos || m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS
		}
		if !tos {
			t.Fatalf("datagram %d lost its IP_TOS control message (ECN)", i)
		}
	}
	if r.cur != r.n {
		t.Fatalf("%d buffers left unread", r.n-r.cur)
	}
	if b, d := r.buffers.Load(), r.datagrams.Load(); b != 1 || d != uint64(len(want)) {
		t.Fatalf("the kernel delivered %d buffers for %d datagrams, want the GSO send as one buffer", b, d)
	}
}

// Plain datagrams from several senders, of several sizes (one empty), come
// through one by one with the right addresses.
func TestPlainDatagramsFromSeveralSenders(t *testing.T) {
	r := listen(t)
	ss := []*net.UDPConn{sender(t), sender(t), sender(t)}
	sizes := []int{1, 1452, 0, 700, 1200, 33}
	for i, size := range sizes {
		s := ss[i%len(ss)]
		if _, err := s.WriteTo(payload(i, size)[:size], r.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	got, from, _ := readAll(t, r, len(sizes))
	for i, size := range sizes {
		if want := payload(i, size)[:size]; !bytes.Equal(got[i], want) {
			t.Fatalf("datagram %d: got %d bytes, want %d", i, len(got[i]), size)
		}
		if want := ss[i%len(ss)].LocalAddr().String(); from[i].String() != want {
			t.Fatalf("datagram %d from %v, want %v", i, from[i], want)
		}
	}
}

// A datagram larger than quic-go's buffer is cut to the buffer, as the
// kernel would cut it, and the next one is intact.
func TestShortBufferTruncates(t *testing.T) {
	r := listen(t)
	s := sender(t)
	s.WriteTo(payload(1, 3000), r.LocalAddr())
	s.WriteTo(payload(2, 100), r.LocalAddr())
	got, _, _ := readAll(t, r, 2)
	if len(got[0]) != 1452 || !bytes.Equal(got[0], payload(1, 3000)[:1452]) {
		t.Fatalf("first datagram: %d bytes, want the first 1452", len(got[0]))
	}
	if !bytes.Equal(got[1], payload(2, 100)) {
		t.Fatalf("second datagram: %d bytes, want 100", len(got[1]))
	}
}

// Deadlines and Close end a waiting ReadBatch as they end a UDPConn's reads.
func TestDeadlineAndClose(t *testing.T) {
	r := listen(t)
	r.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := r.ReadBatch(newMsgs(1, 1452), 0)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	r.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := r.ReadBatch(newMsgs(1, 1452), 0)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed socket: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting ReadBatch")
	}
}

// quic-go reads through ReadBatch on both ends and moves a stream intact.
func TestQUICOverGRO(t *testing.T) {
	srvConn, cliConn := listen(t), listen(t)
	srvTr := &quic.Transport{Conn: srvConn}
	cliTr := &quic.Transport{Conn: cliConn}
	t.Cleanup(func() { srvTr.Close(); cliTr.Close() })
	cert := selfSigned(t)
	ln, err := srvTr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"t"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const size = 32 << 20
	sum := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		st, err := c.AcceptStream(context.Background())
		if err != nil {
			return
		}
		h := sha256.New()
		io.Copy(h, st)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sum <- s
		st.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cliTr.Dial(ctx, srvConn.LocalAddr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"t"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	st, err := c.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.Read(data)
	if _, err := st.Write(data); err != nil {
		t.Fatal(err)
	}
	st.Close()
	select {
	case got := <-sum:
		if got != sha256.Sum256(data) {
			t.Fatal("the stream arrived altered")
		}
	case <-ctx.Done():
		t.Fatal("the stream did not arrive")
	}
	buffers, datagrams := srvConn.buffers.Load(), srvConn.datagrams.Load()
	t.Logf("server socket: %d datagrams in %d buffers", datagrams, buffers)
	if datagrams < uint64(size/1452) {
		t.Fatalf("the server read %d datagrams through ReadBatch, want at least %d: quic-go did not read through it", datagrams, size/1452)
	}
	if c.ConnectionState().GSO && datagrams < 2*buffers {
		t.Fatalf("%d datagrams in %d buffers: the client sent with GSO but the server's reads were not coalesced", datagrams, buffers)
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

func FuzzSplitControl(f *testing.F) {
	gro := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafeCmsg(gro))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	gro[unix.CmsgLen(0)] = 0xac
	gro[unix.CmsgLen(0)+1] = 0x05
	tos := make([]byte, unix.CmsgSpace(1))
	h = (*unix.Cmsghdr)(unsafeCmsg(tos))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	f.Add(append(append([]byte(nil), tos...), gro...))
	f.Add(gro)
	f.Add(tos[:len(tos)-3])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		seg, ctl, err := splitControl(oob, nil)
		if err != nil {
			return
		}
		if len(ctl) > len(oob) {
			t.Fatalf("%d bytes of control messages out of %d", len(ctl), len(oob))
		}
		// What is kept parses again, without UDP_GRO.
		seg2, ctl2, err := splitControl(ctl, nil)
		if err != nil || seg2 != 0 || !bytes.Equal(ctl, ctl2) {
			t.Fatalf("kept control messages do not parse back: seg %d, err %v (first pass seg %d)", seg2, err, seg)
		}
	})
}

func unsafeCmsg(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
