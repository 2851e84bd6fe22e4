package authapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/identity"
)

// RenewRequest asks for fresh certificates for an identity that already
// holds valid ones (POST /v1/renew). Nodes, proxies and auth servers renew
// before their certificates expire and whenever the cluster's CA set
// changes (a CA rotation changes it at each phase), so that what they
// present is signed by the cluster's current keys.
//
// The certificates are for the caller's own identity, as its client
// certificate names it, except that a proxy renews for the node named by
// For: the node called the proxy (POST /v1/renew on the proxy), which
// checked the node's client certificate on its own mTLS connection, and
// the proxy's certificate authenticates the request here.
type RenewRequest struct {
	// TLSPublic is the new TLS public key (PKIX DER): a renewal is also a
	// key rotation.
	TLSPublic []byte `json:"tls_public"`
	// SSHPublic is a node's SSH host public key (authorized_keys format).
	// A node keeps its host key across renewals: it must be the key the
	// node joined with, which the inventory holds.
	SSHPublic string `json:"ssh_public,omitempty"`
	// DNSNames and IPs go into a proxy's or auth server's server
	// certificate, as at join.
	DNSNames []string `json:"dns_names,omitempty"`
	IPs      []string `json:"ips,omitempty"`
	// For names the node a proxy renews for (proxies only).
	For string `json:"for,omitempty"`
}

// Renew exchanges valid certificates for fresh ones signed by the
// cluster's current CA keys.
func (c *Client) Renew(ctx context.Context, req RenewRequest) (*Credentials, error) {
	var out Credentials
	return &out, c.do(ctx, "POST", "/v1/renew", req, &out)
}

func (s *Server) renew(w http.ResponseWriter, r *http.Request, caller identity.Identity) {
	if !s.canSign(w, true) {
		return
	}
	var req RenewRequest
	if !readJSON(w, r, &req) {
		return
	}
	now := s.cfg.Now()
	id := identity.Identity{Kind: caller.Kind, Name: caller.Name, Cluster: s.cfg.Store.Cluster()}
	if req.For != "" {
		if caller.Kind != identity.KindProxy {
			WriteError(w, http.StatusForbidden, fmt.Sprintf("%s may not renew certificates for %s: only proxies renew for the nodes they serve", caller, req.For))
			return
		}
		id = identity.Identity{Kind: identity.KindNode, Name: req.For, Cluster: id.Cluster}
	}
	ev := audit.Event{Type: audit.CertIssued, Node: id.Name, Subject: string(id.Kind), Command: "renewed", Cluster: id.Cluster, RemoteAddr: r.RemoteAddr}
	if req.For != "" {
		ev.User = caller.Name // the proxy that vouched for the node
	}
	fail := func(code int, msg string) {
		s.cfg.Logger.Warn("renewal refused", "kind", id.Kind, "node", id.Name, "by", caller.Name, "err", msg)
		WriteError(w, code, msg)
	}
	tlsPub, err := x509.ParsePKIXPublicKey(req.TLSPublic)
	if err != nil {
		fail(http.StatusBadRequest, "malformed TLS public key: "+err.Error())
		return
	}
	var sshPub ssh.PublicKey
	var dns []string
	var ips []net.IP
	if id.Kind == identity.KindNode {
		if sshPub, _, _, _, err = ssh.ParseAuthorizedKey([]byte(req.SSHPublic)); err != nil {
			fail(http.StatusBadRequest, "a node renews with its SSH host key: malformed key: "+err.Error())
			return
		}
		if err := s.checkHostKey(id.Name, sshPub); err != nil {
			fail(http.StatusForbidden, err.Error())
			return
		}
		if err := identity.CheckLocks(s.cfg.Store.Locks(), identity.LockTarget{Node: id.Name}, now); err != nil {
			fail(http.StatusForbidden, err.Error())
			return
		}
	} else {
		// Only server certificates carry names; a node's is a client
		// certificate.
		dns = req.DNSNames
		for _, a := range req.IPs {
			ip := net.ParseIP(a)
			if ip == nil {
				fail(http.StatusBadRequest, fmt.Sprintf("%q is not an IP address", a))
				return
			}
			ips = append(ips, ip)
		}
	}
	creds, err := s.issue(id, sshPub, tlsPub, s.cfg.NodeCertTTL, dns, ips)
	if err != nil {
		fail(http.StatusInternalServerError, "issue certificates: "+err.Error())
		return
	}
	s.cfg.Audit.Emit(ev)
	s.cfg.Logger.Info("certificates renewed", "kind", id.Kind, "node", id.Name, "by", caller.Name, "expires", creds.Expires)
	WriteJSON(w, http.StatusOK, creds)
}

// checkHostKey checks that the host key a node renews with is the one it
// joined with: a renewal certifies the key the inventory holds, never a
// new one. A node removed from the inventory may not renew.
func (s *Server) checkHostKey(node string, pub ssh.PublicKey) error {
	n, ok := s.cfg.Store.Node(node)
	if !ok {
		return fmt.Errorf("node %s is not in the inventory (it was removed): join it again with a new token", node)
	}
	if n.HostKey == "" {
		return nil // the inventory has no host key to hold it to
	}
	joined, _, _, _, err := ssh.ParseAuthorizedKey([]byte(n.HostKey))
	if err != nil || !bytes.Equal(joined.Marshal(), pub.Marshal()) {
		return fmt.Errorf("node %s asks to renew with a host key other than the one it joined with: a node keeps its host key; to change it, remove the node and join again", node)
	}
	return nil
}
