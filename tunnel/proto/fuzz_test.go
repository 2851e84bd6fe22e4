package proto

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func seedFrames(f *testing.F) {
	for _, m := range validMessages() {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2]) // truncated body
		f.Add(b[:3])        // truncated header
		f.Add(append(b, "trailing raw bytes"...))
	}
	huge := []byte{byte(TypeHello), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(huge[1:], MaxBodyLen+1)
	f.Add(huge)
	f.Add([]byte{byte(TypeHello), 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{42, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{})
}

// FuzzReadFrame feeds arbitrary bytes to ReadFrame and Decode. They must
// never panic, never return a body above MaxBodyLen, never consume more than
// one frame, and what decodes must re-encode to something that decodes to the
// same thing.
func FuzzReadFrame(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		typ, body, err := ReadFrame(r)
		if err != nil {
			return
		}
		if len(body) > MaxBodyLen {
			t.Fatalf("body of %d bytes accepted", len(body))
		}
		if consumed := len(data) - r.Len(); consumed != HeaderLen+len(body) {
			t.Fatalf("consumed %d bytes for a %d-byte frame", consumed, HeaderLen+len(body))
		}
		re, err := AppendFrame(nil, typ, body)
		if err != nil || !bytes.Equal(re, data[:len(re)]) {
			t.Fatalf("re-framing differs: %x vs %x (%v)", re, data, err)
		}
		checkDecode(t, typ, body)
	})
}

// FuzzDecode fuzzes the message decoder directly with a type and a body.
func FuzzDecode(f *testing.F) {
	for _, m := range validMessages() {
		b, _ := Encode(m)
		f.Add(byte(m.Type()), b[HeaderLen:])
		f.Add(byte(m.Type()), b[HeaderLen:len(b)-1])
	}
	f.Add(byte(TypeHello), []byte(`{"version":1,"node_id":"n","labels":{"a":"b"}}`))
	f.Add(byte(TypeHello), []byte(`{"version":-1,"node_id":""}`))
	f.Add(byte(TypeDialRequest), []byte(`null`))
	f.Add(byte(200), []byte(`{}`))
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		checkDecode(t, Type(typ), body)
	})
}

func checkDecode(t *testing.T, typ Type, body []byte) {
	m, err := Decode(typ, body)
	if err != nil {
		return
	}
	if m.Type() != typ {
		t.Fatalf("decoded %s from a %s frame", m.Type(), typ)
	}
	enc, err := Encode(m)
	if err != nil {
		// Re-encoding can only grow a body through JSON escaping; a body
		// that was within limits but escapes larger is fine to refuse.
		return
	}
	m2, err := ReadMessage(bytes.NewReader(enc))
	if err != nil {
		t.Fatalf("re-encoded %#v does not decode: %v", m, err)
	}
	enc2, err := Encode(m2)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding not stable: %q vs %q (%v)", enc, enc2, err)
	}
}
