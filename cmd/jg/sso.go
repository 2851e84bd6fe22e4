// jg login --sso: log in through the cluster's OpenID Connect provider in
// a browser (the whole flow is in auth/authapi/sso.go). jg's part: it
// listens on http://127.0.0.1:PORT/callback, asks the proxy to start the
// login, prints the provider's URL (and opens $BROWSER), waits for the
// browser to come back with the login's id and one-time secret, and
// fetches the certificates through the same proxy.

package main

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/cmd/internal/creds"
)

// ssoTimeout is how long jg waits for the browser.
const ssoTimeout = 5 * time.Minute

// ssoLogin runs an SSO login through proxy and returns the certificates.
func ssoLogin(ctx context.Context, proxy string, trust authapi.TrustConfig, k *creds.Keys, ttl string) (*authapi.Credentials, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback for the browser's answer: %w", err)
	}
	defer ln.Close()
	cl, err := authapi.NewClient(authapi.ClientConfig{Addr: proxy, Trust: trust, LocalAddr: bindAddr()})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	start, err := cl.SSOStart(ctx, authapi.SSOStartRequest{SSHPublic: k.SSHPublic(), TLSPublic: k.TLSPublic(), TTL: ttl,
		ClientCallback: "http://" + ln.Addr().String() + "/callback"})
	if err != nil {
		return nil, fmt.Errorf("start SSO login at %s: %w", proxy, err)
	}
	fmt.Printf("Open this URL in your browser to log in: %s\n", start.URL)
	openBrowser(start.URL)

	type outcome struct {
		creds *authapi.Credentials
		err   error
	}
	done := make(chan outcome, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("id") != start.ID || q.Get("secret") == "" {
			browserPage(w, http.StatusBadRequest, "Login failed", "This answer is not for the login jg is waiting for.")
			return
		}
		rctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		c, err := cl.SSOResult(rctx, authapi.SSOResultRequest{ID: start.ID, Secret: q.Get("secret")})
		if err != nil {
			browserPage(w, http.StatusForbidden, "Login failed", err.Error())
		} else {
			browserPage(w, http.StatusOK, "Logged in", "Logged in: you can close this window.")
		}
		select {
		case done <- outcome{c, err}:
		default: // a second answer: the first counts
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ends with ErrServerClosed
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx) //nolint:errcheck // best effort: the answer is written
	}()

	wait := ssoTimeout
	if d := time.Until(start.Expires); d > 0 && d < wait {
		wait = d
	}
	select {
	case o := <-done:
		if o.err != nil {
			return nil, fmt.Errorf("SSO login: %w", o.err)
		}
		return o.creds, nil
	case <-time.After(wait):
		return nil, fmt.Errorf("no answer from the browser within %s: run jg login --sso again", wait.Round(time.Second))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// openBrowser runs $BROWSER URL when BROWSER is set (a command and its
// arguments, split on spaces). It does not wait: the URL is printed too.
func openBrowser(url string) {
	f := strings.Fields(os.Getenv("BROWSER"))
	if len(f) == 0 {
		return
	}
	cmd := exec.Command(f[0], append(f[1:], url)...)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "jg: run $BROWSER (%s): %v: open the URL yourself\n", f[0], err)
		return
	}
	go cmd.Wait() //nolint:errcheck // reap it; its exit says nothing about the login
}

func browserPage(w http.ResponseWriter, code int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Jumpgate: %s</title></head>\n<body><h1>%s</h1>\n<p>%s</p></body></html>\n",
		html.EscapeString(title), html.EscapeString(title), html.EscapeString(msg))
}

var errSSOUser = errors.New("--user and --sso exclude each other: with --sso the provider says who you are")
