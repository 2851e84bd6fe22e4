// Package sshd is the node's SSH server.
//
// It serves SSH on a net.Listener that the tunnel agent provides: the node's
// SSH port never listens on the network itself. Clients are OpenSSH (ssh,
// scp, sftp) or x/crypto/ssh, reaching the node through a proxy.
//
// # Connection flow
//
//  1. The server reads the host signer (Config.HostSigner) for each
//     connection, so a rotated host certificate needs no restart, and
//     gives the client HandshakeTimeout (20 s) to finish the version
//     exchange, key exchange and authentication. Garbage or a stalled
//     client ends only its own connection.
//  2. Authentication is public key only, with a user certificate.
//     Passwords, keyboard-interactive and plain keys are refused. For each
//     offered certificate, in this order:
//     - it is an ssh.UserCert signed by one of Config.UserCAs (read per
//     attempt; the signature is verified before anything in it is read);
//     - it is valid at Config.Now (identity.CheckValidity words the error);
//     - the login (the SSH user name) is one of its principals; a
//     certificate without principals is refused;
//     - its identity.ExtCluster extension is Config.ClusterName;
//     - ssh.CertChecker accepts it (critical options, exact time bounds);
//     - identity.FromSSHCert reads the identity.
//     Once the client has proven it holds the private key,
//     Config.Authorize(identity, login) runs the role check against the
//     node's cached roles and labels, then the OS login is resolved (see
//     below).
//  3. Every refusal is counted (jumpgate_node_auth_failures_total{reason}),
//     logged, written to the audit stream (audit.AuthFailed for
//     certificate problems, audit.SessionDenied for denials) and explained
//     to the user in an SSH banner that says what to do next, for example
//     "jumpgate: certificate expired 2h ago: run jg login".
//  4. The identity travels to the channel handlers as JSON in the
//     connection's ssh.Permissions.Extensions.
//
// # Channels and requests
//
// "session" channels run one program each: a login shell ("shell"), the
// login's shell with -c ("exec"), or SFTP ("subsystem" sftp). Before it
// starts, a session accepts "pty-req" (if the certificate has permit-pty)
// and "env" for LANG, LANGUAGE, LC_*, TERM, COLORTERM and TZ; other
// variables are ignored. While it runs, "window-change" resizes the
// terminal and "signal" is delivered to the process. When the program ends
// the server sends "exit-status" (or "exit-signal" if a signal killed it),
// EOF, and closes the channel. With a PTY the program runs in a new session
// on the terminal; without one it gets pipes, stderr going to the
// channel's extended data. Each session has a random id (16 bytes, in
// hex), set in JUMPGATE_SESSION_ID next to HOME, USER, LOGNAME, SHELL,
// PATH, TERM, JUMPGATE_USER, JUMPGATE_CLUSTER and JUMPGATE_NODE. A
// connection may have 10 sessions open at once, as OpenSSH's MaxSessions.
//
// "direct-tcpip" channels (ssh -L), if the certificate has
// permit-port-forwarding, dial the target from the node with DialTimeout
// and copy bytes both ways. Remote forwarding ("tcpip-forward"), agent and
// X11 forwarding are refused with a failure reply, as is every other global
// request, which is what OpenSSH expects for keepalive@openssh.com.
//
// # User switching
//
// A node running as root runs each session as the login's OS user: uid,
// gid and supplementary groups from the user database, the login shell
// from /etc/passwd (or /bin/sh), the home directory as working directory
// (or / if it does not exist). A node running as any other user accepts
// only its own user name as login, and refuses others at authentication
// with "node runs as user X and cannot log in as Y: run the node as root or
// log in as X". SFTP for the node's own user is served in process by
// github.com/pkg/sftp; SFTP as another user runs a helper program as that
// user (Config.SFTPHelper, a program calling ServeSFTP, or OpenSSH's
// sftp-server), because the node's process cannot drop privileges for one
// session.
//
// # Lifetimes
//
// Every program runs in its own process group. When its channel closes or
// its client disconnects, the group is killed with SIGKILL and waited for.
// Shutdown stops accepting, closes connections without open channels,
// refuses new channels, and waits for sessions to end; when its context
// ends it closes everything as Close does. Every goroutine belongs to a
// connection, a session or a forward, and is waited for.
//
// # Audit and metrics
//
// The server writes audit.SessionStart and audit.SessionEnd (bytes in and
// out, exit code), audit.Exec (the command), audit.SFTP, audit.PortForward
// (the target), and audit.AuthFailed or audit.SessionDenied (the reason).
// With Config.Metrics set it exports jumpgate_node_sessions_active,
// jumpgate_node_sessions_total and jumpgate_node_auth_failures_total with
// reason one of expired, unknown_ca, wrong_cluster, principal, denied and
// other.
package sshd
