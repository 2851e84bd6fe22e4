package resume

import (
	"sync"
	"time"
)

// Buffers come in two sizes: small ones for interactive sessions, which
// send a few dozen bytes at a time and must cost little while idle, and
// large ones (a whole DATA frame) for bulk transfers.
const (
	smallChunk = 4 << 10
	largeChunk = maxData
)

// chunk is a buffer of one of the two sizes. On the send side it holds
// Write's bytes b[:n] until the peer acknowledges them; on the receive side
// the link reader reads the transport into it and queued DATA bodies point
// into it. Its fields are guarded by the owning stream's mu, except the
// bytes themselves, which have one writer at a time (see stream).
type chunk struct {
	b    []byte
	n    int // send side: bytes filled
	refs int // receive side: queued segments pointing in, plus one while the reader fills it
}

func (c *chunk) large() bool { return len(c.b) == largeChunk }

// chunkPools recycle chunks across all sessions of the process. A pool of
// free buffers has no observable state, so sharing it does not couple
// instances; it keeps an idle session from holding buffers and a busy one
// from allocating (and zeroing) 64 KiB per frame.
var chunkPools = [2]sync.Pool{
	{New: func() any { return &chunk{b: make([]byte, smallChunk)} }},
	{New: func() any { return &chunk{b: make([]byte, largeChunk)} }},
}

func getChunk(large bool) *chunk {
	if large {
		return chunkPools[1].Get().(*chunk)
	}
	return chunkPools[0].Get().(*chunk)
}

func putChunk(c *chunk) {
	c.n, c.refs = 0, 0
	if c.large() {
		chunkPools[1].Put(c)
	} else {
		chunkPools[0].Put(c)
	}
}

// replay holds the bytes Write accepted and the peer has not acknowledged,
// in a list of chunks holding stream offsets [base, base+Σn); a chunk goes
// once all its bytes are acknowledged. Memory is proportional to the
// unacknowledged bytes: an idle, fully acknowledged session holds no chunk.
type replay struct {
	chunks []*chunk
	base   uint64 // stream offset of chunks[0].b[0]
}

// reserve returns where Write may copy up to want bytes: the free tail of
// the last chunk, or a new chunk. large asks for a large new chunk. The
// caller fills c.b[off:off+m] and then adds m to c.n.
func (r *replay) reserve(want int, large bool, written uint64) (c *chunk, off, m int) {
	if k := len(r.chunks); k > 0 {
		c = r.chunks[k-1]
		if c.n < len(c.b) {
			return c, c.n, min(want, len(c.b)-c.n)
		}
	} else {
		r.base = written
	}
	c = getChunk(large)
	r.chunks = append(r.chunks, c)
	return c, 0, min(want, len(c.b))
}

// slice returns up to max bytes from offset off, within one chunk.
func (r *replay) slice(off uint64, max int) []byte {
	start := r.base
	for _, c := range r.chunks {
		if off < start+uint64(c.n) {
			i := int(off - start)
			return c.b[i:min(c.n, i+max)]
		}
		start += uint64(c.n)
	}
	return nil
}

// trim drops the chunks wholly below acked. The last chunk is dropped only
// if keepTail is false: a Write may be filling it. free receives the
// dropped chunks.
func (r *replay) trim(acked uint64, keepTail bool, free func(*chunk)) {
	k := 0
	for k < len(r.chunks) {
		c := r.chunks[k]
		if r.base+uint64(c.n) > acked || (keepTail && k == len(r.chunks)-1) {
			break
		}
		r.base += uint64(c.n)
		free(c)
		r.chunks[k] = nil
		k++
	}
	if k == 0 {
		return
	}
	n := copy(r.chunks, r.chunks[k:])
	clear(r.chunks[n:])
	r.chunks = r.chunks[:n]
	if n == 0 && cap(r.chunks) > 16 {
		r.chunks = nil // a burst is over: do not keep its list
	}
}

// segment is a DATA body, or the rest of one, waiting for Read.
type segment struct {
	c *chunk
	b []byte
}

// recvQueue holds received bytes until Read takes them.
type recvQueue struct {
	segs  []segment
	head  int
	bytes int // total in segs[head:]
}

func (q *recvQueue) push(c *chunk, b []byte) {
	q.bytes += len(b)
	// The rest of a DATA body that arrived in a later read of the same
	// chunk continues the previous segment. (Bodies of different frames are
	// never adjacent: a header sits between them.)
	if k := len(q.segs); k > q.head {
		last := &q.segs[k-1]
		if last.c == c && len(c.b)-cap(last.b)+len(last.b) == len(c.b)-cap(b) {
			last.b = last.b[:len(last.b)+len(b)]
			return
		}
	}
	c.refs++
	q.segs = append(q.segs, segment{c: c, b: b})
}

// consume drops n bytes from the front; release receives each chunk no
// longer referenced.
func (q *recvQueue) consume(n int, release func(*chunk)) {
	q.bytes -= n
	for n > 0 {
		s := &q.segs[q.head]
		if n < len(s.b) {
			s.b = s.b[n:]
			return
		}
		n -= len(s.b)
		if s.c.refs--; s.c.refs == 0 {
			release(s.c)
		}
		*s = segment{}
		q.head++
	}
	if q.head == len(q.segs) {
		q.head = 0
		q.segs = q.segs[:0]
		if cap(q.segs) > 64 {
			q.segs = nil
		}
	}
}

// drop releases everything queued. (Segments are never empty, DATA bodies
// being at least one byte, so consuming every byte empties the queue.)
func (q *recvQueue) drop(release func(*chunk)) { q.consume(q.bytes, release) }

// deadline is a settable point in time whose passing closes a channel, as
// in net.Pipe.
type deadline struct {
	mu     sync.Mutex // guards timer and cancel
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passes; never nil
}

func newDeadline() *deadline { return &deadline{cancel: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// signal wakes whoever waits on a channel of capacity one, without
// blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
