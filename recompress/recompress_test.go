package recompress_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/index/indextest"
	"github.com/narstore/narstore/internal/narinfo"
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
