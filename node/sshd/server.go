package sshd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/node/recording"
)

// Config configures a Server.
type Config struct {
	// NodeID is the node's name, used in audit events and errors.
	NodeID string
	// ClusterName is the cluster certificates must carry (identity.ExtCluster).
	ClusterName string
	// HostSigner returns the host certificate signer (ssh.NewCertSigner). It
	// is called for each connection, so a rotated certificate needs no
	// restart.
	HostSigner func() (ssh.Signer, error)
	// UserCAs returns the trusted user CA public keys. It is called for each
	// authentication attempt.
	UserCAs func() []ssh.PublicKey
	// Authorize checks whether id may log in as login on this node, against
	// the node's cached roles and its own labels. Denials are
	// *identity.AccessError; their text is shown to the user. Any other
	// error is logged and the user is told to try again.
	Authorize func(id identity.Identity, login string) error
	// Policy, if set, returns what a user's sessions on this node may do
	// (port forwarding, agent forwarding, SFTP) and whether each needs a
	// per-session MFA certificate, from the node's cached roles. Nil:
	// what the certificate's permit-* extensions allow, without MFA.
	Policy func(id identity.Identity) identity.SessionPolicy
	// Recordings, if set, is where shell and exec sessions are recorded
	// (asciicast v2). OnRecording is called with each finished
	// recording, from the session's goroutine (it must not block).
	Recordings  *recording.Store
	OnRecording func(recording.Meta)
	// RecordingLimit bounds one recording's size (default 64 MiB).
	RecordingLimit int64

	// Audit receives audit events. Default audit.Discard.
	Audit audit.Sink
	// Logger receives logs. Default: discard.
	Logger *slog.Logger
	// Now is the clock certificates are checked against. Default time.Now.
	Now func() time.Time
	// Metrics, if set, registers the server's metrics.
	Metrics prometheus.Registerer

	// HandshakeTimeout bounds the SSH handshake and authentication of a
	// connection. Default 20s: enough for a slow link, short enough that
	// garbage or a stalled client costs little.
	HandshakeTimeout time.Duration
	// DialTimeout bounds the dial of a direct-tcpip (ssh -L) target.
	// Default 10s.
	DialTimeout time.Duration
	// SFTPHelper is the program (and its arguments) that serves SFTP on its
	// stdin and stdout when a session must run as another OS user than the
	// node's: the node's own process cannot drop privileges for one
	// session. A program that calls ServeSFTP does; so does OpenSSH's
	// sftp-server. Default: the first sftp-server found in the usual
	// OpenSSH locations. Sessions that need no user switch are served in
	// process.
	SFTPHelper []string
}

const (
	defaultHandshakeTimeout = 20 * time.Second
	defaultDialTimeout      = 10 * time.Second
)

func (c *Config) checkAndSetDefaults() error {
	switch {
	case c.NodeID == "":
		return errors.New("sshd: Config.NodeID is required")
	case c.ClusterName == "":
		return errors.New("sshd: Config.ClusterName is required")
	case c.HostSigner == nil:
		return errors.New("sshd: Config.HostSigner is required")
	case c.UserCAs == nil:
		return errors.New("sshd: Config.UserCAs is required")
	case c.Authorize == nil:
		return errors.New("sshd: Config.Authorize is required")
	}
	if c.Audit == nil {
		c.Audit = audit.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = defaultHandshakeTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = defaultDialTimeout
	}
	if c.RecordingLimit <= 0 {
		c.RecordingLimit = 64 << 20
	}
	c.SFTPHelper = append([]string(nil), c.SFTPHelper...)
	return nil
}

// Server is the node's SSH server. It serves listeners handed to it by the
// tunnel agent; it never listens on the network itself.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	self    selfUser // the OS user the node runs as

	sftpSearch []string      // where to look for an SFTP helper if none is configured
	waitDelay  time.Duration // see defaultWaitDelay; shorter in tests
	ptyDrain   time.Duration // see defaultPTYDrain; shorter in tests

	// ctx is canceled by Close, or by Shutdown when its context ends: every
	// connection closes and every process is killed.
	ctx    context.Context
	cancel context.CancelFunc

	wg sync.WaitGroup // one per connection goroutine; Add only under mu while !draining

	mfa mfaSeen // per-session MFA certificates already used

	mu        sync.Mutex // guards following
	draining  bool
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
}

// New returns a Server; call Serve to use it.
func New(cfg Config) (*Server, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	self, err := currentUser()
	if err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("node", cfg.NodeID),
		metrics:    m,
		self:       self,
		sftpSearch: sftpServerPaths(),
		waitDelay:  defaultWaitDelay,
		ptyDrain:   defaultPTYDrain,
		ctx:        ctx,
		cancel:     cancel,
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[*serverConn]struct{}),
	}, nil
}

// Serve accepts SSH connections on l until l fails, Shutdown or Close. It
// returns nil after Shutdown or Close. l is closed on return.
func (s *Server) Serve(l net.Listener) error {
	defer l.Close()
	if !s.trackListener(l) {
		return nil
	}
	defer s.untrackListener(l)

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isDraining() {
				return nil
			}
			if isTemporary(err) {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept ssh connection", "err", err, "retry_in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.ctx.Done():
					t.Stop()
					return nil
				}
				continue
			}
			return fmt.Errorf("accept ssh connections on node %s: %w", s.cfg.NodeID, err)
		}
		backoff = 0
		if !s.startConn(nc) {
			nc.Close()
			return nil
		}
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Shutdown stops accepting connections, closes connections that have no
// open channels, and waits for the rest to finish. When ctx ends first, it
// closes everything at once (as Close) and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.drain()
	stop := context.AfterFunc(ctx, s.cancel)
	s.wg.Wait()
	graceful := stop()
	s.cancel()
	if !graceful {
		return fmt.Errorf("shut down ssh server on node %s: sessions were cut: %w", s.cfg.NodeID, ctx.Err())
	}
	return nil
}

// Close closes every listener and connection at once, kills the sessions'
// processes, and waits for the server's goroutines to end.
func (s *Server) Close() error {
	s.drain()
	s.cancel()
	s.wg.Wait()
	return nil
}

// drain stops accepting and closes idle connections; connections with open
// channels close when their last channel does.
func (s *Server) drain() {
	s.mu.Lock()
	s.draining = true
	ls := make([]net.Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	cs := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range cs {
		c.drain()
	}
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

func (s *Server) trackListener(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrackListener(l net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, l)
}

// startConn starts the goroutine that owns nc; false when draining.
func (s *Server) startConn(nc net.Conn) bool {
	ctx, cancel := context.WithCancel(s.ctx)
	c := &serverConn{
		srv:    s,
		nc:     nc,
		ctx:    ctx,
		cancel: cancel,
		log:    s.log.With("remote", addrString(nc.RemoteAddr())),
	}
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		cancel()
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		c.run()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	return true
}

// auditEvent fills the fields every event of this node shares.
func (s *Server) auditEvent(typ string) audit.Event {
	return audit.Event{
		Time:    s.cfg.Now().UTC(),
		Type:    typ,
		Server:  "node/" + s.cfg.NodeID,
		Cluster: s.cfg.ClusterName,
		Node:    s.cfg.NodeID,
	}
}

// serverConn is one SSH connection.
type serverConn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger

	// ctx ends when the connection does; sessions derive from it.
	ctx    context.Context
	cancel context.CancelFunc

	wg sync.WaitGroup // channel and request handlers of this connection

	// Set by run after the handshake, read-only afterwards.
	sc    *ssh.ServerConn
	ident identity.Identity
	perms map[string]string // certificate extensions (permit-pty, ...)
	// policy is what the user's roles allow here (see Config.Policy).
	policy identity.SessionPolicy

	mu       sync.Mutex // guards following
	active   int        // open channels
	sessions int        // open session channels
	draining bool
	// Set once authenticated, for EnforceLocks (the connection's own
	// goroutines read sc and ident directly).
	target identity.LockTarget
	authed bool
	chans  map[ssh.Channel]struct{} // open session channels, to tell their users why they end
}

// run owns the connection: handshake, then channels until the client goes.
func (c *serverConn) run() {
	defer c.cancel()
	defer c.nc.Close()
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer stop()

	signer, err := c.srv.cfg.HostSigner()
	if err != nil {
		c.log.Error("load host certificate: refusing connection", "err", err)
		return
	}
	// The deadline covers the version exchange, key exchange and
	// authentication: garbage or a client that stalls ends here.
	if err := c.nc.SetDeadline(time.Now().Add(c.srv.cfg.HandshakeTimeout)); err != nil {
		c.log.Debug("set handshake deadline", "err", err)
	}
	sc, chans, reqs, err := ssh.NewServerConn(c.nc, c.srv.serverConfig(signer, c.nc))
	if err != nil {
		c.log.Debug("ssh handshake failed", "err", err)
		return
	}
	defer sc.Close()
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		c.log.Debug("clear handshake deadline", "err", err)
	}
	id, err := identityFromPermissions(sc.Permissions)
	if err != nil {
		// Cannot happen: authentication put it there.
		c.log.Error("read identity of authenticated connection", "err", err)
		return
	}
	c.sc = sc
	c.ident = id
	c.perms = sc.Permissions.Extensions
	c.policy = policyFromPermissions(sc.Permissions)
	c.mu.Lock()
	c.target = identity.LockTarget{User: id.Name, Roles: id.Roles, Node: c.srv.cfg.NodeID, Login: sc.User()}
	c.authed = true
	c.mu.Unlock()
	c.log = c.log.With("user", id.Name, "login", sc.User())
	c.log.Info("ssh connection authenticated")

	c.wg.Go(func() { c.handleGlobalRequests(reqs) })
	for nch := range chans {
		c.handleChannel(nch)
	}
	c.log.Debug("ssh connection closed")
	c.cancel()
	c.wg.Wait()
}

// drain closes the connection now if it has no open channel, or when its
// last channel closes.
func (c *serverConn) drain() {
	c.mu.Lock()
	c.draining = true
	idle := c.active == 0
	c.mu.Unlock()
	if idle {
		c.nc.Close()
	}
}

// maxSessions is how many session channels one connection may have open,
// as OpenSSH's MaxSessions. Port forwards are not limited.
const maxSessions = 10

// acquire counts a new channel; it returns the reason to refuse it, if any.
func (c *serverConn) acquire(session bool) (ssh.RejectionReason, string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return ssh.Prohibited, fmt.Sprintf("node %s is shutting down: reconnect in a moment", c.srv.cfg.NodeID), false
	}
	if session && c.sessions >= maxSessions {
		return ssh.ResourceShortage, fmt.Sprintf("this connection already has %d sessions open: close one or open another connection", maxSessions), false
	}
	c.active++
	if session {
		c.sessions++
	}
	return 0, "", true
}

func (c *serverConn) release(session bool) {
	c.mu.Lock()
	c.active--
	if session {
		c.sessions--
	}
	idle := c.draining && c.active == 0
	c.mu.Unlock()
	if idle {
		c.nc.Close()
	}
}

// handleGlobalRequests refuses every global request: remote forwarding
// (tcpip-forward) is not supported yet, and OpenSSH expects a failure reply
// to keepalive@openssh.com.
func (c *serverConn) handleGlobalRequests(reqs <-chan *ssh.Request) {
	for req := range reqs {
		switch req.Type {
		case "tcpip-forward", "cancel-tcpip-forward":
			c.log.Info("refused remote port forwarding: not supported")
		}
		if req.WantReply {
			if err := req.Reply(false, nil); err != nil {
				c.log.Debug("reply to global request", "type", req.Type, "err", err)
			}
		}
	}
}

func (c *serverConn) handleChannel(nch ssh.NewChannel) {
	switch nch.ChannelType() {
	case "session", "direct-tcpip":
	default:
		c.reject(nch, ssh.UnknownChannelType, fmt.Sprintf("channel type %q is not supported by Jumpgate", nch.ChannelType()))
		return
	}
	session := nch.ChannelType() == "session"
	if reason, msg, ok := c.acquire(session); !ok {
		c.reject(nch, reason, msg)
		return
	}
	c.wg.Go(func() {
		defer c.release(session)
		if session {
			c.handleSession(nch)
		} else {
			c.handleDirectTCPIP(nch)
		}
	})
}

func (c *serverConn) reject(nch ssh.NewChannel, reason ssh.RejectionReason, msg string) {
	if err := nch.Reject(reason, "jumpgate: "+msg); err != nil {
		c.log.Debug("reject channel", "type", nch.ChannelType(), "err", err)
	}
}

// auditEvent fills the fields every event of this connection shares.
func (c *serverConn) auditEvent(typ string) audit.Event {
	e := c.srv.auditEvent(typ)
	e.User = c.ident.Name
	e.Roles = c.ident.Roles
	e.Login = c.sc.User()
	e.RemoteAddr = addrString(c.nc.RemoteAddr())
	return e
}

// permits reports whether the certificate grants an OpenSSH permission
// extension such as "permit-pty".
func (c *serverConn) permits(ext string) bool {
	_, ok := c.perms[ext]
	return ok
}

// addrString is a.String(), or "" for a listener whose connections have no
// remote address.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
