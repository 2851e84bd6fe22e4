package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

func authCmd(g *globals) *cobra.Command {
	a := &cobra.Command{Use: "auth", Short: "The cluster's auth servers (raft voters and non-voters)"}
	ls := &cobra.Command{Use: "ls", Short: "List auth servers with role (leader, voter, non-voter), last contact with the leader and applied index", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			servers, err := c.AuthServers(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(servers)
			}
			return printAuthServers(servers)
		})}
	var voter bool
	var ttl time.Duration
	add := &cobra.Command{Use: "add ID [--voter]", Short: "Create the one-time token a new auth server joins with (as a non-voter unless --voter)", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			resp, err := c.AuthAdd(ctx, authapi.MembershipOp{ID: args[0], Voter: voter, TTL: identity.Duration(ttl)})
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(resp)
			}
			role := "non-voter"
			if voter {
				role = "voter"
			}
			fmt.Printf("Token %s (id %s) lets auth server %s join as a %s until %s.\n", resp.Token, resp.ID, args[0], role, resp.Expires.Local().Format(time.RFC1123))
			fmt.Printf("On the new server, run:\n  jumpgate start --roles=auth --cluster-name=CLUSTER --auth-id=%s --auth-listen=ADDR:3025 --data-dir=/var/lib/jumpgate --auth-join=%s --token=%s --ca-pin=%s\n", args[0], g.auth, resp.Token, resp.CAPin)
			if !voter {
				fmt.Printf("Once it has caught up (jgctl auth ls), jgctl auth promote %s makes it a voter.\n", args[0])
			}
			return nil
		})}
	add.Flags().BoolVar(&voter, "voter", false, "join as a voter (keep 3 or 5 voters, close together); default non-voter")
	add.Flags().DurationVar(&ttl, "ttl", 30*time.Minute, "how long the token may be used")
	member := func(op, short string) *cobra.Command {
		return &cobra.Command{Use: op + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
				servers, err := c.AuthMembership(ctx, op, args[0])
				if err != nil {
					return err
				}
				if g.jsonOut {
					return g.printJSON(servers)
				}
				return printAuthServers(servers)
			})}
	}
	a.AddCommand(ls, add,
		member("promote", "Make a non-voter a voter"),
		member("remove", "Remove an auth server from raft and the registry (stop it first)"))
	return a
}

func printAuthServers(servers []authapi.AuthServerStatus) error {
	rows := make([][]string, 0, len(servers))
	for _, s := range servers {
		contact := "-"
		switch {
		case s.Error != "":
			contact = "?"
		case s.Role == authapi.AuthRoleLeader:
			contact = "leader"
		case s.LastContactMS >= 0:
			contact = (time.Duration(s.LastContactMS) * time.Millisecond).Round(time.Millisecond).String() + " ago"
		}
		applied := strconv.FormatUint(s.AppliedIndex, 10)
		signs := "nothing (keys not trusted)"
		switch {
		case s.KeysTrusted && s.SignsServerCerts:
			signs = "all"
		case s.KeysTrusted:
			signs = "users"
		}
		status := "up"
		if s.Error != "" {
			applied, signs, status = "?", "?", "unreachable: "+s.Error
		}
		rows = append(rows, []string{s.ID, s.Role, s.Region, s.APIAddr, s.RaftAddr, contact, applied, s.Keystore, signs, s.Version, status})
	}
	return table("ID\tROLE\tREGION\tAPI\tRAFT\tLAST CONTACT\tAPPLIED\tKEYSTORE\tSIGNS\tVERSION\tSTATUS", rows)
}
