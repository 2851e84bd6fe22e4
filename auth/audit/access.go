package audit

import "slices"

// Access request event types, written by the auth server when a user asks
// for more roles for a while and a reviewer answers.
const (
	// AccessRequestCreated: a user asked for roles. User is the requester,
	// Request the request id, Roles the roles asked for, Reason the
	// requester's reason, Proxy the proxy the request came through. A
	// request refused before it was created has Error instead of Request.
	AccessRequestCreated = "access_request.created"
	// AccessRequestApproved: a reviewer granted a request. User is the
	// reviewer, Subject the requester, Request the request id, Roles the
	// roles granted, Reason the review's comment, Expires when the grant
	// ends.
	AccessRequestApproved = "access_request.approved"
	// AccessRequestDenied: a reviewer refused a request. The fields are
	// those of AccessRequestApproved, without Expires.
	AccessRequestDenied = "access_request.denied"
	// AccessRequestExpired: a request, or the access it granted, expired.
	// Subject is the requester, Request the request id.
	AccessRequestExpired = "access_request.expired"
)

// Second factor (TOTP) event types, written by the auth server.
const (
	// MFAEnrolled: User enrolled a TOTP device; Subject is the device's
	// name.
	MFAEnrolled = "mfa.enrolled"
	// MFARemoved: User (the actor, a user or an administrator) removed
	// Subject's TOTP device; Command is the device's name.
	MFARemoved = "mfa.removed"
	// MFAVerified: User gave a good TOTP code and was issued a
	// per-session certificate for Login on Node: Session is the
	// certificate's id, Expires its end, MFA true.
	MFAVerified = "mfa.verified"
	// MFAFailed: User's TOTP code, or a per-session certificate, was
	// refused. Node and Login are the session's, when it was for one (not
	// when enrolling a device); Error says why.
	MFAFailed = "mfa.failed"
)

// Other event types added with access requests.
const (
	// UserUpdated: the auth server changed a user. User is the actor,
	// Subject the user changed, Roles the user's roles after the change.
	UserUpdated = "user.updated"
	// RecordingStored: the auth server stored a session recording. Node,
	// Session and User are the recorded session's, BytesOut the size of
	// the stored file.
	RecordingStored = "session.recording"
	// SFTPOp: the node saw an SFTP request in the client's byte stream
	// (it audits the stream, not the file system, so it also sees
	// requests that the server then refused). User, Login, Node and
	// Session are the session's; Command is the operation: open,
	// opendir, remove, rename, mkdir, rmdir, setstat, symlink or
	// hardlink, and for open the flags after a colon, from read, write,
	// create, trunc, append and excl in that order
	// ("open:write,create,trunc"). Path is the first path of the request,
	// Path2 the second for rename, symlink and hardlink, both as the
	// client sent them (not resolved against the login's home directory,
	// invalid UTF-8 replaced, at most 4096 bytes; "(path too long)" for a
	// request too large to audit, "(malformed)" for one that could not be
	// decoded). Note SYMLINK's order: OpenSSH's client and server, and
	// most others, send the target first and the new link second, the
	// reverse of the SFTP draft, so Path is usually the target. Command
	// "unparseable" (without Path) means the stream stopped looking like
	// SFTP; nothing after it in that session was audited.
	SFTPOp = "session.sftp.op"
)

// Types returns every event type, sorted. It is a new slice on each call.
func Types() []string {
	t := []string{
		// audit.go
		Login, LoginFailed, CertIssued, NodeJoined, JoinFailed,
		UserCreated, UserDeleted, RoleUpserted, RoleDeleted,
		TokenCreated, TokenDeleted,
		DialOK, DialDenied, DialFailed,
		SessionStart, SessionEnd, Exec, SFTP, PortForward, SessionDenied, AuthFailed,
		CertAuthorityX, MeshKeyChanged, BackupTaken,
		// locks.go
		LockCreated, LockDeleted, SessionTerminated,
		// access.go
		AccessRequestCreated, AccessRequestApproved, AccessRequestDenied, AccessRequestExpired,
		MFAEnrolled, MFARemoved, MFAVerified, MFAFailed,
		UserUpdated, RecordingStored, SFTPOp,
	}
	slices.Sort(t)
	return t
}
