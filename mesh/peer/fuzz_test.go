package peer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

func validRequests() []DialRequest {
	return []DialRequest{
		{Version: 1, Node: "web-1", User: "alice", ClientAddr: "203.0.113.7:51234", Hops: []string{"eu-1"}},
		{Version: 1, Node: "n"},
		{Version: 1, Node: "db.prod-3", Hops: []string{"a", "b"}},
	}
}

func validResponses() []response {
	return []response{
		{Version: 1, OK: true},
		{Version: 1, Code: CodeOffline, Message: "node web-1 has no tunnel to proxy b"},
		{Version: 1, Code: CodeVersion, Message: "this proxy speaks peer protocol 1 through 1"},
		{Version: 7, Code: "frobnicated"},
	}
}

func TestWireRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	for _, r := range validRequests() {
		buf.Write(mustRequest(t, r))
	}
	for _, r := range validResponses() {
		b, err := encodeResponse(r)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
	}
	buf.WriteString("raw bytes after the frames")
	for _, want := range validRequests() {
		typ, body, err := readFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeRequest(typ, body)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("request %+v decoded as %+v, %v", want, got, err)
		}
	}
	for _, want := range validResponses() {
		typ, body, err := readFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeResponse(typ, body)
		if err != nil || got != want {
			t.Fatalf("response %+v decoded as %+v, %v", want, got, err)
		}
	}
	// readFrame never reads ahead.
	if rest := buf.String(); rest != "raw bytes after the frames" {
		t.Fatalf("left after the frames: %q", rest)
	}
	if _, _, err := readFrame(&buf); err == nil {
		t.Fatal("reading raw bytes as a frame succeeded")
	}
	huge := DialRequest{Version: 1, Node: "n", User: string(make([]byte, maxBodyLen))}
	if _, err := encodeRequest(huge); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("encoding an oversized request = %v", err)
	}
	if got := hopsWith([]string{"a"}, "a"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("hopsWith repeats the last hop: %v", got)
	}
}

func seedFrames(f *testing.F) {
	for _, r := range validRequests() {
		b, err := encodeRequest(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2]) // truncated body
		f.Add(b[:3])        // truncated header
		f.Add(append(b, "trailing raw bytes"...))
	}
	for _, r := range validResponses() {
		b, err := encodeResponse(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	huge := []byte{byte(typeDialRequest), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(huge[1:], maxBodyLen+1)
	f.Add(huge)
	f.Add([]byte{byte(typeDialRequest), 0xff, 0xff, 0xff, 0xff})
	f.Add(rawFrame(typeDialRequest, `{"version":2,"node":"n"}`))
	f.Add(rawFrame(typeDialRequest, `{"version":1,"node":"n","hops":["a","b","c","d","e","f","g","h","i"]}`))
	f.Add(rawFrame(typeDialRequest, `{"version":1,"node":"n","hops":[""]}`))
	f.Add(rawFrame(typeDialRequest, `{"version":9,"node":{}}`))
	f.Add(rawFrame(typeDialResponse, `{"version":1,"ok":true,"code":"offline"}`))
	f.Add(rawFrame(typeDialResponse, `{"version":1}`))
	f.Add(rawFrame(0, `{}`))
	f.Add(rawFrame(42, `{}`))
	f.Add([]byte{})
}

// FuzzReadFrame feeds arbitrary bytes to readFrame and both decoders. They
// must never panic, never return a body above the limit, never consume more
// than one frame, and what decodes must re-encode to the same thing.
func FuzzReadFrame(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		typ, body, err := readFrame(r)
		if err != nil {
			return
		}
		if len(body) > maxBodyLen {
			t.Fatalf("body of %d bytes accepted", len(body))
		}
		if consumed := len(data) - r.Len(); consumed != headerLen+len(body) {
			t.Fatalf("consumed %d bytes for a %d-byte frame", consumed, headerLen+len(body))
		}
		checkDecode(t, typ, body)
	})
}

// FuzzDecode fuzzes the decoders directly with a type and a body.
func FuzzDecode(f *testing.F) {
	for _, r := range validRequests() {
		b, _ := encodeRequest(r)
		f.Add(byte(typeDialRequest), b[headerLen:])
		f.Add(byte(typeDialRequest), b[headerLen:len(b)-1])
	}
	for _, r := range validResponses() {
		b, _ := encodeResponse(r)
		f.Add(byte(typeDialResponse), b[headerLen:])
	}
	f.Add(byte(typeDialRequest), []byte(`{"version":1,"node":"n","user":"\u0000","client_addr":"x"}`))
	f.Add(byte(typeDialRequest), []byte(`null`))
	f.Add(byte(typeDialResponse), []byte(`{"version":-1,"ok":false,"code":""}`))
	f.Add(byte(200), []byte(`{}`))
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		checkDecode(t, frameType(typ), body)
	})
}

func checkDecode(t *testing.T, typ frameType, body []byte) {
	if req, err := decodeRequest(typ, body); err == nil {
		if typ != typeDialRequest {
			t.Fatalf("decoded a DialRequest from a %s frame", typ)
		}
		if req.Version < MinVersion || req.Version > Version || len(req.Hops) > MaxHops || req.Node == "" {
			t.Fatalf("accepted an invalid request %+v", req)
		}
		enc, err := encodeRequest(req)
		if err != nil {
			return // JSON escaping can grow a body past the limit
		}
		typ2, body2, err := readFrame(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-encoded %+v does not frame: %v", req, err)
		}
		req2, err := decodeRequest(typ2, body2)
		if err != nil || !reflect.DeepEqual(normalize(req), normalize(req2)) {
			t.Fatalf("request %+v re-decoded as %+v, %v", req, req2, err)
		}
	} else if !errors.Is(err, errMalformed) && !errors.Is(err, errNewerVersion) {
		t.Fatalf("request decode error %v is neither malformed nor a newer version", err)
	}
	if resp, err := decodeResponse(typ, body); err == nil {
		if resp.OK == (resp.Code != "") || resp.Version < MinVersion {
			t.Fatalf("accepted an inconsistent response %+v", resp)
		}
		enc, err := encodeResponse(resp)
		if err != nil {
			return
		}
		typ2, body2, err := readFrame(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-encoded %+v does not frame: %v", resp, err)
		}
		resp2, err := decodeResponse(typ2, body2)
		if err != nil || resp != resp2 {
			t.Fatalf("response %+v re-decoded as %+v, %v", resp, resp2, err)
		}
		if e := remoteError(resp); !resp.OK && (!knownCode(e.Code) || e.Message == "") {
			t.Fatalf("response %+v became error %+v", resp, e)
		}
	}
}

// normalize treats an empty Hops like a missing one (omitempty).
func normalize(r DialRequest) DialRequest {
	if len(r.Hops) == 0 {
		r.Hops = nil
	}
	return r
}
