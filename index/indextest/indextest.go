// Package indextest is the conformance suite every index.Index backend passes.
package indextest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/store"
)

// SQLite opens an empty SQLite index in a temporary directory, closed when
// the test ends.
func SQLite(t testing.TB) *index.SQLite {
	t.Helper()
	ix, err := index.OpenSQLite(filepath.Join(t.TempDir(), "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	return ix
}

// Run runs the suite. open returns an empty index for each subtest; the
// suite closes it.
func Run(t *testing.T, open func(t *testing.T, now func() time.Time) index.Index) {
	ctx := context.Background()
	newIdx := func(t *testing.T) index.Index {
		ix := open(t, nil)
		t.Cleanup(func() { ix.Close() })
		return ix
	}

	t.Run("AbandonedRewriteExpires", func(t *testing.T) {
		// A rewrite recorded and never released (its writer crashed
		// between record and replace) refuses others for RewriteTTL.
		var clock atomic.Int64
		clock.Store(time.Now().Unix())
		ix := open(t, func() time.Time { return time.Unix(clock.Load(), 0) })
		t.Cleanup(func() { ix.Close() })
		ni, nar, chunks := Fixture("abandoned", 3, 100)
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		onto := func(base int) index.Rewrite {
			cur, err := ix.Chunks(ctx, []chunker.ID{chunks[0].ID})
			if err != nil {
				t.Fatal(err)
			}
			c := cur[0]
			c.Encoding, c.StoredSize, c.Bases = uint8(store.EncZstdDelta), 7, []chunker.ID{chunks[base].ID}
			return index.Rewrite{C: c, Old: cur[0]}
		}
		try := func(base int, want index.RebaseResult) {
			t.Helper()
			if r, err := ix.Rebase(ctx, []index.Rewrite{onto(base)}, 3); err != nil || r[0] != want {
				t.Fatalf("Rebase = %v, %v; want %v", r, err, want)
			}
		}
		try(1, index.Rebased)
		if st, err := ix.Stats(ctx); err != nil || st.Rewrites != 1 || st.Holds != 0 {
			t.Errorf("Stats after a rewrite of a plain chunk: %+v, %v; want 1 rewrite, no holds", st, err)
		}
		clock.Add(int64((index.RewriteTTL - time.Minute).Seconds()))
		try(2, index.RebaseStale)
		clock.Add(int64((2 * time.Minute).Seconds()))
		try(2, index.Rebased)
		// The abandoned rewrite's holds are still there: its blob may be
		// the one in place.
		if deps, err := ix.Dependents(ctx, chunks[1].ID); err != nil || !slices.Contains(deps, chunks[0].ID) {
			t.Errorf("Dependents of the abandoned rewrite's base: %v, %v; want the chunk", deps, err)
		}
		if st, err := ix.Stats(ctx); err != nil || st.Rewrites != 1 || st.Holds != 1 {
			t.Errorf("Stats: %+v, %v; want 1 rewrite, 1 base held", st, err)
		}
		// While the second rewrite is in flight, no recompression of either
		// blob that may be there; once it is released, the blob its record
		// names, or one needing only what is held (the first rewrite's,
		// still held: its blob may be the one in place) may be recompressed.
		cur, err := ix.Chunks(ctx, []chunker.ID{chunks[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		first := cur[0]
		first.Bases = []chunker.ID{chunks[1].ID}
		for _, from := range []index.Chunk{cur[0], first} {
			if err := ix.Recode(ctx, chunks[0].ID, from, index.Chunk{StoredSize: 6, Encoding: from.Encoding, Level: 19}, nil); !errors.Is(err, index.ErrChanged) {
				t.Errorf("Recode of a blob with bases %v while a rewrite is in flight: %v, want ErrChanged", from.Bases, err)
			}
		}
		clock.Add(int64(index.RewriteTTL.Seconds()))
		if err := ix.Recode(ctx, chunks[0].ID, first, index.Chunk{StoredSize: 6, Encoding: first.Encoding, Level: 19}, nil); err != nil {
			t.Errorf("Recode of a blob needing a held base, no rewrite in flight: %v", err)
		}
		unnamed := first
		unnamed.Bases = []chunker.ID{chunks[0].ID}
		if err := ix.Recode(ctx, chunks[0].ID, unnamed, index.Chunk{StoredSize: 6, Encoding: first.Encoding, Level: 19}, nil); !errors.Is(err, index.ErrChanged) {
			t.Errorf("Recode of a blob needing a base neither named nor held: %v, want ErrChanged", err)
		}
		if err := ix.ReleaseHolds(ctx, []chunker.ID{chunks[0].ID}); err != nil {
			t.Fatal(err)
		}
		if st, err := ix.Stats(ctx); err != nil || st.Rewrites != 0 || st.Holds != 0 {
			t.Errorf("Stats after ReleaseHolds: %+v, %v; want none", st, err)
		}
	})

	t.Run("MissingIsNotFound", func(t *testing.T) {
		ix := newIdx(t)
		if _, err := ix.NarInfo(ctx, "00bgd045z0d4icpbc2yyz4gx48ak44la"); !errors.Is(err, index.ErrNotFound) {
			t.Errorf("NarInfo: %v, want ErrNotFound", err)
		}
		if _, err := ix.NAR(ctx, [32]byte{1}); !errors.Is(err, index.ErrNotFound) {
			t.Errorf("NAR: %v, want ErrNotFound", err)
		}
		if ok, err := ix.HasNAR(ctx, [32]byte{1}); ok || err != nil {
			t.Errorf("HasNAR = %v, %v", ok, err)
		}
	})

	t.Run("CommitAndReadBack", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("hello", 3, 1000)
		ni.Sigs = []string{"b-1:" + sig(2), "a-1:" + sig(1)}
		ni.References = []string{ni.StorePath[11:], "00bgd045z0d4icpbc2yyz4gx48ak44la-glibc"}
		ni.Deriver, ni.CA, ni.FileHash, ni.FileSize = "x.drv", "fixed:r:sha256:abc", "sha256:xyz", 123
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		got, err := ix.NarInfo(ctx, ni.HashPart())
		if err != nil {
			t.Fatal(err)
		}
		want := *ni
		want.References = ni.SortedReferences()
		if !reflect.DeepEqual(got, &want) {
			t.Errorf("narinfo round trip:\n got %+v\nwant %+v", got, &want)
		}
		gotNAR, err := ix.NAR(ctx, nar.Hash)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(gotNAR, nar) {
			t.Errorf("NAR round trip:\n got %+v\nwant %+v", gotNAR, nar)
		}
		has, err := ix.HasChunks(ctx, []chunker.ID{chunks[0].ID, {9, 9}, chunks[2].ID})
		if err != nil || !reflect.DeepEqual(has, []bool{true, false, true}) {
			t.Errorf("HasChunks = %v, %v", has, err)
		}
		paths, err := ix.StorePaths(ctx, nar.Hash)
		if err != nil || !reflect.DeepEqual(paths, []string{ni.StorePath}) {
			t.Errorf("StorePaths = %v, %v", paths, err)
		}
	})

	t.Run("MissingChunkWritesNothing", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("broken", 3, 1000)
		err := ix.Commit(ctx, ni, nar, chunks[:2])
		if !errors.Is(err, index.ErrMissingChunk) {
			t.Fatalf("got %v, want ErrMissingChunk", err)
		}
		if ok, _ := ix.HasNAR(ctx, nar.Hash); ok {
			t.Error("NAR recorded after a failed commit")
		}
		if _, err := ix.NarInfo(ctx, ni.HashPart()); !errors.Is(err, index.ErrNotFound) {
			t.Error("narinfo recorded after a failed commit")
		}
		if has, _ := ix.HasChunks(ctx, []chunker.ID{chunks[0].ID}); has[0] {
			t.Error("chunk record written by a failed commit")
		}
	})

	t.Run("BadOffsetsRejected", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("gappy", 3, 1000)
		nar.Chunks[1].Offset++
		if err := ix.Commit(ctx, ni, nar, chunks); err == nil {
			t.Fatal("commit with a gap between chunks succeeded")
		}
		if ok, _ := ix.HasNAR(ctx, nar.Hash); ok {
			t.Error("NAR recorded after a failed commit")
		}
	})

	t.Run("SharedChunksAndIdempotence", func(t *testing.T) {
		ix := newIdx(t)
		ni1, nar1, c1 := Fixture("one", 4, 500)
		ni2, nar2, _ := Fixture("two", 2, 500)
		// NAR two reuses one's chunks 1 and 2, and names only already-known chunks.
		nar2.Chunks = []index.ChunkRef{{ID: c1[1].ID, Offset: 0, Size: 500}, {ID: c1[2].ID, Offset: 500, Size: 500}}
		if err := ix.Commit(ctx, ni1, nar1, c1); err != nil {
			t.Fatal(err)
		}
		if err := ix.Commit(ctx, ni2, nar2, nil); err != nil {
			t.Fatal(err)
		}
		if err := ix.Commit(ctx, ni1, nar1, c1); err != nil {
			t.Fatalf("second identical commit: %v", err)
		}
		st, err := ix.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := index.Stats{NarInfos: 2, NARs: 2, NARBytes: 3000, UpstreamSize: 2 * 777, Chunks: 4, ChunkBytes: 2000, StoredBytes: 4 * 250}
		if st != want {
			t.Errorf("Stats = %+v, want %+v", st, want)
		}
		got, _ := ix.NAR(ctx, nar1.Hash)
		if len(got.Chunks) != 4 {
			t.Errorf("re-commit changed the chunk list to %d entries", len(got.Chunks))
		}
		var walked int
		if err := ix.WalkNARs(ctx, func(n *index.NAR) error { walked++; return nil }); err != nil || walked != 2 {
			t.Errorf("WalkNARs saw %d NARs, %v", walked, err)
		}
	})

	t.Run("AddNarInfo", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("base", 1, 100)
		other := *ni
		other.StorePath = "/nix/store/" + hashPart("alias") + "-alias"
		if err := ix.AddNarInfo(ctx, &other); !errors.Is(err, index.ErrNotFound) {
			t.Fatalf("AddNarInfo before the NAR exists: %v, want ErrNotFound", err)
		}
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		if err := ix.AddNarInfo(ctx, &other); err != nil {
			t.Fatal(err)
		}
		if _, err := ix.NarInfo(ctx, other.HashPart()); err != nil {
			t.Fatal(err)
		}
		paths, _ := ix.StorePaths(ctx, nar.Hash)
		if len(paths) != 2 {
			t.Errorf("StorePaths = %v, want both paths", paths)
		}
	})

	t.Run("NAROnlyThenNarInfo", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("upload", 2, 100)
		if err := ix.Commit(ctx, nil, nar, chunks); err != nil {
			t.Fatal(err)
		}
		if ok, _ := ix.HasNAR(ctx, nar.Hash); !ok {
			t.Fatal("NAR-only commit did not record the NAR")
		}
		if _, err := ix.NarInfo(ctx, ni.HashPart()); !errors.Is(err, index.ErrNotFound) {
			t.Fatalf("narinfo recorded by a NAR-only commit: %v", err)
		}
		wrong := *ni
		wrong.NarSize++
		if err := ix.AddNarInfo(ctx, &wrong); err == nil {
			t.Fatal("AddNarInfo accepted a NarSize that differs from the NAR")
		}
		if err := ix.AddNarInfo(ctx, ni); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("DeltaBaseRecorded", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("delta", 2, 100)
		chunks[1].Encoding, chunks[1].Bases, chunks[1].Depth = 2, []chunker.ID{chunks[0].ID}, 1
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		got, err := ix.Chunks(ctx, []chunker.ID{chunks[1].ID, {7}, chunks[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[0], chunks[1]) || !got[1].ID.IsZero() || !reflect.DeepEqual(got[2], chunks[0]) {
			t.Errorf("Chunks = %+v", got)
		}
		// Several bases, in dictionary order (not sorted), among other chunks.
		ni2, nar2, chunks2 := Fixture("multi-delta", 3, 100)
		chunks2[2].Encoding, chunks2[2].Depth = 3, 2
		chunks2[2].Bases = []chunker.ID{chunks2[1].ID, chunks[1].ID, chunks2[0].ID}
		if err := ix.Commit(ctx, ni2, nar2, chunks2); err != nil {
			t.Fatal(err)
		}
		got, err = ix.Chunks(ctx, []chunker.ID{chunks2[2].ID, chunks[1].ID, chunks2[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, []index.Chunk{chunks2[2], chunks[1], chunks2[0]}) {
			t.Errorf("Chunks with several bases:\n got %+v\nwant %+v", got, []index.Chunk{chunks2[2], chunks[1], chunks2[0]})
		}
		// Ranges of several bases: the bases are kept the same way.
		ni3, nar3, chunks3 := Fixture("range-delta", 2, 100)
		chunks3[1].Encoding, chunks3[1].Depth = uint8(store.EncZstdRangeDelta), 2
		chunks3[1].Bases = []chunker.ID{chunks2[2].ID, chunks3[0].ID}
		if err := ix.Commit(ctx, ni3, nar3, chunks3); err != nil {
			t.Fatal(err)
		}
		if got, err = ix.Chunks(ctx, []chunker.ID{chunks3[1].ID}); err != nil || !reflect.DeepEqual(got, chunks3[1:]) {
			t.Errorf("Chunks of a range delta = %+v, %v; want %+v", got, err, chunks3[1:])
		}
	})

	t.Run("CommitOfARecordedChunkHoldsItsOtherBases", func(t *testing.T) {
		// Two ingests stored the same new chunk, each as a delta of other
		// bases; the first Commit's record stays, and either blob may be
		// the one in place, so the second holds its bases.
		ix := newIdx(t)
		ni, nar, chunks := Fixture("conflict", 4, 100)
		a, b, c, x := chunks[0].ID, chunks[1].ID, chunks[2].ID, chunks[3].ID
		chunks[3].Encoding, chunks[3].Bases, chunks[3].Depth = 3, []chunker.ID{a, b}, 1
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		deps := func(id chunker.ID) []chunker.ID {
			t.Helper()
			d, err := ix.Dependents(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		if len(deps(c)) != 0 {
			t.Fatalf("Dependents of c before: %v, want none", deps(c))
		}
		other := chunks[3]
		other.Encoding, other.Bases = 3, []chunker.ID{c, b}
		ni2, nar2, _ := Fixture("conflict-2", 0, 100)
		nar2.Chunks, nar2.Size = []index.ChunkRef{{ID: x, Size: 100}}, 100
		ni2.NarSize = 100
		if err := ix.Commit(ctx, ni2, nar2, []index.Chunk{other}); err != nil {
			t.Fatal(err)
		}
		if got, _ := ix.Chunks(ctx, []chunker.ID{x}); !reflect.DeepEqual(got[0].Bases, []chunker.ID{a, b}) {
			t.Errorf("record after the second Commit: bases %v, want the first's", got[0].Bases)
		}
		for _, base := range []chunker.ID{a, b, c} {
			if !slices.Contains(deps(base), x) {
				t.Errorf("Dependents of a base one of the two blobs needs: %v, want it to list the chunk", deps(base))
			}
		}
		// Released like a rebase's holds.
		if err := ix.ReleaseHolds(ctx, []chunker.ID{x}); err != nil {
			t.Fatal(err)
		}
		if len(deps(c)) != 0 {
			t.Errorf("Dependents of c after ReleaseHolds: %v, want none", deps(c))
		}
		// The same record again, or a plain one, holds nothing.
		plain := chunks[3]
		plain.Encoding, plain.Bases, plain.Depth = 1, nil, 0
		ni3, nar3, _ := Fixture("conflict-3", 0, 100)
		nar3.Chunks, nar3.Size = []index.ChunkRef{{ID: x, Size: 100}}, 100
		ni3.NarSize = 100
		if err := ix.Commit(ctx, ni3, nar3, []index.Chunk{plain, chunks[3]}); err != nil {
			t.Fatal(err)
		}
		if len(deps(c)) != 0 || len(deps(a)) != 1 {
			t.Errorf("Dependents after commits of a plain and the same record: c %v, a %v", deps(c), deps(a))
		}
	})

	t.Run("SimilarChunks", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("similar", 3, 100)
		chunks[0].Sims = []uint64{1, 2, 3, 1 << 63} // high bit: stored as a negative int64
		chunks[1].Sims = []uint64{3, 4}
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		got, err := ix.SimilarChunks(ctx, []uint64{1, 3, 1 << 63, 99}, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0] != chunks[0].ID || got[1] != chunks[1].ID {
			t.Errorf("SimilarChunks = %v, want chunk 0 (3 keys) then chunk 1 (1 key)", got)
		}
		if got, _ := ix.SimilarChunks(ctx, []uint64{1, 3}, 1); len(got) != 1 || got[0] != chunks[0].ID {
			t.Errorf("limit 1: %v", got)
		}
		if got, _ := ix.SimilarChunks(ctx, []uint64{42}, 10); len(got) != 0 {
			t.Errorf("no shared key: %v", got)
		}
		// Chunks does not return the keys.
		recs, _ := ix.Chunks(ctx, []chunker.ID{chunks[0].ID})
		if recs[0].Sims != nil {
			t.Errorf("Chunks returned Sims %v", recs[0].Sims)
		}
	})

	t.Run("RefMapAndPredecessor", func(t *testing.T) {
		ix := newIdx(t)
		if _, err := ix.Predecessor(ctx, "hello"); !errors.Is(err, index.ErrNotFound) {
			t.Fatalf("Predecessor with none: %v", err)
		}
		ni1, nar1, c1 := Fixture("hello-1", 2, 100)
		nar1.PName, nar1.Transform, nar1.RefMap = "hello", "refnorm-v1", []byte{1, 2, 3}
		ni2, nar2, c2 := Fixture("hello-2", 2, 100)
		nar2.PName = "hello"
		for _, x := range []struct {
			ni  *narinfo.NarInfo
			nar *index.NAR
			c   []index.Chunk
		}{{ni1, nar1, c1}, {ni2, nar2, c2}} {
			if err := ix.Commit(ctx, x.ni, x.nar, x.c); err != nil {
				t.Fatal(err)
			}
		}
		got, err := ix.NAR(ctx, nar1.Hash)
		if err != nil || got.Transform != "refnorm-v1" || string(got.RefMap) != string([]byte{1, 2, 3}) {
			t.Fatalf("NAR transform round trip: %+v %v", got, err)
		}
		pred, err := ix.Predecessor(ctx, "hello")
		if err != nil || pred.Hash != nar2.Hash || len(pred.Chunks) != 2 {
			t.Fatalf("Predecessor = %+v, %v; want the newest", pred, err)
		}
	})

	t.Run("PendingNarInfos", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("pulled", 2, 100)
		ni.References = []string{ni.StorePath[11:]}
		ni.Sigs = []string{"a-1:" + sig(1)}
		ni.FileHash, ni.FileSize = "sha256:"+nixbase32.EncodeToString(make([]byte, 32)), 42
		if _, err := ix.Pending(ctx, nar.Hash); !errors.Is(err, index.ErrNotFound) {
			t.Fatalf("Pending before AddPending: %v, want ErrNotFound", err)
		}
		for range 2 { // idempotent
			if err := ix.AddPending(ctx, ni); err != nil {
				t.Fatal(err)
			}
		}
		got, err := ix.Pending(ctx, nar.Hash)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, ni) {
			t.Errorf("pending round trip:\n got %+v\nwant %+v", got, ni)
		}
		// Recording only the NAR keeps it pending (its narinfo is not recorded yet).
		if err := ix.Commit(ctx, nil, nar, chunks); err != nil {
			t.Fatal(err)
		}
		if _, err := ix.Pending(ctx, nar.Hash); err != nil {
			t.Errorf("Pending after a NAR-only commit: %v", err)
		}
		if err := ix.Commit(ctx, ni, nar, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ix.Pending(ctx, nar.Hash); !errors.Is(err, index.ErrNotFound) {
			t.Errorf("Pending after its narinfo was committed: %v, want ErrNotFound", err)
		}
	})

	t.Run("LevelsAndRecoded", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("levels", 6, 100)
		for i := range chunks {
			chunks[i].Level = uint8(i % 3 * 9) // 0, 9, 18, …
		}
		chunks[5].Encoding, chunks[5].Bases, chunks[5].Depth = 3, []chunker.ID{chunks[0].ID, chunks[1].ID}, 1
		chunks[4].Encoding = 0 // raw
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		recs, err := ix.Chunks(ctx, []chunker.ID{chunks[1].ID, chunks[2].ID})
		if err != nil || recs[0].Level != 9 || recs[1].Level != 18 {
			t.Fatalf("Chunks levels = %+v, %v; want 9 and 18", recs, err)
		}
		below := func(level, limit int, after chunker.ID) []chunker.ID {
			t.Helper()
			ids, err := ix.ChunksBelowLevel(ctx, level, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			return ids
		}
		var want []chunker.ID
		for _, c := range chunks {
			if c.Level < 10 {
				want = append(want, c.ID)
			}
		}
		slices.SortFunc(want, func(a, b chunker.ID) int { return bytes.Compare(a[:], b[:]) })
		// Paged two at a time, in ID order.
		var got []chunker.ID
		var after chunker.ID
		for {
			page := below(10, 2, after)
			if len(page) == 0 {
				break
			}
			if len(page) > 2 {
				t.Fatalf("page of %d, limit 2", len(page))
			}
			got = append(got, page...)
			after = page[len(page)-1]
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ChunksBelowLevel(10) = %v, want %v", got, want)
		}
		if n, b, err := ix.CountBelowLevel(ctx, 10); err != nil || n != int64(len(want)) || b != int64(len(want))*100 {
			t.Fatalf("CountBelowLevel(10) = %d chunks, %d bytes, %v; want %d, %d", n, b, err, len(want), len(want)*100)
		}
		// The replace runs inside Recode, before the record changes.
		calls := 0
		if err := ix.Recode(ctx, chunks[5].ID, chunks[5], index.Chunk{StoredSize: 33, Encoding: 3, Level: 19}, func() error {
			calls++
			if got, err := ix.Chunks(ctx, []chunker.ID{chunks[5].ID}); err == nil && got[0].Level == 19 {
				t.Error("Recode recorded the new level before its replace ran")
			}
			return nil
		}); err != nil || calls != 1 {
			t.Fatalf("Recode: %v, replace called %d times; want no error, once", err, calls)
		}
		recs, err = ix.Chunks(ctx, []chunker.ID{chunks[5].ID})
		if err != nil {
			t.Fatal(err)
		}
		if c := recs[0]; c.Level != 19 || c.StoredSize != 33 || c.Encoding != 3 || !reflect.DeepEqual(c.Bases, chunks[5].Bases) || c.Size != 100 {
			t.Fatalf("after Recode: %+v; want level 19, 33 bytes stored, bases and size unchanged", c)
		}
		// A blob needing a base its record does not name (a rewrite
		// recorded other bases since) is left alone, and nothing is
		// replaced.
		other := chunks[5]
		other.StoredSize, other.Bases = 33, []chunker.ID{chunks[1].ID, chunks[2].ID} // the same size, a base not named
		if err := ix.Recode(ctx, chunks[5].ID, other, index.Chunk{StoredSize: 30, Encoding: 3, Level: 22}, func() error {
			t.Error("Recode of a changed record called replace")
			return nil
		}); !errors.Is(err, index.ErrChanged) {
			t.Errorf("Recode of a blob with other bases than the record: %v, want ErrChanged", err)
		}
		// Another size with the same bases (two ingests stored the chunk
		// at once, at different levels) is recorded as the blob's.
		other = chunks[5]
		other.StoredSize, other.Encoding = 40, 2
		if err := ix.Recode(ctx, chunks[5].ID, other, index.Chunk{StoredSize: 40, Encoding: 3, Level: 19}, nil); err != nil {
			t.Errorf("Recode of a blob of another size than the record: %v", err)
		}
		if recs, err = ix.Chunks(ctx, []chunker.ID{chunks[5].ID}); err != nil || recs[0].StoredSize != 40 {
			t.Errorf("after Recode of a blob of another size: %+v, %v; want its size", recs, err)
		}
		// A failed replace records nothing and is returned as it was.
		errReplace := errors.New("replace failed")
		from4 := chunks[4]
		if err := ix.Recode(ctx, chunks[4].ID, from4, index.Chunk{StoredSize: 20, Encoding: 1, Level: 19}, func() error { return errReplace }); err != errReplace {
			t.Errorf("Recode with a failing replace: %v, want its error", err)
		}
		if recs, err = ix.Chunks(ctx, []chunker.ID{chunks[4].ID}); err != nil || recs[0].Level != chunks[4].Level || recs[0].StoredSize != chunks[4].StoredSize {
			t.Fatalf("after a failed replace: %+v, %v; want the record as it was", recs, err)
		}
		// A raw chunk that now compresses becomes zstd; no replace: the
		// blob stays, only its level is recorded.
		if err := ix.Recode(ctx, chunks[4].ID, from4, index.Chunk{StoredSize: 20, Encoding: 1, Level: 19}, nil); err != nil {
			t.Fatal(err)
		}
		if recs, err = ix.Chunks(ctx, []chunker.ID{chunks[4].ID}); err != nil || recs[0].Encoding != 1 || recs[0].StoredSize != 20 {
			t.Fatalf("after Recode raw → zstd: %+v, %v", recs, err)
		}
		if slices.Contains(below(19, 100, chunker.ID{}), chunks[5].ID) {
			t.Error("a chunk recorded at level 19 is still listed below 19")
		}
		if err := ix.Recode(ctx, chunker.Sum([]byte("no such chunk")), index.Chunk{}, index.Chunk{StoredSize: 1, Encoding: 1, Level: 19}, nil); !errors.Is(err, index.ErrNotFound) {
			t.Errorf("Recode of a missing chunk: %v, want ErrNotFound", err)
		}
	})

	t.Run("WalkNARsOldestFirst", func(t *testing.T) {
		ix := newIdx(t)
		var want [][32]byte
		for _, name := range []string{"zeta-1.0", "alpha-1.0", "zeta-2.0", "mid-1.0", "alpha-2.0"} {
			ni, nar, chunks := Fixture(name, 1, 10)
			nar.PName = narinfo.PName(ni.StorePath)
			if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
				t.Fatal(err)
			}
			want = append(want, nar.Hash)
		}
		var got [][32]byte
		if err := ix.WalkNARs(ctx, func(n *index.NAR) error { got = append(got, n.Hash); return nil }); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("WalkNARs order is not the commit order")
		}
	})

	t.Run("Rebase", func(t *testing.T) {
		ix := newIdx(t)
		// A chain older -> old (old plain), and a newer release, plain.
		ni, nar, old := Fixture("rebase-old", 3, 100)
		ni2, nar2, older := Fixture("rebase-older", 2, 100)
		older[0].Encoding, older[0].Bases, older[0].Depth = uint8(store.EncZstdDelta), []chunker.ID{old[0].ID}, 1
		older[1].Encoding, older[1].Bases, older[1].Depth = uint8(store.EncZstdMultiDelta), []chunker.ID{old[1].ID, older[0].ID}, 2
		ni3, nar3, newer := Fixture("rebase-new", 3, 100)
		for _, f := range []struct {
			ni     *narinfo.NarInfo
			nar    *index.NAR
			chunks []index.Chunk
		}{{ni, nar, old}, {ni2, nar2, older}, {ni3, nar3, newer}} {
			if err := ix.Commit(ctx, f.ni, f.nar, f.chunks); err != nil {
				t.Fatal(err)
			}
		}
		get := func(id chunker.ID) index.Chunk {
			t.Helper()
			got, err := ix.Chunks(ctx, []chunker.ID{id})
			if err != nil {
				t.Fatal(err)
			}
			return got[0]
		}
		rebase := func(c, old index.Chunk, maxDepth int) index.RebaseResult {
			t.Helper()
			r, err := ix.Rebase(ctx, []index.Rewrite{{C: c, Old: old}}, maxDepth)
			if err != nil || len(r) != 1 {
				t.Fatalf("Rebase = %v, %v; want one result", r, err)
			}
			return r[0]
		}
		delta := func(id chunker.ID, enc store.Encoding, size uint32, bases ...chunker.ID) index.Chunk {
			return index.Chunk{ID: id, Size: 100, StoredSize: size, Encoding: uint8(enc), Bases: bases, Level: 7}
		}
		// old[0] has dependents older[0] (depth 1) and older[1] (2, through
		// older[0]): as a delta of newer[0] they would reach 2 and 3.
		c := delta(old[0].ID, store.EncZstdRangeDelta, 10, newer[1].ID, newer[0].ID)
		if deps, err := ix.Dependents(ctx, old[0].ID); err != nil || len(deps) != 1 || deps[0] != older[0].ID {
			t.Errorf("Dependents = %v, %v; want older[0] only", deps, err)
		}
		if deps, err := ix.Dependents(ctx, older[0].ID); err != nil || len(deps) != 1 || deps[0] != older[1].ID {
			t.Errorf("Dependents through chunk_bases = %v, %v; want older[1] only", deps, err)
		}
		if r := rebase(c, old[0], 2); r != index.RebaseTooDeep {
			t.Fatalf("rebase taking its dependents past maxDepth: %v, want RebaseTooDeep", r)
		}
		if got := get(old[0].ID); !reflect.DeepEqual(got, old[0]) {
			t.Fatalf("a refused rebase changed the record: %+v", got)
		}
		if r := rebase(c, old[0], 3); r != index.Rebased {
			t.Fatalf("rebase within maxDepth: %v", r)
		}
		want := c
		want.Depth = 1
		if got := get(old[0].ID); !reflect.DeepEqual(got, want) {
			t.Errorf("after rebase: %+v, want %+v", got, want)
		}
		if d0, d1 := get(older[0].ID).Depth, get(older[1].ID).Depth; d0 != 2 || d1 != 3 {
			t.Errorf("dependents' depths after rebase: %d, %d; want 2, 3", d0, d1)
		}
		// The caller's view is stale now: a second rebase from it is refused.
		// Stale views that match the record but for one field.
		otherFirst, otherLevel := want, want
		otherFirst.Bases = []chunker.ID{newer[2].ID, newer[0].ID}
		otherLevel.Level = 19
		for name, try := range map[string][2]index.Chunk{
			"from a stale record":                   {delta(old[0].ID, store.EncZstdDelta, 9, newer[2].ID), old[0]},
			"from a record with another first base": {delta(old[0].ID, store.EncZstdDelta, 9, newer[2].ID), otherFirst},
			"from a record at another level":        {delta(old[0].ID, store.EncZstdDelta, 9, newer[2].ID), otherLevel},
			// A base with bases (old[0] now): no cycle can form.
			"onto a chunk that has bases": {delta(newer[0].ID, store.EncZstdDelta, 9, old[0].ID), newer[0]},
			"onto itself":                 {delta(old[2].ID, store.EncZstdDelta, 9, old[2].ID), old[2]},
			"onto an unrecorded chunk":    {delta(old[2].ID, store.EncZstdDelta, 9, chunker.ID{9}), old[2]},
			"of an unrecorded chunk":      {delta(chunker.ID{8}, store.EncZstdDelta, 9, newer[2].ID), {}},
		} {
			if r := rebase(try[0], try[1], 8); r != index.RebaseStale {
				t.Errorf("rebase %s: %v, want RebaseStale", name, r)
			}
		}
		// Not again while the first rewrite is in flight (its blob not
		// known to be in place: no ReleaseHolds yet), even from the record
		// as it is now: the two replaces could land in either order.
		want = delta(old[0].ID, store.EncZstdDelta, 8, newer[2].ID)
		if r := rebase(want, get(old[0].ID), 3); r != index.RebaseStale {
			t.Fatalf("rebase of a chunk whose rewrite is in flight: %v, want RebaseStale", r)
		}
		if err := ix.ReleaseHolds(ctx, []chunker.ID{old[0].ID}); err != nil {
			t.Fatal(err)
		}
		// Multi-base to single base: chunk_bases rows go, base_id stays.
		if r := rebase(want, get(old[0].ID), 3); r != index.Rebased {
			t.Fatalf("rebase of a delta chunk: %v", r)
		}
		want.Depth = 1
		if got := get(old[0].ID); !reflect.DeepEqual(got, want) {
			t.Errorf("after second rebase: %+v, want %+v", got, want)
		}
		// Until the caller has replaced the blob, it still needs its old
		// bases: they are held (listed by Dependents, not in the record),
		// and released by ReleaseHolds.
		dependsOn := func(base, id chunker.ID) bool {
			t.Helper()
			deps, err := ix.Dependents(ctx, base)
			if err != nil {
				t.Fatal(err)
			}
			return slices.Contains(deps, id)
		}
		for _, b := range []chunker.ID{newer[1].ID, newer[0].ID, newer[2].ID} {
			if !dependsOn(b, old[0].ID) {
				t.Errorf("base %s of the blob before the rebase (or after) is not held for it", b)
			}
		}
		if err := ix.ReleaseHolds(ctx, []chunker.ID{old[0].ID, old[2].ID}); err != nil {
			t.Fatal(err)
		}
		if dependsOn(newer[1].ID, old[0].ID) || dependsOn(newer[0].ID, old[0].ID) || !dependsOn(newer[2].ID, old[0].ID) {
			t.Errorf("after ReleaseHolds: the old bases are still held, or the recorded one is not named")
		}
		// Several rewrites in one call, in order: each sees the ones before
		// it. old[1] onto newer[1] is recorded, so old[2] onto old[1] (a
		// chunk with bases now) is refused, and old[2] onto newer[2] is
		// recorded.
		o1 := delta(old[1].ID, store.EncZstdDelta, 11, newer[1].ID)
		o2 := delta(old[2].ID, store.EncZstdDelta, 12, newer[2].ID)
		rs, err := ix.Rebase(ctx, []index.Rewrite{{C: o1, Old: old[1]}, {C: delta(old[2].ID, store.EncZstdDelta, 9, old[1].ID), Old: old[2]}, {C: o2, Old: old[2]}}, 3)
		if wantR := []index.RebaseResult{index.Rebased, index.RebaseStale, index.Rebased}; err != nil || !reflect.DeepEqual(rs, wantR) {
			t.Fatalf("batch Rebase = %v, %v; want %v", rs, err, wantR)
		}
		o1.Depth, o2.Depth = 1, 1
		if g1, g2 := get(old[1].ID), get(old[2].ID); !reflect.DeepEqual(g1, o1) || !reflect.DeepEqual(g2, o2) {
			t.Errorf("after batch rebase: %+v, %+v; want %+v, %+v", g1, g2, o1, o2)
		}
		// An error records nothing, not even the rewrites before it.
		if _, err := ix.Rebase(ctx, []index.Rewrite{{C: delta(newer[0].ID, store.EncZstdDelta, 5, newer[1].ID), Old: newer[0]}, {C: index.Chunk{ID: newer[2].ID}, Old: newer[2]}}, 3); err == nil {
			t.Errorf("batch Rebase with a rewrite naming no bases: no error")
		}
		if got := get(newer[0].ID); !reflect.DeepEqual(got, newer[0]) {
			t.Errorf("a failed batch recorded its first rewrite: %+v", got)
		}
		st, err := ix.Stats(ctx)
		if err != nil || st.StoredBytes != 5*50+8+11+12 {
			t.Errorf("stored bytes after rebase: %d, %v; want %d", st.StoredBytes, err, 5*50+8+11+12)
		}
		depths, err := ix.Depths(ctx)
		d := func(depth int, n int64, size, stored uint64) index.DepthStats {
			return index.DepthStats{Depth: depth, Chunks: n, ChunkBytes: size, StoredBytes: stored}
		}
		wantDepths := []index.DepthStats{d(0, 3, 300, 150), d(1, 3, 300, 8+11+12), d(2, 1, 100, 50), d(3, 1, 100, 50)}
		if err != nil || !reflect.DeepEqual(depths, wantDepths) {
			t.Errorf("Depths = %+v, %v; want %+v", depths, err, wantDepths)
		}
	})

	t.Run("ConcurrentRebasesFormNoCycle", func(t *testing.T) {
		ix := newIdx(t)
		// Pairs of plain chunks, each rebased onto the other at once: one of
		// each pair may win, never both (that would be a cycle).
		const pairs = 20
		ni, nar, chunks := Fixture("rebase-race", 2*pairs, 100)
		if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
			t.Fatal(err)
		}
		wins := make([]atomic.Int32, pairs)
		var wg sync.WaitGroup
		for p := range pairs {
			a, b := chunks[2*p], chunks[2*p+1]
			for _, try := range [][2]index.Chunk{{a, b}, {b, a}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := index.Chunk{ID: try[0].ID, Size: 100, StoredSize: 9, Encoding: uint8(store.EncZstdDelta), Bases: []chunker.ID{try[1].ID}}
					r, err := ix.Rebase(ctx, []index.Rewrite{{C: c, Old: try[0]}}, 3)
					if err != nil {
						t.Error(err)
					}
					if len(r) == 1 && r[0] == index.Rebased {
						wins[p].Add(1)
					}
				}()
			}
		}
		// And in batches: two calls, each rebasing one chunk of every pair
		// of its own onto the other, in opposite orders.
		ni2, nar2, chunks2 := Fixture("rebase-race-batch", 2*pairs, 100)
		if err := ix.Commit(ctx, ni2, nar2, chunks2); err != nil {
			t.Fatal(err)
		}
		batchWins := make([]atomic.Int32, pairs)
		for side := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var rw []index.Rewrite
				for i := range pairs {
					p := i
					if side == 1 {
						p = pairs - 1 - i
					}
					a, b := chunks2[2*p+side], chunks2[2*p+1-side]
					rw = append(rw, index.Rewrite{C: index.Chunk{ID: a.ID, Size: 100, StoredSize: 9, Encoding: uint8(store.EncZstdDelta), Bases: []chunker.ID{b.ID}}, Old: a})
				}
				rs, err := ix.Rebase(ctx, rw, 3)
				if err != nil {
					t.Error(err)
				}
				for i, r := range rs {
					p := i
					if side == 1 {
						p = pairs - 1 - i
					}
					if r == index.Rebased {
						batchWins[p].Add(1)
					}
				}
			}()
		}
		wg.Wait()
		for p := range pairs {
			if n := batchWins[p].Load(); n != 1 {
				t.Errorf("pair %d: %d of two opposite batched rebases recorded, want exactly 1", p, n)
			}
		}
		for p := range pairs {
			if n := wins[p].Load(); n != 1 {
				t.Errorf("pair %d: %d of two opposite rebases recorded, want exactly 1", p, n)
			}
		}
	})

	t.Run("ConcurrentCommitsOfSameNAR", func(t *testing.T) {
		ix := newIdx(t)
		ni, nar, chunks := Fixture("race", 50, 100)
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for range 6 {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- ix.Commit(ctx, ni, nar, chunks) }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got, err := ix.NAR(ctx, nar.Hash)
		if err != nil || len(got.Chunks) != 50 {
			t.Fatalf("after concurrent commits: %v chunks, %v", len(got.Chunks), err)
		}
		st, _ := ix.Stats(ctx)
		if st.Chunks != 50 || st.NARs != 1 || st.NarInfos != 1 {
			t.Errorf("duplicate rows after concurrent commits: %+v", st)
		}
	})
}

func sig(i int) string {
	b := make([]byte, 64)
	b[0] = byte(i)
	return fmt.Sprintf("%x", b)[:86] + "=="
}

func hashPart(name string) string {
	h := sha256.Sum256([]byte(name))
	return nixbase32.EncodeToString(h[:20])
}

// Fixture returns a narinfo, a NAR of n distinct chunks of size bytes each
// (named after name), and the chunk records, consistent with each other.
func Fixture(name string, n int, size uint32) (*narinfo.NarInfo, *index.NAR, []index.Chunk) {
	nar := &index.NAR{Hash: sha256.Sum256([]byte(name)), Size: uint64(n) * uint64(size), Preset: chunker.DefaultPreset,
		UpstreamSize: 777, UpstreamCompression: "xz"}
	var chunks []index.Chunk
	for i := range n {
		id := chunker.Sum([]byte(fmt.Sprintf("%s/%d", name, i)))
		nar.Chunks = append(nar.Chunks, index.ChunkRef{ID: id, Offset: uint64(i) * uint64(size), Size: size})
		chunks = append(chunks, index.Chunk{ID: id, Size: size, StoredSize: size / 2, Encoding: 1})
	}
	ni := &narinfo.NarInfo{
		StorePath: "/nix/store/" + hashPart(name) + "-" + name, URL: "nar/x.nar.xz", Compression: "xz",
		NarHash: nar.Hash, NarSize: nar.Size,
	}
	return ni, nar, chunks
}
