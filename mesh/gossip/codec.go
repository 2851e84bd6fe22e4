package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"jumpgate.dev/jumpgate/auth/identity"
)

// Message types: the first byte of every delegate message (doc.go,
// "Wire format"). The second byte is the message's format version.
const (
	msgDelta     byte = 1
	msgFullState byte = 2
	msgLeave     byte = 3

	wireVersion byte = 1
)

// Bounds on what a peer may send (doc.go, "Bounds").
const (
	// identityMaxLen is identity.CheckName's length limit.
	identityMaxLen = 64
	// MaxNodesPerOrigin caps the nodes one proxy may hold in the
	// directory; AddTunnel beyond it is refused and logged, and a peer
	// claiming more is ignored.
	MaxNodesPerOrigin = 100_000
	// maxOrigins caps the proxies the directory tracks and a full state
	// names.
	maxOrigins = 1024
	// maxFullStateEntries caps the node entries of one full state (100
	// proxies at 10,000 nodes each). A sender leaves out the origins that
	// do not fit (its own always fits: MaxNodesPerOrigin is less).
	maxFullStateEntries = 1_000_000
	// maxFullStateBytes caps an encoded full state, below memberlist's
	// 20 MiB limit for a whole push/pull (which also carries the member
	// list).
	maxFullStateBytes = 16 << 20
	// minNameBytes is the least an encoded name takes: a shared-prefix
	// length, a suffix length and at least one suffix byte (names are
	// strictly increasing, so the suffix is never empty).
	minNameBytes = 3
	// flagPartial marks a full-state origin set that the sender knows to
	// be missing deltas (it saw a gap). Unknown flag bits are ignored.
	flagPartial = 1 << 0
)

var errShort = errors.New("message too short")

// writer appends the wire encoding; it never fails.
type writer struct{ b []byte }

func (w *writer) byte(v byte)       { w.b = append(w.b, v) }
func (w *writer) uvarint(v uint64)  { w.b = binary.AppendUvarint(w.b, v) }
func (w *writer) u64(v uint64)      { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *writer) str(s string)      { w.uvarint(uint64(len(s))); w.b = append(w.b, s...) }
func (w *writer) names(ns []string) { w.b = appendNames(w.b, ns) }

// appendNames front-codes ns, which must be sorted and unique: a count,
// then for each name the length of the prefix it shares with the one
// before, the length of the rest, and the rest.
func appendNames(b []byte, ns []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ns)))
	prev := ""
	for _, n := range ns {
		s := sharedPrefix(prev, n)
		b = binary.AppendUvarint(b, uint64(s))
		b = binary.AppendUvarint(b, uint64(len(n)-s))
		b = append(b, n[s:]...)
		prev = n
	}
	return b
}

// nameSize is the encoded size of n after prev.
func nameSize(prev, n string) int {
	s := sharedPrefix(prev, n)
	return uvarintLen(uint64(s)) + uvarintLen(uint64(len(n)-s)) + len(n) - s
}

func sharedPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// reader consumes the wire encoding. The first error sticks; reads after
// it return zero values, so decoders check r.err once at the end of a
// section.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail(errShort)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errors.New("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if len(r.b) < 8 {
		r.fail(errShort)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// str reads a length-prefixed string of at most max bytes.
func (r *reader) str(max int) string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(max) {
		r.fail(fmt.Errorf("string of %d bytes, more than %d", n, max))
		return ""
	}
	if uint64(len(r.b)) < n {
		r.fail(errShort)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// name reads a proxy or node name and checks it as identity.CheckName does.
func (r *reader) name() string {
	s := r.str(identityMaxLen)
	if r.err != nil {
		return ""
	}
	if err := identity.CheckName(s); err != nil {
		r.fail(err)
		return ""
	}
	return s
}

// names reads a front-coded list of at most max names. The slice it
// allocates is bounded by the bytes left (minNameBytes a name), never by
// the count on the wire alone.
func (r *reader) names(max int) []string {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(max) {
		r.fail(fmt.Errorf("%d names, more than %d", n, max))
		return nil
	}
	if n > uint64(len(r.b)/minNameBytes) {
		r.fail(errShort)
		return nil
	}
	out := make([]string, 0, n)
	prev := ""
	var sb strings.Builder
	for i := uint64(0); i < n; i++ {
		shared := r.uvarint()
		rest := r.uvarint()
		if r.err != nil {
			return nil
		}
		if shared > uint64(len(prev)) || rest == 0 || shared+rest > identityMaxLen {
			r.fail(fmt.Errorf("bad name encoding (shared %d, rest %d)", shared, rest))
			return nil
		}
		if uint64(len(r.b)) < rest {
			r.fail(errShort)
			return nil
		}
		sb.Reset()
		sb.Grow(int(shared + rest))
		sb.WriteString(prev[:shared])
		sb.Write(r.b[:rest])
		r.b = r.b[rest:]
		name := sb.String()
		if i > 0 && name <= prev {
			r.fail(fmt.Errorf("names not sorted: %q after %q", name, prev))
			return nil
		}
		if err := identity.CheckName(name); err != nil {
			r.fail(err)
			return nil
		}
		out = append(out, name)
		prev = name
	}
	return out
}

// version is a point in one origin's directory history: the incarnation
// of the process (its start time in Unix nanoseconds, so a restart
// counts higher) and a counter it bumps with each change it publishes.
type version struct {
	Inc, Ctr uint64
}

// delta says what changed in one origin's set between two versions of
// the same incarnation. Each name carries its new absolute state (held
// or not), so applying a delta twice, or after a gap, does no harm.
type delta struct {
	Origin  string
	Inc     uint64
	Prev    uint64 // counter this delta applies on top of
	Cur     uint64 // counter after it; Cur > Prev
	Added   []string
	Removed []string
}

// Delta layout (after the type and version bytes): origin, inc (8
// bytes), prev, cur (uvarints), added and removed (front-coded lists).
const deltaHeaderMax = 2 + 1 + identityMaxLen + 8 + 10 + 10

func encodeDelta(d *delta) []byte {
	w := writer{b: make([]byte, 0, deltaHeaderMax+16*(len(d.Added)+len(d.Removed)))}
	w.byte(msgDelta)
	w.byte(wireVersion)
	w.str(d.Origin)
	w.u64(d.Inc)
	w.uvarint(d.Prev)
	w.uvarint(d.Cur)
	w.names(d.Added)
	w.names(d.Removed)
	return w.b
}

// decodeDelta decodes a delta message, type and version bytes included.
func decodeDelta(b []byte) (*delta, error) {
	r := reader{b: b}
	if t := r.byte(); t != msgDelta {
		return nil, fmt.Errorf("not a delta (type %d)", t)
	}
	v := r.byte()
	if r.err == nil && v < wireVersion {
		return nil, fmt.Errorf("decode delta: version %d is not supported", v)
	}
	d := &delta{}
	d.Origin = r.name()
	d.Inc = r.u64()
	d.Prev = r.uvarint()
	d.Cur = r.uvarint()
	d.Added = r.names(MaxNodesPerOrigin)
	d.Removed = r.names(MaxNodesPerOrigin)
	if r.err != nil {
		return nil, fmt.Errorf("decode delta: %w", r.err)
	}
	if v == wireVersion && len(r.b) != 0 {
		return nil, fmt.Errorf("decode delta from %s: %d trailing bytes", d.Origin, len(r.b))
	}
	if d.Cur <= d.Prev {
		return nil, fmt.Errorf("decode delta from %s: counter %d does not follow %d", d.Origin, d.Cur, d.Prev)
	}
	if len(d.Added) == 0 && len(d.Removed) == 0 {
		return nil, fmt.Errorf("decode delta from %s: empty", d.Origin)
	}
	// Both lists are sorted: walk them together to find a name in both.
	for i, j := 0, 0; i < len(d.Added) && j < len(d.Removed); {
		switch {
		case d.Added[i] == d.Removed[j]:
			return nil, fmt.Errorf("decode delta from %s: node %s both added and removed", d.Origin, d.Added[i])
		case d.Added[i] < d.Removed[j]:
			i++
		default:
			j++
		}
	}
	return d, nil
}

// originState is one origin's full set as carried in a full state.
type originState struct {
	Origin  string
	Version version
	Partial bool     // the sender knows it missed deltas for this origin
	Nodes   []string // sorted, unique
}

// fullState is the directory as one proxy sees it: its own set first,
// then the sets of the other proxies it counts as alive.
type fullState struct {
	Origins []originState
}

// Full-state layout (after the type and version bytes): a count of
// origins, then for each: origin, inc (8 bytes), counter (uvarint), flags
// (1 byte), nodes (front-coded list).
func appendOrigin(b []byte, o *originState) []byte {
	w := writer{b: b}
	w.str(o.Origin)
	w.u64(o.Version.Inc)
	w.uvarint(o.Version.Ctr)
	var flags byte
	if o.Partial {
		flags |= flagPartial
	}
	w.byte(flags)
	w.names(o.Nodes)
	return w.b
}

// encodeFullState joins origin sections made by appendOrigin.
func encodeFullState(sections [][]byte) []byte {
	n := 2 + 5
	for _, s := range sections {
		n += len(s)
	}
	w := writer{b: make([]byte, 0, n)}
	w.byte(msgFullState)
	w.byte(wireVersion)
	w.uvarint(uint64(len(sections)))
	for _, s := range sections {
		w.b = append(w.b, s...)
	}
	return w.b
}

// decodeFullState decodes a full state, type and version bytes included.
// It checks the whole message before returning any of it.
func decodeFullState(b []byte) (*fullState, error) {
	r := reader{b: b}
	if t := r.byte(); t != msgFullState {
		return nil, fmt.Errorf("not a full state (type %d)", t)
	}
	v := r.byte()
	if r.err == nil && v < wireVersion {
		return nil, fmt.Errorf("decode full state: version %d is not supported", v)
	}
	n := r.uvarint()
	if r.err != nil {
		return nil, fmt.Errorf("decode full state: %w", r.err)
	}
	if n > maxOrigins {
		return nil, fmt.Errorf("decode full state: %d origins, more than %d", n, maxOrigins)
	}
	fs := &fullState{}
	seen := make(map[string]bool)
	entries := 0
	for i := uint64(0); i < n; i++ {
		var o originState
		o.Origin = r.name()
		o.Version.Inc = r.u64()
		o.Version.Ctr = r.uvarint()
		o.Partial = r.byte()&flagPartial != 0
		o.Nodes = r.names(min(MaxNodesPerOrigin, maxFullStateEntries-entries))
		if r.err != nil {
			return nil, fmt.Errorf("decode full state: origin %d (%s): %w", i, o.Origin, r.err)
		}
		if seen[o.Origin] {
			return nil, fmt.Errorf("decode full state: origin %s twice", o.Origin)
		}
		seen[o.Origin] = true
		entries += len(o.Nodes)
		fs.Origins = append(fs.Origins, o)
	}
	if v == wireVersion && len(r.b) != 0 {
		return nil, fmt.Errorf("decode full state: %d trailing bytes", len(r.b))
	}
	return fs, nil
}

// messageType names a message's type byte for metrics; unknown types
// share one label value.
func messageType(b []byte) string {
	if len(b) == 0 {
		return typeUnknown
	}
	switch b[0] {
	case msgDelta:
		return typeDelta
	case msgFullState:
		return typeFullState
	case msgLeave:
		return typeLeave
	}
	return typeUnknown
}

// leaveNotice says a proxy is leaving on purpose. memberlist's own leave
// message (a dead message sent by the node about itself) does not reach
// the EventDelegate as different from a failure, so Leave sends this
// first.
type leaveNotice struct {
	Origin string
	Inc    uint64 // directory incarnation of the leaving process
}

// Leave layout (after the type and version bytes): origin, inc (8 bytes).
func encodeLeave(l *leaveNotice) []byte {
	var w writer
	w.byte(msgLeave)
	w.byte(wireVersion)
	w.str(l.Origin)
	w.u64(l.Inc)
	return w.b
}

func decodeLeave(b []byte) (*leaveNotice, error) {
	r := reader{b: b}
	if t := r.byte(); t != msgLeave {
		return nil, fmt.Errorf("not a leave notice (type %d)", t)
	}
	v := r.byte()
	if r.err == nil && v < wireVersion {
		return nil, fmt.Errorf("decode leave notice: version %d is not supported", v)
	}
	l := &leaveNotice{Origin: r.name(), Inc: r.u64()}
	if r.err != nil {
		return nil, fmt.Errorf("decode leave notice: %w", r.err)
	}
	if v == wireVersion && len(r.b) != 0 {
		return nil, fmt.Errorf("decode leave notice from %s: %d trailing bytes", l.Origin, len(r.b))
	}
	return l, nil
}
