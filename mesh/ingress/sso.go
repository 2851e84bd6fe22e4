// SSO login through the proxy (see auth/authapi/sso.go for the whole flow).
// The proxy's part: it adds its own callback URL to jg's start, so that
// the provider sends the browser back to the proxy the user started from;
// it relays the provider's redirect to auth and sends the browser on to
// jg's local listener; and it relays jg's request for the result.
//
//	POST /v1/sso/start     jg      → auth, with proxy_callback and client_addr added
//	GET  /v1/sso/callback  browser → auth (POST), then 302 to jg's listener
//	POST /v1/sso/result    jg      → auth
//
// None needs a client certificate: the user has none yet. The start is
// bound to jg's keys, the callback to the provider's state, the result to
// a one-time secret that only the browser's redirect carried.

package ingress

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"

	"jumpgate.dev/jumpgate/auth/authapi"
)

// SSOUpstream is the auth server's side of SSO login. It is separate from
// Upstream so that upstreams and fakes without SSO need not implement it:
// ingress looks for it on Config.Upstream, and without it the SSO routes
// say that this proxy cannot do SSO. Its three methods are the three steps
// of one flow.
type SSOUpstream interface {
	SSOStart(ctx context.Context, req authapi.SSOStartRequest) (*authapi.SSOStartResponse, error)
	SSOCallback(ctx context.Context, req authapi.SSOCallbackRequest) (*authapi.SSOCallbackResponse, error)
	SSOResult(ctx context.Context, req authapi.SSOResultRequest) (*authapi.Credentials, error)
}

var _ SSOUpstream = (*authapi.Client)(nil)

// ssoCallbackPath is where the provider sends the browser back.
const ssoCallbackPath = "/v1/sso/callback"

func (s *Server) ssoUpstream(w http.ResponseWriter) (SSOUpstream, bool) {
	up, ok := s.cfg.Upstream.(SSOUpstream)
	if !ok {
		authapi.WriteError(w, http.StatusNotImplemented, fmt.Sprintf("proxy %s cannot relay SSO logins: log in through another proxy, or with --user and a password", s.cfg.ProxyID))
	}
	return up, ok
}

func (s *Server) ssoStart(w http.ResponseWriter, r *http.Request) {
	up, ok := s.ssoUpstream(w)
	if !ok {
		return
	}
	var req authapi.SSOStartRequest
	if !readJSON(w, r, &req) {
		return
	}
	// The provider redirects the browser to this proxy, by the address it
	// is published under; without one (or with a wildcard listen address
	// standing in for it), by the address jg reached it at.
	addr := s.cfg.PublicAddr
	if h, _, err := net.SplitHostPort(addr); err != nil || h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified() {
		addr = r.Host
	}
	req.ProxyCallback = "https://" + addr + ssoCallbackPath
	req.ClientAddr = r.RemoteAddr
	resp, err := up.SSOStart(r.Context(), req)
	if err != nil {
		forwardError(w, err)
		return
	}
	authapi.WriteJSON(w, http.StatusOK, resp)
}

// ssoCallback serves the browser: a redirect to jg's listener, or a page
// that says what went wrong.
func (s *Server) ssoCallback(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer") // the URL holds the code
	up, ok := s.cfg.Upstream.(SSOUpstream)
	if !ok {
		ssoPage(w, http.StatusNotImplemented, "Login failed", fmt.Sprintf("Proxy %s cannot relay SSO logins.", s.cfg.ProxyID))
		return
	}
	q := r.URL.Query()
	if q.Get("state") == "" {
		ssoPage(w, http.StatusBadRequest, "Login failed", "This is not an answer from the SSO provider (it has no state). Run jg login --sso again.")
		return
	}
	resp, err := up.SSOCallback(r.Context(), authapi.SSOCallbackRequest{State: q.Get("state"), Code: q.Get("code"),
		Error: q.Get("error"), ErrorDescription: q.Get("error_description"), ClientAddr: r.RemoteAddr})
	if err != nil {
		code, msg := http.StatusBadGateway, "The auth server cannot be reached from this proxy: "+err.Error()
		var ae *authapi.APIError
		if errors.As(err, &ae) {
			code, msg = ae.Code, ae.Message
		}
		s.cfg.Logger.Info("SSO callback refused", "remote", r.RemoteAddr, "err", msg)
		ssoPage(w, code, "Login failed", msg)
		return
	}
	http.Redirect(w, r, resp.Redirect, http.StatusFound)
}

func (s *Server) ssoResult(w http.ResponseWriter, r *http.Request) {
	up, ok := s.ssoUpstream(w)
	if !ok {
		return
	}
	var req authapi.SSOResultRequest
	if !readJSON(w, r, &req) {
		return
	}
	creds, err := up.SSOResult(r.Context(), req)
	if err != nil {
		forwardError(w, err)
		return
	}
	authapi.WriteJSON(w, http.StatusOK, creds)
}

// ssoPage writes a small HTML page for the browser.
func ssoPage(w http.ResponseWriter, code int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Jumpgate: %s</title></head>\n<body><h1>%s</h1>\n<p>%s</p></body></html>\n",
		html.EscapeString(title), html.EscapeString(title), html.EscapeString(msg))
}
