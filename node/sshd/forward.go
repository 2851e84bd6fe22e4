package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"golang.org/x/crypto/ssh"

	"jumpgate.dev/jumpgate/auth/audit"
)

// handleDirectTCPIP serves a direct-tcpip channel (ssh -L): it dials the
// target from the node and copies bytes both ways, passing half-closes on.
func (c *serverConn) handleDirectTCPIP(nch ssh.NewChannel) {
	req, err := parseDirectTCPIP(nch.ExtraData())
	if err != nil {
		c.log.Info("refused port forward", "err", err)
		c.reject(nch, ssh.ConnectionFailed, "malformed port forwarding request")
		return
	}
	target := net.JoinHostPort(req.Host, strconv.Itoa(int(req.Port)))
	e := c.auditEvent(audit.PortForward)
	e.Command = target
	log := c.log.With("target", target)

	if !c.policy.PortForwarding {
		e.Error = "roles do not permit port forwarding on this node"
		c.srv.cfg.Audit.Emit(e)
		log.Info("refused port forward: roles do not permit it")
		c.reject(nch, ssh.Prohibited, fmt.Sprintf("your roles do not permit port forwarding on node %s: ask an administrator", c.srv.cfg.NodeID))
		return
	}
	if !c.permits("permit-port-forwarding") {
		e.Error = "certificate does not permit port forwarding"
		c.srv.cfg.Audit.Emit(e)
		log.Info("refused port forward: certificate does not permit it")
		c.reject(nch, ssh.Prohibited, "your certificate does not permit port forwarding: ask an administrator")
		return
	}
	d := net.Dialer{Timeout: c.srv.cfg.DialTimeout}
	tc, err := d.DialContext(c.ctx, "tcp", target)
	if err != nil {
		e.Error = err.Error()
		c.srv.cfg.Audit.Emit(e)
		log.Info("port forward: dial failed", "err", err)
		c.reject(nch, ssh.ConnectionFailed, fmt.Sprintf("node %s could not connect to %s (%v): check the address and that the service is running", c.srv.cfg.NodeID, target, dialReason(err)))
		return
	}
	defer tc.Close()
	ch, reqs, err := nch.Accept()
	if err != nil {
		log.Debug("accept direct-tcpip channel", "err", err)
		return
	}
	defer ch.Close()
	c.srv.cfg.Audit.Emit(e)
	log.Info("port forward opened")

	// Both ends close when the connection does.
	stop := context.AfterFunc(c.ctx, func() {
		ch.Close()
		tc.Close()
	})
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { ssh.DiscardRequests(reqs) }) // ends when the channel closes
	closeBoth := sync.OnceFunc(func() {
		ch.Close()
		tc.Close()
	})
	defer closeBoth()

	var in int64
	upDone := make(chan struct{})
	wg.Go(func() {
		defer close(upDone)
		var err error
		in, err = io.Copy(tc, ch)
		if err != nil {
			closeBoth()
			return
		}
		if cw, ok := tc.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite() // the client's EOF
		}
	})
	out, err := io.Copy(ch, tc)
	if err != nil {
		if !errors.Is(err, net.ErrClosed) {
			log.Debug("port forward: read target", "err", err)
		}
		closeBoth()
	} else {
		ch.CloseWrite() // the target's EOF
	}
	<-upDone
	closeBoth()
	log.Info("port forward closed", "bytes_in", in, "bytes_out", out)
}

// dialReason is the last part of a dial error ("connection refused"), which
// is what a user needs; the rest repeats the address.
func dialReason(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}
