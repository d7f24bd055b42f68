package reassembly_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// Blobs that name each other as delta bases (a corrupt or tampered store)
// make the cache fail the read as corrupt; it must not wait for a load that
// is waiting for it.
func TestCacheDeltaCycleFails(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	aID, bID := storetest.DeltaCycle(t, d, c)
	for _, maxBytes := range []int64{0, 64 << 20} {
		storetest.FailsCorrupt(t, fmt.Sprintf("cache of %d bytes, a cycle of delta bases", maxBytes),
			func() error { _, err := reassembly.NewCache(c, maxBytes).Chunk(ctx, aID); return err })
	}
	// Two readers starting from either end of the cycle at once: each load
	// waits for the other's unless the wait-for chain is checked.
	for range 50 {
		cache := reassembly.NewCache(c, 64<<20)
		storetest.FailsCorrupt(t, "concurrent readers of a cycle of delta bases",
			func() error { _, err := cache.Chunk(ctx, aID); return err },
			func() error { _, err := cache.Chunk(ctx, bID); return err })
	}
}
