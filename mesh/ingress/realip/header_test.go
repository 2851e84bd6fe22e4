package realip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

// v2 builds a version 2 header: verCmd (0x21 PROXY, 0x20 LOCAL), famProto,
// then the address block and TLVs as given, with the length computed.
func v2(verCmd, famProto byte, addrs []byte, tlvs ...[]byte) []byte {
	body := append([]byte(nil), addrs...)
	for _, t := range tlvs {
		body = append(body, t...)
	}
	b := append([]byte(nil), sigV2...)
	b = append(b, verCmd, famProto)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// v2lenOverride builds a v2 header whose length field says n, followed by
// body.
func v2lenOverride(n uint16, body []byte) []byte {
	b := append([]byte(nil), sigV2...)
	b = append(b, 0x21, 0x11)
	b = binary.BigEndian.AppendUint16(b, n)
	return append(b, body...)
}

func inet4(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func inet6(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func unixAddrs(src, dst string) []byte {
	b := make([]byte, 216)
	copy(b, src)
	copy(b[108:], dst)
	return b
}

func tlv(typ byte, value string) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, uint16(len(value)))
	return append(b, value...)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

const payload = "\x16\x03\x01 the client's first bytes"

func TestReadHeaderValid(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Header
	}{
		{"v2 TCP4", v2(0x21, 0x11, inet4("192.0.2.1", "198.51.100.2", 56324, 443)),
			Header{Version: 2, Command: "proxy", Family: "tcp4", Source: ap("192.0.2.1:56324"), Dest: ap("198.51.100.2:443")}},
		{"v2 UDP4", v2(0x21, 0x12, inet4("192.0.2.1", "198.51.100.2", 53000, 53)),
			Header{Version: 2, Command: "proxy", Family: "udp4", Source: ap("192.0.2.1:53000"), Dest: ap("198.51.100.2:53")}},
		{"v2 TCP6", v2(0x21, 0x21, inet6("2001:db8::1", "2001:db8::2", 1, 65535)),
			Header{Version: 2, Command: "proxy", Family: "tcp6", Source: ap("[2001:db8::1]:1"), Dest: ap("[2001:db8::2]:65535")}},
		{"v2 UDP6", v2(0x21, 0x22, inet6("2001:db8::1", "2001:db8::2", 4500, 4500)),
			Header{Version: 2, Command: "proxy", Family: "udp6", Source: ap("[2001:db8::1]:4500"), Dest: ap("[2001:db8::2]:4500")}},
		{"v2 TCP6 with mapped IPv4 unmapped", v2(0x21, 0x21, inet6("::ffff:192.0.2.9", "::ffff:198.51.100.2", 40000, 443)),
			Header{Version: 2, Command: "proxy", Family: "tcp6", Source: ap("192.0.2.9:40000"), Dest: ap("198.51.100.2:443")}},
		{"v2 UNIX stream", v2(0x21, 0x31, unixAddrs("/run/lb.sock", "/run/proxy.sock")),
			Header{Version: 2, Command: "proxy", Family: "unix"}},
		{"v2 UNIX dgram", v2(0x21, 0x32, unixAddrs("/a", "/b")),
			Header{Version: 2, Command: "proxy", Family: "unixgram"}},
		{"v2 UNSPEC", v2(0x21, 0x00, nil),
			Header{Version: 2, Command: "proxy"}},
		{"v2 LOCAL", v2(0x20, 0x00, nil),
			Header{Version: 2, Command: "local"}},
		{"v2 LOCAL ignores its family and addresses", v2(0x20, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
			Header{Version: 2, Command: "local"}},
		{"v2 LOCAL with an unknown family", v2(0x20, 0xff, []byte("whatever")),
			Header{Version: 2, Command: "local"}},
		{"v2 TCP4 with TLVs", v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 8443),
			tlv(0x01, "h2"), tlv(0x05, "unique-id"), tlv(0xEA, "\x01vpce-0123456789abcdef0"), tlv(0x04, "")),
			Header{Version: 2, Command: "proxy", Family: "tcp4", Source: ap("203.0.113.7:5000"), Dest: ap("10.0.0.1:8443"), TLVs: 4}},
		{"v2 TLVs longer than the reader's buffer", v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 8443),
			tlv(0x04, strings.Repeat("p", 3000))),
			Header{Version: 2, Command: "proxy", Family: "tcp4", Source: ap("203.0.113.7:5000"), Dest: ap("10.0.0.1:8443"), TLVs: 1}},
		{"v2 at the length limit", v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 8443),
			tlv(0x04, strings.Repeat("p", MaxV2Length-12-3))),
			Header{Version: 2, Command: "proxy", Family: "tcp4", Source: ap("203.0.113.7:5000"), Dest: ap("10.0.0.1:8443"), TLVs: 1}},
		{"v1 TCP4", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"),
			Header{Version: 1, Command: "proxy", Family: "tcp4", Source: ap("192.0.2.1:56324"), Dest: ap("198.51.100.2:443")}},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n"),
			Header{Version: 1, Command: "proxy", Family: "tcp6", Source: ap("[2001:db8::1]:0"), Dest: ap("[2001:db8::2]:65535")}},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"),
			Header{Version: 1, Command: "proxy"}},
		{"v1 UNKNOWN with addresses", []byte("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"),
			Header{Version: 1, Command: "proxy"}},
		{"v1 at the length limit", []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
			Header{Version: 1, Command: "proxy", Family: "tcp6",
				Source: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), Dest: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, mode := range []string{"default buffer", "16-byte buffer", "one byte per read"} {
				var src io.Reader = bytes.NewReader(append(append([]byte(nil), tt.in...), payload...))
				size := 4096
				switch mode {
				case "16-byte buffer":
					size = 16
				case "one byte per read":
					src = iotest.OneByteReader(src)
				}
				r := bufio.NewReaderSize(src, size)
				got, err := ReadHeader(r)
				if err != nil {
					t.Fatalf("%s: %v", mode, err)
				}
				if got != tt.want {
					t.Errorf("%s: got %+v, want %+v", mode, got, tt.want)
				}
				rest, _ := io.ReadAll(r)
				if string(rest) != payload {
					t.Errorf("%s: the bytes after the header are %q, want %q", mode, rest, payload)
				}
			}
		})
	}
}

func TestReadHeaderInvalid(t *testing.T) {
	tcp4 := v2(0x21, 0x11, inet4("192.0.2.1", "198.51.100.2", 56324, 443))
	tests := []struct {
		name string
		in   []byte
		want string // the whole error message
	}{
		{"v2 huge length", v2lenOverride(65535, nil),
			"realip: PROXY v2 header: length 65535 exceeds the 4096-byte limit"},
		{"v2 length one over the limit", v2lenOverride(MaxV2Length+1, nil),
			"realip: PROXY v2 header: length 4097 exceeds the 4096-byte limit"},
		{"v2 version 1 nibble", v2(0x11, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
			"realip: PROXY v2 header: version 1 in byte 0x11, want 2"},
		{"v2 version 3", v2(0x31, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
			"realip: PROXY v2 header: version 3 in byte 0x31, want 2"},
		{"v2 unknown command", v2(0x22, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
			"realip: PROXY v2 header: unknown command 0x2 (want 0x0 LOCAL or 0x1 PROXY)"},
		{"v2 unknown family", v2(0x21, 0x41, nil),
			"realip: PROXY v2 header: unknown address family/protocol 0x41"},
		{"v2 unknown transport", v2(0x21, 0x13, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
			"realip: PROXY v2 header: unknown address family/protocol 0x13"},
		{"v2 TCP4 too short", v2(0x21, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2)[:11]),
			"realip: PROXY v2 header: length 11 is too short for tcp4 addresses (12 bytes)"},
		{"v2 TCP6 with TCP4 addresses", v2(0x21, 0x21, inet4("192.0.2.1", "198.51.100.2", 1, 2)),
			"realip: PROXY v2 header: length 12 is too short for tcp6 addresses (36 bytes)"},
		{"v2 UNIX too short", v2(0x21, 0x31, make([]byte, 215)),
			"realip: PROXY v2 header: length 215 is too short for unix addresses (216 bytes)"},
		{"v2 TLV overruns", v2(0x21, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2), tlv(0x01, "h2"), []byte{0x05, 0x00, 0x09, 'x'}),
			"realip: PROXY v2 header: TLV 0x05 at offset 17: length 9 exceeds the 1 bytes left"},
		{"v2 stray bytes after TLVs", v2(0x21, 0x11, inet4("192.0.2.1", "198.51.100.2", 1, 2), tlv(0x01, "h2"), []byte{0x04, 0x00}),
			"realip: PROXY v2 header: 2 stray bytes at offset 17 where a TLV should start"},
		{"v2 truncated fixed part", tcp4[:14],
			"realip: PROXY v2 header: reading the fixed part: unexpected EOF"},
		{"v2 truncated addresses", tcp4[:20],
			"realip: PROXY v2 header: reading 12 bytes of addresses and TLVs: unexpected EOF"},
		{"v2 signature cut short", sigV2[:7],
			"realip: PROXY header: signature cut short after 7 bytes: unexpected EOF"},
		{"v1 signature cut short", []byte("PROXY"),
			"realip: PROXY header: signature cut short after 5 bytes: unexpected EOF"},
		{"v1 no CRLF", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443" + strings.Repeat(" ", 100) + "\r\n"),
			"realip: PROXY v1 header: no CRLF within 107 bytes"},
		{"v1 LF only", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"),
			"realip: PROXY v1 header: line ends in LF without CR"},
		{"v1 cut short", []byte("PROXY TCP4 192.0.2.1 19"),
			"realip: PROXY v1 header: line cut short after 23 bytes: unexpected EOF"},
		{"v1 unknown protocol", []byte("PROXY UDP4 192.0.2.1 198.51.100.2 56324 443\r\n"),
			`realip: PROXY v1 header: unknown protocol "UDP4" (want TCP4, TCP6 or UNKNOWN)`},
		{"v1 double space", []byte("PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n"),
			"realip: PROXY v1 header: 7 fields, want 6 separated by single spaces (PROXY TCP4 src dst srcport dstport)"},
		{"v1 missing port", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"),
			"realip: PROXY v1 header: 5 fields, want 6 separated by single spaces (PROXY TCP4 src dst srcport dstport)"},
		{"v1 empty protocol", []byte("PROXY \r\n"),
			`realip: PROXY v1 header: unknown protocol "" (want TCP4, TCP6 or UNKNOWN)`},
		{"v1 TCP4 with IPv6", []byte("PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n"),
			`realip: PROXY v1 header: address "2001:db8::1" is not IPv4, as TCP4 requires`},
		{"v1 TCP6 with IPv4", []byte("PROXY TCP6 2001:db8::1 198.51.100.2 56324 443\r\n"),
			`realip: PROXY v1 header: address "198.51.100.2" is not an IPv6 address without zone, as TCP6 requires`},
		{"v1 TCP6 with zone", []byte("PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 443\r\n"),
			`realip: PROXY v1 header: address "fe80::1%eth0" is not an IPv6 address without zone, as TCP6 requires`},
		{"v1 port out of range and garbage address", []byte("PROXY TCP4 192.0.2.1 example.com 65536 443\r\n"),
			"realip: PROXY v1 header: address \"example.com\" is not an IP address\nport \"65536\" is not a decimal number 0-65535"},
		{"v1 port with leading zero", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n"),
			`realip: PROXY v1 header: port "056324" is not a decimal number 0-65535`},
		{"v1 signed port", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 +5 443\r\n"),
			`realip: PROXY v1 header: port "+5" is not a decimal number 0-65535`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadHeader(bufio.NewReader(bytes.NewReader(tt.in)))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got error %v\nwant         %s", err, tt.want)
			}
			if errors.Is(err, ErrNoHeader) {
				t.Errorf("a malformed header is reported as ErrNoHeader: %v", err)
			}
		})
	}
}

func TestReadHeaderNoHeader(t *testing.T) {
	for _, in := range []string{
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
		"GET / HTTP/1.1\r\n",
		"SSH-2.0-OpenSSH_9.6\r\n",
		"\r\n\r\n\x00\r\nQUIX\n", // one byte off the v2 signature
		"PROXY\tTCP4",
		"P",
		"\r",
	} {
		r := bufio.NewReader(bytes.NewReader([]byte(in + "tail")))
		if _, err := ReadHeader(r); err != ErrNoHeader {
			t.Errorf("%q: got %v, want ErrNoHeader", in, err)
		}
		if rest, _ := io.ReadAll(r); string(rest) != in+"tail" {
			t.Errorf("%q: ReadHeader consumed bytes; left %q", in, rest)
		}
	}

	_, err := ReadHeader(bufio.NewReader(bytes.NewReader(nil)))
	if !errors.Is(err, ErrNoHeader) || !errors.Is(err, io.EOF) {
		t.Errorf("empty stream: got %v, want ErrNoHeader wrapping io.EOF", err)
	}
}

// TestReadHeaderFirstByte checks that a stream that is not a header is told
// apart at its first byte: a server-speaks-first protocol's client (SSH)
// sends only a little, and must not be kept waiting for 12 bytes.
func TestReadHeaderFirstByte(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close()
	go pw.Write([]byte("S")) // and nothing more until the test ends
	if _, err := ReadHeader(bufio.NewReader(pr)); err != ErrNoHeader {
		t.Fatalf("got %v, want ErrNoHeader", err)
	}
}

func BenchmarkReadHeaderV2(b *testing.B) {
	in := append(v2(0x21, 0x11, inet4("203.0.113.7", "10.0.0.1", 5000, 8443), tlv(0xEA, "\x01vpce-0123456789abcdef0")), payload...)
	src := bytes.NewReader(in)
	r := bufio.NewReaderSize(src, brSize)
	b.SetBytes(int64(len(in) - len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(in)
		r.Reset(src)
		h, err := ReadHeader(r)
		if err != nil || h.TLVs != 1 {
			b.Fatal(h, err)
		}
	}
}
