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
	"jumpgate.dev/jumpgate/tunnel/proto"
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
	// Transport is how the tunnel is carried: "quic" (a TCP fallback will
	// add "tcp").
	Transport string
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

// transportQUIC is TunnelStatus.Transport for QUIC tunnels.
const transportQUIC = "quic"

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
	// retire is the re-homing reason while the slot waits to close (its
	// replacement is not up yet, or connections are open on it); "" for a
	// slot the agent means to keep.
	retire string
}

// liveTunnel is one established tunnel of a slot.
type liveTunnel struct {
	// open counts the dials taken from this tunnel whose Conn is not closed
	// yet, including those still waiting for Accept. Guarded by Agent.mu.
	open int
}

// rehomeCause is the cancel cause of a slot closed by re-homing; the proxy
// hears the reason in the QUIC close.
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
		quicConf:   cfg.quicConfig(),
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
	return &slot{addr: addr, wantID: wantID, status: TunnelStatus{ProxyAddr: addr, State: StateIdle, Transport: transportQUIC, Since: now}}
}

// runState is what starting a slot needs from Run.
type runState struct {
	ctx context.Context
	tr  *quic.Transport
	wg  *sync.WaitGroup // Run waits for every slot's goroutine
}

// startLocked starts keeping a tunnel for s, after delay. a.mu is held.
func (a *Agent) startLocked(rs runState, s *slot, delay time.Duration) {
	ctx, cancel := context.WithCancelCause(rs.ctx)
	s.cancel = cancel
	s.downSince = time.Now().Add(delay)
	rs.wg.Go(func() { a.keepTunnel(ctx, rs.tr, s, delay) })
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
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return fmt.Errorf("tunnel agent: open UDP socket: %w", err)
	}
	defer udp.Close()
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()

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
func (a *Agent) keepTunnel(ctx context.Context, tr *quic.Transport, sl *slot, delay time.Duration) {
	log := a.log.With("proxy_addr", sl.addr)
	b := backoff{min: a.cfg.MinBackoff, max: a.cfg.MaxBackoff}
	var lastLogged string // the failure last logged at Warn level
	if delay > 0 && !a.wait(ctx, sl, delay) {
		return
	}
	for {
		a.setStatus(sl, func(s *TunnelStatus) { s.State = StateConnecting })
		up, err := a.runTunnel(ctx, tr, sl, log)
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

// runTunnel sets up a tunnel and serves it until it ends. It returns when
// the tunnel came up (zero if it never did) and why it ended.
func (a *Agent) runTunnel(ctx context.Context, tr *quic.Transport, sl *slot, log *slog.Logger) (time.Time, error) {
	qc, ack, err := a.connect(ctx, tr, sl.addr)
	if err != nil {
		a.metrics.connects.WithLabelValues(connectOutcome(err)).Inc()
		return time.Time{}, err
	}
	a.metrics.connects.WithLabelValues(connectOK).Inc()
	a.metrics.connectedProxies.Inc()
	defer a.metrics.connectedProxies.Dec()
	up := time.Now()
	lt := &liveTunnel{}
	a.mu.Lock()
	a.setStatusLocked(sl, func(s *TunnelStatus) {
		s.State = StateConnected
		s.ProxyID = ack.ProxyID
		s.Failures = 0
	})
	sl.live = lt
	a.sawUp = true
	a.kick()
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		sl.live = nil
		a.mu.Unlock()
	}()
	log.Info("tunnel up", "proxy", ack.ProxyID, "protocol", ack.Version)
	return up, a.serve(ctx, qc, ack.Version, sl.addr, lt)
}

// connect dials addr and exchanges Hello and HelloAck.
func (a *Agent) connect(ctx context.Context, tr *quic.Transport, addr string) (*quic.Conn, proto.HelloAck, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	host, udpAddr, err := resolve(ctx, addr)
	if err != nil {
		return nil, proto.HelloAck{}, err
	}
	qc, err := tr.Dial(ctx, udpAddr, a.tlsConfig(host), a.quicConf)
	if err != nil {
		return nil, proto.HelloAck{}, a.handshakeError(ctx, addr, "dial", err)
	}
	ack, err := a.hello(ctx, qc, addr)
	if err != nil {
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CloseNormal), "")
		return nil, ack, err
	}
	return qc, ack, nil
}

// hello opens the first stream, sends Hello and reads the HelloAck. With
// mutual TLS over QUIC, a client whose certificate the proxy rejects still
// completes its side of the handshake, so a rejection shows up here, as the
// connection's close error, not in Dial.
func (a *Agent) hello(ctx context.Context, qc *quic.Conn, addr string) (proto.HelloAck, error) {
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return proto.HelloAck{}, a.handshakeError(ctx, addr, "open stream", err)
	}
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(quic.StreamErrorCode(proto.StreamCanceled))
		st.CancelWrite(quic.StreamErrorCode(proto.StreamCanceled))
	})
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
		Slot:         addr,
	})
	var ack proto.HelloAck
	if err == nil {
		ack, err = proto.Expect[proto.HelloAck](st)
	}
	if err != nil {
		return ack, a.handshakeError(ctx, addr, "hello", err)
	}
	if !ack.Accepted {
		return ack, &RefusedError{ProxyAddr: addr, ProxyID: ack.ProxyID, Reason: ack.Err().Error()}
	}
	st.CancelRead(quic.StreamErrorCode(proto.StreamClosed))
	st.Close()
	return ack, nil
}

// handshakeError turns what went wrong while setting up a tunnel into an
// error an operator can act on.
func (a *Agent) handshakeError(ctx context.Context, addr, op string, err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		reason := ae.ErrorMessage
		if reason == "" {
			reason = fmt.Sprintf("closed with code %d", ae.ErrorCode)
		}
		return &RefusedError{ProxyAddr: addr, Reason: reason}
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200 {
		alert := tls.AlertError(te.ErrorCode - 0x100)
		switch alert {
		case 42, 43, 44, 45, 46, 48, 116: // bad, unsupported, revoked, expired, unknown certificate; unknown CA; certificate required
			return &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("TLS alert %q: the proxy did not accept this node's certificate; it must be a current client certificate from the cluster's TLS CA (the proxy's log says why)", alert.Error())}
		case 120: // no application protocol
			return &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("TLS alert %q: nothing speaks %s there; is this the proxy's tunnel port?", alert.Error(), proto.ALPN)}
		}
		return &RefusedError{ProxyAddr: addr, Reason: fmt.Sprintf("TLS alert %q", alert.Error())}
	}
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	if errors.As(err, &idle) || errors.As(err, &hs) || errors.Is(err, context.DeadlineExceeded) {
		// quic-go's handshake timers and our context race to report the
		// same silence; say it one way, so it is logged once.
		return fmt.Errorf("%s %s: no answer within %v: is the proxy up, and UDP open on the way?", op, addr, a.cfg.HandshakeTimeout)
	}
	return fmt.Errorf("%s %s: %w", op, addr, err)
}

func connectOutcome(err error) string {
	var re *RefusedError
	var te *quic.TransportError
	var ne net.Error
	switch {
	case errors.As(err, &re):
		return connectRefused
	case errors.As(err, &te) && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200:
		return connectTLS
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
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

// serve accepts the proxy's dials on qc until the tunnel ends or ctx does,
// and returns why the tunnel ended.
//
// There is no reader/writer loop pair per tunnel, as the style guide
// suggests for connections: the tunnel carries no messages of its own after
// the Hello, each dial is a stream with its own goroutine, and closing the
// connection (on ctx) ends the accept loop. An errgroup would add a second
// goroutine per tunnel that only waits.
func (a *Agent) serve(ctx context.Context, qc *quic.Conn, version int, addr string, lt *liveTunnel) error {
	var handlers sync.WaitGroup
	defer handlers.Wait()
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(closed)
		var rc *rehomeCause
		if errors.As(context.Cause(ctx), &rc) {
			qc.CloseWithError(quic.ApplicationErrorCode(proto.CloseNormal), fmt.Sprintf("node %s moved this tunnel to another proxy (%s)", a.cfg.NodeID, rc.reason))
			return
		}
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CloseShutdown), fmt.Sprintf("node %s agent is stopping", a.cfg.NodeID))
	})
	defer func() {
		if !stop() {
			<-closed
		}
	}()
	for {
		st, err := qc.AcceptStream(context.Background())
		if err != nil {
			qc.CloseWithError(quic.ApplicationErrorCode(proto.CloseNormal), "")
			return downError(addr, err)
		}
		a.mu.Lock()
		lt.open++
		a.mu.Unlock()
		handlers.Go(func() { a.handleStream(qc, st, version, a.releaser(lt)) })
	}
}

// downError says why an established tunnel ended.
func downError(addr string, err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		switch uint64(ae.ErrorCode) {
		case proto.CloseReplaced:
			return fmt.Errorf("tunnel to %s: the proxy %s", addr, ae.ErrorMessage)
		case proto.CloseShutdown:
			return fmt.Errorf("tunnel to %s: %s", addr, ae.ErrorMessage)
		}
	}
	var idle *quic.IdleTimeoutError
	if errors.As(err, &idle) {
		return fmt.Errorf("tunnel to %s: no packets from the proxy within the idle timeout: %w", addr, err)
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
		}
		a.mu.Unlock()
	}
}

// handleStream reads a DialRequest and offers the stream to Accept. Every
// path ends with the Conn closed, refused or aborted, which calls release.
func (a *Agent) handleStream(qc *quic.Conn, st *quic.Stream, version int, release func()) {
	st.SetReadDeadline(time.Now().Add(a.cfg.AcceptTimeout))
	req, err := proto.Expect[proto.DialRequest](st)
	if err != nil {
		c := &Conn{st: st, version: version, release: release}
		switch {
		case errors.Is(err, proto.ErrUnsupportedVersion), errors.Is(err, proto.ErrMalformed), errors.Is(err, proto.ErrUnknownType), errors.Is(err, proto.ErrFrameTooLarge):
			a.metrics.dials.WithLabelValues(dialBadRequest).Inc()
			a.log.Warn("refusing a bad dial request", "remote", qc.RemoteAddr().String(), "err", err)
			c.refuse(fmt.Sprintf("node %s: bad dial request: %v", a.cfg.NodeID, err))
		default:
			// The tunnel closed, the proxy gave up, or it sent nothing
			// in time: nobody is waiting for an answer.
			a.metrics.dials.WithLabelValues(dialAborted).Inc()
			a.log.Debug("dial request not received", "remote", qc.RemoteAddr().String(), "err", err)
			c.abort()
		}
		return
	}
	st.SetReadDeadline(time.Time{})
	c := &Conn{st: st, req: req, version: version, local: a.Addr(), remote: qc.RemoteAddr(), release: release}
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
	t := time.NewTimer(a.cfg.AcceptTimeout)
	defer t.Stop()
	select {
	case a.handoff <- c:
	case <-t.C:
		a.metrics.dials.WithLabelValues(dialTimeout).Inc()
		log.Warn("refusing dial: the SSH server did not accept it in time", "timeout", a.cfg.AcceptTimeout)
		c.refuse(fmt.Sprintf("node %s did not accept the connection within %v: its SSH server is not running or is overloaded", a.cfg.NodeID, a.cfg.AcceptTimeout))
	case <-a.closeCtx.Done():
		a.metrics.dials.WithLabelValues(dialClosing).Inc()
		c.refuse(fmt.Sprintf("node %s agent is shutting down", a.cfg.NodeID))
	case <-qc.Context().Done():
		a.metrics.dials.WithLabelValues(dialAborted).Inc()
		c.abort()
	case <-st.Context().Done():
		// The proxy gave up on the dial (its context ended).
		a.metrics.dials.WithLabelValues(dialAborted).Inc()
		c.abort()
	}
}

// Accept returns the next connection dialed through a tunnel. It answers
// the dial before returning, so the proxy learns that the node took it.
// After Close it returns net.ErrClosed.
func (a *Agent) Accept() (net.Conn, error) {
	for {
		select {
		case c := <-a.handoff:
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
