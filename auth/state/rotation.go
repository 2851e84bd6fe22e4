package state

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// CA rotation phases. A rotation moves every auth server from its keys of
// generation Current to new keys of generation Next without anyone losing
// access:
//
//   - init: each auth server makes its new keys (in its own keystore or
//     HSM) and publishes their public halves; each published key joins the
//     trusted sets at once. Nothing is signed with them yet: proxies and
//     nodes learn them from the watch stream, users at their next login.
//   - update_clients: user certificates are signed with the new keys
//     (everyone who checks them, proxies and nodes, trusts them since
//     init). Entering it requires every auth server to have published.
//   - update_servers: node host certificates and proxy and auth server TLS
//     certificates are signed with the new keys too; nodes and proxies
//     renew theirs (the phase change reaches them as a CA event). Users
//     must have logged in since init, so this phase should start no
//     sooner than the longest user certificate lifetime after init.
//   - standby (""): the rotation completes: the old keys leave the trusted
//     sets, every server signs with its new keys, and every server that
//     took part signs server certificates (this is how a server that
//     joined with its own keys becomes a full signer).
//   - rollback: from any phase before completion: everything is signed
//     with the old keys again (nodes and proxies renew on the phase
//     change); rolling back to standby then drops the new keys from the
//     trusted sets.
const (
	PhaseStandby       = ""
	PhaseInit          = "init"
	PhaseUpdateClients = "update_clients"
	PhaseUpdateServers = "update_servers"
	PhaseRollback      = "rollback"
)

// Rotation commands.
const (
	TypeRotateCA        Type = 19
	TypePublishNextKeys Type = 20
)

// Rotation is the CA rotation state.
type Rotation struct {
	Phase   string `json:"phase,omitempty"`
	Current int    `json:"current"`        // generation in force
	Next    int    `json:"next,omitempty"` // generation being rotated to
	// Mode is "manual" (an operator moves each phase) or "auto" (jgctl ca
	// rotate --auto moves them, Grace apart).
	Mode       string        `json:"mode,omitempty"`
	Grace      time.Duration `json:"grace,omitempty"`
	Started    time.Time     `json:"started,omitzero"`
	PhaseSince time.Time     `json:"phase_since,omitzero"`
}

// PhaseName is the phase as operators see it ("standby" for "").
func PhaseName(p string) string {
	if p == PhaseStandby {
		return "standby"
	}
	return p
}

// RotateCA moves the rotation to Phase.
type RotateCA struct {
	Phase string        `json:"phase"`
	Mode  string        `json:"mode,omitempty"`
	Grace time.Duration `json:"grace,omitempty"`
	Now   time.Time     `json:"now"`
}

// PublishNextKeys records an auth server's keys for the rotation under way
// and trusts them.
type PublishNextKeys struct {
	ID         string     `json:"id"`
	Generation int        `json:"generation"`
	Keys       ServerKeys `json:"keys"`
}

var rotationSteps = map[string][]string{
	PhaseStandby:       {PhaseInit},
	PhaseInit:          {PhaseUpdateClients, PhaseRollback},
	PhaseUpdateClients: {PhaseUpdateServers, PhaseRollback},
	PhaseUpdateServers: {PhaseStandby, PhaseRollback},
	PhaseRollback:      {PhaseStandby},
}

// NextPhases lists the phases a rotation may move to from p.
func NextPhases(p string) []string { return rotationSteps[p] }

func applyRotateCA(d *Data, c RotateCA) (any, []Event, error) {
	r := d.Rotation
	if !slices.Contains(rotationSteps[r.Phase], c.Phase) {
		var next []string
		for _, p := range rotationSteps[r.Phase] {
			next = append(next, PhaseName(p))
		}
		return nil, nil, fmt.Errorf("the CA rotation is in phase %s: it can go to %s, not %s", PhaseName(r.Phase), strings.Join(next, " or "), PhaseName(c.Phase))
	}
	switch c.Phase {
	case PhaseInit:
		r.Next, r.Started = r.Current+1, c.Now
		r.Mode, r.Grace = c.Mode, c.Grace
		if r.Mode == "" {
			r.Mode = "manual"
		}
	case PhaseUpdateClients:
		var missing []string
		for _, a := range d.AuthServers {
			if len(a.NextKeys.TLS) == 0 {
				missing = append(missing, a.ID)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			return nil, nil, fmt.Errorf("auth servers %s have not made their new keys yet: they do so within seconds of init when running; a server that is gone must be removed (jgctl auth remove)", strings.Join(missing, ", "))
		}
	case PhaseStandby:
		complete := r.Phase == PhaseUpdateServers
		for id, a := range d.AuthServers {
			if complete {
				if len(a.NextKeys.TLS) > 0 {
					a.Keys, a.Generation, a.SignsServerCerts = a.NextKeys, r.Next, true
				} else {
					a.SignsServerCerts = false
				}
			}
			a.NextKeys = ServerKeys{}
			d.AuthServers[id] = a
		}
		if complete {
			r.Current = r.Next
		}
		r.Next, r.Mode, r.Grace, r.Started = 0, "", 0, time.Time{}
		d.CAs = trustedFromServers(d.AuthServers, d.CAs)
	}
	r.Phase, r.PhaseSince = c.Phase, c.Now
	d.Rotation = r
	d.CAs.Phase = c.Phase
	return nil, []Event{event(KindCAs, "put", "", d.CAs)}, nil
}

// trustedFromServers is the trusted sets after a rotation: every server's
// current keys. A cluster whose servers never registered keeps old.
func trustedFromServers(servers map[string]AuthServer, old CAs) CAs {
	var c CAs
	ids := make([]string, 0, len(servers))
	for id := range servers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		k := servers[id].Keys
		if len(k.TLS) == 0 {
			continue
		}
		c.UserSSH = appendLine(c.UserSSH, k.UserSSH)
		c.HostSSH = appendLine(c.HostSSH, k.HostSSH)
		if !slices.ContainsFunc(c.TLS, func(der []byte) bool { return bytes.Equal(der, k.TLS) }) {
			c.TLS = append(c.TLS, slices.Clone(k.TLS))
		}
	}
	if len(c.TLS) == 0 {
		return old
	}
	return c
}

func appendLine(set []string, k string) []string {
	if slices.ContainsFunc(set, func(l string) bool { return strings.TrimSpace(l) == strings.TrimSpace(k) }) {
		return set
	}
	return append(set, k)
}

func applyPublishNextKeys(d *Data, c PublishNextKeys) (any, []Event, error) {
	a, ok := d.AuthServers[c.ID]
	switch {
	case !ok:
		return nil, nil, fmt.Errorf("auth server %s: %w", c.ID, ErrNotFound)
	case d.Rotation.Phase != PhaseInit:
		return nil, nil, fmt.Errorf("new CA keys are published in the init phase, and the rotation is in phase %s", PhaseName(d.Rotation.Phase))
	case c.Generation != d.Rotation.Next:
		return nil, nil, fmt.Errorf("keys of generation %d published for a rotation to generation %d", c.Generation, d.Rotation.Next)
	case c.Keys.UserSSH == "" || c.Keys.HostSSH == "" || len(c.Keys.TLS) == 0:
		return nil, nil, fmt.Errorf("auth server %s published incomplete keys", c.ID)
	}
	a.NextKeys = c.Keys
	d.AuthServers[c.ID] = a
	cas := CAs{UserSSH: slices.Clone(d.CAs.UserSSH), HostSSH: slices.Clone(d.CAs.HostSSH), TLS: cloneKeys(d.CAs.TLS), Phase: d.CAs.Phase}
	cas.UserSSH = appendLine(cas.UserSSH, c.Keys.UserSSH)
	cas.HostSSH = appendLine(cas.HostSSH, c.Keys.HostSSH)
	if !slices.ContainsFunc(cas.TLS, func(der []byte) bool { return bytes.Equal(der, c.Keys.TLS) }) {
		cas.TLS = append(cas.TLS, slices.Clone(c.Keys.TLS))
	}
	d.CAs = cas
	return nil, []Event{event(KindAuthServer, "put", a.ID, a), event(KindCAs, "put", "", cas)}, nil
}

// Rotation returns the CA rotation state.
func (s *Store) Rotation() Rotation {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.data.Rotation
}
