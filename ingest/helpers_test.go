package ingest_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/nixtest"
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

// releases returns n NARs of a real source tree, each with a few bytes
// changed every 4 KiB (at different places in each): successive releases of
// one package.
func releases(t testing.TB, n int) [][]byte {
	base := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/encoding"))
	var out [][]byte
	for v := range n {
		nar := append([]byte(nil), base...)
		for i := 1000 + v*97; i+8 < len(nar); i += 4 << 10 {
			copy(nar[i:], fmt.Sprintf("release%d", v))
		}
		out = append(out, nar)
	}
	return out
}
