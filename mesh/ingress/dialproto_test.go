package ingress

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestParseDialRequest(t *testing.T) {
	cases := []struct {
		in, code string
	}{
		{`{"v":1,"node":"node1","login":"alice"}` + "\n", ""},
		{`{"v":2,"node":"node1"}` + "\n", ""},
		{`{"v":2,"node":"node1","resume":true}` + "\n", ""},
		{`{"v":1,"node":"node1","resume":true}` + "\n", CodeBadRequest},
		{`{"v":3,"node":"node1"}` + "\n", CodeVersion},
		{`{"v":0,"node":"node1"}` + "\n", CodeVersion},
		{`{"v":1}` + "\n", CodeBadRequest},
		{`{"v":1,"node":"n","extra":1}` + "\n", CodeBadRequest},
		{"SSH-2.0-OpenSSH_9.2\r\n", CodeBadRequest},
		{strings.Repeat("x", MaxLineBytes+10), CodeBadRequest},
		{"", CodeBadRequest},
	}
	for _, c := range cases {
		req, resp := ParseDialRequest(bufio.NewReader(strings.NewReader(c.in)))
		switch {
		case c.code == "" && resp != nil:
			t.Errorf("%q: unexpected refusal %+v", c.in, resp)
		case c.code != "" && (resp == nil || resp.Code != c.code):
			t.Errorf("%q: got %+v, want code %s", c.in, resp, c.code)
		case c.code == "" && req.Node != "node1":
			t.Errorf("%q: node %q", c.in, req.Node)
		}
	}
}

func TestReadLineKeepsTrailingBytes(t *testing.T) {
	br := bufio.NewReader(strings.NewReader(`{"v":1,"ok":true}` + "\nSSH-2.0-x"))
	var r DialResponse
	if err := ReadLine(br, &r); err != nil || !r.OK {
		t.Fatalf("ReadLine: %v %+v", err, r)
	}
	rest := make([]byte, 9)
	if n, _ := br.Read(rest); string(rest[:n]) != "SSH-2.0-x" {
		t.Fatalf("bytes after the line lost: %q", rest[:n])
	}
}

func FuzzParseDialRequest(f *testing.F) {
	f.Add([]byte(`{"v":1,"node":"node1","login":"alice"}` + "\n"))
	f.Add([]byte(`{"v":1,"node":""}` + "\n"))
	f.Add([]byte("\x16\x03\x01\x00"))
	f.Add([]byte(`{"v":99999999999999999999}` + "\n"))
	f.Add(bytes.Repeat([]byte("{"), 5000))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, resp := ParseDialRequest(bufio.NewReaderSize(bytes.NewReader(b), 512))
		if resp == nil && (req.Node == "" || req.V < MinDialVersion || req.V > DialVersion || (req.Resume && req.V < 2)) {
			t.Fatalf("accepted invalid request %+v", req)
		}
		if resp != nil && resp.Code == "" {
			t.Fatalf("refusal without a code: %+v", resp)
		}
	})
}
