// Package migrate copies a narstore cache (index and chunk store) into
// another one, typically from the embedded SQLite + directory to PostgreSQL
// + S3 when one machine is outgrown.
//
// The copy only reads the source, so the source keeps serving and ingesting
// while it runs. Each NAR is committed to the destination only after every
// chunk it needs (delta bases included) is stored there, checked against its
// BLAKE3, so the destination never holds a half-copied NAR: a copy that is
// interrupted is resumed by running it again, and a run after the source
// changed copies what is new. Blobs are copied as they are (no
// recompression), and NARs are committed oldest first so each package's
// newest NAR stays its delta predecessor.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/store"
)

// Source is what a copy reads.
type Source interface {
	WalkNARs(ctx context.Context, fn func(*index.NAR) error) error
	NAR(ctx context.Context, narHash [32]byte) (*index.NAR, error)
	Chunks(ctx context.Context, ids []chunker.ID) ([]index.Chunk, error)
	StorePaths(ctx context.Context, narHash [32]byte) ([]string, error)
	NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
}

// Dest is what a copy writes.
type Dest interface {
	HasNAR(ctx context.Context, narHash [32]byte) (bool, error)
	HasChunks(ctx context.Context, ids []chunker.ID) ([]bool, error)
	Commit(ctx context.Context, ni *narinfo.NarInfo, nar *index.NAR, newChunks []index.Chunk) error
	AddNarInfo(ctx context.Context, ni *narinfo.NarInfo) error
	NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
}

// Options tune a copy.
type Options struct {
	// Jobs is how many chunks are copied at once (0: 16). S3 wants many.
	Jobs int
}

// Progress counts work as it happens; read it from any goroutine.
type Progress struct {
	NARsTotal, NARsDone, NARsCopied atomic.Int64
	NarInfos                        atomic.Int64 // narinfos written to the destination
	Chunks, ChunkBytes              atomic.Int64 // chunks (blobs) copied, and their stored bytes
	// Reencoded counts chunks copied plain because their source blob
	// needed other bases than their record named (a reverse-delta rewrite
	// recorded but its blob not yet replaced, or bases held for a chunk two
	// ingests stored at once): the destination gets no holds.
	Reencoded atomic.Int64
}

// Copier copies one cache into another.
type Copier struct {
	src      Source
	srcStore *store.Chunks
	dst      Dest
	dstStore *store.Chunks
	opts     Options
	Progress Progress
}

// New returns a Copier.
func New(src Source, srcChunks *store.Chunks, dst Dest, dstChunks *store.Chunks, o Options) *Copier {
	if o.Jobs <= 0 {
		o.Jobs = 16
	}
	return &Copier{src: src, srcStore: srcChunks, dst: dst, dstStore: dstChunks, opts: o}
}

// Run copies every NAR of the source that the destination lacks, with its
// narinfos, and brings the destination's narinfos up to date. It stops at
// the first error; what was committed before stays, and a new Run resumes.
func (c *Copier) Run(ctx context.Context) error {
	var hashes [][32]byte
	if err := c.src.WalkNARs(ctx, func(n *index.NAR) error {
		hashes = append(hashes, n.Hash)
		return nil
	}); err != nil {
		return fmt.Errorf("list source NARs: %w", err)
	}
	c.Progress.NARsTotal.Store(int64(len(hashes)))
	for _, h := range hashes {
		if err := c.copyNAR(ctx, h); err != nil {
			return err
		}
		c.Progress.NARsDone.Add(1)
	}
	return nil
}

func (c *Copier) copyNAR(ctx context.Context, h [32]byte) error {
	paths, err := c.src.StorePaths(ctx, h)
	if err != nil {
		return fmt.Errorf("source NAR %s: %w", narinfo.FormatHash(h), err)
	}
	var nis []*narinfo.NarInfo
	for _, p := range paths {
		ni, err := c.src.NarInfo(ctx, narinfo.HashPart(p))
		if errors.Is(err, index.ErrNotFound) {
			continue // replaced meanwhile
		}
		if err != nil {
			return fmt.Errorf("source narinfo %s: %w", p, err)
		}
		if ni.NarHash == h { // still points at this NAR
			nis = append(nis, ni)
		}
	}
	what := narinfo.FormatHash(h)
	if len(nis) > 0 {
		what = nis[0].StorePath
	}
	have, err := c.dst.HasNAR(ctx, h)
	if err != nil {
		return fmt.Errorf("%s: destination: %w", what, err)
	}
	if !have {
		nar, err := c.src.NAR(ctx, h)
		if errors.Is(err, index.ErrNotFound) {
			return nil // gone from the source meanwhile
		}
		if err != nil {
			return fmt.Errorf("%s: source: %w", what, err)
		}
		if len(nis) > 0 {
			nar.PName = narinfo.PName(nis[0].StorePath)
		}
		records, err := c.copyChunks(ctx, nar)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := c.dstStore.Sync(ctx); err != nil {
			return fmt.Errorf("%s: destination store: %w", what, err)
		}
		var first *narinfo.NarInfo
		if len(nis) > 0 {
			first, nis = nis[0], nis[1:]
		}
		if err := c.dst.Commit(ctx, first, nar, records); err != nil {
			return fmt.Errorf("%s: destination: %w", what, err)
		}
		c.Progress.NARsCopied.Add(1)
		if first != nil {
			c.Progress.NarInfos.Add(1)
		}
	}
	for _, ni := range nis {
		cur, err := c.dst.NarInfo(ctx, ni.HashPart())
		if err == nil && cur.String() == ni.String() {
			continue
		}
		if err != nil && !errors.Is(err, index.ErrNotFound) {
			return fmt.Errorf("%s: destination: %w", ni.StorePath, err)
		}
		if err := c.dst.AddNarInfo(ctx, ni); err != nil {
			return fmt.Errorf("%s: destination: %w", ni.StorePath, err)
		}
		c.Progress.NarInfos.Add(1)
	}
	return nil
}

// copyChunks stores in the destination every chunk of nar it lacks, and
// their delta bases, and returns their records.
func (c *Copier) copyChunks(ctx context.Context, nar *index.NAR) ([]index.Chunk, error) {
	seen := map[chunker.ID]bool{}
	var ids []chunker.ID
	for _, r := range nar.Chunks {
		if !seen[r.ID] {
			seen[r.ID] = true
			ids = append(ids, r.ID)
		}
	}
	var records []index.Chunk
	for len(ids) > 0 { // a round per delta-chain level
		has, err := c.dst.HasChunks(ctx, ids)
		if err != nil {
			return nil, fmt.Errorf("destination: %w", err)
		}
		var missing []chunker.ID
		for i, id := range ids {
			if !has[i] {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			break
		}
		recs, err := c.src.Chunks(ctx, missing)
		if err != nil {
			return nil, fmt.Errorf("source chunk records: %w", err)
		}
		for i, r := range recs {
			if r.ID.IsZero() {
				return nil, fmt.Errorf("chunk %s has no record in the source index: run narstore verify on the source", missing[i])
			}
		}
		if err := c.copyBlobs(ctx, recs); err != nil {
			return nil, err
		}
		ids = ids[:0]
		for _, r := range recs { // the bases as copied (copyBlobs may have dropped them)
			for _, b := range r.Bases {
				if !seen[b] {
					seen[b] = true
					ids = append(ids, b)
				}
			}
		}
		records = append(records, recs...)
	}
	return records, nil
}

// copyBlobs stores recs' blobs in the destination and fills in their
// similarity keys (which the source index does not hand out) from the bytes.
func (c *Copier) copyBlobs(ctx context.Context, recs []index.Chunk) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	sem := make(chan struct{}, c.opts.Jobs)
	for i := range recs {
		r := &recs[i]
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			blob, data, err := c.srcStore.Blob(ctx, r.ID, nil)
			if err != nil {
				cancel(fmt.Errorf("source chunk %s: %w (run narstore verify on the source)", r.ID, err))
				return
			}
			if enc, refs, _, err := store.BlobHeader(blob); err != nil || !slices.Equal(store.IDs(refs), r.Bases) {
				// The blob needs other bases than its record names: the
				// source is between recording a reverse-delta rewrite of
				// this chunk and replacing its blob (or was stopped there,
				// and holds the blob's bases). A copy as it is would need
				// bases the destination's record does not name, which
				// nothing copies or keeps from deletion; the verified bytes
				// go in plain instead.
				var w store.Written
				blob, w = c.dstStore.Encode(data)
				r.Encoding, r.Bases, r.Depth, r.StoredSize, r.Level = uint8(w.Encoding), nil, 0, uint32(w.StoredSize), uint8(w.Level)
				c.Progress.Reencoded.Add(1)
			} else {
				r.Encoding, r.StoredSize = uint8(enc), uint32(len(blob)) // as copied
			}
			if err := c.dstStore.PutBlob(ctx, r.ID, blob); err != nil {
				cancel(fmt.Errorf("destination chunk %s: %w", r.ID, err))
				return
			}
			if int(r.Depth) < store.MaxDeltaDepthLimit { // may serve as a base to some writer
				r.Sims = ingest.SimilarityKeys(data)
			}
			c.Progress.Chunks.Add(1)
			c.Progress.ChunkBytes.Add(int64(len(blob)))
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}
