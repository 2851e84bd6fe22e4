package resume

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Attempt describes why the client needs a (new) transport.
type Attempt struct {
	// N is 0 for the first transport of the session, then 1, 2, ... for
	// each dial attempt after a transport was lost (it starts at 1 again
	// after every loss).
	N int
	// Err is why the previous transport ended, or (from N == 2 on) why the
	// previous attempt failed; nil for N == 0.
	Err error
	// Moved: the lost transport ended cleanly (io.EOF without the session
	// ending) or Reconnect asked to move: the proxy wants us elsewhere, so
	// dial another proxy. It stays set for every attempt after that loss.
	Moved bool
	// Since is the time since the transport was lost (0 for N == 0).
	Since time.Duration
}

// ClientConfig configures Dial. Zero values take the documented defaults.
type ClientConfig struct {
	// Dial opens a fresh transport to the node (through any proxy). It is
	// called for the first transport and for every reconnection attempt;
	// its context ends after HandshakeTimeout, or when the window runs
	// out. An error wrapping ErrRefused ends the session at once (no path
	// can help: access revoked, the node gone); others are retried until
	// the window passes. Required.
	Dial func(ctx context.Context, a Attempt) (net.Conn, error)
	// Key is the session's private key: resumption must prove it. Nil: a
	// fresh ed25519 key is generated per session, which is enough, since
	// only this process resumes the session.
	Key ed25519.PrivateKey
	// Window is how long the client keeps trying after losing its
	// transport before it gives up (ErrGaveUp). Default 2 minutes: a proxy
	// restart or a Wi-Fi roam fits; a user who lost the network for longer
	// has given up too. The node keeps sessions longer (ServerConfig).
	Window time.Duration
	// HandshakeTimeout bounds each dial and handshake, and how long Close
	// waits for the node to confirm the end of the session. Default 10s.
	HandshakeTimeout time.Duration
	// MaxUnacked bounds the replay buffer: Write blocks when this many
	// bytes are unacknowledged. It also bounds the bytes received and not
	// yet Read. Default 4 MiB: more than a round trip of a fast path
	// (100 ms at 300 Mbit/s), so that acknowledgements never throttle a
	// transfer, little enough for a laptop.
	MaxUnacked int
	// Keepalive is the ping interval when idle; a transport on which
	// nothing arrived for 3 intervals is dead. Default 5s: a dead path is
	// noticed within 15s, and an idle session costs a few bytes per 5s.
	Keepalive time.Duration
	// Logger receives reconnection events. Nil: discarded.
	Logger *slog.Logger
	// OnResume, if set, is called after each successful resumption (for
	// logs and tests), from the goroutine that reconnects: it must not
	// block.
	OnResume func(ResumeInfo)
}

// ResumeInfo describes one resumption.
type ResumeInfo struct {
	// Attempts is how many dial attempts it took (1 if the first worked).
	Attempts int
	// Stall is the time from losing the transport to resuming.
	Stall time.Duration
	// Moved: the transport ended cleanly or Reconnect was called.
	Moved bool
	// Replayed is how many bytes this side sent again.
	Replayed int64
	// Err is what broke the previous transport.
	Err error
}

// Defaults of ClientConfig and ServerConfig.
const (
	defaultClientWindow     = 2 * time.Minute
	defaultServerWindow     = 5 * time.Minute
	defaultHandshakeTimeout = 10 * time.Second
	defaultMaxUnacked       = 4 << 20
	defaultKeepalive        = 5 * time.Second
	defaultSniffTimeout     = 3 * time.Second
)

func (c *ClientConfig) checkAndSetDefaults() error {
	if c.Dial == nil {
		return errors.New("resume: ClientConfig.Dial is required")
	}
	if c.Key != nil && len(c.Key) != ed25519.PrivateKeySize {
		return fmt.Errorf("resume: ClientConfig.Key is %d bytes, an ed25519 private key is %d", len(c.Key), ed25519.PrivateKeySize)
	}
	var err error
	c.Window, err = positive("ClientConfig.Window", c.Window, defaultClientWindow)
	if err != nil {
		return err
	}
	c.HandshakeTimeout, err = positive("ClientConfig.HandshakeTimeout", c.HandshakeTimeout, defaultHandshakeTimeout)
	if err != nil {
		return err
	}
	c.Keepalive, err = positive("ClientConfig.Keepalive", c.Keepalive, defaultKeepalive)
	if err != nil {
		return err
	}
	if c.MaxUnacked < 0 {
		return fmt.Errorf("resume: ClientConfig.MaxUnacked is %d: it must be positive (0 for the default)", c.MaxUnacked)
	}
	if c.MaxUnacked == 0 {
		c.MaxUnacked = defaultMaxUnacked
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func positive(name string, v, def time.Duration) (time.Duration, error) {
	if v < 0 {
		return 0, fmt.Errorf("resume: %s is %v: it must be positive (0 for the default)", name, v)
	}
	if v == 0 {
		return def, nil
	}
	return v, nil
}

// Conn is the client side of a resumable session. It implements net.Conn
// plus CloseWrite (half close: the node reads io.EOF after all data).
//
// Read and Write keep working across reconnections: while the client
// reconnects, Write buffers (blocking only when MaxUnacked bytes are
// unacknowledged) and Read waits. Once the session cannot continue
// (ErrGaveUp, ErrRefused, a protocol error), Read returns what was already
// received, then that error, and Write returns it at once. Close ends the
// session for both sides.
//
// Goroutines: supervise owns reconnection; each transport has a reader and
// a writer (link). Close waits for all of them.
type Conn struct {
	cfg           ClientConfig
	s             *stream
	id            [sessionIDLen]byte
	key           ed25519.PrivateKey
	local, remote net.Addr
	log           *slog.Logger

	ctx     context.Context // ends when Close is done waiting
	cancel  context.CancelFunc
	moveReq chan error // capacity 1: Reconnect's reason
	wg      sync.WaitGroup

	closeOnce sync.Once
}

var (
	_ net.Conn                        = (*Conn)(nil)
	_ interface{ CloseWrite() error } = (*Conn)(nil)
)

// Dial performs the first transport dial and the new-session handshake
// and returns the resumable connection. If the node is an older one without
// resume support it returns an error wrapping ErrUnsupported; the caller
// then dials again and speaks plain SSH.
func Dial(ctx context.Context, cfg ClientConfig) (*Conn, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	key := cfg.Key
	if key == nil {
		var err error
		if _, key, err = ed25519.GenerateKey(rand.Reader); err != nil {
			return nil, fmt.Errorf("generate session key: %w", err)
		}
	}
	hctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	conn, err := cfg.Dial(hctx, Attempt{})
	if err != nil {
		return nil, fmt.Errorf("dial the node: %w", err)
	}
	id, err := handshakeNew(hctx, conn, key.Public().(ed25519.PublicKey), cfg.HandshakeTimeout)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start a resumable session: %w", err)
	}
	c := &Conn{
		cfg:     cfg,
		id:      id,
		key:     key,
		local:   conn.LocalAddr(),
		remote:  conn.RemoteAddr(),
		moveReq: make(chan error, 1),
	}
	c.log = cfg.Logger.With("session", hex.EncodeToString(id[:]))
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.s = newStream(streamConfig{
		keepalive:  cfg.Keepalive,
		maxUnacked: cfg.MaxUnacked,
		peer:       "the node",
		log:        c.log,
	}, clientHooks{}, &c.wg)
	l := newLink(c.s, conn)
	if _, _, err := c.s.attach(l, 0); err != nil {
		conn.Close()
		return nil, err // cannot happen on a new stream
	}
	l.start()
	c.wg.Add(1)
	go c.supervise(l)
	return c, nil
}

// clientHooks: the client's supervisor watches the link and the session
// directly.
type clientHooks struct{}

func (clientHooks) detached(*link) {}
func (clientHooks) ended(error)    {}

// watchConn bounds a handshake on conn by timeout and ctx. The returned
// function ends the watch and clears the deadline; if ctx ended first it
// returns ctx's error instead, and conn must not be used any more (the
// watcher may still be setting a deadline in the past).
func watchConn(ctx context.Context, conn net.Conn, timeout time.Duration) (stop func() error) {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	conn.SetDeadline(d)
	stopWatch := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return func() error {
		if !stopWatch() {
			return ctx.Err()
		}
		conn.SetDeadline(time.Time{})
		return nil
	}
}

// endWatch ends a handshake's watch: err is the handshake's own result.
func endWatch(stop func() error, err error) error {
	if serr := stop(); serr != nil {
		if err == nil {
			return serr
		}
		return fmt.Errorf("%w (%w)", serr, err)
	}
	return err
}

// handshakeNew opens a session: preamble and HELLO new, then the node's
// preamble and WELCOME.
func handshakeNew(ctx context.Context, conn net.Conn, pub ed25519.PublicKey, timeout time.Duration) (id [sessionIDLen]byte, err error) {
	stop := watchConn(ctx, conn, timeout)
	defer func() { err = endWatch(stop, err) }()
	msg := appendPreamble(nil)
	msg = hello{kind: helloNew, key: pub}.append(msg)
	if _, err := conn.Write(msg); err != nil {
		return id, fmt.Errorf("write HELLO: %w", err)
	}
	if err := readNodePreamble(conn); err != nil {
		return id, err
	}
	var buf handshakeBuf
	body, err := readNodeFrame(conn, &buf, frameWelcome)
	if err != nil {
		return id, err
	}
	copy(id[:], body[:sessionIDLen])
	// The nonce in body[sessionIDLen:] is unused in version 1 (see the
	// package comment).
	return id, nil
}

// handshakeResume proves the session key over a fresh transport and
// returns what the node has received.
func handshakeResume(ctx context.Context, conn net.Conn, key ed25519.PrivateKey, id [sessionIDLen]byte, received uint64, timeout time.Duration) (peerReceived uint64, err error) {
	stop := watchConn(ctx, conn, timeout)
	defer func() { err = endWatch(stop, err) }()
	msg := appendPreamble(nil)
	msg = hello{kind: helloResume, id: id, received: received}.append(msg)
	if _, err := conn.Write(msg); err != nil {
		return 0, fmt.Errorf("write HELLO: %w", err)
	}
	if err := readNodePreamble(conn); err != nil {
		return 0, err
	}
	var buf handshakeBuf
	nonce, err := readNodeFrame(conn, &buf, frameChallenge)
	if err != nil {
		return 0, err
	}
	sig := ed25519.Sign(key, proofMessage(id, nonce, received))
	if _, err := conn.Write(appendFrame(nil, frameProof, sig)); err != nil {
		return 0, fmt.Errorf("write PROOF: %w", err)
	}
	body, err := readNodeFrame(conn, &buf, frameResumed)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(body), nil
}

// supervise watches the current transport and replaces it when it is lost
// or Reconnect asks, until the session ends.
func (c *Conn) supervise(l *link) {
	defer c.wg.Done()
	for {
		var (
			lost   time.Time
			cause  error
			moved  bool
			conn   net.Conn // dialed before the old transport was dropped
			dialed int
		)
		select {
		case <-l.stopped:
			lost = time.Now()
			cause = l.err
			moved = errors.Is(cause, io.EOF) // a clean close (see link.readError)
		case reason := <-c.moveReq:
			// Make before break: dial while the old transport still
			// works, then move.
			lost = time.Now()
			cause, moved, dialed = reason, true, 1
			var err error
			conn, err = c.dialAttempt(Attempt{N: 1, Err: reason, Moved: true}, lost)
			if err != nil {
				c.log.Warn("could not move the session to a new transport; staying on the current one", "reason", reason, "err", err)
				continue
			}
			l.fail(fmt.Errorf("moving to a new transport: %w", reason))
			<-l.stopped
		case <-c.ctx.Done():
			l.fail(net.ErrClosed)
			<-l.stopped
			return
		}
		if c.sessionOver() {
			if conn != nil {
				conn.Close()
			}
			return
		}
		c.log.Info("lost the transport to the node; resuming", "err", cause, "moved", moved)
		if l = c.reconnect(lost, cause, moved, conn, dialed); l == nil {
			return
		}
	}
}

// sessionOver reports whether the session ended, or Close was called
// (Close does not wait for a reconnection).
func (c *Conn) sessionOver() bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.err != nil || c.s.closeLocal
}

// dialAttempt dials one transport, bounded by the handshake timeout and
// the window.
func (c *Conn) dialAttempt(a Attempt, lost time.Time) (net.Conn, error) {
	ctx, cancel := c.attemptContext(lost)
	defer cancel()
	conn, err := c.cfg.Dial(ctx, a)
	if err != nil {
		return nil, fmt.Errorf("dial the node: %w", err)
	}
	return conn, nil
}

func (c *Conn) attemptContext(lost time.Time) (context.Context, context.CancelFunc) {
	d := time.Now().Add(c.cfg.HandshakeTimeout)
	if end := lost.Add(c.cfg.Window); end.Before(d) {
		d = end
	}
	return context.WithDeadline(c.ctx, d)
}

// reconnect re-establishes a transport for the session lost at lost. conn,
// if set, is a transport already dialed (dialed attempts so far). It
// returns the new link, or nil when the session is over.
func (c *Conn) reconnect(lost time.Time, cause error, moved bool, conn net.Conn, dialed int) *link {
	last := cause
	delay := time.Duration(0)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for n := dialed; ; {
		if conn == nil {
			if n > 0 {
				// Backoff: 0, 50ms, 100ms, ... doubling up to 2s.
				if delay == 0 {
					delay = 50 * time.Millisecond
				} else {
					delay = min(2*delay, 2*time.Second)
				}
				timer.Reset(min(delay, time.Until(lost.Add(c.cfg.Window))))
				select {
				case <-timer.C:
				case <-c.ctx.Done():
					return nil
				case <-c.s.done:
					return nil
				}
			}
			since := time.Since(lost)
			if since >= c.cfg.Window {
				err := gaveUpError(c.cfg.Window, last)
				c.log.Warn("giving up on the session", "err", err)
				c.s.end(err, nil, false)
				return nil
			}
			n++
			var err error
			conn, err = c.dialAttempt(Attempt{N: n, Err: last, Moved: moved, Since: since}, lost)
			if err != nil {
				if errors.Is(err, ErrRefused) {
					// Config.Dial knows that no path will do (access
					// revoked, the node gone for good): stop now.
					err = fmt.Errorf("lost the connection to the node and cannot resume: %w", err)
					c.log.Warn("cannot resume the session", "err", err)
					c.s.end(err, nil, false)
					return nil
				}
				c.log.Debug("reconnection attempt failed", "attempt", n, "err", err)
				last = err
				continue
			}
		}
		l, replayed, err := c.resumeOn(conn, lost)
		conn = nil
		if err == nil {
			info := ResumeInfo{Attempts: n, Stall: time.Since(lost), Moved: moved, Replayed: int64(replayed), Err: cause}
			c.log.Info("resumed the session", "attempts", info.Attempts, "stall", info.Stall, "replayed", info.Replayed, "transport", l.conn.RemoteAddr().String())
			if c.cfg.OnResume != nil {
				c.cfg.OnResume(info)
			}
			return l
		}
		if c.sessionOver() {
			return nil
		}
		// A refusal is final, and so is a node that no longer speaks
		// resume (downgraded): retrying cannot help.
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrUnsupported) {
			if errors.Is(err, ErrRefused) {
				err = refusedLostError(err)
			} else {
				err = fmt.Errorf("lost the connection to the node and could not resume: %w", err)
			}
			c.log.Warn("cannot resume the session", "err", err)
			c.s.end(err, nil, false)
			return nil
		}
		c.log.Debug("resumption attempt failed", "attempt", n, "err", err)
		last = err
	}
}

// resumeOn resumes the session over conn and attaches it.
func (c *Conn) resumeOn(conn net.Conn, lost time.Time) (*link, uint64, error) {
	ctx, cancel := c.attemptContext(lost)
	defer cancel()
	c.s.mu.Lock()
	received := c.s.received
	c.s.mu.Unlock()
	peerReceived, err := handshakeResume(ctx, conn, c.key, c.id, received, c.cfg.HandshakeTimeout)
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("resume over %s: %w", conn.RemoteAddr(), err)
	}
	l := newLink(c.s, conn)
	replayed, _, err := c.s.attach(l, peerReceived)
	if err != nil {
		if errors.Is(err, errProtocol) {
			// The two sides disagree on what was delivered: the
			// stream cannot be repaired. Tell the node, and stop.
			conn.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
			conn.Write(errorFrame(codeProtocol, err.Error()))
			c.s.end(fmt.Errorf("lost the connection to the node and could not resume: %w (reconnect to start a new session)", err), nil, false)
		}
		conn.Close()
		return nil, 0, err
	}
	l.start()
	return l, replayed, nil
}

// Read reads from the session.
func (c *Conn) Read(p []byte) (int, error) { return c.s.Read(p) }

// Write writes to the session.
func (c *Conn) Write(p []byte) (int, error) { return c.s.Write(p) }

// CloseWrite half-closes the session: the node reads io.EOF after all data
// written before, and can still write.
func (c *Conn) CloseWrite() error { return c.s.closeWrite() }

// Close ends the session for both sides: what was written is still
// delivered, then the node drops its state and its side reads io.EOF. If a
// transport is attached, Close waits (up to HandshakeTimeout) for the node
// to confirm; while reconnecting it does not wait, and the node drops the
// session when its window passes. Close is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.s.close() {
			t := time.NewTimer(c.cfg.HandshakeTimeout)
			select {
			case <-c.s.done:
			case <-t.C:
				c.log.Debug("the node did not confirm the end of the session in time")
			}
			t.Stop()
		}
		c.s.end(net.ErrClosed, nil, false)
		c.cancel()
		c.wg.Wait()
	})
	return nil
}

// Reconnect moves the session to a new transport now, for example because
// the caller learned that the proxy is draining. The new transport is
// dialed (Attempt.Moved set, Err = reason) while the old one keeps working;
// if the dial fails the session stays where it is.
func (c *Conn) Reconnect(reason error) {
	if reason == nil {
		reason = errors.New("reconnect requested")
	}
	select {
	case c.moveReq <- reason:
	default: // a move is already pending
	}
}

// SessionID returns the session's ID, in hex.
func (c *Conn) SessionID() string { return hex.EncodeToString(c.id[:]) }

// Transport returns the current transport, or nil while reconnecting.
func (c *Conn) Transport() net.Conn { return c.s.current() }

// LocalAddr returns the local address of the first transport.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address of the first transport.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and write deadlines of the session (not of a
// transport).
func (c *Conn) SetDeadline(t time.Time) error {
	c.s.rdl.set(t)
	c.s.wdl.set(t)
	return nil
}

// SetReadDeadline sets the deadline for Read.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.s.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for Write.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.s.wdl.set(t)
	return nil
}
