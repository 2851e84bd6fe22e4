// Package servertest helps test reverse tunnels: a throwaway TLS CA that
// issues certificates carrying Jumpgate identities, a goroutine leak check
// and a wait-for-condition helper. It is for tests only.
package servertest
