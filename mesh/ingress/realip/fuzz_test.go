package realip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzReadHeader: no input panics; a header that parses was consumed
// exactly, no more and no less; "no header" consumed nothing.
func FuzzReadHeader(f *testing.F) {
	tcp4 := v2(0x21, 0x11, inet4("192.0.2.1", "198.51.100.2", 56324, 443))
	for _, seed := range [][]byte{
		tcp4,
		v2(0x21, 0x21, inet6("2001:db8::1", "2001:db8::2", 1, 65535)),
		v2(0x21, 0x12, inet4("192.0.2.1", "198.51.100.2", 53000, 53)),
		v2(0x21, 0x22, inet6("::ffff:192.0.2.9", "2001:db8::2", 1, 2)),
		v2(0x21, 0x31, unixAddrs("/a", "/b")),
		v2(0x21, 0x00, nil),
		v2(0x20, 0x00, nil),
		v2(0x20, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
		v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 8443), tlv(0x01, "h2"), tlv(0xEA, "\x01vpce-0123"), tlv(0x04, "")),
		v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 8443), []byte{0x05, 0x00, 0x09, 'x'}),
		tcp4[:20],
		tcp4[:13],
		sigV2[:5],
		v2lenOverride(65535, nil),
		v2lenOverride(MaxV2Length, make([]byte, 100)),
		append([]byte("\r\n\r\n\x00\r\nQUIX\n"), tcp4[12:]...),
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"),
		[]byte("PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"),
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.2 5632"),
		[]byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
		[]byte("PROXY " + strings.Repeat("x", 200)),
		[]byte("PRO"),
		[]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
		nil,
	} {
		f.Add(append(seed, payload...), uint8(0), false)
		f.Add(seed, uint8(255), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, bufSize uint8, oneByte bool) {
		var src io.Reader = bytes.NewReader(data)
		if oneByte {
			src = iotest.OneByteReader(src)
		}
		r := bufio.NewReaderSize(src, 16+int(bufSize))
		h, err := ReadHeader(r)
		rest, _ := io.ReadAll(r)
		switch {
		case err == nil:
			var n int
			switch {
			case bytes.HasPrefix(data, sigV2):
				n = v2Fixed + int(binary.BigEndian.Uint16(data[14:16]))
			case bytes.HasPrefix(data, sigV1):
				n = bytes.IndexByte(data, '\n') + 1
			default:
				t.Fatalf("parsed %+v from input without a signature", h)
			}
			if !bytes.Equal(rest, data[n:]) {
				t.Fatalf("header of %d bytes, but %d bytes are left of %d", n, len(rest), len(data))
			}
			checkHeader(t, h, data)
		case errors.Is(err, ErrNoHeader):
			if len(data) > 0 && !bytes.Equal(rest, data) {
				t.Fatalf("ErrNoHeader, but %d of %d bytes were consumed", len(data)-len(rest), len(data))
			}
			if bytes.HasPrefix(data, sigV1) || bytes.HasPrefix(data, sigV2) {
				t.Fatalf("ErrNoHeader for input with a signature: %v", err)
			}
		default:
			if !strings.HasPrefix(err.Error(), "realip: PROXY ") {
				t.Fatalf("error without context: %v", err)
			}
		}
	})
}

func checkHeader(t *testing.T, h Header, data []byte) {
	t.Helper()
	if h.Version != 1 && h.Version != 2 || h.Command != "proxy" && h.Command != "local" {
		t.Fatalf("bad header %+v", h)
	}
	switch h.Family {
	case "tcp4", "tcp6", "udp4", "udp6":
		if !h.Source.IsValid() || !h.Dest.IsValid() || h.Source.Addr().Is4In6() || h.Source.Addr().Zone() != "" {
			t.Fatalf("%s header without proper addresses: %+v", h.Family, h)
		}
	default:
		if h.Source.IsValid() || h.Dest.IsValid() {
			t.Fatalf("%q header with addresses: %+v", h.Family, h)
		}
	}
	if h.Command == "local" && (h.Family != "" || h.TLVs != 0) {
		t.Fatalf("LOCAL header kept its address block: %+v", h)
	}
	if h.Version == 2 && h.Family == "tcp4" {
		if got := netip.AddrFrom4([4]byte(data[16:20])); got != h.Source.Addr() {
			t.Fatalf("source %s, but the bytes say %s", h.Source.Addr(), got)
		}
	}
}

// FuzzClientAddr checks the allocation-free right-to-left walk against the
// obvious implementation, and that an untrusted peer is never overridden.
// Newlines in headers separate header lines.
func FuzzClientAddr(f *testing.F) {
	for _, seed := range []struct {
		remote, headers string
		rfc7239         bool
	}{
		{"10.0.0.1:5000", "203.0.113.7, 10.0.0.3, 10.0.0.2", false},
		{"10.0.0.1:5000", "1.1.1.1, 203.0.113.7\n10.0.0.3\n10.0.0.2", false},
		{"203.0.113.9:5000", "1.1.1.1", false},
		{"10.0.0.1:5000", " \t203.0.113.7 \t,,\t10.0.0.2,", false},
		{"10.0.0.1:5000", "[2001:db8::7]:443, [2001:db8:ffff::1]:8443, 2001:db8::8", false},
		{"[::ffff:10.0.0.1]:5000", "::ffff:203.0.113.7", false},
		{"10.0.0.1:5000", "203.0.113.7, bogus, 10.0.0.2", false},
		{"10.0.0.1:5000", "fe80::1%eth0, 203.0.113.7:99999", false},
		{"10.0.0.1", "203.0.113.7", false},
		{"@", "203.0.113.7", false},
		{"10.0.0.1:5000", `for=192.0.2.60;proto=http;by=203.0.113.43`, true},
		{"10.0.0.1:5000", `for=192.0.2.43, for="[2001:db8:cafe::17]:4711", for=10.0.0.3`, true},
		{"10.0.0.1:5000", `for=unknown, for="_x", for="[2001:db8::1]:_abc";For=1.2.3.4`, true},
		{"10.0.0.1:5000", `for="1.1.1.1, for=203.0.113.9`, true},
	} {
		f.Add(seed.remote, seed.headers, seed.rfc7239)
	}
	f.Fuzz(func(t *testing.T, remote, headers string, rfc7239 bool) {
		r := &http.Request{RemoteAddr: remote, Header: http.Header{}}
		name := "X-Forwarded-For"
		if rfc7239 {
			name = "Forwarded"
		}
		for line := range strings.SplitSeq(headers, "\n") {
			r.Header.Add(name, line)
		}
		fw := hops
		fw.RFC7239 = rfc7239
		got, spoofed := fw.ClientAddr(r)
		want, wantSpoofed := referenceClientAddr(fw, r)
		if got != want || spoofed != wantSpoofed {
			t.Fatalf("ClientAddr = %v, %v; the reference says %v, %v", got, spoofed, want, wantSpoofed)
		}
		peer, ok := parseRemoteAddr(remote)
		if (!ok || !containsAddr(fw.TrustedHops, peer)) && got != peer {
			t.Fatalf("untrusted peer %v overridden by %v", peer, got)
		}
		if got != peer && (got.Zone() != "" || got.Is4In6()) {
			t.Fatalf("ClientAddr returned %v from a header", got)
		}
	})
}
