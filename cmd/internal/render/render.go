// Package render formats what jg and jgctl both print.
package render

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
)

// Recordings writes a table of session recordings.
func Recordings(w io.Writer, recs []authapi.RecordingInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tUSER\tLOGIN\tNODE\tSTART\tDURATION\tSIZE\tCOMMAND")
	for _, r := range recs {
		dur := "running"
		if !r.End.IsZero() {
			dur = r.End.Sub(r.Start).Round(time.Second).String()
		}
		cmd := r.Command
		if cmd == "" {
			cmd = "(shell)"
		}
		if r.Truncated {
			cmd += " [truncated]"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Session, r.User, r.Login, r.Node, r.Start.Local().Format(time.DateTime), dur, Bytes(r.Bytes), cmd)
	}
	return tw.Flush()
}

// Bytes renders a size: "512 B", "3.2 KiB", "1.5 MiB".
func Bytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
