package gossip

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func setOf(d *directory, origin string) []string {
	s := d.others[origin]
	if s == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(s.nodes))
}

func TestApplyDeltaVersions(t *testing.T) {
	d := newDirectory("me", 1)
	step := func(m delta, minInc uint64, want string) {
		t.Helper()
		if got := d.applyDelta(&m, minInc); got != want {
			t.Fatalf("applyDelta(%+v) = %s, want %s", m, got, want)
		}
	}
	step(delta{Origin: "me", Inc: 9, Prev: 0, Cur: 1, Added: []string{"x"}}, 0, outcomeIgnored)
	step(delta{Origin: "p", Inc: 10, Prev: 0, Cur: 1, Added: []string{"a", "b"}}, 0, outcomeApplied)
	step(delta{Origin: "p", Inc: 10, Prev: 0, Cur: 1, Added: []string{"a", "b"}}, 0, outcomeStale)
	step(delta{Origin: "p", Inc: 10, Prev: 1, Cur: 2, Removed: []string{"a"}}, 0, outcomeApplied)
	if s := d.others["p"]; s.gap || !slices.Equal(setOf(d, "p"), []string{"b"}) {
		t.Fatalf("after two deltas: %v gap=%v", setOf(d, "p"), s.gap)
	}
	// Counter 3 is lost; 4 arrives: applied, marked as a gap.
	step(delta{Origin: "p", Inc: 10, Prev: 3, Cur: 4, Added: []string{"c"}}, 0, outcomeGap)
	if !d.others["p"].gap || !slices.Equal(setOf(d, "p"), []string{"b", "c"}) {
		t.Fatalf("after gap: %v gap=%v", setOf(d, "p"), d.others["p"].gap)
	}
	// The late counter 3 is older than what is known: dropped.
	step(delta{Origin: "p", Inc: 10, Prev: 2, Cur: 3, Added: []string{"z"}}, 0, outcomeStale)
	// A full state at the same version but without a gap repairs it.
	if !d.applyFull(&originState{Origin: "p", Version: version{10, 4}, Nodes: []string{"b", "c", "d"}}, 0) {
		t.Fatal("gap-free full state at the same version not taken")
	}
	if d.others["p"].gap || !slices.Equal(setOf(d, "p"), []string{"b", "c", "d"}) {
		t.Fatalf("after repair: %v gap=%v", setOf(d, "p"), d.others["p"].gap)
	}
	// The same version again, or older, or partial: not taken.
	if d.applyFull(&originState{Origin: "p", Version: version{10, 4}, Nodes: []string{"q"}}, 0) ||
		d.applyFull(&originState{Origin: "p", Version: version{10, 2}, Nodes: []string{"q"}}, 0) {
		t.Fatal("stale full state taken")
	}
	// A new incarnation replaces everything, even at a lower counter.
	step(delta{Origin: "p", Inc: 11, Prev: 0, Cur: 1, Added: []string{"new"}}, 0, outcomeApplied)
	if !slices.Equal(setOf(d, "p"), []string{"new"}) {
		t.Fatalf("after restart: %v", setOf(d, "p"))
	}
	step(delta{Origin: "p", Inc: 10, Prev: 4, Cur: 5, Added: []string{"old"}}, 0, outcomeStale)
	// Data older than the incarnation the member's meta names is stale.
	step(delta{Origin: "q", Inc: 5, Prev: 0, Cur: 1, Added: []string{"x"}}, 6, outcomeStale)
	if d.applyFull(&originState{Origin: "q", Version: version{5, 1}, Nodes: []string{"x"}}, 6) {
		t.Fatal("full state from an old incarnation taken")
	}
	// A restart on a host whose clock is behind: the member meta names
	// incarnation 3, lower than the known 11; data of incarnation 3
	// replaces the set, data of 11 no longer applies.
	step(delta{Origin: "p", Inc: 3, Prev: 0, Cur: 1, Added: []string{"behind"}}, 3, outcomeApplied)
	if !slices.Equal(setOf(d, "p"), []string{"behind"}) {
		t.Fatalf("after restart with the clock behind: %v", setOf(d, "p"))
	}
	step(delta{Origin: "p", Inc: 11, Prev: 1, Cur: 2, Added: []string{"old"}}, 3, outcomeStale)
	step(delta{Origin: "p", Inc: 3, Prev: 1, Cur: 2, Added: []string{"z"}}, 3, outcomeApplied)
	// First news of an origin in mid-history is a gap.
	step(delta{Origin: "r", Inc: 1, Prev: 7, Cur: 8, Added: []string{"x"}}, 0, outcomeGap)
}

func TestApplyDeltaLimit(t *testing.T) {
	d := newDirectory("me", 1)
	d.others["p"] = &originSet{ver: version{1, 1}, nodes: map[string]struct{}{}}
	for _, n := range nodeNames("n", MaxNodesPerOrigin) {
		d.others["p"].nodes[n] = struct{}{}
	}
	if got := d.applyDelta(&delta{Origin: "p", Inc: 1, Prev: 1, Cur: 2, Added: []string{"one-more"}}, 0); got != outcomeInvalid {
		t.Errorf("delta past MaxNodesPerOrigin: %s", got)
	}
	if got := d.applyDelta(&delta{Origin: "p", Inc: 1, Prev: 1, Cur: 2, Added: []string{"n00000"}, Removed: []string{"n00001"}}, 0); got != outcomeApplied {
		t.Errorf("delta within the limit: %s", got)
	}
}

// TestFlushSplits: deltas fit a gossip packet, counters chain, and a
// batch too big for deltas is left to push/pull.
func TestFlushSplits(t *testing.T) {
	const maxMsg = 1400 - 2 - 45 - 2 - 1
	d := newDirectory("proxy-with-a-long-name-for-the-worst-case", 7)
	// Names that share little, so front coding saves little.
	long := func(n int) []string {
		out := nodeNames("", n)
		for i := range out {
			out[i] += strings.Repeat("z", 58)
		}
		return out
	}
	for _, n := range long(300) {
		d.add(n)
	}
	msgs, jumped := d.flush(maxMsg)
	if jumped || len(msgs) < 2 {
		t.Fatalf("%d messages, jumped=%v", len(msgs), jumped)
	}
	peer := newDirectory("peer", 1)
	for i, m := range msgs {
		if len(m) > maxMsg {
			t.Errorf("message %d is %d bytes, more than %d", i, len(m), maxMsg)
		}
		dm, err := decodeDelta(m)
		if err != nil {
			t.Fatal(err)
		}
		if dm.Prev != uint64(i) || dm.Cur != uint64(i+1) {
			t.Errorf("message %d: counters %d -> %d", i, dm.Prev, dm.Cur)
		}
		if got := peer.applyDelta(dm, 0); got != outcomeApplied {
			t.Errorf("message %d: %s", i, got)
		}
	}
	t.Logf("300 names of 63 bytes: %d deltas", len(msgs))
	if len(peer.others[d.self].nodes) != 300 {
		t.Errorf("peer has %d nodes", len(peer.others[d.self].nodes))
	}
	if d.own.ver.Ctr != uint64(len(msgs)) {
		t.Errorf("own counter %d", d.own.ver.Ctr)
	}

	// Removes and adds in one batch.
	for _, n := range long(300)[:10] {
		d.remove(n)
	}
	d.add("fresh")
	msgs, _ = d.flush(maxMsg)
	if len(msgs) != 1 {
		t.Fatalf("%d messages for 11 changes", len(msgs))
	}

	// 5,000 changes at once: more than maxDeltaParts messages.
	before := d.own.ver.Ctr
	for _, n := range long(5000) {
		d.add(n)
	}
	msgs, jumped = d.flush(maxMsg)
	if !jumped || len(msgs) != 0 || d.own.ver.Ctr != before+1 {
		t.Fatalf("big batch: %d messages, jumped=%v, counter %d -> %d", len(msgs), jumped, before, d.own.ver.Ctr)
	}
	// The peer sees a gap at the next delta and repairs from full state.
	d.add("after")
	msgs, _ = d.flush(maxMsg)
	dm, _ := decodeDelta(msgs[0])
	if got := peer.applyDelta(dm, 0); got != outcomeGap {
		t.Errorf("delta after the jump: %s, want gap", got)
	}
	fs, _ := d.fullState(func(string, *originSet) bool { return true })
	full, err := decodeFullState(fs)
	if err != nil {
		t.Fatal(err)
	}
	if !peer.applyFull(&full.Origins[0], 0) || peer.others[d.self].gap || len(peer.others[d.self].nodes) != len(d.own.nodes) {
		t.Errorf("full state did not repair the gap")
	}
}

func TestFullStateOrderAndFilter(t *testing.T) {
	d := newDirectory("me", 1)
	d.add("mine")
	for _, o := range []string{"zed", "bob", "dead"} {
		d.others[o] = &originSet{ver: version{1, 1}, nodes: map[string]struct{}{"n-" + o: {}}}
	}
	fs, left := d.fullState(func(o string, _ *originSet) bool { return o != "dead" })
	if len(left) != 0 {
		t.Errorf("left out %v", left)
	}
	got, err := decodeFullState(fs)
	if err != nil {
		t.Fatal(err)
	}
	var origins []string
	for _, o := range got.Origins {
		origins = append(origins, o.Origin)
	}
	if !slices.Equal(origins, []string{"me", "bob", "zed"}) {
		t.Errorf("origins %v, want [me bob zed]: own first, dead left out", origins)
	}
}
