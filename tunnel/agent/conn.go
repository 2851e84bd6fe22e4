package agent

import (
	"errors"
	"net"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/tunnel/internal/transport"
	"jumpgate.dev/jumpgate/tunnel/proto"
)

// Addr is the address of an Agent as a net.Listener, and the local address
// of the connections it accepts: the node, reached through its tunnels.
type Addr struct {
	NodeID string
}

// Network returns "jumpgate-tunnel".
func (Addr) Network() string { return "jumpgate-tunnel" }

// String returns the node ID.
func (a Addr) String() string { return a.NodeID }

// Conn is a connection accepted from a proxy's dial: one stream of a tunnel.
// Besides net.Conn it has CloseWrite (half-close) and the proxy's
// DialRequest.
//
// tunnel/server has the same small type for its side of the stream; see the
// note there.
type Conn struct {
	st            transport.Stream
	req           proto.DialRequest
	version       int
	local, remote net.Addr
	closeOnce     sync.Once
	// release, if set, is called once when the Conn is closed, refused or
	// aborted: the agent counts open dials per tunnel, so that a tunnel
	// being replaced closes only when nothing uses it.
	release     func()
	releaseOnce sync.Once
	// stopWatch ends the read that watches, while the dial waits for
	// Accept, whether the proxy gives up; it reports whether the stream is
	// still good (see watchGone).
	stopWatch func() bool
}

var _ interface {
	net.Conn
	CloseWrite() error
	CloseRead() error
} = (*Conn)(nil)

// DialRequest returns what the proxy said about the dial: the user, the
// client's address, the session and request IDs.
func (c *Conn) DialRequest() proto.DialRequest { return c.req }

// MFACert is the per-session MFA certificate the user's client sent with
// the dial, if any (node/sshd checks it).
func (c *Conn) MFACert() string { return c.req.MFACert }

func (c *Conn) Read(p []byte) (int, error)  { return c.st.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.st.Write(p) }

// CloseWrite half-closes the connection: the user's side reads EOF and this
// side can still read.
func (c *Conn) CloseWrite() error { return c.st.CloseWrite() }

// CloseRead tells the proxy to stop sending (over TCP, what it still sends
// is discarded).
func (c *Conn) CloseRead() error {
	c.st.CloseRead()
	return nil
}

// Close ends both directions. Data already written is still delivered.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() { c.st.Close() })
	c.done()
	return nil
}

// done calls release once.
func (c *Conn) done() {
	c.releaseOnce.Do(func() {
		if c.release != nil {
			c.release()
		}
	})
}

// LocalAddr is the agent's Addr.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the user's address from the DialRequest (a *net.TCPAddr)
// when it parses, else the proxy's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

// answerTimeout bounds writing a DialResponse: a few dozen bytes on a fresh
// stream, which only a dead tunnel can stall.
const answerTimeout = 5 * time.Second

// answer accepts the dial. It is written before the Conn is handed out, so
// it never interleaves with the SSH server's first bytes.
func (c *Conn) answer() error {
	c.st.SetWriteDeadline(time.Now().Add(answerTimeout))
	err := proto.WriteMessage(c.st, proto.DialResponse{Version: c.version, OK: true})
	c.st.SetWriteDeadline(time.Time{})
	return err
}

// refuse declines the dial with a reason the user will see.
func (c *Conn) refuse(reason string) {
	c.st.SetWriteDeadline(time.Now().Add(answerTimeout))
	proto.WriteMessage(c.st, proto.DialResponse{Version: c.version, Error: reason})
	c.st.Close()
	c.done()
}

// abort drops the stream without an answer.
func (c *Conn) abort() {
	c.st.Abort(proto.StreamCanceled)
	c.done()
}

// longAgo is a deadline in the past, to end a blocked Read.
var longAgo = time.Unix(1, 0)

// watchGone watches st while its dial waits for Accept. The proxy sends
// nothing between its DialRequest and the agent's DialResponse, so a Read
// that returns means the proxy gave up (QUIC: it reset the stream; TCP: it
// closed it) or the tunnel ended: gone is closed then. stop ends the watch
// and reports whether the stream is still good; it must be called (once)
// unless gone was closed, and before anything else reads st.
func watchGone(st transport.Stream) (gone <-chan struct{}, stop func() bool) {
	done := make(chan struct{})
	var (
		n   int
		err error
	)
	go func() {
		defer close(done)
		var b [1]byte
		n, err = st.Read(b[:])
	}()
	return done, func() bool {
		select {
		case <-done:
		default:
			st.SetReadDeadline(longAgo)
			<-done
			st.SetReadDeadline(time.Time{})
		}
		// Good only if our deadline ended the read: anything else (bytes
		// before the answer, EOF, a reset) means the proxy is gone.
		var ne net.Error
		return n == 0 && errors.As(err, &ne) && ne.Timeout()
	}
}
