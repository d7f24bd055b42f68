package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/lock"
	"github.com/narstore/narstore/store"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Reverse deltas (Options.ReverseDelta). Forward deltas store a package's
// new release as deltas of its previous one, so the release clients fetch
// most is the one with the deepest chains, and its cold reads decode about
// 3.5 chunks per chunk served at depth 3. Reversed, the new release is
// stored plain and, once recorded, the previous release's chunks are
// re-encoded as deltas of it: same chunk IDs, new blobs. Each rewrite is
// recorded in the index (index.Rebase, which holds the old blob's bases)
// before its blob is replaced (store.Chunks.Replace), and the holds are
// released after, so a base a blob needs is always named in the index.
//
// A chunk is rewritten only onto plain chunks of the new release (which
// keeps the graph free of cycles) and only when the chunks depending on it,
// older releases rewritten before, stay within MaxDeltaDepth one step
// deeper. Where they would not, its direct dependents are first moved onto
// the new release (rehomeDependents).

// DefaultReverseDeltaDepth is the depth cap (Options.MaxDeltaDepth) with
// reverse deltas unless configured. A package's release r bumps back sits at
// depth r, so the cap bounds only reads of releases that old, never of the
// newest (plain) or the few before it; and every release past the cap moves
// an older one onto the new release, work that grows with the releases kept
// by one release's worth every cap releases. On the large corpus at level 3,
// 5 against store.DefaultMaxDeltaDepth (3): after six bumps 253.2 MB stored
// against 256.1, the sixth bump ingested in 5.2 s against 8.3 at one core
// (no release moved yet, against 460 chunks), cold reads of releases two to
// five bumps old 3-10% slower. Over 16 releases of a synthetic package, 475
// chunks moved in all against 930. New chunks that the store-wide search
// stores as deltas keep store.DefaultMaxDeltaDepth (Ingester.newDepth).
const DefaultReverseDeltaDepth = 5

// rebasePredecessor re-encodes the chunks of res.pred that nar does not
// share as deltas of nar's plain chunks, each where that is DeltaMargin
// smaller than its blob now. Failures are logged and leave chunks as they
// were: the NAR is recorded already, and every chunk reads either way.
//
// Workers encode and check the deltas (ChunkWorkers at once); one flusher
// records them and replaces their blobs a window at a time, in the
// predecessor's order: one index transaction and one store call (two syncs
// on a directory) per window instead of per chunk, and the same outcome
// whatever the number of workers, since only the flusher moves dependents
// (rehomeDependents). Before this each worker recorded and replaced its own
// chunks, and workers raced for the same dependents: on the large corpus
// the sixth bump stored 258.7-260.7 MB over seven runs on two CPUs against
// 256.3 with one worker.
func (in *Ingester) rebasePredecessor(ctx context.Context, nar *index.NAR, res *Result) {
	start := time.Now()
	defer res.release()
	pred := narinfo.FormatHash(res.pred.Hash)
	if in.opts.Locker != nil {
		// One rewrite of a NAR at a time: two ingests of newer releases of
		// the same package (another instance's, or a batch's other worker)
		// would otherwise both encode it whole. The index keeps them from
		// replacing each other's blobs out of order either way (a chunk
		// being rewritten refuses another Rebase until released); the lock
		// spares the second the work the index would refuse.
		lease, ok, err := in.opts.Locker.TryLock(ctx, RebaseLockKey(res.pred.Hash), in.opts.LockTTL)
		if err != nil || !ok {
			in.log.Info("rebase: predecessor left as it is: another ingest is rewriting it", "store_path", res.StorePath,
				"predecessor_nar_hash", pred, "err", err)
			return
		}
		defer lease.Unlock(context.WithoutCancel(ctx))
		var stop func()
		ctx, stop = lock.Guard(ctx, lease, "rebase lock")
		defer stop()
	}
	di := in.newDeltaIndex(ctx, nar, 1, res.rev)
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
		fl      = rebaseFlusher{in: in, di: di}
		windows = make(chan []*rewrite)
		flushed = make(chan struct{})
	)
	go func() {
		defer close(flushed)
		for w := range windows {
			fl.flush(ctx, w)
		}
	}()
	for len(recs) > 0 && ctx.Err() == nil {
		n := min(len(recs), rebaseWindow)
		w := in.encodeRewrites(ctx, di, recs[:n])
		recs = recs[n:]
		windows <- w
	}
	close(windows)
	<-flushed
	res.Rebased, res.RebaseSaved, res.Moved = fl.outcomes[rebasedOK], fl.saved, fl.moved
	if fl.failed > 0 {
		in.log.Warn("rebase: chunks left as they were", "store_path", res.StorePath, "failed", fl.failed, "first_err", fl.firstErr)
	}
	in.log.Info("rebased predecessor", "store_path", res.StorePath, "predecessor_nar_hash", pred,
		"predecessor_bytes", res.pred.Size, "chunks", fl.outcomes[rebasedOK], "saved_bytes", fl.saved,
		"no_match", fl.outcomes[noMatch], "no_gain", fl.outcomes[noGain], "declined", fl.outcomes[declined], "moved", fl.moved,
		"dur_ms", time.Since(start).Milliseconds())
}

// RebaseLockKey names the lock reverse deltas hold (with Options.Locker)
// while they rewrite the chunks of the NAR with narHash: "rebase/" and the
// hash in nix32. An ingest that finds it taken leaves that NAR as it is.
func RebaseLockKey(narHash [32]byte) string { return "rebase/" + nixbase32.EncodeToString(narHash[:]) }

// rebaseWindow is how many predecessor chunks rebasePredecessor encodes
// before they are recorded and replaced together. It bounds the deltas held
// in memory: two windows', one being encoded while the other is flushed.
const rebaseWindow = 64

// rewrite is one predecessor chunk on its way: its record, and the delta
// that would replace its blob (c, blob; zero c when there is none) or why
// not.
type rewrite struct {
	rec     index.Chunk
	c       index.Chunk
	blob    []byte
	outcome rebaseOutcome
	err     error
}

// saved is how much smaller the delta is than the blob it replaces.
func (rw *rewrite) saved() int64 { return int64(rw.rec.StoredSize) - int64(rw.c.StoredSize) }

// encodeRewrites encodes the chunks of recs as deltas of the new release,
// ChunkWorkers at once, keeping each only if it beats its blob by the
// margin and reads back.
func (in *Ingester) encodeRewrites(ctx context.Context, di *deltaIndex, recs []index.Chunk) []*rewrite {
	out := make([]*rewrite, len(recs))
	in.parallel(len(recs), func(i int) { out[i] = in.encodeRewrite(ctx, di, recs[i]) })
	return out
}

// parallel calls fn(0) … fn(n-1) on ChunkWorkers goroutines and returns
// when all are done.
func (in *Ingester) parallel(n int, fn func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(in.opts.ChunkWorkers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fn(i)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}

// encodeRewrite encodes one predecessor chunk (rec) as a delta of the new
// release's chunks, if that is DeltaMargin smaller than its blob.
func (in *Ingester) encodeRewrite(ctx context.Context, di *deltaIndex, rec index.Chunk) *rewrite {
	rw := &rewrite{rec: rec, outcome: noMatch}
	if rec.ID.IsZero() { // gone since the NAR was listed
		return rw
	}
	c, blob, bases, data, err := in.deltaOfNew(ctx, di, rec)
	if err != nil || c.ID.IsZero() {
		rw.err = err
		return rw
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
		rw.outcome = noGain
		return rw
	}
	// It replaces a blob that reads fine, so it must read back too.
	if rw.err = in.chunks.CheckDelta(ctx, rec.ID, blob, bases); rw.err == nil {
		rw.c, rw.blob, rw.outcome = c, blob, rebasedOK
	}
	return rw
}

// rebaseFlusher records and replaces rewrites, one window at a time, and
// keeps the tally. Only its goroutine touches it until rebasePredecessor
// reads the tally.
type rebaseFlusher struct {
	in       *Ingester
	di       *deltaIndex
	outcomes [numOutcomes]int
	saved    int64 // net of dependents moved, which may have grown either way
	moved    int   // dependents moved onto the new release
	failed   int
	firstErr error
}

func (f *rebaseFlusher) fail(err error) {
	if f.failed++; f.firstErr == nil {
		f.firstErr = err
	}
}

// flush records the window's deltas in one index transaction and replaces
// the blobs of those recorded in one store call (store.Chunks.Replace), in
// that order, so a base a blob needs is always named in the index. The
// chunks whose dependents would pass the depth cap get those moved onto the
// new release (rehomeDependents), then are tried again, in one more
// transaction and store call.
func (f *rebaseFlusher) flush(ctx context.Context, w []*rewrite) {
	in := f.in
	var todo, deep []*rewrite
	for _, rw := range w {
		switch {
		case rw.err != nil:
			f.fail(rw.err)
		case rw.outcome != rebasedOK:
			f.outcomes[rw.outcome]++
		default:
			todo = append(todo, rw)
		}
	}
	rs, err := in.rewriteBlobs(ctx, todo)
	if err != nil {
		f.fail(err)
	}
	for i, rw := range todo {
		switch {
		case err != nil:
			f.outcomes[declined]++
		case rs[i] == index.Rebased:
			f.done(rw.saved())
		case rs[i] == index.RebaseTooDeep && ctx.Err() == nil:
			deep = append(deep, rw)
		default:
			f.outcomes[declined]++
		}
	}
	if len(deep) == 0 {
		return
	}
	moved, grown := in.rehomeDependents(ctx, f.di, deep)
	in.Progress.RebaseSaved.Add(-grown)
	f.saved -= grown
	f.moved += moved
	// Tried again even where none of its own dependents moved: they may
	// have moved for another chunk.
	rs, err = in.rewriteBlobs(ctx, deep)
	if err != nil {
		f.fail(err)
	}
	for i, rw := range deep {
		if err == nil && rs[i] == index.Rebased {
			f.done(rw.saved())
		} else {
			f.outcomes[declined]++
		}
	}
}

func (f *rebaseFlusher) done(saved int64) {
	f.outcomes[rebasedOK]++
	f.saved += saved
	f.in.Progress.Rebased.Add(1)
	f.in.Progress.RebaseSaved.Add(saved)
}

// rewriteBlobs is RewriteBlobs for rws, at the ingest's depth cap; a
// failed release is only logged.
func (in *Ingester) rewriteBlobs(ctx context.Context, rws []*rewrite) ([]index.RebaseResult, error) {
	req := make([]index.Rewrite, len(rws))
	blobs := make([][]byte, len(rws))
	for i, rw := range rws {
		req[i], blobs[i] = index.Rewrite{C: rw.c, Old: rw.rec}, rw.blob
	}
	rs, err := RewriteBlobs(ctx, in.ix, in.chunks, req, blobs, in.opts.MaxDeltaDepth)
	if errors.Is(err, ErrRelease) {
		in.log.Warn("rebase: release holds of rewritten chunks", "chunks", len(rws), "err", err)
		err = nil
	}
	return rs, err
}

// RewriteIndex is what RewriteBlobs needs of the index.
type RewriteIndex interface {
	Rebase(ctx context.Context, rw []index.Rewrite, maxDepth int) ([]index.RebaseResult, error)
	ReleaseHolds(ctx context.Context, ids []chunker.ID) error
}

// ErrRelease marks RewriteBlobs' failure to release the chunks it
// rewrote: their new blobs are in place, and the holds and marks left
// behind only keep bases from deletion (and the chunks from another
// rewrite, for index.RewriteTTL).
var ErrRelease = errors.New("release rewritten chunks")

// RewriteBlobs rewrites stored chunks with new blobs that need other delta
// bases (reverse deltas, recompression's similar-chunk deltas), in the
// order the deletion rule needs: it records rws in the index (one Rebase,
// within maxDepth), replaces the blobs (blobs[i] for rws[i]) of those
// Rebased (one store call), and then releases them (ReleaseHolds). Each
// blob must have been read back against its bases (store CheckDelta). A
// failed replace is an error: the blobs are then the old or the new ones,
// each reading as before, and the records name the new bases, which only
// keeps them from deletion. A failed release returns the results with an
// error that Is ErrRelease.
func RewriteBlobs(ctx context.Context, ix RewriteIndex, chunks *store.Chunks, rws []index.Rewrite, blobs [][]byte, maxDepth int) ([]index.RebaseResult, error) {
	if len(rws) == 0 {
		return nil, nil
	}
	rs, err := ix.Rebase(ctx, rws, maxDepth)
	if err != nil {
		return nil, fmt.Errorf("record %d rebased chunks: %w", len(rws), err)
	}
	var (
		put []store.Blob
		ids []chunker.ID
	)
	for i, rw := range rws {
		if rs[i] == index.Rebased {
			put = append(put, store.Blob{ID: rw.C.ID, Data: blobs[i]})
			ids = append(ids, rw.C.ID)
		}
	}
	if len(put) == 0 {
		return rs, nil
	}
	if err := chunks.Replace(ctx, put); err != nil {
		return nil, fmt.Errorf("replace %d chunks with their deltas: %w (each blob is the old or the new one, and reads as before; the index holds the old one's bases)", len(put), err)
	}
	// The new blobs need only the bases their records name: the old blobs'
	// bases are free again, and the chunks may be rewritten again (index
	// RewriteTTL).
	if err := ix.ReleaseHolds(ctx, ids); err != nil {
		return rs, fmt.Errorf("%w: %d chunks: %w", ErrRelease, len(ids), err)
	}
	return rs, nil
}

// rehomeDependents moves the chunks depending directly on the chunks of
// deep (older releases, rewritten against them before) onto the new
// release's chunks, so that those can become deltas of it without taking
// their dependents past the depth cap: the release past the cap is
// re-encoded against the newest one, one step away, instead of keeping the
// chain growing. Without it they would stay plain, a whole release stored
// plain every MaxDeltaDepth+1 releases (on the large corpus at level 3:
// 0.731 of xz after six bumps against 0.620). A dependent moves only when
// its chain reaches the cap (reachesCap), it finds a delta base in the new
// release, and the deltas of the chunk's dependents grow by less than
// rebasing the chunk saves, in all. Each chain still needs a move every
// MaxDeltaDepth bumps, so the moves per bump grow with the releases kept
// (README, "Reverse deltas"). The dependents are encoded ChunkWorkers at
// once, and those that move are recorded and replaced together. It returns
// how many moved and by how many bytes they grew.
func (in *Ingester) rehomeDependents(ctx context.Context, di *deltaIndex, deep []*rewrite) (int, int64) {
	owners := map[chunker.ID][]int{} // dependent -> the chunks of deep it depends on
	tall := map[chunker.ID]bool{}    // reachesCap's answers
	var ids []chunker.ID
	for i, rw := range deep {
		deps, err := in.ix.Dependents(ctx, rw.rec.ID)
		if err != nil {
			continue
		}
		slices.SortFunc(deps, func(a, b chunker.ID) int { return bytes.Compare(a[:], b[:]) }) // the same order on every backend
		for _, d := range deps {
			if _, ok := owners[d]; !ok {
				// Only a dependent whose chain reaches the cap needs to
				// move: the others stay one step deeper, within it.
				// Moving them all made every bump past the cap move one
				// more release than the bump before.
				if !in.reachesCap(ctx, d, tall) {
					continue
				}
				ids = append(ids, d)
			}
			owners[d] = append(owners[d], i)
		}
	}
	if len(ids) == 0 {
		return 0, 0
	}
	if limit := in.opts.MaxMoves * len(deep); limit > 0 && len(ids) > limit {
		ids = ids[:limit]
	}
	recs, err := in.ix.Chunks(ctx, ids)
	if err != nil {
		return 0, 0
	}
	moves := make([]*rewrite, len(recs))
	in.parallel(len(recs), func(i int) {
		rec := recs[i]
		if rec.ID.IsZero() {
			return
		}
		c, blob, bases, _, err := in.deltaOfNew(ctx, di, rec)
		if err != nil || c.ID.IsZero() || in.chunks.CheckDelta(ctx, rec.ID, blob, bases) != nil {
			return
		}
		moves[i] = &rewrite{rec: rec, c: c, blob: blob}
	})
	// Each chunk's budget is what rebasing it saves; its dependents are
	// taken in order while their growth stays under it. A dependent of
	// several goes on the budget of the first with room.
	grow := make([]int64, len(deep))
	var todo []*rewrite
	for _, mv := range moves {
		if mv == nil {
			continue
		}
		g := -mv.saved()
		for _, o := range owners[mv.rec.ID] {
			if grow[o]+g < deep[o].saved() {
				grow[o] += g
				todo = append(todo, mv)
				break
			}
		}
	}
	rs, err := in.rewriteBlobs(ctx, todo)
	if err != nil {
		return 0, 0
	}
	var (
		moved int
		grown int64
	)
	for i, mv := range todo {
		if rs[i] == index.Rebased {
			moved++
			grown -= mv.saved()
			in.Progress.Rehomed.Add(1)
		}
	}
	in.log.Debug("moved dependents onto the new release", "too_deep", len(deep), "dependents", len(ids),
		"within_budget", len(todo), "moved", moved, "grown_bytes", grown)
	return moved, grown
}

// reachesCap reports whether chunk id, or a chunk depending on it directly
// or not, is at MaxDeltaDepth already (so one step deeper passes it).
// Answers are kept in memo; an index error, or more dependents than the
// index walks, counts as yes.
func (in *Ingester) reachesCap(ctx context.Context, id chunker.ID, memo map[chunker.ID]bool) bool {
	if r, ok := memo[id]; ok {
		return r
	}
	r := true
	if desc, ok, err := index.Descendants(ctx, in.ix, id); err == nil && ok {
		if recs, err := in.ix.Chunks(ctx, append(desc, id)); err == nil {
			r = false
			for _, rec := range recs {
				r = r || int(rec.Depth) >= in.opts.MaxDeltaDepth
			}
		}
	}
	memo[id] = r
	return r
}

// deltaOfNew encodes the chunk of record rec as a delta of the new
// release's chunks (di), and returns its would-be record (zero if nothing
// there is similar enough), blob, bases and the chunk's bytes.
func (in *Ingester) deltaOfNew(ctx context.Context, di *deltaIndex, rec index.Chunk) (index.Chunk, []byte, []store.Base, []byte, error) {
	data, err := in.chunks.Unchecked(ctx, rec.ID) // the delta made of it is read back against rec.ID (CheckDelta)
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
