// Package servertest helps test reverse tunnels: a throwaway TLS CA that
// issues certificates carrying Jumpgate identities, a goroutine leak check,
// a wait-for-condition helper, a TLS listener that hands tunnels over TCP to
// a server as mesh/ingress does, and a UDP socket that can play a firewall
// blocking UDP. It is for tests only.
package servertest
