package ingest_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

// editedNAR is the benchmark NAR with 8 bytes changed every 64 KiB, so every
// chunk differs from v1 and goes through delta encoding.
func editedNAR() []byte {
	v2 := append([]byte(nil), nixtest.BenchNAR()...)
	for i := 1000; i+8 < len(v2); i += 64 << 10 {
		copy(v2[i:], "narstore")
	}
	return v2
}

type deltaEnv struct {
	dir    string
	ix     *index.SQLite
	chunks *store.Chunks
	in     *ingest.Ingester
}

func newDeltaEnv(b *testing.B) *deltaEnv {
	dir, _ := os.MkdirTemp("", "delta-bench")
	ix, err := index.OpenSQLite(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	d, _ := store.OpenDir(filepath.Join(dir, "chunks"))
	d.NoSync = os.Getenv("NARSTORE_BENCH_NOSYNC") == "1"
	c, _ := store.NewChunks(d, store.ChunksOptions{})
	p, _ := chunker.LookupPreset(chunker.DefaultPreset)
	bases, _ := strconv.Atoi(os.Getenv("NARSTORE_BENCH_DELTA_BASES"))
	in, _ := ingest.New(nil, ix, c, ingest.Options{Preset: p, Delta: true, SimilarSearch: true, Normalize: true, DeltaBases: bases})
	return &deltaEnv{dir: dir, ix: ix, chunks: c, in: in}
}

func (e *deltaEnv) close() { e.ix.Close(); os.RemoveAll(e.dir) }

func (e *deltaEnv) ingest(b *testing.B, nar []byte, name string) *narinfo.NarInfo {
	ni := narinfoFor(nar)
	ni.StorePath = "/nix/store/" + nixtest.RandomHashPart() + "-" + name
	if _, err := e.in.IngestNAR(b.Context(), ni, io.NopCloser(bytes.NewReader(nar)), "none"); err != nil {
		b.Fatal(err)
	}
	return ni
}

// BenchmarkIngestDelta ingests v2 of a package whose v1 is stored, with delta
// search on; MB/s is of NAR input. Run with -cpu 1 for per-core figures.
func BenchmarkIngestDelta(b *testing.B) {
	v1, v2 := nixtest.BenchNAR(), editedNAR()
	narHashOf(v2) // outside the timer
	var stored, plain uint64
	for b.Loop() {
		b.StopTimer()
		e := newDeltaEnv(b)
		e.ingest(b, v1, "tool-1.0")
		before := e.in.Progress.NewStoredBytes.Load()
		b.StartTimer()
		e.ingest(b, v2, "tool-2.0")
		b.StopTimer()
		stored = uint64(e.in.Progress.NewStoredBytes.Load() - before)
		plain = uint64(before)
		e.close()
		b.StartTimer()
	}
	b.SetBytes(int64(len(v2)))
	b.ReportMetric(float64(stored)/float64(plain), "v2-stored/v1-stored")
}

// BenchmarkReaderDeltaCold reads a NAR stored almost entirely as deltas, with
// an empty chunk cache (bases are loaded through it).
func BenchmarkReaderDeltaCold(b *testing.B) {
	e := newDeltaEnv(b)
	defer e.close()
	e.ingest(b, nixtest.BenchNAR(), "tool-1.0")
	ni := e.ingest(b, editedNAR(), "tool-2.0")
	nar, _ := e.ix.NAR(b.Context(), ni.NarHash)
	b.SetBytes(int64(nar.Size))
	b.ResetTimer()
	for b.Loop() {
		r, err := reassembly.NewReader(b.Context(), reassembly.NewCache(e.chunks, 64<<20), nar, 0, -1, reassembly.ReaderOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
	dcs := deltaChunks(b, e.ix, nar)
	multi := 0
	for _, c := range dcs {
		if len(c.Bases) > 1 {
			multi++
		}
	}
	b.ReportMetric(float64(len(dcs))/float64(len(nar.Chunks)), "delta-fraction")
	b.ReportMetric(float64(multi)/float64(len(nar.Chunks)), "multi-base-fraction")
}
