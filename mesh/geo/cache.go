package geo

import (
	"sync/atomic"

	"github.com/oschwald/maxminddb-golang/v2"
)

// cacheSlots is the size of a version's record cache. Clients of one proxy
// come from a limited set of places; 4096 recent records cover them at a
// cost of 32 KiB of slots and at most about 400 KiB of entries.
const (
	cacheBits  = 12
	cacheSlots = 1 << cacheBits
)

// recordCache remembers decoded records by their offset in the data
// section: all addresses of a network, and all networks of a city, share
// one record, so the same few hundred records answer most lookups. It is
// direct-mapped and lock-free: a slot holds a pointer to an immutable
// entry, replaced whole when another record hashes there. It belongs to
// one version of the file (offsets mean nothing in another).
type recordCache struct {
	slots [cacheSlots]atomic.Pointer[cacheEntry]
}

type cacheEntry struct {
	offset uintptr
	loc    Location
	ok     bool
}

// get returns the location of the record res found, decoding it on a
// cache miss. A record that does not decode is a miss and is not cached.
func (c *recordCache) get(res maxminddb.Result) (Location, bool) {
	off := res.Offset()
	slot := &c.slots[(uint64(off)*0x9E3779B97F4A7C15)>>(64-cacheBits)] // Fibonacci hashing
	if e := slot.Load(); e != nil && e.offset == off {
		return e.loc, e.ok
	}
	var rec record
	if err := res.Decode(&rec); err != nil {
		return Location{}, false
	}
	e := &cacheEntry{offset: off}
	e.loc, e.ok = rec.location()
	slot.Store(e)
	return e.loc, e.ok
}
