package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/tunnel/internal/transport"
	"jumpgate.dev/jumpgate/tunnel/proto"
	"jumpgate.dev/jumpgate/tunnel/udpgro"
)

// State is the state of one tunnel slot.
type State string

// Tunnel states.
const (
	StateIdle       State = "idle"       // Run is not running
	StateConnecting State = "connecting" // dialing, or waiting for the HelloAck
	StateConnected  State = "connected"  // the proxy accepted the tunnel
	StateBackoff    State = "backoff"    // waiting before the next attempt
)

// TunnelStatus describes one tunnel slot: the tunnel to one proxy address.
type TunnelStatus struct {
	ProxyAddr string
	State     State
	// Transport is how the tunnel is carried, or is being set up: "quic",
	// or "tcp" (TLS over TCP).
	Transport string
	// UDPBlocked says that QUIC to this proxy got no answer and the tunnel
	// fell back to TCP (Config.Transport auto only); QUIC is tried again
	// every QUICRetryInterval.
	UDPBlocked bool
	// Draining says that the proxy is draining and this tunnel is being
	// replaced: it closes once its replacement is up and no connection
	// dialed through it is open (Config.Discover only).
	Draining bool
	// ProxyID is the proxy's name from its last HelloAck, if any.
	ProxyID string
	// Since is when the tunnel entered State.
	Since time.Time
	// LastError is why the last attempt failed or the last tunnel ended.
	LastError error
	// Failures counts attempts in a row that did not end in a tunnel.
	Failures int
	// NextAttempt is when the next attempt starts (StateBackoff only).
	NextAttempt time.Time
}

// slot is one tunnel the agent keeps: a proxy address and the goroutine
// (keepTunnel) that keeps a tunnel to it up. Without Config.Discover the
// slots are ProxyAddrs, fixed; with it, the re-homing loop adds and removes
// them (rehome.go).
type slot struct {
	addr string
	// wantID is the proxy the slot was opened for, from Discover; empty for
	// seeds, whose proxy is known only from a HelloAck.
	wantID string

	// The following fields are guarded by Agent.mu.
	status TunnelStatus
	// cancel ends the slot's keepTunnel (and closes its tunnel) with a
	// cause; nil while Run is not running.
	cancel context.CancelCauseFunc
	// downSince is when the slot last started to be without a tunnel: when
	// its first attempt started, or when its tunnel went down. Real clock.
	downSince time.Time
	// live is the tunnel up now, nil when none.
	live *liveTunnel
	// old is a tunnel that a move from TCP to QUIC replaced, until it
	// closes (once no dial taken from it is open); nil when none.
	old *liveTunnel
	// retire is the re-homing reason while the slot waits to close (its
	// replacement is not up yet, or connections are open on it); "" for a
	// slot the agent means to keep.
	retire string

	// The following fields belong to the slot's keepTunnel goroutine
	// (Config.Transport auto only).
	//
	// udpBlocked: QUIC to the proxy got no answer, so the slot uses TCP.
	udpBlocked bool
	// quicRetryAt is when to try QUIC again while udpBlocked (real clock).
	quicRetryAt time.Time
}

// openLocked counts the dials taken from the slot's tunnels whose Conn is
// not closed yet. a.mu is held.
func (s *slot) openLocked() int {
	n := 0
	if s.live != nil {
		n += s.live.open
	}
	if s.old != nil && s.old != s.live {
		n += s.old.open
	}
	return n
}

// liveTunnel is one established tunnel of a slot.
type liveTunnel struct {
	// The following fields are guarded by Agent.mu.
	//
	// open counts the dials taken from this tunnel whose Conn is not closed
	// yet, including those still waiting for Accept.
	open int
	// idle, if set, is closed when open drops to zero: the tunnel was
	// replaced and closes then.
	idle chan struct{}
}

// rehomeCause is the cancel cause of a slot closed by re-homing; the proxy
// hears the reason in the tunnel's close.
type rehomeCause struct{ reason string }

func (c *rehomeCause) Error() string { return "re-homing: " + c.reason }

// RefusedError says that a proxy refused this node's tunnel, and why.
// Retrying can help once the cause (usually the node's certificate) is
// fixed, so the agent keeps retrying with backoff.
type RefusedError struct {
	ProxyAddr string
	ProxyID   string // empty if the proxy refused before saying who it is
	Reason    string
}

func (e *RefusedError) Error() string {
	p := e.ProxyAddr
	if e.ProxyID != "" {
		p = fmt.Sprintf("%s (%s)", e.ProxyID, e.ProxyAddr)
	}
	return fmt.Sprintf("proxy %s refused this node's tunnel: %s", p, e.Reason)
}

// Agent keeps reverse tunnels to proxies and accepts the connections they
// dial. It is a net.Listener. Create it with New, start it with Run.
type Agent struct {
	cfg        Config
	log        *slog.Logger
	metrics    *metrics
	instanceID string
	quicConf   *quic.Config
	muxConf    transport.MuxConfig

	// closeCtx ends on Close: Run returns, Accept returns net.ErrClosed.
	closeCtx    context.Context
	closeCancel context.CancelFunc
	// handoff passes accepted streams to Accept; it is unbuffered, so a
	// dial is answered only when the SSH server takes it.
	handoff chan *Conn
	// backlog is a semaphore of AcceptBacklog dials waiting for Accept.
	backlog chan struct{}
	// wake tells the re-homing loop that a tunnel or a dialed connection
	// changed; see kick.
	wake chan struct{}

	mu      sync.Mutex // guards the following fields and the slots' guarded fields
	slots   []*slot
	runDone chan struct{} // set while Run runs; closed when it returns
	// sawUp and sawDown record, for the re-homing loop, that a tunnel came
	// up, or went down or was refused, since it last looked.
	sawUp, sawDown bool
	// drainHints are proxies that told this agent they drain (a Drain
	// message, tunnel protocol 2), until when the hint holds: the re-homing
	// loop treats them as draining at once, without waiting for discovery
	// to say so.
	drainHints map[string]time.Time
}

var _ net.Listener = (*Agent)(nil)

// New checks cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	var id [8]byte
	rand.Read(id[:])
	a := &Agent{
		cfg:        cfg,
		log:        cfg.Logger.With("node", cfg.NodeID),
		metrics:    m,
		instanceID: hex.EncodeToString(id[:]),
		quicConf:   cfg.tuning().QUIC(),
		muxConf:    cfg.tuning().Mux(cfg.Logger.With("node", cfg.NodeID, "transport", transport.TCP)),
		handoff:    make(chan *Conn),
		backlog:    make(chan struct{}, cfg.AcceptBacklog),
		wake:       make(chan struct{}, 1),
	}
	a.closeCtx, a.closeCancel = context.WithCancel(context.Background())
	a.slots = a.seedSlots()
	if cfg.Discover != nil {
		m.desiredProxies.Set(float64(cfg.ConnectionCount))
	} else {
		m.desiredProxies.Set(float64(len(cfg.ProxyAddrs)))
	}
	return a, nil
}

// seedSlots returns an idle slot for each of ProxyAddrs.
func (a *Agent) seedSlots() []*slot {
	now := a.cfg.Now()
	var slots []*slot
	for _, addr := range a.cfg.ProxyAddrs {
		slots = append(slots, a.newSlot(addr, "", now))
	}
	return slots
}

func (a *Agent) newSlot(addr, wantID string, now time.Time) *slot {
	tr := transport.QUIC
	if a.cfg.Transport == TransportTCP {
		tr = transport.TCP
	}
	return &slot{addr: addr, wantID: wantID, status: TunnelStatus{ProxyAddr: addr, State: StateIdle, Transport: tr, Since: now}}
}

// runState is what starting a slot needs from Run.
type runState struct {
	ctx context.Context
	tr  *quic.Transport // nil with Config.Transport tcp
	wg  *sync.WaitGroup // Run waits for every slot's goroutine
}

// startLocked starts keeping a tunnel for s, after delay. a.mu is held.
func (a *Agent) startLocked(rs runState, s *slot, delay time.Duration) {
	ctx, cancel := context.WithCancelCause(rs.ctx)
	s.cancel = cancel
	s.downSince = time.Now().Add(delay)
	rs.wg.Go(func() { a.keepTunnel(ctx, rs, s, delay) })
}

// kick wakes the re-homing loop, if any. It never blocks, so it may be
// called with a.mu held.
func (a *Agent) kick() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run keeps one tunnel to each proxy address up (or, with Config.Discover,
// tunnels to ConnectionCount proxies) until ctx ends or Close is called;
// then it closes them and returns ctx's error, or net.ErrClosed after
// Close. Only one Run may run at a time.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.closeCtx.Err() != nil {
		a.mu.Unlock()
		return net.ErrClosed
	}
	if a.runDone != nil {
		a.mu.Unlock()
		return errors.New("tunnel agent: Run is already running")
	}
	done := make(chan struct{})
	a.runDone = done
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.runDone = nil
		a.mu.Unlock()
		close(done)
	}()

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(a.closeCtx, cancel)
	defer stop()

	// One UDP socket for all tunnels: one NAT mapping, one port to allow.
	// A node told to use TCP opens none.
	var tr *quic.Transport
	if a.cfg.Transport != TransportTCP {
		udp, err := net.ListenUDP("udp", nil)
		if err != nil {
			return fmt.Errorf("tunnel agent: open UDP socket: %w", err)
		}
		defer udp.Close()
		// GRO: see tunnel/udpgro. Without it (old kernels) quic-go reads
		// the socket as before.
		pc, _ := udpgro.Wrap(udp)
		tr = &quic.Transport{Conn: pc}
		defer tr.Close()
	}

	var wg sync.WaitGroup
	rs := runState{ctx: ctx, tr: tr, wg: &wg}
	a.mu.Lock()
	if len(a.slots) == 0 {
		// A previous Run re-homed off every proxy and found none to
		// move to: start from the seeds again.
		a.slots = a.seedSlots()
	}
	for _, s := range a.slots {
		a.startLocked(rs, s, 0)
	}
	a.sawUp, a.sawDown = false, false
	a.mu.Unlock()
	if a.cfg.Discover != nil {
		wg.Go(func() { a.rehome(rs) })
	}
	wg.Wait()
	a.mu.Lock()
	// Slots that were being replaced are done with: the next Run starts
	// from the ones the agent meant to keep.
	a.slots = slices.DeleteFunc(a.slots, func(s *slot) bool { return s.retire != "" })
	for _, s := range a.slots {
		s.cancel = nil
	}
	a.mu.Unlock()
	if a.closeCtx.Err() != nil {
		return net.ErrClosed
	}
	return parent.Err()
}

// keepTunnel keeps the tunnel of slot sl up until ctx ends. It waits delay
// before the first attempt.
func (a *Agent) keepTunnel(ctx context.Context, rs runState, sl *slot, delay time.Duration) {
	log := a.log.With("proxy_addr", sl.addr)
	b := backoff{min: a.cfg.MinBackoff, max: a.cfg.MaxBackoff}
	var lastLogged string // the failure last logged at Warn level
	if delay > 0 && !a.wait(ctx, sl, delay) {
		return
	}
	for {
		a.setStatus(sl, func(s *TunnelStatus) { s.State = StateConnecting })
		up, err := a.runTunnel(ctx, rs, sl, log)
		if ctx.Err() != nil {
			a.setStatus(sl, func(s *TunnelStatus) { s.State = StateIdle })
			return
		}
		var re *RefusedError
		a.mu.Lock()
		if !up.IsZero() {
			sl.downSince = time.Now()
		}
		if !up.IsZero() || errors.As(err, &re) {
			a.sawDown = true
		}
		retiring := sl.retire != ""
		if retiring {
			a.setStatusLocked(sl, func(s *TunnelStatus) { s.State = StateIdle; s.LastError = err })
		}
		a.kick()
		a.mu.Unlock()
		if retiring {
			// Being replaced, and now without a tunnel: the re-homing
			// loop removes the slot (it never keeps a retiring slot
			// without a live tunnel); do not dial the proxy again.
			log.Info("tunnel being replaced has closed", "err", err)
			<-ctx.Done()
			return
		}
		if !up.IsZero() {
			log.Warn("tunnel down; reconnecting", "err", err, "up_for", time.Since(up).Round(time.Millisecond).String())
			lastLogged = ""
			if time.Since(up) >= stableAfter {
				b.reset()
			}
		} else if msg := logKey(err); msg != lastLogged {
			// Log a failure when it first happens or changes, not on
			// every retry: a node with a bad certificate would otherwise
			// log every few seconds forever.
			log.Warn("cannot set up tunnel; retrying with backoff", "err", err)
			lastLogged = msg
		} else {
			log.Debug("cannot set up tunnel; retrying with backoff", "err", err)
		}
		d := b.next()
		next := a.cfg.Now().Add(d)
		a.setStatus(sl, func(s *TunnelStatus) {
			s.State = StateBackoff
			s.LastError = err
			if up.IsZero() {
				s.Failures++
			}
			s.NextAttempt = next
		})
		if !a.sleep(ctx, sl, d) {
			return
		}
	}
}

// wait shows slot sl in backoff until d has passed; see sleep.
func (a *Agent) wait(ctx context.Context, sl *slot, d time.Duration) bool {
	next := a.cfg.Now().Add(d)
	a.setStatus(sl, func(s *TunnelStatus) { s.State = StateBackoff; s.NextAttempt = next })
	return a.sleep(ctx, sl, d)
}

// sleep waits d. If ctx ends first it marks sl idle and reports false.
func (a *Agent) sleep(ctx context.Context, sl *slot, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		a.setStatus(sl, func(s *TunnelStatus) { s.State = StateIdle })
		return false
	case <-t.C:
		return true
	}
}

// logKey identifies a failure for "log once per change": a refusal by
// its reason (the proxy's name is known on some attempts, not others), any
// other error by its text.
func logKey(err error) string {
	var re *RefusedError
	if errors.As(err, &re) {
		return "refused: " + re.Reason
	}
	return err.Error()
}

// setStatus updates the status of slot sl; Since moves when State does.
func (a *Agent) setStatus(sl *slot, f func(*TunnelStatus)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setStatusLocked(sl, f)
}

func (a *Agent) setStatusLocked(sl *slot, f func(*TunnelStatus)) {
	s := &sl.status
	before := s.State
	s.NextAttempt = time.Time{}
	f(s)
	if s.State != before {
		s.Since = a.cfg.Now()
	}
}

// Status reports each tunnel slot. Without Config.Discover there is one per
// proxy address, in ProxyAddrs order; with it, slots come and go as the
// agent re-homes, oldest first.
func (a *Agent) Status() []TunnelStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]TunnelStatus, len(a.slots))
	for i, s := range a.slots {
		out[i] = s.status
	}
	return out
}

// runTunnel sets up a tunnel to slot sl's proxy and serves it until it
// ends; in auto mode a tunnel over TCP moves to QUIC when UDP works again,
// and serving goes on. It returns when the tunnel came up (zero if it never
// did) and why it ended.
func (a *Agent) runTunnel(ctx context.Context, rs runState, sl *slot, log *slog.Logger) (time.Time, error) {
	tun, ack, err := a.connect(ctx, rs.tr, sl, log)
	if err != nil {
		return time.Time{}, err
	}
	a.metrics.connectedProxies.Inc()
	defer a.metrics.connectedProxies.Dec()
	up := time.Now()
	for tun != nil {
		tun, ack, err = a.holdTunnel(ctx, rs, sl, tun, ack, log)
	}
	return up, err
}

// holdTunnel makes tun slot sl's live tunnel and serves it until it ends.
// In auto mode a tunnel over TCP tries QUIC every QUICRetryInterval; once
// QUIC works, holdTunnel returns the QUIC tunnel, and tun serves the dials
// it has until they close (retire).
func (a *Agent) holdTunnel(ctx context.Context, rs runState, sl *slot, tun transport.Conn, ack proto.HelloAck, log *slog.Logger) (transport.Conn, proto.HelloAck, error) {
	lt := &liveTunnel{}
	a.mu.Lock()
	a.setStatusLocked(sl, func(s *TunnelStatus) {
		s.State = StateConnected
		s.ProxyID = ack.ProxyID
		s.Failures = 0
		s.Transport = tun.Transport()
		s.UDPBlocked = sl.udpBlocked
	})
	sl.live = lt
	a.sawUp = true
	a.kick()
	a.mu.Unlock()
	a.metrics.tunnels.WithLabelValues(tun.Transport()).Inc()
	log.Info("tunnel up", "proxy", ack.ProxyID, "protocol", ack.Version, "transport", tun.Transport())

	// served has one reader: this function, or retire's goroutine.
	served := make(chan error, 1)
	go func() { served <- a.serve(ctx, tun, ack.Version, sl.addr, ack.ProxyID, lt) }()
	var retry *time.Timer // nil: no move to QUIC to try
	if a.cfg.Transport == TransportAuto && tun.Transport() == transport.TCP {
		retry = time.NewTimer(time.Until(sl.quicRetryAt))
		defer retry.Stop()
	}
	for {
		select {
		case err := <-served:
			a.metrics.tunnels.WithLabelValues(tun.Transport()).Dec()
			a.mu.Lock()
			sl.live = nil
			a.mu.Unlock()
			return nil, proto.HelloAck{}, err
		case <-timerC(retry):
		}
		next, nextAck, err := a.connectQUIC(ctx, rs.tr, sl, a.cfg.QUICFallbackAfter)
		if err != nil {
			log.Debug("QUIC to the proxy still fails; keeping the tunnel over TCP", "err", err)
			sl.quicRetryAt = time.Now().Add(jitter(a.cfg.QUICRetryInterval, refreshJitter))
			retry.Reset(time.Until(sl.quicRetryAt))
			continue
		}
		sl.udpBlocked = false
		a.metrics.restores.Inc()
		log.Info("UDP to the proxy works again: moved the tunnel to QUIC; the TCP tunnel closes once no connection uses it", "proxy", nextAck.ProxyID)
		a.retire(rs, sl, tun, lt, served, log)
		return next, nextAck, nil
	}
}

// timerC is t's channel, or nil (never ready) for a nil t.
func timerC(t *time.Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C
}

// retire closes tun, a tunnel of slot sl that a QUIC tunnel replaced, once
// no dial taken from it (lt) is open; until then it serves them. served
// yields its serve's result. The goroutine that waits is Run's.
func (a *Agent) retire(rs runState, sl *slot, tun transport.Conn, lt *liveTunnel, served <-chan error, log *slog.Logger) {
	idle := make(chan struct{})
	a.mu.Lock()
	sl.old = lt
	if lt.open == 0 {
		close(idle)
	} else {
		lt.idle = idle
	}
	a.mu.Unlock()
	rs.wg.Go(func() {
		var err error
		select {
		case <-idle:
			tun.Close(proto.CloseNormal, fmt.Sprintf("node %s moved this tunnel to QUIC", a.cfg.NodeID))
			err = <-served
		case err = <-served: // it ended first, or Run is stopping
		}
		a.metrics.tunnels.WithLabelValues(tun.Transport()).Dec()
		a.mu.Lock()
		if sl.old == lt {
			sl.old = nil
		}
		a.mu.Unlock()
		log.Info("the tunnel that QUIC replaced has closed", "transport", tun.Transport(), "err", err)
	})
}

// connect sets up a tunnel to slot sl's proxy over Config.Transport. In
// auto mode it tries QUIC and, when the QUIC handshake gets no answer at all
// (UDP blocked on the way), falls back to TCP at once; a slot that fell back
// stays on TCP, and tries QUIC again when sl.quicRetryAt has passed.
func (a *Agent) connect(ctx context.Context, tr *quic.Transport, sl *slot, log *slog.Logger) (transport.Conn, proto.HelloAck, error) {
	switch {
	case a.cfg.Transport == TransportQUIC:
		return a.connectQUIC(ctx, tr, sl, a.cfg.HandshakeTimeout)
	case a.cfg.Transport == TransportTCP:
		return a.connectTCP(ctx, sl)
	case sl.udpBlocked && time.Now().Before(sl.quicRetryAt):
		a.setStatus(sl, func(s *TunnelStatus) { s.Transport = transport.TCP })
		return a.connectTCP(ctx, sl)
	}
	a.setStatus(sl, func(s *TunnelStatus) { s.Transport = transport.QUIC })
	tun, ack, err := a.connectQUIC(ctx, tr, sl, a.cfg.QUICFallbackAfter)
	var te *timeoutError
	switch {
	case err == nil:
		if sl.udpBlocked {
			sl.udpBlocked = false
			a.metrics.restores.Inc()
			log.Info("UDP to the proxy works again: tunnel over QUIC", "proxy", ack.ProxyID)
		}
		return tun, ack, nil
	case !errors.As(err, &te) || !te.noAnswer || ctx.Err() != nil:
		// QUIC got an answer (a refusal, a TLS error): UDP works.
		return nil, ack, err
	}
	a.setStatus(sl, func(s *TunnelStatus) { s.Transport = transport.TCP })
	tun, ack, terr := a.connectTCP(ctx, sl)
	if terr != nil {
		return nil, ack, fmt.Errorf("%w; over TCP: %w", err, terr)
	}
	sl.quicRetryAt = time.Now().Add(jitter(a.cfg.QUICRetryInterval, refreshJitter))
	if !sl.udpBlocked {
		sl.udpBlocked = true
		a.metrics.fallbacks.Inc()
		log.Warn(fmt.Sprintf("UDP to proxy %s (%s) looks blocked (no answer in %v); using TLS over TCP", ack.ProxyID, sl.addr, a.cfg.QUICFallbackAfter),
			"proxy", ack.ProxyID, "quic_retry_every", a.cfg.QUICRetryInterval.String())
	}
	return tun, ack, nil
}

// connectQUIC sets up a tunnel to slot sl's proxy over QUIC. The QUIC
// handshake may take dialTimeout, all of it HandshakeTimeout.
func (a *Agent) connectQUIC(ctx context.Context, tr *quic.Transport, sl *slot, dialTimeout time.Duration) (transport.Conn, proto.HelloAck, error) {
	tun, ack, err := a.dialQUIC(ctx, tr, sl.addr, dialTimeout)
	a.countConnect(transport.QUIC, err)
	return tun, ack, err
}

func (a *Agent) dialQUIC(parent context.Context, tr *quic.Transport, addr string, dialTimeout time.Duration) (transport.Conn, proto.HelloAck, error) {
	ctx, cancel := context.WithTimeout(parent, a.cfg.HandshakeTimeout)
	defer cancel()
	host, udpAddr, err := resolve(ctx, addr)
	if err != nil {
		return nil, proto.HelloAck{}, err
	}
	dialTimeout = min(dialTimeout, a.cfg.HandshakeTimeout)
	dctx, dcancel := context.WithTimeout(ctx, dialTimeout)
	qc, err := tr.Dial(dctx, udpAddr, a.tlsConfig(host), a.quicConf)
	dcancel()
	if err != nil {
		err = a.handshakeError(transport.QUIC, addr, "dial", dialTimeout, err)
		if te := (*timeoutError)(nil); errors.As(err, &te) && parent.Err() == nil {
			// The QUIC handshake itself got no answer: UDP may be blocked
			// (quic-go does not say whether any packet arrived, but a
			// proxy that answers finishes or refuses the handshake in a
			// few round trips).
			te.noAnswer = true
		}
		return nil, proto.HelloAck{}, err
	}
	tun := transport.NewQUIC(qc)
	ack, err := a.hello(ctx, tun, addr)
	if err != nil {
		tun.Close(proto.CloseNormal, "")
		return nil, ack, err
	}
	return tun, ack, nil
}

// connectTCP sets up a tunnel to slot sl's proxy over TLS over TCP, to the
// same host:port as QUIC.
func (a *Agent) connectTCP(ctx context.Context, sl *slot) (transport.Conn, proto.HelloAck, error) {
	tun, ack, err := a.dialTCP(ctx, sl.addr)
	a.countConnect(transport.TCP, err)
	return tun, ack, err
}

func (a *Agent) dialTCP(ctx context.Context, addr string) (transport.Conn, proto.HelloAck, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	host, _, err := splitHostPort(addr)
	if err != nil {
		return nil, proto.HelloAck{}, err
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, proto.HelloAck{}, a.handshakeError(transport.TCP, addr, "dial", a.cfg.HandshakeTimeout, err)
	}
	tc := tls.Client(raw, a.tlsConfig(host))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		if _, alert := tlsAlert(err); !alert && !isTimeout(err) {
			// This side refused the proxy (verifyProxy).
			return nil, proto.HelloAck{}, &tlsError{fmt.Errorf("TLS handshake with %s: %w", addr, err)}
		}
		return nil, proto.HelloAck{}, a.handshakeError(transport.TCP, addr, "TLS handshake with", a.cfg.HandshakeTimeout, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != proto.ALPN {
		raw.Close()
		return nil, proto.HelloAck{}, &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("its TCP port does not speak %s (ALPN %q): is the proxy older than the TCP tunnel transport? Use the quic transport for it", proto.ALPN, p)}
	}
	tun, err := transport.NewMuxClient(tc, a.muxConf)
	if err != nil {
		return nil, proto.HelloAck{}, a.handshakeError(transport.TCP, addr, "start the tunnel to", a.cfg.HandshakeTimeout, err)
	}
	ack, err := a.hello(ctx, tun, addr)
	if err != nil {
		tun.Close(proto.CloseNormal, "")
		<-tun.Done()
		return nil, ack, err
	}
	return tun, ack, nil
}

// hello opens the first stream, sends Hello and reads the HelloAck. With
// mutual TLS 1.3, a client whose certificate the proxy rejects completes its
// side of the handshake all the same, so a rejection shows up here, as the
// connection's close error, not in the dial.
func (a *Agent) hello(ctx context.Context, tun transport.Conn, addr string) (proto.HelloAck, error) {
	fail := func(op string, err error) error {
		if ctx.Err() != nil {
			err = ctx.Err() // the stream was aborted for it
		}
		return a.handshakeError(tun.Transport(), addr, op, a.cfg.HandshakeTimeout, err)
	}
	st, err := tun.OpenStream(ctx)
	if err != nil {
		return proto.HelloAck{}, fail("open stream", err)
	}
	stop := context.AfterFunc(ctx, func() { st.Abort(proto.StreamCanceled) })
	defer stop()
	var labels map[string]string
	if a.cfg.Labels != nil {
		labels = a.cfg.Labels()
	}
	err = proto.WriteMessage(st, proto.Hello{
		Version:      proto.Version,
		NodeID:       a.cfg.NodeID,
		Labels:       labels,
		AgentVersion: a.cfg.Version,
		InstanceID:   a.instanceID,
		Slot:         slotName(addr, tun.Transport()),
		DiagAddr:     a.cfg.DiagAddr,
	})
	var ack proto.HelloAck
	if err == nil {
		ack, err = proto.Expect[proto.HelloAck](st)
	}
	if err != nil {
		return ack, fail("hello", err)
	}
	if !ack.Accepted {
		return ack, &RefusedError{ProxyAddr: addr, ProxyID: ack.ProxyID, Reason: ack.Err().Error()}
	}
	st.Close()
	return ack, nil
}

// slotName is Hello.Slot for a tunnel to addr over tr. A tunnel over TCP
// names another slot than one over QUIC to the same address, so that the
// proxy keeps the TCP tunnel next to the QUIC one that replaces it until the
// agent closes it, instead of dropping the sessions on it at once.
func slotName(addr, tr string) string {
	if tr == transport.TCP {
		return "tcp:" + addr
	}
	return addr
}

// handshakeError turns what went wrong while setting up a tunnel over tr
// into an error an operator can act on.
func (a *Agent) handshakeError(tr, addr, op string, timeout time.Duration, err error) error {
	if ce, ok := transport.AsClose(err); ok && ce.Remote {
		reason := ce.Reason
		if reason == "" {
			reason = fmt.Sprintf("closed with code %d", ce.Code)
		}
		return &RefusedError{ProxyAddr: addr, Reason: reason}
	}
	if alert, ok := tlsAlert(err); ok {
		switch alert {
		case 42, 43, 44, 45, 46, 48, 116: // bad, unsupported, revoked, expired, unknown certificate; unknown CA; certificate required
			return &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("TLS alert %q: the proxy did not accept this node's certificate; it must be a current client certificate from the cluster's TLS CA (the proxy's log says why)", alert.Error())}
		case 120: // no application protocol
			return &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("TLS alert %q: nothing speaks %s there; is this the proxy's tunnel port?", alert.Error(), proto.ALPN)}
		}
		return &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("TLS alert %q", alert.Error())}
	}
	if isTimeout(err) {
		// quic-go's handshake timers and our context race to report the
		// same silence; say it one way, so it is logged once.
		open := "UDP open on the way"
		if tr == transport.TCP {
			open = "its TCP port reachable"
		}
		return &timeoutError{msg: fmt.Sprintf("%s %s: no answer within %v: is the proxy up, and %s?", op, addr, timeout, open)}
	}
	return fmt.Errorf("%s %s: %w", op, addr, err)
}

// isTimeout reports whether err says that nothing answered in time.
func isTimeout(err error) bool {
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	var ne net.Error
	return errors.As(err, &idle) || errors.As(err, &hs) || errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// tlsAlert finds a TLS alert the proxy sent in err: a QUIC CRYPTO_ERROR, or
// crypto/tls's "remote error" over TCP (whose alert type is unexported, so
// it is matched by its text).
func tlsAlert(err error) (tls.AlertError, bool) {
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200 {
		return tls.AlertError(te.ErrorCode - 0x100), true
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil {
		text := oe.Err.Error()
		for code := range 256 {
			if tls.AlertError(code).Error() == text {
				return tls.AlertError(code), true
			}
		}
	}
	return 0, false
}

// timeoutError: nothing answered in time. noAnswer marks a QUIC handshake
// that got no answer at all, the signature of blocked UDP.
type timeoutError struct {
	msg      string
	noAnswer bool
}

func (e *timeoutError) Error() string { return e.msg }
func (e *timeoutError) Timeout() bool { return true }

// Temporary implements net.Error.
func (e *timeoutError) Temporary() bool { return false }

// tlsError: the agent refused the proxy in the TLS handshake over TCP (over
// QUIC that is a local *quic.TransportError).
type tlsError struct{ err error }

func (e *tlsError) Error() string { return e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// countConnect counts a connect attempt over tr.
func (a *Agent) countConnect(tr string, err error) {
	outcome := connectOK
	if err != nil {
		outcome = connectOutcome(err)
	}
	a.metrics.connects.WithLabelValues(outcome, tr).Inc()
}

func connectOutcome(err error) string {
	var re *RefusedError
	var te *quic.TransportError
	var le *tlsError
	switch {
	case errors.As(err, &re):
		return connectRefused
	case errors.As(err, &le), errors.As(err, &te) && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200:
		return connectTLS
	case isTimeout(err):
		return connectTimeout
	}
	return connectError
}

// tlsConfig is the client configuration for a proxy at host.
func (a *Agent) tlsConfig(host string) *tls.Config {
	c := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           []string{proto.ALPN},
		GetClientCertificate: a.cfg.GetClientCertificate,
		// The chain and the proxy's identity are checked in verifyProxy
		// against the current RootCAs. Proxies are often addressed by IP,
		// so a host name check would prove nothing the identity does not.
		InsecureSkipVerify: true,
		VerifyConnection:   a.verifyProxy,
	}
	if _, err := netip.ParseAddr(host); err != nil {
		c.ServerName = host // SNI, for proxies behind name-based routers
	}
	return c
}

// verifyProxy requires a certificate chaining to RootCAs for server
// authentication, naming a proxy of this cluster.
func (a *Agent) verifyProxy(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the proxy presented no certificate")
	}
	roots := a.cfg.RootCAs()
	if roots == nil {
		// x509 would fall back to the system roots: never for tunnels.
		return errors.New("this node has no trusted TLS CA configured")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   a.cfg.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("proxy certificate %q is not trusted: %w", leaf.Subject.CommonName, err)
	}
	id, err := identity.FromX509(leaf)
	switch {
	case err != nil:
		return fmt.Errorf("proxy %w", err)
	case id.Kind != identity.KindProxy:
		return fmt.Errorf("the proxy's certificate is for %s, of kind %s: expected a proxy certificate", id, id.Kind)
	case id.Cluster != a.cfg.ClusterName:
		return fmt.Errorf("the proxy's certificate is for cluster %q, this node belongs to cluster %q", id.Cluster, a.cfg.ClusterName)
	}
	return nil
}

// serve accepts the proxy's dials on tun until the tunnel ends or ctx does,
// and returns why the tunnel ended.
//
// There is no reader/writer loop pair per tunnel, as the style guide
// suggests for connections: the tunnel carries no messages of its own after
// the Hello, each dial is a stream with its own goroutine, and closing the
// connection (on ctx) ends the accept loop. An errgroup would add a second
// goroutine per tunnel that only waits.
func (a *Agent) serve(ctx context.Context, tun transport.Conn, version int, addr, proxyID string, lt *liveTunnel) error {
	var handlers sync.WaitGroup
	defer handlers.Wait()
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(closed)
		var rc *rehomeCause
		if errors.As(context.Cause(ctx), &rc) {
			tun.Close(proto.CloseNormal, fmt.Sprintf("node %s moved this tunnel to another proxy (%s)", a.cfg.NodeID, rc.reason))
			return
		}
		tun.Close(proto.CloseShutdown, fmt.Sprintf("node %s agent is stopping", a.cfg.NodeID))
	})
	defer func() {
		if !stop() {
			<-closed
		}
	}()
	for {
		st, err := tun.AcceptStream(context.Background())
		if err != nil {
			tun.Close(proto.CloseNormal, "")
			<-tun.Done()
			return downError(addr, err)
		}
		a.mu.Lock()
		lt.open++
		a.mu.Unlock()
		handlers.Go(func() { a.handleStream(tun, st, version, proxyID, a.releaser(lt)) })
	}
}

// downError says why an established tunnel ended.
func downError(addr string, err error) error {
	if ce, ok := transport.AsClose(err); ok && ce.Remote {
		switch ce.Code {
		case proto.CloseReplaced:
			return fmt.Errorf("tunnel to %s: the proxy %s", addr, ce.Reason)
		case proto.CloseShutdown:
			return fmt.Errorf("tunnel to %s: %s", addr, ce.Reason)
		}
	}
	if transport.IsIdleTimeout(err) {
		return fmt.Errorf("tunnel to %s: the proxy stopped answering within the idle timeout: %w", addr, err)
	}
	return fmt.Errorf("tunnel to %s: %w", addr, err)
}

// releaser returns the function a Conn calls, once, when it is closed,
// refused or aborted: it takes the dial off lt's count of open dials.
func (a *Agent) releaser(lt *liveTunnel) func() {
	return func() {
		a.mu.Lock()
		lt.open--
		if lt.open == 0 {
			a.kick() // a tunnel being replaced may close now
			if lt.idle != nil {
				close(lt.idle)
				lt.idle = nil
			}
		}
		a.mu.Unlock()
	}
}

// handleStream reads a DialRequest and offers the stream to Accept. Every
// path ends with the Conn closed, refused or aborted, which calls release.
func (a *Agent) handleStream(tun transport.Conn, st transport.Stream, version int, proxyID string, release func()) {
	st.SetReadDeadline(time.Now().Add(a.cfg.AcceptTimeout))
	m, err := proto.ReadMessage(st)
	var req proto.DialRequest
	switch m := m.(type) {
	case nil:
	case proto.DialRequest:
		req = m
	case proto.Drain:
		c := &Conn{st: st, version: version, release: release}
		c.abort() // nothing to answer: the stream was the message
		a.proxyDraining(proxyID, m)
		return
	default:
		err = fmt.Errorf("%w: expected DialRequest or Drain, got %s", proto.ErrMalformed, m.Type())
	}
	if err != nil {
		c := &Conn{st: st, version: version, release: release}
		switch {
		case errors.Is(err, proto.ErrUnsupportedVersion), errors.Is(err, proto.ErrMalformed), errors.Is(err, proto.ErrUnknownType), errors.Is(err, proto.ErrFrameTooLarge):
			a.metrics.dials.WithLabelValues(dialBadRequest).Inc()
			a.log.Warn("refusing a bad dial request", "remote", tun.RemoteAddr().String(), "err", err)
			c.refuse(fmt.Sprintf("node %s: bad dial request: %v", a.cfg.NodeID, err))
		default:
			// The tunnel closed, the proxy gave up, or it sent nothing
			// in time: nobody is waiting for an answer.
			a.metrics.dials.WithLabelValues(dialAborted).Inc()
			a.log.Debug("dial request not received", "remote", tun.RemoteAddr().String(), "err", err)
			c.abort()
		}
		return
	}
	st.SetReadDeadline(time.Time{})
	c := &Conn{st: st, req: req, version: version, local: a.Addr(), remote: tun.RemoteAddr(), release: release}
	if ap, err := netip.ParseAddrPort(req.ClientAddr); err == nil {
		c.remote = net.TCPAddrFromAddrPort(ap)
	}
	log := a.log.With("user", req.User, "session", req.SessionID, "client", req.ClientAddr)

	select {
	case a.backlog <- struct{}{}:
		a.metrics.pendingDials.Inc()
		defer func() {
			a.metrics.pendingDials.Dec()
			<-a.backlog
		}()
	default:
		a.metrics.dials.WithLabelValues(dialBacklog).Inc()
		log.Warn("refusing dial: too many connections waiting for the SSH server", "backlog", a.cfg.AcceptBacklog)
		c.refuse(fmt.Sprintf("node %s has %d connections waiting for its SSH server already: try again shortly", a.cfg.NodeID, a.cfg.AcceptBacklog))
		return
	}
	gone, stop := watchGone(st)
	c.stopWatch = stop
	t := time.NewTimer(a.cfg.AcceptTimeout)
	defer t.Stop()
	select {
	case a.handoff <- c: // Accept stops the watch
	case <-t.C:
		stop()
		a.metrics.dials.WithLabelValues(dialTimeout).Inc()
		log.Warn("refusing dial: the SSH server did not accept it in time", "timeout", a.cfg.AcceptTimeout)
		c.refuse(fmt.Sprintf("node %s did not accept the connection within %v: its SSH server is not running or is overloaded", a.cfg.NodeID, a.cfg.AcceptTimeout))
	case <-a.closeCtx.Done():
		stop()
		a.metrics.dials.WithLabelValues(dialClosing).Inc()
		c.refuse(fmt.Sprintf("node %s agent is shutting down", a.cfg.NodeID))
	case <-gone:
		// The proxy gave up on the dial, or the tunnel ended.
		a.metrics.dials.WithLabelValues(dialAborted).Inc()
		c.abort()
	}
}

// drainHintTTL is how long a Drain message marks its proxy as draining
// here: past it, discovery alone decides (a proxy that drained and came
// back is active again).
const drainHintTTL = 10 * time.Minute

// proxyDraining takes a Drain message from proxyID: the re-homing loop
// moves the tunnel to another proxy now (see rehomer.reconcile) and asks
// discovery for the current list.
func (a *Agent) proxyDraining(proxyID string, m proto.Drain) {
	a.metrics.drainNotices.Inc()
	if a.cfg.Discover == nil {
		a.log.Warn("proxy is draining, but this agent has fixed proxy addresses (no discovery): its tunnel stays until the proxy closes it", "proxy", proxyID, "reason", m.Reason)
		return
	}
	a.log.Info("proxy is draining: moving the tunnel to another proxy", "proxy", proxyID, "reason", m.Reason, "deadline", m.Deadline)
	a.mu.Lock()
	if a.drainHints == nil {
		a.drainHints = make(map[string]time.Time)
	}
	a.drainHints[proxyID] = time.Now().Add(drainHintTTL)
	a.sawDown = true // discover again now
	a.kick()
	a.mu.Unlock()
}

// Accept returns the next connection dialed through a tunnel. It answers
// the dial before returning, so the proxy learns that the node took it.
// After Close it returns net.ErrClosed.
func (a *Agent) Accept() (net.Conn, error) {
	for {
		select {
		case c := <-a.handoff:
			if !c.stopWatch() {
				// The proxy gave up on the dial while it waited.
				a.metrics.dials.WithLabelValues(dialAborted).Inc()
				c.abort()
				continue
			}
			if err := c.answer(); err != nil {
				a.metrics.dials.WithLabelValues(dialAborted).Inc()
				a.log.Debug("dial ended before it was accepted", "err", err)
				c.abort()
				continue
			}
			a.metrics.dials.WithLabelValues(dialAccepted).Inc()
			return c, nil
		case <-a.closeCtx.Done():
			return nil, net.ErrClosed
		}
	}
}

// Close stops Run (closing every tunnel) and Accept, and waits for Run to
// return. Connections already accepted stay open until their owner closes
// them or their tunnel ends.
func (a *Agent) Close() error {
	a.closeCancel()
	a.mu.Lock()
	done := a.runDone
	a.mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

// Addr returns the agent's address: the node it serves.
func (a *Agent) Addr() net.Addr { return Addr{NodeID: a.cfg.NodeID} }

// resolve looks up a "host:port" proxy address.
func resolve(ctx context.Context, addr string) (string, *net.UDPAddr, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return "", nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return host, nil, fmt.Errorf("resolve proxy address %s: %w", addr, err)
	}
	if len(ips) == 0 {
		return host, nil, fmt.Errorf("resolve proxy address %s: no addresses", addr)
	}
	return host, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), port)), nil
}

func splitHostPort(addr string) (string, uint16, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("proxy address %q: %w", addr, err)
	}
	if host == "" {
		return "", 0, fmt.Errorf("proxy address %q has no host", addr)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("proxy address %q: bad port %q", addr, p)
	}
	return host, uint16(port), nil
}
