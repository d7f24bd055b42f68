package ingest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index/indextest"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// words returns n bytes of compressible text (random words), seeded.
func words(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	vocab := []string{"store", "nix", "chunk", "delta", "base", "hash", "path", "narinfo", "zstd", "reference", "closure", "derivation"}
	var b []byte
	for len(b) < n {
		b = append(b, vocab[r.IntN(len(vocab))]...)
		b = append(b, " \n"[r.IntN(2)])
	}
	return b[:n]
}

// With an accurate plain estimate, pickDelta makes the same choice as when
// it encodes the chunk plain to compare (the estimate only spares that
// encoding where the delta clearly wins), across deltas from clear wins to
// clear losses; a delta that loses to plain is never kept.
func TestPickDeltaEstimate(t *testing.T) {
	_, c := storetest.Chunks(t, store.ChunksOptions{Level: 3})
	in := &Ingester{chunks: c, opts: Options{DeltaMargin: 0.2}}
	const size = 256 << 10
	// Half words, half random bytes: plain zstd stores about 60% of it.
	base := words(size, 1)
	noise := storetest.RandomBytes(size, 2)
	for i := 0; i < size; i += 4096 {
		copy(base[i:i+2048], noise[i:])
	}
	baseID := chunker.Sum(base)
	tookDelta := map[bool]bool{}
	for newShare := 5; newShare <= 95; newShare += 10 {
		t.Run(fmt.Sprint("new=", newShare, "%"), func(t *testing.T) {
			// The chunk: the base with newShare% of it replaced by other text.
			data := append([]byte(nil), base...)
			fresh := storetest.RandomBytes(size, uint64(100+newShare))
			for i := 0; i < size; i += 4096 {
				copy(data[i:i+4096*newShare/100], fresh[i:])
			}
			_, plain := c.Encode(data)
			ratio := float64(plain.StoredSize) / float64(len(data))
			bases := []store.Base{{ID: baseID, Data: base}}
			_, tried, _, err := in.pickDelta(data, bases, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, est, _, err := in.pickDelta(data, bases, 1, ratio)
			if err != nil {
				t.Fatal(err)
			}
			if tried.Encoding != est.Encoding {
				t.Errorf("with the estimate %s, trying plain %s", est.Encoding, tried.Encoding)
			}
			if est.Encoding.IsDelta() && float64(est.StoredSize) > 0.8*float64(plain.StoredSize) {
				t.Errorf("kept a %d-byte delta against %d bytes plain", est.StoredSize, plain.StoredSize)
			}
			t.Logf("plain %.2f, delta %s %d bytes", ratio, est.Encoding, est.StoredSize)
			tookDelta[est.Encoding.IsDelta()] = true
		})
	}
	if !tookDelta[true] || !tookDelta[false] {
		t.Errorf("the sweep should cover both choices: %v", tookDelta)
	}
}

// rootRatios follows each chunk's best base (the last) down to its chain's
// plain chunk and gives that chunk's stored/size ratio; unknown chunks get 0.
func TestRootRatios(t *testing.T) {
	ctx := t.Context()
	ix := indextest.SQLite(t)
	ni, nar, chunks := indextest.Fixture("chain", 5, 1000)
	chunks[0].StoredSize = 250 // a plain root at 0.25
	chunks[1].Encoding, chunks[1].Bases, chunks[1].Depth = uint8(store.EncZstdDelta), []chunker.ID{chunks[0].ID}, 1
	chunks[2].Encoding, chunks[2].Bases, chunks[2].Depth = uint8(store.EncZstdMultiDelta), []chunker.ID{chunks[4].ID, chunks[1].ID}, 2
	chunks[3].StoredSize = 500 // plain at 0.5
	if err := ix.Commit(ctx, ni, nar, chunks); err != nil {
		t.Fatal(err)
	}
	in := &Ingester{ix: ix}
	ids := []chunker.ID{chunks[2].ID, chunks[1].ID, chunks[0].ID, chunks[3].ID, chunker.Sum([]byte("not stored"))}
	recs, err := ix.Chunks(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := in.rootRatios(ctx, recs), []float64{0.25, 0.25, 0.25, 0.5, 0}; !slices.Equal(got, want) {
		t.Errorf("rootRatios = %v, want %v", got, want)
	}
}
