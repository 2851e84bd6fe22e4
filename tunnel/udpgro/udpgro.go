// Package udpgro lets quic-go receive with UDP generic receive offload
// (GRO) on Linux.
//
// quic-go sends with GSO: one sendmsg hands the kernel up to 64 KiB of
// QUIC packets, each at most 1,452 bytes. Without GRO the receiving
// socket gets them back one datagram at a time (recvmmsg, 8 per call), and
// on loopback the kernel also splits the sender's GSO buffer packet by
// packet inside the sender's sendmsg. With UDP_GRO set on the receiving
// socket the kernel delivers a GSO buffer, or datagrams of one flow that
// the network driver coalesced, as one buffer with the segment size in a
// control message. Wrap returns a socket whose ReadBatch (the interface
// quic-go v0.65 reads through, sys_conn_oob.go) reads up to four such
// buffers per recvmmsg and hands quic-go their segments: fewer syscalls
// and wakeups per byte on both ends of a tunnel or peer link.
//
// Everything else (sending with GSO, ECN, packet info, deadlines, Close) is
// the *net.UDPConn's own. Where the kernel refuses UDP_GRO, and on systems
// other than Linux, Wrap returns the socket unchanged and quic-go reads as
// it always has.
package udpgro

import "net"

// Listen opens a UDP socket on addr ("host:port", or "" for any address
// and port) and wraps it.
func Listen(addr string) (net.PacketConn, error) {
	var ua *net.UDPAddr
	if addr != "" {
		var err error
		if ua, err = net.ResolveUDPAddr("udp", addr); err != nil {
			return nil, err
		}
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	pc, _ := Wrap(c)
	return pc, nil
}
