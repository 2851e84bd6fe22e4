// Command jgctl administers a Jumpgate cluster: users, roles, join tokens,
// nodes and status. It talks to the auth server's API with an admin
// identity, by default the one the auth server writes to
// <data-dir>/admin on its machine.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

var version = "dev"

type globals struct {
	auth, identityDir string
	jsonOut           bool
}

func main() {
	g := &globals{}
	root := &cobra.Command{Use: "jgctl", Short: "Administer a Jumpgate cluster", SilenceUsage: true, SilenceErrors: true}
	pf := root.PersistentFlags()
	pf.StringVar(&g.auth, "auth", envOr("JUMPGATE_AUTH", "127.0.0.1:3025"), "auth server address; a comma-separated list fails over in order ($JUMPGATE_AUTH)")
	pf.StringVar(&g.identityDir, "identity", envOr("JUMPGATE_ADMIN_IDENTITY", "/var/lib/jumpgate/admin"), "admin identity directory ($JUMPGATE_ADMIN_IDENTITY)")
	pf.BoolVar(&g.jsonOut, "json", false, "print JSON")
	root.AddCommand(usersCmd(g), rolesCmd(g), tokensCmd(g), nodesCmd(g), proxiesCmd(g), meshCmd(g), authCmd(g), caCmd(g), lockCmd(g), unlockCmd(g), locksCmd(g), statusCmd(g),
		backupCmd(g), targetsCmd(g), requestsCmd(g), sessionsCmd(g), applyCmd(g),
		&cobra.Command{Use: "version", Short: "Print the version", Run: func(*cobra.Command, []string) { fmt.Println("jgctl", version) }})
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "jgctl:", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (g *globals) client() (*authapi.Client, error) {
	id, err := creds.Load(g.identityDir)
	if err != nil {
		return nil, fmt.Errorf("load admin identity from %s: %w (run jgctl on the auth server's machine, or pass --identity)", g.identityDir, err)
	}
	if err := identity.CheckValidity(id.Leaf.NotBefore, id.Leaf.NotAfter, time.Now()); err != nil {
		return nil, fmt.Errorf("admin identity in %s: %w", g.identityDir, err)
	}
	addrs := strings.Split(g.auth, ",")
	return authapi.NewClient(authapi.ClientConfig{Addr: addrs[0], Addrs: addrs[1:], Trust: authapi.TrustConfig{RootCAs: id.RootCAs, Kinds: []identity.Kind{identity.KindAuth}}, GetClientCertificate: id.GetClientCertificate})
}

func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(header string, rows [][]string) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func withClient(g *globals, f func(ctx context.Context, c *authapi.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := g.client()
		if err != nil {
			return err
		}
		defer c.Close()
		return f(cmd.Context(), c, args)
	}
}

func usersCmd(g *globals) *cobra.Command {
	u := &cobra.Command{Use: "users", Short: "Manage users"}
	var roles, mfaDevice string
	var pwStdin bool
	add := &cobra.Command{Use: "add NAME --roles=R1,R2", Short: "Add a user (asks for the password, or --password-stdin)", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			if roles == "" {
				return errors.New("--roles is required")
			}
			pw, err := readPassword(pwStdin, "Password for "+args[0]+": ")
			if err != nil {
				return err
			}
			if err := c.CreateUser(ctx, authapi.CreateUserRequest{Name: args[0], Roles: strings.Split(roles, ","), Password: pw}); err != nil {
				return err
			}
			fmt.Printf("User %s added with roles %s.\n", args[0], roles)
			return nil
		})}
	add.Flags().StringVar(&roles, "roles", "", "comma-separated roles")
	add.Flags().BoolVar(&pwStdin, "password-stdin", false, "read the password from standard input")
	rm := &cobra.Command{Use: "rm NAME", Short: "Remove a user", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			if err := c.DeleteUser(ctx, args[0]); err != nil {
				return err
			}
			fmt.Printf("User %s removed. Certificates already issued stay valid until they expire.\n", args[0])
			return nil
		})}
	ls := &cobra.Command{Use: "ls", Short: "List users", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			users, err := c.Users(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(users)
			}
			var rows [][]string
			for _, u := range users {
				rows = append(rows, []string{u.Name, strings.Join(u.Roles, ","), u.Created.Format(time.DateOnly)})
			}
			return table("USER\tROLES\tCREATED", rows)
		})}
	resetMFA := &cobra.Command{Use: "reset-mfa NAME [--device=D]", Short: "Remove a user's MFA devices (a lost phone)", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			if err := c.ResetMFA(ctx, args[0], mfaDevice); err != nil {
				return err
			}
			fmt.Printf("MFA devices of %s removed: they can enroll a new one with jg mfa add.\n", args[0])
			return nil
		})}
	resetMFA.Flags().StringVar(&mfaDevice, "device", "", "remove only this device")
	u.AddCommand(add, rm, ls, resetMFA)
	return u
}

func readPassword(stdin bool, prompt string) (string, error) {
	if stdin {
		var b [4096]byte
		n, _ := os.Stdin.Read(b[:])
		return strings.TrimRight(string(b[:n]), "\r\n"), nil
	}
	return promptPassword(prompt)
}

func rolesCmd(g *globals) *cobra.Command {
	r := &cobra.Command{Use: "roles", Short: "Manage roles"}
	var file string
	apply := &cobra.Command{Use: "apply -f roles.yaml", Short: "Create or replace roles from YAML", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			var data []byte
			var err error
			if file == "-" {
				data, err = readAll(os.Stdin)
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			roles, err := identity.ParseRoles(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if err := c.ApplyRoles(ctx, roles); err != nil {
				return err
			}
			for _, role := range roles {
				fmt.Printf("role %s applied\n", role.Name)
			}
			return nil
		})}
	apply.Flags().StringVarP(&file, "file", "f", "", "YAML file with one or more roles (- for stdin)")
	_ = apply.MarkFlagRequired("file")
	ls := &cobra.Command{Use: "ls", Short: "List roles", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			roles, err := c.Roles(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(roles)
			}
			var rows [][]string
			for _, r := range roles {
				rows = append(rows, []string{r.Name, strings.Join(r.Allow.Logins, ","), labelSel(r.Allow.NodeLabels), strings.Join(r.Deny.Logins, ","), labelSel(r.Deny.NodeLabels)})
			}
			return table("ROLE\tALLOW LOGINS\tALLOW NODES\tDENY LOGINS\tDENY NODES", rows)
		})}
	rm := &cobra.Command{Use: "rm NAME", Short: "Remove a role", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			if err := c.DeleteRole(ctx, args[0]); err != nil {
				return err
			}
			fmt.Printf("Role %s removed.\n", args[0])
			return nil
		})}
	r.AddCommand(apply, ls, rm)
	return r
}

func labelSel(l identity.Labels) string {
	var parts []string
	for k, v := range l {
		parts = append(parts, k+"="+strings.Join(v, "|"))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func tokensCmd(g *globals) *cobra.Command {
	t := &cobra.Command{Use: "tokens", Short: "Manage join tokens"}
	var kind, labels, proxy, name string
	var ttl time.Duration
	add := &cobra.Command{Use: "add", Short: "Create a one-time join token", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			l := map[string]string{}
			for _, kv := range strings.Split(labels, ",") {
				if kv == "" {
					continue
				}
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("label %q: want key=value", kv)
				}
				l[k] = v
			}
			resp, err := c.CreateToken(ctx, authapi.CreateTokenRequest{Kind: identity.Kind(kind), TTL: identity.Duration(ttl), Labels: l, Name: name})
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(resp)
			}
			fmt.Printf("Token %s (id %s, %s) valid until %s.\n", resp.Token, resp.ID, kind, resp.Expires.Local().Format(time.RFC1123))
			if kind == "node" {
				fmt.Printf("On the node, run:\n  jumpgate start --roles=node --node-name=NAME --data-dir=/var/lib/jumpgate --proxy=%s --token=%s --ca-pin=%s\n", proxy, resp.Token, resp.CAPin)
			} else {
				fmt.Printf("On the proxy, run:\n  jumpgate start --roles=proxy --proxy-id=NAME --data-dir=/var/lib/jumpgate --auth=%s --token=%s --ca-pin=%s\n", g.auth, resp.Token, resp.CAPin)
			}
			return nil
		})}
	add.Flags().StringVar(&kind, "type", "node", "node or proxy (auth servers: jgctl auth add)")
	add.Flags().StringVar(&name, "name", "", "bind the token to this node or proxy name: it cannot join under any other (recommended for proxies)")
	add.Flags().DurationVar(&ttl, "ttl", 30*time.Minute, "how long the token may be used")
	add.Flags().StringVar(&labels, "labels", "", "labels given to the node, k=v,k2=v2")
	add.Flags().StringVar(&proxy, "proxy", "PROXY:3080", "proxy address to put in the printed join command")
	ls := &cobra.Command{Use: "ls", Short: "List join tokens", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			toks, err := c.Tokens(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(toks)
			}
			var rows [][]string
			for _, t := range toks {
				st := "unused"
				if t.UsedBy != "" {
					st = "used by " + t.UsedBy
				} else if time.Now().After(t.Expires) {
					st = "expired"
				}
				bound := t.Name
				if bound == "" {
					bound = "any"
				}
				rows = append(rows, []string{t.ID, string(t.Kind), bound, t.Expires.Local().Format(time.DateTime), st})
			}
			return table("ID\tTYPE\tNAME\tEXPIRES\tSTATE", rows)
		})}
	rm := &cobra.Command{Use: "rm ID", Short: "Remove a token", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			if err := c.DeleteToken(ctx, args[0]); err != nil {
				return err
			}
			fmt.Printf("Token %s removed.\n", args[0])
			return nil
		})}
	t.AddCommand(add, ls, rm)
	return t
}

func nodesCmd(g *globals) *cobra.Command {
	n := &cobra.Command{Use: "nodes", Short: "Node inventory"}
	ls := &cobra.Command{Use: "ls", Short: "List nodes with labels and tunnel state", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			nodes, err := c.Nodes(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(nodes)
			}
			var rows [][]string
			for _, nd := range nodes {
				tun := "no tunnel"
				if nd.Online {
					tun = "up " + identity.HumanDuration(time.Since(nd.Since)) + " via " + strings.Join(nd.Proxies, ",")
				}
				var ls []string
				for k, v := range nd.Labels {
					ls = append(ls, k+"="+v)
				}
				sort.Strings(ls)
				rows = append(rows, []string{nd.ID, tun, strings.Join(ls, ",")})
			}
			return table("NODE\tTUNNEL\tLABELS", rows)
		})}
	rm := &cobra.Command{Use: "rm ID", Short: "Remove a node from the inventory", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			return c.DeleteNode(ctx, args[0])
		})}
	n.AddCommand(ls, rm)
	return n
}

func proxiesCmd(g *globals) *cobra.Command {
	p := &cobra.Command{Use: "proxies", Aliases: []string{"proxy"}, Short: "The cluster's proxies and their mesh"}
	var (
		region string
		quiet  bool
	)
	ls := &cobra.Command{Use: "ls", Short: "List proxies with region, state, version, tunnels held and RTT to their peers", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			proxies, err := c.Proxies(ctx)
			if err != nil {
				return err
			}
			if region != "" {
				proxies = slices.DeleteFunc(proxies, func(p authapi.ProxyState) bool { return p.Mesh == nil || p.Mesh.Region != region })
			}
			if quiet {
				for _, p := range proxies {
					fmt.Println(p.ID)
				}
				return nil
			}
			if g.jsonOut {
				return g.printJSON(proxies)
			}
			var rows [][]string
			for _, p := range proxies {
				rows = append(rows, proxyRow(p, proxies))
			}
			return table("PROXY\tREGION\tSTATE\tHEALTH\tVERSION\tTUNNELS\tSESSIONS\tDRAIN\tPEER RTT\tLAST REPORT", rows)
		})}
	ls.Flags().StringVar(&region, "region", "", "only the proxies of this region")
	ls.Flags().BoolVarP(&quiet, "quiet", "q", false, "print proxy ids only, one per line (for scripts)")
	p.AddCommand(ls, drainCmd(g), waitReadyCmd(g))
	return p
}

// proxyRow is one line of `jgctl proxies ls`. HEALTH is how the other
// proxies see this one, so a proxy that is dead (and no longer reports)
// still shows up as such.
func proxyRow(p authapi.ProxyState, all []authapi.ProxyState) []string {
	region, state, ver, sessions, rtts := "-", "-", "-", "-", "-"
	if m := p.Mesh; m != nil {
		region, state, ver, sessions = m.Region, m.State, m.Version, fmt.Sprint(m.Sessions)
		var rs []string
		for _, pv := range m.Peers {
			if pv.RTT > 0 {
				rs = append(rs, fmt.Sprintf("%s %s", pv.ID, pv.RTT.Round(100*time.Microsecond)))
			}
		}
		if len(rs) > 0 {
			rtts = strings.Join(rs, ", ")
		}
	}
	views := map[string]int{}
	seen := 0
	for _, o := range all {
		if o.ID == p.ID || o.Mesh == nil || time.Since(o.LastSeen) > time.Minute {
			continue
		}
		for _, pv := range o.Mesh.Peers {
			if pv.ID == p.ID {
				views[pv.Health]++
				seen++
			}
		}
	}
	health := "-"
	if seen > 0 {
		var hs []string
		for _, h := range []string{"alive", "suspect", "dead", "left"} {
			if views[h] > 0 {
				hs = append(hs, fmt.Sprintf("%s %d/%d", h, views[h], seen))
			}
		}
		health = strings.Join(hs, ", ")
	}
	last := identity.HumanDuration(time.Since(p.LastSeen)) + " ago"
	if time.Since(p.LastSeen) > time.Minute {
		last += " (not reporting)"
	}
	drain := "-"
	if m := p.Mesh; m != nil && m.Drain != nil {
		drain = drainProgress(m.Drain)
	}
	return []string{p.ID, region, state, health, ver, fmt.Sprint(p.Tunnels), sessions, drain, rtts, last}
}

func meshCmd(g *globals) *cobra.Command {
	m := &cobra.Command{Use: "mesh", Short: "The proxies' gossip mesh"}
	keys := &cobra.Command{Use: "keys", Short: "Show the gossip keyring (key IDs, primary first) and which proxies hold which keys", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			ring, err := c.MeshKeyOp(ctx, authapi.MeshKeyOp{Op: "list"})
			if err != nil {
				return err
			}
			proxies, err := c.Proxies(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(map[string]any{"keyring": ring, "proxies": proxies})
			}
			fmt.Printf("Keyring (primary first): %s\n\n", strings.Join(ring.KeyIDs, ", "))
			var rows [][]string
			for _, p := range proxies {
				ids := "-"
				if p.Mesh != nil {
					ids = strings.Join(p.Mesh.KeyIDs, ", ")
				}
				rows = append(rows, []string{p.ID, ids})
			}
			return table("PROXY\tKEYS HELD (PRIMARY FIRST)", rows)
		})}
	var timeout time.Duration
	rotate := &cobra.Command{Use: "rotate-key", Short: "Replace the gossip key without splitting the mesh: add, wait for every proxy, promote, wait, remove the old", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			return rotateMeshKey(ctx, c, timeout)
		})}
	rotate.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long each step waits for every proxy")
	m.AddCommand(keys, rotate)
	return m
}

// rotateMeshKey rotates the gossip key in three steps, each waiting until
// every proxy that reported in the last minute holds the new keyring, so
// that at every moment all proxies share a key they can all decrypt. Run it
// again after a timeout: a keyring with more than one key is a rotation in
// progress, and it continues with the newest key.
func rotateMeshKey(ctx context.Context, c *authapi.Client, timeout time.Duration) error {
	ring, err := c.MeshKeyOp(ctx, authapi.MeshKeyOp{Op: "list"})
	if err != nil {
		return err
	}
	if len(ring.KeyIDs) == 1 {
		if ring, err = c.MeshKeyOp(ctx, authapi.MeshKeyOp{Op: "add"}); err != nil {
			return err
		}
		fmt.Printf("added key %s\n", ring.Newest)
	} else {
		fmt.Printf("continuing the rotation in progress (keyring %s)\n", strings.Join(ring.KeyIDs, ", "))
	}
	newID := ring.Newest
	if ring.KeyIDs[0] != newID {
		if err := waitProxiesKeys(ctx, c, timeout, "hold key "+newID, "holds key "+newID, func(ids []string) bool { return slices.Contains(ids, newID) }); err != nil {
			return err
		}
		if ring, err = c.MeshKeyOp(ctx, authapi.MeshKeyOp{Op: "promote", KeyID: newID}); err != nil {
			return err
		}
		fmt.Printf("promoted key %s to primary\n", newID)
	}
	if err := waitProxiesKeys(ctx, c, timeout, "use key "+newID, "uses key "+newID, func(ids []string) bool { return len(ids) > 0 && ids[0] == newID }); err != nil {
		return err
	}
	for _, id := range ring.KeyIDs {
		if id == newID {
			continue
		}
		if _, err := c.MeshKeyOp(ctx, authapi.MeshKeyOp{Op: "remove", KeyID: id}); err != nil {
			return err
		}
		fmt.Printf("removed key %s\n", id)
	}
	if err := waitProxiesKeys(ctx, c, timeout, "drop the old keys", "has dropped the old keys", func(ids []string) bool { return len(ids) == 1 && ids[0] == newID }); err != nil {
		return err
	}
	fmt.Printf("rotation done: every proxy uses key %s only\n", newID)
	return nil
}

// waitProxiesKeys waits until every proxy of the mesh holds a keyring that
// ok accepts. "Every proxy" is every proxy that reported to auth in the last
// minute with a mesh, and every proxy any of them sees alive or suspect in
// gossip: one that is cut off from auth but alive in the mesh must not be
// left without a key it shares with the others.
func waitProxiesKeys(ctx context.Context, c *authapi.Client, timeout time.Duration, what, done string, ok func(ids []string) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		proxies, err := c.Proxies(ctx)
		if err != nil {
			return err
		}
		fresh := map[string]authapi.ProxyState{}
		required := map[string]bool{}
		for _, p := range proxies {
			if p.Mesh == nil || time.Since(p.LastSeen) > time.Minute {
				continue
			}
			fresh[p.ID] = p
			required[p.ID] = true
			for _, pv := range p.Mesh.Peers {
				if pv.Health == "alive" || pv.Health == "suspect" {
					required[pv.ID] = true
				}
			}
		}
		var lagging []string
		for id := range required {
			p, reporting := fresh[id]
			switch {
			case !reporting:
				lagging = append(lagging, id+" (alive in the mesh but not reporting to auth)")
			case !ok(p.Mesh.KeyIDs):
				lagging = append(lagging, id)
			}
		}
		sort.Strings(lagging)
		if len(required) > 0 && len(lagging) == 0 {
			fmt.Printf("every proxy now %s\n", done)
			return nil
		}
		if time.Now().After(deadline) {
			if len(required) == 0 {
				return fmt.Errorf("no proxy with a mesh has reported to auth in the last minute, so nothing can be verified: check the proxies, then run jgctl mesh rotate-key again")
			}
			return fmt.Errorf("after %s these proxies still do not %s: %s; the mesh is safe as it is (all proxies share a key); check them and run jgctl mesh rotate-key again to continue", timeout, what, strings.Join(lagging, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "status", Short: "Show cluster status", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(st)
			}
			raft, _ := json.Marshal(st.Raft)
			fmt.Printf("Cluster:     %s\nAuth server: %s (version %s)\nRaft:        %s\nUsers: %d  Roles: %d  Nodes: %d (%d with a tunnel)\nCA pin:      %s\n",
				st.Cluster, st.AuthServer, st.Version, raft, st.Users, st.Roles, st.Nodes, st.Online, strings.Join(st.CAPins, " "))
			var rows [][]string
			for _, p := range st.Proxies {
				rows = append(rows, []string{p.ID, fmt.Sprint(p.Tunnels), identity.HumanDuration(time.Since(p.LastSeen)) + " ago"})
			}
			fmt.Println()
			return table("PROXY\tTUNNELS\tLAST REPORT", rows)
		})}
}
