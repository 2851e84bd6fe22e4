package resume

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
)

// FuzzClientOpening feeds the node's parser of what follows Magic on a new
// transport (version byte, HELLO) with arbitrary bytes. It must not panic,
// must read no more than one frame, and what it accepts must encode back to
// the same bytes.
func FuzzClientOpening(f *testing.F) {
	key := make(ed25519.PublicKey, ed25519.PublicKeySize)
	key[0] = 7
	f.Add(append([]byte{Version}, hello{kind: helloNew, key: key}.append(nil)...))
	f.Add(append([]byte{Version}, hello{kind: helloResume, id: [sessionIDLen]byte{1, 2, 3}, received: 1 << 40}.append(nil)...))
	f.Add([]byte{2, byte(frameHello), 0, 0, 0, 1, 1})
	f.Add([]byte{Version, byte(frameHello), 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{Version, byte(frameHello), 0, 0, 0, 25, helloResume})
	f.Add([]byte{Version, byte(frameData), 0, 1, 0, 0})
	f.Add([]byte{Version, byte(frameError), 0, 0, 0, 3, 1, 'n', 'o'})
	f.Add([]byte{Version})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var buf handshakeBuf
		version, h, err := readClientOpening(r, &buf)
		consumed := len(in) - r.Len()
		if consumed > 1+headerLen+maxControl {
			t.Fatalf("read %d bytes, more than a version byte and one frame", consumed)
		}
		if err != nil || version != Version {
			return
		}
		if got := h.append(nil); !bytes.Equal(got, in[1:consumed]) {
			t.Fatalf("accepted HELLO %x encodes as %x", in[1:consumed], got)
		}
	})
}

// FuzzNodeAnswer feeds the client's parser of the node's answers (preamble,
// then WELCOME, CHALLENGE or RESUMED, or ERROR) with arbitrary bytes.
func FuzzNodeAnswer(f *testing.F) {
	welcome := appendFrame(appendPreamble(nil), frameWelcome, make([]byte, sessionIDLen+nonceLen))
	f.Add(welcome, byte(0))
	f.Add(appendFrame(appendPreamble(nil), frameChallenge, make([]byte, nonceLen)), byte(1))
	f.Add(appendOffsetFrame(appendPreamble(nil), frameResumed, 99), byte(2))
	f.Add(append(appendPreamble(nil), errorFrame(codeRefused, "resumption refused: session belongs to another user")...), byte(1))
	f.Add(append(appendPreamble(nil), errorFrame(codeUnsupported, "version")...), byte(0))
	f.Add([]byte("SSH-2.0-OpenSSH_9.6\r\n"), byte(0))
	f.Add([]byte("JGRS\x02"), byte(0))
	f.Add(append(appendPreamble(nil), byte(frameWelcome), 0x7f, 0xff, 0xff, 0xff), byte(0))
	f.Fuzz(func(t *testing.T, in []byte, which byte) {
		want := []frameType{frameWelcome, frameChallenge, frameResumed}[int(which)%3]
		r := bytes.NewReader(in)
		if err := readNodePreamble(r); err != nil {
			if bytes.HasPrefix(in, []byte("SSH-")) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("an SSH banner gave %v, want ErrUnsupported", err)
			}
			return
		}
		var buf handshakeBuf
		body, err := readNodeFrame(r, &buf, want)
		if err != nil {
			return
		}
		lo, hi, _ := bodyLimits(want)
		if len(body) < lo || len(body) > hi {
			t.Fatalf("accepted a %s body of %d bytes", want, len(body))
		}
	})
}

// recvSink is a frameSink that queues DATA as the link reader does (segments
// pointing into the reader's chunks) and records the rest.
type recvSink struct {
	fr       *frameReader
	q        recvQueue
	controls []string
}

func (s *recvSink) dataStart() error { return nil }

func (s *recvSink) data(p []byte) error {
	s.q.push(s.fr.c, p)
	return nil
}

func (s *recvSink) control(t frameType, body []byte) error {
	s.controls = append(s.controls, t.String()+":"+string(body))
	return nil
}

// take moves up to n queued bytes to out, releasing chunks as Read does.
func (s *recvSink) take(n int, out []byte) []byte {
	n = min(n, s.q.bytes)
	got := 0
	for i := s.q.head; got < n; i++ {
		m := min(len(s.q.segs[i].b), n-got)
		out = append(out, s.q.segs[i].b[:m]...)
		got += m
	}
	s.q.consume(n, putChunk)
	return out
}

// refSink records everything, for parsing a stream in one piece.
type refSink struct {
	got      []byte
	controls []string
}

func (s *refSink) dataStart() error { return nil }
func (s *refSink) data(p []byte) error {
	s.got = append(s.got, p...)
	return nil
}
func (s *refSink) control(t frameType, body []byte) error {
	s.controls = append(s.controls, t.String()+":"+string(body))
	return nil
}

// FuzzFrameReader feeds the data-phase reader (frameReader with its chunks,
// frameParser, the receive queue) with arbitrary bytes, delivered in
// arbitrary pieces and read out at arbitrary moments. It must not panic,
// must never hold more unparsed bytes than a control frame, and must find
// the same frames as a parse of the whole input at once.
func FuzzFrameReader(f *testing.F) {
	var seed []byte
	seed = appendFrame(seed, frameData, []byte("hello"))
	seed = appendOffsetFrame(seed, frameAck, 5)
	seed = appendFrame(seed, framePing, nil)
	seed = appendFrame(seed, frameData, bytes.Repeat([]byte{'x'}, 70000)[:maxData])
	seed = appendOffsetFrame(seed, frameFin, 65541)
	seed = appendFrame(seed, framePong, nil)
	seed = append(seed, errorFrame(codeProtocol, "bye")...)
	f.Add(seed, []byte{3, 200, 17, 0, 255})
	f.Add(appendOffsetFrame(nil, frameClose, 1<<63), []byte{1})
	f.Add([]byte{byte(frameData), 0xff, 0xff, 0xff, 0xff}, []byte{0})
	f.Add([]byte{byte(frameData), 0, 1, 0, 1}, []byte{9})
	f.Add([]byte{byte(frameHello), 0, 0, 0, 0}, []byte{9})
	f.Add([]byte{0x7e, 0, 0, 0, 0}, []byte{9})
	f.Add(append([]byte{byte(frameError), 0, 0, 4, 1, 2}, make([]byte, 1025)...), []byte{1, 2})
	f.Fuzz(func(t *testing.T, in, pieces []byte) {
		if len(pieces) == 0 {
			pieces = []byte{255}
		}
		var ref refSink
		var rp frameParser
		_, refErr := rp.parse(in, &ref)

		fr := frameReader{}
		sink := &recvSink{fr: &fr}
		var out []byte
		var err error
		off := 0
		for i := 0; off < len(in) && err == nil; i++ {
			buf := fr.space()
			k := pieces[i%len(pieces)]
			m := min(len(buf), len(in)-off, 1+int(k)*int(k))
			copy(buf, in[off:off+m])
			off += m
			fr.filled(m, len(buf))
			err = fr.parse(sink)
			if err == nil && fr.w-fr.r >= headerLen+maxControl {
				t.Fatalf("%d bytes left unparsed, more than any control frame", fr.w-fr.r)
			}
			if k%3 == 0 {
				out = sink.take(int(k)*97, out)
			}
		}
		out = sink.take(sink.q.bytes, out)
		fr.release()
		if (err == nil) != (refErr == nil) {
			t.Fatalf("parsed in pieces: %v; in one go: %v", err, refErr)
		}
		if !bytes.Equal(out, ref.got) {
			t.Fatalf("DATA parsed in pieces (%d bytes) differs from in one go (%d bytes)", len(out), len(ref.got))
		}
		if len(sink.controls) != len(ref.controls) {
			t.Fatalf("%d control frames in pieces, %d in one go", len(sink.controls), len(ref.controls))
		}
		for i := range sink.controls {
			if sink.controls[i] != ref.controls[i] {
				t.Fatalf("control frame %d: %q in pieces, %q in one go", i, sink.controls[i], ref.controls[i])
			}
		}
	})
}

// TestParsersIgnoreAnnouncedLength: a frame announcing 4 GiB is refused
// before anything is read or allocated for it.
func TestParsersIgnoreAnnouncedLength(t *testing.T) {
	huge := []byte{byte(frameData), 0xff, 0xff, 0xff, 0xff}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for range 100 {
		var p frameParser
		if _, err := p.parse(huge, &refSink{}); !errors.Is(err, errProtocol) {
			t.Fatalf("frameParser: %v, want a protocol error", err)
		}
		var buf handshakeBuf
		r := io.MultiReader(bytes.NewReader([]byte{Version, byte(frameHello), 0xff, 0xff, 0xff, 0xff}), zeroes{})
		if _, _, err := readClientOpening(r, &buf); !errors.Is(err, errProtocol) {
			t.Fatalf("readClientOpening: %v, want a protocol error", err)
		}
	}
	runtime.ReadMemStats(&ms1)
	if d := ms1.TotalAlloc - ms0.TotalAlloc; d > 512<<10 {
		t.Errorf("refusing 200 oversized frames allocated %d bytes", d)
	}
	// Offsets are read as they are, never trusted as sizes.
	var p frameParser
	var s refSink
	if _, err := p.parse(appendOffsetFrame(nil, frameAck, ^uint64(0)), &s); err != nil || len(s.controls) != 1 {
		t.Fatalf("ACK of the largest offset: %v", err)
	}
	if got := binary.BigEndian.Uint64([]byte(s.controls[0][len("ACK:"):])); got != ^uint64(0) {
		t.Fatalf("ACK offset %d", got)
	}
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
