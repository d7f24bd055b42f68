package recompress_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/index/indextest"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/recompress"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// Run with a limit does part of the work; the next run does the rest and a
// third finds nothing left. Every chunk reads back the same.
func TestRunResumesAndLimits(t *testing.T) {
	ctx := context.Background()
	ix := indextest.SQLite(t)
	_, c := storetest.Chunks(t, store.ChunksOptions{Level: 1})
	var (
		data  [][]byte
		recs  []index.Chunk
		nar   = &index.NAR{Preset: chunker.DefaultPreset}
		whole []byte
	)
	for i := range 5 {
		b := bytes.Repeat([]byte(fmt.Sprintf("chunk %d of a test NAR, repeated with small changes %d; ", i, i*i)), 2000)
		id := chunker.Sum(b)
		w, err := c.Put(ctx, id, b)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b)
		recs = append(recs, index.Chunk{ID: id, Size: uint32(len(b)), StoredSize: uint32(w.StoredSize), Encoding: uint8(w.Encoding), Level: uint8(w.Level)})
		nar.Chunks = append(nar.Chunks, index.ChunkRef{ID: id, Offset: uint64(len(whole)), Size: uint32(len(b))})
		whole = append(whole, b...)
	}
	nar.Hash, nar.Size = sha256.Sum256(whole), uint64(len(whole))
	ni := &narinfo.NarInfo{StorePath: "/nix/store/00000000000000000000000000000000-test", URL: "nar/x.nar", Compression: "none", NarHash: nar.Hash, NarSize: nar.Size}
	if err := ix.Commit(ctx, ni, nar, recs); err != nil {
		t.Fatal(err)
	}
	enc, _ := store.NewFrameEncoder(9, "go")
	var mu sync.Mutex
	seen := map[chunker.ID]int{}
	opts := recompress.Options{Encoder: enc, Jobs: 2, OnChunk: func(id chunker.ID, before, after int) {
		mu.Lock()
		seen[id]++
		mu.Unlock()
		if after > before {
			t.Errorf("chunk %s grew from %d to %d bytes", id, before, after)
		}
	}}
	opts.Limit = 2
	rep, err := recompress.Run(ctx, ix, c, opts, nil)
	if err != nil || rep.Chunks != 2 || rep.Failed != 0 {
		t.Fatalf("limited run: %+v, %v", rep, err)
	}
	opts.Limit = 0
	rep, err = recompress.Run(ctx, ix, c, opts, nil)
	if err != nil || rep.Chunks != 3 || rep.Failed != 0 {
		t.Fatalf("second run: %+v, %v; want the 3 left", rep, err)
	}
	rep, err = recompress.Run(ctx, ix, c, opts, nil)
	if err != nil || rep.Chunks != 0 {
		t.Fatalf("third run: %+v, %v; want nothing left", rep, err)
	}
	if len(seen) != 5 {
		t.Errorf("OnChunk saw %d chunks, want 5", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("chunk %s done %d times", id, n)
		}
	}
	got, err := ix.Chunks(ctx, []chunker.ID{recs[0].ID})
	if err != nil || got[0].Level != 9 {
		t.Errorf("recorded level %+v, %v; want 9", got, err)
	}
	for i, r := range recs {
		b, err := c.Get(ctx, r.ID)
		if err != nil || !bytes.Equal(b, data[i]) {
			t.Fatalf("chunk %d after recompress: %v", i, err)
		}
	}
	if _, err := recompress.Run(ctx, ix, c, recompress.Options{}, nil); err == nil {
		t.Error("Run without an encoder: no error")
	}
}

// editedText returns text that compresses better at a higher level, and
// change, which makes releases of it with scattered changes: deltas that a
// higher level shrinks too.
func editedText() ([]byte, func(seed uint64) []byte) {
	rng := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("the a release of file binary store path nix chunk delta base zstd level index record blob needs names")
	var a []byte
	for len(a) < 200<<10 {
		a = fmt.Appendf(a, "%s %d ", words[rng.IntN(len(words))], rng.IntN(1000))
	}
	return a, func(seed uint64) []byte {
		r := rand.New(rand.NewPCG(seed, seed))
		out := slices.Clone(a)
		for i := r.IntN(64); i < len(out); i += 32 + r.IntN(64) {
			out[i] = byte('A' + r.IntN(26))
		}
		return out
	}
}

// putDelta stores x as a delta of base (whose bytes are baseData) and
// returns its record, at depth 1.
func putDelta(t *testing.T, c *store.Chunks, x []byte, base chunker.ID, baseData []byte) index.Chunk {
	t.Helper()
	blob, w, err := c.EncodeDelta(x, []store.Base{{ID: base, Data: baseData}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Store().Put(context.Background(), chunker.Sum(x), blob); err != nil {
		t.Fatal(err)
	}
	return index.Chunk{ID: chunker.Sum(x), Size: uint32(len(x)), StoredSize: uint32(w.StoredSize), Encoding: uint8(w.Encoding), Bases: w.Bases, Depth: 1, Level: uint8(w.Level)}
}

// commitNAR records a NAR of the chunks recs, whose bytes are data.
func commitNAR(t *testing.T, ix index.Index, recs []index.Chunk, data [][]byte) {
	t.Helper()
	nar := &index.NAR{Preset: chunker.DefaultPreset}
	var whole []byte
	for i, d := range data {
		nar.Chunks = append(nar.Chunks, index.ChunkRef{ID: recs[i].ID, Offset: uint64(len(whole)), Size: uint32(len(d))})
		whole = append(whole, d...)
	}
	nar.Hash, nar.Size = sha256.Sum256(whole), uint64(len(whole))
	if err := ix.Commit(context.Background(), nil, nar, recs); err != nil {
		t.Fatal(err)
	}
}

// racingEncoder runs race once, on the first frame it is asked for with a
// dictionary (a delta's), before encoding it: an ingest rewriting that
// chunk between recompression's read and its replace.
type racingEncoder struct {
	store.FrameEncoder
	once sync.Once
	race func()
}

func (r *racingEncoder) EncodeFrame(ctx context.Context, data, dict []byte) ([]byte, error) {
	if len(dict) > 0 {
		r.once.Do(r.race)
	}
	return r.FrameEncoder.EncodeFrame(ctx, data, dict)
}

// A reverse-delta rewrite of a chunk (new bases recorded, blob replaced,
// the old bases' holds released) while recompression works on that chunk:
// recompression must not then put back a blob needing the old bases, which
// no record names any more.
func TestRunLeavesAChunkRewrittenMeanwhile(t *testing.T) {
	ctx := context.Background()
	ix := indextest.SQLite(t)
	_, c := storetest.Chunks(t, store.ChunksOptions{Level: 1})
	a, change := editedText()
	b, x := change(3), change(4)
	var recs []index.Chunk
	put := func(data []byte) index.Chunk {
		w, err := c.Put(ctx, chunker.Sum(data), data)
		if err != nil {
			t.Fatal(err)
		}
		r := index.Chunk{ID: chunker.Sum(data), Size: uint32(len(data)), StoredSize: uint32(w.StoredSize), Encoding: uint8(w.Encoding), Level: uint8(w.Level)}
		recs = append(recs, r)
		return r
	}
	aRec, bRec := put(a), put(b)
	xRec := putDelta(t, c, x, aRec.ID, a)
	recs = append(recs, xRec)
	commitNAR(t, ix, recs, [][]byte{a, b, x})

	enc, _ := store.NewFrameEncoder(19, "go")
	racer := &racingEncoder{FrameEncoder: enc, race: func() {
		// What ingest's rebase does: record, replace, release.
		nb, nw, err := c.EncodeDelta(x, []store.Base{{ID: bRec.ID, Data: b}})
		if err != nil {
			t.Error(err)
			return
		}
		nc := xRec
		nc.StoredSize, nc.Encoding, nc.Bases, nc.Level = uint32(nw.StoredSize), uint8(nw.Encoding), nw.Bases, uint8(nw.Level)
		if res, err := ix.Rebase(ctx, []index.Rewrite{{C: nc, Old: xRec}}, store.DefaultMaxDeltaDepth); err != nil || res[0] != index.Rebased {
			t.Errorf("rebase meanwhile: %v %v", res, err)
			return
		}
		if err := c.Replace(ctx, []store.Blob{{ID: xRec.ID, Data: nb}}); err != nil {
			t.Error(err)
		}
		if err := ix.ReleaseHolds(ctx, []chunker.ID{xRec.ID}); err != nil {
			t.Error(err)
		}
	}}
	rep, err := recompress.Run(ctx, ix, c, recompress.Options{Encoder: racer, Jobs: 1}, nil)
	if err != nil || rep.Failed != 0 {
		t.Fatalf("run: %+v, %v", rep, err)
	}
	if rep.Changed != 1 {
		t.Errorf("%d chunks changed meanwhile, want 1", rep.Changed)
	}
	// Every blob needs only the bases its record names, and is the size
	// recorded.
	for _, id := range []chunker.ID{aRec.ID, bRec.ID, xRec.ID} {
		got, err := ix.Chunks(ctx, []chunker.ID{id})
		if err != nil {
			t.Fatal(err)
		}
		bases, err := c.BlobBases(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, base := range bases {
			if deps, _ := ix.Dependents(ctx, base); !slices.Contains(deps, id) {
				t.Errorf("chunk %s's blob needs base %s, which the index does not name for it (record: %v)", id, base, got[0].Bases)
			}
		}
		if blob := storetest.ReadBlob(t, c.Store(), id); len(blob) != int(got[0].StoredSize) {
			t.Errorf("chunk %s: blob of %d bytes, recorded %d", id, len(blob), got[0].StoredSize)
		}
		if data, err := c.Get(ctx, id); err != nil || chunker.Sum(data) != id {
			t.Errorf("chunk %s does not read back: %v", id, err)
		}
	}
}

// With Similar, of two similar plain chunks one becomes a delta of the
// other (the plain one of a NAR, say, whose near-copy was not recorded when
// ingest stored it), released and reading back; a chunk whose dependents
// would pass the depth cap stays plain; without Similar nothing becomes a
// delta. A store recompressed without Similar gets its deltas from a run
// with SimilarAll, not from one without.
func TestRunStoresSimilarChunksAsDeltas(t *testing.T) {
	for _, tc := range []similarCase{{"default depth", true, 0, false}, {"depth 1", true, 1, false}, {"off", false, 0, false}, {"upgrade", true, 0, true}} {
		for _, backend := range []string{"sqlite", "postgres"} {
			t.Run(backend+"/"+tc.name, func(t *testing.T) { testSimilarChunks(t, backend, tc) })
		}
	}
}

type similarCase struct {
	name     string
	similar  bool
	maxDepth int
	upgrade  bool // recompressed without Similar first
}

func testSimilarChunks(t *testing.T, backend string, tc similarCase) {
	ctx := context.Background()
	var ix index.Index
	if backend == "postgres" {
		pg, err := index.OpenPostgres(ctx, testservers.Postgres(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pg.Close() })
		ix = pg
	} else {
		ix = indextest.SQLite(t)
	}
	_, c := storetest.Chunks(t, store.ChunksOptions{Level: 1})
	// Sparse changes, for the sampled similarity keys to match.
	text, _ := editedText()
	edit := func(of []byte, seed uint64) []byte {
		r := rand.New(rand.NewPCG(seed, seed))
		out := slices.Clone(of)
		for i := r.IntN(4096); i < len(out); i += 2048 + r.IntN(4096) {
			out[i] = byte('A' + r.IntN(26))
		}
		return out
	}
	// a is tried first (chunks go in ID order, one job).
	a, b := edit(text, 5), edit(text, 7)
	if ida, idb := chunker.Sum(a), chunker.Sum(b); bytes.Compare(ida[:], idb[:]) > 0 {
		a, b = b, a
	}
	x := edit(a, 6)
	var recs []index.Chunk
	for _, d := range [][]byte{a, b} {
		w, err := c.Put(ctx, chunker.Sum(d), d)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, index.Chunk{ID: chunker.Sum(d), Size: uint32(len(d)), StoredSize: uint32(w.StoredSize), Encoding: uint8(w.Encoding), Level: uint8(w.Level), Sims: ingest.SimilarityKeys(d)})
	}
	// x depends on a, so a may only become a delta if x may go
	// to depth 2.
	recs = append(recs, putDelta(t, c, x, recs[0].ID, a))
	commitNAR(t, ix, recs, [][]byte{a, b, x})
	enc, _ := store.NewFrameEncoder(9, "go")
	opts := recompress.Options{Encoder: enc, Jobs: 1, Similar: tc.similar, MaxDepth: tc.maxDepth}
	tried := int64(3)
	if tc.upgrade {
		if rep, err := recompress.Run(ctx, ix, c, recompress.Options{Encoder: enc}, nil); err != nil || rep.Chunks != 3 || rep.Deltas != 0 {
			t.Fatalf("run without Similar: %+v, %v", rep, err)
		}
		if rep, err := recompress.Run(ctx, ix, c, opts, nil); err != nil || rep.Chunks != 0 {
			t.Fatalf("run with Similar after it: %+v, %v; want nothing below the level", rep, err)
		}
		// a and b are tried again; x, a delta at the level, is not.
		opts.SimilarAll, tried = true, 2
	}
	rep, err := recompress.Run(ctx, ix, c, opts, nil)
	if err != nil || rep.Failed != 0 || rep.Chunks != tried {
		t.Fatalf("run: %+v, %v; want %d chunks tried", rep, err, tried)
	}
	got, err := ix.Chunks(ctx, []chunker.ID{recs[0].ID, recs[1].ID, recs[2].ID})
	if err != nil {
		t.Fatal(err)
	}
	var deltas []int
	for i, g := range got[:2] {
		if len(g.Bases) > 0 {
			deltas = append(deltas, i)
			if other := recs[1-i].ID; !slices.Equal(g.Bases, []chunker.ID{other}) || g.Depth != 1 || !store.Encoding(g.Encoding).IsDelta() || g.Level != 9 {
				t.Errorf("chunk %d recorded as %+v; want a level-9 delta of chunk %d at depth 1", i, g, 1-i)
			}
		}
	}
	switch {
	case !tc.similar && (len(deltas) != 0 || rep.Deltas != 0):
		t.Errorf("without Similar: chunks %v became deltas", deltas)
	case tc.similar && (len(deltas) != 1 || rep.Deltas != 1):
		t.Errorf("with Similar: chunks %v became deltas (reported %d), want one of the two", deltas, rep.Deltas)
	case tc.similar && tc.maxDepth == 1 && deltas[0] != 1:
		t.Errorf("at depth 1 chunk a became a delta, taking its dependent to depth %d", got[2].Depth)
	case tc.similar && tc.maxDepth == 0 && deltas[0] != 0:
		t.Errorf("chunk a, tried first, did not become a delta of b")
	}
	// x is at depth 2 if a became a delta, else 1.
	if want := 1; len(deltas) == 1 {
		if deltas[0] == 0 {
			want = 2
		}
		if int(got[2].Depth) != want {
			t.Errorf("the dependent's depth is %d, want %d", got[2].Depth, want)
		}
	}
	if st, err := ix.Stats(ctx); err != nil || st.Rewrites != 0 || st.Holds != 0 {
		t.Errorf("stats %+v, %v: a rewrite left unreleased", st, err)
	}
	for i, r := range recs {
		bases, err := c.BlobBases(ctx, r.ID)
		if err != nil || !slices.Equal(bases, got[i].Bases) {
			t.Errorf("chunk %d: blob needs bases %v (%v), record names %v", i, bases, err, got[i].Bases)
		}
		if blob := storetest.ReadBlob(t, c.Store(), r.ID); len(blob) != int(got[i].StoredSize) {
			t.Errorf("chunk %d: blob of %d bytes, recorded %d", i, len(blob), got[i].StoredSize)
		}
		if d, err := c.Get(ctx, r.ID); err != nil || chunker.Sum(d) != r.ID {
			t.Errorf("chunk %d does not read back: %v", i, err)
		}
	}
	if rep, err := recompress.Run(ctx, ix, c, recompress.Options{Encoder: enc, Similar: tc.similar}, nil); err != nil || rep.Chunks != 0 {
		t.Errorf("second run: %+v, %v; want nothing left", rep, err)
	}
	if !tc.upgrade {
		return
	}
	// Again with SimilarAll: b, still plain, is tried, and is not
	// made a delta of a, which has a base now.
	opts.SimilarAll = true
	if rep, err := recompress.Run(ctx, ix, c, opts, nil); err != nil || rep.Chunks != 1 || rep.Deltas != 0 || rep.Replaced != 0 {
		t.Errorf("SimilarAll again: %+v, %v; want b tried and left", rep, err)
	}
}

func TestMain(m *testing.M) { testservers.Main(m) }
