package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
)

// copyBufSize is the size of the pooled buffers that pipe streams to nodes.
const copyBufSize = 64 << 10

// handleStream serves one stream a peer opened: read its DialRequest, ask
// the Handler for the node, answer, and pipe bytes until both directions
// end. The stream was counted by runConn; it is uncounted here.
func (m *Mesh) handleStream(c *peerConn, st *quic.Stream) {
	defer m.wg.Done()
	defer m.releaseStream(c)
	log := m.log.With("peer", c.id, "remote", c.qc.RemoteAddr().String())
	outcome := m.serveStream(c, st, log)
	m.metrics.acceptedStreams.WithLabelValues(outcome).Inc()
}

func (m *Mesh) serveStream(c *peerConn, st *quic.Stream, log *slog.Logger) string {
	st.SetReadDeadline(time.Now().Add(m.cfg.RequestTimeout))
	t, body, err := readFrame(st)
	if err != nil {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			log.Warn("reset a peer stream that sent no complete dial request in time", "timeout", m.cfg.RequestTimeout)
			st.CancelRead(streamTimeout)
			st.CancelWrite(streamTimeout)
			return outcomeTimeout
		case errors.Is(err, errFrameTooLarge):
			return m.refuse(st, log, DialRequest{}, CodeBadRequest, err.Error())
		}
		// The dialer gave up (reset or closed the stream) before asking.
		log.Debug("peer stream ended before its dial request", "err", err)
		st.CancelRead(streamCanceled)
		st.CancelWrite(streamCanceled)
		return outcomeCanceled
	}
	st.SetReadDeadline(time.Time{})
	req, err := decodeRequest(t, body)
	switch {
	case errors.Is(err, errNewerVersion):
		return m.refuse(st, log, req, CodeVersion, err.Error())
	case err != nil:
		return m.refuse(st, log, req, CodeBadRequest, err.Error())
	case slices.Contains(req.Hops, m.cfg.ID):
		return m.refuse(st, log, req, CodeLoop, fmt.Sprintf("the dial has already passed through proxy %s (hops %v)", m.cfg.ID, req.Hops))
	case m.runCtx.Err() != nil:
		return m.refuse(st, log, req, CodeUnavailable, m.shutdownReason()+": dial through another proxy")
	}
	log = log.With("node", req.Node, "user", req.User, "client_addr", req.ClientAddr)

	// The Handler's dial ends when the dialer gives up (it cancels the
	// stream, which ends st.Context()), at DialTimeout, or at Close.
	hctx, cancel := context.WithTimeout(m.serveCtx, m.cfg.DialTimeout)
	stopAbandon := context.AfterFunc(st.Context(), cancel)
	nc, err := m.cfg.Handler.HandleDial(hctx, c.id, req)
	stopAbandon()
	cancel()
	if err == nil && nc == nil {
		err = errors.New("the handler returned no connection and no error")
	}
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) && knownCode(pe.Code) {
			return m.refuse(st, log, req, pe.Code, pe.Error())
		}
		return m.refuse(st, log, req, CodeUnavailable, fmt.Sprintf("proxy %s could not connect to node %s: %v", m.cfg.ID, req.Node, err))
	}
	if st.Context().Err() != nil {
		nc.Close()
		st.CancelRead(streamCanceled)
		log.Debug("peer gave up on the dial before the node answered")
		return outcomeCanceled
	}
	if err := m.respond(st, response{Version: req.Version, OK: true}); err != nil {
		nc.Close()
		st.CancelRead(streamCanceled)
		st.CancelWrite(streamCanceled)
		log.Info("lost a peer stream while answering its dial", "err", err)
		return outcomeCanceled
	}
	log.Debug("peer dial connected")
	m.pipe(c.qc, st, nc)
	return outcomeOK
}

// refuse answers a dial with code and msg, logs it, and drops the stream.
func (m *Mesh) refuse(st *quic.Stream, log *slog.Logger, req DialRequest, code, msg string) string {
	level := slog.LevelInfo
	if code == CodeBadRequest || code == CodeLoop {
		level = slog.LevelWarn // a bug in a peer or in the directory
	}
	if req.Node != "" {
		log = log.With("node", req.Node, "user", req.User)
	}
	log.Log(context.Background(), level, "refused peer dial", "code", code, "reason", msg)
	m.respond(st, response{Version: Version, Code: code, Message: msg})
	st.Close()
	st.CancelRead(streamRefused)
	return code
}

// respond writes the DialResponse, bounded by RequestTimeout.
func (m *Mesh) respond(st *quic.Stream, resp response) error {
	frame, err := encodeResponse(resp)
	if err != nil {
		return err
	}
	st.SetWriteDeadline(time.Now().Add(m.cfg.RequestTimeout))
	_, err = st.Write(frame)
	st.SetWriteDeadline(time.Time{})
	return err
}

// pipe copies bytes between the stream and the node's conn until both
// directions end. A clean end of one direction is passed on as a half-close
// (FIN on the stream, CloseWrite on the node's conn if it has one); an error
// in either aborts both, and so does the end of the connection.
func (m *Mesh) pipe(qc *quic.Conn, st *quic.Stream, nc net.Conn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			st.CancelRead(streamCanceled)
			st.CancelWrite(streamCanceled)
			nc.Close()
		})
	}
	// Close ends the connection (runConn closes it, with a reason the
	// dialer sees), and that ends the pipe: the node's conn is closed to
	// unblock its reader. Aborting on serveCtx directly would race the
	// stream resets against the reason.
	stop := context.AfterFunc(qc.Context(), abort)
	defer stop()

	done := make(chan struct{})
	m.wg.Add(1) // handleStream's goroutine is counted: no race with Wait
	go func() {
		defer m.wg.Done()
		defer close(done)
		if err := m.copy(nc, st, m.metrics.bytesIn); err != nil {
			abort()
			return
		}
		if cw, ok := nc.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	if err := m.copy(st, nc, m.metrics.bytesOut); err != nil {
		abort()
	} else {
		st.Close()
	}
	<-done
	nc.Close()
	st.CancelRead(streamClosed) // a no-op unless the dialer still sends
}

// copy copies src to dst through a pooled buffer, counting the bytes.
// Wrapping both sides hides ReaderFrom and WriterTo, which would bypass the
// buffer (and the count).
func (m *Mesh) copy(dst io.Writer, src io.Reader, count prometheus.Counter) error {
	bp := m.bufs.Get().(*[]byte)
	defer m.bufs.Put(bp)
	_, err := io.CopyBuffer(countingWriter{dst, count}, struct{ io.Reader }{src}, *bp)
	return err
}

type countingWriter struct {
	w     io.Writer
	count prometheus.Counter
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.count.Add(float64(n))
	return n, err
}
