package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

func lockCmd(g *globals) *cobra.Command {
	var req authapi.CreateLockRequest
	var ttl time.Duration
	c := &cobra.Command{Use: "lock --user=U | --role=R | --node=N | --login=L [--ttl=1h] [--message=...]",
		Short: "Lock a user, role, node or login: no certificates, no new sessions, live sessions ended everywhere",
		Long: `Lock a user, role, node or login (several flags: the lock applies where all match).
While the lock is in force, auth servers issue no certificates to it, proxies and
nodes refuse its new sessions, and its live sessions are ended on every proxy and
node, usually within a second of this command returning.`,
		Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			req.TTL = identity.Duration(ttl)
			l, err := c.CreateLock(ctx, req)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(l)
			}
			until := "until removed (jgctl unlock " + l.ID + ")"
			if !l.Expires.IsZero() {
				until = "until " + l.Expires.Local().Format(time.RFC1123)
			}
			fmt.Printf("Locked %s (lock %s) %s.\n", l.Target(), l.ID, until)
			return nil
		})}
	f := c.Flags()
	f.StringVar(&req.User, "user", "", "Jumpgate user")
	f.StringVar(&req.Role, "role", "", "role")
	f.StringVar(&req.Node, "node", "", "node")
	f.StringVar(&req.Login, "login", "", "OS login on nodes")
	f.StringVar(&req.Message, "message", "", "shown to whoever the lock stops")
	f.DurationVar(&ttl, "ttl", 0, "lift the lock after this long (default: never)")
	return c
}

func unlockCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "unlock ID", Short: "Remove a lock", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			if err := c.DeleteLock(ctx, args[0]); err != nil {
				return err
			}
			fmt.Printf("Lock %s removed.\n", args[0])
			return nil
		})}
}

func locksCmd(g *globals) *cobra.Command {
	l := &cobra.Command{Use: "locks", Short: "List locks"}
	ls := &cobra.Command{Use: "ls", Short: "List locks, lifted ones included", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			locks, err := c.Locks(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(locks)
			}
			now := time.Now()
			var rows [][]string
			for _, l := range locks {
				st, until := "in force", "never lifts"
				if !l.Expires.IsZero() {
					until = l.Expires.Local().Format(time.DateTime)
				}
				if !l.Active(now) {
					st = "lifted"
				}
				rows = append(rows, []string{l.ID, l.Target(), st, until, l.CreatedBy, l.Message})
			}
			return table("ID\tTARGET\tSTATE\tEXPIRES\tBY\tMESSAGE", rows)
		})}
	l.AddCommand(ls)
	return l
}
