package transport

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"jumpgate.dev/jumpgate/tunnel/proto"
)

// MuxConfig configures the yamux session of a tunnel connection over TCP.
// Zero fields take the defaults named on them.
type MuxConfig struct {
	// StreamWindow caps each stream's receive window (yamux's
	// MaxStreamWindowSize). yamux has no connection-wide window, so this is
	// also the most that one stream with a slow reader can hold buffered.
	// Default and minimum 256 KiB (yamux's initial window).
	StreamWindow uint32
	// KeepAlivePeriod is how often each side pings the other. Default 5s.
	KeepAlivePeriod time.Duration
	// IdleTimeout ends the connection when a ping goes unanswered for
	// IdleTimeout-KeepAlivePeriod, so a dead peer is noticed within about
	// IdleTimeout, as with QUIC's idle timeout. That wait is yamux's
	// ConnectionWriteTimeout, which also bounds how long one frame may
	// wait to be written. Default 15s.
	IdleTimeout time.Duration
	// AcceptBacklog is how many streams opened by the peer may wait for
	// AcceptStream (yamux resets more), and how many of this side's opens
	// may wait for the peer's acknowledgement (more block). Default 256.
	AcceptBacklog int
	// Logger receives yamux's own log lines, at Debug (the tunnel packages
	// log what matters themselves). Default: discard.
	Logger *slog.Logger
}

const (
	// closeWriteTimeout bounds writing the Close message: a peer that no
	// longer reads must not hold Close.
	closeWriteTimeout = time.Second
	// closeLinger bounds the wait, after the Close message, for the peer
	// to close the TCP connection. Closing first, with bytes from the peer
	// still unread, would make the kernel send a reset, which can destroy
	// the Close message before the peer reads it.
	closeLinger = time.Second
	// maxReasonLen bounds the reason of a Close message.
	maxReasonLen = 1024
)

func (c *MuxConfig) yamuxConfig(l yamux.Logger) *yamux.Config {
	if c.StreamWindow < 256<<10 {
		c.StreamWindow = 256 << 10
	}
	if c.KeepAlivePeriod <= 0 {
		c.KeepAlivePeriod = 5 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 15 * time.Second
	}
	if c.AcceptBacklog <= 0 {
		c.AcceptBacklog = 256
	}
	return &yamux.Config{
		AcceptBacklog:          c.AcceptBacklog,
		EnableKeepAlive:        true,
		KeepAliveInterval:      c.KeepAlivePeriod,
		ConnectionWriteTimeout: max(c.IdleTimeout-c.KeepAlivePeriod, time.Second),
		MaxStreamWindowSize:    c.StreamWindow,
		// No timer per open: a peer that never acknowledges a stream is
		// dead, and the keepalive notices that; the dial that opened it
		// has its own timeout.
		StreamOpenTimeout: 0,
		// A half-closed stream lasts as long as its other direction, as
		// with QUIC and TCP; Close drains what still arrives, so a closed
		// stream whose peer never closes costs no buffer, only its entry.
		StreamCloseTimeout: 0,
		Logger:             l,
	}
}

// muxConn is a Conn over yamux over TLS over TCP.
type muxConn struct {
	tc   *tls.Conn
	io   *ioConn // tc as yamux sees it
	log  *yamuxLog
	sess *yamux.Session
	ctrl *yamux.Stream // the control stream: a Close message, then nothing

	closeOnce sync.Once
	closing   chan struct{} // closed by Close, once the Close message is out
	done      chan struct{} // closed when the connection has ended and err is set

	mu       sync.Mutex // guards the following
	err      error      // why the connection ended (or is ending)
	noDrains bool       // the session is gone: no stream needs draining

	drains sync.WaitGroup // the goroutines of Stream.CloseRead
}

var _ Conn = (*muxConn)(nil)

// NewMuxClient runs a yamux session, as the agent's side, over tc, whose
// TLS handshake is done, and opens the control stream. The Conn owns tc.
func NewMuxClient(tc *tls.Conn, cfg MuxConfig) (Conn, error) {
	m := newMux(tc, cfg.Logger)
	sess, err := yamux.Client(m.io, cfg.yamuxConfig(m.log))
	if err != nil {
		tc.NetConn().Close()
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	ctrl, err := sess.OpenStream()
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("open the control stream: %w", m.lostErr())
	}
	m.start(sess, ctrl)
	return m, nil
}

// NewMuxServer runs a yamux session, as the proxy's side, over tc, whose TLS
// handshake is done, and waits for the agent's control stream until ctx
// ends. The Conn owns tc; on error tc is closed.
func NewMuxServer(ctx context.Context, tc *tls.Conn, cfg MuxConfig) (Conn, error) {
	m := newMux(tc, cfg.Logger)
	sess, err := yamux.Server(m.io, cfg.yamuxConfig(m.log))
	if err != nil {
		tc.NetConn().Close()
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	ctrl, err := sess.AcceptStreamWithContext(ctx)
	if err != nil {
		sess.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no yamux stream from the peer: %w", ctx.Err())
		}
		return nil, fmt.Errorf("the peer does not speak yamux: %w", m.lostErr())
	}
	m.start(sess, ctrl)
	return m, nil
}

func newMux(tc *tls.Conn, log *slog.Logger) *muxConn {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &muxConn{
		tc:      tc,
		io:      &ioConn{Conn: tc},
		log:     &yamuxLog{log: log},
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
}

func (m *muxConn) start(sess *yamux.Session, ctrl *yamux.Stream) {
	m.sess, m.ctrl = sess, ctrl
	go m.run()
}

// run owns the session's end: it waits for the peer's Close message, the
// session's death, or this side's Close (then lingers for the peer to
// close), closes the session and sets err.
func (m *muxConn) run() {
	read := make(chan error, 1)
	go func() { // joined below: the control stream's Read ends with the session
		c, err := proto.Expect[proto.Close](m.ctrl)
		switch {
		case err == nil:
			m.setErr(&CloseError{Remote: true, Code: c.Code, Reason: c.Reason})
		case !m.sess.IsClosed():
			// The session is up, so the peer ended the control stream
			// or wrote something else on it.
			m.setErr(fmt.Errorf("the peer broke the tunnel transport: control stream: %w", err))
		}
		read <- err
	}()
	closing, got := m.closing, false
	var linger <-chan time.Time
wait:
	for {
		select {
		case <-read:
			got = true
			break wait
		case <-closing:
			closing = nil
			t := time.NewTimer(closeLinger)
			defer t.Stop()
			linger = t.C
		case <-linger:
			break wait
		}
	}
	m.sess.Close()
	if !got {
		<-read
	}
	m.setErr(m.lostErr())
	m.mu.Lock()
	m.noDrains = true
	m.mu.Unlock()
	m.drains.Wait()
	close(m.done)
}

// lostErr says why the session ended when nobody said why.
func (m *muxConn) lostErr() error {
	line := m.log.lastError()
	if strings.Contains(line, "keepalive failed") {
		return fmt.Errorf("%w (yamux: %s)", ErrIdleTimeout, line)
	}
	if err := m.io.readErr(); err != nil {
		if err == io.EOF {
			return errors.New("the peer closed the TCP connection without saying why")
		}
		return fmt.Errorf("TCP connection lost: %w", err)
	}
	if line != "" {
		return fmt.Errorf("yamux: %s", line)
	}
	return errors.New("yamux session closed")
}

func (m *muxConn) setErr(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.mu.Unlock()
}

func (*muxConn) Transport() string { return TCP }

func (m *muxConn) OpenStream(ctx context.Context) (Stream, error) {
	// yamux's OpenStream takes no context. It blocks only while
	// AcceptBacklog opens wait for the peer's acknowledgement, which a live
	// peer sends within a round trip and a dead one ends with the session.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := m.sess.OpenStream()
	if err != nil {
		return nil, m.openErr(err)
	}
	return &muxStream{c: m, st: st}, nil
}

func (m *muxConn) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := m.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, m.sessionErr(err)
	}
	return &muxStream{c: m, st: st}, nil
}

// sessionErr returns the connection's error for an error of the session:
// the reason it ended, once it has.
func (m *muxConn) sessionErr(err error) error {
	if !m.sess.IsClosed() {
		return err
	}
	<-m.done
	return m.err
}

// openErr is sessionErr for a failed OpenStream. yamux reports a failed
// write to the opener before it marks the session closed, and the write
// often failed only because the peer had already said why it hung up (a TLS
// alert waiting to be read), so give a dying session a moment to record
// that reason. Only opens wait: stream reads and writes end on every
// session's normal path.
func (m *muxConn) openErr(err error) error {
	t := time.NewTimer(openErrWait)
	defer t.Stop()
	select {
	case <-m.done:
		return m.err
	case <-t.C:
		return m.sessionErr(err)
	}
}

// openErrWait bounds how long openErr waits for a failing session to end
// and say why.
const openErrWait = 250 * time.Millisecond

func (m *muxConn) Close(code uint64, reason string) {
	m.closeOnce.Do(func() {
		m.setErr(&CloseError{Code: code, Reason: reason})
		if !m.sess.IsClosed() {
			if len(reason) > maxReasonLen {
				reason = strings.ToValidUTF8(reason[:maxReasonLen], "")
			}
			m.tc.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
			proto.WriteMessage(m.ctrl, proto.Close{Version: proto.Version, Code: code, Reason: reason})
		}
		close(m.closing)
	})
}

func (m *muxConn) Done() <-chan struct{} { return m.done }

func (m *muxConn) Err() error {
	select {
	case <-m.done:
		return m.err
	default:
		return nil
	}
}

func (m *muxConn) LocalAddr() net.Addr      { return m.tc.LocalAddr() }
func (m *muxConn) RemoteAddr() net.Addr     { return m.tc.RemoteAddr() }
func (m *muxConn) TLS() tls.ConnectionState { return m.tc.ConnectionState() }

// ioConn is the TLS connection as yamux uses it. It remembers the first read
// error that this side's Close did not cause (why the session died), and
// closes the TCP connection without a TLS close_notify, which could block a
// closing session for seconds behind a peer that does not read; the peer
// reads a clean EOF all the same.
type ioConn struct {
	*tls.Conn
	closed atomic.Bool

	mu   sync.Mutex // guards rerr
	rerr error

	// A data frame's header held back for its body (see Write). Only
	// yamux's send loop writes, one write at a time.
	hdr    [yamuxHeaderSize]byte
	hdrLen int
}

// yamux v0.1.2's frame header: version, type, flags (2), stream ID (4),
// length (4). Type 0 is data.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	// tlsRecordMax is the most plaintext one TLS record carries.
	tlsRecordMax = 16 << 10
)

// recordPool holds the buffers Write joins a header and the start of its
// body in: one TLS record's worth, taken for the write only, so an idle
// connection holds none.
var recordPool = sync.Pool{New: func() any { b := make([]byte, 0, tlsRecordMax); return &b }}

// Write passes yamux's writes to TLS. yamux writes a data frame as two
// writes, the 12-byte header and then the body, and crypto/tls makes each
// write at least one record: a seal, a syscall and a record header for
// 12 bytes, and again on the reading side. Write holds a data frame's
// header back and sends it in one record with the first bytes of the body
// (the rest, if any, follows in the same call). Headers without a body
// (window updates, pings, SYN/FIN without data) are written at once.
func (c *ioConn) Write(p []byte) (int, error) {
	if c.hdrLen == 0 {
		if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
			c.hdrLen = copy(c.hdr[:], p)
			return len(p), nil
		}
		return c.Conn.Write(p)
	}
	bp := recordPool.Get().(*[]byte)
	defer recordPool.Put(bp)
	first := min(len(p), tlsRecordMax-c.hdrLen)
	b := append(append((*bp)[:0], c.hdr[:c.hdrLen]...), p[:first]...)
	hl := c.hdrLen
	c.hdrLen = 0
	n, err := c.Conn.Write(b)
	if err != nil {
		return max(n-hl, 0), err
	}
	if first == len(p) {
		return len(p), nil
	}
	m, err := c.Conn.Write(p[first:])
	return first + m, err
}

func (c *ioConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && !c.closed.Load() {
		c.mu.Lock()
		if c.rerr == nil {
			c.rerr = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *ioConn) Close() error {
	c.closed.Store(true)
	return c.Conn.NetConn().Close()
}

func (c *ioConn) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rerr
}

// yamuxLog passes yamux's log lines to slog at Debug and remembers the
// last error line, which often is the only record of why a session died.
type yamuxLog struct {
	log *slog.Logger

	mu      sync.Mutex // guards lastErr
	lastErr string
}

var _ yamux.Logger = (*yamuxLog)(nil)

func (l *yamuxLog) Print(v ...any)                 { l.line(fmt.Sprint(v...)) }
func (l *yamuxLog) Printf(format string, v ...any) { l.line(fmt.Sprintf(format, v...)) }
func (l *yamuxLog) Println(v ...any)               { l.line(fmt.Sprintln(v...)) }

func (l *yamuxLog) line(s string) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "[ERR] "); ok {
		l.mu.Lock()
		l.lastErr = strings.TrimPrefix(rest, "yamux: ")
		l.mu.Unlock()
	}
	l.log.Debug(s)
}

func (l *yamuxLog) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// muxStream is a Stream over a yamux stream.
type muxStream struct {
	c  *muxConn
	st *yamux.Stream

	readMu     sync.Mutex  // held by Read while it reads
	eof        atomic.Bool // Read returned the peer's FIN
	readClosed atomic.Bool // CloseRead was called
	closeRead  sync.Once
}

var _ Stream = (*muxStream)(nil)

// longAgo is a deadline in the past, to wake a blocked Read.
var longAgo = time.Unix(1, 0)

func (s *muxStream) Read(p []byte) (int, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if s.readClosed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.st.Read(p)
	switch {
	case err == nil:
		return n, nil
	case s.readClosed.Load():
		return n, net.ErrClosed // woken by CloseRead
	case err == io.EOF && s.c.sess.IsClosed():
		// yamux ends every stream with EOF when the session dies: say
		// that the tunnel broke, not that the peer finished.
		return n, s.c.sessionErr(err)
	case err == io.EOF:
		s.eof.Store(true)
		return n, io.EOF
	}
	return n, s.c.sessionErr(err)
}

// maxFrame bounds the data frames a Write makes. yamux queues one frame per
// stream and writes frames whole, so a frame is how long every other stream
// (and the keepalive, which must be answered within the idle timeout) may
// wait behind this one on a slow link.
const maxFrame = 64 << 10

func (s *muxStream) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := s.st.Write(p[n:min(len(p), n+maxFrame)])
		n += m
		if err != nil {
			if errors.Is(err, yamux.ErrStreamClosed) && !s.c.sess.IsClosed() {
				return n, net.ErrClosed
			}
			return n, s.c.sessionErr(err)
		}
	}
	return n, nil
}

func (s *muxStream) CloseWrite() error { return s.st.Close() }

func (s *muxStream) CloseRead() {
	s.closeRead.Do(func() {
		s.readClosed.Store(true)
		if s.eof.Load() {
			return // the peer has finished: nothing more will arrive
		}
		s.c.mu.Lock()
		if s.c.noDrains {
			s.c.mu.Unlock()
			return
		}
		s.c.drains.Add(1)
		s.c.mu.Unlock()
		s.st.SetReadDeadline(longAgo) // wake a Read in progress
		go s.drain()
	})
}

// drain reads and discards until the peer's FIN or the session's end, so
// that the peer's writes do not block on a window nobody reads (QUIC's
// STOP_SENDING makes them fail instead).
func (s *muxStream) drain() {
	defer s.c.drains.Done()
	// Wait for a Read in progress to return (CloseRead woke it); Reads
	// that come later return at once, so the drain reads alone.
	s.readMu.Lock()
	s.st.SetReadDeadline(time.Time{})
	s.readMu.Unlock()
	buf := make([]byte, 16<<10)
	for {
		if _, err := s.st.Read(buf); err != nil {
			return
		}
	}
}

func (s *muxStream) Close() error {
	s.CloseRead()
	return s.st.Close()
}

// Abort is Close: yamux v0.1.2 cannot reset a single stream.
func (s *muxStream) Abort(uint64) { s.Close() }

func (s *muxStream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.st.SetWriteDeadline(t)
}

func (s *muxStream) SetReadDeadline(t time.Time) error {
	if s.readClosed.Load() {
		return nil // the drain owns the read deadline
	}
	return s.st.SetReadDeadline(t)
}

func (s *muxStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }
