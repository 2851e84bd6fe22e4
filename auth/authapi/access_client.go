package authapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"

	"jumpgate.dev/jumpgate/auth/state"
)

// Users' calls, made by jg to its proxy (which forwards them, see
// ForwardUser), and reviewers' calls, made by jgctl to an auth server.

// CreateAccessRequest asks for roles just in time.
func (c *Client) CreateAccessRequest(ctx context.Context, req CreateAccessRequest) (*state.AccessRequest, error) {
	var out state.AccessRequest
	return &out, c.do(ctx, "POST", "/v1/user/requests", req, &out)
}

// MyAccessRequests lists the caller's access requests.
func (c *Client) MyAccessRequests(ctx context.Context) ([]state.AccessRequest, error) {
	var out []state.AccessRequest
	return out, c.do(ctx, "GET", "/v1/user/requests", nil, &out)
}

// MyAccessRequest returns one of the caller's access requests.
func (c *Client) MyAccessRequest(ctx context.Context, id string) (*state.AccessRequest, error) {
	var out state.AccessRequest
	return &out, c.do(ctx, "GET", "/v1/user/requests/"+url.PathEscape(id), nil, &out)
}

// Reissue asks for certificates with the roles of approved requests.
func (c *Client) Reissue(ctx context.Context, req ReissueRequest) (*Credentials, error) {
	var out Credentials
	return &out, c.do(ctx, "POST", "/v1/user/certs", req, &out)
}

// SessionCert asks for a per-session MFA certificate.
func (c *Client) SessionCert(ctx context.Context, req SessionCertRequest) (*SessionCert, error) {
	var out SessionCert
	return &out, c.do(ctx, "POST", "/v1/user/certs/session", req, &out)
}

// AddMFADevice enrolls a TOTP device.
func (c *Client) AddMFADevice(ctx context.Context, req AddMFADeviceRequest) (*MFADeviceInfo, error) {
	var out MFADeviceInfo
	return &out, c.do(ctx, "POST", "/v1/user/mfa", req, &out)
}

// MFADevices lists the caller's TOTP devices.
func (c *Client) MFADevices(ctx context.Context) ([]MFADeviceInfo, error) {
	var out []MFADeviceInfo
	return out, c.do(ctx, "GET", "/v1/user/mfa", nil, &out)
}

// AccessRequests lists access requests (reviewers): of one user ("" for
// all), in one state ("" for all: pending, approved, denied, expired).
func (c *Client) AccessRequests(ctx context.Context, user, st string) ([]state.AccessRequest, error) {
	q := url.Values{}
	if user != "" {
		q.Set("user", user)
	}
	if st != "" {
		q.Set("state", st)
	}
	var out []state.AccessRequest
	return out, c.do(ctx, "GET", "/v1/requests?"+q.Encode(), nil, &out)
}

// ReviewAccessRequest approves or denies a request.
func (c *Client) ReviewAccessRequest(ctx context.Context, id string, req ReviewRequest) (*state.AccessRequest, error) {
	var out state.AccessRequest
	return &out, c.do(ctx, "POST", "/v1/requests/"+url.PathEscape(id)+"/review", req, &out)
}

// ResetMFA removes a user's MFA devices (device "" for all).
func (c *Client) ResetMFA(ctx context.Context, user, device string) error {
	p := "/v1/users/" + url.PathEscape(user) + "/mfa"
	if device != "" {
		p += "?device=" + url.QueryEscape(device)
	}
	return c.do(ctx, "DELETE", p, nil, nil)
}

// ForwardUser makes a user's call to the auth API on the user's behalf
// (proxies): userCert is the DER of the user's verified TLS certificate.
// body (at most a few MiB: it is held to fail over) may be nil. The caller
// reads and closes the answer, whatever its status.
func (c *Client) ForwardUser(ctx context.Context, method, pathQuery string, userCert, body []byte, proof http.Header) (*http.Response, error) {
	var resp *http.Response
	var err error
	c.each(func(base string) bool {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, rerr := http.NewRequestWithContext(ctx, method, base+pathQuery, rd)
		if rerr != nil {
			err = rerr
			return false
		}
		req.Header.Set(HeaderUserCert, base64.StdEncoding.EncodeToString(userCert))
		for _, h := range []string{HeaderUserProof, HeaderUserTime} {
			if v := proof.Get(h); v != "" {
				req.Header.Set(h, v)
			}
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err = c.hc.Do(req)
		if err != nil {
			err = describeTransportError(base, err)
			return failover(err) && ctx.Err() == nil
		}
		if resp.StatusCode == http.StatusServiceUnavailable && ctx.Err() == nil {
			// Another auth server may serve it (one that can sign).
			err = decodeError(resp)
			resp.Body.Close()
			resp = nil
			return true
		}
		return false
	})
	return resp, err
}
