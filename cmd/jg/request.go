package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// Just-in-time access: jg request create asks for roles; once a reviewer
// approves (jgctl requests approve), jg has certificates issued that carry
// them until the approved time ends. The certificates from jg login are
// kept aside in ~/.jumpgate/base and come back when the access ends or
// with jg request drop.

func requestCmd() *cobra.Command {
	r := &cobra.Command{Use: "request", Short: "Ask for more roles for a while (just-in-time access)"}
	var roles, reason string
	var duration, wait time.Duration
	var noAssume bool
	create := &cobra.Command{Use: "create --roles=R1,R2 --reason=WHY", Short: "Request roles; with --wait, wait for the review and use them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if roles == "" {
				return errors.New("--roles is required")
			}
			id, cl, err := userClient()
			if err != nil {
				return err
			}
			defer cl.Close()
			ar, err := cl.CreateAccessRequest(cmd.Context(), authapi.CreateAccessRequest{Roles: strings.Split(roles, ","), Reason: reason, Duration: identity.Duration(duration)})
			if err != nil {
				return fmt.Errorf("request: %w", err)
			}
			fmt.Printf("Access request %s for %s created (access for %s once approved).\n", ar.ID, strings.Join(ar.Roles, ", "), time.Duration(ar.Duration))
			if wait <= 0 {
				fmt.Printf("A reviewer approves it with: jgctl requests approve %s\nThen run: jg request assume %s\n", ar.ID, ar.ID)
				return nil
			}
			fmt.Printf("Waiting up to %s for a review...\n", wait)
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			for {
				got, err := cl.MyAccessRequest(ctx, ar.ID)
				if err == nil {
					switch got.Status(time.Now()) {
					case state.RequestApproved:
						fmt.Printf("Approved by %s%s.\n", got.Reviewer, comment(got.ReviewReason))
						if noAssume {
							return nil
						}
						return assume(cmd.Context(), id, cl, []string{ar.ID})
					case state.RequestDenied:
						return fmt.Errorf("access request %s was denied by %s%s", ar.ID, got.Reviewer, comment(got.ReviewReason))
					case "expired":
						return fmt.Errorf("access request %s expired before a review", ar.ID)
					}
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("no review within %s: the request stays pending; jg request assume %s once it is approved", wait, ar.ID)
				case <-time.After(2 * time.Second):
				}
			}
		}}
	create.Flags().StringVar(&roles, "roles", "", "comma-separated roles to request")
	create.Flags().StringVar(&reason, "reason", "", "why you need them (reviewers and the audit log see it)")
	create.Flags().DurationVar(&duration, "duration", 0, "ask for less time than your roles allow")
	create.Flags().DurationVar(&wait, "wait", 0, "wait this long for the review, then use the roles at once")
	create.Flags().BoolVar(&noAssume, "no-assume", false, "with --wait: do not switch to the new roles")

	ls := &cobra.Command{Use: "ls", Short: "List your access requests", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		_, cl, err := userClient()
		if err != nil {
			return err
		}
		defer cl.Close()
		reqs, err := cl.MyAccessRequests(cmd.Context())
		if err != nil {
			return err
		}
		printRequests(reqs)
		return nil
	}}
	assumeC := &cobra.Command{Use: "assume ID...", Short: "Use the roles of approved requests (new certificates until the access ends)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, cl, err := userClient()
			if err != nil {
				return err
			}
			defer cl.Close()
			return assume(cmd.Context(), id, cl, args)
		}}
	drop := &cobra.Command{Use: "drop", Short: "Go back to the roles of your login", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error {
		if err := restoreBase(); err != nil {
			return err
		}
		id, err := loadIdentity()
		if err != nil {
			return err
		}
		fmt.Printf("Back to roles %s.\n", strings.Join(id.Meta.Roles, ", "))
		return nil
	}}
	r.AddCommand(create, ls, assumeC, drop)
	return r
}

func comment(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func printRequests(reqs []state.AccessRequest) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSER\tROLES\tSTATE\tCREATED\tACCESS UNTIL\tREASON")
	now := time.Now()
	for _, r := range reqs {
		until := "-"
		if !r.AccessUntil.IsZero() {
			until = r.AccessUntil.Local().Format("01-02 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.User, strings.Join(r.Roles, ","), r.Status(now), r.Created.Local().Format("01-02 15:04"), until, r.Reason)
	}
	tw.Flush()
}

// userClient loads the identity and a client for the home proxy.
func userClient() (*creds.Identity, *authapi.Client, error) {
	id, err := loadIdentity()
	if err != nil {
		return nil, nil, err
	}
	cl, err := proxyClient(id)
	if err != nil {
		return nil, nil, err
	}
	return id, cl, nil
}

func baseDir() string { return filepath.Join(home(), "base") }

// assume has certificates issued with the roles of approved requests, and
// keeps the login's certificates aside in baseDir the first time.
func assume(ctx context.Context, id *creds.Identity, cl *authapi.Client, reqs []string) error {
	k, err := id.Keys()
	if err != nil {
		return err
	}
	// Requests assumed already stay: roles add up.
	all := append([]string(nil), id.Meta.Requests...)
	for _, r := range reqs {
		if !slices.Contains(all, r) {
			all = append(all, r)
		}
	}
	c, err := cl.Reissue(ctx, authapi.ReissueRequest{SSHPublic: k.SSHPublic(), TLSPublic: k.TLSPublic(), Requests: all})
	if err != nil {
		return fmt.Errorf("assume: %w", err)
	}
	if len(id.Meta.Requests) == 0 {
		if err := copyIdentity(home(), baseDir()); err != nil {
			return fmt.Errorf("keep the login's certificates aside: %w", err)
		}
	}
	if err := creds.Save(home(), k, c, creds.Meta{Kind: id.Meta.Kind, Proxy: id.Meta.Proxy, CAPin: id.Meta.CAPin}); err != nil {
		return err
	}
	fmt.Printf("Now holding roles %s until %s (jg request drop goes back to %s).\n", strings.Join(c.Roles, ", "), c.Expires.Local().Format("2006-01-02 15:04 MST"), strings.Join(id.Meta.Roles, ", "))
	return nil
}

// restoreBase puts the login's certificates back.
func restoreBase() error {
	if _, err := os.Stat(filepath.Join(baseDir(), "identity.json")); err != nil {
		return errors.New("no certificates from before an access request are kept: you hold your login's roles (or run jg login)")
	}
	if err := copyIdentity(baseDir(), home()); err != nil {
		return err
	}
	return os.RemoveAll(baseDir())
}

// copyIdentity copies the identity files of one directory into another.
func copyIdentity(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	for _, f := range creds.Files {
		b, err := os.ReadFile(filepath.Join(from, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		st, err := os.Stat(filepath.Join(from, f))
		if err != nil {
			return err
		}
		tmp := filepath.Join(to, f+".tmp")
		if err := os.WriteFile(tmp, b, st.Mode().Perm()); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(to, f)); err != nil {
			return err
		}
	}
	return nil
}

// reassume takes up again, on the login's certificates, the requests of
// reqs whose access has not ended: certificates carrying several requests
// end with the first of them, and the others must not end with it. It
// returns the identity to use (base when nothing is taken up).
func reassume(base *creds.Identity, reqs []string) *creds.Identity {
	cl, err := proxyClient(base)
	if err != nil {
		return base
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	mine, err := cl.MyAccessRequests(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "jg: could not check your other access requests: %v\n", err)
		return base
	}
	var live []string
	for _, r := range mine {
		if slices.Contains(reqs, r.ID) && r.Status(time.Now()) == state.RequestApproved && time.Until(r.AccessUntil) > 10*time.Second {
			live = append(live, r.ID)
		}
	}
	if len(live) == 0 {
		return base
	}
	if err := assume(ctx, base, cl, live); err != nil {
		fmt.Fprintf(os.Stderr, "jg: could not take up requests %s again: %v\n", strings.Join(live, ", "), err)
		return base
	}
	if id, err := creds.Load(home()); err == nil {
		return id
	}
	return base
}
