package recording

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// BenchmarkOutput is the recording's cost on a session's data path: every
// chunk of output a node sends is also encoded as an asciicast event.
// Compare with BenchmarkOutputBaseline (the same chunks copied, unrecorded).
func BenchmarkOutput(b *testing.B) {
	chunk := terminalChunk()
	w, err := NewWriter(io.Discard, Header{}, time.Now(), WriterOptions{Limit: 1 << 62})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for b.Loop() {
		w.Output(chunk)
	}
}

// BenchmarkOutputBaseline copies the same chunks without recording them.
func BenchmarkOutputBaseline(b *testing.B) {
	chunk := terminalChunk()
	var dst bytes.Buffer
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		dst.Reset()
		dst.Write(chunk)
	}
}

// terminalChunk is 4 KiB of what a terminal shows: text, escapes, UTF-8.
func terminalChunk() []byte {
	line := "\x1b[1;32muser@node\x1b[0m:~$ ls -l /var/log  — größe 4096 €\r\n"
	var b bytes.Buffer
	for b.Len() < 4096 {
		b.WriteString(line)
	}
	return b.Bytes()[:4096]
}
