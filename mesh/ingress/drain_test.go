package ingress

import (
	"bufio"
	"strings"
	"testing"

	"jumpgate.dev/jumpgate/auth/identity"
)

// TestDrainRefusesDials: a draining proxy refuses new dials with code
// "draining"; a version 2 request also gets the healthy proxy to go to, a
// version 1 request (an older jg, which refuses unknown fields) only the
// words.
func TestDrainRefusesDials(t *testing.T) {
	addr, ca, srv := startIngress(t, nil)
	alice := ca.Issue(t, identity.Identity{Kind: identity.KindUser, Name: "alice", Cluster: "prod", Roles: []string{"dev"}})
	dial := func(line string) string {
		t.Helper()
		c, err := dialALPN(addr, ALPNDial, alice)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		resp, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("read the answer to %s: %v", line, err)
		}
		return resp
	}
	if srv.Draining() {
		t.Fatal("draining before Drain")
	}
	srv.Drain(func(client string) (Redirect, bool) {
		if !strings.HasPrefix(client, "127.0.0.1:") {
			t.Errorf("redirect asked for client %q", client)
		}
		return Redirect{ID: "p2", Addr: "127.0.0.2:3080"}, true
	})
	if !srv.Draining() {
		t.Fatal("not draining after Drain")
	}
	got := dial(`{"v":2,"node":"web","resume":true}`)
	for _, want := range []string{`"v":2`, `"code":"draining"`, `"redirect":"127.0.0.2:3080"`, `"redirect_id":"p2"`, "proxy p1 is draining", "connect through proxy p2 at 127.0.0.2:3080"} {
		if !strings.Contains(got, want) {
			t.Errorf("v2 refusal %s lacks %s", got, want)
		}
	}
	got = dial(`{"v":1,"node":"web"}`)
	if !strings.Contains(got, `"code":"draining"`) || !strings.Contains(got, "connect through proxy p2") || strings.Contains(got, "redirect") {
		t.Errorf("v1 refusal %s: want code draining, the words, and no redirect fields", got)
	}
	srv.Drain(func(string) (Redirect, bool) { return Redirect{}, false })
	if got := dial(`{"v":2,"node":"web"}`); !strings.Contains(got, "knows no healthy proxy") || strings.Contains(got, "redirect") {
		t.Errorf("refusal without a healthy proxy: %s", got)
	}
	if all, resumable := srv.SessionCounts(); all != 0 || resumable != 0 {
		t.Errorf("sessions %d/%d after refusals", all, resumable)
	}
	if n := srv.MoveResumable(); n != 0 {
		t.Errorf("MoveResumable moved %d with no session", n)
	}
}
