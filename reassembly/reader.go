// Package reassembly turns an index entry and its chunks back into a NAR
// byte stream, and serves NARs to Nix clients over HTTP.
package reassembly

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"sync"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/refnorm"
	"github.com/narstore/narstore/store"
)

// ChunkSource returns the verified bytes of a chunk: Is store.ErrNotFound when
// missing and store.ErrCorrupt when damaged. The returned slice must not be
// modified. *store.Chunks and *Cache implement it. (Asked for a delta base,
// store.BaseLoad(ctx), a source may skip the check: see Cache.)
type ChunkSource interface {
	Chunk(ctx context.Context, id chunker.ID) ([]byte, error)
}

// ErrNarHash means the reassembled bytes do not hash to the NAR's NarHash.
var ErrNarHash = errors.New("reassembled NAR does not match its NarHash")

// DefaultReadAhead is how many chunks a Reader fetches ahead of the reader.
const DefaultReadAhead = 8

// Reader streams a NAR, or a byte range of it, from its chunks. Chunks are
// fetched by up to ReadAhead goroutines ahead of the consumer, and delivered in
// order. Any chunk error ends the stream with that error. Close it.
type Reader struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	queue  chan chan fetched
	cur    []byte
	err    error

	// full-NAR verification
	h       hash.Hash
	want    [32]byte
	left    int // chunks not yet delivered
	narHash string

	// taken is closed once the first bytes went to the consumer: read-ahead
	// waits for it, so that the first chunk does not share the CPU with
	// decoding the next ones (time to first byte).
	taken     chan struct{}
	takenOnce sync.Once
}

type fetched struct {
	data []byte
	err  error
}

// ReaderOptions tune a Reader.
type ReaderOptions struct {
	ReadAhead int // chunks fetched ahead; 0 means DefaultReadAhead
}

// NewReader returns a Reader over nar's bytes [off, off+n). n < 0 means to
// the end. When the whole NAR is read (off == 0, n < 0) the Reader checks the
// SHA-256 of the stream against nar.Hash before releasing the final chunk's
// bytes, so a consumer never receives a complete, wrong NAR.
func NewReader(ctx context.Context, src ChunkSource, nar *index.NAR, off, n int64, o ReaderOptions) (*Reader, error) {
	size := int64(nar.Size)
	if off < 0 || off > size {
		return nil, fmt.Errorf("offset %d outside NAR of %d bytes", off, size)
	}
	if n < 0 || off+n > size {
		n = size - off
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = DefaultReadAhead
	}
	var refs *refnorm.Map
	switch nar.Transform {
	case "":
	case refnorm.Transform:
		m, err := refnorm.Unmarshal(nar.RefMap)
		if err != nil {
			return nil, fmt.Errorf("NAR %s: %w", narinfo.FormatHash(nar.Hash), err)
		}
		refs = m
	default:
		return nil, fmt.Errorf("NAR %s was stored with transform %q, which this narstore does not know: upgrade narstore", narinfo.FormatHash(nar.Hash), nar.Transform)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &Reader{ctx: ctx, cancel: cancel, queue: make(chan chan fetched, o.ReadAhead-1), narHash: narinfo.FormatHash(nar.Hash),
		taken: make(chan struct{})}
	if off == 0 && n == size {
		r.h = sha256.New()
		r.want = nar.Hash
	}
	// First chunk containing off: the last chunk whose offset <= off.
	chunks := nar.Chunks
	first := sort.Search(len(chunks), func(i int) bool { return chunks[i].Offset > uint64(off) }) - 1
	if n == 0 || first < 0 {
		close(r.queue)
		return r, nil
	}
	end := off + n
	last := sort.Search(len(chunks), func(i int) bool { return chunks[i].Offset >= uint64(end) }) // exclusive
	r.left = last - first
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(r.queue)
		for i := first; i < last; i++ {
			c := chunks[i]
			lo, hi := int64(0), int64(c.Size)
			if i == first {
				lo = off - int64(c.Offset)
			}
			if i == last-1 {
				hi = end - int64(c.Offset)
			}
			f := make(chan fetched, 1)
			select {
			case r.queue <- f:
			case <-ctx.Done():
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				data, err := src.Chunk(ctx, c.ID)
				if err == nil && len(data) != int(c.Size) {
					err = fmt.Errorf("chunk %s has %d bytes, index says %d: %w", c.ID, len(data), c.Size, store.ErrCorrupt)
				}
				if err != nil {
					f <- fetched{err: err}
					return
				}
				piece := data[lo:hi]
				if at := c.Offset + uint64(lo); refs != nil && refs.Touches(at, uint64(len(piece))) {
					piece = append([]byte(nil), piece...) // data may be shared with the cache
					refs.Restore(piece, at)
				}
				f <- fetched{data: piece}
			}()
			if i == first {
				// Time to first byte: let the first chunk load, and its
				// first bytes go out, before read-ahead competes with it
				// for CPU and I/O.
				select {
				case <-r.taken:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return r, nil
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		f, ok := <-r.queue
		if !ok {
			if err := r.ctx.Err(); err != nil && r.left > 0 {
				r.err = err
			} else {
				r.err = io.EOF
			}
			continue
		}
		res := <-f
		if res.err != nil {
			r.err = res.err
			r.cancel()
			continue
		}
		r.left--
		if r.h != nil && r.left == 0 {
			// The last chunk: nothing of it goes out before the whole NAR
			// is known to match its NarHash.
			r.h.Write(res.data)
			var got [32]byte
			copy(got[:], r.h.Sum(nil))
			if got != r.want {
				r.err = fmt.Errorf("%w: want %s, got %s", ErrNarHash, r.narHash, narinfo.FormatHash(got))
				continue
			}
			r.h = nil
		}
		r.cur = res.data
	}
	n := copy(p, r.cur)
	if r.h != nil {
		r.h.Write(r.cur[:n]) // hashed as it goes out
	}
	r.cur = r.cur[n:]
	r.takenOnce.Do(func() { close(r.taken) })
	return n, nil
}

// Close stops the fetchers and waits for them.
func (r *Reader) Close() error {
	r.cancel()
	r.wg.Wait() // the producer selects on ctx; fetchers send to buffered channels

	return nil
}
