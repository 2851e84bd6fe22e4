// Package meshtest runs a mesh of proxies in one test process, across an
// emulated WAN on loopback, for the tests and benchmarks of mesh/.
//
// # WAN
//
// A WAN (NewWAN; presets ThreeRegions, UniformRegions) gives each region
// a /24 of 127.0.0.0/8, 127.0.(i+1).0/24 for the i-th region (Linux
// routes all of 127/8 to lo with no setup), and a symmetric RTT between
// each two regions. Sockets wrapped by the WAN delay what they send by
// half the RTT between their region and the destination's, judged by
// the destination IP; addresses outside every region (127.0.0.1) have no
// latency:
//
//   - PacketConn (WAN.ListenPacket, WAN.WrapPacketConn) for UDP, and so
//     for QUIC: each datagram leaves after the delay, in order per
//     destination, from a bounded queue (4096 datagrams; a full queue
//     drops and counts, like a router). Blackhole silences it both ways,
//     which is how a proxy is killed. Close drops what is in flight and
//     leaves no goroutine behind.
//   - Conn (WAN.Dial, WAN.WrapConn) for TCP: it emulates the whole path
//     at the end it wraps (the dialing end): the dial takes a round trip,
//     writes leave and reads arrive after the one-way delay each, so the
//     far end needs no wrapping. Close sends what is queued first.
//   - GossipTransport, a gossip.Config.WrapTransport: memberlist's probes
//     and gossip go through a delay line like PacketConn's, its push/pull
//     and TCP probes through Conns.
//
// Each wrapped socket counts what it sends under its local address
// (WAN.TrafficFrom, WAN.TotalTraffic): datagrams, their bytes, drops, and
// stream bytes.
//
// # Mesh
//
// A Mesh (New) holds N proxies (Mesh.Start) on the WAN its Config
// describes (Mesh.WAN), each what cmd/jumpgate runs
// for a proxy minus its clients and tunnels: a gossip.Cluster and a
// peer.Mesh on its own address of its region (gossip on TCP+UDP, peering
// on a wrapped UDP socket, certificates from one authtest CA, one gossip
// key), and a fake tunnel registry in place of tunnel/server (mesh/ may
// not import tunnel/): Proxy.AddTunnel and RemoveTunnel record that the
// proxy holds a reverse tunnel to a Node (Mesh.AddNode: a TCP server on
// 127.0.0.1, Echo by default), and publish it in the gossiped directory.
//
// Proxy.Dial (and Mesh.Dial) does what cmd/jumpgate's proxyMesh.dial
// does: a tunnel held here first; else route.Plan over gossip's Holders
// (health, draining last, RTT), peer.Dial to each holder in turn until
// one answers; it reports the Path taken. A holder answers a peer's dial
// from its registry as proxyMesh.handlePeerDial does.
//
// Lifecycles: Proxy.Kill stops a proxy abruptly (its sockets go silent at
// once, then close: no leave message, no CONNECTION_CLOSE); Proxy.Stop
// leaves gracefully; Proxy.Restart starts it again with the same id and
// address, as a new process (new gossip incarnation, empty registry).
// Proxy.SetDraining gossips the draining state.
//
// Every death memberlist declares is recorded (Mesh.Deaths), with
// whether the proxy was in fact running (Mesh.FalseDeaths). The
// harness hears of them from gossip's "proxy failed" log record.
//
// Waiting: Mesh.WaitConverged, WaitRTTs and WaitHolders poll with a
// deadline, like authtest.WaitFor, and say what is missing when they give
// up; nothing sleeps. Gossip runs with
// gossip.FastTiming unless Config.Timing says otherwise (WAN tests use
// gossip.DefaultTiming).
//
// What is not emulated: bandwidth, loss (other than full queues),
// jitter and reordering; a Node's tunnel has no latency. A burst of
// datagrams due at once arrives at once, so a receiver's socket buffer
// must hold it.
//
// Methods that fail the test (Start, Restart, AddTunnel, SetDraining, the
// Wait methods) must be called from the test's goroutine; Dial, Kill,
// Stop and the accessors may be called from any.
//
// Everything a Mesh starts stops at the end of the test, and New checks
// that no goroutine of the mesh packages, memberlist or quic-go is left
// (LeakMarkers). The proxies' logs are kept in memory and printed if the
// test fails.
//
// Only tests and benchmarks import meshtest.
package meshtest
