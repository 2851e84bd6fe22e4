package sshd

import (
	"fmt"
	"io"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/node/recording"
)

// startRecording starts recording a shell or exec session when the node
// records (Config.Recordings). A recording that cannot start refuses the
// session: an unrecorded session on a node that promises recordings is
// what an audit must never find.
func (s *session) startRecording(kind, command string) error {
	store := s.c.srv.cfg.Recordings
	if store == nil || kind == "sftp" || s.rec != nil {
		return nil
	}
	now := s.c.srv.cfg.Now()
	cols, rows := 80, 24
	env := map[string]string{}
	if s.pty != nil {
		cols, rows = int(s.size.Cols), int(s.size.Rows)
		env["TERM"] = s.pty.Term
	}
	m := recording.Meta{Session: s.id, User: s.c.ident.Name, Login: s.c.sc.User(), Node: s.c.srv.cfg.NodeID, Command: command, Start: now.UTC(), Cols: cols, Rows: rows}
	h := recording.Header{Width: cols, Height: rows, Timestamp: now.Unix(), Command: command, Env: env,
		Title: fmt.Sprintf("%s as %s on %s", s.c.ident.Name, s.c.sc.User(), s.c.srv.cfg.NodeID)}
	rec, err := store.Create(m, h, recording.WriterOptions{Limit: s.c.srv.cfg.RecordingLimit})
	if err != nil {
		s.log.Error("cannot record session: refusing it", "err", err)
		return fmt.Errorf("node %s records every session and cannot record this one now (%v): ask an administrator to check the node's disk", s.c.srv.cfg.NodeID, err)
	}
	s.rec = rec
	return nil
}

// recorded returns w, writing through to the recording too.
func (s *session) recorded(w io.Writer) io.Writer {
	if s.rec == nil {
		return w
	}
	return recTee{w: w, rec: s.rec}
}

// recTee writes to the client, then records what was written. A recording
// that fails (a full disk) never breaks the session: the writer records
// the error and the end of the recording says so.
type recTee struct {
	w   io.Writer
	rec *recording.Recording
}

func (t recTee) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if n > 0 {
		t.rec.Output(p[:n])
	}
	return n, err
}

// finishRecording closes the recording once the session has ended and
// hands it to Config.OnRecording (which uploads it).
func (s *session) finishRecording() {
	if s.rec == nil {
		return
	}
	m, err := s.rec.Finish(time.Now())
	if err != nil {
		s.log.Error("finish session recording", "err", err)
	}
	if s.rec.Truncated() {
		s.log.Warn("session recording truncated at its size limit", "limit", s.c.srv.cfg.RecordingLimit)
	}
	if f := s.c.srv.cfg.OnRecording; f != nil && err == nil {
		f(m)
	}
}

// sftpAuditor returns an auditor that writes one audit event per SFTP
// operation of the session (audit.SFTPOp).
func (s *session) sftpAuditor() *sftpAuditor {
	return newSFTPAuditor(func(op sftpOp) {
		e := s.event(audit.SFTPOp)
		e.Command, e.Path, e.Path2 = op.Op, op.Path, op.Path2
		if op.Flags != "" {
			e.Command = op.Op + ":" + op.Flags
		}
		s.c.srv.cfg.Audit.Emit(e)
	})
}
