package audit

// Lock event types: a lock created or removed (Subject is the lock id,
// Command what it names), and a live session ended because of one.
const (
	LockCreated       = "lock.created"
	LockDeleted       = "lock.deleted"
	SessionTerminated = "session.terminated"
)
