package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func validMessages() []Message {
	return []Message{
		Hello{Version: 1, NodeID: "web-1", Labels: map[string]string{"env": "prod", "team": "db"}, AgentVersion: "1.2.3", InstanceID: "abc", Slot: "10.0.0.1:3024"},
		Hello{Version: 7, NodeID: "n"},
		HelloAck{Version: 1, ProxyID: "p1", Accepted: true},
		HelloAck{Version: 1, ProxyID: "p1", Error: "certificate is for cluster other"},
		DialRequest{Version: 1, ClientAddr: "203.0.113.7:51234", User: "alice", SessionID: "s-1", RequestID: "r-1"},
		DialResponse{Version: 1, OK: true},
		DialResponse{Version: 1, Error: "node is not accepting connections"},
		Close{Version: 1, Code: CloseReplaced, Reason: "replaced by a newer tunnel from node web-1 (10.0.0.9:4711)"},
		Close{Version: 3, Code: CloseNormal},
		Drain{Version: 2, Reason: "upgrade", Deadline: time.Date(2026, 11, 21, 18, 0, 0, 0, time.UTC)},
		Drain{Version: 2},
	}
}

func TestDrainNeedsVersion2(t *testing.T) {
	b, _ := Encode(Drain{Version: 1, Reason: "x"})
	if _, err := ReadMessage(bytes.NewReader(b)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "Drain needs version 2") {
		t.Fatalf("a version 1 Drain: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	for _, m := range validMessages() {
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("write %#v: %v", m, err)
		}
	}
	buf.WriteString("raw bytes after the last frame")
	for _, want := range validMessages() {
		got, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("read %s: %v", want.Type(), err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %#v, want %#v", got, want)
		}
	}
	// ReadMessage must not read ahead: the raw bytes are all still there.
	if rest := buf.String(); rest != "raw bytes after the last frame" {
		t.Fatalf("bytes after the frames = %q", rest)
	}
	buf.Reset()
	if _, err := ReadMessage(&buf); err != io.EOF {
		t.Fatalf("read at end = %v, want io.EOF", err)
	}
}

func TestExpect(t *testing.T) {
	b, _ := Encode(HelloAck{Version: 1, ProxyID: "p", Accepted: true})
	if _, err := Expect[Hello](bytes.NewReader(b)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "expected Hello, got HelloAck") {
		t.Fatalf("Expect[Hello] on a HelloAck = %v", err)
	}
	ack, err := Expect[HelloAck](bytes.NewReader(b))
	if err != nil || ack.ProxyID != "p" || ack.Err() != nil {
		t.Fatalf("Expect[HelloAck] = %#v, %v", ack, err)
	}
}

func TestErrors(t *testing.T) {
	frame := func(typ byte, body string) []byte {
		b, err := AppendFrame(nil, Type(typ), []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name  string
		in    []byte
		is    error
		words string
	}{
		{"empty", nil, io.EOF, "EOF"},
		{"short header", []byte{1, 0, 0}, io.ErrUnexpectedEOF, "read frame header"},
		{"short body", frame(1, `{"version":1,"node_id":"n"}`)[:10], io.ErrUnexpectedEOF, "read Hello frame body (27 bytes)"},
		{"too large", []byte{1, 0xff, 0xff, 0xff, 0xff}, ErrFrameTooLarge, "announces 4294967295 bytes, a frame carries at most 65536"},
		{"just too large", []byte{3, 0, 1, 0, 1}, ErrFrameTooLarge, "DialRequest frame announces 65537 bytes"},
		{"unknown type", frame(9, `{}`), ErrUnknownType, "unknown message type 9: this side speaks tunnel protocol 1 through 2"},
		{"type zero", frame(0, `{}`), ErrUnknownType, "unknown message type 0"},
		{"newer version", frame(3, `{"version":3}`), ErrUnsupportedVersion, "DialRequest has version 3, this side speaks 1 through 2"},
		{"no version", frame(4, `{"ok":true}`), ErrMalformed, "DialResponse without a version"},
		{"hello without node", frame(1, `{"version":1}`), ErrMalformed, "Hello without node_id"},
		{"close without version", frame(5, `{"code":1,"reason":"r"}`), ErrMalformed, "Close without a version"},
		{"not json", frame(2, `{"version":1`), ErrMalformed, "HelloAck"},
		{"trailing garbage", frame(2, `{"version":1} x`), ErrMalformed, "HelloAck"},
		{"wrong json type", frame(1, `{"version":"1","node_id":"n"}`), ErrMalformed, "Hello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadMessage(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.words) {
				t.Fatalf("err = %q, want it to say %q", err, tt.words)
			}
		})
	}
}

func TestUnknownFieldsIgnored(t *testing.T) {
	// A newer peer may add fields without bumping the version.
	b, _ := AppendFrame(nil, TypeDialResponse, []byte(`{"version":1,"ok":true,"shiny_new_field":[1,2]}`))
	m, err := ReadMessage(bytes.NewReader(b))
	if err != nil || m.(DialResponse).Err() != nil {
		t.Fatalf("ReadMessage = %#v, %v", m, err)
	}
}

func TestNegotiate(t *testing.T) {
	if v, err := Negotiate(1); v != 1 || err != nil {
		t.Fatalf("Negotiate(1) = %d, %v", v, err)
	}
	if v, err := Negotiate(42); v != Version || err != nil {
		t.Fatalf("Negotiate(42) = %d, %v", v, err)
	}
	if _, err := Negotiate(0); !errors.Is(err, ErrUnsupportedVersion) || !strings.Contains(err.Error(), "upgrade the agent") {
		t.Fatalf("Negotiate(0) = %v", err)
	}
}

func TestEncodeTooLarge(t *testing.T) {
	labels := map[string]string{}
	for i := range 2000 {
		labels[strings.Repeat("k", 20)+string(rune('a'+i%26))+strings.Repeat("x", i%30)+string(rune(i))] = strings.Repeat("v", 40)
	}
	_, err := Encode(Hello{Version: 1, NodeID: "n", Labels: labels})
	if !errors.Is(err, ErrFrameTooLarge) || !strings.Contains(err.Error(), "Hello body is") {
		t.Fatalf("Encode(huge Hello) = %v", err)
	}
}

// TestNoAllocationFromLength checks that a frame announcing 4 GiB costs
// nothing: the length is checked before anything is allocated.
func TestNoAllocationFromLength(t *testing.T) {
	hdr := make([]byte, HeaderLen)
	hdr[0] = byte(TypeHello)
	binary.BigEndian.PutUint32(hdr[1:], 0xffffffff)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, _, err := ReadFrame(bytes.NewReader(hdr)); !errors.Is(err, ErrFrameTooLarge) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 256<<10 {
		t.Fatalf("100 oversized headers allocated %d bytes", d)
	}
}

func TestErrHelpers(t *testing.T) {
	if err := (HelloAck{}).Err(); err == nil || err.Error() != "refused without a reason" {
		t.Fatalf("empty HelloAck.Err() = %v", err)
	}
	if err := (DialResponse{Error: "busy"}).Err(); err == nil || err.Error() != "busy" {
		t.Fatalf("DialResponse.Err() = %v", err)
	}
}
