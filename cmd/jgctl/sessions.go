package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/cmd/internal/render"
	"jumpgate.dev/jumpgate/node/recording"
)

// sessionsCmd lists and fetches session recordings from every auth server.
func sessionsCmd(g *globals) *cobra.Command {
	s := &cobra.Command{Use: "sessions", Short: "Recorded sessions"}
	var user, node string
	ls := &cobra.Command{Use: "ls [--user=U] [--node=N]", Short: "List recorded sessions", Args: cobra.NoArgs,
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, _ []string) error {
			q := url.Values{}
			if user != "" {
				q.Set("user", user)
			}
			if node != "" {
				q.Set("node", node)
			}
			l, err := c.Recordings(ctx, false, q)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return g.printJSON(l)
			}
			if err := render.Recordings(os.Stdout, l.Recordings); err != nil {
				return err
			}
			if len(l.Missing) > 0 {
				fmt.Fprintf(os.Stderr, "jgctl: auth servers %s did not answer: their recordings are not listed\n", strings.Join(l.Missing, ", "))
			}
			return nil
		})}
	ls.Flags().StringVar(&user, "user", "", "only this user's sessions")
	ls.Flags().StringVar(&node, "node", "", "only sessions on this node")
	var out string
	get := &cobra.Command{Use: "get SESSION [-o FILE]", Short: "Write a recording (asciicast v2, for asciinema play or jg play)", Args: cobra.ExactArgs(1),
		RunE: withClient(g, func(ctx context.Context, c *authapi.Client, args []string) error {
			rc, err := c.Recording(ctx, false, args[0])
			if err != nil {
				return err
			}
			defer rc.Close()
			var w io.Writer = os.Stdout
			if out != "" && out != "-" {
				f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			// Check it while copying: a broken file should not pass quietly.
			pr, pw := io.Pipe()
			go func() {
				_, err := io.Copy(pw, rc)
				pw.CloseWithError(err)
			}()
			r, err := recording.NewReader(io.TeeReader(pr, w))
			if err != nil {
				return fmt.Errorf("recording %s: %w", args[0], err)
			}
			for {
				if _, err := r.Next(); err == io.EOF {
					return nil
				} else if err != nil {
					return fmt.Errorf("recording %s: %w", args[0], err)
				}
			}
		})}
	get.Flags().StringVarP(&out, "output", "o", "", "file to write (default stdout)")
	s.AddCommand(ls, get)
	return s
}
