package raftnode

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"jumpgate.dev/jumpgate/auth/identity"
)

// TLS secures the raft transport: every connection between auth servers is
// mutual TLS, and each side checks the other holds an auth server
// certificate of this cluster. Without it anyone who reached the raft port
// could append to the log.
type TLS struct {
	// Cluster is the cluster name peers' certificates must carry.
	Cluster string
	// Certificate returns this auth server's certificate (server and client
	// usage). Read per handshake, so renewal needs no restart.
	Certificate func() (*tls.Certificate, error)
	// RootCAs returns the cluster's trusted TLS CAs, read per handshake.
	RootCAs func() *x509.CertPool
	// Now is the clock for certificate checks (default time.Now).
	Now func() time.Time
}

func (t *TLS) check() error {
	switch {
	case t.Cluster == "":
		return errors.New("raftnode: TLS.Cluster is required")
	case t.Certificate == nil:
		return errors.New("raftnode: TLS.Certificate is required")
	case t.RootCAs == nil:
		return errors.New("raftnode: TLS.RootCAs is required")
	}
	if t.Now == nil {
		t.Now = time.Now
	}
	return nil
}

// verify checks a peer's chain and that it names an auth server of this
// cluster.
func (t *TLS) verify(cs tls.ConnectionState, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("raft peer presented no certificate: only auth servers of this cluster may connect to the raft port")
	}
	roots := t.RootCAs()
	if roots == nil {
		return errors.New("this auth server has no trusted TLS CA yet")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: t.Now(), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("raft peer certificate %q is not trusted: %w", leaf.Subject.CommonName, err)
	}
	id, err := identity.FromX509(leaf)
	if err != nil {
		return fmt.Errorf("raft peer: %w", err)
	}
	if id.Kind != identity.KindAuth || id.Cluster != t.Cluster {
		return fmt.Errorf("raft peer certificate is for %s: only auth servers of cluster %s may connect to the raft port", id, t.Cluster)
	}
	return nil
}

func (t *TLS) getCert() (*tls.Certificate, error) {
	c, err := t.Certificate()
	if err != nil {
		return nil, fmt.Errorf("raft transport certificate: %w", err)
	}
	return c, nil
}

// raftALPN names the protocol on the raft port.
const raftALPN = "jumpgate-raft/1"

// tlsStream is a raft.StreamLayer over mutual TLS.
type tlsStream struct {
	net.Listener
	cfg       *TLS
	advertise net.Addr
	log       func(msg string, args ...any)
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func (s *tlsStream) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	remote := c.RemoteAddr().String()
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{raftALPN},
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cfg.getCert()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := s.cfg.verify(cs, x509.ExtKeyUsageClientAuth); err != nil {
				s.log("refused raft connection", "remote", remote, "err", err)
				return err
			}
			return nil
		},
	}
	// The handshake runs on the transport's first read, in the goroutine
	// raft gives each connection, so one slow peer cannot stall Accept.
	return tls.Server(c, conf), nil
}

func (s *tlsStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{raftALPN},
		// Peers are verified by identity (an auth server of this cluster)
		// in VerifyConnection, not by host name: raft addresses are
		// whatever the operator advertised.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cfg.getCert()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.cfg.verify(cs, x509.ExtKeyUsageServerAuth)
		},
	}
	c, err := tls.DialWithDialer(d, "tcp", string(address), conf)
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s: %w", address, err)
	}
	return c, nil
}
