package authapi

import (
	"context"
	"time"
)

// Discovery is a proxy's answer to GET /v1/discover: the cluster's proxies
// ranked for the asking client, nearest first, with why.
type Discovery struct {
	// Proxy is the proxy that answered.
	Proxy string `json:"proxy"`
	// Client is where the client appears to be.
	Client DiscoveryClient `json:"client"`
	// Proxies, best first. Draining ones come last; dead ones are left
	// out.
	Proxies []DiscoveredProxy `json:"proxies"`
	// Why the first one was chosen.
	Why string `json:"why"`
	// GeoIP says which database located the client, or why none did.
	GeoIP string `json:"geoip"`
}

// DiscoveryClient is the client as the answering proxy sees it.
type DiscoveryClient struct {
	IP        string  `json:"ip"`
	Located   bool    `json:"located"`
	City      string  `json:"city,omitempty"`
	Country   string  `json:"country,omitempty"`
	Continent string  `json:"continent,omitempty"`
	Lat       float64 `json:"lat,omitempty"`
	Lon       float64 `json:"lon,omitempty"`
	// Source: how the address was learnt: "socket", "proxy-protocol" or
	// "x-forwarded-for".
	Source string `json:"source"`
}

// DiscoveredProxy is one proxy in a Discovery.
type DiscoveredProxy struct {
	ID         string  `json:"id"`
	Region     string  `json:"region,omitempty"`
	PublicAddr string  `json:"public_addr"`
	Health     string  `json:"health"`
	State      string  `json:"state"`
	Load       uint32  `json:"load"`
	DistanceKm float64 `json:"distance_km"` // -1: unknown
	// RTTms from the answering proxy (0: itself or unknown).
	RTTms  float64 `json:"rtt_ms,omitempty"`
	Reason string  `json:"reason"`
}

// Discover asks a proxy to rank the cluster's proxies for this client.
// It needs no identity.
func (c *Client) Discover(ctx context.Context) (*Discovery, error) {
	var out Discovery
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return &out, c.do(ctx, "GET", "/v1/discover", nil, &out)
}

// Drain asks the proxy this client talks to to drain (admins only).
func (c *Client) Drain(ctx context.Context, req DrainRequest) (*DrainStatus, error) {
	var out DrainStatus
	return &out, c.do(ctx, "POST", "/v1/drain", req, &out)
}

// DrainStatus returns the proxy's drain progress (admins only); an error
// with status 404 when it is not draining.
func (c *Client) DrainStatus(ctx context.Context) (*DrainStatus, error) {
	var out DrainStatus
	return &out, c.do(ctx, "GET", "/v1/drain", nil, &out)
}
