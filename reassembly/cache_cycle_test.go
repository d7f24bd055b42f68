package reassembly_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// Blobs that name each other as delta bases (a corrupt or tampered store)
// make the cache fail the read as corrupt; it must not wait for a load that
// is waiting for it.
func TestCacheDeltaCycleFails(t *testing.T) {
	ctx := context.Background()
	d := storetest.Dir(t)
	c, _ := store.NewChunks(d, store.ChunksOptions{})
	aID, bID := storetest.DeltaCycle(t, d, c)
	for _, maxBytes := range []int64{0, 64 << 20} {
		done := make(chan error, 1)
		go func() { _, err := reassembly.NewCache(c, maxBytes).Chunk(ctx, aID); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("cache of %d bytes: %v, want ErrCorrupt", maxBytes, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("cache of %d bytes: a cycle of delta bases hangs the read", maxBytes)
		}
	}
	// Two readers starting from either end of the cycle at once: each load
	// waits for the other's unless the wait-for chain is checked.
	for range 50 {
		cache := reassembly.NewCache(c, 64<<20)
		done := make(chan error, 2)
		for _, id := range []chunker.ID{aID, bID} {
			go func() { _, err := cache.Chunk(ctx, id); done <- err }()
		}
		for range 2 {
			select {
			case err := <-done:
				if !errors.Is(err, store.ErrCorrupt) {
					t.Fatalf("concurrent readers: %v, want ErrCorrupt", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("concurrent readers of a cycle of delta bases hang")
			}
		}
	}
}
