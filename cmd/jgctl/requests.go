package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
)

// requestsCmd reviews just-in-time access requests (jg request create).
func requestsCmd(g *globals) *cobra.Command {
	r := &cobra.Command{Use: "requests", Short: "Review just-in-time access requests"}
	var st, user string
	ls := &cobra.Command{Use: "ls [--state=pending]", Short: "List access requests", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			reqs, err := c.AccessRequests(ctx, user, st)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(reqs)
			}
			now := time.Now()
			var rows [][]string
			for _, a := range reqs {
				until := "-"
				if !a.AccessUntil.IsZero() {
					until = a.AccessUntil.Local().Format(time.DateTime)
				}
				rows = append(rows, []string{a.ID, a.User, strings.Join(a.Roles, ","), a.Status(now), time.Duration(a.Duration).String(), a.Created.Local().Format(time.DateTime), orDash(a.Reviewer), until, a.Reason})
			}
			return table("ID\tUSER\tROLES\tSTATE\tFOR\tCREATED\tREVIEWER\tACCESS UNTIL\tREASON", rows)
		})}
	ls.Flags().StringVar(&st, "state", "", "only requests in this state: pending, approved, denied, expired")
	ls.Flags().StringVar(&user, "user", "", "only this user's requests")
	review := func(approve bool) *cobra.Command {
		verb := "deny"
		if approve {
			verb = "approve"
		}
		var reason string
		c := &cobra.Command{Use: verb + " ID [--reason=...]", Short: strings.ToUpper(verb[:1]) + verb[1:] + " an access request", Args: cobra.ExactArgs(1),
			RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
				a, err := c.ReviewAccessRequest(ctx, args[0], authapi.ReviewRequest{Approve: approve, Reason: reason})
				if err != nil {
					return err
				}
				if g.jsonOut {
					return g.printJSON(a)
				}
				if approve {
					fmt.Printf("Approved %s: %s may use %s until %s (jg request assume %s).\n", a.ID, a.User, strings.Join(a.Roles, ", "), a.AccessUntil.Local().Format(time.DateTime), a.ID)
				} else {
					fmt.Printf("Denied %s (%s asked for %s).\n", a.ID, a.User, strings.Join(a.Roles, ", "))
				}
				return nil
			})}
		c.Flags().StringVar(&reason, "reason", "", "a comment for the requester and the audit log")
		return c
	}
	r.AddCommand(ls, review(true), review(false))
	return r
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
