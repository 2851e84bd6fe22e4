// Package transport carries tunnel connections for tunnel/server and
// tunnel/agent: QUIC (quic-go), or yamux over TLS over TCP for networks that
// block UDP. Both look the same from above, a Conn of bidirectional Streams,
// so the tunnel protocol (tunnel/proto) and the logic around it (Hello,
// registry, dials) are written once.
//
// The two differ where QUIC has something yamux v0.1.2 lacks, and this
// package fills the gap:
//
//   - Closing with a reason. QUIC's CONNECTION_CLOSE carries a code and a
//     reason; yamux closes a TCP connection without a word. A yamux Conn
//     therefore has a control stream, the first stream the agent opens,
//     carrying nothing until one side closes: it writes a proto.Close there
//     (code, reason), and the peer closes the connection when it reads it.
//     The closing side waits for that (at most a second) so that nothing the
//     peer has not read yet is lost to a TCP reset.
//   - Resetting a stream. yamux has no per-stream reset or STOP_SENDING. A
//     stream's Close and Abort send a FIN and throw away whatever still
//     arrives (a drain goroutine reads until the peer's FIN), so the peer's
//     writes never block on a window nobody reads; the peer reads EOF where
//     QUIC would have given it an error. Every place the protocol aborts a
//     stream (a dial canceled or refused) is one where EOF ends it as well.
//   - Telling a broken connection from a finished stream. yamux reports
//     io.EOF on every stream when its session ends; a Stream here reports
//     the connection's error instead, as QUIC does.
//   - Why the connection ended: Err is a *CloseError when a side closed it
//     with a reason, ErrIdleTimeout (wrapped) when keepalives went
//     unanswered, else what broke the TCP connection or the yamux framing.
package transport
