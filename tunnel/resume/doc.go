// Package resume is a resumable byte stream that runs under SSH between a
// user's client (jg) and a node, so that an SSH connection survives its path
// breaking. The proxies between them forward opaque bytes; when one drains
// for an upgrade or crashes, jg dials again through another proxy and the
// same SSH connection continues, with no byte lost, duplicated or
// reordered.
//
// The client side is [Dial], which returns a [*Conn]; the node side is a
// [*Listener] wrapped around the listener the node's SSH server accepts
// from, whose Accept returns each new session as a [*ServerConn]. Both are
// net.Conns with CloseWrite, so SSH runs on them unchanged. A transport is
// whatever the client's Dial function returns (today: a stream through a
// proxy and the node's reverse tunnel).
//
// # Wire protocol, version 1
//
// Frames have a 5-byte header, a type byte and the body length as a
// big-endian uint32, then the body:
//
//	+------+-----------------+----------------------------------+
//	| type | length (uint32, | body: length bytes               |
//	| 1 B  | big endian) 4 B | DATA ≤ 65536, the others ≤ 1025  |
//	+------+-----------------+----------------------------------+
//
// A reader checks the type and length before it reads or allocates
// anything for the body; an unknown type or a length outside the type's
// bounds is a protocol error. Offsets are uint64 big endian and count DATA
// body bytes since the session began, in each direction separately.
//
// Every transport starts with a preamble of 5 bytes, Magic ("JGRS") and the
// version byte (0x01), from the client first, then from the node in its
// answer. A plain SSH client writes "SSH-" first instead, which is how the
// node tells the two apart (see Node side); an older node answers a
// resumable client with its SSH banner, which is how the client learns that
// the node does not speak resume ([ErrUnsupported]; it dials again and
// speaks plain SSH). A node that does not speak the client's version
// answers ERROR with code 4 (unsupported), which the client treats the
// same way.
//
// A new session:
//
//	client                                              node
//	  |-- "JGRS" 0x01, HELLO {0x01 new, ed25519 pubkey} -->|  32-byte public key of the session
//	  |<-- "JGRS" 0x01, WELCOME {session id, nonce} -------|  16 random bytes; 32 random bytes
//	  |<================ data phase ======================>|
//
// The nonce is unused in version 1 (a client ignores it); it leaves room for
// a later version to have the client prove the key at creation without
// another round trip. The session key is the client's: resumption must
// prove it, so a proxy that saw the session id cannot take the session.
//
// A resumption, on a new transport, possibly through another proxy:
//
//	client                                              node
//	  |-- "JGRS" 0x01, HELLO {0x02 resume, id, recv} ----->|  recv: bytes the client has received
//	  |<-- "JGRS" 0x01, CHALLENGE {nonce} -----------------|  32 fresh random bytes
//	  |-- PROOF {signature} ------------------------------->|  ed25519 over "jumpgate-resume-v1" ||
//	  |                                                    |    id || nonce || recv (uint64)
//	  |<-- RESUMED {node recv} -----------------------------|  bytes the node has received
//	  |<================ data phase ======================>|  each side first sends again from
//	                                                           the other's offset
//
// The node checks the signature against the session's public key, then (if
// ServerConfig.User is set) that the transport's user is the session's. A
// refusal is ERROR {0x01 refused, reason}, after which the node closes the
// transport; the client returns [ErrRefused] with the node's reason and does
// not retry:
//
//   - "session <id> is unknown or expired (the node keeps a detached session
//     for 5m0s)"
//   - "resumption refused: the proof does not match the session key"
//   - "resumption refused: session belongs to another user"
//
// A resumption of a session whose old transport is still attached (the node
// has not noticed it died) takes over: the node closes the old transport
// first, then answers RESUMED. A client's recv, or a node's, outside
// [acknowledged, sent] of the other side is a protocol error: the side that
// notices sends ERROR {0x02 protocol, reason} and the session ends.
//
// Handshake frame types: HELLO 0x01 (body 33 or 25 bytes), WELCOME 0x02
// (48), CHALLENGE 0x03 (32), PROOF 0x04 (64), RESUMED 0x05 (8), ERROR 0x0f
// (code byte and a UTF-8 reason of at most 1024 bytes). Each side reads the
// handshake frame by frame and nothing beyond, since the data phase follows
// on the same transport.
//
// The data phase, the same in both directions:
//
//	DATA  0x10 {bytes}        1 to 65536 bytes of the stream; larger writes are split
//	ACK   0x11 {offset}       cumulative: everything below offset was received
//	FIN   0x12 {offset}       half close: no DATA after offset; the reader gets io.EOF there
//	CLOSE 0x13 {offset}       session over: the sender sends nothing past offset
//	PING  0x14 {}             keepalive; answered with PONG
//	PONG  0x15 {}
//	ERROR 0x0f {code, reason} the session is over (2 protocol, 3 the node is shutting down)
//
// A side acknowledges what it received once 64 KiB are unacknowledged, or
// 200 ms after the first unacknowledged byte, or with anything else it
// sends; the sender keeps unacknowledged bytes (and only those) in a replay
// buffer of chunks, and Write blocks when MaxUnacked bytes are
// unacknowledged. FIN and CLOSE are sent after all data before them, and
// again after a resumption if they were not acknowledged by then; a FIN or
// CLOSE whose offset is not the receiver's received count is a protocol
// error. A side that has sent nothing for a keepalive interval sends PING;
// a transport on which nothing arrived for three intervals is dead.
//
// Closing: Close on either side sends the remaining data, then CLOSE; the
// other side reads io.EOF after all data, answers with its own CLOSE, and
// drops the session; the first side drops it when that CLOSE arrives. The
// side that answered half-closes the transport and waits (up to a second)
// for the other to close it, so that the answer is read before the
// transport resets.
//
// # Client side
//
// A transport is lost on a read or write error, on three keepalive
// intervals of silence, or on io.EOF without a CLOSE exchange: the last is
// a proxy closing the transport cleanly (it drains), and the next Attempt
// has Moved set, so the caller dials another proxy. The client dials again
// at once, then after 50 ms, 100 ms, ... doubling to 2 s, until the window
// (ClientConfig.Window, 2 minutes) has passed since the loss; then Read and
// Write fail with [ErrGaveUp]. Conn.Reconnect moves to a new transport
// while the old one still works: it dials first, then drops the old
// transport and resumes.
//
// # Node side
//
// The Listener reads each new transport's first 4 bytes, waiting at most
// ServerConfig.SniffTimeout (3 s): Magic starts a handshake; anything else,
// or nothing, is plain SSH, handed out by Accept with the sniffed bytes
// replayed. Sniffing and handshakes run on their own goroutines, so a slow
// transport does not hold up Accept. A session whose transport dies is
// detached and waits ServerConfig.Window (5 minutes) for its client; then
// its Read and Write fail and it is dropped. When the SSH server closes a
// ServerConn, the session stays until the client confirms the CLOSE (or the
// window passes), across resumptions if need be, so the client always sees
// io.EOF after all data. Closing the Listener ends every session with ERROR
// code 3.
//
// # Efficiency
//
// Write copies into the replay buffer (unavoidable: the bytes must outlive
// the call) and the link writer sends batches of frames with one writev,
// pointing at the replay chunks, or with one Write of a copy where the
// transport has no writev (TLS). The link reader reads the transport into
// chunks and parses frames in place; Read copies out of them. An idle
// session holds no send buffer and one 4 KiB receive chunk.
//
// # Metrics
//
// A Listener registers, on ServerConfig.Metrics:
// jumpgate_resume_sessions{state="attached|detached"},
// jumpgate_resume_resumptions_total{outcome="ok|refused|expired|takeover"},
// jumpgate_resume_stall_seconds (detach to resumption) and
// jumpgate_resume_replayed_bytes_total.
package resume
