package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

func caCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "ca", Short: "The cluster's certificate authorities and their rotation"}
	status := &cobra.Command{Use: "status", Short: "Show the CA rotation's phase and each auth server's keys", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			st, err := c.CAStatus(ctx)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(st)
			}
			printCAStatus(st)
			return nil
		})}
	var phase string
	var auto bool
	var grace, timeout time.Duration
	rotate := &cobra.Command{Use: "rotate (--phase=PHASE | --auto [--grace=12h])", Short: "Rotate every CA key: standby → init → update_clients → update_servers → standby, or roll back",
		Long: `Rotate the CA keys of every auth server without anyone losing access.

Phases:
  init            every auth server makes new keys (in its keystore or HSM); proxies
                  and nodes start trusting them, users with their next login
  update_clients  user certificates are signed with the new keys
  update_servers  node, proxy and auth certificates are signed with the new keys;
                  nodes and proxies renew theirs
  standby         done: the old keys are no longer trusted
  rollback        from any phase before the end: back to the old keys; then standby

Manual: jgctl ca rotate --phase=init, then update_clients, update_servers, standby.
Between init and update_servers, every user should log in again (their clients
learn the new keys at login): wait at least the longest user certificate
lifetime (12h by default). --auto runs all phases, --grace apart (default 12h),
continues a rotation already under way, and rolls back if a step fails.`,
		Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			if auto == (phase != "") {
				return errors.New("give either --phase=PHASE or --auto")
			}
			if !auto {
				st, err := c.RotateCA(ctx, authapi.RotateRequest{Phase: phase, Mode: "manual"})
				if err != nil {
					return err
				}
				printCAStatus(st)
				return nil
			}
			return autoRotate(ctx, c, grace, timeout)
		})}
	rotate.Flags().StringVar(&phase, "phase", "", "move to this phase: init, update_clients, update_servers, standby, rollback")
	rotate.Flags().BoolVar(&auto, "auto", false, "run every phase in turn, --grace apart, rolling back on failure")
	rotate.Flags().DurationVar(&grace, "grace", 12*time.Hour, "--auto: time in each phase (at least the longest user certificate lifetime)")
	rotate.Flags().DurationVar(&timeout, "publish-timeout", 2*time.Minute, "--auto: how long auth servers may take to make their new keys")
	c.AddCommand(status, rotate)
	return c
}

func printCAStatus(st *authapi.CAStatus) {
	r := st.Rotation
	fmt.Printf("Phase:      %s", st.PhaseName)
	if !r.PhaseSince.IsZero() {
		fmt.Printf(" (since %s)", r.PhaseSince.Local().Format(time.DateTime))
	}
	fmt.Println()
	fmt.Printf("Generation: %d", r.Current)
	if r.Next != 0 {
		fmt.Printf(" → %d (%s rotation started %s)", r.Next, r.Mode, r.Started.Local().Format(time.DateTime))
	}
	fmt.Println()
	if len(st.Next) > 0 {
		fmt.Printf("Next:       %s\n", strings.Join(st.Next, " or "))
	}
	fmt.Printf("CA pins:    %s\n", strings.Join(st.Pins, " "))
	rows := make([][]string, 0, len(st.Servers))
	for _, s := range st.Servers {
		pub := "-"
		if r.Next != 0 {
			pub = map[bool]string{true: "yes", false: "not yet"}[s.Published]
		}
		rows = append(rows, []string{s.ID, strconv.Itoa(s.Generation), pub, map[bool]string{true: "all", false: "users"}[s.SignsServerCerts]})
	}
	table("AUTH SERVER\tGENERATION\tNEW KEYS\tSIGNS", rows) //nolint:errcheck
}

// autoRotate runs the rotation to the end from wherever it is, grace
// apart, and rolls back if a step fails.
func autoRotate(ctx context.Context, c *authapi.Client, grace, publishTimeout time.Duration) error {
	step := func(phase string) (*authapi.CAStatus, error) {
		st, err := c.RotateCA(ctx, authapi.RotateRequest{Phase: phase, Mode: "auto", Grace: identity.Duration(grace)})
		if err == nil {
			fmt.Printf("%s  phase %s\n", time.Now().Format(time.TimeOnly), st.PhaseName)
		}
		return st, err
	}
	wait := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	st, err := c.CAStatus(ctx)
	if err != nil {
		return err
	}
	if st.PhaseName == "standby" {
		if st, err = step("init"); err != nil {
			return err
		}
	}
	rollback := func(cause error) error {
		fmt.Printf("%s  %v: rolling back\n", time.Now().Format(time.TimeOnly), cause)
		if _, err := step("rollback"); err != nil {
			return fmt.Errorf("%w; and the rollback failed: %v (run jgctl ca rotate --phase=rollback)", cause, err)
		}
		if _, err := step("standby"); err != nil {
			return fmt.Errorf("%w; rolled back, but the return to standby failed: %v (run jgctl ca rotate --phase=standby)", cause, err)
		}
		return fmt.Errorf("CA rotation rolled back: %w", cause)
	}
	for {
		switch st.PhaseName {
		case "init":
			deadline := time.Now().Add(publishTimeout)
			for !allPublished(st) {
				if time.Now().After(deadline) {
					return rollback(fmt.Errorf("auth servers %s made no new keys in %s", strings.Join(unpublished(st), ", "), publishTimeout))
				}
				if err := wait(500 * time.Millisecond); err != nil {
					return err
				}
				if st, err = c.CAStatus(ctx); err != nil {
					return err
				}
			}
			fmt.Printf("%s  every auth server has its new keys; update_clients in %s\n", time.Now().Format(time.TimeOnly), grace)
			if err := wait(grace); err != nil {
				return err
			}
			if st, err = step("update_clients"); err != nil {
				return rollback(err)
			}
		case "update_clients":
			if err := wait(grace); err != nil {
				return err
			}
			if st, err = step("update_servers"); err != nil {
				return rollback(err)
			}
		case "update_servers":
			if err := wait(grace); err != nil {
				return err
			}
			if st, err = step("standby"); err != nil {
				return rollback(err)
			}
			fmt.Printf("%s  rotation complete: generation %d\n", time.Now().Format(time.TimeOnly), st.Rotation.Current)
			return nil
		case "rollback":
			_, err := step("standby")
			return err
		default:
			return nil
		}
	}
}

func allPublished(st *authapi.CAStatus) bool { return len(unpublished(st)) == 0 }

func unpublished(st *authapi.CAStatus) []string {
	var out []string
	for _, s := range st.Servers {
		if !s.Published {
			out = append(out, s.ID)
		}
	}
	return out
}
