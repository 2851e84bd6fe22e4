// Package authtest holds test helpers shared by every package that needs
// cluster certificates without running an auth server: an in-memory TLS CA
// that issues certificates carrying Jumpgate identities (auth/identity), and
// WaitFor, which polls a condition with a deadline instead of sleeping.
//
// Only tests and *test helper packages import it.
package authtest
