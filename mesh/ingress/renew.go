package ingress

import (
	"net/http"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/identity"
)

// renew forwards a node's certificate renewal to auth. Only a node may
// call it, and only for itself: its client certificate, verified against
// the cluster's CAs on this connection, names it, and this proxy's own
// certificate vouches for the request to auth (RenewRequest.For). Nodes
// cannot reach auth themselves; that is why the proxy does this.
func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.cfg.Cache.Ready():
	default:
		authapi.WriteError(w, http.StatusServiceUnavailable, "this proxy has not synced with the auth server yet: retry")
		return
	}
	node, ok := s.caller(w, r, identity.KindNode)
	if !ok {
		return
	}
	var req authapi.RenewRequest
	if !readJSON(w, r, &req) {
		return
	}
	// Whatever the body says, the certificate is for the caller, and a
	// node's carries no server names.
	req.For, req.DNSNames, req.IPs = node.Name, nil, nil
	creds, err := s.cfg.Upstream.Renew(r.Context(), req)
	if err != nil {
		s.cfg.Logger.Warn("node certificate renewal failed", "node", node.Name, "err", err)
		forwardError(w, err)
		return
	}
	authapi.WriteJSON(w, http.StatusOK, creds)
}
