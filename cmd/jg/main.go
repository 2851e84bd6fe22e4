// Command jg is the Jumpgate user client: log in, list nodes, ssh to them,
// and serve as OpenSSH's ProxyCommand.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

var version = "dev"

// exitError carries a remote exit status out of a command.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	// jg runs one process per session (jg ssh, or jg proxy ssh under
	// OpenSSH), and spends its time waiting for a few bytes. With more than
	// one P, Go hands each wakeup between threads (futex calls, spinning),
	// which doubled jg's CPU per interactive line (about 0.7 ms against
	// 0.3 ms, measured) without making bulk transfers faster: the proxy and
	// the node set the pace. Hundreds of sessions on one jump host add up.
	// $GOMAXPROCS still wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	root := &cobra.Command{Use: "jg", Short: "Jumpgate client", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().BoolVar(&debug, "debug", os.Getenv("JG_DEBUG") != "", "say on stderr which proxy and path each connection took ($JG_DEBUG)")
	root.AddCommand(loginCmd(), lsCmd(), sshCmd(), proxyCmd(), configCmd(), statusCmd(), logoutCmd(), requestCmd(), mfaCmd(), playCmd(),
		&cobra.Command{Use: "version", Short: "Print the version", Run: func(*cobra.Command, []string) { fmt.Println("jg", version) }})
	err := root.Execute()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "jg:", err)
		os.Exit(1)
	}
}

// home is where jg keeps the identity: $JUMPGATE_HOME or ~/.jumpgate.
func home() string {
	if h := os.Getenv("JUMPGATE_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".jumpgate")
	}
	return ".jumpgate"
}

// loadIdentity loads the saved identity and checks it is still valid.
func loadIdentity() (*creds.Identity, error) {
	id, err := creds.Load(home())
	if errors.Is(err, creds.ErrNotLoggedIn) {
		return nil, errors.New("not logged in: run jg login --proxy=HOST:PORT --user=NAME")
	}
	if err != nil {
		return nil, err
	}
	if err := identity.CheckValidity(id.Leaf.NotBefore, id.Leaf.NotAfter, time.Now()); err != nil {
		if len(id.Meta.Requests) > 0 {
			// The access of a request ended: back to the login's roles,
			// if their certificates are still valid.
			if base, berr := creds.Load(baseDir()); berr == nil && identity.CheckValidity(base.Leaf.NotBefore, base.Leaf.NotAfter, time.Now()) == nil {
				if rerr := restoreBase(); rerr == nil {
					fmt.Fprintf(os.Stderr, "jg: the access of request %s has ended: back to roles %s\n", strings.Join(id.Meta.Requests, ", "), strings.Join(base.Meta.Roles, ", "))
					restored, lerr := creds.Load(home())
					if lerr != nil {
						return nil, lerr
					}
					return reassume(restored, id.Meta.Requests), nil
				}
			}
		}
		return nil, err
	}
	return id, nil
}

func loginCmd() *cobra.Command {
	var proxy, userName, pin, ttl string
	var stdin, insecure, sso bool
	c := &cobra.Command{
		Use:   "login",
		Short: "Log in and store short-lived certificates under ~/.jumpgate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if proxy == "" {
				if old, err := creds.Load(home()); err == nil {
					proxy, pin = old.Meta.Proxy, old.Meta.CAPin
				} else {
					return errors.New("--proxy=HOST:PORT is required")
				}
			}
			if sso && userName != "" {
				return errSSOUser
			}
			if userName == "" && !sso {
				return errors.New("--user is required (or --sso to log in through the cluster's SSO provider)")
			}
			var pw string
			switch {
			case sso: // the provider asks for the password, in the browser
			case stdin:
				line, err := bufio.NewReader(os.Stdin).ReadString('\n')
				if err != nil && line == "" {
					return fmt.Errorf("read password from stdin: %w", err)
				}
				pw = strings.TrimRight(line, "\r\n")
			default:
				tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
				if err != nil {
					return errors.New("no terminal to ask for the password: use --password-stdin")
				}
				fmt.Fprintf(tty, "Password for %s: ", userName)
				b, err := term.ReadPassword(int(tty.Fd()))
				fmt.Fprintln(tty)
				tty.Close()
				if err != nil {
					return err
				}
				pw = string(b)
			}
			trust := authapi.TrustConfig{CAPin: pin, Insecure: insecure, Kinds: []identity.Kind{identity.KindProxy}}
			if old, err := creds.Load(home()); err == nil && pin == "" && !insecure {
				trust.RootCAs = old.RootCAs // trust the cluster we already know
				trust.CAPin = old.Meta.CAPin
			}
			k, err := creds.NewKeys()
			if err != nil {
				return err
			}
			// Ask the proxy given for the proxies nearest to us, measure
			// the best few and settle on a home proxy; log in through it.
			loginAddr := proxy
			entry, err := authapi.NewClient(authapi.ClientConfig{Addr: proxy, Trust: trust, LocalAddr: bindAddr()})
			if err != nil {
				return err
			}
			cur, _ := loadHome()
			h, _, herr := chooseHome(cmd.Context(), entry, proxy, cur)
			entry.Close()
			if herr != nil {
				fmt.Fprintf(os.Stderr, "jg: %v: logging in through %s\n", herr, proxy)
			} else {
				loginAddr = h.Addr
			}
			if sso {
				// The browser comes back to the proxy given (the one
				// registered with the provider); the certificates are
				// used through the home proxy like a password login's.
				c, err := ssoLogin(cmd.Context(), proxy, trust, k, ttl)
				if err != nil {
					return err
				}
				return saveLogin(k, c, loginAddr, trust.CAPin, h)
			}
			var more []string
			if loginAddr != proxy {
				more = []string{proxy}
			}
			cl, err := authapi.NewClient(authapi.ClientConfig{Addr: loginAddr, Addrs: more, Trust: trust, LocalAddr: bindAddr()})
			if err != nil {
				return err
			}
			defer cl.Close()
			c, err := cl.Login(cmd.Context(), authapi.LoginRequest{User: userName, Password: pw, SSHPublic: k.SSHPublic(), TLSPublic: k.TLSPublic(), TTL: ttl})
			if err != nil {
				return fmt.Errorf("login: %w", err)
			}
			return saveLogin(k, c, cl.Addr(), trust.CAPin, h)
		},
	}
	c.Flags().StringVar(&proxy, "proxy", "", "proxy address, host:port")
	c.Flags().StringVar(&userName, "user", "", "Jumpgate user name")
	c.Flags().BoolVar(&stdin, "password-stdin", false, "read the password from standard input (for scripts)")
	c.Flags().StringVar(&pin, "ca-pin", "", "cluster CA pin (sha256:...), needed the first time unless the proxy has a publicly trusted certificate")
	c.Flags().BoolVar(&insecure, "insecure", false, "do not verify the proxy's certificate (never in production)")
	c.Flags().StringVar(&ttl, "ttl", "", "ask for a shorter certificate lifetime (e.g. 1h)")
	c.Flags().BoolVar(&sso, "sso", false, "log in through the cluster's SSO (OpenID Connect) provider in a browser")
	return c
}

// saveLogin stores the certificates of a login through proxy used, and
// the home proxy h if that is where the login went.
func saveLogin(k *creds.Keys, c *authapi.Credentials, used, pin string, h *homeState) error {
	os.RemoveAll(baseDir()) // certificates kept from before an access request are stale now
	if err := creds.Save(home(), k, c, creds.Meta{Kind: string(identity.KindUser), Proxy: used, CAPin: pin}); err != nil {
		return err
	}
	if h != nil && used == h.Addr {
		h.Cluster = c.Cluster
		if err := saveHome(h); err != nil {
			return err
		}
		fmt.Printf("Home proxy: %s (%s), RTT %.2f ms: %s.\n", h.ID, orDash(h.Region), h.RTTms, h.Why)
	} else {
		os.Remove(homeFile())
	}
	fmt.Printf("Logged in to cluster %s as %s (roles: %s; logins: %s), valid until %s.\n",
		c.Cluster, c.Name, strings.Join(c.Roles, ", "), strings.Join(c.Logins, ", "), c.Expires.Local().Format("2006-01-02 15:04 MST"))
	if c.RequireMFA {
		fmt.Println("Your roles require a TOTP code for every session: jg ssh asks for one (enroll an authenticator with jg mfa add).")
	}
	return nil
}

func logoutCmd() *cobra.Command {
	return &cobra.Command{Use: "logout", Short: "Remove the stored certificates and keys", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error {
		for _, f := range []string{"key", "key.pub", "key-cert.pub", "tls.key", "tls.crt", "identity.json"} {
			os.Remove(filepath.Join(home(), f))
		}
		fmt.Println("Logged out.")
		return nil
	}}
}

func proxyClient(id *creds.Identity) (*authapi.Client, error) {
	backgroundRecheck(id)
	signer, _ := id.TLS.PrivateKey.(crypto.Signer)
	return authapi.NewClient(authapi.ClientConfig{Addr: id.Meta.Proxy, LocalAddr: bindAddr(), Trust: authapi.TrustConfig{RootCAs: id.RootCAs, Kinds: []identity.Kind{identity.KindProxy}},
		GetClientCertificate: id.GetClientCertificate, CallSigner: signer})
}

func lsCmd() *cobra.Command {
	return &cobra.Command{Use: "ls", Short: "List the nodes you may reach", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		id, err := loadIdentity()
		if err != nil {
			return err
		}
		cl, err := proxyClient(id)
		if err != nil {
			return err
		}
		defer cl.Close()
		var nodes []authapi.NodeStatus
		if err := getJSON(cmd.Context(), cl, &nodes); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tSTATUS\tLABELS")
		for _, n := range nodes {
			st := "offline"
			if n.Online {
				st = "online"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", n.ID, st, formatLabels(n.Labels))
		}
		return tw.Flush()
	}}
}

func getJSON(ctx context.Context, cl *authapi.Client, out *[]authapi.NodeStatus) error {
	nodes, err := cl.Nodes(ctx)
	*out = nodes
	return err
}

func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + l[k])
	}
	return b.String()
}

// splitTarget parses [login@]node[.cluster][:port].
func splitTarget(target, cluster string) (login, node string) {
	if i := strings.LastIndex(target, "@"); i >= 0 {
		login, target = target[:i], target[i+1:]
	}
	if h, _, err := net.SplitHostPort(target); err == nil {
		target = h
	}
	return login, strings.TrimSuffix(target, "."+cluster)
}

// debug makes jg say which proxy and path each connection took.
var debug bool

// debugf prints one line of --debug output on stderr, with the time (to
// the millisecond, so that a slow move can be taken apart).
func debugf(format string, args ...any) {
	if debug {
		fmt.Fprintf(os.Stderr, "jg: %s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
}

// bufConn reads through the bufio.Reader that parsed the dial response.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func proxyCmd() *cobra.Command {
	p := &cobra.Command{Use: "proxy", Short: "Helpers for other clients"}
	var proxyWindow time.Duration
	ps := &cobra.Command{
		Use:   "ssh [login@]node[:port]",
		Short: "Connect stdin/stdout to a node's SSH server (OpenSSH ProxyCommand)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := loadIdentity()
			if err != nil {
				return err
			}
			login, node := splitTarget(args[0], id.Meta.Cluster)
			window, err := resumeWindow(proxyWindow)
			if err != nil {
				return err
			}
			mfa, err := proxyMFACert(cmd.Context(), id, node, login)
			if err != nil {
				return err
			}
			c, err := openNode(cmd.Context(), id, node, login, window, mfa)
			if err != nil {
				return err
			}
			// OpenSSH ends its ProxyCommand with SIGHUP as it exits,
			// right after closing the pipes, and a write to its closed
			// stdout would end jg with SIGPIPE. Either way jg must not
			// die before it has passed on the end of the stream (FIN,
			// then the CLOSE exchange): a resumable session whose
			// client vanished is kept by the node for node.resume_window
			// (5 minutes), SSH session and all, waiting for a
			// resumption that will not come.
			signal.Ignore(syscall.SIGPIPE)
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			stdinDone := make(chan struct{})
			go func() {
				defer close(stdinDone)
				io.Copy(c, os.Stdin) //nolint:errcheck
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite() //nolint:errcheck
				}
			}()
			finish := sync.OnceFunc(func() {
				select {
				case <-stdinDone:
				case <-time.After(time.Second):
				}
				c.Close() // waits (a while at most) for the node to confirm the end
			})
			go func() {
				<-hup
				finish()
				os.Exit(0)
			}()
			_, err = io.Copy(os.Stdout, c)
			finish()
			if errors.Is(err, syscall.EPIPE) {
				err = nil // OpenSSH went first
			}
			return err
		},
	}
	ps.Flags().DurationVar(&proxyWindow, "resume-window", 0, "how long to try resuming the session through another proxy when its path breaks (default $JG_RESUME_WINDOW or 2m)")
	p.AddCommand(ps)
	return p
}

func hostKeyCallback(id *creds.Identity) (ssh.HostKeyCallback, error) {
	kh, err := os.ReadFile(filepath.Join(id.Dir, "known_hosts"))
	if err != nil {
		return nil, err
	}
	var cas []ssh.PublicKey
	for _, line := range bytes.Split(kh, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) >= 4 && f[0] == "@cert-authority" {
			if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(strings.Join(f[2:], " "))); err == nil {
				cas = append(cas, k)
			}
		}
	}
	checker := &ssh.CertChecker{IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
		for _, k := range cas {
			if bytes.Equal(k.Marshal(), auth.Marshal()) {
				return true
			}
		}
		return false
	}}
	return func(host string, remote net.Addr, key ssh.PublicKey) error {
		if err := checker.CheckHostKey(host, remote, key); err != nil {
			return fmt.Errorf("node %s did not present a host certificate from this cluster: %w", host, err)
		}
		return nil
	}, nil
}

func sshCmd() *cobra.Command {
	var forceTTY bool
	var sshWindow time.Duration
	var mfaCode string
	var forwardAgent bool
	c := &cobra.Command{
		Use:   "ssh [login@]node [-- command...]",
		Short: "Open a shell or run a command on a node",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := loadIdentity()
			if err != nil {
				return err
			}
			login, node := splitTarget(args[0], id.Meta.Cluster)
			if login == "" {
				u, err := user.Current()
				if err != nil {
					return err
				}
				login = u.Username
			}
			signer, err := sessionSigner(cmd.Context(), id, node, login, mfaCode)
			if err != nil {
				return err
			}
			hkcb, err := hostKeyCallback(id)
			if err != nil {
				return err
			}
			backgroundRecheck(id)
			window, err := resumeWindow(sshWindow)
			if err != nil {
				return err
			}
			conn, err := openNode(cmd.Context(), id, node, login, window, "")
			if err != nil {
				return err
			}
			defer conn.Close()
			sc, chans, reqs, err := ssh.NewClientConn(conn, net.JoinHostPort(node, "22"), &ssh.ClientConfig{User: login, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hkcb, BannerCallback: func(msg string) error {
				fmt.Fprint(os.Stderr, msg)
				return nil
			}, Timeout: 20 * time.Second})
			if err != nil {
				return fmt.Errorf("ssh to %s as %s: %w", node, login, err)
			}
			client := ssh.NewClient(sc, chans, reqs)
			defer client.Close()
			// The terminal closing (SIGHUP), kill or Ctrl-C without a
			// terminal end the session on the node now, as with
			// OpenSSH: jg closes the resumable stream (the node's
			// CLOSE confirms it) instead of dying and leaving the
			// session detached on the node for node.resume_window,
			// with its command still running.
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
			defer signal.Stop(stop)
			var stoppedBy atomic.Value
			go func() {
				if sig, ok := <-stop; ok {
					stoppedBy.Store(sig)
					conn.Close() //nolint:errcheck
				}
			}()
			err = runSession(client, args[1:], forceTTY, forwardAgent)
			if sig, ok := stoppedBy.Load().(syscall.Signal); ok {
				return exitError{code: 128 + int(sig)}
			}
			return err
		},
	}
	c.Flags().BoolVarP(&forceTTY, "tty", "t", false, "allocate a terminal even for a command")
	c.Flags().BoolVarP(&forwardAgent, "forward-agent", "A", false, "forward your SSH agent (roles must grant agent_forwarding)")
	c.Flags().StringVar(&mfaCode, "mfa-code", "", "TOTP code for a node whose roles require MFA (default: ask on the terminal)")
	c.Flags().DurationVar(&sshWindow, "resume-window", 0, "how long to try resuming the session through another proxy when its path breaks (default $JG_RESUME_WINDOW or 2m)")
	return c
}

func statusCmd() *cobra.Command {
	return &cobra.Command{Use: "status", Short: "Show who you are logged in as", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error {
		id, err := creds.Load(home())
		if err != nil {
			return errors.New("not logged in: run jg login --proxy=HOST:PORT --user=NAME")
		}
		left := time.Until(id.Leaf.NotAfter)
		valid := "valid for " + identity.HumanDuration(left)
		if left <= 0 {
			valid = "EXPIRED " + identity.HumanDuration(-left) + " ago: run jg login"
		}
		fmt.Printf("Cluster: %s\nProxy:   %s\nUser:    %s\nRoles:   %s\nLogins:  %s\nCerts:   %s (until %s)\n",
			id.Meta.Cluster, id.Meta.Proxy, id.Meta.Name, strings.Join(id.Meta.Roles, ", "), strings.Join(id.Meta.Logins, ", "), valid, id.Leaf.NotAfter.Local().Format(time.RFC1123))
		// Re-check the home proxy (a few TCP connects): switch only to a
		// clearly better one.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h, switched, err := recheckHome(ctx, id)
		if h != nil {
			printHome(h)
			if switched {
				fmt.Printf("Moved home to %s.\n", h.ID)
			}
		}
		if err != nil {
			fmt.Printf("Home:    re-check failed: %v\n", err)
		}
		return nil
	}}
}

func configCmd() *cobra.Command {
	return &cobra.Command{Use: "config", Short: "Print an OpenSSH config block for the cluster's nodes", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		id, err := loadIdentity()
		if err != nil {
			return err
		}
		hosts := []string{"*." + id.Meta.Cluster}
		if cl, err := proxyClient(id); err == nil {
			if nodes, err := cl.Nodes(cmd.Context()); err == nil {
				for _, n := range nodes {
					hosts = append(hosts, n.ID)
				}
			}
			cl.Close()
		}
		exe, err := os.Executable()
		if err != nil {
			exe = "jg"
		}
		d := id.Dir
		pc := fmt.Sprintf("%q proxy ssh %%r@%%h:%%p", exe)
		if os.Getenv("JUMPGATE_HOME") != "" {
			pc = fmt.Sprintf("env JUMPGATE_HOME=%q ", d) + pc
		}
		fmt.Printf(`# Jumpgate cluster %[1]s via proxy %[2]s. Add to ~/.ssh/config (re-run after nodes are added,
# or use NODE.%[1]s, which always matches).
Host %[3]s
    ProxyCommand %[4]s
    IdentityFile "%[5]s/key"
    CertificateFile "%[5]s/key-cert.pub"
    UserKnownHostsFile "%[5]s/known_hosts"
    IdentitiesOnly yes
    StrictHostKeyChecking yes
    ServerAliveInterval 15
`, id.Meta.Cluster, id.Meta.Proxy, strings.Join(hosts, " "), pc, d)
		return nil
	}}
}
