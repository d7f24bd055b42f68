package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

type env struct {
	ix     *index.SQLite
	dir    *store.Dir
	chunks *store.Chunks
	cache  *nixtest.Cache
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	ix, err := index.OpenSQLite(filepath.Join(root, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	d, err := store.OpenDir(filepath.Join(root, "chunks"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.NewChunks(d, store.ChunksOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &env{ix: ix, dir: d, chunks: c, cache: nixtest.NewCache(t, "upstream-1")}
}

func (e *env) ingester(t *testing.T, upstreamURL string, mod func(*ingest.Options)) *ingest.Ingester {
	t.Helper()
	up, err := ingest.NewUpstream(upstreamURL, ingest.UpstreamOptions{Delay: 1})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	o := ingest.Options{Preset: p, Keys: narinfo.PublicKeys{e.cache.PublicKey}}
	if mod != nil {
		mod(&o)
	}
	in, err := ingest.New(up, e.ix, e.chunks, o)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// readBack reassembles a stored path's NAR.
func (e *env) readBack(t *testing.T, ni *narinfo.NarInfo) []byte {
	t.Helper()
	nar, err := e.ix.NAR(t.Context(), ni.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	r, err := reassembly.NewReader(t.Context(), e.chunks, nar, 0, -1, reassembly.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertAbsent checks that nothing about a path reached the index.
func (e *env) assertAbsent(t *testing.T, ni *narinfo.NarInfo) {
	t.Helper()
	if _, err := e.ix.NarInfo(t.Context(), ni.HashPart()); !errors.Is(err, index.ErrNotFound) {
		t.Errorf("narinfo for %s recorded after a failed ingest (%v)", ni.StorePath, err)
	}
	if ok, _ := e.ix.HasNAR(t.Context(), ni.NarHash); ok {
		t.Errorf("NAR for %s recorded after a failed ingest", ni.StorePath)
	}
}

var realDirs = []string{"src/encoding/json", "src/net/url", "src/compress/flate", "src/archive/tar/testdata"}

func TestIngestRealNARsEveryCompression(t *testing.T) {
	e := newEnv(t)
	var nis []*narinfo.NarInfo
	var nars [][]byte
	for i, comp := range []string{"xz", "zstd", "bzip2", "none"} {
		nar := nixtest.DumpPath(t, nixtest.GoRoot(t, realDirs[i]))
		nis = append(nis, e.cache.Add(t, nixtest.Path{Name: filepath.Base(realDirs[i]), NAR: nar, Compression: comp}))
		nars = append(nars, nar)
	}
	in := e.ingester(t, e.cache.URL(), nil)
	for i, ni := range nis {
		res, err := in.IngestPath(t.Context(), ni.StorePath)
		if err != nil {
			t.Fatalf("%s: %v", ni.Compression, err)
		}
		if res.Skipped || res.NarSize != ni.NarSize || res.UpstreamSize != ni.FileSize || res.NewChunks == 0 {
			t.Errorf("%s: result %+v", ni.Compression, res)
		}
		if got := e.readBack(t, ni); !bytes.Equal(got, nars[i]) {
			t.Errorf("%s: reassembled NAR differs from the original", ni.Compression)
		}
		stored, err := e.ix.NarInfo(t.Context(), ni.HashPart())
		if err != nil || stored.Fingerprint() != ni.Fingerprint() || len(stored.Sigs) != 1 || stored.Sigs[0] != ni.Sigs[0] {
			t.Errorf("%s: stored narinfo %+v, %v", ni.Compression, stored, err)
		}
	}
	// A second run skips everything.
	res, err := in.IngestPath(t.Context(), nis[0].StorePath)
	if err != nil || !res.Skipped {
		t.Fatalf("second ingest: %+v, %v", res, err)
	}
}

func TestXZDecoders(t *testing.T) {
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	for _, impl := range []ingest.XZDecoder{ingest.XZGo, ingest.XZExec} {
		t.Run(string(impl), func(t *testing.T) {
			if impl == ingest.XZExec {
				if _, err := os.Stat("/usr/bin/xz"); err != nil {
					t.Skip("xz program not installed")
				}
			}
			e := newEnv(t)
			ni := e.cache.Add(t, nixtest.Path{Name: "http", NAR: nar, Compression: "xz"})
			in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) { o.XZ = impl })
			if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(e.readBack(t, ni), nar) {
				t.Fatal("reassembled NAR differs")
			}
			// A flipped byte in the middle of the xz stream is a decompression error.
			e2 := newEnv(t)
			bad := e2.cache.Add(t, nixtest.Path{Name: "http", NAR: nar, Compression: "xz"})
			flipByte(t, e2.cache.NARFile(bad), 0.5)
			_, err := e2.ingester(t, e2.cache.URL(), func(o *ingest.Options) { o.XZ = impl }).IngestPath(t.Context(), bad.StorePath)
			if !errors.Is(err, ingest.ErrDecompress) && !errors.Is(err, ingest.ErrHashMismatch) {
				t.Fatalf("corrupt xz: %v", err)
			}
			e2.assertAbsent(t, bad)
		})
	}
}

func flipByte(t *testing.T, path string, at float64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[int(float64(len(b))*at)] ^= 0x55
	os.WriteFile(path, b, 0o644)
}

func truncateFile(t *testing.T, path string) {
	t.Helper()
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)*2/3], 0o644)
}

func TestDedupAcrossVersions(t *testing.T) {
	e := newEnv(t)
	// Two "versions": the second is the first plus one more real directory,
	// so most bytes repeat.
	v1 := t.TempDir()
	nixtest.CopyTree(t, nixtest.GoRoot(t, "src/net/http"), filepath.Join(v1, "http"))
	v2 := t.TempDir()
	nixtest.CopyTree(t, nixtest.GoRoot(t, "src/net/http"), filepath.Join(v2, "http"))
	nixtest.CopyTree(t, nixtest.GoRoot(t, "src/net/url"), filepath.Join(v2, "url"))
	n1, n2 := nixtest.DumpPath(t, v1), nixtest.DumpPath(t, v2)
	ni1 := e.cache.Add(t, nixtest.Path{Name: "pkg-1", NAR: n1})
	ni2 := e.cache.Add(t, nixtest.Path{Name: "pkg-2", NAR: n2})
	in := e.ingester(t, e.cache.URL(), nil)
	r1, err := in.IngestPath(t.Context(), ni1.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := in.IngestPath(t.Context(), ni2.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	if r2.NewChunks*2 > r2.Chunks {
		t.Errorf("second version stored %d of %d chunks new; want most reused", r2.NewChunks, r2.Chunks)
	}
	st, _ := e.ix.Stats(t.Context())
	if r2.StoredBytes*2 > r1.StoredBytes || st.ChunkBytes >= uint64(len(n1)+len(n2))*3/4 {
		t.Errorf("no dedup: first stored %d, second %d more; %+v", r1.StoredBytes, r2.StoredBytes, st)
	}
	if !bytes.Equal(e.readBack(t, ni2), n2) {
		t.Fatal("second version does not reassemble")
	}
}

func TestClosure(t *testing.T) {
	e := newEnv(t)
	c := e.cache.Add(t, nixtest.Path{Name: "c", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort"))})
	b := e.cache.Add(t, nixtest.Path{Name: "b", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/bufio")), References: []string{base(c)}})
	a := e.cache.Add(t, nixtest.Path{Name: "a", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/bytes")), References: []string{base(b), base(c)}})
	aHash := a.HashPart()
	// Self-reference too, as real paths have.
	a.References = append(a.References, base(a))
	a.Sigs = nil
	a.Sign(e.cache.SecretKey)
	e.cache.WriteNarInfo(t, a)

	in := e.ingester(t, e.cache.URL(), nil)
	rep, err := in.Batch(t.Context(), []string{aHash}, true)
	if err != nil || len(rep.Failures) != 0 {
		t.Fatalf("batch: %v %+v", err, rep.Failures)
	}
	if len(rep.Results) != 3 {
		t.Fatalf("closure ingested %d paths, want 3", len(rep.Results))
	}
	for _, ni := range []*narinfo.NarInfo{a, b, c} {
		if _, err := e.ix.NarInfo(t.Context(), ni.HashPart()); err != nil {
			t.Errorf("%s: %v", ni.StorePath, err)
		}
	}
	if got := in.Progress.NARsTotal.Load(); got != 3 {
		t.Errorf("progress total %d, want 3", got)
	}
}

func base(ni *narinfo.NarInfo) string { return strings.TrimPrefix(ni.StorePath, "/nix/store/") }

func TestBadInput(t *testing.T) {
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/encoding/json"))
	type tc struct {
		name    string
		setup   func(t *testing.T, e *env) (*narinfo.NarInfo, string) // returns the path and the upstream URL
		opts    func(*ingest.Options)
		wantIs  error
		wantMsg string
	}
	cases := []tc{
		{name: "MissingNarinfo", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			return &narinfo.NarInfo{StorePath: "/nix/store/" + nixtest.RandomHashPart() + "-gone"}, e.cache.URL()
		}, wantIs: ingest.ErrNotFound, wantMsg: "has no narinfo"},
		{name: "MalformedNarinfo", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar})
			os.WriteFile(filepath.Join(e.cache.Dir, ni.HashPart()+".narinfo"), []byte("StorePath: "+ni.StorePath+"\nNarSize: twelve\n"), 0o644)
			return ni, e.cache.URL()
		}, wantIs: narinfo.ErrMalformed, wantMsg: "not a Nix binary cache"},
		{name: "Unsigned", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			return e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar, Unsigned: true}), e.cache.URL()
		}, wantIs: narinfo.ErrUntrusted, wantMsg: "--trusted-public-key"},
		{name: "UntrustedKey", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar, Unsigned: true})
			ni.Sign(nixtest.NewCache(t, "stranger-1").SecretKey)
			e.cache.WriteNarInfo(t, ni)
			return ni, e.cache.URL()
		}, wantIs: narinfo.ErrUntrusted, wantMsg: "signed by stranger-1"},
		{name: "HashMismatch", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			bad := append([]byte(nil), nar...)
			bad[len(bad)/2] ^= 1
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: bad, Compression: "zstd"})
			ni.NarHash = e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar}).NarHash
			ni.Sigs = nil
			ni.Sign(e.cache.SecretKey)
			e.cache.WriteNarInfo(t, ni)
			return ni, e.cache.URL()
		}, wantIs: ingest.ErrHashMismatch, wantMsg: "the bytes hash to"},
		{name: "SizeMismatchShort", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar[:len(nar)-100], Compression: "xz"})
			ni.NarSize = uint64(len(nar))
			ni.Sigs = nil
			ni.Sign(e.cache.SecretKey)
			e.cache.WriteNarInfo(t, ni)
			return ni, e.cache.URL()
		}, wantIs: ingest.ErrSizeMismatch, wantMsg: "upstream sent"},
		{name: "SizeMismatchLong", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: append(append([]byte(nil), nar...), 1, 2, 3), Compression: "none"})
			ni.NarSize = uint64(len(nar))
			ni.Sigs = nil
			ni.Sign(e.cache.SecretKey)
			e.cache.WriteNarInfo(t, ni)
			return ni, e.cache.URL()
		}, wantIs: ingest.ErrSizeMismatch, wantMsg: "sent more"},
		{name: "UnknownCompression", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar})
			ni.Compression = "lz4"
			e.cache.WriteNarInfo(t, ni)
			return ni, e.cache.URL()
		}, wantIs: ingest.ErrUnsupportedCompression, wantMsg: `"lz4"`},
		{name: "NARFileMissing", setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar})
			os.Remove(e.cache.NARFile(ni))
			return ni, e.cache.URL()
		}, wantIs: ingest.ErrNotFound, wantMsg: "the narinfo URL is wrong"},
	}
	for _, comp := range []string{"xz", "zstd", "bzip2"} {
		cases = append(cases, tc{name: "Truncated" + comp, setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar, Compression: comp})
			truncateFile(t, e.cache.NARFile(ni))
			return ni, e.cache.URL()
		}, wantIs: ingest.ErrDecompress, wantMsg: "corrupt or truncated"})
		cases = append(cases, tc{name: "Corrupt" + comp, setup: func(t *testing.T, e *env) (*narinfo.NarInfo, string) {
			ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nar, Compression: comp})
			flipByte(t, e.cache.NARFile(ni), 0.4)
			return ni, e.cache.URL()
		}, wantMsg: "nothing was recorded"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			ni, url := c.setup(t, e)
			// A good path next to the bad one, to show it is unaffected.
			good := e.cache.Add(t, nixtest.Path{Name: "good", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort"))})
			in := e.ingester(t, url, c.opts)
			rep, err := in.Batch(t.Context(), []string{ni.StorePath, good.StorePath}, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Failures) != 1 || len(rep.Results) != 1 {
				t.Fatalf("want one failure and one success, got %d failures %d results: %+v", len(rep.Failures), len(rep.Results), rep.Failures)
			}
			ferr := rep.Failures[0].Err
			if c.wantIs != nil && !errors.Is(ferr, c.wantIs) {
				t.Errorf("error %v\ndoes not wrap %v", ferr, c.wantIs)
			}
			if !strings.Contains(ferr.Error(), c.wantMsg) || !strings.Contains(ferr.Error(), ni.HashPart()) {
				t.Errorf("error %q\nshould name the path and say %q", ferr, c.wantMsg)
			}
			e.assertAbsent(t, ni)
			if _, err := e.ix.NarInfo(t.Context(), good.HashPart()); err != nil {
				t.Errorf("good path not ingested next to the bad one: %v", err)
			}
		})
	}
}

func TestAllowUntrusted(t *testing.T) {
	e := newEnv(t)
	ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort")), Unsigned: true})
	in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) { o.AllowUntrusted = true })
	if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
		t.Fatal(err)
	}
}

// httpUpstream serves the cache dir, with a hook to misbehave per request.
func httpUpstream(t *testing.T, dir string, hook func(w http.ResponseWriter, r *http.Request) bool) *httptest.Server {
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hook != nil && hook(w, r) {
			return
		}
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestUpstream5xxIsRetriedThenReported(t *testing.T) {
	e := newEnv(t)
	ni := e.cache.Add(t, nixtest.Path{Name: "json", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort"))})
	var narCalls atomic.Int32
	srv := httpUpstream(t, e.cache.Dir, func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			narCalls.Add(1)
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	_, err := e.ingester(t, srv.URL, nil).IngestPath(t.Context(), ni.StorePath)
	if !errors.Is(err, ingest.ErrUpstreamTransient) || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "try again later") {
		t.Fatalf("got %v", err)
	}
	if narCalls.Load() != 3 {
		t.Errorf("NAR fetched %d times, want 3 attempts", narCalls.Load())
	}
	e.assertAbsent(t, ni)

	// A transient 5xx that clears up is absorbed by the retry.
	narCalls.Store(0)
	srv2 := httpUpstream(t, e.cache.Dir, func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/nar/") && narCalls.Add(1) == 1 {
			http.Error(w, "blip", http.StatusBadGateway)
			return true
		}
		return false
	})
	if _, err := e.ingester(t, srv2.URL, nil).IngestPath(t.Context(), ni.StorePath); err != nil {
		t.Fatalf("after one 502: %v", err)
	}
}

func TestConnectionDroppedMidNAR(t *testing.T) {
	e := newEnv(t)
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	for _, comp := range []string{"none", "xz", "zstd"} {
		t.Run(comp, func(t *testing.T) {
			ni := e.cache.Add(t, nixtest.Path{Name: "http", NAR: nar, Compression: comp})
			srv := httpUpstream(t, e.cache.Dir, func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasPrefix(r.URL.Path, "/nar/") {
					return false
				}
				body, _ := os.ReadFile(filepath.Join(e.cache.Dir, r.URL.Path))
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				w.WriteHeader(200)
				w.Write(body[:len(body)/2])
				w.(http.Flusher).Flush()
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
				return true
			})
			_, err := e.ingester(t, srv.URL, nil).IngestPath(t.Context(), ni.StorePath)
			if err == nil || !strings.Contains(err.Error(), "nothing was recorded") {
				t.Fatalf("got %v", err)
			}
			if !errors.Is(err, ingest.ErrUpstreamTransient) && !errors.Is(err, ingest.ErrDecompress) {
				t.Errorf("a broken connection should read as transient or truncated: %v", err)
			}
			e.assertAbsent(t, ni)
		})
	}
}

// failingStore fails every Put after the first n.
type failingStore struct {
	store.Store
	n atomic.Int32
}

func (f *failingStore) Put(ctx context.Context, id chunker.ID, b []byte) error {
	if f.n.Add(-1) < 0 {
		return errors.New("disk full")
	}
	return f.Store.Put(ctx, id, b)
}

func TestStoreWriteError(t *testing.T) {
	e := newEnv(t)
	fs := &failingStore{Store: e.dir}
	fs.n.Store(2)
	e.chunks, _ = store.NewChunks(fs, store.ChunksOptions{})
	ni := e.cache.Add(t, nixtest.Path{Name: "http", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))})
	_, err := e.ingester(t, e.cache.URL(), nil).IngestPath(t.Context(), ni.StorePath)
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "writable and has space") {
		t.Fatalf("got %v", err)
	}
	e.assertAbsent(t, ni)
	// With the store healthy again the same NAR ingests.
	fs.n.Store(1 << 30)
	if _, err := e.ingester(t, e.cache.URL(), nil).IngestPath(t.Context(), ni.StorePath); err != nil {
		t.Fatal(err)
	}
}

func TestSamePathAtOnceIsFetchedOnce(t *testing.T) {
	e := newEnv(t)
	ni := e.cache.Add(t, nixtest.Path{Name: "http", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))})
	var narCalls atomic.Int32
	release := make(chan struct{})
	srv := httpUpstream(t, e.cache.Dir, func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			narCalls.Add(1)
			<-release
		}
		return false
	})
	in := e.ingester(t, srv.URL, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); _, err := in.IngestPath(context.Background(), ni.StorePath); errs <- err }()
	}
	for narCalls.Load() == 0 {
		runtimeGosched()
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := narCalls.Load(); n != 1 {
		t.Fatalf("NAR downloaded %d times, want 1", n)
	}
}

func TestParseHashPart(t *testing.T) {
	h := nixtest.RandomHashPart()
	for _, in := range []string{h, "/nix/store/" + h + "-foo", h + "-foo", "/nix/store/" + h + "-foo/bin/x", " /nix/store/" + h + "-foo\n"} {
		if got, err := ingest.ParseHashPart(in); err != nil || got != h {
			t.Errorf("ParseHashPart(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "foo", "/nix/store/short-x", "/nix/store/" + strings.Repeat("e", 32) + "-x", h + "x"} {
		if _, err := ingest.ParseHashPart(in); err == nil {
			t.Errorf("ParseHashPart(%q) succeeded", in)
		}
	}
}

// A NAR's first chunk is cut at HeadChunkSize when the chunker's first chunk
// is at least twice that, and only then; the rest of the boundaries are the
// chunker's own.
func TestHeadChunkSplit(t *testing.T) {
	e := newEnv(t)
	big := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	small := big[:100<<10]
	for _, tc := range []struct {
		name  string
		nar   []byte
		split bool
	}{{"big", big, true}, {"small", small, false}} {
		ni := e.cache.Add(t, nixtest.Path{Name: tc.name, NAR: tc.nar})
		in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) {
			o.Preset, _ = chunker.LookupPreset("fastcdc-64k-256k-1m")
		})
		if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
			t.Fatal(err)
		}
		nar, _ := e.ix.NAR(t.Context(), ni.NarHash)
		p, _ := chunker.LookupPreset("fastcdc-64k-256k-1m")
		c, _ := chunker.New(bytes.NewReader(tc.nar), p)
		var want []uint64 // the chunker's boundaries
		for {
			ch, err := c.Next()
			if err != nil {
				break
			}
			want = append(want, uint64(ch.Offset))
		}
		var got []uint64
		for _, ref := range nar.Chunks {
			got = append(got, ref.Offset)
		}
		if tc.split {
			if nar.Chunks[0].Size != ingest.HeadChunkSize || len(want) < 2 || want[1] < 2*ingest.HeadChunkSize {
				t.Fatalf("%s: first chunk %d bytes, chunker's second boundary %v", tc.name, nar.Chunks[0].Size, want)
			}
			want = append([]uint64{0, ingest.HeadChunkSize}, want[1:]...)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: boundaries %v, want %v", tc.name, got, want)
		}
		if !bytes.Equal(e.readBack(t, ni), tc.nar) {
			t.Errorf("%s: not read back", tc.name)
		}
	}
}
