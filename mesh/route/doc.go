// Package route decides where a dial goes and which proxy is nearest. It is
// pure: it takes what the gossip layer and the peer connections know
// (holders of a node's tunnel, each proxy's health, state and measured RTT)
// and returns an ordered plan; it does no I/O and keeps no state, so the same
// inputs always give the same answer and tests need no network.
//
// # Dial plan
//
// A proxy that holds the node's tunnel itself dials it locally: no extra hop.
// Otherwise the holders are tried one after another, best first:
//
//  1. alive before suspect (a suspect proxy may be dead; dead and left
//     proxies are never tried),
//  2. active before draining (a draining proxy still serves, but is leaving),
//  3. lower measured RTT first; a holder with no measurement yet comes after
//     the measured ones,
//  4. then by id, so that the order is stable.
//
// TryPlan tries the hops in order, the next when one fails, giving each but
// the last at most DefaultHopTimeout: a holder that died but is not yet
// known dead costs a few seconds of one dial, not a failed session.
//
// # Discovery
//
// Rank orders the proxies a client should use (GET /v1/discover): dead
// ones out, draining ones last, alive before suspect, then nearest first by
// great-circle distance from the client's GeoIP location in bands of
// BandKm (within a band the less loaded first), or, without a location,
// the proxy the client reached and then its RTT to the others. Each entry
// says why it is where it is.
//
// ChooseHome is the client's side: from RTTs it measured it keeps its home
// proxy unless another is clearly better (more than SwitchMinGain faster
// and a third faster), so jittery links do not make it flap.
//
// # Distance
//
// Distance is the great-circle (haversine) distance between two points on a
// sphere of the Earth's mean radius; GeoIP ranking and agents choosing their
// nearest proxies build on it.
package route
