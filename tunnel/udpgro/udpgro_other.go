//go:build !linux

package udpgro

import "net"

// Wrap returns c itself: UDP GRO is Linux's.
func Wrap(c *net.UDPConn) (pc net.PacketConn, enabled bool) { return c, false }
