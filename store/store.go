// Package store keeps chunk blobs by chunk ID.
//
// Two layers:
//
//   - Store is the backend contract: opaque blobs keyed by chunk ID, with local
//     directory (Dir) and S3 implementations. A backend never interprets blobs.
//   - Chunks sits on a Store and turns chunk bytes into blobs and back: it picks
//     the encoding (raw, zstd, zstd against a base chunk), and it is the one place
//     where a chunk's BLAKE3 is checked on every read.
//
// Deletion rule for every caller (GC included): a chunk may only be deleted when
// no NAR references it and no stored chunk's blob may need it as a delta base.
// The index records each chunk's bases, and holds the old ones while reverse
// deltas rewrite a blob (index.Index.Dependents lists both), so that rule can
// be checked without reading blobs.
package store

import (
	"context"
	"errors"
	"io"

	"github.com/narstore/narstore/chunker"
)

var (
	// ErrNotFound means no blob is stored under the ID.
	ErrNotFound = errors.New("chunk not found")
	// ErrCorrupt means a blob exists but does not decode to bytes with its ID.
	ErrCorrupt = errors.New("chunk corrupt")
)

// Store holds encoded chunk blobs by chunk ID. All methods are safe for
// concurrent use.
type Store interface {
	// Get returns a reader over the blob stored under id; the caller closes it.
	// A missing blob gives an error that Is ErrNotFound.
	Get(ctx context.Context, id chunker.ID) (io.ReadCloser, error)
	// Has reports whether a blob is stored under id.
	Has(ctx context.Context, id chunker.ID) (bool, error)
	// Put stores blob under id, atomically: readers see all of it or nothing.
	// Put is idempotent: content is addressed by id, so storing an id that is
	// already present succeeds without rewriting it. Callers need no lock.
	// Put keeps no reference to blob after it returns.
	Put(ctx context.Context, id chunker.ID, blob []byte) error
	// Delete removes the blob. Deleting a missing blob succeeds.
	Delete(ctx context.Context, id chunker.ID) error
	// Walk calls fn for every stored blob with its size in bytes, in no
	// particular order. An error from fn stops the walk and is returned.
	Walk(ctx context.Context, fn func(id chunker.ID, size int64) error) error
}

// Replacer is implemented by stores that can rewrite stored blobs in
// place, for recompression (Chunks.Recode) and reverse deltas
// (Chunks.Replace). Replace stores each blob under its ID instead of the
// blob there, atomically and durably: a reader sees the old blob or the new
// one, whole, and the new ones survive a crash once Replace returns nil. One
// call for many blobs lets a store make them durable together. On error
// each blob is the old one or the new one. The caller guarantees both blobs
// decode to the same chunk; a blob that is not there is ErrNotFound (Replace
// does not create one).
//
// Rewrites and deletions must not interleave on one chunk, because a
// deletion between Replace's check and its write would leave the new blob
// behind without a record. A recompression and a GC never run at once (both
// hold the "maintenance" lock). Reverse deltas rewrite, during ingest, chunks
// of the package's previous NAR, which is recorded and listed; a GC must not
// delete a NAR's chunks while the package's next NAR is being ingested (it
// holds that NAR's ingest lock), or must remove blobs without a record on a
// later pass.
type Replacer interface {
	Replace(ctx context.Context, blobs []Blob) error
}

// Creator is implemented by stores whose Put keeps a blob already stored
// under the id (a directory keeps the first, where S3 takes the last).
// Create is Put reporting whether it stored blob: false when a blob was
// there, which may be encoded otherwise (other delta bases) if an ingest
// that failed before its commit left it, or another is storing the chunk.
type Creator interface {
	Create(ctx context.Context, id chunker.ID, blob []byte) (bool, error)
}

// Stager is implemented by Replacers whose Replace is slow mostly before
// the swap (a directory: writing the new blobs aside and syncing them), so
// that a caller can do that part first and only the swap where nothing else
// may write the chunks' records (recompression, inside its index
// transaction). Replace is Stage, Swap, then Finish.
type Stager interface {
	Stage(ctx context.Context, blobs []Blob) (Staged, error)
}

// Staged is new blobs a Stager has written aside, durably.
type Staged interface {
	// Swap puts them in place of the old ones, each atomically, not yet
	// durably. On error each blob is the old one or the new one.
	Swap(ctx context.Context) error
	// Finish makes what Swap did durable, and removes what it did not
	// swap in. Call it once, after Swap or instead of it.
	Finish(ctx context.Context) error
}

// Blob is a chunk's blob, for Replacer.
type Blob struct {
	ID   chunker.ID
	Data []byte
}

// Syncer is implemented by stores whose Put is atomic but not yet durable.
// Sync makes every Put that returned before it durable. Writers call it
// before recording the blobs in the index, so the index never names a blob a
// crash could lose. Stores without it are durable when Put returns.
type Syncer interface {
	Sync(ctx context.Context) error
}

// BatchHaser is implemented by stores that answer many Has calls faster in
// one go than in parallel calls (a local directory: sequential stats beat
// goroutines). Callers fall back to parallel Has calls.
type BatchHaser interface {
	HasMany(ctx context.Context, ids []chunker.ID) ([]bool, error)
}
