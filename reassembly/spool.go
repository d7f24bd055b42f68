package reassembly

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"

	"github.com/narstore/narstore/ingest"
)

// spool holds the bytes of a NAR that is being ingested from upstream, so
// clients can stream it while the ingest runs. The file is unlinked at once
// and freed when the last user closes it. Readers never get the final byte
// until the ingest has verified the whole NAR and committed it: a client can
// never receive a complete NAR that failed verification.
type spool struct {
	f    *os.File
	size int64

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	written int64
	done    bool
	err     error // final verdict once done
	users   int
}

func newSpool(dir string, size int64) (*spool, error) {
	f, err := os.CreateTemp(dir, "spool-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return &spool{f: f, size: size, changed: make(chan struct{}), users: 1}, nil
}

// Write appends ingest bytes. It is called by one goroutine only.
func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	off := s.written
	s.mu.Unlock()
	n, err := s.f.WriteAt(p, off)
	s.mu.Lock()
	s.written += int64(n)
	s.notify()
	s.mu.Unlock()
	return n, err
}

// finish records the ingest's verdict (nil: verified and committed), unless
// Committed gave it already, and lets the spool go.
func (s *spool) finish(err error) {
	s.verdict(err)
	s.release()
}

// Committed implements ingest.Committer: the NAR is verified and recorded,
// so readers get its last byte now, not after the work ingest does next.
func (s *spool) Committed() { s.verdict(nil) }

// verdict records the first verdict and wakes the readers.
func (s *spool) verdict(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.done = true
	s.err = err
	if err == nil && s.written != s.size {
		s.err = errors.New("spool length differs from NarSize")
	}
	s.notify()
}

func (s *spool) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *spool) acquire() {
	s.mu.Lock()
	s.users++
	s.mu.Unlock()
}

func (s *spool) release() {
	s.mu.Lock()
	s.users--
	last := s.users == 0
	s.mu.Unlock()
	if last {
		s.f.Close()
	}
}

// spoolReader reads a spool from the start, waiting for bytes as they arrive.
type spoolReader struct {
	s   *spool
	ctx context.Context
	off int64
}

func (s *spool) reader(ctx context.Context) *spoolReader {
	s.acquire()
	return &spoolReader{s: s, ctx: ctx}
}

func (r *spoolReader) Read(p []byte) (int, error) {
	for {
		r.s.mu.Lock()
		avail := r.s.written
		if !(r.s.done && r.s.err == nil) && avail == r.s.size {
			avail-- // hold the last byte back until verified
		}
		done, err, ch := r.s.done, r.s.err, r.s.changed
		r.s.mu.Unlock()
		if done && err != nil {
			return 0, err
		}
		if r.off < avail {
			n := int64(len(p))
			if n > avail-r.off {
				n = avail - r.off
			}
			m, err := r.s.f.ReadAt(p[:n], r.off)
			r.off += int64(m)
			if err == io.EOF {
				err = nil
			}
			return m, err
		}
		if done {
			return 0, io.EOF
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *spoolReader) Close() error {
	r.s.release()
	return nil
}

var _ ingest.Committer = (*spool)(nil)
