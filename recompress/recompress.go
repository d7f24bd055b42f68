// Package recompress rewrites stored chunks at a stronger zstd level than
// ingest can afford, in the background: ingest stays fast (level 3 for batch
// ingest, 1 for pull-through), and the chunks get the zstd program's level 19
// later, when nobody waits for them.
//
// A chunk keeps its ID, bytes, encoding kind and delta bases (unless
// Options.Similar makes a plain one a delta, below), so NARs, delta chains
// and everything else that names it are unaffected; only its blob shrinks.
// Each new blob is decoded by the read path's decoders and compared with
// the chunk's verified bytes before it replaces the old one (atomically,
// store.Replacer), and the index then records the new level and size. A crash
// between the two leaves a good blob whose record still says the old level:
// the next run does it again. The replace happens inside the index
// transaction that checks that every base the blob read needs is still
// named for the chunk and no rewrite of it is in flight
// (index.Index.Recode): an ingest rewriting the chunk as a reverse delta
// meanwhile (new bases recorded, then its blob) is never overwritten by a
// blob needing the bases it left; such a chunk is counted as changed and
// left to a later run.
//
// With Options.Similar, a plain chunk is first tried as a delta of the most
// similar other plain chunk in the store (by the similarity keys ingest
// records): chunks stored plain at ingest because the chunks they resemble
// were not recorded yet, above all those of the same NAR (a JS bundle's
// near-copies in several files), or of a NAR ingested at the same time.
// Such a rewrite goes the way of a reverse delta: the new base is recorded
// first (index.Index.Rebase, which takes it only while the base is plain and
// every chain through the chunk stays within the depth cap), then the blob
// is replaced, then the rewrite is released (ReleaseHolds: a plain chunk's
// old blob needs no bases, so only its in-flight mark goes).
//
// Rewrites must not interleave with deletions of the same chunk; callers hold
// the "maintenance" lock (MaintenanceLock) that any GC also takes.
package recompress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/store"
)

// DefaultLevel is the level `narstore recompress` rewrites chunks at unless
// told otherwise: zstd's strongest non-ultra level.
const DefaultLevel = 19

// MaintenanceLock is the lock name held while chunks are rewritten or
// deleted: one recompression or GC at a time across all instances.
const MaintenanceLock = "maintenance"

// Index is what recompression needs of the index.
type Index interface {
	ChunksBelowLevel(ctx context.Context, level int, after chunker.ID, limit int) ([]chunker.ID, error)
	Chunks(ctx context.Context, ids []chunker.ID) ([]index.Chunk, error)
	Recode(ctx context.Context, id chunker.ID, from, to index.Chunk, replace func() error) error
	// For Options.Similar.
	SimilarChunks(ctx context.Context, sims []uint64, limit int) ([]chunker.ID, error)
	Rebase(ctx context.Context, rw []index.Rewrite, maxDepth int) ([]index.RebaseResult, error)
	ReleaseHolds(ctx context.Context, ids []chunker.ID) error
}

// DefaultMaxDepth is the delta depth Options.Similar keeps every chain
// within unless told otherwise: ingest's default with reverse deltas
// (ingest.DefaultReverseDeltaDepth).
const DefaultMaxDepth = ingest.DefaultReverseDeltaDepth

// AllLevels is above every zstd level: ChunksBelowLevel(AllLevels) lists
// every chunk.
const AllLevels = 23

// similarMargin is how much smaller than the chunk recompressed plain a
// delta of a similar chunk must be to be kept: ingest's default margin.
const similarMargin = 0.2

// similarTries is how many similar plain chunks a chunk is tried against,
// most similar first.
const similarTries = 2

// Options tune Run.
type Options struct {
	// Encoder makes the new frames (store.NewFrameEncoder); its Level is the
	// target: every chunk recorded below it is tried.
	Encoder store.FrameEncoder
	// Jobs is how many chunks are recompressed at once; 0 means 1.
	Jobs int
	// Limit stops after this many chunks (0: all); a later run goes on.
	Limit int
	Log   *slog.Logger
	// OnChunk, if set, is called (from the workers, concurrently) for every
	// chunk done, with its stored bytes before and after.
	OnChunk func(id chunker.ID, before, after int)
	// Similar tries each plain chunk as a delta of a similar plain chunk
	// first (package doc), keeping every delta chain within MaxDepth (0:
	// DefaultMaxDepth).
	Similar  bool
	MaxDepth int
	// SimilarAll (with Similar) also tries plain chunks already at the
	// level, recompressed by a release without Similar, for their
	// similar-chunk deltas only; once, after upgrading, since every run
	// with it tries them all again.
	SimilarAll bool
}

// ListedBelow is the level below which Run lists chunks
// (ChunksBelowLevel, CountBelowLevel): the encoder's, or AllLevels with
// SimilarAll.
func (o Options) ListedBelow() int {
	if o.Similar && o.SimilarAll {
		return AllLevels
	}
	return o.Encoder.Level()
}

// Progress counts what Run did so far; safe to read while it runs.
type Progress struct {
	Chunks   atomic.Int64 // chunks tried
	Replaced atomic.Int64 // chunks whose blob was rewritten
	Failed   atomic.Int64 // chunks that could not be read or rewritten
	// Changed counts chunks left as they were because their record changed
	// while they were recompressed (a reverse-delta rewrite gave them new
	// bases); a later run takes them if they are still below the level.
	Changed atomic.Int64
	// Deltas counts chunks rewritten as deltas of a similar chunk
	// (Options.Similar); they are among Replaced.
	Deltas      atomic.Int64
	ChunkBytes  atomic.Int64 // decoded bytes of the chunks tried
	BytesBefore atomic.Int64 // stored bytes of the chunks tried, before
	BytesAfter  atomic.Int64 // and after
}

// Report is the outcome of Run.
type Report struct {
	Chunks, Replaced, Failed, Changed   int64
	Deltas                              int64
	ChunkBytes, BytesBefore, BytesAfter int64
	// Errors holds the first failures (at most 20), one line each.
	Errors []string
}

const pageSize = 512

// Run recompresses every chunk recorded below opts.Encoder.Level(). A chunk
// that fails to read (missing, corrupt) is counted and reported and left as
// it was; the run goes on. It returns early only when ctx ends or the index
// fails.
func Run(ctx context.Context, ix Index, chunks *store.Chunks, opts Options, p *Progress) (Report, error) {
	if opts.Encoder == nil {
		return Report{}, errors.New("recompress: no encoder")
	}
	if p == nil {
		p = &Progress{}
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	level := opts.Encoder.Level()
	walkLevel := opts.ListedBelow()
	maxDepth := opts.MaxDepth
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	var (
		mu           sync.Mutex
		errs         []string
		fatal        error
		work         = make(chan index.Chunk)
		wg           sync.WaitGroup
		cctx, cancel = context.WithCancel(ctx)
	)
	defer cancel()
	fail := func(err error) {
		mu.Lock()
		if fatal == nil {
			fatal = err
		}
		mu.Unlock()
		cancel()
	}
	// tried counts chunk c done, its blob before and after.
	tried := func(c index.Chunk, before, after int) {
		p.Chunks.Add(1)
		p.ChunkBytes.Add(int64(c.Size))
		p.BytesBefore.Add(int64(before))
		p.BytesAfter.Add(int64(after))
		if opts.OnChunk != nil {
			opts.OnChunk(c.ID, before, after)
		}
	}
	for range max(opts.Jobs, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				enc := opts.Encoder
				// At the level already (SimilarAll): a plain chunk whose
				// similar-chunk delta is all there is to try.
				atLevel := int(c.Level) >= level
				if opts.Similar && len(c.Bases) == 0 {
					saved, plain, err := similarDelta(cctx, ix, chunks, opts.Encoder, c, maxDepth)
					if plain != nil { // made already: not again below
						enc = &madeFrame{FrameEncoder: enc, frame: plain}
					}
					if err != nil && cctx.Err() != nil {
						return
					}
					if err != nil {
						// Before the record, nothing changed. After it
						// (the replace or the release failed) the record
						// names the new base and the blob, old or new,
						// reads as before; Recode below finds the chunk in
						// flight and leaves it to a later run.
						log.Warn("recompress: delta of a similar chunk", "chunk_id", c.ID, "err", err)
					}
					if saved != nil {
						p.Replaced.Add(1)
						p.Deltas.Add(1)
						tried(c, saved.OldSize, saved.NewSize)
						continue
					}
				}
				if atLevel {
					tried(c, int(c.StoredSize), int(c.StoredSize))
					continue
				}
				// The replace happens inside the index's transaction, so
				// it cannot overwrite a reverse-delta rewrite recorded
				// since the blob was read. ixErr is the index's own error
				// (a failed replace fails only this chunk).
				var ixErr error
				r, err := chunks.Recode(cctx, c.ID, enc, func(r store.Recoded, replace func() error) error {
					from := index.Chunk{StoredSize: uint32(r.OldSize), Encoding: uint8(r.From), Bases: r.Bases}
					to := index.Chunk{StoredSize: uint32(r.NewSize), Encoding: uint8(r.Encoding), Level: uint8(level)}
					var storeErr error
					write := replace
					if replace != nil {
						write = func() error { storeErr = replace(); return storeErr }
					}
					err := ix.Recode(cctx, c.ID, from, to, write)
					if storeErr == nil {
						ixErr = err
					}
					return err
				})
				if err != nil && cctx.Err() != nil {
					return
				}
				if errors.Is(ixErr, index.ErrChanged) {
					p.Chunks.Add(1)
					p.Changed.Add(1)
					continue
				}
				if ixErr != nil {
					fail(fmt.Errorf("recompress: %w", ixErr))
					return
				}
				if err != nil {
					p.Chunks.Add(1)
					p.ChunkBytes.Add(int64(c.Size))
					if errors.Is(err, store.ErrNoReplace) {
						fail(fmt.Errorf("recompress: this chunk store cannot rewrite blobs"))
						return
					}
					p.Failed.Add(1)
					log.Warn("recompress failed", "chunk_id", c.ID, "err", err)
					mu.Lock()
					if len(errs) < 20 {
						errs = append(errs, fmt.Sprintf("chunk %s: %v", c.ID, err))
					}
					mu.Unlock()
					continue
				}
				tried(c, r.OldSize, r.NewSize)
				if r.Replaced {
					p.Replaced.Add(1)
				}
			}
		}()
	}
	var after chunker.ID
	n := 0
	var walkErr error
pages:
	for {
		ids, err := ix.ChunksBelowLevel(cctx, walkLevel, after, pageSize)
		if err != nil {
			walkErr = err
			break
		}
		if len(ids) == 0 {
			break
		}
		after = ids[len(ids)-1]
		recs, err := ix.Chunks(cctx, ids)
		if err != nil {
			walkErr = err
			break
		}
		for _, c := range recs {
			if c.ID.IsZero() { // gone meanwhile
				continue
			}
			if int(c.Level) >= level && len(c.Bases) > 0 { // SimilarAll: a delta at the level
				continue
			}
			if opts.Limit > 0 && n >= opts.Limit {
				break pages
			}
			n++
			select {
			case work <- c:
			case <-cctx.Done():
				break pages
			}
		}
	}
	close(work)
	wg.Wait()
	rep := Report{Chunks: p.Chunks.Load(), Replaced: p.Replaced.Load(), Failed: p.Failed.Load(), Changed: p.Changed.Load(), Deltas: p.Deltas.Load(),
		ChunkBytes: p.ChunkBytes.Load(), BytesBefore: p.BytesBefore.Load(), BytesAfter: p.BytesAfter.Load(), Errors: errs}
	switch {
	case fatal != nil:
		return rep, fatal
	case ctx.Err() != nil:
		return rep, fmt.Errorf("recompress interrupted: %w", context.Cause(ctx))
	case walkErr != nil:
		return rep, fmt.Errorf("recompress: list chunks: %w", walkErr)
	}
	return rep, nil
}

// madeFrame is an encoder whose plain frame of the one chunk it is used for
// was made already (by similarDelta); Recode reads it back as any other.
type madeFrame struct {
	store.FrameEncoder
	frame []byte
}

func (m *madeFrame) EncodeFrame(ctx context.Context, data, dict []byte) ([]byte, error) {
	if len(dict) == 0 {
		return m.frame, nil
	}
	return m.FrameEncoder.EncodeFrame(ctx, data, dict)
}

// similarDelta tries plain chunk c as a delta, made by enc, of the most
// similar other plain chunks the index finds by its similarity keys. It
// returns the sizes (nil: left to recompression as it is) once the delta is
// recorded, in place, and released; an error after the record leaves the
// chunk in flight, its old blob reading as before. plain is the chunk's
// plain frame by enc, if it made one to compare and kept no delta.
func similarDelta(ctx context.Context, ix Index, chunks *store.Chunks, enc store.FrameEncoder, c index.Chunk, maxDepth int) (_ *store.Recoded, plain []byte, _ error) {
	data, err := chunks.Get(ctx, c.ID)
	if err != nil {
		return nil, nil, nil // Recode reports it
	}
	keys := ingest.SimilarityKeys(data)
	if len(keys) == 0 {
		return nil, nil, nil
	}
	ids, err := ix.SimilarChunks(ctx, keys, 4*similarTries)
	if err != nil || len(ids) == 0 {
		return nil, nil, err
	}
	recs, err := ix.Chunks(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	var (
		best      []byte
		bestW     store.Written
		bestBases []store.Base
	)
	tried := 0
	for _, r := range recs {
		if tried == similarTries {
			break
		}
		if r.ID.IsZero() || r.ID == c.ID || len(r.Bases) > 0 {
			continue
		}
		bd, err := chunks.Get(ctx, r.ID)
		if err != nil {
			continue
		}
		tried++
		bases := []store.Base{{ID: r.ID, Data: bd}}
		blob, w, err := chunks.EncodeDeltaWith(ctx, data, bases, enc)
		if err != nil {
			return nil, nil, err
		}
		if best == nil || w.StoredSize < bestW.StoredSize {
			best, bestW, bestBases = blob, w, bases
		}
	}
	if best == nil {
		return nil, nil, nil
	}
	if plain, err = enc.EncodeFrame(ctx, data, nil); err != nil {
		return nil, nil, err
	}
	if float64(bestW.StoredSize) > (1-similarMargin)*float64(min(len(plain)+2, int(c.StoredSize))) {
		return nil, plain, nil
	}
	if err := chunks.CheckDelta(ctx, c.ID, best, bestBases); err != nil {
		return nil, plain, err
	}
	rec := index.Chunk{ID: c.ID, Size: c.Size, StoredSize: uint32(bestW.StoredSize), Encoding: uint8(bestW.Encoding), Bases: bestW.Bases, Level: uint8(bestW.Level)}
	rs, err := ingest.RewriteBlobs(ctx, ix, chunks, []index.Rewrite{{C: rec, Old: c}}, [][]byte{best}, maxDepth)
	if err != nil {
		return nil, nil, err
	}
	if rs[0] != index.Rebased {
		return nil, plain, nil // stale or too deep: recompressed plain instead
	}
	return &store.Recoded{From: store.Encoding(c.Encoding), Encoding: bestW.Encoding, Bases: bestW.Bases, OldSize: int(c.StoredSize), NewSize: bestW.StoredSize, Replaced: true}, nil, nil
}
