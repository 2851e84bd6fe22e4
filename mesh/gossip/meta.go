package gossip

import (
	"errors"
	"fmt"
	"math"
	"net"

	"github.com/hashicorp/memberlist"

	"jumpgate.dev/jumpgate/auth/identity"
)

// State is a proxy's own say on whether it takes new work.
type State string

const (
	// StateActive: the proxy takes new users, tunnels and dials.
	StateActive State = "active"
	// StateDraining: the proxy is on its way out; send new work elsewhere.
	StateDraining State = "draining"
)

// Meta is what each proxy gossips about itself: memberlist's node meta.
// Encoded (see doc.go) it must fit memberlist's MetaMaxSize (512 bytes);
// New and SetMeta fail with an error saying which field to shorten.
type Meta struct {
	ID         string  // proxy id; equals the memberlist node name
	Region     string  // empty, or a name as identity.CheckName accepts
	Lat, Lon   float64 // degrees; 0,0 with HasCoords=false when unknown
	HasCoords  bool
	PublicAddr string // host:port clients and agents use
	PeerAddr   string // host:port of the proxy-to-proxy QUIC listener (mesh/peer)
	Version    string // build version
	State      State
	Load       uint32 // e.g. active sessions
	// Tunnels counts the nodes whose tunnels the proxy holds. The Cluster
	// keeps it from AddTunnel and RemoveTunnel (SetMeta ignores it); peers
	// see it refreshed at most every 10 probe intervals (4 s by default),
	// so that tunnel churn does not turn into a stream of alive
	// broadcasts. Self() has the current count.
	Tunnels uint32
}

// Limits of the meta fields. With them the largest meta is
// 1+65+65+1+16+256+256+... > 512, so encodeMeta also checks the total.
const (
	maxAddrLen    = 255
	maxVersionLen = 128
	maxStateLen   = 32
	metaVersion   = 1
	flagHasCoords = 1 << 0
)

// checkMeta validates the fields of m that come from the network as well
// as from this proxy. States other than active and draining pass (a newer
// proxy may know more); New and SetMeta check the local state separately.
func checkMeta(m *Meta) error {
	if err := identity.CheckName(m.ID); err != nil {
		return fmt.Errorf("ID: %w", err)
	}
	if m.Region != "" {
		if err := identity.CheckName(m.Region); err != nil {
			return fmt.Errorf("Region: %w", err)
		}
	}
	if m.HasCoords {
		if math.IsNaN(m.Lat) || m.Lat < -90 || m.Lat > 90 {
			return fmt.Errorf("Lat %v: want degrees in [-90, 90]", m.Lat)
		}
		if math.IsNaN(m.Lon) || m.Lon < -180 || m.Lon > 180 {
			return fmt.Errorf("Lon %v: want degrees in [-180, 180]", m.Lon)
		}
	} else if m.Lat != 0 || m.Lon != 0 {
		return errors.New("Lat/Lon set but HasCoords is false: set HasCoords, or leave both 0")
	}
	for _, f := range []struct{ name, v string }{{"PublicAddr", m.PublicAddr}, {"PeerAddr", m.PeerAddr}} {
		if f.v == "" {
			continue
		}
		if len(f.v) > maxAddrLen || !printable(f.v) {
			return fmt.Errorf("%s %.40q: want host:port of at most %d printable characters", f.name, f.v, maxAddrLen)
		}
		if _, _, err := net.SplitHostPort(f.v); err != nil {
			return fmt.Errorf("%s %q: want host:port: %w", f.name, f.v, err)
		}
	}
	if len(m.Version) > maxVersionLen || !printable(m.Version) {
		return fmt.Errorf("Version %.40q: want at most %d printable characters", m.Version, maxVersionLen)
	}
	if m.State == "" || len(m.State) > maxStateLen || !token(string(m.State)) {
		return fmt.Errorf("State %.40q: want a word of at most %d characters a-z, '_' or '-'", m.State, maxStateLen)
	}
	return nil
}

// checkLocalMeta adds the checks that only apply to this proxy's own meta.
func checkLocalMeta(m *Meta) error {
	if err := checkMeta(m); err != nil {
		return err
	}
	if m.State != StateActive && m.State != StateDraining {
		return fmt.Errorf("State %q: want %q or %q", m.State, StateActive, StateDraining)
	}
	return nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func token(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// encodeMeta encodes m and the directory incarnation dirInc (see doc.go,
// "Node meta"). It fails if m is invalid or the result is larger than
// memberlist.MetaMaxSize.
func encodeMeta(m Meta, dirInc uint64) ([]byte, error) {
	if err := checkMeta(&m); err != nil {
		return nil, fmt.Errorf("gossip meta of proxy %q: %w", m.ID, err)
	}
	var w writer
	w.byte(metaVersion)
	w.str(m.ID)
	w.str(m.Region)
	var flags byte
	if m.HasCoords {
		flags |= flagHasCoords
	}
	w.byte(flags)
	if m.HasCoords {
		w.u64(math.Float64bits(m.Lat))
		w.u64(math.Float64bits(m.Lon))
	}
	w.str(m.PublicAddr)
	w.str(m.PeerAddr)
	w.str(m.Version)
	w.str(string(m.State))
	w.uvarint(uint64(m.Load))
	w.uvarint(uint64(m.Tunnels))
	w.u64(dirInc)
	if len(w.b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("gossip meta of proxy %q is %d bytes, more than memberlist's limit of %d: shorten PublicAddr, PeerAddr or Version",
			m.ID, len(w.b), memberlist.MetaMaxSize)
	}
	return w.b, nil
}

// decodeMeta decodes node meta from the network. It never panics and
// allocates at most about len(b).
func decodeMeta(b []byte) (m Meta, dirInc uint64, err error) {
	if len(b) > memberlist.MetaMaxSize {
		return Meta{}, 0, fmt.Errorf("meta is %d bytes, more than %d", len(b), memberlist.MetaMaxSize)
	}
	r := reader{b: b}
	v := r.byte()
	if r.err == nil && v < metaVersion {
		return Meta{}, 0, fmt.Errorf("meta version %d is not supported", v)
	}
	m.ID = r.str(identityMaxLen)
	m.Region = r.str(identityMaxLen)
	flags := r.byte()
	if flags&flagHasCoords != 0 {
		m.HasCoords = true
		m.Lat = math.Float64frombits(r.u64())
		m.Lon = math.Float64frombits(r.u64())
	}
	m.PublicAddr = r.str(maxAddrLen)
	m.PeerAddr = r.str(maxAddrLen)
	m.Version = r.str(maxVersionLen)
	m.State = State(r.str(maxStateLen))
	load := r.uvarint()
	tunnels := r.uvarint()
	dirInc = r.u64()
	if r.err != nil {
		return Meta{}, 0, fmt.Errorf("decode meta: %w", r.err)
	}
	if load > math.MaxUint32 || tunnels > math.MaxUint32 {
		return Meta{}, 0, errors.New("decode meta: Load or Tunnels out of range")
	}
	m.Load, m.Tunnels = uint32(load), uint32(tunnels)
	// A newer version may append fields; version 1 has nothing after.
	if v == metaVersion && len(r.b) != 0 {
		return Meta{}, 0, fmt.Errorf("decode meta: %d trailing bytes", len(r.b))
	}
	if err := checkMeta(&m); err != nil {
		return Meta{}, 0, fmt.Errorf("decode meta: %w", err)
	}
	return m, dirInc, nil
}
