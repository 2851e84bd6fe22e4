package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/quic-go/quic-go"

	"jumpgate.dev/jumpgate/auth/identity"
)

// maxDialAttempts bounds how often one Dial tries again after the
// connection it used died or was superseded under it.
const maxDialAttempts = 3

// errSuperseded: the connection picked for a dial was superseded before its
// stream opened; the dial tries the live one.
var errSuperseded = errors.New("peer connection was superseded")

// dialCall is one connection attempt, shared by every Dial to the same peer
// that needs a connection while it is in flight.
type dialCall struct {
	done chan struct{}
	// set before done is closed
	live *peerConn
	err  error
}

// Dial opens a stream to the peer proxy peerID at addr ("host:port" of its
// peer UDP port), sends req and reads the answer. On success the stream is
// returned as a net.Conn that carries the user's bytes to the node; it also
// has CloseWrite (half-close) and CloseRead. Close it when done: Shutdown
// waits for it.
//
// Dial uses the live connection to peerID, whichever side dialed it, and
// dials a new one if there is none, if it died, or if it leads to another
// address than addr that no dial has reached peerID at before (the peer
// restarted elsewhere). Concurrent Dials to one peer share one connection
// attempt. With addr empty Dial only uses a live
// connection. The peer's certificate must be a proxy certificate of this
// cluster named peerID. Dial waits for Serve to start: outgoing connections
// leave from Serve's socket.
//
// req.Version zero means Version; a version this proxy does not speak is
// refused here (CodeBadRequest), as is a dial that would loop (CodeLoop:
// peerID is this proxy or already in req.Hops). Dial appends this proxy's
// id to req.Hops.
// Every error has an *Error in its chain (errors.As), with the peer's code
// or a local one, and wraps the local cause (context.DeadlineExceeded,
// ErrClosed, a QUIC error).
func (m *Mesh) Dial(ctx context.Context, peerID, addr string, req DialRequest) (net.Conn, error) {
	start := time.Now()
	c, outcome, err := m.dial(ctx, peerID, addr, req)
	m.metrics.dials.WithLabelValues(outcome).Inc()
	m.metrics.dialDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		shown := addr
		if shown == "" {
			shown = "no address"
		}
		m.log.Debug("peer dial failed", "node", req.Node, "peer", peerID, "addr", addr, "user", req.User, "outcome", outcome, "err", err)
		return nil, fmt.Errorf("dial node %s via peer %s (%s): %w", req.Node, peerID, shown, err)
	}
	return c, nil
}

func (m *Mesh) dial(ctx context.Context, peerID, addr string, req DialRequest) (net.Conn, string, *Error) {
	if m.runCtx.Err() != nil {
		return nil, CodeUnavailable, &Error{Code: CodeUnavailable, Message: m.shutdownReason(), err: ErrClosed}
	}
	if err := ctx.Err(); err != nil {
		return nil, outcomeCanceled, &Error{Code: CodeUnavailable, Message: "canceled before dialing", err: err}
	}
	if req.Version == 0 {
		req.Version = Version
	}
	req.Hops = hopsWith(req.Hops, m.cfg.ID)
	if e := m.checkDial(peerID, req); e != nil {
		return nil, e.Code, e
	}
	dctx, cancel := context.WithTimeout(ctx, m.cfg.DialTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		c, err := m.connFor(dctx, peerID, addr)
		if err == nil {
			var nc net.Conn
			nc, err = m.roundTrip(dctx, c, req)
			if err == nil {
				return nc, outcomeOK, nil
			}
			if retryable(c, err) && attempt < maxDialAttempts && dctx.Err() == nil {
				m.log.Debug("peer connection went away during a dial; trying again", "peer", peerID, "node", req.Node, "err", err)
				// quic-go may not have closed c yet (a stateless reset is
				// still being processed): stop offering it, or the retry
				// would pick the same dying connection.
				m.forgetStale(c)
				continue
			}
		}
		e, outcome := m.classify(ctx, dctx, peerID, err)
		return nil, outcome, e
	}
}

// forgetStale stops connFor from handing out c, which a dial found dead.
// The connection's own goroutine still cleans it up when it ends.
func (m *Mesh) forgetStale(c *peerConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.peers[c.id] == c {
		delete(m.peers, c.id)
		c.live = false
		m.metrics.connectedPeers.Set(float64(len(m.peers)))
	}
}

// retryable reports whether a dial that failed on c may succeed on another
// connection to the same peer: c was superseded, or it died of staleness
// (the peer restarted, timed out or dropped a duplicate). A refusal or a
// shutdown would only repeat.
func retryable(c *peerConn, err error) bool {
	if errors.Is(err, errSuperseded) {
		return true
	}
	// The stream reports the connection's end as soon as the connection's
	// context does, or sooner.
	cause := err
	if c.qc.Context().Err() != nil {
		cause = context.Cause(c.qc.Context())
	}
	var (
		ae   *quic.ApplicationError
		sr   *quic.StatelessResetError
		idle *quic.IdleTimeoutError
	)
	switch {
	case errors.As(cause, &ae):
		// Closed here (superseded, replaced) or by the peer as a duplicate.
		return !ae.Remote || ae.ErrorCode == closeDuplicate
	case errors.As(cause, &sr), errors.As(cause, &idle):
		return true
	}
	return false
}

// checkDial refuses, without a round trip, what the peer would refuse.
func (m *Mesh) checkDial(peerID string, req DialRequest) *Error {
	if err := identity.CheckName(peerID); err != nil {
		return &Error{Code: CodeBadRequest, Message: "bad peer id: " + err.Error()}
	}
	if peerID == m.cfg.ID {
		return &Error{Code: CodeLoop, Message: fmt.Sprintf("proxy %s does not dial itself as a peer: the node's tunnel is local or the directory is wrong", peerID)}
	}
	if slices.Contains(req.Hops, peerID) {
		return &Error{Code: CodeLoop, Message: fmt.Sprintf("the dial has already passed through proxy %s (hops %v)", peerID, req.Hops)}
	}
	if req.Version > Version {
		return &Error{Code: CodeBadRequest, Message: fmt.Sprintf("request version %d: this proxy speaks peer protocol %d through %d", req.Version, MinVersion, Version)}
	}
	if err := req.check(); err != nil {
		return &Error{Code: CodeBadRequest, Message: "bad dial request: " + err.Error(), err: err}
	}
	return nil
}

// connFor returns the live connection to peerID, or dials one.
func (m *Mesh) connFor(ctx context.Context, peerID, addr string) (*peerConn, error) {
	var want []netip.AddrPort
	if addr != "" {
		var err error
		if want, err = resolve(ctx, addr); err != nil {
			return nil, &Error{Code: CodeUnavailable, Message: fmt.Sprintf("resolve peer %s address %q: %v", peerID, addr, err), err: err}
		}
	}
	select {
	case <-m.serving:
	case <-m.runCtx.Done():
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for Serve to start: %w", ctx.Err())
	}
	m.mu.Lock()
	if m.runCtx.Err() != nil {
		m.mu.Unlock()
		return nil, &Error{Code: CodeUnavailable, Message: m.shutdownReason(), err: ErrClosed}
	}
	if c := m.peers[peerID]; c != nil && c.qc.Context().Err() == nil && m.reusableLocked(c, want) {
		m.mu.Unlock()
		return c, nil
	}
	call := m.dialing[peerID]
	if call == nil {
		if len(want) == 0 {
			m.mu.Unlock()
			return nil, &Error{Code: CodeUnavailable, Message: fmt.Sprintf("no connection to peer %s and no address to dial", peerID)}
		}
		host, _, _ := net.SplitHostPort(addr)
		call = &dialCall{done: make(chan struct{})}
		m.dialing[peerID] = call
		m.wg.Add(1)
		go m.dialPeer(call, peerID, host, want[0])
	}
	m.mu.Unlock()
	select {
	case <-call.done:
		return call.live, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// maxDialedAddrs bounds Mesh.dialed per peer.
const maxDialedAddrs = 4

// reusableLocked reports whether the live connection c may carry a dial to
// one of the addresses want. A connection leading elsewhere is taken for
// stale (the peer restarted at another address before this proxy noticed),
// unless a dial has reached the peer at one of want before: then the
// difference is the peer's source address (NAT, a socket bound to a
// wildcard address), and dialing anew would only make the two proxies
// replace each other's connections back and forth.
func (m *Mesh) reusableLocked(c *peerConn, want []netip.AddrPort) bool {
	if len(want) == 0 || addrIn(c.qc.RemoteAddr(), want) {
		return true
	}
	for _, a := range want {
		if slices.Contains(m.dialed[c.id], a) {
			return true
		}
	}
	return false
}

// dialPeer makes a connection to peerID, hands it to the Dials waiting on
// call, then runs it until it ends.
func (m *Mesh) dialPeer(call *dialCall, peerID, host string, to netip.AddrPort) {
	defer m.wg.Done()
	// Bounded by its own timeout, not by the first caller's context: the
	// other callers sharing the attempt still want the connection.
	ctx, cancel := context.WithTimeout(m.runCtx, m.cfg.DialTimeout)
	m.mu.Lock()
	tr := m.tr
	m.mu.Unlock()
	var (
		c   *peerConn
		err = error(&Error{Code: CodeUnavailable, Message: m.shutdownReason(), err: ErrClosed})
	)
	if tr != nil {
		var qc *quic.Conn
		qc, err = tr.Dial(ctx, net.UDPAddrFromAddrPort(to), m.clientTLS(peerID, host), m.quicConf)
		if err == nil {
			m.mu.Lock()
			if known := m.dialed[peerID]; !slices.Contains(known, to) {
				m.dialed[peerID] = append(known[max(0, len(known)-maxDialedAddrs+1):], to)
			}
			m.mu.Unlock()
			var ok bool
			if c, call.live, ok = m.register(qc, peerID, false); !ok {
				qc.CloseWithError(closeShutdown, m.shutdownReason())
				err = &Error{Code: CodeUnavailable, Message: m.shutdownReason(), err: ErrClosed}
			}
		}
	}
	cancel()
	call.err = err
	m.mu.Lock()
	delete(m.dialing, peerID)
	m.mu.Unlock()
	close(call.done)
	if c != nil {
		m.runConn(c)
	}
}

// clientTLS is the configuration for dialing peerID.
func (m *Mesh) clientTLS(peerID, host string) *tls.Config {
	c := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		NextProtos:           []string{ALPN},
		GetClientCertificate: m.cfg.GetClientCertificate,
		// The chain and the peer's identity are checked in verifyServer
		// against the current RootCAs. Peers are addressed by IP from the
		// gossiped member list, so a host name check would prove nothing
		// the identity does not.
		InsecureSkipVerify: true,
		VerifyConnection:   func(cs tls.ConnectionState) error { return m.verifyServer(cs, peerID) },
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" {
		c.ServerName = host // SNI, for peers behind name-based routers
	}
	return c
}

// certError is a peer certificate this proxy refused while dialing.
type certError struct{ msg string }

func (e *certError) Error() string { return e.msg }

// verifyServer requires a certificate chaining to RootCAs for server
// authentication, naming proxy peerID of this cluster.
func (m *Mesh) verifyServer(cs tls.ConnectionState, peerID string) error {
	if len(cs.PeerCertificates) == 0 {
		return &certError{"the peer presented no certificate"}
	}
	leaf := cs.PeerCertificates[0]
	// The chain first, for any usage, so that a trusted certificate of the
	// wrong kind is named as such rather than as a wrong key usage.
	if err := m.verifyChain(cs.PeerCertificates, x509.ExtKeyUsageAny); err != nil {
		return &certError{fmt.Sprintf("the peer's certificate %q is not trusted: %v", leaf.Subject.CommonName, err)}
	}
	id, err := identity.FromX509(leaf)
	switch {
	case err != nil:
		return &certError{"the peer's " + err.Error()}
	case id.Kind != identity.KindProxy:
		return &certError{fmt.Sprintf("the peer's certificate is for %s, of kind %s: expected proxy %s", id, id.Kind, peerID)}
	case id.Cluster != m.cfg.ClusterName:
		return &certError{fmt.Sprintf("the peer's certificate is for cluster %q, this proxy is in cluster %q", id.Cluster, m.cfg.ClusterName)}
	case id.Name != peerID:
		return &certError{fmt.Sprintf("the peer's certificate is for proxy %s, expected proxy %s: the address belongs to another proxy (stale membership?)", id.Name, peerID)}
	}
	if err := m.verifyChain(cs.PeerCertificates, x509.ExtKeyUsageServerAuth); err != nil {
		return &certError{fmt.Sprintf("the peer's certificate %q is not valid for a server: %v", leaf.Subject.CommonName, err)}
	}
	return nil
}

// roundTrip opens a stream on c and exchanges DialRequest and DialResponse.
func (m *Mesh) roundTrip(ctx context.Context, c *peerConn, req DialRequest) (net.Conn, error) {
	frame, err := encodeRequest(req)
	if err != nil {
		return nil, &Error{Code: CodeBadRequest, Message: err.Error(), err: err}
	}
	m.mu.Lock()
	if !c.live {
		retiring := c.retiring
		m.mu.Unlock()
		if retiring {
			return nil, errSuperseded
		}
		// It died since connFor picked it.
		return nil, fmt.Errorf("connection closed: %w", context.Cause(c.qc.Context()))
	}
	m.addStreamLocked(c)
	m.mu.Unlock()
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		m.releaseStream(c)
		return nil, fmt.Errorf("open stream: %w", err)
	}
	abort := func(code quic.StreamErrorCode) {
		st.CancelWrite(code)
		st.CancelRead(code)
	}
	stop := context.AfterFunc(ctx, func() { abort(streamCanceled) })
	_, err = st.Write(frame)
	var resp response
	if err == nil {
		var t frameType
		var body []byte
		if t, body, err = readFrame(st); err == nil {
			resp, err = decodeResponse(t, body)
		}
	}
	if !stop() {
		m.releaseStream(c)
		return nil, ctx.Err()
	}
	if err != nil {
		abort(streamCanceled)
		m.releaseStream(c)
		return nil, err
	}
	if !resp.OK {
		abort(streamRefused)
		m.releaseStream(c)
		return nil, remoteError(resp)
	}
	return &conn{
		st:      st,
		local:   c.qc.LocalAddr(),
		remote:  c.qc.RemoteAddr(),
		metrics: m.metrics,
		onClose: func() { m.releaseStream(c) },
	}, nil
}

// remoteError turns a refusal the peer sent into an *Error.
func remoteError(resp response) *Error {
	e := &Error{Code: resp.Code, Message: resp.Message}
	if !knownCode(e.Code) {
		// A newer peer's code: the caller cannot know what it means.
		e.Message = fmt.Sprintf("%s (code %q)", resp.Message, resp.Code)
		e.Code = CodeUnavailable
	}
	if e.Code == CodeVersion {
		e.PeerVersion = resp.Version
	}
	if e.Message == "" {
		e.Message = "the peer refused the dial: " + e.Code
	}
	return e
}

// classify turns a failed dial into an *Error and a metric outcome. ctx is
// the caller's context, dctx the one with DialTimeout.
func (m *Mesh) classify(ctx, dctx context.Context, peerID string, err error) (*Error, string) {
	var pe *Error
	if errors.As(err, &pe) {
		return pe, pe.Code
	}
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return &Error{Code: CodeUnavailable, Message: "dial canceled", err: ctx.Err()}, outcomeCanceled
	case ctx.Err() != nil:
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("no answer from peer %s before the dial's deadline", peerID), err: ctx.Err()}, outcomeTimeout
	case dctx.Err() != nil:
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("no answer from peer %s within %v: is it up, and UDP open between the proxies?", peerID, m.cfg.DialTimeout), err: dctx.Err()}, outcomeTimeout
	}
	var (
		ae   *quic.ApplicationError
		te   *quic.TransportError
		ce   *certError
		idle *quic.IdleTimeoutError
		hs   *quic.HandshakeTimeoutError
		sr   *quic.StatelessResetError
	)
	switch {
	case errors.As(err, &ce):
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("refused peer %s: %s", peerID, ce.msg), err: err}, outcomeTLS
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == closeRefused:
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s refused this proxy: %s", peerID, ae.ErrorMessage), err: err}, outcomeRefused
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == closeShutdown:
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s is shutting down: %s", peerID, ae.ErrorMessage), err: err}, CodeUnavailable
	case errors.As(err, &ae) && ae.Remote:
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s closed the connection: %s (code %d)", peerID, ae.ErrorMessage, ae.ErrorCode), err: err}, CodeUnavailable
	case errors.As(err, &te) && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200:
		alert := tls.AlertError(te.ErrorCode - 0x100)
		if te.Remote {
			return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s rejected this proxy's certificate (TLS alert %q): it must be a current proxy certificate for %s of cluster %s from the cluster's TLS CA; the peer's log says why", peerID, alert.Error(), m.cfg.ID, m.cfg.ClusterName), err: err}, outcomeTLS
		}
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("TLS handshake with peer %s failed here: %v", peerID, err), err: err}, outcomeTLS
	case errors.As(err, &idle), errors.As(err, &hs):
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("no answer from peer %s: is it up, and UDP open between the proxies?", peerID), err: err}, outcomeTimeout
	case errors.As(err, &sr):
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s restarted and no longer knows the connection; the next dial reconnects", peerID), err: err}, CodeUnavailable
	case errors.Is(err, errFrameTooLarge), errors.Is(err, errMalformed):
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s answered something this proxy cannot read: %v", peerID, err), err: err}, CodeUnavailable
	}
	return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("peer %s: %v", peerID, err), err: err}, CodeUnavailable
}

// resolve turns "host:port" into addresses, IPs first as given.
func resolve(ctx context.Context, addr string) ([]netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", portStr, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), uint16(port))}, nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
	}
	return out, nil
}

// addrIn reports whether a is one of want.
func addrIn(a net.Addr, want []netip.AddrPort) bool {
	u, ok := a.(*net.UDPAddr)
	if !ok {
		return false
	}
	ap := u.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return slices.Contains(want, ap)
}
