package gossip

import (
	"maps"
	"slices"
	"time"
)

// Outcomes of a received message (label values of
// jumpgate_gossip_messages_received_total). The set is closed.
const (
	outcomeApplied = "applied" // changed the directory
	outcomeGap     = "gap"     // applied, but deltas before it were missed
	outcomeStale   = "stale"   // already known, or older than what is known
	outcomeIgnored = "ignored" // unknown type, about this proxy, or over a limit
	outcomeInvalid = "invalid" // did not decode or failed validation
)

// Message types (label values).
const (
	typeDelta     = "delta"
	typeFullState = "full_state"
	typeLeave     = "leave"
	typeMeta      = "meta"
	typeUnknown   = "unknown"
)

// maxDeltaParts is the most delta messages one batch may take. A bigger
// batch (a proxy that just took over a thousand nodes) is not sent as
// deltas at all: the counter moves on, and peers learn the new set from
// the next push/pull, which carries it compactly and once per peer
// instead of RetransmitMult·log(N+1) times per peer.
const maxDeltaParts = 16

// originSet is one proxy's set of nodes as this proxy knows it.
type originSet struct {
	ver   version
	nodes map[string]struct{}
	// gap: deltas were missed, so nodes may be out of date until a full
	// state at this version or later replaces it.
	gap bool
	// enc caches the set's full-state section; nil when out of date.
	enc []byte
	// orphanSince is when the Cluster first saw this set not counting
	// (its proxy dead, left or unknown); zero while it counts.
	orphanSince time.Time
}

func (s *originSet) section(origin string) []byte {
	if s.enc == nil {
		s.enc = appendOrigin(nil, &originState{
			Origin:  origin,
			Version: s.ver,
			Partial: s.gap,
			Nodes:   slices.Sorted(maps.Keys(s.nodes)),
		})
	}
	return s.enc
}

// directory is the tunnel directory: this proxy's own set, its pending
// changes, and the other proxies' sets. It is pure state; the Cluster
// guards it with its mutex and decides which origins count.
type directory struct {
	self    string
	own     originSet
	pending map[string]bool // node -> held, changes not yet in a delta
	others  map[string]*originSet
}

func newDirectory(self string, inc uint64) *directory {
	return &directory{
		self:    self,
		own:     originSet{ver: version{Inc: inc}, nodes: make(map[string]struct{})},
		pending: make(map[string]bool),
		others:  make(map[string]*originSet),
	}
}

// add records that this proxy holds node. It reports whether anything
// changed and whether the set is full.
func (d *directory) add(node string) (changed, full bool) {
	if _, ok := d.own.nodes[node]; ok {
		return false, false
	}
	if len(d.own.nodes) >= MaxNodesPerOrigin {
		return false, true
	}
	d.own.nodes[node] = struct{}{}
	d.own.enc = nil
	d.pending[node] = true
	return true, false
}

func (d *directory) remove(node string) bool {
	if _, ok := d.own.nodes[node]; !ok {
		return false
	}
	delete(d.own.nodes, node)
	d.own.enc = nil
	d.pending[node] = false
	return true
}

// flush turns the pending changes into delta messages of at most maxMsg
// bytes each, advancing the own counter by one per message. When that
// would take more than maxDeltaParts messages it advances the counter by
// one and returns none (jumped): peers see a gap and take the set from
// push/pull.
func (d *directory) flush(maxMsg int) (msgs [][]byte, jumped bool) {
	if len(d.pending) == 0 {
		return nil, false
	}
	var adds, rems []string
	for n, held := range d.pending {
		if held {
			adds = append(adds, n)
		} else {
			rems = append(rems, n)
		}
	}
	clear(d.pending)
	slices.Sort(adds)
	slices.Sort(rems)
	d.own.enc = nil
	chunks := splitChanges(adds, rems, maxMsg-deltaHeaderMax-2*uvarintLen(MaxNodesPerOrigin))
	if len(chunks) > maxDeltaParts {
		d.own.ver.Ctr++
		return nil, true
	}
	for _, c := range chunks {
		m := delta{Origin: d.self, Inc: d.own.ver.Inc, Prev: d.own.ver.Ctr, Cur: d.own.ver.Ctr + 1, Added: c.adds, Removed: c.rems}
		d.own.ver.Ctr++
		msgs = append(msgs, encodeDelta(&m))
	}
	return msgs, false
}

type chunk struct{ adds, rems []string }

// splitChanges cuts sorted adds and removes into chunks whose encoded
// names take at most budget bytes. Front coding restarts in each chunk.
func splitChanges(adds, rems []string, budget int) []chunk {
	var out []chunk
	var cur chunk
	used := 0
	put := func(list *[]string, n string) {
		prev := ""
		if l := *list; len(l) > 0 {
			prev = l[len(l)-1]
		}
		sz := nameSize(prev, n)
		if used+sz > budget && len(cur.adds)+len(cur.rems) > 0 {
			out = append(out, cur)
			cur = chunk{}
			used = nameSize("", n)
		} else {
			used += sz
		}
		*list = append(*list, n)
	}
	for _, n := range adds {
		put(&cur.adds, n)
	}
	for _, n := range rems {
		put(&cur.rems, n)
	}
	if len(cur.adds)+len(cur.rems) > 0 {
		out = append(out, cur)
	}
	return out
}

// incOrder says whether data of incarnation inc is of a newer process
// of its origin than the set s (+1: it replaces s), the same (0), or an
// older one (-1: stale). minInc is the incarnation the origin's member
// meta names, 0 if the member is unknown. Incarnations are start times,
// but the meta decides when it names one: memberlist orders metas by its
// own incarnation, not by clocks, so a proxy restarted on a host whose
// clock is behind still replaces its old set.
func incOrder(s *originSet, inc, minInc uint64) int {
	if minInc != 0 {
		switch {
		case inc < minInc:
			return -1
		case s == nil:
			return 1
		case inc == minInc && s.ver.Inc != minInc:
			return 1
		case inc != minInc && s.ver.Inc == minInc:
			return -1
		}
	}
	switch {
	case s == nil || inc > s.ver.Inc:
		return 1
	case inc < s.ver.Inc:
		return -1
	}
	return 0
}

// applyDelta applies a delta from another proxy; minInc is as for
// incOrder.
func (d *directory) applyDelta(m *delta, minInc uint64) string {
	if m.Origin == d.self {
		return outcomeIgnored
	}
	s := d.others[m.Origin]
	switch incOrder(s, m.Inc, minInc) {
	case -1:
		return outcomeStale
	case 1:
		// First news of this origin, or of its new process: the old
		// process's set is gone with it.
		if s == nil && len(d.others) >= maxOrigins {
			return outcomeIgnored
		}
		ns := make(map[string]struct{}, len(m.Added))
		for _, n := range m.Added {
			ns[n] = struct{}{}
		}
		// Counter 0 is the empty set a process starts with, so a delta on
		// top of it is complete; anything later means missed deltas.
		gap := m.Prev != 0
		d.others[m.Origin] = &originSet{ver: version{m.Inc, m.Cur}, nodes: ns, gap: gap}
		if gap {
			return outcomeGap
		}
		return outcomeApplied
	}
	if m.Cur <= s.ver.Ctr {
		return outcomeStale
	}
	grow := 0
	for _, n := range m.Added {
		if _, ok := s.nodes[n]; !ok {
			grow++
		}
	}
	if len(s.nodes)+grow > MaxNodesPerOrigin {
		return outcomeInvalid
	}
	for _, n := range m.Added {
		s.nodes[n] = struct{}{}
	}
	for _, n := range m.Removed {
		delete(s.nodes, n)
	}
	missed := m.Prev != s.ver.Ctr
	s.gap = s.gap || missed
	s.ver.Ctr = m.Cur
	s.enc = nil
	if missed {
		return outcomeGap
	}
	return outcomeApplied
}

// applyFull applies one origin's set from a full state. A set replaces
// the known one when it is of a newer process, or a later version of the
// same, or the same version and fills a gap. It reports whether the set
// was taken.
func (d *directory) applyFull(o *originState, minInc uint64) bool {
	if o.Origin == d.self {
		return false
	}
	s := d.others[o.Origin]
	switch incOrder(s, o.Version.Inc, minInc) {
	case -1:
		return false
	case 1:
		if s == nil && len(d.others) >= maxOrigins {
			return false
		}
	default:
		if !(s.ver.Ctr < o.Version.Ctr || s.ver.Ctr == o.Version.Ctr && s.gap && !o.Partial) {
			return false
		}
	}
	ns := make(map[string]struct{}, len(o.Nodes))
	for _, n := range o.Nodes {
		ns[n] = struct{}{}
	}
	d.others[o.Origin] = &originSet{ver: o.Version, nodes: ns, gap: o.Partial}
	return true
}

// fullState encodes this proxy's own set and the sets of the origins
// that count, in name order, within maxFullStateEntries and
// maxFullStateBytes. It returns the origins left out for size.
func (d *directory) fullState(counts func(origin string, s *originSet) bool) (msg []byte, leftOut []string) {
	sections := [][]byte{d.own.section(d.self)}
	size, entries := len(sections[0]), len(d.own.nodes)
	for _, o := range slices.Sorted(maps.Keys(d.others)) {
		s := d.others[o]
		if !counts(o, s) {
			continue
		}
		sec := s.section(o)
		if len(sections) >= maxOrigins || entries+len(s.nodes) > maxFullStateEntries || size+len(sec) > maxFullStateBytes {
			leftOut = append(leftOut, o)
			continue
		}
		sections = append(sections, sec)
		size += len(sec)
		entries += len(s.nodes)
	}
	return encodeFullState(sections), leftOut
}
