package ingest_test

import (
	"bytes"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/narstore/narstore/ingest"
)

// slowTail yields head at once, then tail after a pause, counting the bytes
// it hands out. The count is a plain int on purpose: the race detector
// flags reading it after EOF unless EOF waits for the feeding goroutine.
type slowTail struct {
	head, tail []byte
	pause      time.Duration
	n          int64
}

func (s *slowTail) Read(p []byte) (int, error) {
	var n int
	var err error
	switch {
	case len(s.head) > 0:
		n = copy(p, s.head)
		s.head = s.head[n:]
	case len(s.tail) > 0:
		time.Sleep(s.pause)
		n = copy(p, s.tail)
		s.tail = s.tail[n:]
	default:
		err = io.EOF
	}
	s.n += int64(n) // also at EOF, like the ingest's counting reader
	return n, err
}

// EOF from the xz program must not come back before the goroutine feeding it
// is done with the source: the ingest reads the source's byte count after
// EOF. Ordering through the pipe and the child process is invisible to the
// race detector (CI flagged it), and a stalled source could still be read.
func TestExecDecoderEOFWaitsForFeeder(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz program not installed")
	}
	want := bytes.Repeat([]byte("narstore "), 10000)
	cmd := exec.Command("xz", "-c")
	cmd.Stdin = bytes.NewReader(want)
	xzData, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	// Trailing bytes after the stream are ignored (--single-stream), but
	// still read by the feeder.
	src := &slowTail{head: xzData, tail: make([]byte, 100), pause: 200 * time.Millisecond}
	dec, err := ingest.Decompress(src, "xz", ingest.XZExec)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got, err := io.ReadAll(dec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("decoded bytes differ")
	}
	if n := src.n; n != int64(len(xzData)+100) {
		t.Fatalf("EOF came with %d of %d source bytes read: the feeder was still running", n, len(xzData)+100)
	}
}
