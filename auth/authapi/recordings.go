package authapi

// Session recordings. A node records each shell and exec session
// (node/recording, asciicast v2) and uploads it, once the session has
// ended, through a proxy to an auth server, which keeps it in its own
// store: recordings are not replicated through raft (they are large). Any
// auth server lists and serves them all: it asks the other auth servers
// for theirs.

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/node/recording"
)

// HeaderRecording carries a recording's recording.Meta (JSON, base64) on an
// upload.
const HeaderRecording = "Jumpgate-Recording"

// MaxRecordingBytes bounds one uploaded recording.
const MaxRecordingBytes = 256 << 20

// RecordingInfo is a recording as listings show it: its metadata and the
// auth server that holds it.
type RecordingInfo struct {
	recording.Meta
	Server string `json:"server"`
}

const recordingsPrefix = "/v1/recordings/"

// uploadRecording stores a recording a node uploaded through a proxy.
func (s *Server) uploadRecording(w http.ResponseWriter, r *http.Request, proxy identity.Identity) {
	if s.cfg.Recordings == nil {
		WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("auth server %s keeps no recordings", s.cfg.ID))
		return
	}
	node, _, err := s.forwardedCert(r, identity.KindNode)
	if err != nil {
		WriteError(w, http.StatusUnauthorized, err.Error())
		return
	}
	raw, err := base64.StdEncoding.DecodeString(r.Header.Get(HeaderRecording))
	var m recording.Meta
	if err != nil || json.Unmarshal(raw, &m) != nil {
		WriteError(w, http.StatusBadRequest, "malformed or missing "+HeaderRecording+" header")
		return
	}
	if m.Node != node.Name || m.Session != r.PathValue("session") {
		WriteError(w, http.StatusForbidden, fmt.Sprintf("node %s may upload only its own recordings, under their own session id", node.Name))
		return
	}
	stored, err := s.cfg.Recordings.Put(m, r.Body, MaxRecordingBytes)
	if err != nil {
		s.cfg.Logger.Warn("recording upload refused", "node", node.Name, "session", m.Session, "err", err)
		WriteError(w, http.StatusBadRequest, "recording "+m.Session+": "+err.Error())
		return
	}
	s.cfg.Audit.Emit(audit.Event{Type: audit.RecordingStored, Node: node.Name, Session: m.Session, User: m.User, Login: m.Login, Proxy: proxy.Name, BytesOut: stored.Bytes})
	WriteJSON(w, http.StatusOK, RecordingInfo{Meta: stored, Server: s.cfg.ID})
}

// forwardedCert reads and verifies a certificate a proxy forwards in
// HeaderUserCert: chained to the cluster's TLS CAs, for client
// authentication, of the given kind and of this cluster.
func (s *Server) forwardedCert(r *http.Request, kind identity.Kind) (identity.Identity, *x509.Certificate, error) {
	fail := func(format string, a ...any) (identity.Identity, *x509.Certificate, error) {
		msg := fmt.Sprintf(format, a...)
		if kind == identity.KindUser {
			msg += ": run jg login, and call through a proxy with jg"
		}
		return identity.Identity{}, nil, errors.New(msg)
	}
	raw := r.Header.Get(HeaderUserCert)
	der, err := base64.StdEncoding.DecodeString(raw)
	if raw == "" || err != nil {
		return fail("no %s certificate forwarded", kind)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fail("malformed forwarded %s certificate (%v)", kind, err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: s.tlsPool(), CurrentTime: s.cfg.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fail("the forwarded %s certificate is not valid for this cluster (%v)", kind, err)
	}
	id, err := identity.FromX509(cert)
	if err != nil {
		return identity.Identity{}, nil, err
	}
	if id.Kind != kind || id.Cluster != s.cfg.Store.Cluster() {
		return fail("the forwarded certificate is for %s, want a %s of cluster %s", id, kind, s.cfg.Store.Cluster())
	}
	return id, cert, nil
}

func (s *Server) tlsPool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range s.cfg.Store.CAs().TLS {
		if ca, err := x509.ParseCertificate(c); err == nil {
			pool.AddCert(ca)
		}
	}
	return pool
}

// localRecordings lists this server's recordings.
func (s *Server) localRecordings() ([]RecordingInfo, error) {
	if s.cfg.Recordings == nil {
		return nil, nil
	}
	ms, err := s.cfg.Recordings.List()
	if err != nil {
		return nil, err
	}
	out := make([]RecordingInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, RecordingInfo{Meta: m, Server: s.cfg.ID})
	}
	return out, nil
}

// otherAuthServers returns the API addresses of the other auth servers.
func (s *Server) otherAuthServers() map[string]string {
	out := map[string]string{}
	for _, a := range s.cfg.Store.AuthServers() {
		if a.ID != s.cfg.ID && a.APIAddr != "" {
			out[a.ID] = a.APIAddr
		}
	}
	return out
}

// allRecordings lists the recordings of every auth server, with the names
// of those that did not answer.
func (s *Server) allRecordings(ctx context.Context) ([]RecordingInfo, []string) {
	out, err := s.localRecordings()
	var missing []string
	if err != nil {
		s.cfg.Logger.Warn("list recordings", "err", err)
		missing = append(missing, s.cfg.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, addr := range s.otherAuthServers() {
		wg.Go(func() {
			var theirs []RecordingInfo
			c, err := s.peerClient(addr)
			if err == nil {
				err = c.do(ctx, "GET", "/v1/internal/recordings", nil, &theirs)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				missing = append(missing, id)
				return
			}
			out = append(out, theirs...)
		})
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Start.Equal(out[j].Start) {
			return out[i].Start.Before(out[j].Start)
		}
		return out[i].Session < out[j].Session
	})
	sort.Strings(missing)
	return out, missing
}

// RecordingList is a listing, with the auth servers that could not be asked.
type RecordingList struct {
	Recordings []RecordingInfo `json:"recordings"`
	Missing    []string        `json:"missing,omitempty"`
}

func (s *Server) internalRecordings(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	out, err := s.localRecordings()
	if err != nil {
		WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	WriteJSON(w, http.StatusOK, orEmpty(out))
}

func (s *Server) internalRecording(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	s.serveLocalRecording(w, r.PathValue("session"))
}

func (s *Server) serveLocalRecording(w http.ResponseWriter, session string) bool {
	if s.cfg.Recordings == nil {
		WriteError(w, http.StatusNotFound, "no recording "+session)
		return false
	}
	rc, m, err := s.cfg.Recordings.Open(session)
	if errors.Is(err, recording.ErrNotFound) {
		WriteError(w, http.StatusNotFound, "no recording "+session)
		return false
	}
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return false
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", m.File))
	w.WriteHeader(http.StatusOK)
	io.Copy(w, rc) //nolint:errcheck // the reader went away
	return true
}

// adminRecordings lists every recording (jgctl sessions ls).
func (s *Server) adminRecordings(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	all, missing := s.allRecordings(r.Context())
	WriteJSON(w, http.StatusOK, RecordingList{Recordings: filterRecordings(all, r.URL.Query()), Missing: missing})
}

// userRecordings lists the recordings a user may replay: their own, or all
// with review_sessions.
func (s *Server) userRecordings(w http.ResponseWriter, r *http.Request, user, _ identity.Identity) {
	all, missing := s.allRecordings(r.Context())
	if !identity.CanReviewSessions(user, s.cfg.Store.Role) {
		own := all[:0]
		for _, rec := range all {
			if rec.User == user.Name {
				own = append(own, rec)
			}
		}
		all = own
	}
	WriteJSON(w, http.StatusOK, RecordingList{Recordings: filterRecordings(all, r.URL.Query()), Missing: missing})
}

func filterRecordings(all []RecordingInfo, q url.Values) []RecordingInfo {
	out := []RecordingInfo{}
	for _, rec := range all {
		if (q.Get("user") == "" || rec.User == q.Get("user")) && (q.Get("node") == "" || rec.Node == q.Get("node")) {
			out = append(out, rec)
		}
	}
	return out
}

// fetchRecording serves a recording from this server or the one that
// holds it, after allowed says the caller may see it.
func (s *Server) fetchRecording(w http.ResponseWriter, r *http.Request, allowed func(recording.Meta) bool) {
	session := r.PathValue("session")
	if s.cfg.Recordings != nil {
		if m, err := s.cfg.Recordings.Get(session); err == nil {
			if !allowed(m) {
				WriteError(w, http.StatusForbidden, fmt.Sprintf("recording %s is another user's session: replaying it needs a role with review_sessions", session))
				return
			}
			s.serveLocalRecording(w, session)
			return
		}
	}
	all, missing := s.allRecordings(r.Context())
	for _, rec := range all {
		if rec.Session != session || rec.Server == s.cfg.ID {
			continue
		}
		if !allowed(rec.Meta) {
			WriteError(w, http.StatusForbidden, fmt.Sprintf("recording %s is another user's session: replaying it needs a role with review_sessions", session))
			return
		}
		addr := s.otherAuthServers()[rec.Server]
		c, err := s.peerClient(addr)
		if err != nil {
			WriteError(w, http.StatusBadGateway, err.Error())
			return
		}
		resp, err := c.rawGet(r.Context(), "/v1/internal/recordings/"+url.PathEscape(session))
		if err != nil {
			WriteError(w, http.StatusBadGateway, fmt.Sprintf("auth server %s holds recording %s and did not serve it: %v", rec.Server, session, err))
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", "application/x-asciicast")
		w.WriteHeader(http.StatusOK)
		io.Copy(w, resp.Body) //nolint:errcheck
		return
	}
	msg := "no recording " + session
	if len(missing) > 0 {
		msg += fmt.Sprintf(" (auth servers %s did not answer: it may be theirs)", strings.Join(missing, ", "))
	}
	WriteError(w, http.StatusNotFound, msg)
}

func (s *Server) userRecording(w http.ResponseWriter, r *http.Request, user, _ identity.Identity) {
	review := identity.CanReviewSessions(user, s.cfg.Store.Role)
	s.fetchRecording(w, r, func(m recording.Meta) bool { return review || m.User == user.Name })
}

func (s *Server) adminRecording(w http.ResponseWriter, r *http.Request, _ identity.Identity) {
	s.fetchRecording(w, r, func(recording.Meta) bool { return true })
}

// rawGet GETs path from the current server and returns the open answer.
func (c *Client) rawGet(ctx context.Context, path string) (*http.Response, error) {
	var resp *http.Response
	var err error
	c.each(func(base string) bool {
		req, rerr := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		if rerr == nil {
			rerr = c.prove(req, nil)
		}
		if rerr != nil {
			err = rerr
			return false
		}
		resp, err = c.hc.Do(req)
		if err != nil {
			err = describeTransportError(base, err)
			return failover(err) && ctx.Err() == nil
		}
		if resp.StatusCode != http.StatusOK {
			err = decodeError(resp)
			resp.Body.Close()
			resp = nil
			return failover(err) && ctx.Err() == nil
		}
		return false
	})
	return resp, err
}

// Recordings lists every recording (admins: jgctl sessions ls), or the
// ones the user may replay (users, through a proxy: /v1/user/recordings).
func (c *Client) Recordings(ctx context.Context, user bool, q url.Values) (*RecordingList, error) {
	p := "/v1/recordings"
	if user {
		p = "/v1/user/recordings"
	}
	var out RecordingList
	return &out, c.do(ctx, "GET", p+"?"+q.Encode(), nil, &out)
}

// Recording opens a recording (asciicast v2) for reading.
func (c *Client) Recording(ctx context.Context, user bool, session string) (io.ReadCloser, error) {
	p := "/v1/recordings/"
	if user {
		p = "/v1/user/recordings/"
	}
	resp, err := c.rawGet(ctx, p+url.PathEscape(session))
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// UploadRecording sends a finished recording (nodes, to a proxy). The
// body is read once: a failure is retried by the caller.
func (c *Client) UploadRecording(ctx context.Context, m recording.Meta, body io.Reader) error {
	mj, err := json.Marshal(m)
	if err != nil {
		return err
	}
	resp, err := c.putRecording(ctx, m.Session, http.Header{HeaderRecording: {base64.StdEncoding.EncodeToString(mj)}}, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	return nil
}

// ForwardUpload passes a node's recording upload on to auth (proxies).
func (c *Client) ForwardUpload(ctx context.Context, session string, nodeCert []byte, meta string, body io.Reader) (*http.Response, error) {
	return c.putRecording(ctx, session, http.Header{HeaderUserCert: {base64.StdEncoding.EncodeToString(nodeCert)}, HeaderRecording: {meta}}, body)
}

// putRecording PUTs a recording to the current server, once: a streamed
// body cannot be sent again, so a failure moves the client to the next
// server for the caller's retry instead.
func (c *Client) putRecording(ctx context.Context, session string, hdr http.Header, body io.Reader) (*http.Response, error) {
	base := c.bases[int(c.cur.Load())]
	req, err := http.NewRequestWithContext(ctx, "PUT", base+recordingsPrefix+url.PathEscape(session), body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/x-asciicast")
	resp, err := c.hc.Do(req)
	if err != nil {
		c.cur.Store((c.cur.Load() + 1) % int32(len(c.bases)))
		return nil, describeTransportError(base, err)
	}
	return resp, nil
}

// PruneRecordings removes this server's recordings that ended before
// before, and says how many it removed.
func (s *Server) PruneRecordings(before time.Time) (int, error) {
	if s.cfg.Recordings == nil {
		return 0, nil
	}
	all, err := s.cfg.Recordings.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range all {
		if m.End.IsZero() || !m.End.Before(before) {
			continue
		}
		if err := s.cfg.Recordings.Remove(m.Session); err != nil {
			return n, fmt.Errorf("remove recording %s: %w", m.Session, err)
		}
		n++
	}
	if n > 0 {
		// Removals leave tombstones in the index: rewrite it.
		if _, _, err := s.cfg.Recordings.Compact(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// KeepRecordings runs PruneRecordings every hour with a cutoff of
// retention ago, until ctx ends.
func (s *Server) KeepRecordings(ctx context.Context, retention time.Duration) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := s.PruneRecordings(s.cfg.Now().Add(-retention)); err != nil {
			s.cfg.Logger.Warn("remove old session recordings", "err", err)
		} else if n > 0 {
			s.cfg.Logger.Info("removed old session recordings", "count", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
