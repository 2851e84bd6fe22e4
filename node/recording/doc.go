// Package recording records SSH terminal sessions in asciicast v2 format,
// stores the recordings, and plays them back.
//
// The files are what asciinema writes
// (https://docs.asciinema.org/manual/asciicast/v2/), so asciinema's player
// and CLI (asciinema play FILE) play them as they are.
//
// # Format
//
// A recording is UTF-8 text, one JSON value per line. The first line is the
// header, a JSON object:
//
//	{"version":2,"width":80,"height":24,"timestamp":1700000000,"env":{"SHELL":"/bin/bash","TERM":"xterm-256color"}}
//
// version is always 2; width and height are the terminal's size at the
// start (80x24 when unknown, at most 10000 each); timestamp the start in
// Unix seconds; command, title and env are optional. Every further line is
// an event, a JSON array [time, code, data]:
//
//	[0.248051, "o", "\u001b[1mhello\u001b[0m\r\n"]
//	[1.002319, "i", "ls\r"]
//	[3.500000, "r", "120x40"]
//	[9.000000, "m", "recording truncated: limit of 268435456 bytes reached"]
//
// time is the number of seconds since the start, written with six
// decimals, never decreasing. code is "o" for output (what the program
// wrote to the terminal), "i" for input (what the user typed), "r" for a
// resize (data "COLSxROWS") or "m" for a marker (data is its label).
// Strings are JSON-encoded without HTML escaping: <, > and & appear as
// they are, as asciinema writes them.
//
// # Writing
//
// A Writer writes the header at once and each event as one line with one
// Write call, unbuffered, so a recording cut short by a crash is readable
// to its last complete line. Event times come from a clock (WriterOptions.Now)
// and are clamped so they never go back.
//
// JSON strings hold Unicode text, but a terminal stream is bytes that
// arrive in arbitrary chunks, and a character of two to four bytes can be
// split between two chunks. The Writer keeps, for output and for input
// apart, the incomplete UTF-8 sequence at the end of a chunk (at most 3
// bytes) and puts it in front of the next chunk of the same stream. So any
// valid UTF-8 stream comes back byte for byte (Output returns it), however
// it was chunked. Bytes that are not valid UTF-8 cannot be stored: each
// such byte becomes U+FFFD (the replacement character, 3 bytes), and so do
// the bytes of a sequence still incomplete at Close. A chunk that is all
// held back writes no event: no output or input event has empty data. A
// chunk over 512 KiB is written as several events, cut between
// characters, so that no line comes near the Reader's 4 MiB limit even
// when JSON escapes every byte; for the same reason marker labels are cut
// to 512 KiB and the header's command, title and env values to 64 KiB.
//
// # Limits
//
// A Writer stops at WriterOptions.Limit bytes (256 MiB by default, header
// included): when an event would go over it, it writes one marker event
// "recording truncated: limit of N bytes reached" instead, and drops
// everything after. Writer.Truncated and Meta.Truncated report it. After
// the first write error the Writer drops events too, and Close and Err
// return the error.
//
// A Reader refuses lines over 4 MiB (MaxLine) without reading them into
// memory, times that are negative, not finite or more than a microsecond
// before the previous event's, and terminal sizes over 10000; its errors
// name the line, "line 7: ...".
//
// # Store
//
// A Store keeps recordings in one directory (mode 0700):
//
//	SESSION.cast   one recording per session, mode 0600
//	index.jsonl    the index, mode 0600
//
// A session id is 1 to 64 letters, digits, '.', '_' and '-', not starting
// with '.'; it names the file, so no other id is accepted. Temporary files
// of Put start with '.' and can never clash with a recording.
//
// The index is only ever appended to, one JSON object (a Meta) per line,
// each with one Write call to a file opened with O_APPEND:
//
//	{"session":"a1b2","user":"alice","login":"root","node":"db1","start":"2024-05-01T10:00:00Z","cols":80,"rows":24,"bytes":92,"output_bytes":0,"input_bytes":0,"file":"a1b2.cast"}
//	{"session":"a1b2",...,"end":"2024-05-01T10:20:00Z","bytes":51234,"output_bytes":48871,"input_bytes":310,"file":"a1b2.cast"}
//	{"session":"a1b2",...,"removed":true}
//
// Store.Create appends a line when a recording starts (no "end"), and
// Recording.Finish one when it ends; Store.Put appends one for a complete
// recording received from elsewhere. For each session the last line wins.
// Store.Remove deletes the file and then appends a tombstone, the last
// Meta with "removed": true, after which List and Get leave the session
// out. Lines that are not JSON objects with a valid session id, or over
// 1 MiB, are skipped and counted (Store.ListWithStats): a crash in the
// middle of an append damages one line, and the next append starts on a
// new line. Start and End are stored in UTC.
//
// List and Get read the whole index; it grows by two lines per session,
// which a node or auth server can read in well under a second for
// hundreds of thousands of sessions.
//
// # Playing
//
// Play writes the output events to an io.Writer at the recorded pace,
// pauses longer than PlayOptions.MaxIdle (2 s by default) shortened to it,
// and then all pauses divided by PlayOptions.Speed.
package recording
