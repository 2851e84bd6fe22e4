package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"jumpgate.dev/jumpgate/auth/authapi"
)

func TestJoinRetryable(t *testing.T) {
	refused := fmt.Errorf("post: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	cases := []struct {
		err  error
		want bool
	}{
		{refused, true},
		{fmt.Errorf("join: %w", &authapi.UnreachableError{Host: "p:3080", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}), true},
		{&authapi.APIError{Code: 503, Message: "auth not ready"}, true},
		{&authapi.APIError{Code: 502, Message: "auth unreachable from this proxy"}, true},
		{&authapi.APIError{Code: 403, Message: "join token already used"}, false},
		{&authapi.APIError{Code: 400, Message: "bad request"}, false},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, false},
		{errors.New("server certificate does not match --ca-pin"), false},
	}
	for _, c := range cases {
		if got := joinRetryable(c.err); got != c.want {
			t.Errorf("joinRetryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
