package resume

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ServerConfig configures a Listener. Zero values take the documented
// defaults.
type ServerConfig struct {
	// Window is how long a detached session waits for its client to
	// resume; then its ServerConn's Read and Write fail (ErrGaveUp) and the
	// SSH server sees the connection end. It also bounds how long a session
	// the SSH server closed waits for the client to confirm. Default 5
	// minutes: longer than the client's default (2 minutes), so that a
	// client never gives up on a session the node still keeps, short
	// enough that abandoned sessions do not pile up.
	Window time.Duration
	// SniffTimeout is how long to wait for a new transport's first 4
	// bytes before treating it as plain SSH. A transport that sends
	// nothing in that time is handed to the SSH server as plain: some SSH
	// clients wait for the server's banner before sending theirs, and
	// they wait this long for it. Default 3s.
	SniffTimeout time.Duration
	// HandshakeTimeout bounds each handshake. Default 10s.
	HandshakeTimeout time.Duration
	// Keepalive is the ping interval when idle; a transport on which
	// nothing arrived for 3 intervals is dead. Default 5s.
	Keepalive time.Duration
	// MaxUnacked bounds each session's replay buffer (Write blocks beyond
	// it) and the bytes received and not yet Read. Default 4 MiB. Memory
	// is used only while data is in flight: an idle session holds a few
	// KiB.
	MaxUnacked int
	// User returns who is behind a transport, as the proxy authenticated
	// them (the node trusts its proxies). A session is resumed only by the
	// same user that opened it. Nil: not checked.
	User func(net.Conn) string
	// Logger receives session events. Nil: discarded.
	Logger *slog.Logger
	// Metrics is where the Listener registers its metrics. Nil: not
	// registered.
	Metrics prometheus.Registerer
}

func (c *ServerConfig) checkAndSetDefaults() error {
	var err error
	if c.Window, err = positive("ServerConfig.Window", c.Window, defaultServerWindow); err != nil {
		return err
	}
	if c.SniffTimeout, err = positive("ServerConfig.SniffTimeout", c.SniffTimeout, defaultSniffTimeout); err != nil {
		return err
	}
	if c.HandshakeTimeout, err = positive("ServerConfig.HandshakeTimeout", c.HandshakeTimeout, defaultHandshakeTimeout); err != nil {
		return err
	}
	if c.Keepalive, err = positive("ServerConfig.Keepalive", c.Keepalive, defaultKeepalive); err != nil {
		return err
	}
	if c.MaxUnacked < 0 {
		return fmt.Errorf("resume: ServerConfig.MaxUnacked is %d: it must be positive (0 for the default)", c.MaxUnacked)
	}
	if c.MaxUnacked == 0 {
		c.MaxUnacked = defaultMaxUnacked
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Listener wraps the listener the node's SSH server accepts from. Accept
// returns plain connections (whose first bytes are not Magic) as a net.Conn
// that replays the sniffed bytes (see Inner), and new resumable sessions as
// *ServerConn. Resumptions attach to their session and never come out of
// Accept.
//
// Goroutines: acceptLoop accepts from the inner listener; each new
// transport gets a goroutine that sniffs it and runs its handshake (a slow
// client never holds up another); each attached session has its link's two.
// All are counted in wg, and Close waits for them.
type Listener struct {
	inner net.Listener
	cfg   ServerConfig
	m     *metrics
	log   *slog.Logger

	accepted  chan net.Conn // from handshake goroutines to Accept
	closing   chan struct{} // closed by Close
	loopDone  chan struct{} // closed when acceptLoop returns; loopErr is set before
	loopErr   error
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup

	mu       sync.Mutex // guards the following, and the fields of ServerConn marked so
	sessions map[[sessionIDLen]byte]*ServerConn
	pending  map[net.Conn]struct{} // transports being sniffed or in their handshake
	attached int
	detached int
	closed   bool
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps inner. It starts accepting at once.
func NewListener(inner net.Listener, cfg ServerConfig) (*Listener, error) {
	if inner == nil {
		return nil, errors.New("resume: NewListener needs an inner listener")
	}
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	l := &Listener{
		inner:    inner,
		cfg:      cfg,
		m:        m,
		log:      cfg.Logger,
		accepted: make(chan net.Conn),
		closing:  make(chan struct{}),
		loopDone: make(chan struct{}),
		sessions: make(map[[sessionIDLen]byte]*ServerConn),
		pending:  make(map[net.Conn]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Accept returns the next plain connection or new resumable session.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accepted:
		return c, nil
	case <-l.closing:
		return nil, fmt.Errorf("accept: %w", net.ErrClosed)
	case <-l.loopDone:
		return nil, fmt.Errorf("accept: %w", l.loopErr)
	}
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close closes the inner listener and every session (their clients are
// told the node is shutting down), and waits for every goroutine of the
// Listener to end. It is idempotent.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		pending := make([]net.Conn, 0, len(l.pending))
		for c := range l.pending {
			pending = append(pending, c)
		}
		sessions := make([]*ServerConn, 0, len(l.sessions))
		for _, sc := range l.sessions {
			sessions = append(sessions, sc)
		}
		l.mu.Unlock()
		close(l.closing)
		l.closeErr = l.inner.Close()
		for _, c := range pending {
			c.Close()
		}
		for _, sc := range sessions {
			sc.s.end(errShutdown, errorFrame(codeShutdown, "the node is shutting down"), false)
		}
		l.wg.Wait()
	})
	return l.closeErr
}

var errShutdown = fmt.Errorf("the node's listener was closed: %w", net.ErrClosed)

// Sessions returns how many resumable sessions have a transport (attached)
// and how many wait for their client (detached).
func (l *Listener) Sessions() (attached, detached int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.attached, l.detached
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	defer close(l.loopDone)
	var delay time.Duration
	for {
		conn, err := l.inner.Accept()
		if err != nil {
			if isClosed(l.closing) || errors.Is(err, net.ErrClosed) {
				l.loopErr = err
				return
			}
			// A transient failure (out of file descriptors, say): wait
			// and retry, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("resume listener: accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-l.closing:
				l.loopErr = net.ErrClosed
				return
			}
			continue
		}
		delay = 0
		l.wg.Add(1)
		go l.handle(conn)
	}
}

// track registers a transport in its handshake, so Close can end it;
// false if the Listener is closed.
func (l *Listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *Listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
}

// deliver hands c to Accept, or closes it if the Listener closes first.
func (l *Listener) deliver(c net.Conn) {
	select {
	case l.accepted <- c:
	case <-l.closing:
		c.Close()
	case <-l.loopDone:
		c.Close()
	}
}

// handle sniffs a new transport and runs its handshake.
func (l *Listener) handle(conn net.Conn) {
	defer l.wg.Done()
	if !l.track(conn) {
		conn.Close()
		return
	}
	pre, resumable, err := sniff(conn, l.cfg.SniffTimeout)
	if err != nil {
		l.untrack(conn)
		conn.Close()
		l.log.Debug("resume listener: transport ended before saying anything", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	if !resumable {
		l.untrack(conn)
		l.deliver(&plainConn{Conn: conn, pre: pre})
		return
	}
	owned := false
	defer func() {
		l.untrack(conn)
		if !owned {
			conn.Close()
		}
	}()
	conn.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	var buf handshakeBuf
	version, h, err := readClientOpening(conn, &buf)
	if err != nil {
		l.log.Debug("resume listener: bad opening", "remote", conn.RemoteAddr().String(), "err", err)
		if errors.Is(err, errProtocol) {
			conn.Write(append(appendPreamble(nil), errorFrame(codeProtocol, err.Error())...))
		}
		return
	}
	if version != Version {
		reason := fmt.Sprintf("the client speaks resume version %d, this node speaks %d", version, Version)
		conn.Write(append(appendPreamble(nil), errorFrame(codeUnsupported, reason)...))
		return
	}
	switch h.kind {
	case helloNew:
		owned = l.startSession(conn, h)
	case helloResume:
		owned = l.resume(conn, h, &buf)
	}
}

// sniff reads a transport's first bytes: Magic means a resumable client.
// Anything else, or nothing within timeout, is plain SSH; the bytes read
// are returned to be replayed. An error means the transport ended before
// sending anything.
func sniff(conn net.Conn, timeout time.Duration) (pre []byte, resumable bool, err error) {
	conn.SetReadDeadline(time.Now().Add(timeout))
	defer conn.SetReadDeadline(time.Time{})
	var b [len(Magic)]byte
	n := 0
	for n < len(b) {
		var m int
		m, err = conn.Read(b[n:])
		n += m
		if string(b[:n]) != Magic[:n] || err != nil {
			break
		}
	}
	if n == len(b) && string(b[:]) == Magic {
		return nil, true, nil
	}
	if n == 0 && err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, false, nil // a client that waits for the server's banner
		}
		return nil, false, err
	}
	return append([]byte(nil), b[:n]...), false, nil
}

// startSession answers a HELLO new and hands the session to Accept. It
// reports whether it kept conn.
func (l *Listener) startSession(conn net.Conn, h hello) bool {
	var id [sessionIDLen]byte
	var nonce [nonceLen]byte
	rand.Read(id[:])
	rand.Read(nonce[:])
	msg := appendPreamble(make([]byte, 0, preambleLen+headerLen+sessionIDLen+nonceLen))
	msg = appendFrame(msg, frameWelcome, append(id[:], nonce[:]...))
	if _, err := conn.Write(msg); err != nil {
		l.log.Debug("resume listener: write WELCOME", "remote", conn.RemoteAddr().String(), "err", err)
		return false
	}
	conn.SetDeadline(time.Time{})
	sc := &ServerConn{l: l, id: id, key: h.key, first: conn}
	if l.cfg.User != nil {
		sc.user = l.cfg.User(conn)
	}
	sc.log = l.log.With("session", sc.SessionID(), "user", sc.user)
	sc.s = newStream(streamConfig{
		keepalive:  l.cfg.Keepalive,
		maxUnacked: l.cfg.MaxUnacked,
		peer:       "the client",
		log:        sc.log,
	}, sc, &l.wg)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.sessions[id] = sc
	l.setStateLocked(sc, stateAttached)
	l.mu.Unlock()
	lk := newLink(sc.s, conn)
	if _, _, err := sc.s.attach(lk, 0); err != nil {
		return false // Close ended the session meanwhile
	}
	lk.start()
	sc.log.Debug("new resumable session", "remote", conn.RemoteAddr().String())
	l.deliver(sc)
	return true
}

// refuse answers a resumption with an ERROR and counts it.
func (l *Listener) refuse(conn net.Conn, outcome, reason string, preamble bool) {
	l.m.resumptions.WithLabelValues(outcome).Inc()
	var msg []byte
	if preamble {
		msg = appendPreamble(msg)
	}
	conn.Write(append(msg, errorFrame(codeRefused, reason)...))
	l.log.Info("refused to resume a session", "remote", conn.RemoteAddr().String(), "reason", reason)
}

// resume runs a resumption: challenge, proof, user check, then the
// transport takes over the session. It reports whether it kept conn.
func (l *Listener) resume(conn net.Conn, h hello, buf *handshakeBuf) bool {
	l.mu.Lock()
	sc := l.sessions[h.id]
	l.mu.Unlock()
	if sc == nil {
		l.refuse(conn, outcomeExpired, l.unknownReason(h.id), true)
		return false
	}
	var nonce [nonceLen]byte
	rand.Read(nonce[:])
	msg := appendPreamble(make([]byte, 0, preambleLen+headerLen+nonceLen))
	if _, err := conn.Write(appendFrame(msg, frameChallenge, nonce[:])); err != nil {
		return false
	}
	t, sig, err := readHandshakeFrame(conn, buf)
	if err == nil && t != frameProof {
		err = protocolErrorf("expected PROOF, got %s", t)
	}
	if err != nil {
		sc.log.Debug("resumption failed before the proof", "remote", conn.RemoteAddr().String(), "err", err)
		return false
	}
	if !ed25519.Verify(sc.key, proofMessage(h.id, nonce[:], h.received), sig) {
		l.refuse(conn, outcomeRefused, "resumption refused: the proof does not match the session key", false)
		return false
	}
	if l.cfg.User != nil {
		if u := l.cfg.User(conn); u != sc.user {
			l.refuse(conn, outcomeRefused, "resumption refused: session belongs to another user", false)
			return false
		}
	}

	// One resumption at a time per session: the later one takes over.
	sc.attachMu.Lock()
	defer sc.attachMu.Unlock()
	sc.s.mu.Lock()
	old := sc.s.link
	sc.s.mu.Unlock()
	l.mu.Lock()
	wasDetached := sc.state == stateDetached
	l.mu.Unlock()
	outcome := outcomeOK
	if old != nil {
		outcome = outcomeTakeover
		old.fail(errors.New("the client resumed the session over another transport"))
		<-old.stopped
	}
	lk := newLink(sc.s, conn)
	replayed, received, err := sc.s.attach(lk, h.received)
	if err != nil {
		if !errors.Is(err, errProtocol) {
			// It ended while we checked the proof.
			l.refuse(conn, outcomeExpired, l.unknownReason(h.id), false)
			return false
		}
		sc.log.Warn("resumption with inconsistent offsets; ending the session", "err", err)
		conn.Write(errorFrame(codeProtocol, err.Error()))
		sc.s.end(fmt.Errorf("%w (the session cannot continue)", err), nil, false)
		return false
	}
	var ans [headerLen + offsetLen]byte
	if _, err := conn.Write(appendOffsetFrame(ans[:0], frameResumed, received)); err != nil {
		lk.fail(fmt.Errorf("write RESUMED: %w", err)) // the goroutines exit at once, and the session detaches again
	}
	conn.SetDeadline(time.Time{})

	l.mu.Lock()
	stall := time.Since(sc.detachedAt)
	l.setStateLocked(sc, stateAttached)
	l.mu.Unlock()
	if wasDetached {
		l.m.stall.Observe(stall.Seconds())
	}
	l.m.replayed.Add(float64(replayed))
	l.m.resumptions.WithLabelValues(outcome).Inc()
	sc.log.Debug("resumed session", "remote", conn.RemoteAddr().String(), "outcome", outcome, "replayed", replayed)
	lk.start()
	return true
}

func (l *Listener) unknownReason(id [sessionIDLen]byte) string {
	return fmt.Sprintf("session %x is unknown or expired (the node keeps a detached session for %v)", id, l.cfg.Window)
}

type sessionState int

const (
	stateNew sessionState = iota
	stateAttached
	stateDetached
	stateGone
)

// setStateLocked moves a session to st, keeping the counts, the gauges and
// its timer right. Called with l.mu held. A session that is gone stays gone.
func (l *Listener) setStateLocked(sc *ServerConn, st sessionState) {
	if sc.state == stateGone {
		return
	}
	switch sc.state {
	case stateAttached:
		l.attached--
	case stateDetached:
		l.detached--
	}
	switch st {
	case stateAttached:
		l.attached++
	case stateDetached:
		l.detached++
	}
	sc.state = st
	l.stopTimerLocked(sc)
	switch st {
	case stateDetached:
		sc.detachedAt = time.Now()
		l.armTimerLocked(sc)
	case stateAttached:
		if sc.closing {
			l.armTimerLocked(sc)
		}
	case stateGone:
		delete(l.sessions, sc.id)
	}
	l.m.sessions.WithLabelValues("attached").Set(float64(l.attached))
	l.m.sessions.WithLabelValues("detached").Set(float64(l.detached))
}

func (l *Listener) stopTimerLocked(sc *ServerConn) {
	if sc.timer != nil {
		sc.timer.Stop()
		sc.timer = nil
	}
}

// armTimerLocked ends the session after the window: a detached session
// whose client did not come back, or a closed one whose client did not
// confirm.
func (l *Listener) armTimerLocked(sc *ServerConn) {
	sc.timerGen++
	gen := sc.timerGen
	sc.timer = time.AfterFunc(l.cfg.Window, func() {
		l.mu.Lock()
		if sc.timerGen != gen || sc.state == stateGone {
			l.mu.Unlock()
			return // re-armed or stopped meanwhile
		}
		var err error
		if sc.state == stateDetached {
			err = expiredError(l.cfg.Window, sc.lastErr)
			sc.log.Info("the client did not resume the session in time; dropping it", "window", l.cfg.Window)
		} else {
			err = net.ErrClosed
		}
		l.mu.Unlock()
		sc.s.end(err, nil, false)
	})
}

// ServerConn is one resumable session on the node: a net.Conn plus
// CloseWrite, whose Read and Write survive transport changes. RemoteAddr
// and LocalAddr are those of the transport that opened the session.
type ServerConn struct {
	l     *Listener
	s     *stream
	id    [sessionIDLen]byte
	key   ed25519.PublicKey
	user  string
	first net.Conn
	log   *slog.Logger

	attachMu sync.Mutex // serializes resumptions: takeover, then attach

	// Guarded by l.mu.
	state      sessionState
	closing    bool // Close was called
	detachedAt time.Time
	lastErr    error // why the last transport ended
	timer      *time.Timer
	timerGen   int
}

var (
	_ net.Conn                        = (*ServerConn)(nil)
	_ interface{ CloseWrite() error } = (*ServerConn)(nil)
)

func (sc *ServerConn) detached(lk *link) {
	sc.l.mu.Lock()
	sc.lastErr = lk.err
	sc.l.setStateLocked(sc, stateDetached)
	sc.l.mu.Unlock()
	// Debug: a proxy that drains moves all its sessions at once; the
	// metrics count them.
	sc.log.Debug("session detached; waiting for the client to resume", "err", lk.err, "window", sc.l.cfg.Window)
}

func (sc *ServerConn) ended(err error) {
	sc.l.mu.Lock()
	sc.l.setStateLocked(sc, stateGone)
	sc.l.mu.Unlock()
	sc.log.Debug("session ended", "err", err)
}

// Read reads from the session; it waits while the client reconnects.
func (sc *ServerConn) Read(p []byte) (int, error) { return sc.s.Read(p) }

// Write writes to the session; it buffers while the client reconnects.
func (sc *ServerConn) Write(p []byte) (int, error) { return sc.s.Write(p) }

// CloseWrite half-closes the session: the client reads io.EOF after all
// data written before.
func (sc *ServerConn) CloseWrite() error { return sc.s.closeWrite() }

// Close ends the session: what was written is still delivered (across
// reconnections), the client reads io.EOF, and the node drops the session
// once the client confirms, or after the window. It does not block, and is
// idempotent.
func (sc *ServerConn) Close() error {
	sc.s.close()
	sc.l.mu.Lock()
	if !sc.closing {
		sc.closing = true
		if sc.state == stateAttached {
			sc.l.armTimerLocked(sc)
		}
	}
	sc.l.mu.Unlock()
	return nil
}

// SessionID returns the session's ID, in hex.
func (sc *ServerConn) SessionID() string { return hex.EncodeToString(sc.id[:]) }

// User returns the user who opened the session (ServerConfig.User), or "".
func (sc *ServerConn) User() string { return sc.user }

// Inner returns the transport that opened the session, so the caller can
// read its dial metadata (DialRequest). It may be closed by now.
func (sc *ServerConn) Inner() net.Conn { return sc.first }

// LocalAddr returns the local address of the first transport.
func (sc *ServerConn) LocalAddr() net.Addr { return sc.first.LocalAddr() }

// RemoteAddr returns the remote address of the first transport.
func (sc *ServerConn) RemoteAddr() net.Addr { return sc.first.RemoteAddr() }

// SetDeadline sets the session's read and write deadlines.
func (sc *ServerConn) SetDeadline(t time.Time) error {
	sc.s.rdl.set(t)
	sc.s.wdl.set(t)
	return nil
}

// SetReadDeadline sets the deadline for Read.
func (sc *ServerConn) SetReadDeadline(t time.Time) error {
	sc.s.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for Write.
func (sc *ServerConn) SetWriteDeadline(t time.Time) error {
	sc.s.wdl.set(t)
	return nil
}

// plainConn is a plain SSH transport: it replays the bytes sniffed from it,
// and forwards CloseWrite and CloseRead. Everything else of the inner conn
// (DialRequest, say) is reached through Inner.
type plainConn struct {
	net.Conn
	mu  sync.Mutex // guards pre
	pre []byte
}

func (c *plainConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// Inner returns the transport as the inner listener returned it.
func (c *plainConn) Inner() net.Conn { return c.Conn }

// CloseWrite half-closes the inner conn, if it can.
func (c *plainConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write: %T cannot half-close", c.Conn)
}

// CloseRead half-closes the inner conn for reading, if it can.
func (c *plainConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return fmt.Errorf("close read: %T cannot half-close", c.Conn)
}
