package audit

import _ "embed"

// Schema is the JSON Schema (draft 2020-12) of one audit line, as
// schema.json: required fields overall and per event type, every field's
// JSON type, and no unknown fields. audittest.NewValidator compiles it; it
// is also what docs/audit.md gives SIEM engineers. Do not modify it: it is
// shared by every caller.
//
//go:embed schema.json
var Schema []byte
