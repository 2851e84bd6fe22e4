package resume

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Magic is the first 4 bytes a resumable client writes on every transport.
// A plain SSH client writes "SSH-" first instead.
const Magic = "JGRS"

// Version is the resume protocol version this package speaks. It is the
// byte after Magic, in both directions.
const Version = 1

// Sizes of the wire format; see the package comment.
const (
	preambleLen  = len(Magic) + 1
	headerLen    = 5        // type byte + uint32 body length
	maxData      = 64 << 10 // largest DATA body
	maxReason    = 1024     // longest ERROR reason, in bytes
	maxControl   = 1 + maxReason
	sessionIDLen = 16
	nonceLen     = 32
	offsetLen    = 8
)

// proofContext starts the message a client signs to resume.
const proofContext = "jumpgate-resume-v1"

// frameType is the first byte of a frame.
type frameType byte

// Frame types. Zero is never valid. The handshake types appear only before
// the data phase, the others only in it (ERROR in both).
const (
	frameHello     frameType = 0x01 // client → node
	frameWelcome   frameType = 0x02 // node → client, new session
	frameChallenge frameType = 0x03 // node → client, resumption
	frameProof     frameType = 0x04 // client → node, resumption
	frameResumed   frameType = 0x05 // node → client, resumption
	frameError     frameType = 0x0f // either side, then the transport closes
	frameData      frameType = 0x10
	frameAck       frameType = 0x11
	frameFin       frameType = 0x12
	frameClose     frameType = 0x13
	framePing      frameType = 0x14
	framePong      frameType = 0x15
)

func (t frameType) String() string {
	switch t {
	case frameHello:
		return "HELLO"
	case frameWelcome:
		return "WELCOME"
	case frameChallenge:
		return "CHALLENGE"
	case frameProof:
		return "PROOF"
	case frameResumed:
		return "RESUMED"
	case frameError:
		return "ERROR"
	case frameData:
		return "DATA"
	case frameAck:
		return "ACK"
	case frameFin:
		return "FIN"
	case frameClose:
		return "CLOSE"
	case framePing:
		return "PING"
	case framePong:
		return "PONG"
	}
	return fmt.Sprintf("frame type 0x%02x", byte(t))
}

// HELLO kinds.
const (
	helloNew    = 1
	helloResume = 2
)

// ERROR codes.
const (
	codeRefused     = 1 // resumption refused; final
	codeProtocol    = 2 // the peer broke the protocol; the session is over
	codeShutdown    = 3 // the node is shutting down; the session is over
	codeUnsupported = 4 // the node does not speak the client's version
)

// errProtocol marks violations of the wire protocol; they end the session.
var errProtocol = errors.New("resume protocol error")

func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, args...))
}

// bodyLimits returns the smallest and largest body of a frame of type t,
// and whether t is known at all.
func bodyLimits(t frameType) (lo, hi int, ok bool) {
	switch t {
	case frameHello:
		return 1 + ed25519.PublicKeySize, 1 + ed25519.PublicKeySize, true // the larger kind; parseHello checks each
	case frameWelcome:
		return sessionIDLen + nonceLen, sessionIDLen + nonceLen, true
	case frameChallenge:
		return nonceLen, nonceLen, true
	case frameProof:
		return ed25519.SignatureSize, ed25519.SignatureSize, true
	case frameResumed, frameAck, frameFin, frameClose:
		return offsetLen, offsetLen, true
	case frameError:
		return 1, maxControl, true
	case frameData:
		return 1, maxData, true
	case framePing, framePong:
		return 0, 0, true
	}
	return 0, 0, false
}

// checkHeader validates a frame header before anything is read or
// allocated for its body.
func checkHeader(t frameType, n uint32) error {
	lo, hi, ok := bodyLimits(t)
	if !ok {
		return protocolErrorf("unknown %s (this side speaks resume version %d)", t, Version)
	}
	if t == frameHello {
		lo = 1 + sessionIDLen + offsetLen
	}
	if n < uint32(lo) || n > uint32(hi) {
		return protocolErrorf("%s frame of %d bytes (allowed %d to %d)", t, n, lo, hi)
	}
	return nil
}

func appendHeader(dst []byte, t frameType, n int) []byte {
	dst = append(dst, byte(t))
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

func appendFrame(dst []byte, t frameType, body []byte) []byte {
	return append(appendHeader(dst, t, len(body)), body...)
}

func appendOffsetFrame(dst []byte, t frameType, off uint64) []byte {
	dst = appendHeader(dst, t, offsetLen)
	return binary.BigEndian.AppendUint64(dst, off)
}

func appendPreamble(dst []byte) []byte {
	return append(append(dst, Magic...), Version)
}

// errorFrame encodes an ERROR frame; a long reason is cut at a rune
// boundary.
func errorFrame(code byte, reason string) []byte {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b := appendHeader(make([]byte, 0, headerLen+1+len(reason)), frameError, 1+len(reason))
	b = append(b, code)
	return append(b, reason...)
}

// parseError decodes an ERROR body.
func parseError(body []byte) (code byte, reason string) {
	if len(body) == 0 {
		return 0, ""
	}
	return body[0], string(bytes.ToValidUTF8(body[1:], []byte("?")))
}

// hello is the client's opening message.
type hello struct {
	kind     byte
	key      ed25519.PublicKey // new
	id       [sessionIDLen]byte
	received uint64 // resume: DATA bytes the client has received
}

func (h hello) append(dst []byte) []byte {
	switch h.kind {
	case helloNew:
		dst = appendHeader(dst, frameHello, 1+ed25519.PublicKeySize)
		dst = append(dst, helloNew)
		return append(dst, h.key...)
	default:
		dst = appendHeader(dst, frameHello, 1+sessionIDLen+offsetLen)
		dst = append(dst, helloResume)
		dst = append(dst, h.id[:]...)
		return binary.BigEndian.AppendUint64(dst, h.received)
	}
}

func parseHello(body []byte) (hello, error) {
	var h hello
	if len(body) == 0 {
		return h, protocolErrorf("empty HELLO")
	}
	h.kind = body[0]
	switch h.kind {
	case helloNew:
		if len(body) != 1+ed25519.PublicKeySize {
			return h, protocolErrorf("HELLO new of %d bytes", len(body))
		}
		h.key = ed25519.PublicKey(bytes.Clone(body[1:]))
	case helloResume:
		if len(body) != 1+sessionIDLen+offsetLen {
			return h, protocolErrorf("HELLO resume of %d bytes", len(body))
		}
		copy(h.id[:], body[1:])
		h.received = binary.BigEndian.Uint64(body[1+sessionIDLen:])
	default:
		return h, protocolErrorf("HELLO of unknown kind %d", h.kind)
	}
	return h, nil
}

// proofMessage is what a client signs to resume session id after the
// node's challenge nonce, having received `received` bytes.
func proofMessage(id [sessionIDLen]byte, nonce []byte, received uint64) []byte {
	m := make([]byte, 0, len(proofContext)+sessionIDLen+nonceLen+offsetLen)
	m = append(m, proofContext...)
	m = append(m, id[:]...)
	m = append(m, nonce...)
	return binary.BigEndian.AppendUint64(m, received)
}

// handshakeBuf holds one handshake frame; reading into it allocates nothing
// whatever the peer announces.
type handshakeBuf [headerLen + maxControl]byte

// readHandshakeFrame reads exactly one frame, and nothing after it: the data
// phase follows on the same transport and belongs to another reader.
func readHandshakeFrame(r io.Reader, buf *handshakeBuf) (frameType, []byte, error) {
	if _, err := io.ReadFull(r, buf[:headerLen]); err != nil {
		return 0, nil, err
	}
	t := frameType(buf[0])
	n := binary.BigEndian.Uint32(buf[1:headerLen])
	if err := checkHeader(t, n); err != nil {
		return t, nil, err
	}
	if t == frameData || t == framePing || t == framePong || t == frameAck || t == frameFin || t == frameClose {
		return t, nil, protocolErrorf("%s frame during the handshake", t)
	}
	body := buf[headerLen : headerLen+int(n)]
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, err
	}
	return t, body, nil
}

// readClientOpening reads what a resumable client sends first, after the
// node has sniffed Magic: the version byte and the HELLO. A version this
// node does not speak is reported with the version, so the node can say so.
func readClientOpening(r io.Reader, buf *handshakeBuf) (version byte, h hello, err error) {
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return 0, h, fmt.Errorf("read version: %w", err)
	}
	version = buf[0]
	if version != Version {
		return version, h, nil
	}
	t, body, err := readHandshakeFrame(r, buf)
	if err != nil {
		return version, h, fmt.Errorf("read HELLO: %w", err)
	}
	if t != frameHello {
		return version, h, protocolErrorf("expected HELLO, got %s", t)
	}
	h, err = parseHello(body)
	return version, h, err
}

// readNodePreamble reads the node's preamble. An older node, which does not
// speak resume, answers with its SSH banner: that is ErrUnsupported.
func readNodePreamble(r io.Reader) error {
	var b [preambleLen]byte
	if _, err := io.ReadFull(r, b[:len(Magic)]); err != nil {
		return fmt.Errorf("read the node's answer: %w", err)
	}
	if string(b[:len(Magic)]) == "SSH-" {
		return fmt.Errorf("%w (it answered with an SSH banner)", ErrUnsupported)
	}
	if string(b[:len(Magic)]) != Magic {
		return protocolErrorf("the node answered %q, neither %q nor an SSH banner", b[:len(Magic)], Magic)
	}
	if _, err := io.ReadFull(r, b[len(Magic):]); err != nil {
		return fmt.Errorf("read the node's version: %w", err)
	}
	if v := b[len(Magic)]; v != Version {
		return fmt.Errorf("%w: the node speaks resume version %d, this client %d", ErrUnsupported, v, Version)
	}
	return nil
}

// readNodeFrame reads the node's next handshake frame and turns an ERROR
// into the error it stands for.
func readNodeFrame(r io.Reader, buf *handshakeBuf, want frameType) ([]byte, error) {
	t, body, err := readHandshakeFrame(r, buf)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", want, err)
	}
	if t == frameError {
		code, reason := parseError(body)
		switch code {
		case codeRefused:
			return nil, &refusedError{reason: reason}
		case codeUnsupported:
			return nil, fmt.Errorf("%w: %s", ErrUnsupported, reason)
		}
		return nil, fmt.Errorf("the node ended the handshake: %s", reason)
	}
	if t != want {
		return nil, protocolErrorf("expected %s, got %s", want, t)
	}
	return body, nil
}

// frameSink receives what a frameParser finds. Slices alias the parser's
// input and are valid only during the call.
type frameSink interface {
	// data is called with each piece of a DATA body, in order; one frame
	// may arrive in several pieces.
	data(p []byte) error
	// dataStart is called at each DATA header, before its body.
	dataStart() error
	// control is called with every other frame, whole.
	control(t frameType, body []byte) error
}

// frameParser splits the data phase into frames. It holds no buffer: parse
// is given the bytes not yet parsed and says how many it consumed. What it
// leaves is an incomplete header or control frame, never more than
// headerLen+maxControl-1 bytes, so a reader needs no buffer larger than a
// control frame to make progress; DATA bodies are passed on piece by piece
// as they arrive, never gathered.
type frameParser struct {
	dataLeft int // body bytes of the current DATA frame not yet seen
}

func (p *frameParser) parse(b []byte, sink frameSink) (int, error) {
	n := 0
	for {
		if p.dataLeft > 0 {
			m := min(p.dataLeft, len(b)-n)
			if m == 0 {
				return n, nil
			}
			if err := sink.data(b[n : n+m]); err != nil {
				return n, err
			}
			n += m
			p.dataLeft -= m
			continue
		}
		if len(b)-n < headerLen {
			return n, nil
		}
		t := frameType(b[n])
		size := binary.BigEndian.Uint32(b[n+1 : n+headerLen])
		if err := checkHeader(t, size); err != nil {
			return n, err
		}
		if t == frameData {
			if err := sink.dataStart(); err != nil {
				return n, err
			}
			p.dataLeft = int(size)
			n += headerLen
			continue
		}
		switch t {
		case frameAck, frameFin, frameClose, framePing, framePong, frameError:
		default:
			return n, protocolErrorf("%s frame after the handshake", t)
		}
		end := n + headerLen + int(size)
		if len(b) < end {
			return n, nil
		}
		if err := sink.control(t, b[n+headerLen:end]); err != nil {
			return n, err
		}
		n = end
	}
}
