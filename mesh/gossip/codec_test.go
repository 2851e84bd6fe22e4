package gossip

import (
	"bytes"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
	dto "github.com/prometheus/client_model/go"
)

func sampleMeta() Meta {
	return Meta{
		ID: "proxy-eu-1", Region: "eu-west", Lat: 53.35, Lon: -6.26, HasCoords: true,
		PublicAddr: "proxy-eu-1.example.com:443", PeerAddr: "10.0.0.1:3026",
		Version: "v1.2.3", State: StateDraining, Load: 17, Tunnels: 10_000,
	}
}

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{sampleMeta(), {ID: "a", State: StateActive}} {
		b, err := encodeMeta(m, 1234)
		if err != nil {
			t.Fatal(err)
		}
		got, inc, err := decodeMeta(b)
		if err != nil {
			t.Fatal(err)
		}
		if got != m || inc != 1234 {
			t.Errorf("round trip: got %+v inc %d, want %+v inc 1234", got, inc, m)
		}
		t.Logf("meta %s: %d bytes", m.ID, len(b))
	}
	// A newer version may append fields: they are skipped.
	b, _ := encodeMeta(sampleMeta(), 1)
	b[0] = 2
	if _, _, err := decodeMeta(append(b, 9, 9, 9)); err != nil {
		t.Errorf("meta v2 with extra fields: %v", err)
	}
	b[0] = 1
	if _, _, err := decodeMeta(append(b, 9)); err == nil {
		t.Error("meta v1 with trailing bytes: no error")
	}
	if _, _, err := decodeMeta(b[:len(b)-1]); err == nil {
		t.Error("truncated meta: no error")
	}
}

func TestDeltaRoundTrip(t *testing.T) {
	d := &delta{Origin: "p1", Inc: 99, Prev: 4, Cur: 5, Added: []string{"n1", "n10", "n2"}, Removed: []string{"m"}}
	got, err := decodeDelta(encodeDelta(d))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, d) {
		t.Errorf("got %+v, want %+v", got, d)
	}
	for name, bad := range map[string]*delta{
		"unsorted":          {Origin: "p", Inc: 1, Prev: 0, Cur: 1, Added: []string{"b", "a"}},
		"both":              {Origin: "p", Inc: 1, Prev: 0, Cur: 1, Added: []string{"a"}, Removed: []string{"a"}},
		"counter backwards": {Origin: "p", Inc: 1, Prev: 3, Cur: 3, Added: []string{"a"}},
		"empty":             {Origin: "p", Inc: 1, Prev: 0, Cur: 1},
		"bad name":          {Origin: "p", Inc: 1, Prev: 0, Cur: 1, Added: []string{"a b"}},
		"bad origin":        {Origin: "-p", Inc: 1, Prev: 0, Cur: 1, Added: []string{"a"}},
	} {
		if _, err := decodeDelta(encodeDelta(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFullStateRoundTrip(t *testing.T) {
	fs := &fullState{Origins: []originState{
		{Origin: "self", Version: version{7, 3}, Nodes: []string{"a", "ab", "abc", "b"}},
		{Origin: "other", Version: version{8, 0}, Partial: true, Nodes: []string{}},
	}}
	var secs [][]byte
	for i := range fs.Origins {
		secs = append(secs, appendOrigin(nil, &fs.Origins[i]))
	}
	got, err := decodeFullState(encodeFullState(secs))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, fs) {
		t.Errorf("got %+v, want %+v", got, fs)
	}
	dup := encodeFullState([][]byte{secs[0], secs[0]})
	if _, err := decodeFullState(dup); err == nil {
		t.Error("origin twice: no error")
	}
}

// TestLengthFieldsBounded: a count on the wire never sizes an allocation
// beyond what the message could hold.
func TestLengthFieldsBounded(t *testing.T) {
	var w writer
	w.byte(msgFullState)
	w.byte(wireVersion)
	w.uvarint(1)
	w.str("p")
	w.u64(1)
	w.uvarint(1)
	w.byte(0)
	w.uvarint(MaxNodesPerOrigin) // claims 100,000 names, carries none
	allocs := testing.AllocsPerRun(10, func() { decodeFullState(w.b) })
	if _, err := decodeFullState(w.b); err == nil {
		t.Error("no error")
	}
	if allocs > 10 {
		t.Errorf("%v allocations", allocs)
	}
}

func TestUnknownMessageIgnored(t *testing.T) {
	c := &Cluster{log: slog.New(slog.DiscardHandler), dir: newDirectory("me", 1), members: map[string]*memberRec{}, refused: map[string]bool{}}
	c.queue = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 1 }, RetransmitMult: 1}
	c.changed = make(chan struct{}, 1)
	var err error
	c.metrics, err = newMetrics(nil, func() float64 { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	d := &delegate{c}
	d.NotifyMsg([]byte{99, 1, 2, 3})
	d.NotifyMsg(nil)
	d.MergeRemoteState([]byte{99, 1}, false)
	d.NotifyMsg(encodeFullState(nil)) // full states only travel by push/pull
	d.NotifyMsg([]byte{msgDelta, 1, 0xff})
	// A newer version of a delta with a field appended is applied.
	b := encodeDelta(&delta{Origin: "p", Inc: 1, Prev: 0, Cur: 1, Added: []string{"n"}})
	b[1] = 2
	d.NotifyMsg(append(b, 0xaa, 0xbb))
	for _, tc := range []struct {
		typ, outcome string
		want         float64
	}{
		{typeUnknown, outcomeIgnored, 3},
		{typeFullState, outcomeIgnored, 1},
		{typeDelta, outcomeInvalid, 1},
		{typeDelta, outcomeApplied, 1},
	} {
		if got := counterValue(t, c, tc.typ, tc.outcome); got != tc.want {
			t.Errorf("messages{%s,%s} = %v, want %v", tc.typ, tc.outcome, got, tc.want)
		}
	}
	if got := c.dir.others["p"]; got == nil || len(got.nodes) != 1 {
		t.Errorf("v2 delta not applied: %+v", got)
	}
	if c.queue.NumQueued() != 1 {
		t.Errorf("applied delta not relayed: %d queued", c.queue.NumQueued())
	}
}

func counterValue(t *testing.T, c *Cluster, typ, outcome string) float64 {
	t.Helper()
	m := c.metrics.messages.WithLabelValues(typ, outcome)
	pb := &dto.Metric{}
	if err := m.Write(pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetCounter().GetValue()
}

func TestLogWriter(t *testing.T) {
	var buf bytes.Buffer
	w := logWriter{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	w.Write([]byte("[WARN] memberlist: something odd\n"))
	w.Write([]byte("[ERR] memberlist: broken\n"))
	w.Write([]byte("[DEBUG] memberlist: chatter\n"))
	out := buf.String()
	for _, want := range []string{`level=WARN msg="something odd"`, `level=ERROR msg=broken`, `level=DEBUG msg=chatter`} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
}

// Fuzz targets: every decoder of bytes from the network. Each must not
// panic, and what it accepts must survive a re-encode unchanged.

func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{sampleMeta(), {ID: "a", State: StateActive}} {
		b, _ := encodeMeta(m, 42)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, inc, err := decodeMeta(b)
		if err != nil {
			return
		}
		b2, err := encodeMeta(m, inc)
		if err != nil {
			t.Fatalf("decoded meta does not encode: %v (%+v)", err, m)
		}
		m2, inc2, err := decodeMeta(b2)
		if err != nil || m2 != m || inc2 != inc {
			t.Fatalf("re-decode: %+v %d %v, want %+v %d", m2, inc2, err, m, inc)
		}
	})
}

func FuzzDecodeDelta(f *testing.F) {
	f.Add(encodeDelta(&delta{Origin: "p1", Inc: 99, Prev: 4, Cur: 5, Added: []string{"n1", "n10", "n2"}, Removed: []string{"m"}}))
	f.Add(encodeDelta(&delta{Origin: "p", Inc: 1, Prev: 0, Cur: 1, Removed: []string{"x"}}))
	f.Add([]byte{msgDelta, 1})
	f.Add([]byte{msgDelta, 1, 1, 'p', 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeDelta(b)
		if err != nil {
			return
		}
		d2, err := decodeDelta(encodeDelta(d))
		if err != nil || !reflect.DeepEqual(d, d2) {
			t.Fatalf("re-decode: %+v %v, want %+v", d2, err, d)
		}
		// Applying it never panics either.
		dir := newDirectory("me", 1)
		dir.applyDelta(d, 0)
		dir.applyDelta(d, 0)
	})
}

func FuzzDecodeFullState(f *testing.F) {
	dir := newDirectory("self", 5)
	for _, n := range nodeNames("node-", 50) {
		dir.add(n)
	}
	dir.others["other"] = &originSet{ver: version{3, 9}, nodes: map[string]struct{}{"x": {}, "xy": {}}, gap: true}
	fs, _ := dir.fullState(func(string, *originSet) bool { return true })
	f.Add(fs)
	f.Add(fs[:len(fs)/3])
	f.Add(encodeFullState(nil))
	f.Add([]byte{msgFullState, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := decodeFullState(b)
		if err != nil {
			return
		}
		var secs [][]byte
		for i := range fs.Origins {
			secs = append(secs, appendOrigin(nil, &fs.Origins[i]))
		}
		fs2, err := decodeFullState(encodeFullState(secs))
		if err != nil || len(fs2.Origins) != len(fs.Origins) {
			t.Fatalf("re-decode: %v", err)
		}
		for i := range fs.Origins {
			a, b := fs.Origins[i], fs2.Origins[i]
			if a.Origin != b.Origin || a.Version != b.Version || a.Partial != b.Partial || !slices.Equal(a.Nodes, b.Nodes) {
				t.Fatalf("origin %d: %+v, want %+v", i, b, a)
			}
		}
		dir := newDirectory("me", 1)
		for i := range fs.Origins {
			dir.applyFull(&fs.Origins[i], 0)
		}
	})
}

func FuzzDecodeLeave(f *testing.F) {
	f.Add(encodeLeave(&leaveNotice{Origin: "proxy-1", Inc: 1 << 62}))
	f.Add([]byte{msgLeave, 1, 1, 'p'})
	f.Add([]byte{msgLeave, 2, 1, 'p', 0, 0, 0, 0, 0, 0, 0, 0, 7})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLeave(b)
		if err != nil {
			return
		}
		l2, err := decodeLeave(encodeLeave(l))
		if err != nil || *l2 != *l {
			t.Fatalf("re-decode: %+v %v, want %+v", l2, err, l)
		}
	})
}
