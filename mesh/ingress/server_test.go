package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/authapi"
	"jumpgate.dev/jumpgate/auth/authtest"
	"jumpgate.dev/jumpgate/auth/identity"
	"jumpgate.dev/jumpgate/auth/state"
)

// noUpstream is an auth server that answers nothing.
type noUpstream struct{}

func (noUpstream) Login(context.Context, authapi.LoginRequest) (*authapi.Credentials, error) {
	return nil, errors.New("no auth server in this test")
}

func (noUpstream) Join(context.Context, authapi.JoinRequest) (*authapi.Credentials, error) {
	return nil, errors.New("no auth server in this test")
}

const tunnelALPN = "jumpgate-tunnel/1"

// startIngress serves an ingress for cluster "prod" on loopback and returns
// its address and CA.
func startIngress(t *testing.T, protocols map[string]func(*tls.Conn)) (string, *authtest.CA, *Server) {
	t.Helper()
	ca := authtest.NewCA(t, "prod TLS CA")
	cert := ca.Issue(t, identity.Identity{Kind: identity.KindProxy, Name: "p1", Cluster: "prod"})
	hub := authapi.NewHub()
	if err := hub.Apply(authapi.WatchMessage{Type: "snapshot", Snapshot: &authapi.WatchSnapshot{Cluster: "prod", CAs: state.CAs{TLS: [][]byte{ca.Cert.Raw}}}}); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		ProxyID:        "p1",
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		Cache:          hub,
		Upstream:       noUpstream{},
		Dialer: NodeDialerFunc(func(context.Context, string, identity.Identity, string) (net.Conn, error) {
			return nil, errors.New("no nodes in this test")
		}),
		Protocols: protocols,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return ln.Addr().String(), ca, srv
}

func dialALPN(addr, alpn string, cert *tls.Certificate) (*tls.Conn, error) {
	c, err := tls.Dial("tcp", addr, &tls.Config{
		NextProtos:         []string{alpn},
		InsecureSkipVerify: true, // the test trusts its own ingress
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		},
	})
	if err != nil {
		return nil, err
	}
	// With TLS 1.3 a refused client certificate shows at the first read.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			c.Close()
			return nil, err
		}
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

func TestProtocolsAreHandedOver(t *testing.T) {
	handed := make(chan *tls.Conn, 1)
	addr, ca, srv := startIngress(t, map[string]func(*tls.Conn){tunnelALPN: func(tc *tls.Conn) { handed <- tc }})

	node := ca.Issue(t, identity.Identity{Kind: identity.KindNode, Name: "web-1", Cluster: "prod"})
	c, err := dialALPN(addr, tunnelALPN, node)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var tc *tls.Conn
	select {
	case tc = <-handed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not handed over")
	}
	defer tc.Close()
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != tunnelALPN || len(cs.VerifiedChains) == 0 || cs.PeerCertificates[0].Subject.CommonName == "" {
		t.Fatalf("handed over %+v, want the tunnel ALPN and a verified node certificate", cs)
	}

	// Ingress shuts down without waiting for, or closing, what it handed
	// over: the handler owns it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v, want it not to wait for the handed-over connection", err)
	}
	go tc.Write([]byte("still here"))
	b := make([]byte, len("still here"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "still here" {
		t.Fatalf("read %q, %v after Shutdown", b, err)
	}
}

func TestProtocolsRefuseUntrustedCertificates(t *testing.T) {
	handed := make(chan *tls.Conn, 1)
	addr, _, _ := startIngress(t, map[string]func(*tls.Conn){tunnelALPN: func(tc *tls.Conn) { handed <- tc; tc.Close() }})
	other := authtest.NewCA(t, "other CA").Issue(t, identity.Identity{Kind: identity.KindNode, Name: "web-1", Cluster: "prod"})
	if _, err := dialALPN(addr, tunnelALPN, other); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Fatalf("dial with an untrusted certificate = %v, want the TLS alert", err)
	}
	select {
	case <-handed:
		t.Fatal("a connection with an untrusted certificate was handed over")
	default:
	}
}

func TestUnknownProtocolRefused(t *testing.T) {
	addr, _, _ := startIngress(t, nil)
	if _, err := dialALPN(addr, tunnelALPN, &tls.Certificate{}); err == nil || !strings.Contains(err.Error(), "no application protocol") {
		t.Fatalf("dial = %v, want no_application_protocol", err)
	}
}

func TestProtocolsConfigChecked(t *testing.T) {
	for _, tt := range []struct {
		protocols map[string]func(*tls.Conn)
		want      string
	}{
		{map[string]func(*tls.Conn){ALPNHTTP: func(*tls.Conn) {}}, `Protocols: "http/1.1" is not an extra ALPN protocol`},
		{map[string]func(*tls.Conn){"": func(*tls.Conn) {}}, `Protocols: "" is not an extra ALPN protocol`},
		{map[string]func(*tls.Conn){tunnelALPN: nil}, `Protocols: no handler for "jumpgate-tunnel/1"`},
	} {
		_, err := New(Config{ProxyID: "p1", GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil },
			Cache: authapi.NewHub(), Upstream: noUpstream{}, Dialer: NodeDialerFunc(nil), Protocols: tt.protocols})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New = %v, want %q", err, tt.want)
		}
	}
}
