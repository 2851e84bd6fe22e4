// Package archtest holds the tests that keep Jumpgate's architecture honest:
// the import rules between auth/, mesh/, tunnel/ and node/, and a doc
// comment on every package. It has no code of its own.
package archtest
