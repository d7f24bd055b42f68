package reassembly_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

type benchEnv struct {
	ix     *index.SQLite
	chunks *store.Chunks
	ni     *narinfo.NarInfo
	nar    *index.NAR
	size   int64
}

// benchStore ingests the ~120 MB benchmark NAR once, with the default preset.
var benchStore = sync.OnceValue(func() *benchEnv {
	dir, _ := os.MkdirTemp("", "reassembly-bench")
	ix, err := index.OpenSQLite(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		panic(err)
	}
	d, _ := store.OpenDir(filepath.Join(dir, "chunks"))
	c, _ := store.NewChunks(d, store.ChunksOptions{})
	in, _ := ingest.New(nil, ix, c, ingest.Options{})
	data := nixtest.BenchNAR()
	ni := &narinfo.NarInfo{StorePath: "/nix/store/" + nixtest.RandomHashPart() + "-bench", URL: "x", NarHash: sha256.Sum256(data), NarSize: uint64(len(data))}
	if _, err := in.IngestNAR(context.Background(), ni, io.NopCloser(bytes.NewReader(data)), "none"); err != nil {
		panic(err)
	}
	nar, _ := ix.NAR(context.Background(), ni.NarHash)
	return &benchEnv{ix: ix, chunks: c, ni: ni, nar: nar, size: int64(len(data))}
})

// BenchmarkReader reassembles the whole NAR (with the NarHash check).
// cold: empty chunk cache (chunks read and zstd-decoded from the local
// directory; the OS page cache is warm); warm: every chunk in the cache.
func BenchmarkReader(b *testing.B) {
	e := benchStore()
	warm := reassembly.NewCache(e.chunks, 1<<30)
	for name, mk := range map[string]func() reassembly.ChunkSource{
		"cold": func() reassembly.ChunkSource { return reassembly.NewCache(e.chunks, 0) },
		"warm": func() reassembly.ChunkSource { return warm },
	} {
		b.Run(name, func(b *testing.B) {
			readAll(b, mk(), e) // fills the warm cache
			b.SetBytes(e.size)
			b.ResetTimer()
			for b.Loop() {
				readAll(b, mk(), e)
			}
		})
	}
}

func readAll(b *testing.B, src reassembly.ChunkSource, e *benchEnv) {
	r, err := reassembly.NewReader(context.Background(), src, e.nar, 0, -1, reassembly.ReaderOptions{})
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, r)
	r.Close()
	if err != nil || n != e.size {
		b.Fatalf("%d bytes, %v", n, err)
	}
}

func benchServer(b *testing.B, cacheBytes int64) (*httptest.Server, *benchEnv) {
	e := benchStore()
	srv := reassembly.NewServer(e.ix, reassembly.NewCache(e.chunks, cacheBytes), nil, reassembly.Options{TransportZstd: true})
	hs := httptest.NewServer(srv.Handler())
	b.Cleanup(hs.Close)
	return hs, e
}

// BenchmarkServeNAR is a whole NAR GET over loopback HTTP.
func BenchmarkServeNAR(b *testing.B) {
	for _, tc := range []struct {
		name  string
		cache int64
		ae    string
	}{
		{"cold", 0, ""},
		{"warm", 1 << 30, ""},
		{"zstd-transport-warm", 1 << 30, "zstd"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			hs, e := benchServer(b, tc.cache)
			url := hs.URL + "/nar/" + e.ni.NarHash32() + ".nar"
			get := func() {
				req, _ := http.NewRequest("GET", url, nil)
				if tc.ae != "" {
					req.Header.Set("Accept-Encoding", tc.ae)
				}
				resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
				if err != nil || resp.StatusCode != 200 {
					b.Fatal(err, resp)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			get()
			b.SetBytes(e.size)
			b.ResetTimer()
			for b.Loop() {
				get()
			}
		})
	}
}

// BenchmarkTTFB is the time from sending a NAR GET to reading its first
// body byte, reported as ms/first-byte. Every iteration gets a fresh server,
// so nothing of the NAR is cached or known present (the OS page cache is
// warm).
func BenchmarkTTFB(b *testing.B) {
	e := benchStore()
	b.Run("nar", func(b *testing.B) { ttfb(b, e, "/nar/"+e.ni.NarHash32()+".nar", goClientTTFB) })
	// The HTTP floor: a response that needs no index or chunk.
	b.Run("nix-cache-info", func(b *testing.B) { ttfb(b, e, "/nix-cache-info", goClientTTFB) })
	// A client in its own process, as Nix is: curl's time_starttransfer. An
	// in-process client shares the Go scheduler with the server's read-ahead
	// goroutines, which start right after the first bytes, and reads late.
	b.Run("nar-curl", func(b *testing.B) {
		if _, err := exec.LookPath("curl"); err != nil {
			b.Skip("curl not installed")
		}
		ttfb(b, e, "/nar/"+e.ni.NarHash32()+".nar", curlTTFB)
	})
}

// ttfb reports the mean of measure (time to first body byte of url) over
// requests to a fresh server each, so that nothing is cached.
func ttfb(b *testing.B, e *benchEnv, path string, measure func(b *testing.B, url string) time.Duration) {
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		srv := reassembly.NewServer(e.ix, reassembly.NewCache(e.chunks, 256<<20), nil, reassembly.Options{TransportZstd: true})
		hs := httptest.NewServer(srv.Handler())
		total += measure(b, hs.URL+path)
		hs.CloseClientConnections()
		hs.Close()
		time.Sleep(20 * time.Millisecond) // let the abandoned response wind down
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/first-byte")
}

func goClientTTFB(b *testing.B, url string) time.Duration {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	start := time.Now()
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	resp.Body.Close() // abandons the rest; the server stops on the broken write
	return d
}

func curlTTFB(b *testing.B, url string) time.Duration {
	cmd := exec.Command("sh", "-c", `curl -s -o - -w '%{stderr}%{time_starttransfer}' "$1" | head -c 1 >/dev/null`, "sh", url)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Run()
	sec, err := strconv.ParseFloat(strings.TrimSpace(stderr.String()), 64)
	if err != nil {
		b.Fatalf("curl: %q", stderr.String())
	}
	return time.Duration(sec * float64(time.Second))
}
