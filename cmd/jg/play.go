package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"jumpgate.dev/jumpgate/cmd/internal/render"
	"jumpgate.dev/jumpgate/node/recording"
)

// playCmd replays a session recording in the terminal. Users replay their
// own sessions; roles with review_sessions replay anyone's.
func playCmd() *cobra.Command {
	var speed float64
	var maxIdle time.Duration
	var raw, list bool
	var user, node string
	c := &cobra.Command{Use: "play SESSION | --list", Short: "Replay a recorded session in the terminal (asciicast v2)", Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, cl, err := userClient()
			if err != nil {
				return err
			}
			defer cl.Close()
			if list || len(args) == 0 {
				q := url.Values{}
				if user != "" {
					q.Set("user", user)
				}
				if node != "" {
					q.Set("node", node)
				}
				l, err := cl.Recordings(cmd.Context(), true, q)
				if err != nil {
					return err
				}
				if len(l.Missing) > 0 {
					fmt.Fprintf(os.Stderr, "jg: auth servers %s did not answer: their recordings are not listed\n", strings.Join(l.Missing, ", "))
				}
				return render.Recordings(os.Stdout, l.Recordings)
			}
			rc, err := cl.Recording(cmd.Context(), true, args[0])
			if err != nil {
				return fmt.Errorf("play %s: %w", args[0], err)
			}
			defer rc.Close()
			if raw {
				_, err := io.Copy(os.Stdout, rc)
				return err
			}
			r, err := recording.NewReader(rc)
			if err != nil {
				return fmt.Errorf("recording %s: %w", args[0], err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			err = recording.Play(ctx, os.Stdout, r, recording.PlayOptions{Speed: speed, MaxIdle: maxIdle})
			if errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "\njg: replay stopped")
				return nil
			}
			return err
		}}
	c.Flags().Float64Var(&speed, "speed", 1, "replay speed (2 = twice as fast)")
	c.Flags().DurationVar(&maxIdle, "max-idle", 2*time.Second, "shorten pauses longer than this (-1s: never)")
	c.Flags().BoolVar(&raw, "raw", false, "write the asciicast v2 file instead of replaying it (for asciinema play, or a file)")
	c.Flags().BoolVar(&list, "list", false, "list the recordings you may replay")
	c.Flags().StringVar(&user, "user", "", "with --list: only this user's sessions")
	c.Flags().StringVar(&node, "node", "", "with --list: only sessions on this node")
	return c
}
