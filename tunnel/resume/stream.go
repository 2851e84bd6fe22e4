package resume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Acknowledgement policy: an ACK goes out once ackEvery bytes are
// unacknowledged, or ackDelay after the first unacknowledged byte, or with
// anything else the side sends. The peer's replay buffer thus holds about
// one round trip of data plus ackEvery.
//
// ackDelay is long enough that an interactive session's ACKs ride on its
// next keystroke or line instead of travelling alone: with 50 ms, a
// client sending a line every 100 ms sent a bare ACK after each echo, and
// the node spent a third of its CPU for such a session on those (measured
// with one session through one proxy). What it costs is replay buffer:
// 200 ms more of an interactive session's output, a few hundred bytes.
const (
	ackEvery = 64 << 10
	ackDelay = 200 * time.Millisecond
)

// streamConfig is what a stream needs from ClientConfig or ServerConfig.
type streamConfig struct {
	keepalive  time.Duration
	maxUnacked int
	peer       string // "the node" or "the client", in messages
	log        *slog.Logger
}

// streamHooks lets the owner of a stream (Conn, ServerConn) follow it. The
// stream calls them without holding its mutex, from the goroutine that
// caused the change.
type streamHooks interface {
	// detached: the transport l ended and the session lives on.
	detached(l *link)
	// ended: the session is over (err says why); it happens once.
	ended(err error)
}

// stream is the resumable byte stream shared by Conn and ServerConn: the
// two directions (send, with the replay buffer; receive, with the queue of
// bytes Read has not taken) and the current transport, a *link.
//
// Concurrency. mu guards the fields listed under it, and the n and refs
// fields of every chunk the stream holds. The bytes inside chunks are
// accessed without mu, by one goroutine at a time:
//   - A send chunk's free tail is written by the one Write holding wmu that
//     reserved it (reserving); its filled bytes are read by the link writer
//     while it writes a batch (link.writing) and are recycled only when
//     neither can touch them (see link.freeSent).
//   - A receive chunk is filled by the link reader beyond every queued
//     segment, and queued segments are read by the one Read holding rmu;
//     a chunk is recycled when its refs (one per segment, one for the
//     reader) drop to zero.
//
// Each attached transport has a reader and a writer goroutine (link.go);
// app goroutines call Read, Write and Close. Nobody blocks while holding mu.
type stream struct {
	cfg   streamConfig
	hooks streamHooks
	wg    *sync.WaitGroup // the owner's: counts link goroutines

	wmu sync.Mutex // serializes Write and CloseWrite: one Write's bytes stay contiguous
	rmu sync.Mutex // serializes Read

	done        chan struct{} // closed when err is set
	localClosed chan struct{} // closed by close
	readWake    chan struct{} // capacity 1: data or EOF for a waiting Read
	writeWake   chan struct{} // capacity 1: room for a waiting Write
	spaceWake   chan struct{} // capacity 1: Read made room for the link reader
	rdl, wdl    *deadline

	mu sync.Mutex // guards the following
	// Send side. Offsets count DATA body bytes since the session began.
	out        replay
	acked      uint64 // the peer has everything below
	written    uint64 // Write accepted everything below
	sentMax    uint64 // everything below was handed to some transport
	reserving  bool   // a Write is filling out's last chunk
	finWritten bool   // CloseWrite was called: FIN at written
	closeLocal bool   // Close was called
	// Receive side.
	in         recvQueue
	received   uint64    // DATA body bytes received
	ackSent    uint64    // the peer knows we have everything below
	ackDue     time.Time // when an ACK must go out for received > ackSent
	peerFin    bool      // FIN received: Read returns io.EOF after the queue
	peerClosed bool      // CLOSE received
	pong       bool      // a PING waits for its PONG
	reading    bool      // a Read is copying out of queued segments
	// Lifecycle.
	link         *link // the current transport; nil while detached
	err          error // why the session is over; set once
	readWaiting  bool
	writeWaiting bool
	spaceWaiting bool
}

func newStream(cfg streamConfig, hooks streamHooks, wg *sync.WaitGroup) *stream {
	return &stream{
		cfg:         cfg,
		hooks:       hooks,
		wg:          wg,
		done:        make(chan struct{}),
		localClosed: make(chan struct{}),
		readWake:    make(chan struct{}, 1),
		writeWake:   make(chan struct{}, 1),
		spaceWake:   make(chan struct{}, 1),
		rdl:         newDeadline(),
		wdl:         newDeadline(),
	}
}

// recvLimit bounds the bytes queued for Read; beyond it the link reader
// stops reading the transport, and the peer's writes back up.
func (s *stream) recvLimit() int { return s.cfg.maxUnacked }

// Read reads received bytes; it waits while the transport is being
// replaced.
func (s *stream) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.mu.Lock()
	for {
		if s.closeLocal {
			s.mu.Unlock()
			return 0, net.ErrClosed
		}
		dl := s.rdl.wait()
		if isClosed(dl) {
			s.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if s.in.bytes > 0 {
			break
		}
		if s.peerFin || s.peerClosed {
			s.mu.Unlock()
			return 0, io.EOF
		}
		if s.err != nil {
			s.mu.Unlock()
			return 0, s.err
		}
		if len(p) == 0 {
			s.mu.Unlock()
			return 0, nil
		}
		s.readWaiting = true
		s.mu.Unlock()
		select {
		case <-s.readWake:
		case <-s.done:
		case <-s.localClosed:
		case <-dl:
		}
		s.mu.Lock()
		s.readWaiting = false
	}
	// Copy outside mu, so the link reader can queue more meanwhile; the
	// segments stay put because only Read (holding rmu) consumes them.
	var segs [16]segment
	k, total := 0, 0
	for i := s.in.head; i < len(s.in.segs) && k < len(segs) && total < len(p); i++ {
		segs[k] = s.in.segs[i]
		total += len(segs[k].b)
		k++
	}
	s.reading = true
	s.mu.Unlock()
	n := 0
	for _, sg := range segs[:k] {
		n += copy(p[n:], sg.b)
	}
	s.mu.Lock()
	s.reading = false
	s.in.consume(n, putChunk)
	if s.closeLocal {
		s.in.drop(putChunk)
	}
	if s.spaceWaiting && s.in.bytes < s.recvLimit() {
		s.spaceWaiting = false
		signal(s.spaceWake)
	}
	s.mu.Unlock()
	return n, nil
}

// writeErr says why Write cannot take more bytes, if it cannot.
func (s *stream) writeErrLocked() error {
	switch {
	case s.closeLocal:
		return net.ErrClosed
	case s.err != nil:
		return s.err
	case s.peerClosed:
		return fmt.Errorf("write: %s closed the connection: %w", s.cfg.peer, net.ErrClosed)
	case s.finWritten:
		return errors.New("write after CloseWrite")
	}
	return nil
}

// Write copies p into the replay buffer and wakes the link writer. It
// blocks while maxUnacked bytes are unacknowledged.
func (s *stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		s.mu.Lock()
		for {
			if err := s.writeErrLocked(); err != nil {
				s.mu.Unlock()
				return n, err
			}
			dl := s.wdl.wait()
			if isClosed(dl) {
				s.mu.Unlock()
				return n, os.ErrDeadlineExceeded
			}
			if s.written-s.acked < uint64(s.cfg.maxUnacked) {
				break
			}
			s.writeWaiting = true
			s.mu.Unlock()
			select {
			case <-s.writeWake:
			case <-s.done:
			case <-s.localClosed:
			case <-dl:
			}
			s.mu.Lock()
			s.writeWaiting = false
		}
		room := s.cfg.maxUnacked - int(s.written-s.acked)
		// A new chunk is large when the write is, or when bytes pile up
		// unacknowledged (a bulk transfer of small writes); an interactive
		// session gets small ones.
		large := len(p) >= smallChunk/2 || len(s.out.chunks) > 0
		c, off, m := s.out.reserve(min(len(p), room), large, s.written)
		s.reserving = true
		s.mu.Unlock()

		copy(c.b[off:off+m], p[:m])

		s.mu.Lock()
		c.n += m
		s.written += uint64(m)
		s.reserving = false
		l := s.link
		s.mu.Unlock()
		if l != nil {
			signal(l.kick)
		}
		p = p[m:]
		n += m
	}
	return n, nil
}

// closeWrite sends FIN after everything written: the peer reads io.EOF.
func (s *stream) closeWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	if s.finWritten && s.err == nil && !s.closeLocal {
		s.mu.Unlock()
		return nil
	}
	if err := s.writeErrLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	s.finWritten = true
	l := s.link
	s.mu.Unlock()
	if l != nil {
		signal(l.kick)
	}
	return nil
}

// close starts the end of the session from this side: Read and Write fail
// from now on, what was written still goes out, then CLOSE; the session
// ends when the peer answers with its CLOSE (see link.writeLoop). It
// reports whether a transport is attached.
func (s *stream) close() (attached bool) {
	s.mu.Lock()
	if s.closeLocal {
		attached = s.link != nil && s.err == nil
		s.mu.Unlock()
		return attached
	}
	s.closeLocal = true
	close(s.localClosed)
	if !s.reading {
		s.in.drop(putChunk) // nobody will read it; a Read copying out drops it when done
	}
	l := s.link
	attached = l != nil && s.err == nil
	s.mu.Unlock()
	if l != nil {
		signal(l.kick)
	}
	return attached
}

// end makes the session terminal with err. If frame is set, the link
// writer sends it (an ERROR) before the transport closes; else the
// transport closes now, unless keepLink (the writer finishing a clean
// close closes it itself).
func (s *stream) end(err error, frame []byte, keepLink bool) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	close(s.done)
	l := s.link
	if l != nil && frame != nil {
		l.errFrame = frame
	}
	s.mu.Unlock()
	switch {
	case l == nil || keepLink:
	case frame != nil:
		// Bound the wait for the ERROR behind a full transport.
		l.conn.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
		signal(l.kick)
	default:
		l.fail(err)
	}
	s.hooks.ended(err)
}

// errorWriteTimeout bounds sending an ERROR frame before the transport
// closes.
const errorWriteTimeout = time.Second

// closedReasonLocked is why a cleanly closed session is over, for Read
// and Write.
func (s *stream) closedReasonLocked() error {
	if s.closeLocal {
		return net.ErrClosed
	}
	return fmt.Errorf("%s closed the connection: %w", s.cfg.peer, net.ErrClosed)
}

// attach makes l the session's transport. peerReceived is what the peer
// said it has received: retransmission starts there. It returns how many
// bytes will be sent again and what this side has received (the peer
// resumes from there). An offset outside [acked, sentMax] is a protocol
// error; the caller ends the session.
func (s *stream) attach(l *link, peerReceived uint64) (replayed, received uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, 0, s.err
	}
	if s.link != nil {
		panic("resume: attach with a transport still attached")
	}
	if peerReceived < s.acked || peerReceived > s.sentMax {
		return 0, 0, protocolErrorf("%s resumed from offset %d, but this side's unacknowledged bytes are [%d, %d]", s.cfg.peer, peerReceived, s.acked, s.sentMax)
	}
	replayed = s.sentMax - peerReceived
	if peerReceived > s.acked {
		s.acked = peerReceived
		s.out.trim(peerReceived, s.reserving, putChunk)
		if s.writeWaiting {
			signal(s.writeWake)
		}
	}
	l.sendOff = peerReceived
	s.ackSent = s.received
	s.ackDue = time.Time{}
	s.pong = false
	s.link = l
	return replayed, s.received, nil
}

// detach lets go of l once its goroutines are done.
func (s *stream) detach(l *link) {
	s.mu.Lock()
	l.fr.release()
	for _, c := range l.deferred {
		putChunk(c)
	}
	l.deferred = nil
	mine := s.link == l
	if mine {
		s.link = nil
	}
	terminal := s.err != nil
	s.mu.Unlock()
	if mine && !terminal {
		s.hooks.detached(l)
	}
}

// current returns the attached transport's conn, or nil.
func (s *stream) current() net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link == nil {
		return nil
	}
	return s.link.conn
}

// linkSink applies the frames the link reader parses. Its methods run with
// s.mu held.
type linkSink struct {
	l        *link
	wakeRead bool // queued data or EOF for Read
	kick     bool // the writer has something to send
	finished bool // the peer's CLOSE answered ours: the session is complete
}

func (k *linkSink) dataStart() error {
	s := k.l.s
	if s.peerFin || s.peerClosed {
		return protocolErrorf("DATA after %s's FIN or CLOSE", s.cfg.peer)
	}
	return nil
}

func (k *linkSink) data(p []byte) error {
	s := k.l.s
	s.received += uint64(len(p))
	if s.closeLocal || s.err != nil {
		return nil // nobody will read it; it still counts as received
	}
	s.in.push(k.l.fr.c, p)
	k.wakeRead = true
	return nil
}

func (k *linkSink) control(t frameType, body []byte) error {
	s := k.l.s
	switch t {
	case frameAck:
		a := binary.BigEndian.Uint64(body)
		if a < s.acked || a > s.sentMax {
			return protocolErrorf("ACK of offset %d, but the unacknowledged bytes are [%d, %d]", a, s.acked, s.sentMax)
		}
		if a > s.acked {
			s.acked = a
			s.out.trim(a, s.reserving, k.l.freeSent)
			if s.writeWaiting {
				signal(s.writeWake)
			}
		}
	case frameFin, frameClose:
		off := binary.BigEndian.Uint64(body)
		if off != s.received {
			return protocolErrorf("%s at offset %d after %d bytes", t, off, s.received)
		}
		if t == frameFin {
			s.peerFin = true
		} else {
			s.peerClosed = true
			k.kick = true // answer with our CLOSE
			if k.l.closeWritten {
				k.finished = true
			}
			if s.writeWaiting {
				signal(s.writeWake)
			}
		}
		k.wakeRead = true
	case framePing:
		s.pong = true
		k.kick = true
	case framePong:
	case frameError:
		code, reason := parseError(body)
		return &peerError{peer: s.cfg.peer, code: code, reason: reason}
	}
	return nil
}
