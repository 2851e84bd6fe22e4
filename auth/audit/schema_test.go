package audit_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"jumpgate.dev/jumpgate/auth/audit"
	"jumpgate.dev/jumpgate/auth/audit/audittest"
)

// schemaDoc is the part of audit.Schema the tests look into.
type schemaDoc struct {
	Required   []string `json:"required"`
	Properties map[string]struct {
		Enum []string `json:"enum"`
	} `json:"properties"`
	AdditionalProperties *bool `json:"additionalProperties"`
	AllOf                []struct {
		If struct {
			Properties struct {
				Type struct {
					Const string   `json:"const"`
					Enum  []string `json:"enum"`
				} `json:"type"`
			} `json:"properties"`
		} `json:"if"`
	} `json:"allOf"`
}

func loadSchema(t *testing.T) schemaDoc {
	t.Helper()
	var s schemaDoc
	if err := json.Unmarshal(audit.Schema, &s); err != nil {
		t.Fatalf("audit.Schema is not JSON: %v", err)
	}
	return s
}

func TestSchemaTypesSortedAndUnique(t *testing.T) {
	types := audit.Types()
	if !slices.IsSorted(types) {
		t.Errorf("Types() is not sorted: %q", types)
	}
	if c := slices.Compact(slices.Clone(types)); len(c) != len(types) {
		t.Errorf("Types() has duplicates: %q", types)
	}
	for _, want := range []string{audit.Login, audit.BackupTaken, audit.LockCreated, audit.SessionTerminated, audit.SFTPOp, audit.AccessRequestExpired} {
		if !slices.Contains(types, want) {
			t.Errorf("Types() lacks %q", want)
		}
	}
	types[0] = "changed"
	if audit.Types()[0] == "changed" {
		t.Error("Types() returns a shared slice: a caller can change what others see")
	}
}

func TestSchemaEnumIsTypes(t *testing.T) {
	s := loadSchema(t)
	enum := slices.Sorted(slices.Values(s.Properties["type"].Enum))
	if !slices.Equal(enum, audit.Types()) {
		t.Errorf("schema.json's type enum differs from audit.Types():\n enum:  %q\n Types: %q", enum, audit.Types())
	}
	// Every type has its required fields written down, even if none.
	ruled := map[string]bool{}
	for _, r := range s.AllOf {
		if c := r.If.Properties.Type.Const; c != "" {
			ruled[c] = true
		}
		for _, e := range r.If.Properties.Type.Enum {
			ruled[e] = true
		}
	}
	for _, typ := range audit.Types() {
		if !ruled[typ] {
			t.Errorf("schema.json has no allOf rule for %q: add its required fields", typ)
		}
	}
}

// TestSchemaFieldsAreEvent catches a field added to Event but not to the
// schema, whose additionalProperties: false would then reject real logs.
func TestSchemaFieldsAreEvent(t *testing.T) {
	s := loadSchema(t)
	if s.AdditionalProperties == nil || *s.AdditionalProperties {
		t.Error("schema.json must set additionalProperties: false, so that a renamed field is caught")
	}
	var fields []string
	et := reflect.TypeFor[audit.Event]()
	for i := range et.NumField() {
		name, _, _ := strings.Cut(et.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
	}
	slices.Sort(fields)
	props := slices.Sorted(func(yield func(string) bool) {
		for k := range s.Properties {
			if !yield(k) {
				return
			}
		}
	})
	if !slices.Equal(fields, props) {
		t.Errorf("schema.json's properties differ from Event's JSON fields:\n schema: %q\n Event:  %q", props, fields)
	}
	if want := []string{"server", "time", "type"}; !slices.Equal(slices.Sorted(slices.Values(s.Required)), want) {
		t.Errorf("schema.json requires %q, want %q", s.Required, want)
	}
}

// samples are events as the code that writes them builds them (see the
// comment on each), before the Writer stamps time and server. Where one
// type is written in several ways, each way is here.
func samples() []struct {
	server string
	e      audit.Event
} {
	auth, proxy, node := "auth/example", "proxy/proxy-eu-1", "node/db-1"
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	// sshd's serverConn.auditEvent and session.event.
	nodeEv := func(typ string) audit.Event {
		return audit.Event{Time: time.Now().UTC(), Type: typ, Server: node, Cluster: "example", Node: "db-1",
			User: "alice", Roles: []string{"dev"}, Login: "alice", RemoteAddr: "127.0.0.1:50000"}
	}
	sess := func(typ string) audit.Event {
		e := nodeEv(typ)
		e.Session = "0123456789abcdef0123456789abcdef"
		return e
	}
	with := func(e audit.Event, f func(*audit.Event)) audit.Event { f(&e); return e }
	type sample = struct {
		server string
		e      audit.Event
	}
	return []sample{
		// authapi login: password, then SSO (Subject is the provider's subject).
		{auth, audit.Event{Type: audit.Login, User: "alice", Roles: []string{"dev"}, RemoteAddr: "198.51.100.7", Cluster: "example"}},
		{auth, audit.Event{Type: audit.Login, User: "alice", Roles: []string{"dev"}, RemoteAddr: "198.51.100.7", Cluster: "example", Command: "sso", Subject: "00u1abcd"}},
		// Failed logins: with a user name, and an SSO callback without one.
		{auth, audit.Event{Type: audit.LoginFailed, User: "alice", RemoteAddr: "198.51.100.7", Cluster: "example", Error: "wrong user name or password"}},
		{auth, audit.Event{Type: audit.LoginFailed, RemoteAddr: "198.51.100.7", Cluster: "example", Command: "sso", Error: "unknown or expired SSO login"}},
		// Certificates: a user's, a node's renewal, a renewal a proxy vouched for.
		{auth, audit.Event{Type: audit.CertIssued, User: "alice", Roles: []string{"dev"}, Cluster: "example", Command: "user certificates valid 12h0m0s"}},
		{auth, audit.Event{Type: audit.CertIssued, Node: "db-1", Subject: "node", Command: "renewed", Cluster: "example", RemoteAddr: "10.0.0.5:41000"}},
		{auth, audit.Event{Type: audit.CertIssued, Node: "db-1", Subject: "node", Command: "renewed", Cluster: "example", User: "proxy-eu-1"}},
		{auth, audit.Event{Type: audit.NodeJoined, Node: "db-1", Subject: "node", RemoteAddr: "10.0.0.5", Cluster: "example"}},
		{auth, audit.Event{Type: audit.JoinFailed, Node: "db-1", Cluster: "example", Error: "token expired"}},
		{auth, audit.Event{Type: audit.JoinFailed, Cluster: "example", Error: `cannot join as "": want node, proxy or auth`}},
		{auth, audit.Event{Type: audit.UserCreated, User: "admin", Subject: "alice", Roles: []string{"dev"}}},
		{auth, audit.Event{Type: audit.UserDeleted, User: "admin", Subject: "alice"}},
		{auth, audit.Event{Type: audit.UserUpdated, User: "admin", Subject: "alice", Roles: []string{"dev", "ops"}}},
		{auth, audit.Event{Type: audit.UserUpdated, User: "admin", Subject: "alice"}}, // all roles taken away
		{auth, audit.Event{Type: audit.RoleUpserted, User: "admin", Subject: "dev"}},
		{auth, audit.Event{Type: audit.RoleDeleted, User: "admin", Subject: "dev"}},
		{auth, audit.Event{Type: audit.TokenCreated, User: "admin", Subject: "tok-1a2b", Command: "node"}},
		{auth, audit.Event{Type: audit.TokenDeleted, User: "admin", Subject: "tok-1a2b"}},
		{auth, audit.Event{Type: audit.CertAuthorityX, User: "admin", Command: "rotate standby -> init"}},
		{auth, audit.Event{Type: audit.MeshKeyChanged, User: "admin", Subject: "mk-1a2b3c", Command: "add"}},
		{auth, audit.Event{Type: audit.BackupTaken, User: "admin", Cluster: "example", RemoteAddr: "127.0.0.1:5000", Subject: "raft index 42"}},
		{auth, audit.Event{Type: audit.LockCreated, User: "admin", Subject: "lock-1", Command: "user=alice", Error: "compromised laptop"}},
		{auth, audit.Event{Type: audit.LockCreated, User: "admin", Subject: "lock-2", Command: "node=db-1"}},
		{auth, audit.Event{Type: audit.LockDeleted, User: "admin", Subject: "lock-1"}},
		// authapi access requests: created, refused before it was created (no id).
		{auth, audit.Event{Type: audit.AccessRequestCreated, User: "alice", Request: "req-1", Roles: []string{"dba"}, Reason: "INC-42", Proxy: "proxy-eu-1"}},
		{auth, audit.Event{Type: audit.AccessRequestCreated, User: "alice", Roles: []string{"root"}, Reason: "INC-42", Proxy: "proxy-eu-1", Error: "role root cannot be requested"}},
		{auth, audit.Event{Type: audit.AccessRequestApproved, User: "bob", Subject: "alice", Request: "req-1", Roles: []string{"dba"}, Reason: "ok", Expires: expires}},
		{auth, audit.Event{Type: audit.AccessRequestDenied, User: "bob", Subject: "alice", Request: "req-1", Roles: []string{"dba"}}},
		{auth, audit.Event{Type: audit.AccessRequestExpired, Subject: "alice", Request: "req-1"}},
		// authapi MFA: Subject of mfa.enrolled is the device's name.
		{auth, audit.Event{Type: audit.MFAEnrolled, User: "alice", Subject: "phone", Proxy: "proxy-eu-1"}},
		{auth, audit.Event{Type: audit.MFARemoved, User: "admin", Subject: "alice", Command: "phone"}},
		{auth, audit.Event{Type: audit.MFAVerified, User: "alice", Node: "db-1", Login: "postgres", Proxy: "proxy-eu-1", Roles: []string{"dba"},
			Session: "m-1a2b", MFA: true, Subject: "phone", Expires: expires}},
		// authapi reissue with approved access requests.
		{auth, audit.Event{Type: audit.CertIssued, User: "alice", Roles: []string{"dev", "dba"}, Cluster: "example", Proxy: "proxy-eu-1",
			Request: "req-1,req-2", Expires: expires, Command: "user certificates with access requests"}},
		{auth, audit.Event{Type: audit.MFAFailed, User: "alice", Node: "db-1", Login: "postgres", Proxy: "proxy-eu-1", Roles: []string{"dba"}, Error: "wrong code"}},
		{auth, audit.Event{Type: audit.MFAFailed, User: "alice", Proxy: "proxy-eu-1", Error: "adding a device: bad code"}},
		{auth, audit.Event{Type: audit.RecordingStored, Node: "db-1", Session: "0123456789abcdef0123456789abcdef", User: "alice", BytesOut: 12345}},
		{auth, audit.Event{Type: audit.RecordingStored, Node: "db-1", Session: "0123456789abcdef0123456789abcdef", User: "alice"}}, // empty file
		// ingress handleDial: OK, denied before and after the user is known, failed.
		{proxy, audit.Event{Type: audit.DialOK, Node: "db-1", Login: "alice", RemoteAddr: "198.51.100.7:50000", User: "alice", Roles: []string{"dev"}}},
		{proxy, audit.Event{Type: audit.DialDenied, Node: "db-1", Login: "alice", RemoteAddr: "198.51.100.7:50000", Error: "no valid client certificate: run jg login"}},
		{proxy, audit.Event{Type: audit.DialDenied, Node: "db-1", Login: "root", RemoteAddr: "198.51.100.7:50000", User: "alice", Roles: []string{"dev"}, Error: "access denied"}},
		{proxy, audit.Event{Type: audit.DialFailed, Node: "db-9", Login: "alice", User: "alice", Roles: []string{"dev"}, Error: "node db-9 is not known"}},
		// ingress EnforceLocks (no Session), then sshd's.
		{proxy, audit.Event{Type: audit.SessionTerminated, User: "alice", Roles: []string{"dev"}, Node: "db-1", Login: "alice", RemoteAddr: "198.51.100.7:50000", Error: "locked"}},
		{node, with(nodeEv(audit.SessionTerminated), func(e *audit.Event) { e.Error = "locked" })},
		// sshd sessions.
		{node, sess(audit.SessionStart)},
		{node, with(sess(audit.SessionEnd), func(e *audit.Event) { e.Command = "ls"; e.BytesIn = 10; e.BytesOut = 200; e.Code = 2 })},
		{node, sess(audit.SessionEnd)}, // a shell that wrote nothing and exited 0
		{node, with(sess(audit.Exec), func(e *audit.Event) { e.Command = "uptime" })},
		{node, with(sess(audit.Exec), func(e *audit.Event) { e.Command = "false"; e.Error = "could not start /bin/sh" })},
		{node, with(sess(audit.SFTP), func(e *audit.Event) { e.Command = "sftp" })},
		{node, with(sess(audit.SFTPOp), func(e *audit.Event) { e.Command = "open:write,create,trunc"; e.Path = "/home/alice/x" })},
		{node, with(sess(audit.SFTPOp), func(e *audit.Event) { e.Command = "open:read"; e.Path = "x" })},
		{node, with(sess(audit.SFTPOp), func(e *audit.Event) { e.Command = "rename"; e.Path = "a"; e.Path2 = "b" })},
		{node, with(sess(audit.SFTPOp), func(e *audit.Event) { e.Command = "mkdir"; e.Path = "(path too long)" })},
		{node, with(sess(audit.SFTPOp), func(e *audit.Event) { e.Command = "unparseable" })},
		{node, with(nodeEv(audit.PortForward), func(e *audit.Event) { e.Command = "localhost:5432" })},
		{node, with(nodeEv(audit.PortForward), func(e *audit.Event) {
			e.Command = "localhost:5432"
			e.Error = "certificate does not permit port forwarding"
		})},
		// sshd refuse: a plain key (no user), a denial.
		{node, audit.Event{Time: time.Now().UTC(), Type: audit.AuthFailed, Server: node, Cluster: "example", Node: "db-1", Login: "root", RemoteAddr: "198.51.100.7:50000", Error: "node db-1 accepts only Jumpgate user certificates"}},
		{node, audit.Event{Time: time.Now().UTC(), Type: audit.SessionDenied, Server: node, Cluster: "example", Node: "db-1", Login: "root", RemoteAddr: "198.51.100.7:50000", User: "alice", Roles: []string{"dev"}, Error: "access denied"}},
	}
}

func TestSchemaAcceptsWhatCodeWrites(t *testing.T) {
	v, err := audittest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, s := range samples() {
		var buf bytes.Buffer
		audit.NewWriter(&buf, s.server, nil).Emit(s.e)
		if err := v.Validate(buf.Bytes()); err != nil {
			t.Errorf("%s", err)
			t.Logf("line: %s", buf.Bytes())
		}
		covered[s.e.Type] = true
	}
	for _, typ := range audit.Types() {
		if !covered[typ] {
			t.Errorf("no sample of %q: add one as the code writes it", typ)
		}
	}
}

func TestSchemaAcceptsWholeSeconds(t *testing.T) {
	v, err := audittest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	// Go leaves out the fraction when it is zero.
	e := audit.Event{Time: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC), Type: audit.MFAEnrolled, User: "alice"}
	var buf bytes.Buffer
	audit.NewWriter(&buf, "auth/example", nil).Emit(e)
	if !bytes.Contains(buf.Bytes(), []byte(`"2025-06-01T12:00:00Z"`)) {
		t.Fatalf("unexpected time encoding: %s", buf.Bytes())
	}
	if err := v.Validate(buf.Bytes()); err != nil {
		t.Error(err)
	}
}

func TestSchemaRejects(t *testing.T) {
	v, err := audittest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	const ok = `"time":"2025-06-01T12:00:00.5Z","server":"node/db-1","user":"alice","login":"alice","node":"db-1","session":"s1"`
	if err := v.Validate([]byte(`{"type":"session.start",` + ok + `}`)); err != nil {
		t.Fatalf("the base line is invalid: %v", err)
	}
	for _, tc := range []struct {
		name, line string
		want       []string // in the error
	}{
		{"unknown field", `{"type":"session.start",` + ok + `,"usr":"x"}`, []string{`"session.start" event`, "'usr'"}},
		{"renamed field", `{"type":"session.start","time":"2025-06-01T12:00:00Z","server":"node/db-1","user":"alice","os_login":"alice","node":"db-1","session":"s1"}`, []string{"os_login", "missing property 'login'"}},
		{"missing time", `{"type":"mfa.enrolled","server":"auth/x","user":"alice"}`, []string{"missing property 'time'"}},
		{"missing per-type field", `{"type":"access_request.expired","time":"2025-06-01T12:00:00Z","server":"auth/x","subject":"alice"}`, []string{"request_id"}},
		{"request neither created nor refused", `{"type":"access_request.created","time":"2025-06-01T12:00:00Z","server":"auth/x","user":"alice","roles":["dba"]}`, []string{"request_id", "error"}},
		{"bad time", `{"type":"session.start","time":"2025-06-01 12:00:00","server":"node/db-1","user":"alice","login":"alice","node":"db-1","session":"s1"}`, []string{"time:", "date-time"}},
		{"bad expires", `{"type":"mfa.enrolled","time":"2025-06-01T12:00:00Z","server":"auth/x","user":"alice","expires":"tomorrow"}`, []string{"expires:"}},
		{"unknown type", `{"type":"session.begin",` + ok + `}`, []string{"type:"}},
		{"bad server", `{"type":"session.start","time":"2025-06-01T12:00:00Z","server":"db-1","user":"alice","login":"alice","node":"db-1","session":"s1"}`, []string{"server:"}},
		{"wrong JSON type", `{"type":"session.end",` + ok + `,"exit_code":"1","roles":"dev"}`, []string{"exit_code:", "roles:"}},
		{"sftp op without path", `{"type":"session.sftp.op",` + ok + `,"command":"remove"}`, []string{"missing property 'path'"}},
		{"unknown sftp op", `{"type":"session.sftp.op",` + ok + `,"command":"delete","path":"x"}`, []string{"command:"}},
		{"cert for nobody", `{"type":"cert.issued","time":"2025-06-01T12:00:00Z","server":"auth/x","command":"renewed"}`, []string{"'user'", "'node'"}},
		{"not JSON", `{"type":`, []string{"not JSON"}},
		{"empty", ``, []string{"empty line"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Validate([]byte(tc.line))
			if err == nil {
				t.Fatalf("accepted %s", tc.line)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestSchemaValidateFile(t *testing.T) {
	v, err := audittest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := audit.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	w := audit.NewWriter(f, "auth/example", nil)
	w.Emit(audit.Event{Type: audit.MFAEnrolled, User: "alice"})
	w.Emit(audit.Event{Type: audit.MFAEnrolled, User: "bob"})
	w.Emit(audit.Event{Type: audit.UserDeleted, User: "admin", Subject: "bob"})
	f.Close()

	counts, err := v.ValidateFile(path)
	if err != nil {
		t.Fatalf("ValidateFile: %v", err)
	}
	if want := map[string]int{audit.MFAEnrolled: 2, audit.UserDeleted: 1}; !reflect.DeepEqual(counts, want) {
		t.Errorf("counts = %v, want %v", counts, want)
	}

	// A bad line 4 and 6, and a last line still being written.
	b, _ := os.ReadFile(path)
	b = append(b, `{"type":"user.deleted","time":"2025-06-01T12:00:00Z","server":"auth/x","user":"admin"}`+"\n"...)
	b = append(b, `{"type":"mfa.enrolled","time":"2025-06-01T12:00:00Z","server":"auth/x","user":"carol"}`+"\n"...)
	b = append(b, `{"type":"mfa.enrolled","time":"2025-06-01T12:00:00Z","server":"auth/x"}`+"\n"...)
	b = append(b, `{"type":"mfa.enrolled","time":"2025-06-01T12:00:00Z","server":"auth/x","user":"dave"}`...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	counts, err = v.ValidateFile(path)
	if err == nil {
		t.Fatal("ValidateFile accepted a file with invalid lines")
	}
	for _, w := range []string{"line 4:", "missing property 'subject'", "1 more invalid"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
	if want := map[string]int{audit.MFAEnrolled: 4, audit.UserDeleted: 1}; !reflect.DeepEqual(counts, want) {
		t.Errorf("counts = %v, want %v", counts, want)
	}

	if _, err := v.ValidateFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("ValidateFile of a missing file did not fail")
	}
}
