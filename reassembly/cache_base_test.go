package reassembly_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// Delta bases are loaded through the cache without checking their own
// BLAKE3; what a caller receives is always checked. A base damaged where
// the delta does not use it still gives the right delta chunk, but is never
// returned as a chunk itself; one damaged where the delta uses it fails
// that chunk as corrupt, naming the base.
func TestCacheChecksBasesBeforeServingThem(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	// Random bytes are stored raw, so damage to them decodes silently.
	base := storetest.RandomBytes(64<<10, 1)
	baseID := chunker.Sum(base)
	if _, err := c.Put(ctx, baseID, base); err != nil {
		t.Fatal(err)
	}
	// Two chunks built from the base: one from its first half only, one
	// from all of it.
	put := func(data []byte) chunker.ID {
		id := chunker.Sum(data)
		blob, w, err := c.EncodeDelta(data, []store.Base{{ID: baseID, Data: base}})
		if err != nil || !w.Encoding.IsDelta() {
			t.Fatalf("delta: %v %v", w.Encoding, err)
		}
		d.Put(ctx, id, blob)
		return id
	}
	half := append(append([]byte(nil), base[:32<<10]...), "an edit"...)
	halfID := put(half)
	whole := append(append([]byte(nil), base...), "an edit"...)
	wholeID := put(whole)

	// Damage the base's last byte: the second half, which only whole uses.
	storetest.Corrupt(t, d, baseID)
	cache := reassembly.NewCache(c, 64<<20)
	got, err := cache.Chunk(ctx, halfID)
	if err != nil || !bytes.Equal(got, half) {
		t.Fatalf("delta chunk not using the damage: %v", err)
	}
	for range 2 { // cached unchecked, then dropped when asked for
		if _, err := cache.Chunk(ctx, baseID); !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("the damaged base as a chunk: %v, want ErrCorrupt", err)
		}
	}
	cache = reassembly.NewCache(c, 64<<20)
	if _, err := cache.Chunk(ctx, wholeID); !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), baseID.String()) {
		t.Fatalf("delta chunk using the damage: %v, want ErrCorrupt naming base %s", err, baseID)
	}

	// Undamaged, the base comes back right after serving as a base.
	d.Delete(ctx, baseID)
	c.Put(ctx, baseID, base)
	cache = reassembly.NewCache(c, 64<<20)
	if got, err := cache.Chunk(ctx, wholeID); err != nil || !bytes.Equal(got, whole) {
		t.Fatalf("delta chunk: %v", err)
	}
	if got, err := cache.Chunk(ctx, baseID); err != nil || !bytes.Equal(got, base) {
		t.Fatalf("its base as a chunk: %v", err)
	}
	if h, m := cache.Hits.Load(), cache.Misses.Load(); h != 1 || m != 2 {
		t.Errorf("hits %d, misses %d; want the base read once", h, m)
	}
}
