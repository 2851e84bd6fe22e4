// Package gossip is Jumpgate's proxy membership: a wrapper over
// hashicorp/memberlist that gives each proxy the list of the others with
// their metadata (Meta), their health as this proxy sees it, the RTT of
// its probes to them, and the tunnel directory: which proxy holds reverse
// tunnels to which nodes.
//
// # Membership
//
// memberlist does the work: SWIM probes over UDP (with indirect and TCP
// fallback probes), suspicion and refutation, gossip of alive, suspect
// and dead messages, and a periodic push/pull of full state over TCP with
// one random peer. All of it is encrypted with the keyring in
// Config.Keys; a proxy without a key of the keyring cannot join (its
// push/pull does not decrypt), and New refuses to start without keys.
// DefaultTiming (config.go) explains the timings: a killed proxy is
// marked dead everywhere in about 2 s (under 3 s), against memberlist's
// 44 s for WAN.
//
// Each proxy's memberlist node name is its ID; its node meta is its Meta
// plus its directory incarnation. A member whose meta does not decode, or
// names another ID than its node name, is refused (memberlist's
// AliveDelegate), logged once at Warn with its address and counted as
// jumpgate_gossip_messages_received_total{type="meta",outcome="invalid"}.
//
// Health is memberlist's view for dead, left when the proxy sent a leave
// notice first (see below), and this proxy's own for suspect: memberlist does not expose its suspect state without a data
// race (Members returns pointers into state it mutates under its lock),
// so a member memberlist counts alive is suspect here when this proxy has
// had no direct probe ack from it within ProbeTimeout for two probe
// rounds. Suspect members' tunnels still count.
//
// # Tunnel directory
//
// Each proxy owns the set of nodes it holds tunnels to (AddTunnel,
// RemoveTunnel). The set is soft state: it lives in memory, is gossiped,
// and dies with the process. Every change moves the set to a new version
// (incarnation, counter): the incarnation is the process's start time in
// Unix nanoseconds, also carried in its meta, and the counter starts at 0
// (the empty set) and grows by one per published change. Every proxy
// keeps, per origin proxy, the set at the highest version it has seen.
//
// Changes travel two ways:
//
//   - Deltas, as memberlist broadcasts piggybacked on its gossip packets.
//     Changes made within 50 ms are batched into one delta; a batch is cut
//     into deltas that each fit one packet (1,350 bytes with memberlist's
//     1,400-byte UDPBufferSize, less packet framing and the largest
//     encryption overhead), each taking the counter one step. A proxy
//     that applies a delta for the first time relays it (memberlist only
//     retransmits what a proxy queues itself); each proxy sends each
//     delta RetransmitMult·⌈log10(N+1)⌉ times. A delta names for each node
//     whether it is now held, so applying one twice is harmless. A delta
//     whose previous counter is not the receiver's current one is applied
//     anyway and marks the origin's set as having a gap (counted as
//     outcome="gap"); a delta at or below the current counter is stale.
//   - Full state, in memberlist's push/pull (every PushPullInterval with
//     one random peer, and at join): the sender's own set with its
//     version, then its view of every other live proxy's set with its
//     version and a flag if it has a gap. A newcomer learns the whole
//     directory from its join. A set replaces the known one if it is of a
//     newer process or version, or of the same version and fills a gap.
//
// A batch too big for 16 deltas (a proxy taking over a thousand nodes at
// once) is not sent as deltas: the counter moves one step and the proxy
// does a push/pull with every live peer at once (memberlist's Join is
// how to ask for one), which carries the set compactly, once per peer.
//
// A set counts (Holders, Directory) only while its proxy is alive or
// suspect and the set is of the process its meta names. When a proxy
// dies or leaves, its set stops counting at once; it is dropped after
// PushPullInterval (when memberlist too forgets the proxy), so a proxy
// back from a partition within that time counts again without a resync.
// A restarted proxy has a new incarnation: peers drop the old set when
// its new meta arrives, and take only sets of the new incarnation. (The
// meta decides, not the clock: memberlist orders metas by its own
// incarnation, so a restart on a host with a slower clock also works.)
//
// memberlist's own leave message reaches the EventDelegate just like a
// death, so Leave first broadcasts a leave notice; peers that got it mark
// the proxy left rather than dead.
//
// # Wire format
//
// All integers are unsigned: uvarint is encoding/binary's varint, u64 is
// 8 bytes big-endian; str is a uvarint length then that many bytes; names
// is a front-coded list of sorted, distinct names:
//
//	names = count uvarint, then per name:
//	        shared uvarint (length of the prefix shared with the previous name)
//	        rest uvarint (≥ 1), rest bytes
//
// Node meta (memberlist alive messages, ≤ 512 bytes; 105 bytes for a
// typical proxy):
//
//	version=1 byte | id str | region str | flags byte (bit 0: coordinates)
//	| [lat u64 | lon u64: float64 bits, if bit 0] | public_addr str
//	| peer_addr str | build_version str | state str | load uvarint
//	| tunnels uvarint | directory_incarnation u64
//
// Directory messages: byte 0 is the type, byte 1 the format version (1).
//
//	type 1, delta (gossip broadcast):
//	    origin str | inc u64 | prev uvarint | cur uvarint (> prev)
//	    | added names | removed names (disjoint; not both empty)
//	type 2, full state (push/pull user state only; the sender's set first):
//	    count uvarint, then per origin:
//	    origin str | inc u64 | counter uvarint | flags byte (bit 0: gap) | nodes names
//	type 3, leave notice (gossip broadcast):
//	    origin str | inc u64
//
// The flow: a proxy starts (New) and joins through a seed with a push/pull
// that carries member lists and full states both ways; from then on
// memberlist probes, gossips deltas and leave notices with its own
// messages, and does a periodic push/pull with full states.
//
// Versions: a newer format version of a known type only appends fields,
// so it is read as version 1 with the rest ignored (version 1 itself
// must have no trailing bytes); an incompatible change takes a new type.
// A message of a type this version does not know is ignored and counted
// (type="unknown", outcome="ignored"), not an error. The meta follows the
// same rule with its version byte. memberlist's delegate protocol version
// is 1 (min 1, max 1).
//
// Every name (origin, node) is checked with identity.CheckName (1 to 64
// characters). memberlist does not tell a delegate who sent a message, so
// an invalid one is logged at Warn with the proxy it claims to come from
// and that proxy's gossip address (a delta may have been relayed). The
// decoders never panic (FuzzDecodeMeta, FuzzDecodeDelta,
// FuzzDecodeFullState, FuzzDecodeLeave) and never size an allocation by a
// count alone: a list of n names must have at least 3n bytes left.
//
// # Bounds, at 10,000 nodes a proxy
//
// Limits: 64 bytes a name; MaxNodesPerOrigin (100,000) nodes a proxy
// (AddTunnel refuses more, a peer's delta that would exceed it is
// invalid); 1,024 origins; a full state at most 1,000,000 entries and 16
// MiB (memberlist accepts 20 MiB for a whole push/pull) — a sender leaves
// out other proxies' sets past that, its own always fits; 512 queued
// broadcasts (about 690 KB; past it the most-sent are dropped and
// push/pull repairs the gaps).
//
// An entry costs 2 bytes plus the part of its name not shared with the
// previous one, measured (TestTenThousandNodes): 3.1 B/node for names
// like node-00042, 30 B/node for EC2 host names (ip-10-1-2-3.eu-west-1.
// compute.internal: the common suffix repeats), 66 B/node at worst (random
// 64-character names). memberlist compresses push/pull streams with LZW:
// the 10,000 EC2 names take 300 KB raw and 19 KB compressed; the
// node-NNNNN ones 31 KB and 2.4 KB.
//
// Push/pull: each proxy starts one every 30 s and answers about one, so
// it sends and receives about two full states per 30 s. With P proxies
// of 10,000 EC2-named nodes a full state is P × 300 KB raw, P × ~19 KB
// compressed: at P = 10, 3 MB to encode and ~190 KB on the wire each, so
// ~13 KB/s per proxy on the wire (~200 KB/s through the encoder). At
// the worst-case names (LZW gains little) it is 6.6 MB a full state and
// ~440 KB/s per proxy; the 16 MiB cap holds it to about 25 such proxies.
// memberlist stretches the push/pull interval above 32 members.
//
// Deltas: a delta is about 25 bytes of header plus 5 to 66 bytes a
// change. At 1% of nodes reconnecting per minute (1.7 changes/s a
// proxy), 10 proxies make 17 deltas/s of ~55 bytes; each proxy sends each
// 8 times: ~7.5 KB/s a proxy, riding on gossip packets. When a proxy
// dies and its 10,000 nodes re-home onto the others within ~10 s, the
// deltas total ~300 KB, sent 8 times by each proxy: ~240 KB/s a proxy
// for those seconds. Probes cost under 1 KB/s a proxy whatever the load.
//
// Memory: about 100 bytes an entry (map slot, string header, name), so 10
// proxies × 10,000 nodes take ~10 MB on every proxy.
//
// # Concurrency
//
// memberlist calls the delegates (delegate.go) from its goroutines, some
// with its node lock held; they take only Cluster.mu, which is never held
// while calling into memberlist. The Cluster's own goroutines are the
// batch-and-maintenance loop, the OnChange notifier, the full-sync loop
// and, until it succeeds, the join loop; Shutdown stops memberlist and
// waits for all of them.
package gossip
