package reassembly

import (
	"context"
	"io"
	"testing"
	"time"
)

// A spool holds the NAR's last byte back until the ingest's verdict;
// Committed (the NAR is recorded) gives it, before finish, and a later
// finish with an error does not take it back.
func TestSpoolCommittedReleasesLastByte(t *testing.T) {
	sp, err := newSpool(t.TempDir(), 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Write([]byte("abcd")); err != nil {
		t.Fatal(err)
	}
	rd := sp.reader(context.Background())
	defer rd.Close()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(rd); got <- b }()
	select {
	case b := <-got:
		t.Fatalf("read %q before any verdict", b)
	case <-time.After(50 * time.Millisecond):
	}
	sp.Committed()
	select {
	case b := <-got:
		if string(b) != "abcd" {
			t.Fatalf("read %q after Committed, want abcd", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the last byte was still held back after Committed")
	}
	sp.finish(io.ErrUnexpectedEOF)
	r2 := sp.reader(context.Background())
	defer r2.Close()
	if b, err := io.ReadAll(r2); err != nil || string(b) != "abcd" {
		t.Errorf("after a later failing finish: %q, %v; the first verdict stands", b, err)
	}
}
