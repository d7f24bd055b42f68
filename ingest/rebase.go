package ingest

import (
	"context"
	"sync"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/store"
)

// Reverse deltas (Options.ReverseDelta). Forward deltas store a package's
// new release as deltas of its previous one, so the release clients fetch
// most is the one with the deepest chains, and its cold reads decode about
// 3.5 chunks per chunk served at depth 3. Reversed, the new release is
// stored plain and, once recorded, the previous release's chunks are
// re-encoded as deltas of it: same chunk IDs, new blobs. Each rewrite is
// recorded in the index (index.Rebase) before its blob is replaced
// (store.Chunks.Rebase), so a base a blob needs is always named in the index.
//
// A chunk is rewritten only onto plain chunks of the new release (which
// keeps the graph free of cycles) and only when the chunks depending on it,
// older releases rewritten before, stay within MaxDeltaDepth one step
// deeper. Where they would not, its direct dependents are first moved onto
// the new release (rehomeDependents).

// rebasePredecessor re-encodes the chunks of res.pred that nar does not
// share as deltas of nar's plain chunks, each where that is DeltaMargin
// smaller than its blob now. Failures are logged and leave chunks as they
// were: the NAR is recorded already, and every chunk reads either way.
func (in *Ingester) rebasePredecessor(ctx context.Context, nar *index.NAR, res *Result) {
	start := time.Now()
	di := in.newDeltaIndex(ctx, nar, 1, res.rev)
	defer res.release()
	defer di.cache.close()
	if len(di.inv) == 0 {
		return
	}
	seen := map[chunker.ID]bool{}
	for _, c := range nar.Chunks {
		seen[c.ID] = true
	}
	var ids []chunker.ID
	for _, c := range res.pred.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			ids = append(ids, c.ID)
		}
	}
	recs, err := in.ix.Chunks(ctx, ids)
	if err != nil {
		in.log.Warn("rebase: predecessor's chunk records", "store_path", res.StorePath, "err", err)
		return
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failed   int
		firstErr error
		work     = make(chan index.Chunk)
		outcomes [numOutcomes]int
		saved    int64
	)
	for range in.opts.ChunkWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rec := range work {
				s, o, err := in.rebaseChunk(ctx, di, rec)
				mu.Lock()
				switch {
				case err != nil:
					if failed++; firstErr == nil {
						firstErr = err
					}
				default:
					outcomes[o]++
				}
				saved += s // net of dependents moved, which may have grown either way
				mu.Unlock()
			}
		}()
	}
	for _, r := range recs {
		if r.ID.IsZero() || ctx.Err() != nil {
			continue
		}
		work <- r
	}
	close(work)
	wg.Wait()
	res.Rebased, res.RebaseSaved = outcomes[rebasedOK], saved
	if failed > 0 {
		in.log.Warn("rebase: chunks left as they were", "store_path", res.StorePath, "failed", failed, "first_err", firstErr)
	}
	in.log.Info("rebased predecessor", "store_path", res.StorePath, "predecessor_nar_hash", narinfo.FormatHash(res.pred.Hash),
		"predecessor_bytes", res.pred.Size, "chunks", outcomes[rebasedOK], "saved_bytes", saved,
		"no_match", outcomes[noMatch], "no_gain", outcomes[noGain], "declined", outcomes[declined], "dur_ms", time.Since(start).Milliseconds())
}

// rebaseChunk re-encodes one predecessor chunk against the new release's
// chunks, if a delta of them is DeltaMargin smaller than its blob, and
// returns the bytes saved (0 when it is left as it is).
func (in *Ingester) rebaseChunk(ctx context.Context, di *deltaIndex, rec index.Chunk) (int64, rebaseOutcome, error) {
	c, blob, bases, data, err := in.deltaOfNew(ctx, di, rec)
	if err != nil || c.ID.IsZero() {
		return 0, noMatch, err
	}
	// The delta must beat the chunk plain by the margin, both at the level
	// ingest encodes at: a blob recompressed since (narstore recompress)
	// would otherwise keep most chunks plain, though the delta shrinks as
	// much once recompressed in turn.
	plain := rec.StoredSize
	if rec.Level > c.Level {
		pb, pw := in.chunks.Encode(data)
		in.chunks.Recycle(pb)
		plain = uint32(pw.StoredSize)
	}
	if float64(c.StoredSize) > float64(plain)*(1-in.opts.DeltaMargin) {
		return 0, noGain, nil
	}
	s := int64(rec.StoredSize) - int64(c.StoredSize)
	var grown int64 // by dependents moved to make room
	ok, err := in.chunks.Rebase(ctx, rec.ID, blob, bases, func() (bool, error) {
		r, err := in.ix.Rebase(ctx, c, rec, in.opts.MaxDeltaDepth)
		if err == nil && r == index.RebaseTooDeep {
			var moved bool
			if moved, grown = in.rehomeDependents(ctx, di, rec.ID, s); moved {
				r, err = in.ix.Rebase(ctx, c, rec, in.opts.MaxDeltaDepth)
			}
		}
		return r == index.Rebased, err
	})
	in.Progress.RebaseSaved.Add(-grown)
	if err != nil || !ok {
		return -grown, declined, err
	}
	in.Progress.Rebased.Add(1)
	in.Progress.RebaseSaved.Add(s)
	return s - grown, rebasedOK, nil
}

// rehomeDependents moves the chunks depending directly on chunk id (older
// releases, rewritten against it before) onto the new release's chunks, so
// that id can become a delta of them without taking its dependents past the
// depth cap: the release past the cap is re-encoded against the newest
// one, one step away, instead of keeping the chain growing. Without it id
// would stay plain, a whole release stored plain every MaxDeltaDepth+1
// releases (on the large corpus at level 3: 0.731 of xz after six bumps
// against 0.627). A dependent moves only when it finds a delta base in the
// new release and the dependents' deltas grow by less than budget (what
// rebasing id saves) in all. It reports whether any moved, and by how many
// bytes they grew.
func (in *Ingester) rehomeDependents(ctx context.Context, di *deltaIndex, id chunker.ID, budget int64) (bool, int64) {
	deps, err := in.ix.Dependents(ctx, id)
	if err != nil || len(deps) == 0 {
		return false, 0
	}
	recs, err := in.ix.Chunks(ctx, deps)
	if err != nil {
		return false, 0
	}
	var grow int64
	moved := false
	for _, rec := range recs {
		if rec.ID.IsZero() {
			continue
		}
		c, blob, bases, _, err := in.deltaOfNew(ctx, di, rec)
		if err != nil || c.ID.IsZero() {
			continue
		}
		g := int64(c.StoredSize) - int64(rec.StoredSize)
		if grow+g >= budget {
			continue
		}
		ok, err := in.chunks.Rebase(ctx, rec.ID, blob, bases, func() (bool, error) {
			r, err := in.ix.Rebase(ctx, c, rec, in.opts.MaxDeltaDepth)
			return r == index.Rebased, err
		})
		if err != nil || !ok {
			continue
		}
		grow += g
		moved = true
		in.Progress.Rehomed.Add(1)
	}
	return moved, grow
}

// deltaOfNew encodes the chunk of record rec as a delta of the new
// release's chunks (di), and returns its would-be record (zero if nothing
// there is similar enough), blob, bases and the chunk's bytes.
func (in *Ingester) deltaOfNew(ctx context.Context, di *deltaIndex, rec index.Chunk) (index.Chunk, []byte, []store.Base, []byte, error) {
	data, err := in.chunks.Get(ctx, rec.ID)
	if err != nil {
		return index.Chunk{}, nil, nil, nil, err
	}
	feats := map[uint64]struct{}{}
	features(data, feats)
	m, ok := di.best(feats)
	if !ok {
		return index.Chunk{}, nil, nil, data, nil
	}
	bases, _, _ := di.deltaBases(ctx, m, len(data), in.opts.DeltaBases)
	if len(bases) == 0 {
		return index.Chunk{}, nil, nil, data, nil
	}
	blob, w, err := in.chunks.EncodeDelta(data, bases)
	if err != nil {
		return index.Chunk{}, nil, nil, nil, err
	}
	c := index.Chunk{ID: rec.ID, Size: rec.Size, StoredSize: uint32(w.StoredSize), Encoding: uint8(w.Encoding), Bases: w.Bases, Level: uint8(w.Level)}
	return c, blob, bases, data, nil
}

// rebaseOutcome is what became of one chunk rebasePredecessor looked at.
type rebaseOutcome int

const (
	rebasedOK rebaseOutcome = iota
	noMatch                 // nothing in the new release is similar enough
	noGain                  // the delta does not beat its blob by DeltaMargin
	declined                // the index declined (its dependents would pass the cap, or it changed meanwhile)
	numOutcomes
)
