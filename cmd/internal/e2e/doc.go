// Package e2e holds Jumpgate's end-to-end tests: they build the real
// binaries, start an auth server, a proxy and nodes as separate processes on
// loopback, and drive them with jg, jgctl and the real OpenSSH ssh, scp and
// sftp through `jg proxy ssh`.
package e2e
