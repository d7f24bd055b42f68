package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/lock"
	"github.com/narstore/narstore/store"
)

// Reverse deltas over six releases of a package with a depth cap of 2: after
// each release, the newest reads without any delta, every release reads back
// byte-exact, every blob names the bases its index record names, recorded
// depths are the real chain depths and within the cap, and the releases
// together cost about what forward deltas cost. With a cap of 2, the fourth
// release already needs the release past the cap moved onto the newest one.
func TestReverseDeltas(t *testing.T) {
	const limit = 2
	nars := releases(t, 6)
	stored := map[bool]int64{}
	for _, reverse := range []bool{false, true} {
		e := newEnv(t)
		nis := publishReleases(t, e, nars)
		in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) {
			o.Delta, o.ReverseDelta, o.MaxDeltaDepth = true, reverse, limit
		})
		moved := 0
		for v, ni := range nis {
			res, err := in.IngestPath(t.Context(), ni.StorePath)
			if err != nil {
				t.Fatal(err)
			}
			moved += res.Moved
			if !reverse {
				continue
			}
			if v > 0 && res.Rebased == 0 {
				t.Errorf("release %d: nothing of release %d was rebased onto it", v+1, v)
			}
			nar, _ := e.ix.NAR(t.Context(), ni.NarHash)
			if d := deltaChunks(t, e.ix, nar); len(d) > 0 {
				t.Errorf("release %d, the newest: %d delta chunks, want none", v+1, len(d))
			}
			for w := range v + 1 {
				if got := e.readBack(t, nis[w]); string(got) != string(nars[w]) {
					t.Fatalf("after release %d: release %d does not read back byte-exact", v+1, w+1)
				}
			}
			checkChains(t, e, limit)
		}
		stored[reverse] = in.Progress.NewStoredBytes.Load() - in.Progress.RebaseSaved.Load()
		if reverse && in.Progress.Rehomed.Load() == 0 {
			t.Errorf("no chunk was moved onto a newer release, so none passed the cap of %d", limit)
		}
		if int64(moved) != in.Progress.Rehomed.Load() {
			t.Errorf("results report %d chunks moved, progress %d", moved, in.Progress.Rehomed.Load())
		}
		st, _ := e.ix.Stats(t.Context())
		if int64(st.StoredBytes) != stored[reverse] {
			t.Errorf("reverse=%v: index records %d stored bytes, ingest counted %d", reverse, st.StoredBytes, stored[reverse])
		}
	}
	t.Logf("six releases stored in %d bytes forward, %d reverse", stored[false], stored[true])
	if stored[true] > stored[false]*5/4 {
		t.Errorf("reverse deltas stored %d bytes, forward %d", stored[true], stored[false])
	}
}

// Past the depth cap each bump moves older releases onto the new one, but
// only those whose chains reach the cap: moving every chunk depending on
// the predecessor made each bump move one release more than the bump before
// (release 11 of this package moved 7 releases' chunks, now 3), since the
// moved ones became the newest release's dependents in turn. All releases
// still read back and stay within the cap.
//
// With MaxMoves 1 no release moves more than one release's worth; the rest
// of its predecessor stays plain, which stores more.
func TestReverseDeltaMovesOnlyChainsAtTheCap(t *testing.T) {
	const limit, n = 3, 11
	nars := releases(t, n)
	stored := map[int]int64{}
	for _, maxMoves := range []int{0, 1} {
		e := newEnv(t)
		nis := publishReleases(t, e, nars)
		in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) {
			o.Delta, o.ReverseDelta, o.MaxDeltaDepth, o.MaxMoves = true, true, limit, maxMoves
		})
		var last *ingest.Result
		for v, ni := range nis {
			res, err := in.IngestPath(t.Context(), ni.StorePath)
			if err != nil {
				t.Fatal(err)
			}
			if maxMoves > 0 && res.Moved > maxMoves*res.Chunks {
				t.Errorf("MaxMoves %d: release %d moved %d chunks (its own has %d)", maxMoves, v+1, res.Moved, res.Chunks)
			}
			last = res
		}
		if maxMoves == 0 && (last.Moved == 0 || last.Moved > 3*last.Chunks) {
			t.Errorf("release %d moved %d chunks of older releases (its own has %d); want some, at most 3 releases' worth", n, last.Moved, last.Chunks)
		}
		checkChains(t, e, limit)
		for v, ni := range nis {
			if got := e.readBack(t, ni); string(got) != string(nars[v]) {
				t.Fatalf("MaxMoves %d: release %d does not read back byte-exact", maxMoves, v+1)
			}
		}
		stored[maxMoves] = in.Progress.NewStoredBytes.Load() - in.Progress.RebaseSaved.Load()
	}
	t.Logf("stored %d bytes with no bound on moves, %d with MaxMoves 1", stored[0], stored[1])
	if stored[1] <= stored[0] {
		t.Errorf("bounded moves stored %d bytes, unbounded %d: the bound left nothing plain", stored[1], stored[0])
	}
}

// Reverse deltas store the same whatever the number of workers: workers only
// encode, and one flusher records, replaces and moves dependents in the
// predecessor's order. When each worker recorded its own chunks they raced
// for the same dependents.
func TestReverseDeltasSameWithAnyWorkers(t *testing.T) {
	nars := releases(t, 6)
	var want []index.Chunk
	for _, workers := range []int{1, 8} {
		e := newEnv(t)
		nis := publishReleases(t, e, nars)
		in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) {
			o.Delta, o.ReverseDelta, o.MaxDeltaDepth, o.ChunkWorkers = true, true, 2, workers
		})
		for _, ni := range nis {
			if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
				t.Fatal(err)
			}
		}
		if in.Progress.Rehomed.Load() == 0 {
			t.Fatalf("%d workers: no dependents moved; the test needs some", workers)
		}
		ids, recs, _ := storedChunks(t, e)
		slices.SortFunc(recs, func(a, b index.Chunk) int { return slices.Compare(a.ID[:], b.ID[:]) })
		if len(ids) != len(recs) {
			t.Fatalf("%d blobs, %d records", len(ids), len(recs))
		}
		if want == nil {
			want = recs
			continue
		}
		if len(recs) != len(want) {
			t.Fatalf("%d workers: %d chunks, one worker %d", workers, len(recs), len(want))
		}
		differ := 0
		for i := range recs {
			if !reflect.DeepEqual(recs[i], want[i]) {
				differ++
			}
		}
		if differ > 0 {
			t.Errorf("%d workers: %d of %d chunk records differ from one worker's", workers, differ, len(recs))
		}
	}
}

// An ingest does not rewrite a predecessor another ingest is rewriting (its
// rebase lock is taken): the two would replace each other's blobs between
// record and replace. Once the lock is free, the next release rewrites it.
func TestReverseDeltaSkipsPredecessorBeingRewritten(t *testing.T) {
	e := newEnv(t)
	nis := publishReleases(t, e, releases(t, 3))
	lk := lock.NewLocal(lock.Retry{}, nil)
	in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) { reverseDeltas(o); o.Locker = lk })
	if _, err := in.IngestPath(t.Context(), nis[0].StorePath); err != nil {
		t.Fatal(err)
	}
	lease, ok, err := lk.TryLock(t.Context(), ingest.RebaseLockKey(nis[0].NarHash), time.Minute)
	if err != nil || !ok {
		t.Fatalf("take the rebase lock: %v, %v", ok, err)
	}
	res, err := in.IngestPath(t.Context(), nis[1].StorePath)
	if err != nil {
		t.Fatal(err)
	}
	nar, _ := e.ix.NAR(t.Context(), nis[0].NarHash)
	if res.Rebased != 0 || len(deltaChunks(t, e.ix, nar)) != 0 {
		t.Errorf("release 1 rewritten (%d chunks, %d deltas) while its rebase lock was held", res.Rebased, len(deltaChunks(t, e.ix, nar)))
	}
	lease.Unlock(t.Context())
	if res, err = in.IngestPath(t.Context(), nis[2].StorePath); err != nil {
		t.Fatal(err)
	}
	if res.Rebased == 0 {
		t.Errorf("release 2 not rewritten with its rebase lock free")
	}
	if held, _, _ := lk.TryLock(t.Context(), ingest.RebaseLockKey(nis[1].NarHash), time.Minute); held == nil {
		t.Errorf("the rebase lock of release 2 is still held after the ingest")
	}
	for _, ni := range nis {
		nar, _ := e.ix.NAR(t.Context(), ni.NarHash)
		if got := e.readBack(t, ni); len(got) != int(nar.Size) {
			t.Fatalf("%s does not read back", ni.StorePath)
		}
	}
}

// checkChains checks every chunk's blob against its index record: the same
// bases, in order, and the recorded depth is the real chain depth, within
// limit.
func checkChains(t *testing.T, e *env, limit int) {
	t.Helper()
	ids, recs, bases := storedChunks(t, e)
	recorded := map[chunker.ID]uint8{}
	for i, id := range ids {
		if !slices.Equal(bases[id], recs[i].Bases) {
			t.Errorf("chunk %s: blob names bases %v, index %v", id, bases[id], recs[i].Bases)
		}
		recorded[id] = recs[i].Depth
	}
	var depth func(id chunker.ID, seen int) int
	depth = func(id chunker.ID, seen int) int {
		if seen > len(ids) {
			t.Fatalf("delta cycle through %s", id)
		}
		d := 0
		for _, b := range bases[id] {
			d = max(d, depth(b, seen+1)+1)
		}
		return d
	}
	for _, id := range ids {
		d := depth(id, 0)
		if d > limit || int(recorded[id]) != d {
			t.Errorf("chunk %s: chain depth %d, recorded %d, limit %d", id, d, recorded[id], limit)
		}
	}
}

// storedChunks lists every chunk in e's store, its index record, and the
// bases its blob names.
func storedChunks(t *testing.T, e *env) ([]chunker.ID, []index.Chunk, map[chunker.ID][]chunker.ID) {
	t.Helper()
	var ids []chunker.ID
	if err := e.dir.Walk(t.Context(), func(id chunker.ID, _ int64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	recs, err := e.ix.Chunks(t.Context(), ids)
	if err != nil {
		t.Fatal(err)
	}
	bases := map[chunker.ID][]chunker.ID{}
	for _, id := range ids {
		rc, err := e.dir.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		_, refs, _, err := store.BlobHeader(blob)
		if err != nil {
			t.Fatal(err)
		}
		bases[id] = store.IDs(refs)
	}
	return ids, recs, bases
}

// Reverse deltas rewrite blobs, so a store that cannot is refused up front.
func TestReverseDeltasNeedReplace(t *testing.T) {
	e := newEnv(t)
	c, err := store.NewChunks(struct{ store.Store }{e.dir}, store.ChunksOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ingest.New(nil, e.ix, c, ingest.Options{Delta: true, ReverseDelta: true}); err == nil {
		t.Error("reverse deltas accepted on a store that cannot replace blobs")
	}
	if _, err := ingest.New(nil, e.ix, c, ingest.Options{Delta: true}); err != nil {
		t.Errorf("forward deltas on a store that cannot replace blobs: %v", err)
	}
}

// failingReplace is a store whose Replace fails after writing nothing.
type failingReplace struct{ *store.Dir }

func (failingReplace) Replace(context.Context, []store.Blob) error {
	return errors.New("replace: disk full")
}

// checkBasesNamed checks the deletion rule's premise for every chunk in e's
// store: each base its blob needs lists it among its dependents (it names
// the base in its record or holds it). It returns how many bases the
// records name.
func checkBasesNamed(t *testing.T, e *env) int {
	t.Helper()
	ids, recs, blobBases := storedChunks(t, e)
	named := 0
	for i, id := range ids {
		for _, b := range blobBases[id] {
			deps, err := e.ix.Dependents(t.Context(), b)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(deps, id) {
				t.Errorf("chunk %s: its blob needs base %s, which the index neither names in its record nor holds for it", id, b)
			}
		}
		named += len(recs[i].Bases)
	}
	return named
}

// toggledReplace is a store whose Replace fails while fail is set.
type toggledReplace struct {
	*store.Dir
	fail *atomic.Bool
}

func (r toggledReplace) Replace(ctx context.Context, blobs []store.Blob) error {
	if r.fail.Load() {
		return errors.New("replace: disk full")
	}
	return r.Dir.Replace(ctx, blobs)
}

// A rewrite of a chunk whose blob is a delta already (a dependent moved onto
// the newest release) fails at the store after the index recorded it: the
// old blob still needs its old base, which the record no longer names, so
// the index holds it for the chunk until a rewrite succeeds.
func TestReverseDeltaFailedRewriteHoldsOldBases(t *testing.T) {
	e := newEnv(t)
	nars := releases(t, 3)
	nis := publishReleases(t, e, nars)
	var fail atomic.Bool
	chunks, err := store.NewChunks(toggledReplace{e.dir, &fail}, store.ChunksOptions{})
	if err != nil {
		t.Fatal(err)
	}
	up, err := ingest.NewUpstream(e.cache.URL(), ingest.UpstreamOptions{Delay: 1})
	if err != nil {
		t.Fatal(err)
	}
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	in, err := ingest.New(up, e.ix, chunks, ingest.Options{Preset: preset, Keys: narinfo.PublicKeys{e.cache.PublicKey},
		Delta: true, ReverseDelta: true, MaxDeltaDepth: 1})
	if err != nil {
		t.Fatal(err)
	}
	for v, ni := range nis {
		// Release 3's rewrites fail at the store: release 2's chunks, and
		// release 1's (deltas of release 2's) moved onto release 3 to keep
		// within the cap of 1.
		fail.Store(v == 2)
		if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
			t.Fatal(err)
		}
	}
	if in.Progress.Rebased.Load() == 0 {
		t.Fatal("nothing rewritten before the store failed")
	}
	for v, ni := range nis {
		if got := e.readBack(t, ni); string(got) != string(nars[v]) {
			t.Fatalf("release %d does not read back byte-exact", v+1)
		}
	}
	checkBasesNamed(t, e)
	// Holds of a chunk go once a rewrite of it succeeds: with the store
	// mended, release 4 rewrites release 3 and moves release 1 and 2 again.
	fail.Store(false)
	ni4 := e.cache.Add(t, nixtest.Path{Name: "tool-4.0", NAR: releases(t, 4)[3], Compression: "zstd"})
	if _, err := in.IngestPath(t.Context(), ni4.StorePath); err != nil {
		t.Fatal(err)
	}
	checkBasesNamed(t, e)
}

// failingRebase is an index whose Rebase fails after recording nothing.
type failingRebase struct{ *index.SQLite }

func (failingRebase) Rebase(context.Context, []index.Rewrite, int) ([]index.RebaseResult, error) {
	return nil, errors.New("index: connection lost")
}

// When a rewrite fails halfway, at the index or at the store, every release
// still reads back byte-exact and every base a blob needs is named in the
// index (the deletion rule): the index is written before the blob.
func TestReverseDeltaFailuresKeepBasesNamed(t *testing.T) {
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	nars := releases(t, 3)
	for _, fail := range []string{"store", "index"} {
		t.Run(fail, func(t *testing.T) {
			e := newEnv(t)
			nis := publishReleases(t, e, nars)
			var ix ingest.Index = e.ix
			chunks := e.chunks
			if fail == "index" {
				ix = failingRebase{e.ix}
			} else {
				var err error
				if chunks, err = store.NewChunks(failingReplace{e.dir}, store.ChunksOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			up, err := ingest.NewUpstream(e.cache.URL(), ingest.UpstreamOptions{Delay: 1})
			if err != nil {
				t.Fatal(err)
			}
			in, err := ingest.New(up, ix, chunks, ingest.Options{Preset: preset, Keys: narinfo.PublicKeys{e.cache.PublicKey},
				Delta: true, ReverseDelta: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, ni := range nis {
				if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
					t.Fatalf("a failed rewrite failed the ingest of the new release: %v", err)
				}
			}
			for v, ni := range nis {
				if got := e.readBack(t, ni); string(got) != string(nars[v]) {
					t.Fatalf("release %d does not read back byte-exact", v+1)
				}
			}
			named := checkBasesNamed(t, e)
			if fail == "store" && named == 0 {
				t.Error("no rewrite reached the index, so the failing store was never tried")
			}
			if p := in.Progress.Rebased.Load(); p != 0 {
				t.Errorf("%d chunks counted as rebased although every rewrite failed", p)
			}
		})
	}
}

// committedTee counts the bytes it gets and what ingest had rebased and
// written when it was told the NAR is committed.
type committedTee struct {
	in                      *ingest.Ingester
	n                       int
	atCommit, bytesAtCommit int
	committed               bool
}

func (c *committedTee) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }
func (c *committedTee) Committed() {
	c.committed, c.atCommit, c.bytesAtCommit = true, int(c.in.Progress.Rebased.Load()), c.n
}

// A pull-through client streams the NAR through the tee: it learns that the
// NAR is verified and recorded before the previous release is rewritten, so
// it does not wait for that.
func TestReverseDeltaTeeCommittedBeforeRebase(t *testing.T) {
	nars := releases(t, 2)
	e := newEnv(t)
	nis := publishReleases(t, e, nars)
	in := e.ingester(t, e.cache.URL(), reverseDeltas)
	for v, ni := range nis {
		tee := &committedTee{in: in}
		if _, err := in.IngestFromUpstream(t.Context(), ni, tee); err != nil {
			t.Fatal(err)
		}
		if !tee.committed || tee.bytesAtCommit != len(nars[v]) || tee.atCommit != 0 {
			t.Errorf("release %d: committed %v with %d of %d bytes, after %d rebased chunks", v+1, tee.committed, tee.bytesAtCommit, len(nars[v]), tee.atCommit)
		}
	}
	if in.Progress.Rebased.Load() == 0 {
		t.Error("release 1 was not rebased onto release 2")
	}
}

// A predecessor recompressed since it was stored (recorded at a level above
// ingest's, in fewer bytes) is judged against plain at ingest's level: the
// delta is recompressed in turn later. Here the recorded sizes are shrunk far
// below anything a delta reaches, which only that rule sees past.
func TestReverseDeltaJudgesRecompressedAtIngestLevel(t *testing.T) {
	nars, e, nis, in := firstOfTwoReleases(t)
	ids, recs, _ := storedChunks(t, e)
	for i, id := range ids {
		if err := e.ix.Recode(t.Context(), id, recs[i], index.Chunk{StoredSize: max(recs[i].StoredSize/1000, 1), Encoding: recs[i].Encoding, Level: 19}, nil); err != nil {
			t.Fatal(err)
		}
	}
	res, err := in.IngestPath(t.Context(), nis[1].StorePath)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rebased == 0 {
		t.Error("no chunk of a recompressed predecessor was rebased")
	}
	for v, ni := range nis {
		if got := e.readBack(t, ni); string(got) != string(nars[v]) {
			t.Fatalf("release %d does not read back byte-exact", v+1)
		}
	}
}

// An older release ingested after a newer one (a backfill, or a client
// pulling an old channel through) is stored as deltas of the newer one,
// which stays plain: version order decides, not ingest order.
func TestReverseDeltaOlderReleaseAfterNewer(t *testing.T) {
	nars := releases(t, 2)
	e := newEnv(t)
	older := e.cache.Add(t, nixtest.Path{Name: "tool-1.9.0", NAR: nars[0], Compression: "zstd"})
	newer := e.cache.Add(t, nixtest.Path{Name: "tool-1.10.0", NAR: nars[1], Compression: "zstd"})
	in := e.ingester(t, e.cache.URL(), reverseDeltas)
	for _, ni := range []*narinfo.NarInfo{newer, older} {
		if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
			t.Fatal(err)
		}
	}
	nNewer, _ := e.ix.NAR(t.Context(), newer.NarHash)
	nOlder, _ := e.ix.NAR(t.Context(), older.NarHash)
	if d := deltaChunks(t, e.ix, nNewer); len(d) > 0 || in.Progress.Rebased.Load() > 0 {
		t.Errorf("the newer release (ingested first) has %d delta chunks, %d rebased; want it plain", len(d), in.Progress.Rebased.Load())
	}
	if len(deltaChunks(t, e.ix, nOlder)) == 0 {
		t.Error("the older release was not stored as deltas of the newer one")
	}
	for ni, want := range map[*narinfo.NarInfo][]byte{older: nars[0], newer: nars[1]} {
		if got := e.readBack(t, ni); string(got) != string(want) {
			t.Fatalf("%s does not read back byte-exact", ni.StorePath)
		}
	}
}

// publishReleases adds nars to e's cache as successive releases of one
// package, tool-1.0, tool-2.0, …, and returns their narinfos.
func publishReleases(t *testing.T, e *env, nars [][]byte) []*narinfo.NarInfo {
	t.Helper()
	var nis []*narinfo.NarInfo
	for v, n := range nars {
		nis = append(nis, e.cache.Add(t, nixtest.Path{Name: fmt.Sprintf("tool-%d.0", v+1), NAR: n, Compression: "zstd"}))
	}
	return nis
}

// firstOfTwoReleases publishes two releases of a package and ingests the
// first with reverse deltas.
func firstOfTwoReleases(t *testing.T) ([][]byte, *env, []*narinfo.NarInfo, *ingest.Ingester) {
	t.Helper()
	nars := releases(t, 2)
	e := newEnv(t)
	nis := publishReleases(t, e, nars)
	in := e.ingester(t, e.cache.URL(), reverseDeltas)
	if _, err := in.IngestPath(t.Context(), nis[0].StorePath); err != nil {
		t.Fatal(err)
	}
	return nars, e, nis, in
}

// reverseDeltas turns delta encoding on, with reverse deltas.
func reverseDeltas(o *ingest.Options) { o.Delta, o.ReverseDelta = true, true }

// A damaged chunk of the previous release (its blob decodes, to other
// bytes) is left as it is: the rewrite decodes it without a check of its
// own, but the delta made of it must read back to the chunk's ID.
func TestReverseDeltaLeavesADamagedChunkAlone(t *testing.T) {
	_, e, nis, in := firstOfTwoReleases(t)
	first, _ := e.ix.NAR(t.Context(), nis[0].NarHash)
	ref := first.Chunks[len(first.Chunks)/2]
	good, err := e.chunks.Get(t.Context(), ref.ID)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(good)
	bad[len(bad)/2] ^= 1
	blob, _ := e.chunks.Encode(bad)
	blob = slices.Clone(blob)
	if err := e.chunks.Replace(t.Context(), []store.Blob{{ID: ref.ID, Data: blob}}); err != nil {
		t.Fatal(err)
	}
	before, _ := e.ix.Chunks(t.Context(), []chunker.ID{ref.ID})
	res, err := in.IngestPath(t.Context(), nis[1].StorePath)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rebased == 0 {
		t.Fatal("nothing of the previous release was rebased: the test would not cover the rewrite")
	}
	after, _ := e.ix.Chunks(t.Context(), []chunker.ID{ref.ID})
	if !reflect.DeepEqual(after, before) {
		t.Errorf("the damaged chunk's record changed: %+v, was %+v", after[0], before[0])
	}
	got, err := e.dir.Get(t.Context(), ref.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if now, _ := io.ReadAll(got); !slices.Equal(now, blob) {
		t.Error("the damaged chunk's blob was rewritten")
	}
	if _, err := e.chunks.Get(t.Context(), ref.ID); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("reading the damaged chunk: %v, want ErrCorrupt", err)
	}
}

// With reverse deltas the depth cap defaults to DefaultReverseDeltaDepth:
// release r back sits at depth r, so the first releases past the forward
// default (3) still need no older release moved; the first past 5 does.
func TestReverseDeltaDefaultCap(t *testing.T) {
	const n = ingest.DefaultReverseDeltaDepth + 2
	nars := releases(t, n)
	e := newEnv(t)
	nis := publishReleases(t, e, nars)
	in := e.ingester(t, e.cache.URL(), reverseDeltas)
	for v, ni := range nis {
		res, err := in.IngestPath(t.Context(), ni.StorePath)
		if err != nil {
			t.Fatal(err)
		}
		if v < n-1 && res.Moved > 0 {
			t.Errorf("release %d moved %d chunks of older releases; want none within depth %d", v+1, res.Moved, ingest.DefaultReverseDeltaDepth)
		}
		if v == n-1 && res.Moved == 0 {
			t.Errorf("release %d moved nothing: the oldest would pass depth %d", v+1, ingest.DefaultReverseDeltaDepth)
		}
	}
	checkChains(t, e, ingest.DefaultReverseDeltaDepth)
	var deepest uint8
	_, recs, _ := storedChunks(t, e)
	for _, r := range recs {
		deepest = max(deepest, r.Depth)
	}
	if int(deepest) <= store.DefaultMaxDeltaDepth {
		t.Errorf("deepest chain %d: the forward default capped it", deepest)
	}
}

// A package's first release (no predecessor) may be stored as deltas of
// similar chunks anywhere in the store; with reverse deltas at their default
// cap those chunks sit in the release clients fetch, so they stay within the
// forward default's depth even where the closest match is an old release's
// chunk deeper than that.
func TestReverseDeltaNewChunksKeepForwardDepth(t *testing.T) {
	nars := releases(t, ingest.DefaultReverseDeltaDepth)
	e := newEnv(t)
	nis := publishReleases(t, e, nars)
	in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) { reverseDeltas(o); o.SimilarSearch = true })
	for _, ni := range nis {
		if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
			t.Fatal(err)
		}
	}
	oldest, _ := e.ix.NAR(t.Context(), nis[0].NarHash)
	if d := deltaChunks(t, e.ix, oldest); len(d) == 0 || slices.MaxFunc(d, func(a, b index.Chunk) int { return int(a.Depth) - int(b.Depth) }).Depth <= store.DefaultMaxDeltaDepth {
		t.Fatalf("the oldest release is no deeper than %d: the test would not cover a deep match", store.DefaultMaxDeltaDepth)
	}
	other := slices.Clone(nars[0])
	for i := 3000; i+8 < len(other); i += 8 << 10 {
		copy(other[i:], "another!")
	}
	ni := e.cache.Add(t, nixtest.Path{Name: "other-1.0", NAR: other, Compression: "zstd"})
	if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
		t.Fatal(err)
	}
	nar, _ := e.ix.NAR(t.Context(), ni.NarHash)
	d := deltaChunks(t, e.ix, nar)
	if len(d) == 0 {
		t.Fatal("the new package found no delta base in the store: the test would not cover the search")
	}
	for _, c := range d {
		if int(c.Depth) > store.DefaultMaxDeltaDepth {
			t.Errorf("a chunk of the new package's first release is at depth %d, past %d", c.Depth, store.DefaultMaxDeltaDepth)
		}
	}
	if got := e.readBack(t, ni); string(got) != string(other) {
		t.Fatal("the new package does not read back byte-exact")
	}
}

// A blob an earlier ingest stored and never committed (it failed before its
// commit), encoded against other delta bases than this ingest's, does not
// stay under a record naming other bases: the directory keeps the first
// blob stored, so ingest puts its own in place.
func TestIngestReplacesABlobLeftWithOtherBases(t *testing.T) {
	nars := releases(t, 1)
	other := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/encoding/json"))
	// Where the chunks of nars[0] fall, from a store of its own.
	probe := newEnv(t)
	pni := probe.cache.Add(t, nixtest.Path{Name: "tool-1.0", NAR: nars[0], Compression: "zstd"})
	if _, err := probe.ingester(t, probe.cache.URL(), reverseDeltas).IngestPath(t.Context(), pni.StorePath); err != nil {
		t.Fatal(err)
	}
	pnar, _ := probe.ix.NAR(t.Context(), pni.NarHash)
	k := pnar.Chunks[len(pnar.Chunks)/2].ID
	kData, err := probe.chunks.Get(t.Context(), k)
	if err != nil {
		t.Fatal(err)
	}

	e := newEnv(t)
	oni := e.cache.Add(t, nixtest.Path{Name: "other-1.0", NAR: other, Compression: "zstd"})
	ni := e.cache.Add(t, nixtest.Path{Name: "tool-1.0", NAR: nars[0], Compression: "zstd"})
	in := e.ingester(t, e.cache.URL(), reverseDeltas)
	if _, err := in.IngestPath(t.Context(), oni.StorePath); err != nil {
		t.Fatal(err)
	}
	onar, _ := e.ix.NAR(t.Context(), oni.NarHash)
	y := onar.Chunks[0].ID
	yData, err := e.chunks.Get(t.Context(), y)
	if err != nil {
		t.Fatal(err)
	}
	left, _, err := e.chunks.EncodeDelta(kData, []store.Base{{ID: y, Data: yData}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.dir.Put(t.Context(), k, left); err != nil {
		t.Fatal(err)
	}
	if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
		t.Fatal(err)
	}
	checkBasesNamed(t, e)
	if bases, err := e.chunks.BlobBases(t.Context(), k); err != nil || slices.Contains(bases, y) {
		t.Errorf("chunk %s's blob needs bases %v (%v): the one left before is still there", k, bases, err)
	}
	if got := e.readBack(t, ni); string(got) != string(nars[0]) {
		t.Fatal("the NAR does not read back byte-exact")
	}
}
