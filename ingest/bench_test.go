package ingest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

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
	narHashOf(nar) // outside any timer
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
	return &narinfo.NarInfo{StorePath: "/nix/store/" + nixtest.RandomHashPart() + "-bench", URL: "nar/x", NarHash: narHashOf(nar), NarSize: uint64(len(nar))}
}

// narHashes memoizes the SHA-256 of the benchmarks' NARs (which are never
// modified once built): hashing a 122 MB NAR takes ~100 ms, and narinfoFor is
// called inside timed loops, where it used to count against the ingest.
var narHashes sync.Map // narKey -> [32]byte

type narKey struct {
	p *byte
	n int
}

func narHashOf(nar []byte) [32]byte {
	if len(nar) == 0 {
		return sha256.Sum256(nil)
	}
	k := narKey{&nar[0], len(nar)}
	if h, ok := narHashes.Load(k); ok {
		return h.([32]byte)
	}
	h := sha256.Sum256(nar)
	narHashes.Store(k, h)
	return h
}

// BenchmarkIngest measures whole-NAR ingest; MB/s is of NAR bytes. Run with
// -cpu 1 for per-core figures.
//
//   - "new": none of the NAR's chunks is stored yet, in a store whose 65 536
//     fan-out directories exist, as they do in any store past a few hundred
//     thousand chunks. The store's chunk files and the index are emptied
//     between iterations (untimed).
//   - "new-empty-store": the same into a brand-new store, so most chunks also
//     create their fan-out directory: what only the first ingests pay.
//   - "stored": every chunk of the NAR is stored already.
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
			dir := b.TempDir()
			makeFanout(b, filepath.Join(dir, "chunks", "chunks"))
			b.SetBytes(int64(len(nar)))
			var cpu cpuMeter
			for b.Loop() {
				b.StopTimer()
				emptyStore(b, dir)
				ing, ix := benchIngester(b, dir)
				cpu.start()
				b.StartTimer()
				ingestOnce(b, ing, nar, in.body, in.comp, in.xz)
				b.StopTimer()
				cpu.stop()
				ix.Close()
				b.StartTimer()
			}
			cpu.report(b, len(nar))
		})
		if in.name == "none" {
			b.Run("new-empty-store/"+in.name, func(b *testing.B) {
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
		}
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

// cpuMeter adds up the CPU time (user + system, all threads) this process
// and its children (an xz decoder) spend in the timed part of a benchmark.
// Reported as NAR MB per CPU-second, it is the per-core rate without the
// time spent waiting for the disk, and it counts the work that runs outside
// the Go scheduler's P (system calls, the decoder process).
type cpuMeter struct {
	self, sys, children time.Duration
	t0s, t0sys, t0c     time.Duration
}

// rusage returns the CPU time (user + system) and the system part.
func rusage(who int) (total, sys time.Duration) {
	var ru unix.Rusage
	unix.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), time.Duration(ru.Stime.Nano())
}

func (c *cpuMeter) start() {
	c.t0s, c.t0sys = rusage(unix.RUSAGE_SELF)
	c.t0c, _ = rusage(unix.RUSAGE_CHILDREN)
}

func (c *cpuMeter) stop() {
	s, sys := rusage(unix.RUSAGE_SELF)
	ch, _ := rusage(unix.RUSAGE_CHILDREN)
	c.self += s - c.t0s
	c.sys += sys - c.t0sys
	c.children += ch - c.t0c
}

func (c *cpuMeter) report(b *testing.B, size int) {
	mb := float64(size) * float64(b.N) / 1e6
	b.ReportMetric(mb/c.self.Seconds(), "MB/cpu-s")
	b.ReportMetric(100*c.sys.Seconds()/c.self.Seconds(), "%sys")
	if c.children > 0 {
		b.ReportMetric(mb/c.children.Seconds(), "MB/decoder-cpu-s")
	}
}

// makeFanout creates a directory store's two levels of fan-out directories
// below root (ROOT/chunks) and flushes them, as an established store has them.
func makeFanout(b *testing.B, root string) {
	for i := range 256 * 256 {
		if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf("%02x/%02x", i>>8, i&0xff)), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	unix.Sync()
}

// emptyStore removes the index and every chunk file below dir but keeps the
// fan-out directories, and flushes the removals so the next timed ingest does
// not pay for them.
func emptyStore(b *testing.B, dir string) {
	for _, f := range []string{"index.db", "index.db-wal", "index.db-shm"} {
		os.Remove(filepath.Join(dir, f))
	}
	err := filepath.WalkDir(filepath.Join(dir, "chunks"), func(path string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			err = os.Remove(path)
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	unix.Sync()
}

func ingestOnce(b *testing.B, ing *ingest.Ingester, nar, body []byte, comp string, impl ingest.XZDecoder) {
	ni := narinfoFor(nar)
	ing2 := ing
	if impl != "" {
		ing2 = ingest.WithXZ(ing, impl)
	}
	var res *ingest.Result
	var err error
	// Labelled, so a CPU profile can be cut to the timed ingest (pprof
	// -tagfocus phase=ingest); goroutines the ingest starts inherit it.
	pprof.Do(b.Context(), pprof.Labels("phase", "ingest"), func(ctx context.Context) {
		res, err = ing2.IngestNAR(ctx, ni, io.NopCloser(bytes.NewReader(body)), comp)
	})
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
