package ingest_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/store"
)

func runtimeGosched() { runtime.Gosched(); time.Sleep(time.Millisecond) }

func TestMain(m *testing.M) { testservers.Main(m) }

// deltaChunks returns the records of a NAR's delta-encoded chunks.
func deltaChunks(t testing.TB, ix ingest.Index, nar *index.NAR) []index.Chunk {
	t.Helper()
	ids := make([]chunker.ID, len(nar.Chunks))
	for i, c := range nar.Chunks {
		ids[i] = c.ID
	}
	recs, err := ix.Chunks(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	var out []index.Chunk
	for _, c := range recs {
		if store.Encoding(c.Encoding).IsDelta() {
			out = append(out, c)
		}
	}
	return out
}
