// Package audittest checks audit lines against audit.Schema, for tests and
// for tools that check a whole audit file.
package audittest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"jumpgate.dev/jumpgate/auth/audit"
)

// schemaURL is where the compiler finds audit.Schema; nothing is fetched.
const schemaURL = "https://jumpgate.dev/schemas/audit-event.json"

// Validator checks audit lines against audit.Schema. It is safe for
// concurrent use.
type Validator struct {
	schema *jsonschema.Schema
}

// NewValidator compiles audit.Schema. Formats (date-time) are asserted,
// not only annotated.
func NewValidator() (*Validator, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(audit.Schema))
	if err != nil {
		return nil, fmt.Errorf("parse audit schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, fmt.Errorf("load audit schema: %w", err)
	}
	s, err := c.Compile(schemaURL)
	if err != nil {
		return nil, fmt.Errorf("compile audit schema: %w", err)
	}
	return &Validator{schema: s}, nil
}

// Validate checks one line (a trailing newline is allowed). The error
// names the event type and each field that is wrong, and why.
func (v *Validator) Validate(line []byte) error {
	_, err := v.check(line)
	return err
}

// check validates line and returns its event type.
func (v *Validator) check(line []byte) (string, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	if len(bytes.TrimSpace(line)) == 0 {
		return "", errors.New("empty line: every line must be one JSON object")
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(line))
	if err != nil {
		return "", fmt.Errorf("not JSON: %w", err)
	}
	typ := ""
	if obj, ok := doc.(map[string]any); ok {
		typ, _ = obj["type"].(string)
	}
	err = v.schema.Validate(doc)
	if err == nil {
		return typ, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return typ, err
	}
	what := "event"
	if typ != "" {
		what = fmt.Sprintf("%q event", typ)
	}
	return typ, fmt.Errorf("%s does not match the audit schema: %s", what, strings.Join(leaves(ve, nil), "; "))
}

// leaves are the innermost causes of e, one per wrong field, each as
// "field: why".
func leaves(e *jsonschema.ValidationError, out []string) []string {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			out = leaves(c, out)
		}
		return out
	}
	// A leaf's Error is "at '/field': why", or "at '': why" for the
	// object as a whole (a missing or unknown field).
	msg := e.Error()
	if _, why, ok := strings.Cut(msg, "': "); ok && strings.HasPrefix(msg, "at '") {
		msg = why
		if len(e.InstanceLocation) > 0 {
			msg = strings.Join(e.InstanceLocation, "/") + ": " + why
		}
	}
	return append(out, msg)
}

// ValidateFile checks every line of the audit file at path. It returns how
// many valid lines there are of each event type and, if any line is
// invalid, an error that gives the first such line's number and why, and
// how many are invalid. A last line without a newline (being written) is
// checked too.
func (v *Validator) ValidateFile(path string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("validate audit file: %w", err)
	}
	defer f.Close()
	counts := make(map[string]int)
	r := bufio.NewReader(f)
	var first error
	bad := 0
	for n := 1; ; n++ {
		line, rerr := r.ReadBytes('\n')
		if len(line) > 0 {
			typ, err := v.check(line)
			if err != nil {
				bad++
				if first == nil {
					first = fmt.Errorf("%s line %d: %w", path, n, err)
				}
			} else {
				counts[typ]++
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return counts, fmt.Errorf("read %s line %d: %w", path, n, rerr)
		}
	}
	if first != nil {
		if bad > 1 {
			first = fmt.Errorf("%w (and %d more invalid lines)", first, bad-1)
		}
		return counts, first
	}
	return counts, nil
}
