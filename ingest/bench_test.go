package ingest_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/store"
)

// benchNAR returns the shared real benchmark NAR and its xz -6 compression.
var benchNAR = sync.OnceValues(func() ([]byte, []byte) {
	nar := nixtest.BenchNAR()
	cmd := exec.Command("xz", "-6", "-T1", "-c")
	cmd.Stdin = bytes.NewReader(nar)
	compressed, err := cmd.Output()
	if err != nil {
		var b bytes.Buffer
		w, _ := xz.NewWriter(&b)
		w.Write(nar)
		w.Close()
		compressed = b.Bytes()
	}
	return nar, compressed
})

func benchXZ() []byte { _, x := benchNAR(); return x }

func benchIngester(b *testing.B, dir string) (*ingest.Ingester, *index.SQLite) {
	ix, err := index.OpenSQLite(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	d, _ := store.OpenDir(filepath.Join(dir, "chunks"))
	d.NoSync = os.Getenv("NARSTORE_BENCH_NOSYNC") == "1"
	level, _ := strconv.Atoi(os.Getenv("NARSTORE_BENCH_LEVEL"))
	c, _ := store.NewChunks(d, store.ChunksOptions{Level: level})
	presetName := chunker.DefaultPreset
	if v := os.Getenv("NARSTORE_BENCH_PRESET"); v != "" {
		presetName = v
	}
	p, err := chunker.LookupPreset(presetName)
	if err != nil {
		b.Fatal(err)
	}
	in, err := ingest.New(nil, ix, c, ingest.Options{Preset: p})
	if err != nil {
		b.Fatal(err)
	}
	return in, ix
}

func narinfoFor(nar []byte) *narinfo.NarInfo {
	return &narinfo.NarInfo{StorePath: "/nix/store/" + nixtest.RandomHashPart() + "-bench", URL: "nar/x", NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar))}
}

// BenchmarkIngest measures whole-NAR ingest; MB/s is of NAR bytes. "new" starts
// from an empty store each time, "stored" re-ingests a NAR whose chunks are all
// stored. Run with -cpu 1 for per-core figures.
func BenchmarkIngest(b *testing.B) {
	nar, narXZ := benchNAR()
	inputs := []struct {
		name, comp string
		body       []byte
		xz         ingest.XZDecoder
	}{
		{"none", "none", nar, ""},
		{"xz-exec", "xz", narXZ, ingest.XZExec},
		{"xz-go", "xz", narXZ, ingest.XZGo},
	}
	for _, in := range inputs {
		b.Run("new/"+in.name, func(b *testing.B) {
			b.SetBytes(int64(len(nar)))
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				ing, ix := benchIngester(b, dir)
				b.StartTimer()
				ingestOnce(b, ing, nar, in.body, in.comp, in.xz)
				b.StopTimer()
				ix.Close()
				os.RemoveAll(dir)
				b.StartTimer()
			}
		})
		b.Run("stored/"+in.name, func(b *testing.B) {
			ing, ix := benchIngester(b, b.TempDir())
			defer ix.Close()
			ingestOnce(b, ing, nar, nar, "none", "")
			b.SetBytes(int64(len(nar)))
			b.ResetTimer()
			for b.Loop() {
				ingestOnce(b, ing, nar, in.body, in.comp, in.xz)
			}
		})
	}
}

func ingestOnce(b *testing.B, ing *ingest.Ingester, nar, body []byte, comp string, impl ingest.XZDecoder) {
	ni := narinfoFor(nar)
	ing2 := ing
	if impl != "" {
		ing2 = ingest.WithXZ(ing, impl)
	}
	res, err := ing2.IngestNAR(b.Context(), ni, io.NopCloser(bytes.NewReader(body)), comp)
	if err != nil {
		b.Fatal(err)
	}
	if res.NewChunks > 0 {
		b.ReportMetric(float64(res.StoredBytes)/float64(len(nar)), "stored/nar")
		b.ReportMetric(float64(res.StoredBytes)/float64(len(benchXZ())), "stored/xz")
	}
}

// BenchmarkDecodeXZ is the baseline: the xz decoder alone on the same input.
func BenchmarkDecodeXZ(b *testing.B) {
	nar, narXZ := benchNAR()
	b.Run("exec", func(b *testing.B) {
		b.SetBytes(int64(len(nar)))
		for b.Loop() {
			cmd := exec.Command("xz", "-dc")
			cmd.Stdin = bytes.NewReader(narXZ)
			cmd.Stdout = io.Discard
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go", func(b *testing.B) {
		b.SetBytes(int64(len(nar)))
		for b.Loop() {
			r, _ := xz.NewReader(bytes.NewReader(narXZ))
			io.Copy(io.Discard, r)
		}
	})
	b.Run("zstd-stream", func(b *testing.B) {
		var zb bytes.Buffer
		w, _ := zstd.NewWriter(&zb)
		w.Write(nar)
		w.Close()
		b.SetBytes(int64(len(nar)))
		b.ResetTimer()
		for b.Loop() {
			r, _ := zstd.NewReader(bytes.NewReader(zb.Bytes()), zstd.WithDecoderConcurrency(1))
			io.Copy(io.Discard, r)
			r.Close()
		}
	})
}

// BenchmarkNarHash is SHA-256 over the NAR, which every ingest pays.
func BenchmarkNarHash(b *testing.B) {
	nar, _ := benchNAR()
	b.SetBytes(int64(len(nar)))
	for b.Loop() {
		sha256.Sum256(nar)
	}
}
