package ingress

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

// UserForwarder is implemented by an Upstream that can make users' own
// calls on their behalf (*authapi.Client does).
type UserForwarder interface {
	ForwardUser(ctx context.Context, method, pathQuery string, userCert, body []byte, proof http.Header) (*http.Response, error)
}

// maxUserBody bounds what a user may send through /v1/user/.
const maxUserBody = 1 << 20

// userForward forwards a user's own call (/v1/user/...: access requests,
// MFA, per-session certificates, recordings) to the auth server with the
// user's verified certificate, which the auth server checks again.
func (s *Server) userForward(w http.ResponseWriter, r *http.Request) {
	user, ok := s.caller(w, r, identity.KindUser)
	if !ok {
		return
	}
	fw, ok := s.cfg.Upstream.(UserForwarder)
	if !ok {
		authapi.WriteError(w, http.StatusNotImplemented, "this proxy cannot forward users' calls to the auth server")
		return
	}
	if s.cfg.Cache.CheckLocks(identity.LockTarget{User: user.Name, Roles: user.Roles}, time.Now()) != nil {
		authapi.WriteError(w, http.StatusForbidden, "access denied: you are locked out")
		return
	}
	var body []byte
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxUserBody))
		if err != nil {
			authapi.WriteError(w, http.StatusRequestEntityTooLarge, "request body too large")
			return
		}
		body = b
	}
	cert := r.TLS.VerifiedChains[0][0]
	resp, err := fw.ForwardUser(r.Context(), r.Method, r.URL.RequestURI(), cert.Raw, body, r.Header)
	if err != nil {
		var ae *authapi.APIError
		if errors.As(err, &ae) {
			authapi.WriteError(w, ae.Code, ae.Message)
			return
		}
		s.cfg.Logger.Warn("forwarding a user's call to auth failed", "user", user.Name, "path", r.URL.Path, "err", err)
		authapi.WriteError(w, http.StatusBadGateway, "the auth server could not be reached: try again in a moment")
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Content-Length", "Content-Disposition"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body) //nolint:errcheck // the user went away
}

// UploadForwarder is implemented by an Upstream that passes nodes'
// recording uploads on (*authapi.Client does).
type UploadForwarder interface {
	ForwardUpload(ctx context.Context, session string, nodeCert []byte, meta string, body io.Reader) (*http.Response, error)
}

// uploadForward streams a node's session recording to the auth server.
func (s *Server) uploadForward(w http.ResponseWriter, r *http.Request) {
	node, ok := s.caller(w, r, identity.KindNode)
	if !ok {
		return
	}
	fw, ok := s.cfg.Upstream.(UploadForwarder)
	if !ok {
		authapi.WriteError(w, http.StatusNotImplemented, "this proxy cannot forward recordings to the auth server")
		return
	}
	resp, err := fw.ForwardUpload(r.Context(), r.PathValue("session"), r.TLS.VerifiedChains[0][0].Raw, r.Header.Get(authapi.HeaderRecording), r.Body)
	if err != nil {
		s.cfg.Logger.Warn("forwarding a recording to auth failed", "node", node.Name, "session", r.PathValue("session"), "err", err)
		authapi.WriteError(w, http.StatusBadGateway, "the auth server could not be reached: the node retries later")
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body) //nolint:errcheck
}
