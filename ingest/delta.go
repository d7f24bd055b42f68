package ingest

import (
	"cmp"
	"context"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/store"
	"golang.org/x/sys/unix"
)

// Delta encoding: a new chunk is compressed with similar stored chunks of the
// predecessor NAR (the newest NAR of the same package name) as a zstd raw
// dictionary. The most similar chunk is found by sampled content features: a
// gear rolling hash is sampled where its top byte is zero (about one position
// in 256), and the best base is the predecessor chunk sharing most samples.
// Samples follow content, so a file that moved within the NAR still finds its
// old chunk. Other similar chunks join the dictionary (up to DeltaBases in
// all), first the best base's neighbours in the predecessor: chunk
// boundaries fall elsewhere in a new version, so the new chunk's content is
// often spread over the best base and the chunk before or after it. Measured
// on real npm releases, neighbours cut delta bytes by a third against the
// best base alone (typescript 711 → 487 KB, next-swc 12.1 → 8.0 MB, esbuild
// 781 → 414 KB). Of a neighbour, only the end next to the best base goes in
// (neighbourSpan). A chunk whose best base holds 90% of its samples keeps a
// one-base dictionary (cheaper to encode and decode).

var gear = func() (t [256]uint64) {
	r := rand.New(rand.NewPCG(0x6e617273, 0x746f7265))
	for i := range t {
		t[i] = r.Uint64()
	}
	return t
}()

// features returns the distinct sampled rolling-hash values of data.
func features(data []byte, into map[uint64]struct{}) {
	var h uint64
	for _, b := range data {
		h = h<<1 + gear[b]
		if h>>56 == 0 {
			into[h] = struct{}{}
		}
	}
}

// SimilarityKeys returns a chunk's keys for store-wide similar-chunk search:
// min-hashes of its sampled features under a few independent mixes. Two
// chunks share a key with probability about the Jaccard similarity of their
// samples. Nil for a chunk with too few samples to compare.
func SimilarityKeys(data []byte) []uint64 {
	feats := map[uint64]struct{}{}
	features(data, feats)
	return simKeys(feats)
}

const numSims = 4

func simKeys(feats map[uint64]struct{}) []uint64 {
	if len(feats) < 8 {
		return nil
	}
	var mins [numSims]uint64
	for i := range mins {
		mins[i] = ^uint64(0)
	}
	for f := range feats {
		for i := range mins {
			if h := mix64(f ^ simSeeds[i]); h < mins[i] {
				mins[i] = h
			}
		}
	}
	out := make([]uint64, numSims)
	for i, m := range mins {
		out[i] = m&^(7<<61) | uint64(i)<<61 // the key's slot in the top bits: slots never collide
	}
	return out
}

var simSeeds = [numSims]uint64{0x9e3779b97f4a7c15, 0xc2b2ae3d27d4eb4f, 0x165667b19e3779f9, 0xd6e8feb86659fd93}

// mix64 is SplitMix64's finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

type featBase struct {
	f    uint64
	base int32
}

type baseCandidate struct {
	id     chunker.ID
	depth  uint8
	usable bool // its depth allows one more delta step
	// plainRatio is how well its chain's plain chunk compressed (stored
	// size / size), to judge a delta against without encoding the new
	// chunk plain too; 0 if not known.
	plainRatio float64
}

// deltaIndex maps features to predecessor chunks that may serve as bases.
// bases is in predecessor NAR order (distinct chunks), so i-1 and i+1 are a
// base's neighbours.
type deltaIndex struct {
	bases []baseCandidate
	// inv maps sampled features to the bases holding them: sorted by
	// feature, 16 bytes per (feature, base). A map of slices took ~60
	// bytes each, 250 MB for a 1 GB previous version.
	inv []featBase
	// buckets[k] is where features with top bits k start in inv (the top
	// bits are bucketShift and above; features are below 2^56), so a lookup
	// searches a few entries, not all of inv: the binary search over all of
	// it was ~6% of a delta bump's ingest, mostly cache misses.
	buckets     []int32
	bucketShift uint
	cache       *baseCache
	// captured, when not nil, means new chunks are stored plain, not
	// searched for bases (reverse deltas, where the package's predecessor is
	// re-encoded against them), and holds their sampled features; their
	// bytes are spilled. The rebase that follows then indexes them without
	// decoding them again (that was 11% of bump 5's reverse-delta ingest
	// profile at one core; with the capture it took 0.87-0.93 of the time,
	// three interleaved pairs).
	capturedMu sync.Mutex
	captured   map[chunker.ID][]uint64
}

// spillFor gives di's cache a spill file, or logs why it has none.
func (in *Ingester) spillFor(di *deltaIndex) {
	if sp, err := newSpill(in.opts.TempDir); err == nil {
		di.cache.spill = sp
	} else {
		in.log.Warn("no spill file for delta bases; their chains are decoded twice", "dir", in.opts.TempDir, "err", err)
	}
}

// capture keeps a new plain chunk's features and spills its bytes.
func (di *deltaIndex) capture(id chunker.ID, data []byte, feats map[uint64]struct{}) {
	f := make([]uint64, 0, len(feats))
	for x := range feats {
		f = append(f, x)
	}
	di.capturedMu.Lock()
	di.captured[id] = f
	di.capturedMu.Unlock()
	di.cache.keep(id, data)
}

// index builds buckets over the sorted inv: about four features a bucket.
func (di *deltaIndex) index() {
	bits := uint(1)
	for 1<<(bits+2) < len(di.inv) && bits < 20 {
		bits++
	}
	di.bucketShift = 56 - bits
	di.buckets = make([]int32, 1<<bits+1)
	k := 0
	for i, e := range di.inv {
		for b := int(e.f >> di.bucketShift); k <= b; k++ {
			di.buckets[k] = int32(i)
		}
	}
	for ; k < len(di.buckets); k++ {
		di.buckets[k] = int32(len(di.inv))
	}
}

// lookup returns the entries of inv for feature f.
func (di *deltaIndex) lookup(f uint64) []featBase {
	b := f >> di.bucketShift
	if b+1 >= uint64(len(di.buckets)) {
		return nil
	}
	in := di.inv[di.buckets[b]:di.buckets[b+1]]
	i, _ := slices.BinarySearchFunc(in, f, func(e featBase, t uint64) int { return cmp.Compare(e.f, t) })
	j := i
	for j < len(in) && in[j].f == f {
		j++
	}
	return in[i:j]
}

// baseCacheBytes bounds the decoded chunks one NAR's delta search keeps
// (Options.Jobs NARs run at once).
const baseCacheBytes = 12 << 20

// baseCache holds recently decoded chunks for one NAR's delta search: the
// predecessor's chunks and, as GetWith's base loader, their own bases, which
// neighbouring chunks share. Without it a chunk of depth d with k bases cost
// about k^d decodes, and each predecessor chunk was decoded twice (features,
// then dictionary): on the large corpus, decoding was ~40% of a delta bump's
// ingest.
type baseCache struct {
	chunks *store.Chunks
	mu     sync.Mutex
	lru    *store.LRU
	spill  *spill // nil: none
}

func newBaseCache(c *store.Chunks, max int64) *baseCache {
	return &baseCache{chunks: c, lru: store.NewLRU(max)}
}

// maxSpillBytes bounds one NAR's spill file (see spill), as does an eighth
// of the space free where it is made: the spill shares the disk with the
// chunk store, which must not run out of space for it, and several NARs
// (Options.Jobs) may spill at once.
const maxSpillBytes = 8 << 30

// spill keeps the predecessor chunks newDeltaIndex decodes, in an unlinked
// temporary file, for the encoding pass to read back. The cache holds only
// baseCacheBytes, so without it every predecessor chunk a delta is encoded
// against was decoded twice, its whole delta chain each time. Bump 5 of the
// large corpus at one core: decoding was 31% of ingest's profile, 15% with
// the spill, which took 0.84-0.90 of the user CPU. Read-backs are checked
// against the chunk's BLAKE3; one that fails, like any spill error, falls
// back to decoding from the store.
type spill struct {
	f     *os.File
	at    map[chunker.ID]spillRef
	size  int64
	limit int64 // size it may grow to
}

type spillRef struct {
	off int64
	n   int
}

// newSpill creates an unlinked file in dir (os.TempDir if empty).
func newSpill(dir string) (*spill, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "narstore-bases-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	free := uint64(st.Bavail) * uint64(st.Bsize)
	return &spill{f: f, at: map[chunker.ID]spillRef{}, limit: int64(min(free/8, maxSpillBytes))}, nil
}

// keep spills a checked chunk; on a write error or past its limit the spill
// takes no more, and reads of what it has go on.
func (b *baseCache) keep(id chunker.ID, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sp := b.spill
	if sp == nil || sp.size+int64(len(data)) > sp.limit {
		return
	}
	if _, ok := sp.at[id]; ok {
		return
	}
	if _, err := sp.f.WriteAt(data, sp.size); err != nil {
		sp.limit = 0 // full or failing: take no more
		return
	}
	sp.at[id] = spillRef{sp.size, len(data)}
	sp.size += int64(len(data))
}

// fromSpill returns chunk id's bytes from the spill, checked; ok is false if
// the spill does not have them intact (a damaged entry is dropped).
func (b *baseCache) fromSpill(id chunker.ID) (data []byte, ok bool) {
	b.mu.Lock()
	sp := b.spill
	var ref spillRef
	if sp != nil {
		ref, ok = sp.at[id]
	}
	b.mu.Unlock()
	if !ok {
		return nil, false
	}
	data = make([]byte, ref.n)
	if _, err := sp.f.ReadAt(data, ref.off); err != nil || store.Verify(id, data) != nil {
		b.mu.Lock()
		delete(sp.at, id)
		b.mu.Unlock()
		return nil, false
	}
	return data, true
}

// close removes the spill; the cache still works without it.
func (b *baseCache) close() {
	b.mu.Lock()
	sp := b.spill
	b.spill = nil
	b.mu.Unlock()
	if sp != nil {
		sp.f.Close()
	}
}

// get returns chunk id's verified bytes. Bases of bases load through the
// cache too (store.Chunks bounds how deep that goes), without checking their
// own BLAKE3: they only serve to decode the chunk asked for, which is
// checked, and what a delta is encoded against is always a chunk asked for.
// A chunk loaded unchecked is checked when it is asked for itself. A chunk
// the spill holds is read from it (checked) rather than decoded again.
func (b *baseCache) get(ctx context.Context, id chunker.ID) (_ []byte, err error) {
	b.mu.Lock()
	data, checked, ok := b.lru.Lookup(id)
	b.mu.Unlock()
	if ok {
		if !checked && !store.BaseLoad(ctx) {
			if err := store.CheckCached(&b.mu, b.lru, id, data); err != nil {
				return nil, err
			}
		}
		return data, nil
	}
	if spilled, ok := b.fromSpill(id); ok {
		data, checked = spilled, true
	} else if data, checked, err = b.chunks.Load(ctx, id, b.get); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.lru.Keep(id, data, checked)
	b.mu.Unlock()
	return data, nil
}

// newDeltaIndex loads the predecessor's chunks of depth below below (those a
// delta may still use as a base: MaxDeltaDepth for a new chunk, 1, plain
// chunks only, for a rebase) and indexes their features. With no
// predecessor (pred nil), or none of its chunks usable, it indexes nothing;
// its cache still serves the store-wide similar search, which loads bases
// (and their bases) too. from, if not nil, is the index that stored pred's
// new chunks plain (reverse deltas): its cache (and spill) is taken over,
// and the chunks it captured are indexed without loading them again.
func (in *Ingester) newDeltaIndex(ctx context.Context, pred *index.NAR, below int, from *deltaIndex) *deltaIndex {
	di := &deltaIndex{cache: newBaseCache(in.chunks, baseCacheBytes)}
	var captured map[chunker.ID][]uint64
	if from != nil {
		di.cache, captured = from.cache, from.captured
	}
	if pred == nil {
		return di
	}
	if di.cache.spill == nil {
		in.spillFor(di)
	}
	seen := map[chunker.ID]bool{}
	var ids []chunker.ID
	for _, c := range pred.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			ids = append(ids, c.ID)
		}
	}
	recs, err := in.ix.Chunks(ctx, ids)
	if err != nil {
		return di
	}
	ids, recs = in.belowCap(ctx, ids, recs, below)
	ratios := in.rootRatios(ctx, recs)
	feats := map[uint64]struct{}{}
	for i, id := range ids {
		idx := int32(len(di.bases))
		di.bases = append(di.bases, baseCandidate{id: id, depth: recs[i].Depth, plainRatio: ratios[i]})
		if recs[i].ID.IsZero() || int(recs[i].Depth) >= below {
			continue
		}
		if f, ok := captured[id]; ok && recs[i].Depth == 0 {
			di.bases[idx].usable = true
			for _, x := range f {
				di.inv = append(di.inv, featBase{x, idx})
			}
			delete(captured, id) // in inv now: not kept twice
			continue
		}
		data, err := di.cache.get(ctx, id)
		if err != nil {
			continue
		}
		di.bases[idx].usable = true
		di.cache.keep(id, data)
		clear(feats)
		features(data, feats)
		for f := range feats {
			di.inv = append(di.inv, featBase{f, idx})
		}
	}
	slices.SortFunc(di.inv, func(a, b featBase) int {
		if c := cmp.Compare(a.f, b.f); c != 0 {
			return c
		}
		return cmp.Compare(a.base, b.base)
	})
	di.inv = slices.Clip(di.inv)
	di.index()
	return di
}

// followBest returns, for each chunk record, the first record along its
// chain of best bases (the last in each dictionary), starting with itself,
// for which stop holds; a zero record where the chain ends first or a
// record is missing. Each step down is one batch of index lookups.
func (in *Ingester) followBest(ctx context.Context, recs []index.Chunk, stop func(index.Chunk) bool) []index.Chunk {
	out := make([]index.Chunk, len(recs))
	cur := slices.Clone(recs)
	for range store.MaxDeltaDepthLimit + 1 {
		var want []chunker.ID
		var at []int
		for i, r := range cur {
			switch {
			case r.ID.IsZero():
			case stop(r):
				out[i] = r
			case len(r.Bases) > 0:
				want, at = append(want, r.Bases[len(r.Bases)-1]), append(at, i)
			}
		}
		if len(want) == 0 {
			break
		}
		next, err := in.ix.Chunks(ctx, want)
		if err != nil {
			break
		}
		clear(cur) // only the chunks followed down go on
		for k, i := range at {
			cur[i] = next[k]
		}
	}
	return out
}

// belowCap replaces each predecessor chunk of depth limit or more (one that
// allows no further delta step) with the first chunk down its chain of best
// bases below it:
// the same content one release older, or more, and the newest a new chunk
// may still delta against. Without it, every release after MaxDeltaDepth
// releases of deltas found no base among its predecessor's chunks and went
// back to plain chunks (on the large corpus at level 3, the sixth bump
// stored 48.7 MB at depth 3, 33.2 with this, 24.2 at depth 4, where it is
// not yet past the cap). Positions are kept, so neighbours stay neighbours;
// a base that is already listed appears once.
func (in *Ingester) belowCap(ctx context.Context, ids []chunker.ID, recs []index.Chunk, limit int) ([]chunker.ID, []index.Chunk) {
	below := in.followBest(ctx, recs, func(r index.Chunk) bool { return int(r.Depth) < limit })
	seen := map[chunker.ID]bool{}
	outIDs, outRecs := ids[:0], recs[:0]
	for i, id := range ids {
		r := recs[i]
		if !r.ID.IsZero() && int(r.Depth) >= limit && !below[i].ID.IsZero() {
			id, r = below[i].ID, below[i]
		}
		if !seen[id] {
			seen[id] = true
			outIDs, outRecs = append(outIDs, id), append(outRecs, r)
		}
	}
	return outIDs, outRecs
}

// rootRatios returns, for each chunk record, its chain's plain chunk's
// stored size / size (following best bases down to depth 0): what a chunk
// of that content costs plain, measured when it was stored (a recompressed
// root gives a lower figure, which only makes pickDelta more careful). 0
// where unknown.
func (in *Ingester) rootRatios(ctx context.Context, recs []index.Chunk) []float64 {
	out := make([]float64, len(recs))
	for i, root := range in.followBest(ctx, recs, func(r index.Chunk) bool { return r.Depth == 0 }) {
		if root.Size > 0 {
			out[i] = float64(root.StoredSize) / float64(root.Size)
		}
	}
	return out
}

// match is a chunk's similarity to the predecessor: the votes (shared
// samples) of every base that got any, and the best base.
type match struct {
	votes map[int32]int
	feats int
	best  int
}

// best returns the predecessor chunks similar to a chunk with sampled
// features feats, if the most similar one shares enough samples.
func (di *deltaIndex) best(feats map[uint64]struct{}) (match, bool) {
	if len(feats) < 4 {
		return match{}, false
	}
	votes := map[int32]int{}
	bestIdx, bestVotes := int32(-1), 0
	for f := range feats {
		for _, e := range di.lookup(f) {
			b := e.base
			votes[b]++
			if v := votes[b]; v > bestVotes || (v == bestVotes && b < bestIdx) {
				bestIdx, bestVotes = b, v
			}
		}
	}
	if bestIdx < 0 || !similar(bestVotes, len(feats)) {
		return match{}, false
	}
	return match{votes: votes, feats: len(feats), best: int(bestIdx)}, true
}

// similar: at least 5% of a chunk's samples shared is worth a delta.
func similar(votes, feats int) bool { return votes*20 >= feats }

// candidates returns the bases for a match, at most n: the best base last
// (in the dictionary, nearest matches cost least), before it its neighbours
// in the predecessor (the new chunk's content may straddle their boundary),
// then other similar chunks by votes.
func (di *deltaIndex) candidates(m match, n int) []int {
	picked := map[int]bool{m.best: true}
	var extra []int
	// Samples the best base lacks; a base that shares under a quarter of
	// that many is not worth its dictionary bytes. When the best base holds
	// 90% of the samples, it is used alone.
	uncovered := m.feats - m.votes[int32(m.best)]
	if uncovered*10 < m.feats {
		return []int{m.best}
	}
	ok := func(i int) bool {
		return len(extra) < n-1 && i >= 0 && i < len(di.bases) && !picked[i] && di.bases[i].usable && di.bases[i].id != di.bases[m.best].id
	}
	add := func(i int) {
		if ok(i) {
			picked[i] = true
			extra = append(extra, i)
		}
	}
	// Neighbours go in whether or not they share samples: where a new
	// chunk's content moved past the best base's boundary, samples are too
	// sparse to see it (measured on the large corpus: 0.768 → 0.727 after
	// six bumps with neighbours always, against only when they share).
	add(m.best - 1)
	add(m.best + 1)
	// Other similar chunks only when they share a good part of what the
	// best base lacks.
	addSimilar := func(i int) {
		if v := m.votes[int32(i)]; similar(v, m.feats) && v*4 >= uncovered {
			add(i)
		}
	}
	if len(extra) < n-1 {
		others := make([]int, 0, len(m.votes))
		for i := range m.votes {
			others = append(others, int(i))
		}
		sort.Slice(others, func(a, b int) bool {
			va, vb := m.votes[int32(others[a])], m.votes[int32(others[b])]
			return va > vb || (va == vb && others[a] < others[b])
		})
		for _, i := range others {
			addSimilar(i)
		}
	}
	// Least similar first, best last.
	slices.Reverse(extra)
	return append(extra, m.best)
}

// encodeChunk returns the blob to store for data, its description and delta
// depth, and its similarity keys (nil unless delta search is on). The
// chunk's features are sampled once, for all three uses. di is nil only
// when delta encoding is off.
func (in *Ingester) encodeChunk(ctx context.Context, di *deltaIndex, id chunker.ID, data []byte) ([]byte, store.Written, uint8, []uint64, error) {
	if !in.opts.Delta {
		blob, w := in.chunks.Encode(data)
		return blob, w, 0, nil, nil
	}
	feats := map[uint64]struct{}{}
	features(data, feats)
	keys := simKeys(feats)
	if di.captured != nil { // reverse deltas: the newest release stays plain
		di.capture(id, data, feats)
		blob, w := in.chunks.Encode(data)
		return blob, w, 0, keys, nil
	}
	if m, ok := di.best(feats); ok {
		if bases, depth, ratio := di.deltaBases(ctx, m, len(data), in.opts.DeltaBases); len(bases) > 0 {
			blob, w, depth, err := in.pickDelta(data, bases, depth, ratio)
			return blob, w, depth, keys, err
		}
	}
	if in.opts.SimilarSearch {
		if base, depth, ok := in.similarBase(ctx, di, keys); ok {
			blob, w, depth, err := in.pickDelta(data, []store.Base{base}, depth, 0)
			return blob, w, depth, keys, err
		}
	}
	blob, w := in.chunks.Encode(data)
	return blob, w, 0, keys, nil
}

// deltaBases returns the bases for a chunk of n bytes matching m, at most
// limit (best base last, neighbours trimmed to the end next to it), the depth
// a delta of them has, and the best base's chain's plain ratio. Bases that
// went away are left out.
func (di *deltaIndex) deltaBases(ctx context.Context, m match, n, limit int) (bases []store.Base, depth uint8, ratio float64) {
	for _, i := range di.candidates(m, limit) {
		b := di.bases[i]
		bd, err := di.cache.get(ctx, b.id)
		if err != nil { // a base that went away: do without it
			continue
		}
		base := store.Base{ID: b.id, Data: bd}
		if k := neighbourSpan(n); k > 0 && len(bd) > k {
			// A neighbour holds content that crossed its boundary with
			// the best base: the end next to that boundary.
			switch i {
			case m.best - 1:
				base.Off, base.Len = len(bd)-k, k
			case m.best + 1:
				base.Len = k
			}
		}
		bases = append(bases, base)
		depth = max(depth, b.depth+1)
		ratio = b.plainRatio // the best base's, last
	}
	return bases, depth, ratio
}

// pickDelta returns the delta against bases when it beats plain zstd by the
// margin, else plain zstd. Plain zstd is not tried when the delta is clearly
// smaller: 1/20 of the chunk or less (real data does not compress that well
// plain), or within the margin of 5/8 of what the chunk would cost plain at
// plainRatio (the best base's chain's plain ratio; 0 if unknown). The
// content is the same but for the changes the delta encodes, so it
// compresses alike; on the large corpus that decides about 80% of deltas,
// with the same stored bytes, and spares their plain encoding (~14% of a
// delta bump's ingest).
func (in *Ingester) pickDelta(data []byte, bases []store.Base, depth uint8, plainRatio float64) ([]byte, store.Written, uint8, error) {
	dblob, dw, err := in.chunks.EncodeDelta(data, bases)
	if err != nil {
		return nil, store.Written{}, 0, err
	}
	if dw.StoredSize*20 <= len(data) || float64(dw.StoredSize) <= (1-in.opts.DeltaMargin)*plainEstimateSlack*plainRatio*float64(len(data)) {
		return dblob, dw, depth, nil
	}
	blob, w := in.chunks.Encode(data)
	if float64(dw.StoredSize) <= float64(w.StoredSize)*(1-in.opts.DeltaMargin) {
		return dblob, dw, depth, nil
	}
	return blob, w, 0, nil
}

// neighbourSpan is how much of a neighbouring base a delta's dictionary
// takes, for a new chunk of n bytes: the end next to the best base, half as
// long as the chunk. Content that crossed the boundary between them lies
// there; the rest of the neighbour only costs hashing. Measured on the large
// corpus (level 3, six bumps): the same stored bytes as whole neighbours
// (262.08 against 262.11 MB; a third of the chunk stores 0.8% more, a
// quarter 2.3%, a fixed 64 KiB 3.8%), and bump 5 ingests 9% faster at one
// core (7.6 against 8.3 s).
func neighbourSpan(n int) int { return n / 2 }

// plainEstimateSlack is how far the plain estimate may be off: a delta is
// taken untried when it beats the margin against 5/8 of the estimate (with
// the default 20% margin, half of it).
const plainEstimateSlack = 0.625

// similarBase looks for a base anywhere in the store (not only in the
// package's previous NAR) by similarity keys: the stored chunk sharing most
// keys whose depth allows one more step within newDepth. (Chunks at the cap
// get no keys, so an older release's chunk is found in their place.)
func (in *Ingester) similarBase(ctx context.Context, di *deltaIndex, keys []uint64) (store.Base, uint8, bool) {
	if keys == nil {
		return store.Base{}, 0, false
	}
	ids, err := in.ix.SimilarChunks(ctx, keys, 4)
	if err != nil || len(ids) == 0 {
		return store.Base{}, 0, false
	}
	recs, err := in.ix.Chunks(ctx, ids)
	if err != nil {
		return store.Base{}, 0, false
	}
	for _, r := range recs {
		if r.ID.IsZero() || int(r.Depth) >= in.newDepth {
			continue
		}
		bd, err := di.cache.get(ctx, r.ID)
		if err != nil {
			continue
		}
		return store.Base{ID: r.ID, Data: bd}, r.Depth + 1, true
	}
	return store.Base{}, 0, false
}
