package ingest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// The delta search's base cache decodes chains through itself (a chunk's
// bases, their bases...) and returns verified bytes.
func TestBaseCacheChain(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	v := [][]byte{storetest.RandomBytes(64<<10, 1)}
	for i := 1; i < 4; i++ {
		next := append([]byte(nil), v[i-1]...)
		copy(next[i*1000:], "edit")
		v = append(v, next)
	}
	ids := make([]chunker.ID, len(v))
	for i := range v {
		ids[i] = chunker.Sum(v[i])
		blob, _ := c.Encode(v[i])
		if i > 0 {
			var err error
			blob, _, err = c.EncodeDelta(v[i], []store.Base{{ID: ids[i-1], Data: v[i-1]}})
			if err != nil {
				t.Fatal(err)
			}
		}
		d.Put(ctx, ids[i], blob)
	}
	bc := newBaseCache(c, 1<<20)
	for i := len(v) - 1; i >= 0; i-- {
		got, err := bc.get(ctx, ids[i])
		if err != nil || !bytes.Equal(got, v[i]) {
			t.Fatalf("chunk %d (depth %d): %v", i, i, err)
		}
	}
	if bc.lru.Len() != len(v) {
		t.Errorf("%d chunks cached, want %d", bc.lru.Len(), len(v))
	}
	// Bounded: a cache of 100 KiB keeps one 64 KiB chunk at most.
	small := newBaseCache(c, 100<<10)
	if _, err := small.get(ctx, ids[3]); err != nil {
		t.Fatal(err)
	}
	if small.lru.Bytes() > 100<<10 {
		t.Errorf("cache holds %d bytes, bound 100 KiB", small.lru.Bytes())
	}
}

// Blobs that name each other as bases (a corrupt or tampered store) fail
// as corrupt instead of recursing forever.
func TestBaseCacheCycleFails(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	aID, _ := storetest.DeltaCycle(t, d, c)
	storetest.FailsCorrupt(t, "cycle of delta bases", func() error { _, err := newBaseCache(c, 1<<20).get(ctx, aID); return err })
}

// A chunk loaded only to decode another is not checked then (the chunk it
// decodes is), but is checked before the delta search gets it as a base to
// encode against: a damaged one fails then, and is not kept.
func TestBaseCacheChecksWhatItReturns(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	base := storetest.RandomBytes(64<<10, 1) // stored raw: damage decodes silently
	baseID := chunker.Sum(base)
	c.Put(ctx, baseID, base)
	half := append(append([]byte(nil), base[:32<<10]...), "an edit"...)
	halfID := chunker.Sum(half)
	blob, _, err := c.EncodeDelta(half, []store.Base{{ID: baseID, Data: base}})
	if err != nil {
		t.Fatal(err)
	}
	d.Put(ctx, halfID, blob)
	storetest.Corrupt(t, d, baseID) // its last byte, which half does not use

	bc := newBaseCache(c, 1<<20)
	if got, err := bc.get(ctx, halfID); err != nil || !bytes.Equal(got, half) {
		t.Fatalf("chunk decoded with a base damaged where it is not used: %v", err)
	}
	if _, checked, ok := bc.lru.Lookup(baseID); !ok || checked {
		t.Fatal("the base was not loaded unchecked")
	}
	for range 2 {
		if _, err := bc.get(ctx, baseID); !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("damaged base asked for itself: %v, want ErrCorrupt", err)
		}
	}
	if bc.lru.Has(baseID) {
		t.Error("the damaged base is still cached")
	}
}

// Predecessor chunks the delta index decoded come back from the spill
// file, not by decoding their chains again; a spilled copy that no longer
// hashes to its id is dropped and the chunk is decoded from the store.
func TestBaseCacheSpill(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	v := [][]byte{storetest.RandomBytes(64<<10, 1), storetest.RandomBytes(64<<10, 2), storetest.RandomBytes(64<<10, 3)}
	ids := make([]chunker.ID, len(v))
	for i := range v {
		ids[i] = chunker.Sum(v[i])
		if _, err := c.Put(ctx, ids[i], v[i]); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	sp, err := newSpill(dir)
	if err != nil {
		t.Fatal(err)
	}
	bc := newBaseCache(c, 64<<10) // keeps one chunk: the others must come from the spill or the store
	bc.spill = sp
	defer bc.close()
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("spill file left in its directory: %v", left)
	}
	for i := range v {
		bc.keep(ids[i], v[i])
	}
	bc.keep(ids[0], v[0]) // kept once
	if sp.size != 3*64<<10 {
		t.Fatalf("spill holds %d bytes, want %d", sp.size, 3*64<<10)
	}
	if sp.limit <= sp.size || sp.limit > maxSpillBytes {
		t.Fatalf("spill limit %d: want it above what it holds and at most %d", sp.limit, maxSpillBytes)
	}
	lim := sp.limit
	sp.limit = sp.size + 64<<10 - 1 // one byte short of another chunk
	bc.keep(chunker.Sum([]byte("another")), storetest.RandomBytes(64<<10, 4))
	if sp.size != 3*64<<10 || len(sp.at) != 3 {
		t.Fatalf("spill took a chunk past its limit: %d bytes, %d chunks", sp.size, len(sp.at))
	}
	sp.limit = lim
	// Gone from the store, chunks 0 and 1 still come back intact: from the spill.
	for _, i := range []int{0, 1} {
		if err := d.Delete(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 1, 0} {
		got, err := bc.get(ctx, ids[i])
		if err != nil || !bytes.Equal(got, v[i]) {
			t.Fatalf("chunk %d from the spill: %v", i, err)
		}
	}
	// A damaged spilled copy is never returned: chunk 2 decodes from the
	// store instead, and chunk 1 (no longer in the store) fails.
	for _, i := range []int{1, 2} {
		bc.lru.Remove(ids[i])
		if _, err := sp.f.WriteAt([]byte("damage"), sp.at[ids[i]].off+100); err != nil {
			t.Fatal(err)
		}
	}
	got, err := bc.get(ctx, ids[2])
	if err != nil || !bytes.Equal(got, v[2]) {
		t.Fatalf("chunk 2 with a damaged spilled copy: %v", err)
	}
	if _, ok := sp.at[ids[2]]; ok {
		t.Error("damaged spilled copy still listed")
	}
	if got, err := bc.get(ctx, ids[1]); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("chunk 1, damaged in the spill and gone from the store: got %d bytes, err %v; want ErrNotFound", len(got), err)
	}
	// Closed, the cache works without it.
	bc.close()
	bc.lru.Remove(ids[2])
	if got, err := bc.get(ctx, ids[2]); err != nil || !bytes.Equal(got, v[2]) {
		t.Fatalf("after close: %v", err)
	}
}
