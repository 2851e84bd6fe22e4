package realip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// Header is a parsed PROXY protocol header.
type Header struct {
	// Version is 1 (the text line) or 2 (binary).
	Version int
	// Command is "proxy" (the connection was relayed for a client: use
	// Source) or "local" (the sender opened it itself, a health check: use
	// the socket's own addresses). Version 1 has no LOCAL; its UNKNOWN line
	// parses as "proxy" with no addresses.
	Command string
	// Family names the original connection's network the way package net
	// does: "tcp4", "tcp6", "udp4", "udp6", "unix", "unixgram", or "" when
	// the header gives none (v2 UNSPEC, v1 UNKNOWN, and every LOCAL header,
	// whose address block is ignored as the spec requires).
	Family string
	// Source and Dest are the original connection's client and the address
	// it connected to. They are set for the IP families only (zero for unix,
	// unspec and LOCAL). IPv4-mapped IPv6 addresses are unmapped, so that
	// trust prefixes and GeoIP lookups see the IPv4 form.
	Source, Dest netip.AddrPort
	// TLVs counts the v2 type-length-value records after the addresses.
	// They are checked for framing and skipped, not interpreted (the
	// CRC32C record, type 0x03, is not verified).
	TLVs int
}

// ErrNoHeader means the stream does not start with a PROXY protocol header:
// its first bytes are not a v1 or v2 signature (nothing was consumed), or it
// ended or failed before its first byte arrived (the error then also wraps
// the cause, such as io.EOF or a timeout).
var ErrNoHeader = errors.New("realip: no PROXY protocol header")

const (
	// MaxV2Length caps the length field of a v2 header (the bytes after
	// its 16-byte fixed part). The field could say 65535; real senders
	// need a few hundred bytes at most (addresses plus a handful of TLVs).
	MaxV2Length = 4096
	// MaxV1Length is the longest v1 line the spec allows, CRLF included.
	MaxV1Length = 107
)

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// v2 header: signature (12), version/command (1), family/protocol (1),
// length (2), then length bytes of addresses and TLVs.
const v2Fixed = 16

// ReadHeader reads one PROXY protocol header, v2 or v1, from r.
//
// On success it has consumed exactly the header: the bytes after it stay in
// r. When r does not start with a signature it returns ErrNoHeader and
// consumes nothing. Any other error means the stream began with a signature
// but the header is malformed or incomplete; how much was consumed is then
// unspecified, and the stream is not worth reading further.
//
// ReadHeader waits only for bytes that could still belong to a signature, so
// a client that speaks first without a header is recognised at its first
// byte. It never reads past the header's declared length and rejects a v2
// length above MaxV2Length and a v1 line longer than MaxV1Length. It sets
// no deadlines: bound the read with the connection's read deadline.
func ReadHeader(r *bufio.Reader) (Header, error) {
	switch v, err := sniff(r); {
	case err != nil:
		return Header{}, err
	case v == 2:
		return readV2(r)
	case v == 1:
		return readV1(r)
	default:
		return Header{}, ErrNoHeader
	}
}

// sniff peeks at the start of r and reports which signature it carries (1,
// 2, or 0 for none). It peeks only as far as the bytes so far still match a
// signature, so a stream that is not a header is told apart at its first
// byte without waiting for more.
func sniff(r *bufio.Reader) (int, error) {
	n := 1
	for {
		b, err := r.Peek(n)
		switch {
		case len(b) >= len(sigV2) && bytes.HasPrefix(b, sigV2):
			return 2, nil
		case len(b) >= len(sigV1) && bytes.HasPrefix(b, sigV1):
			return 1, nil
		case !bytes.HasPrefix(sigV2, b) && !bytes.HasPrefix(sigV1, b):
			return 0, nil
		case err != nil && len(b) == 0:
			return 0, fmt.Errorf("%w: %w", ErrNoHeader, err)
		case err != nil:
			return 0, fmt.Errorf("realip: PROXY header: signature cut short after %d bytes: %w", len(b), unexpected(err))
		}
		// The bytes so far are a strict prefix of a signature: look at
		// what has arrived, or wait for one more byte.
		n = min(max(r.Buffered(), len(b)+1), len(sigV2))
	}
}

// unexpected turns io.EOF in the middle of a header into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func readV2(r *bufio.Reader) (Header, error) {
	fixed, err := r.Peek(v2Fixed)
	if err != nil {
		return Header{}, fmt.Errorf("realip: PROXY v2 header: reading the fixed part: %w", unexpected(err))
	}
	verCmd, famProto := fixed[12], fixed[13]
	length := int(binary.BigEndian.Uint16(fixed[14:16]))
	if verCmd>>4 != 2 {
		return Header{}, fmt.Errorf("realip: PROXY v2 header: version %d in byte 0x%02x, want 2", verCmd>>4, verCmd)
	}
	h := Header{Version: 2}
	switch verCmd & 0x0f {
	case 0x0:
		h.Command = "local"
	case 0x1:
		h.Command = "proxy"
	default:
		return Header{}, fmt.Errorf("realip: PROXY v2 header: unknown command 0x%x (want 0x0 LOCAL or 0x1 PROXY)", verCmd&0x0f)
	}
	if length > MaxV2Length {
		return Header{}, fmt.Errorf("realip: PROXY v2 header: length %d exceeds the %d-byte limit", length, MaxV2Length)
	}

	// The body: peeked in place when the buffer can hold it (no
	// allocation), else copied out. Either way exactly length bytes.
	var body []byte
	if v2Fixed+length <= r.Size() {
		b, err := r.Peek(v2Fixed + length)
		if err != nil {
			return Header{}, fmt.Errorf("realip: PROXY v2 header: reading %d bytes of addresses and TLVs: %w", length, unexpected(err))
		}
		body = b[v2Fixed:]
		defer r.Discard(v2Fixed + length) //nolint:errcheck // the bytes are buffered: Discard cannot fail
	} else {
		r.Discard(v2Fixed) //nolint:errcheck // peeked above
		body = make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return Header{}, fmt.Errorf("realip: PROXY v2 header: reading %d bytes of addresses and TLVs: %w", length, unexpected(err))
		}
	}

	if h.Command == "local" {
		// "the receiver must accept this connection as valid and must use
		// the real connection endpoints and discard the protocol block
		// including the family (which is ignored)."
		return h, nil
	}
	var addrLen int
	switch famProto {
	case 0x00: // UNSPEC: no addresses; keep the socket's.
		addrLen = 0
	case 0x11, 0x12: // INET STREAM, INET DGRAM
		h.Family, addrLen = "tcp4", 12
		if famProto == 0x12 {
			h.Family = "udp4"
		}
	case 0x21, 0x22: // INET6 STREAM, INET6 DGRAM
		h.Family, addrLen = "tcp6", 36
		if famProto == 0x22 {
			h.Family = "udp6"
		}
	case 0x31, 0x32: // UNIX STREAM, UNIX DGRAM: two 108-byte paths
		h.Family, addrLen = "unix", 216
		if famProto == 0x32 {
			h.Family = "unixgram"
		}
	default:
		return Header{}, fmt.Errorf("realip: PROXY v2 header: unknown address family/protocol 0x%02x", famProto)
	}
	if length < addrLen {
		return Header{}, fmt.Errorf("realip: PROXY v2 header: length %d is too short for %s addresses (%d bytes)", length, h.Family, addrLen)
	}
	a := body[:addrLen]
	switch addrLen {
	case 12:
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	case 36:
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])).Unmap(), binary.BigEndian.Uint16(a[32:34]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])).Unmap(), binary.BigEndian.Uint16(a[34:36]))
	}

	// TLVs: type (1), length (2, big endian), value. They must tile the
	// rest of the body exactly.
	for tlv := body[addrLen:]; len(tlv) > 0; h.TLVs++ {
		off := length - len(tlv)
		if len(tlv) < 3 {
			return Header{}, fmt.Errorf("realip: PROXY v2 header: %d stray bytes at offset %d where a TLV should start", len(tlv), off)
		}
		n := int(binary.BigEndian.Uint16(tlv[1:3]))
		if n > len(tlv)-3 {
			return Header{}, fmt.Errorf("realip: PROXY v2 header: TLV 0x%02x at offset %d: length %d exceeds the %d bytes left", tlv[0], off, n, len(tlv)-3)
		}
		tlv = tlv[3+n:]
	}
	return h, nil
}

func readV1(r *bufio.Reader) (Header, error) {
	// Read byte by byte up to the LF: bounded by MaxV1Length, independent
	// of r's buffer size, and never past the line.
	var buf [MaxV1Length]byte
	n := 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			return Header{}, fmt.Errorf("realip: PROXY v1 header: line cut short after %d bytes: %w", n, unexpected(err))
		}
		buf[n] = c
		n++
		if c == '\n' {
			break
		}
		if n == len(buf) {
			return Header{}, fmt.Errorf("realip: PROXY v1 header: no CRLF within %d bytes", MaxV1Length)
		}
	}
	line := buf[:n]
	if n < 2 || line[n-2] != '\r' {
		return Header{}, errors.New("realip: PROXY v1 header: line ends in LF without CR")
	}
	fields := strings.Split(string(line[:n-2]), " ")
	h := Header{Version: 1, Command: "proxy"}
	switch fields[1] {
	case "UNKNOWN":
		// "the receiver must ignore anything presented before the CRLF is
		// found" and use the real connection endpoints.
		return h, nil
	case "TCP4":
		h.Family = "tcp4"
	case "TCP6":
		h.Family = "tcp6"
	default:
		return Header{}, fmt.Errorf("realip: PROXY v1 header: unknown protocol %.16q (want TCP4, TCP6 or UNKNOWN)", fields[1])
	}
	if len(fields) != 6 {
		return Header{}, fmt.Errorf("realip: PROXY v1 header: %d fields, want 6 separated by single spaces (PROXY %s src dst srcport dstport)", len(fields), fields[1])
	}
	src, err1 := parseV1Addr(fields[2], h.Family)
	dst, err2 := parseV1Addr(fields[3], h.Family)
	sport, err3 := parsePort(fields[4])
	dport, err4 := parsePort(fields[5])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return Header{}, fmt.Errorf("realip: PROXY v1 header: %w", err)
	}
	h.Source = netip.AddrPortFrom(src, sport)
	h.Dest = netip.AddrPortFrom(dst, dport)
	return h, nil
}

func parseV1Addr(s, family string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("address %.46q is not an IP address", s)
	case family == "tcp4" && !a.Is4():
		return netip.Addr{}, fmt.Errorf("address %.46q is not IPv4, as TCP4 requires", s)
	case family == "tcp6" && (!a.Is6() || a.Zone() != ""):
		return netip.Addr{}, fmt.Errorf("address %.46q is not an IPv6 address without zone, as TCP6 requires", s)
	}
	return a.Unmap(), nil
}

// parsePort parses a decimal port, 0 to 65535, without sign or leading zeros.
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("port %.8q is not a decimal number 0-65535", s)
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("port %.8q is not a decimal number 0-65535", s)
		}
		n = n*10 + int(s[i]-'0')
	}
	if n > 65535 {
		return 0, fmt.Errorf("port %.8q is not a decimal number 0-65535", s)
	}
	return uint16(n), nil
}
