package geo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultReloadEvery is how often, by default, the database file is checked
// for a new version. Databases change weekly at most; a check is one stat.
const DefaultReloadEvery = 10 * time.Second

// probeRecords bounds how many records Open and reloads decode while looking
// for one with coordinates (see probe).
const probeRecords = 10_000

// Config configures a DB.
type Config struct {
	// Path is the .mmdb file: MaxMind GeoIP2/GeoLite2 City, DB-IP Lite City
	// (dbip-city-lite.mmdb) or an ip-location-db city file. Required.
	Path string
	// ReloadEvery is how often the file is checked for a new version (a
	// different file, size or modification time). Default
	// DefaultReloadEvery; negative turns reloading off.
	ReloadEvery time.Duration
	// Logger receives reloads and reload failures. Default slog.Default().
	Logger *slog.Logger
	// Metrics, if not nil, is where the jumpgate_geoip_* metrics are
	// registered (a per-instance registry). Close unregisters them.
	Metrics prometheus.Registerer
	// Now is the clock for Info.Loaded. Default time.Now.
	Now func() time.Time
}

func (c *Config) checkAndSetDefaults() error {
	if c.Path == "" {
		return errors.New("geoip config: Path is required")
	}
	if c.ReloadEvery == 0 {
		c.ReloadEvery = DefaultReloadEvery
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Location is where a database places an address.
type Location struct {
	Lat, Lon  float64 // degrees; always a valid point
	City      string  // English name; "" when the database knows only the country
	Country   string  // ISO 3166-1 alpha-2 code, e.g. "JP"; "" if unknown
	Continent string  // AF, AN, AS, EU, NA, OC or SA; "" if unknown
}

// Info describes the database in service.
type Info struct {
	Path   string
	Type   string    // metadata database_type, e.g. "GeoLite2-City", "DBIP-City-Lite"
	Layout string    // LayoutGeoIP2 or LayoutFlat
	Built  time.Time // metadata build_epoch
	Loaded time.Time // when this version was read
	Err    string    // why the last reload failed; "" once a reload succeeds
}

// DB answers GeoIP lookups from an .mmdb file, and swaps in a new version of
// the file when it changes on disk. Its methods are safe for concurrent use;
// Lookup never waits for a reload.
type DB struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	cur atomic.Pointer[version] // nil after Close

	mu      sync.Mutex // guards following
	lastErr string

	// seen is the state of the file last read (or attempted), gone whether
	// it was missing at the last check. The reload goroutine owns both
	// once Open has started it.
	seen os.FileInfo
	gone bool

	stop      context.CancelFunc
	done      chan struct{} // closed when the reload goroutine ends
	closeOnce sync.Once
}

// version is one loaded file. Its data never changes (a reload builds a new
// version); only its record cache fills.
type version struct {
	reader *maxminddb.Reader
	info   Info // Err unused
	cache  recordCache
}

// Open reads the database at cfg.Path and, unless cfg.ReloadEvery is
// negative, starts watching it for new versions. A missing, empty or
// unreadable file, or one without coordinates (a Country or ASN database),
// is an error that says what to do; callers then rank by latency alone.
func Open(cfg Config) (*DB, error) {
	if err := cfg.checkAndSetDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	db := &DB{cfg: cfg, log: cfg.Logger, m: m, stop: func() {}, done: make(chan struct{})}
	var v *version
	var fi os.FileInfo
	// A file rewritten in place while we read it is read again: twice more
	// is enough for a copy to finish, or to show that something keeps
	// writing it.
	for range 3 {
		if v, fi, err = db.load(); !errors.Is(err, errChanged) {
			break
		}
	}
	if err != nil {
		m.unregister()
		return nil, err
	}
	db.install(v)
	db.seen = fi
	db.logLoaded("geoip database loaded", v)
	if cfg.ReloadEvery > 0 {
		ctx, stop := context.WithCancel(context.Background())
		db.stop = stop
		go db.reloadLoop(ctx)
	} else {
		close(db.done)
	}
	return db, nil
}

// Lookup returns where ip is. ok is false when the database has no record
// for ip, or a record without coordinates (and after Close). IPv4-mapped
// IPv6 addresses are looked up as IPv4; an IPv6 address misses in an
// IPv4-only file.
func (db *DB) Lookup(ip netip.Addr) (loc Location, ok bool) {
	if v := db.cur.Load(); v != nil && ip.IsValid() {
		// Found is false when ip is not in the database, and on an error
		// (a corrupt tree), which counts as a miss too.
		if res := v.reader.Lookup(ip.Unmap()); res.Found() {
			loc, ok = v.cache.get(res)
		}
	}
	if ok {
		db.m.hits.Inc()
	} else {
		db.m.misses.Inc()
	}
	return loc, ok
}

// Info describes the database in service and the last reload error.
func (db *DB) Info() Info {
	info := Info{Path: db.cfg.Path}
	if v := db.cur.Load(); v != nil {
		info = v.info
	}
	db.mu.Lock()
	info.Err = db.lastErr
	db.mu.Unlock()
	return info
}

// Close stops watching the file, drops the database (later lookups miss)
// and unregisters the metrics. It always returns nil.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.stop()
		<-db.done
		// The reader is not closed: lookups may still be using it. It holds
		// only memory, which the collector frees once they are done.
		db.cur.Store(nil)
		db.m.unregister()
	})
	return nil
}

func (db *DB) install(v *version) {
	db.cur.Store(v)
	db.m.built.Set(float64(v.info.Built.Unix()))
	db.setErr("")
}

func (db *DB) setErr(msg string) {
	db.mu.Lock()
	db.lastErr = msg
	db.mu.Unlock()
}

func (db *DB) logLoaded(msg string, v *version) {
	db.log.Info(msg, "path", v.info.Path, "type", v.info.Type, "layout", v.info.Layout,
		"built", v.info.Built.UTC().Format(time.RFC3339))
	if v.reader.Metadata.IPVersion == 4 {
		db.log.Warn("geoip database covers IPv4 only: IPv6 clients will be ranked by latency alone",
			"path", v.info.Path)
	}
}

func (db *DB) reloadLoop(ctx context.Context) {
	defer close(db.done)
	t := time.NewTicker(db.cfg.ReloadEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			db.check()
		}
	}
}

// check reloads the file if it is not the version last read. A failure
// keeps the database in service; it is logged and counted once per version
// of the file, not at every check.
func (db *DB) check() {
	path := db.cfg.Path
	fi, err := os.Stat(path)
	if err != nil {
		if !db.gone {
			db.gone = true
			db.seen = nil // whatever appears there next is read
			what := "is unreadable"
			if errors.Is(err, fs.ErrNotExist) {
				what = "is gone"
			}
			db.fail(fmt.Errorf("geoip database %s %s (%w): still serving the version loaded before; put the file back to reload it", path, what, err))
		}
		return
	}
	db.gone = false
	if db.seen != nil && sameVersion(db.seen, fi) {
		return
	}
	v, read, err := db.load()
	if errors.Is(err, errChanged) {
		db.log.Debug("geoip database changed while being read; reading it again at the next check", "path", path)
		return
	}
	if read != nil {
		fi = read // what was read may be newer than what was stat'ed
	}
	db.seen = fi // also when it failed: the same bad file is not retried
	if err != nil {
		db.fail(fmt.Errorf("%w; still serving the version loaded before", err))
		return
	}
	db.install(v)
	db.m.reloadOK.Inc()
	db.logLoaded("geoip database reloaded", v)
}

func (db *DB) fail(err error) {
	db.m.reloadErr.Inc()
	db.setErr(err.Error())
	db.log.Error("geoip database reload failed", "path", db.cfg.Path, "err", err)
}

// sameVersion reports whether a and b, two stats of the database path, show
// the same version of the file: the same file (a rename over it makes a new
// one), size and modification time.
func sameVersion(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// errChanged: the file changed while it was being read (rewritten in place).
var errChanged = errors.New("file changed while being read: write the new version beside it and rename it over the old one")

// load reads the whole file at cfg.Path and opens it. fi is the file's
// state when it was read.
//
// The file is read into memory rather than memory-mapped, for two reasons.
// Lookups do not lock, so when a reload swaps versions nobody knows when
// the last lookup on the old one ends: an mmap could never be safely
// unmapped (munmap under a running lookup is a crash), while a byte slice is
// simply collected. And an operator who copies a new file over the old one
// in place (cp, not mv) truncates it under the mapping, which turns lookups
// into SIGBUS; a private copy cannot be changed under us. The price is the
// file's size in heap (GeoLite2 City is about 60 MB, DB-IP Lite City about
// 130 MB), twice over for the moment of a reload.
func (db *DB) load() (*version, os.FileInfo, error) {
	path := db.cfg.Path
	data, fi, err := readFile(path)
	if err != nil {
		return nil, nil, err
	}
	r, err := maxminddb.OpenBytes(data)
	if err != nil {
		return nil, fi, fmt.Errorf("open geoip database %s: not a valid .mmdb file (%w): replace it with a complete GeoLite2/GeoIP2 City or DB-IP Lite City database", path, err)
	}
	layout, err := probe(r)
	if err != nil {
		return nil, fi, fmt.Errorf("open geoip database %s (type %q): %w", path, r.Metadata.DatabaseType, err)
	}
	return &version{reader: r, info: Info{
		Path:   path,
		Type:   r.Metadata.DatabaseType,
		Layout: layout,
		Built:  r.Metadata.BuildTime(),
		Loaded: db.cfg.Now(),
	}}, fi, nil
}

// readFile reads the file at path. Stat and read go through one open file,
// so a new file renamed over path meanwhile does not mix with the old one;
// a file rewritten in place meanwhile gives errChanged.
func readFile(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("open geoip database %s: %w: put a GeoLite2/GeoIP2 City or DB-IP Lite City .mmdb file there, or configure none to rank proxies by measured latency alone", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open geoip database: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("open geoip database: %w", err)
	case fi.IsDir():
		return nil, fi, fmt.Errorf("open geoip database %s: is a directory: give the path of the .mmdb file", path)
	case fi.Size() == 0:
		return nil, fi, fmt.Errorf("open geoip database %s: file is empty (an interrupted download?): replace it with a complete .mmdb file", path)
	case int64(int(fi.Size())) != fi.Size():
		return nil, fi, fmt.Errorf("open geoip database %s: file too large (%d bytes)", path, fi.Size())
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fi, fmt.Errorf("read geoip database %s: %w", path, errChanged) // truncated while we read
		}
		return nil, fi, fmt.Errorf("read geoip database: %w", err)
	}
	after, err := f.Stat()
	if err != nil {
		return nil, fi, fmt.Errorf("read geoip database: %w", err)
	}
	if !sameVersion(fi, after) {
		return nil, fi, fmt.Errorf("read geoip database %s: %w", path, errChanged)
	}
	return data, fi, nil
}

// probe decodes records in tree order until one has coordinates, and
// returns that record's layout. It fails on a record that does not decode
// (a corrupt file) and when the first probeRecords records have no
// coordinates (a Country or ASN database, or a layout this package does not
// read).
func probe(r *maxminddb.Reader) (string, error) {
	n := 0
	for res := range r.Networks() {
		var rec record
		if err := res.Decode(&rec); err != nil {
			return "", fmt.Errorf("record for %s does not decode (%w): the file is corrupt or not a city database", res.Prefix(), err)
		}
		if l := rec.layout(); l != "" {
			return l, nil
		}
		if n++; n == probeRecords {
			break
		}
	}
	if n == 0 {
		return "", errors.New("the database has no records")
	}
	return "", fmt.Errorf("none of its first %d records has coordinates: use a city database (GeoLite2-City, GeoIP2-City, DB-IP Lite City), not a country or ASN one", n)
}
