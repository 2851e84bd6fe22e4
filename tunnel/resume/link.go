package resume

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// link is one transport of a stream, with its two goroutines: readLoop
// parses what arrives, writeLoop sends what the stream has for the peer.
// Whichever ends first makes the other end (fail closes the conn; a failed
// write cuts the reader short); readLoop waits for writeLoop, lets the
// stream detach the link and closes stopped.
type link struct {
	s      *stream
	conn   net.Conn
	writev bool // conn does writev: batches go out without being copied

	kick       chan struct{} // capacity 1: wakes writeLoop
	sending    chan struct{} // capacity 1: full while writeLoop writes to conn
	dead       chan struct{} // closed by fail
	wfailed    chan struct{} // closed when a write failed (werr set before)
	writerDone chan struct{} // closed when writeLoop returns
	stopped    chan struct{} // closed when both goroutines are done and the stream let go
	failOnce   sync.Once
	err        error // why the link ended; set before dead is closed
	werr       error // the failed write's error; set before wfailed is closed

	fr frameReader // owned by readLoop; its chunk refs are guarded by s.mu

	// Guarded by s.mu.
	sendOff        uint64   // next offset to send on this link
	finSent        bool     // FIN is in a batch sent on this link
	closeSent      bool     // CLOSE is in a batch sent on this link
	closeWritten   bool     // ... and that batch was written
	closeAfterPeer bool     // our CLOSE answered the peer's
	errFrame       []byte   // an ERROR to send, then close
	writing        bool     // writeLoop is writing a batch that points into send chunks
	deferred       []*chunk // send chunks acknowledged while writing; recycled after
}

func newLink(s *stream, conn net.Conn) *link {
	l := &link{
		s:          s,
		conn:       conn,
		kick:       make(chan struct{}, 1),
		sending:    make(chan struct{}, 1),
		dead:       make(chan struct{}),
		wfailed:    make(chan struct{}),
		writerDone: make(chan struct{}),
		stopped:    make(chan struct{}),
	}
	switch conn.(type) {
	case *net.TCPConn, *net.UnixConn:
		l.writev = true
	}
	return l
}

// start runs the link's goroutines; the stream's owner waits for them
// through s.wg.
func (l *link) start() {
	l.s.wg.Add(2)
	go l.readLoop()
	go l.writeLoop()
}

// fail ends the link with err (the first reason wins) and closes the
// transport.
func (l *link) fail(err error) {
	l.failOnce.Do(func() {
		l.err = err
		close(l.dead)
		l.conn.Close()
	})
}

// freeSent recycles an acknowledged send chunk, or defers that while the
// writer may still be reading it. Called with s.mu held.
func (l *link) freeSent(c *chunk) {
	if l.writing {
		l.deferred = append(l.deferred, c)
		return
	}
	putChunk(c)
}

// readLoop reads and applies frames until the transport fails.
func (l *link) readLoop() {
	s := l.s
	var err error
	defer func() {
		// Both CLOSEs crossed but the transport ended before the writer
		// noticed: the session is complete, not detached.
		s.mu.Lock()
		var complete error
		if s.err == nil && s.peerClosed && l.closeSent {
			complete = s.closedReasonLocked()
		}
		s.mu.Unlock()
		if complete != nil {
			s.end(complete, nil, false)
		}
		l.fail(err)
		<-l.writerDone
		s.detach(l)
		close(l.stopped)
		s.wg.Done()
	}()
	idle := 3 * s.cfg.keepalive
	var deadlineSet time.Time
	for {
		// Wait while Read has a full queue: the transport backs up, and
		// the peer's writes with it. Not reading is not a sign of a dead
		// transport, so the idle deadline does not run meanwhile.
		s.mu.Lock()
		for s.in.bytes >= s.recvLimit() && s.err == nil && !s.closeLocal {
			s.spaceWaiting = true
			s.mu.Unlock()
			select {
			case <-s.spaceWake:
			case <-s.done:
			case <-s.localClosed:
			case <-l.dead:
				err = l.err
				return
			case <-l.wfailed:
				err = l.werr
				return
			}
			s.mu.Lock()
		}
		buf := l.fr.space()
		s.mu.Unlock()

		now := time.Now()
		if now.Sub(deadlineSet) > idle/12 && !isClosed(l.wfailed) {
			// Refreshed every quarter interval rather than on every read:
			// a transport is dead after 2.75 to 3 silent intervals.
			l.conn.SetReadDeadline(now.Add(idle))
			deadlineSet = now
		}
		n, rerr := l.conn.Read(buf)
		if n > 0 {
			l.fr.filled(n, len(buf))
			sink := linkSink{l: l}
			s.mu.Lock()
			var perr error
			if s.err != nil {
				l.fr.discard() // the session is over: drain until the transport closes
			} else {
				perr = l.fr.parse(&sink)
			}
			if sink.wakeRead && s.readWaiting {
				signal(s.readWake)
			}
			if due := s.received - s.ackSent; due >= ackEvery {
				sink.kick = true
			} else if due > 0 && s.ackDue.IsZero() {
				s.ackDue = now.Add(ackDelay)
				sink.kick = true
			}
			var reason error
			if sink.finished {
				reason = s.closedReasonLocked()
			}
			s.mu.Unlock()
			if sink.finished {
				// The peer answered our CLOSE: done; close the
				// transport (the peer waits for that).
				s.end(reason, nil, false)
			}
			if sink.kick {
				signal(l.kick)
			}
			if perr != nil {
				var pe *peerError
				if errors.As(perr, &pe) {
					s.end(perr, nil, false)
				} else {
					s.cfg.log.Warn("resumable session: protocol error", "peer", s.cfg.peer, "err", perr)
					s.end(fmt.Errorf("%w (the session cannot continue: reconnect)", perr), errorFrame(codeProtocol, perr.Error()), false)
				}
				err = perr
				// Keep reading (and discarding) until the writer has
				// sent the ERROR and closed the transport.
			}
		}
		if rerr != nil {
			err = l.readError(rerr, idle)
			return
		}
	}
}

// readError turns the error that ended a transport read into the reason
// the link ended.
func (l *link) readError(rerr error, idle time.Duration) error {
	if errors.Is(rerr, io.EOF) {
		// A reset is reported once, to whichever of read and write
		// comes first; if the writer saw it, the reader sees only EOF.
		// Wait for a write in progress to end, and believe the writer.
		t := time.NewTimer(resetCheckTimeout)
		select {
		case l.sending <- struct{}{}:
			<-l.sending
		case <-t.C:
		}
		t.Stop()
		if isClosed(l.wfailed) && errors.Is(l.werr, syscall.ECONNRESET) {
			return l.werr
		}
		// A clean close without CLOSE: the proxy ended the transport (it
		// drains, say); the session moves to another.
		return fmt.Errorf("the transport was closed by the other end: %w", io.EOF)
	}
	if isClosed(l.wfailed) {
		return l.werr
	}
	if isClosed(l.dead) {
		return l.err
	}
	var ne net.Error
	if errors.As(rerr, &ne) && ne.Timeout() {
		return fmt.Errorf("nothing received from %s for %v: the transport is dead", l.s.cfg.peer, idle)
	}
	return fmt.Errorf("read from transport: %w", rerr)
}

// resetCheckTimeout bounds how long the reader, at EOF, waits for a write in
// progress to tell a reset from a clean close. Such a write ends at once
// either way (the transport is gone); the bound is for a write blocked on a
// full transport whose peer is still reading.
const resetCheckTimeout = 100 * time.Millisecond

// lingerTimeout bounds how long a side that answered the peer's CLOSE waits
// for the peer to close the transport, so that closing first does not
// reset the connection before the peer has read the answer.
const lingerTimeout = time.Second

// writeLoop sends what the stream has for the peer: batches of DATA from the
// replay buffer with ACK, FIN, CLOSE, PING and PONG frames, one write per
// batch.
func (l *link) writeLoop() {
	s := l.s
	defer func() {
		close(l.writerDone)
		s.wg.Done()
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lastSend := time.Now()
	for {
		now := time.Now()
		s.mu.Lock()
		b, wake, act := s.collect(l, now, lastSend)
		s.mu.Unlock()
		switch act {
		case actExit:
			s.mu.Lock()
			err := s.err
			s.mu.Unlock()
			if err != nil {
				l.fail(err)
			}
			return
		case actFinish:
			s.mu.Lock()
			reason := s.closedReasonLocked()
			replier := l.closeAfterPeer
			s.mu.Unlock()
			s.end(reason, nil, true)
			if replier {
				// The peer closes when it reads our CLOSE; wait for
				// that (readLoop drains until EOF) instead of
				// closing under its feet.
				if cw, ok := l.conn.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				l.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
			} else {
				l.fail(reason)
			}
			return
		case actSleep:
			timer.Reset(wake.Sub(now))
			select {
			case <-l.kick:
			case <-timer.C:
			case <-l.dead:
				return
			}
			continue
		}
		l.sending <- struct{}{}
		err := l.send(b)
		if err != nil {
			l.werr = fmt.Errorf("write to transport: %w", err)
			close(l.wfailed)
		}
		<-l.sending
		s.mu.Lock()
		l.writing = false
		for _, c := range l.deferred {
			putChunk(c)
		}
		clear(l.deferred)
		l.deferred = l.deferred[:0]
		if b.close && err == nil {
			l.closeWritten = true
		}
		s.mu.Unlock()
		final := b.final
		putBatch(b)
		if err != nil {
			// Let the reader see what is already in flight (a clean
			// close shows as EOF there, and decides Moved), then stop.
			l.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			return
		}
		if final {
			l.fail(errors.New("sent ERROR"))
			return
		}
		lastSend = time.Now()
	}
}

type writerAction int

const (
	actSleep writerAction = iota
	actSend
	actExit
	actFinish
)

// collect decides what writeLoop does next, and fills a batch if there is
// anything to send. Called with s.mu held.
func (s *stream) collect(l *link, now, lastSend time.Time) (*batch, time.Time, writerAction) {
	if isClosed(l.dead) || s.link != l {
		return nil, time.Time{}, actExit
	}
	if l.errFrame != nil {
		b := getBatch()
		b.raw(l.errFrame)
		b.final = true
		l.errFrame = nil
		return b, time.Time{}, actSend
	}
	if s.err != nil {
		return nil, time.Time{}, actExit
	}
	if s.peerClosed && l.closeWritten {
		return nil, time.Time{}, actFinish
	}
	var b *batch
	get := func() *batch {
		if b == nil {
			b = getBatch()
		}
		return b
	}
	if !s.peerClosed {
		limit := maxBatchBytes
		if !l.writev {
			limit = maxCopyBatch
		}
		for l.sendOff < s.written && (b == nil || b.size < limit && b.frames < maxBatchFrames) {
			p := s.out.slice(l.sendOff, maxData)
			get().data(p)
			l.sendOff += uint64(len(p))
		}
		if l.sendOff > s.sentMax {
			s.sentMax = l.sendOff
		}
		if s.finWritten && !l.finSent && l.sendOff == s.written {
			get().offsetFrame(frameFin, l.sendOff)
			l.finSent = true
		}
	}
	if (s.closeLocal || s.peerClosed) && !l.closeSent && (s.peerClosed || l.sendOff == s.written) {
		get().offsetFrame(frameClose, l.sendOff)
		b.close = true
		l.closeSent = true
		l.closeAfterPeer = s.peerClosed
	}
	if due := s.received - s.ackSent; due > 0 && (b != nil || due >= ackEvery || !now.Before(s.ackDue)) {
		get().offsetFrame(frameAck, s.received)
		s.ackSent = s.received
		s.ackDue = time.Time{}
	}
	if s.pong {
		get().control(framePong)
		s.pong = false
	}
	if b == nil && now.Sub(lastSend) >= s.cfg.keepalive {
		get().control(framePing)
	}
	if b != nil {
		l.writing = true
		return b, time.Time{}, actSend
	}
	wake := lastSend.Add(s.cfg.keepalive)
	if s.received > s.ackSent && s.ackDue.Before(wake) {
		wake = s.ackDue
	}
	return nil, wake, actSleep
}

// Batch bounds. A writev batch may point at up to maxBatchBytes of replay
// chunks; a transport without writev (TLS) gets up to maxCopyBatch copied
// into one buffer, which it splits into records anyway.
const (
	maxBatchFrames = 128
	maxBatchBytes  = 1 << 20
	maxCopyBatch   = 256 << 10
	// Room for every header and control frame one batch can hold.
	batchHdrCap = maxBatchFrames*headerLen + 4*(headerLen+offsetLen) + 2*headerLen + headerLen + maxControl
)

// batch is what writeLoop sends with one write: iov lists headers and
// control frames (encoded in hdr, which never grows past its capacity
// during a batch, so iov may point into it) and DATA bodies (pointing into
// replay chunks).
type batch struct {
	hdr     []byte
	iov     net.Buffers
	vec     net.Buffers // iov's copy for WriteTo, which consumes it
	hdrOpen int         // start in hdr of the last iov entry if that entry is in hdr and ends at len(hdr); else -1
	size    int
	frames  int
	close   bool // the batch holds our CLOSE
	final   bool // the batch is an ERROR: close after it
	copyBuf []byte
}

var batchPool = sync.Pool{New: func() any {
	return &batch{hdr: make([]byte, 0, batchHdrCap), hdrOpen: -1}
}}

func getBatch() *batch { return batchPool.Get().(*batch) }

func putBatch(b *batch) {
	clear(b.iov)
	clear(b.vec)
	b.hdr, b.iov, b.vec = b.hdr[:0], b.iov[:0], b.vec[:0]
	b.hdrOpen, b.size, b.frames, b.close, b.final = -1, 0, 0, false, false
	batchPool.Put(b)
}

// addHdr records hdr[start:] as the next piece, merged with the previous
// piece when that one ends right there.
func (b *batch) addHdr(start int) {
	if b.hdrOpen >= 0 {
		b.iov[len(b.iov)-1] = b.hdr[b.hdrOpen:len(b.hdr):len(b.hdr)]
	} else {
		b.hdrOpen = start
		b.iov = append(b.iov, b.hdr[start:len(b.hdr):len(b.hdr)])
	}
	b.size += len(b.hdr) - start
}

func (b *batch) data(p []byte) {
	start := len(b.hdr)
	b.hdr = appendHeader(b.hdr, frameData, len(p))
	b.addHdr(start)
	b.iov = append(b.iov, p)
	b.hdrOpen = -1
	b.size += len(p)
	b.frames++
}

func (b *batch) offsetFrame(t frameType, off uint64) {
	start := len(b.hdr)
	b.hdr = appendOffsetFrame(b.hdr, t, off)
	b.addHdr(start)
}

func (b *batch) control(t frameType) {
	start := len(b.hdr)
	b.hdr = appendHeader(b.hdr, t, 0)
	b.addHdr(start)
}

func (b *batch) raw(frame []byte) {
	start := len(b.hdr)
	b.hdr = append(b.hdr, frame...)
	b.addHdr(start)
}

// send writes the batch with one writev, or one Write of a copy.
func (l *link) send(b *batch) error {
	if l.writev {
		b.vec = append(b.vec[:0], b.iov...)
		_, err := b.vec.WriteTo(l.conn)
		return err
	}
	buf := getCopyBuf()
	defer putCopyBuf(buf)
	out := (*buf)[:0]
	for _, p := range b.iov {
		for len(p) > 0 {
			m := min(len(p), cap(out)-len(out))
			out = append(out, p[:m]...)
			p = p[m:]
			if len(out) == cap(out) {
				if _, err := l.conn.Write(out); err != nil {
					return err
				}
				out = out[:0]
			}
		}
	}
	if len(out) > 0 {
		if _, err := l.conn.Write(out); err != nil {
			return err
		}
	}
	return nil
}

var copyBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, maxCopyBatch+batchHdrCap)
	return &b
}}

func getCopyBuf() *[]byte  { return copyBufPool.Get().(*[]byte) }
func putCopyBuf(b *[]byte) { copyBufPool.Put(b) }

// frameReader is the link reader's buffer. It reads the transport into
// chunks and parses frames in place, so DATA bodies reach the receive
// queue without a copy: queued segments point into the chunk. What is left
// unparsed when a chunk fills (a partial header or control frame, at most
// headerLen+maxControl bytes) moves to the next chunk. Memory does not
// depend on what the peer announces: chunks have fixed sizes. An idle
// transport holds one small chunk.
type frameReader struct {
	c     *chunk
	r, w  int // c.b[r:w] is read but not parsed
	p     frameParser
	large bool // recent reads were large: read into large chunks
}

// space returns where the next transport read goes. Called with the
// stream's mu held (chunk refs).
func (fr *frameReader) space() []byte {
	if fr.c != nil && fr.r == fr.w && fr.c.refs == 1 {
		fr.r, fr.w = 0, 0 // nothing points into the chunk: start over
	}
	if fr.c == nil || fr.w == len(fr.c.b) || (fr.r == fr.w && fr.c.large() != fr.large) {
		next := getChunk(fr.large)
		next.refs = 1
		n := 0
		if fr.c != nil {
			n = copy(next.b, fr.c.b[fr.r:fr.w])
			fr.release()
		}
		fr.c, fr.r, fr.w = next, 0, n
	}
	return fr.c.b[fr.w:]
}

// filled records n bytes read into a space of size avail.
func (fr *frameReader) filled(n, avail int) {
	fr.w += n
	fr.large = n >= smallChunk/2 || n == avail
}

func (fr *frameReader) parse(sink frameSink) error {
	m, err := fr.p.parse(fr.c.b[fr.r:fr.w], sink)
	fr.r += m
	return err
}

func (fr *frameReader) discard() { fr.r = fr.w }

// release drops the reader's reference to its chunk. Called with the
// stream's mu held.
func (fr *frameReader) release() {
	if fr.c == nil {
		return
	}
	if fr.c.refs--; fr.c.refs == 0 {
		putChunk(fr.c)
	}
	fr.c = nil
}
