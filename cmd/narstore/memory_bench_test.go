package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
)

// BenchmarkIngestPeakRSS runs the real binary with default settings on one
// NAR of 256 MB and one of 1 GB (new, compressible data; zstd upstream, so
// decoding runs in the process) and reports the process's peak RSS. The
// two figures should be about the same: memory is bounded by the settings,
// not by the NAR's size.
func BenchmarkIngestPeakRSS(b *testing.B) {
	bin := buildBinary(b)
	for _, mb := range []int{256, 1024} {
		b.Run(fmt.Sprintf("nar-%dMB", mb), func(b *testing.B) {
			cache := nixtest.NewCache(b, "rss-1")
			ni := writeBigNAR(b, cache, int64(mb)<<20)
			b.SetBytes(int64(ni.NarSize))
			var peak int64
			for b.Loop() {
				b.StopTimer()
				data := b.TempDir()
				b.StartTimer()
				cmd := exec.Command(bin, "ingest", "--data", data, "--upstream", cache.URL(),
					"--trusted-public-key", cache.PublicKey.String(), ni.StorePath)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("ingest: %v\n%s", err, out)
				}
				ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
				peak = max(peak, ru.Maxrss) // KiB
				b.StopTimer()
				os.RemoveAll(data)
				b.StartTimer()
			}
			b.ReportMetric(float64(peak)/1024, "peak-RSS-MB")
		})
	}
}

// BenchmarkIngestDeltaPeakRSS: the real binary with default settings
// ingests version 1 of a package, then version 2 (every 256 KiB chunk new,
// all delta-encoded against version 1), and reports the second run's peak
// RSS. Delta search keeps per-NAR state (sampled features of the previous
// version, a base cache), so this shows how it grows with NAR size.
func BenchmarkIngestDeltaPeakRSS(b *testing.B) {
	bin := buildBinary(b)
	for _, mb := range []int{256, 1024} {
		b.Run(fmt.Sprintf("nar-%dMB", mb), func(b *testing.B) {
			cache := nixtest.NewCache(b, "rss-1")
			v1 := writeBigNARVersion(b, cache, int64(mb)<<20, false)
			v2 := writeBigNARVersion(b, cache, int64(mb)<<20, true)
			b.SetBytes(int64(v2.NarSize))
			ingest := func(data, path string) *syscall.Rusage {
				cmd := exec.Command(bin, "ingest", "--data", data, "--upstream", cache.URL(),
					"--trusted-public-key", cache.PublicKey.String(), path)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("ingest: %v\n%s", err, out)
				}
				return cmd.ProcessState.SysUsage().(*syscall.Rusage)
			}
			var peak int64
			for b.Loop() {
				b.StopTimer()
				data := b.TempDir()
				ingest(data, v1.StorePath)
				b.StartTimer()
				peak = max(peak, ingest(data, v2.StorePath).Maxrss)
				b.StopTimer()
				os.RemoveAll(data)
				b.StartTimer()
			}
			b.ReportMetric(float64(peak)/1024, "peak-RSS-MB")
		})
	}
}

// writeBigNAR streams a NAR holding one regular file of about size bytes
// into cache as .nar.zst with a signed narinfo, without holding it in memory.
func writeBigNAR(b *testing.B, cache *nixtest.Cache, size int64) *narinfo.NarInfo {
	return writeBigNARVersion(b, cache, size, false)
}

// writeBigNARVersion is writeBigNAR; edited changes 8 bytes in every 64 KiB
// of the same content, for a next version of the package that delta
// encoding can use the first one for.
func writeBigNARVersion(b *testing.B, cache *nixtest.Cache, size int64, edited bool) *narinfo.NarInfo {
	b.Helper()
	tmp := filepath.Join(cache.Dir, "nar", "tmp.nar.zst")
	f, err := os.Create(tmp)
	if err != nil {
		b.Fatal(err)
	}
	fileHash := sha256.New()
	zw, _ := zstd.NewWriter(io.MultiWriter(f, fileHash), zstd.WithEncoderLevel(zstd.SpeedFastest))
	narHash := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(zw, narHash), 1<<20)
	var narSize int64
	put := func(p []byte) { w.Write(p); narSize += int64(len(p)) }
	u64 := func(n uint64) { var x [8]byte; binary.LittleEndian.PutUint64(x[:], n); put(x[:]) }
	str := func(s string) {
		u64(uint64(len(s)))
		put([]byte(s))
		put(make([]byte, (8-len(s)%8)%8))
	}
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		str(s)
	}
	u64(uint64(size))
	// Four bits of entropy per byte: compressible, and every chunk is new.
	rng := rand.NewChaCha8([32]byte{byte(size >> 20)})
	block := make([]byte, 64<<10)
	for left := size; left > 0; left -= int64(len(block)) {
		rng.Read(block)
		for i, c := range block {
			block[i] = 'a' + c&15
		}
		if edited {
			copy(block[1000:], "narstore")
		}
		put(block[:min(int64(len(block)), left)])
	}
	put(make([]byte, (8-size%8)%8))
	str(")")
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		b.Fatal(err)
	}
	st, _ := f.Stat()
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	fh := [32]byte(fileHash.Sum(nil))
	url := "nar/" + nixbase32.EncodeToString(fh[:]) + ".nar.zst"
	if err := os.Rename(tmp, filepath.Join(cache.Dir, url)); err != nil {
		b.Fatal(err)
	}
	ni := &narinfo.NarInfo{
		StorePath: narinfo.StoreDir + "/" + nixtest.RandomHashPart() + "-big", URL: url, Compression: "zstd",
		FileHash: narinfo.FormatHash(fh), FileSize: uint64(st.Size()),
		NarHash: [32]byte(narHash.Sum(nil)), NarSize: uint64(narSize),
	}
	if err := ni.Sign(cache.SecretKey); err != nil {
		b.Fatal(err)
	}
	cache.WriteNarInfo(b, ni)
	return ni
}
