package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// drainCmd is `jgctl proxy drain P`: find P's address from auth's view of
// the mesh, ask P to drain, and (with --wait, the default) follow its
// progress until it has exited.
func drainCmd(g *globals) *cobra.Command {
	var (
		timeout time.Duration
		wait    bool
		addr    string
		reason  string
	)
	c := &cobra.Command{Use: "drain PROXY", Short: "Drain a proxy for maintenance: agents and resumable sessions move to other proxies, then it exits", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			id := args[0]
			if addr == "" {
				proxies, err := c.Proxies(ctx)
				if err != nil {
					return err
				}
				for _, p := range proxies {
					if p.ID == id && p.Mesh != nil {
						addr = p.Mesh.PublicAddr
					}
				}
				if addr == "" {
					return fmt.Errorf("proxy %s is not known to auth (jgctl proxies ls lists the proxies): give its address with --addr", id)
				}
			}
			pc, err := proxyClient(g, addr)
			if err != nil {
				return err
			}
			defer pc.Close()
			st, err := pc.Drain(ctx, authapi.DrainRequest{Timeout: identity.Duration(timeout), Reason: reason})
			if err != nil {
				return fmt.Errorf("drain proxy %s at %s: %w", id, addr, err)
			}
			fmt.Printf("Proxy %s is draining (deadline %s): %s\n", id, st.Deadline.Local().Format(time.TimeOnly), drainProgress(st))
			if !wait {
				return nil
			}
			return followDrain(ctx, pc, id, st)
		})}
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "when it passes, the proxy exits with whatever is left")
	c.Flags().BoolVar(&wait, "wait", true, "follow the drain until the proxy has exited")
	c.Flags().StringVar(&addr, "addr", "", "the proxy's address (default: from auth's list of proxies)")
	c.Flags().StringVar(&reason, "reason", "", "why, for the proxy's log and its agents (default: who asked)")
	return c
}

// followDrain prints the drain's progress whenever it changes, until the
// proxy stops answering (it has exited).
func followDrain(ctx context.Context, pc *authapi.Client, id string, st *authapi.DrainStatus) error {
	last := drainProgress(st)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cur, err := pc.DrainStatus(sctx)
		cancel()
		if err != nil {
			var ae *authapi.APIError
			if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
				return fmt.Errorf("proxy %s is not draining any more (restarted before the drain finished?)", id)
			}
			if isGone(err) {
				fmt.Printf("Proxy %s has drained and exited (%s after the start).\n", id, time.Since(st.Started).Round(100*time.Millisecond))
				return nil
			}
			if time.Now().After(st.Deadline.Add(30 * time.Second)) {
				return fmt.Errorf("proxy %s: no answer and its deadline has passed: %w", id, err)
			}
			continue
		}
		if p := drainProgress(cur); p != last {
			fmt.Println("  " + p)
			last = p
		}
	}
}

// isGone reports whether err means nothing listens at the proxy's address.
func isGone(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

func drainProgress(st *authapi.DrainStatus) string {
	left := time.Until(st.Deadline).Round(time.Second)
	if left < 0 {
		left = 0
	}
	return fmt.Sprintf("%s: %d sessions (%d resumable), %d tunnels left; %d agents told, %d clients moved; %s to deadline", st.Phase, st.Sessions, st.Resumable, st.Tunnels, st.Agents, st.Moved, left)
}

// proxyClient talks to one proxy's HTTPS API with the admin identity.
func proxyClient(g *globals, addr string) (*authapi.Client, error) {
	id, err := creds.Load(g.identityDir)
	if err != nil {
		return nil, fmt.Errorf("load admin identity from %s: %w", g.identityDir, err)
	}
	return authapi.NewClient(authapi.ClientConfig{Addr: addr, Trust: authapi.TrustConfig{RootCAs: id.RootCAs, Kinds: []identity.Kind{identity.KindProxy}}, GetClientCertificate: id.GetClientCertificate})
}

// waitReadyCmd is `jgctl proxy wait-ready P`: wait until P reports to auth
// again (after --since), active and not draining, with the expected
// version, and every other reporting proxy sees it alive. The rolling
// upgrade script runs it after each restart.
func waitReadyCmd(g *globals) *cobra.Command {
	var (
		timeout time.Duration
		since   string
		ver     string
	)
	c := &cobra.Command{Use: "wait-ready PROXY", Short: "Wait until a (restarted) proxy is back in the mesh: reporting, active, seen alive by its peers", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			id := args[0]
			after := time.Time{}
			if since != "" {
				t, err := time.Parse(time.RFC3339, since)
				if err != nil {
					return fmt.Errorf("--since %q: want RFC 3339, e.g. %s", since, time.Now().UTC().Format(time.RFC3339))
				}
				after = t
			}
			deadline := time.Now().Add(timeout)
			why := ""
			for {
				proxies, err := c.Proxies(ctx)
				if err == nil {
					if why = proxyNotReady(id, proxies, after, ver); why == "" {
						fmt.Printf("Proxy %s is ready.\n", id)
						return nil
					}
				} else {
					why = err.Error()
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("proxy %s not ready after %v: %s", id, timeout, why)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(500 * time.Millisecond):
				}
			}
		})}
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait")
	c.Flags().StringVar(&since, "since", "", "only a report after this time counts (RFC 3339; the restart's time)")
	c.Flags().StringVar(&ver, "version", "", "the version the proxy must run")
	return c
}

// proxyNotReady says why proxy id is not ready, "" when it is.
func proxyNotReady(id string, proxies []authapi.ProxyState, since time.Time, ver string) string {
	var me *authapi.ProxyState
	for i := range proxies {
		if proxies[i].ID == id {
			me = &proxies[i]
		}
	}
	switch {
	case me == nil:
		return "auth has no report from it"
	case !me.LastSeen.After(since):
		return "no report since " + since.Format(time.RFC3339)
	case time.Since(me.LastSeen) > time.Minute:
		return "not reporting for " + identity.HumanDuration(time.Since(me.LastSeen))
	case me.Mesh == nil:
		return "it reports no mesh"
	case me.Mesh.State != "active" || me.Mesh.Drain != nil:
		return "it is " + me.Mesh.State
	case ver != "" && me.Mesh.Version != ver:
		return fmt.Sprintf("it runs version %s, not %s", me.Mesh.Version, ver)
	}
	for _, o := range proxies {
		if o.ID == id || o.Mesh == nil || time.Since(o.LastSeen) > time.Minute {
			continue
		}
		seen := false
		for _, pv := range o.Mesh.Peers {
			if pv.ID == id {
				seen = true
				if pv.Health != "alive" {
					return fmt.Sprintf("proxy %s sees it %s", o.ID, pv.Health)
				}
			}
		}
		if !seen {
			return fmt.Sprintf("proxy %s does not see it yet", o.ID)
		}
	}
	return ""
}
