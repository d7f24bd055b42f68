package reassembly_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// countingStore counts Get and Has calls per chunk.
type countingStore struct {
	store.Store
	mu   sync.Mutex
	gets map[chunker.ID]int
	has  atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, id chunker.ID) (io.ReadCloser, error) {
	c.mu.Lock()
	c.gets[id]++
	c.mu.Unlock()
	return c.Store.Get(ctx, id)
}

func (c *countingStore) Has(ctx context.Context, id chunker.ID) (bool, error) {
	c.has.Add(1)
	return c.Store.Has(ctx, id)
}

func (c *countingStore) totalGets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.gets {
		n += v
	}
	return n
}

type fixture struct {
	t      *testing.T
	ix     *index.SQLite
	dir    *store.Dir
	cs     *countingStore
	chunks *store.Chunks
	in     *ingest.Ingester
	cache  *nixtest.Cache
	srv    *reassembly.Server
	http   *httptest.Server
	sk     signature.SecretKey
	pk     signature.PublicKey
}

type fixOpts struct {
	upstream string
	mod      func(*reassembly.Options)
	cacheMB  int64
}

func newFixture(t *testing.T, o fixOpts) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, cache: nixtest.NewCache(t, "upstream-1")}
	var err error
	f.ix, err = index.OpenSQLite(filepath.Join(root, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.ix.Close() })
	f.dir, _ = store.OpenDir(filepath.Join(root, "chunks"))
	f.cs = &countingStore{Store: f.dir, gets: map[chunker.ID]int{}}
	f.chunks, _ = store.NewChunks(f.cs, store.ChunksOptions{})
	var up *ingest.Upstream
	if o.upstream != "" {
		up, _ = ingest.NewUpstream(o.upstream, ingest.UpstreamOptions{Delay: 1})
	}
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	f.in, _ = ingest.New(up, f.ix, f.chunks, ingest.Options{Preset: p, Keys: narinfo.PublicKeys{f.cache.PublicKey}})
	f.sk, f.pk, _ = signature.GenerateKeypair("narstore-1", nil)
	opts := reassembly.Options{Priority: 30, WantMassQuery: true, SecretKey: &f.sk, NegativeTTL: time.Minute,
		TransportZstd: true, SpoolDir: t.TempDir(), Uploads: true, UploadToken: "s3cret"}
	if o.mod != nil {
		o.mod(&opts)
	}
	f.srv = reassembly.NewServer(f.ix, reassembly.NewCache(f.chunks, o.cacheMB<<20), f.in, opts)
	f.http = httptest.NewServer(f.srv.Handler())
	t.Cleanup(func() { f.http.Close(); f.srv.Close(context.Background()) })
	return f
}

// add puts a real NAR into the upstream cache and ingests it.
func (f *fixture) add(name, dir string) (*narinfo.NarInfo, []byte) {
	f.t.Helper()
	nar := nixtest.DumpPath(f.t, nixtest.GoRoot(f.t, dir))
	ni := f.cache.Add(f.t, nixtest.Path{Name: name, NAR: nar})
	up, _ := ingest.NewUpstream(f.cache.URL(), ingest.UpstreamOptions{})
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	in, _ := ingest.New(up, f.ix, f.chunks, ingest.Options{Preset: p, Keys: narinfo.PublicKeys{f.cache.PublicKey}})
	if _, err := in.IngestPath(f.t.Context(), ni.StorePath); err != nil {
		f.t.Fatal(err)
	}
	f.cs.mu.Lock()
	clear(f.cs.gets)
	f.cs.mu.Unlock()
	f.cs.has.Store(0)
	return ni, nar
}

func (f *fixture) get(path string, hdr ...string) (*http.Response, []byte, error) {
	return f.do("GET", path, nil, hdr...)
}

func (f *fixture) do(method, path string, body io.Reader, hdr ...string) (*http.Response, []byte, error) {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.http.URL+path, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	// Plain transport: no automatic gzip, so Content-Encoding is visible.
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func narPath(ni *narinfo.NarInfo) string { return "/nar/" + ni.NarHash32() + ".nar" }

func TestNixCacheInfo(t *testing.T) {
	f := newFixture(t, fixOpts{})
	resp, body, err := f.get("/nix-cache-info")
	if err != nil || resp.StatusCode != 200 || string(body) != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n" {
		t.Fatalf("%v %v %q", err, resp.StatusCode, body)
	}
}

func TestNarInfoRewritten(t *testing.T) {
	f := newFixture(t, fixOpts{})
	ni, _ := f.add("json", "src/encoding/json")
	resp, body, err := f.get("/" + ni.HashPart() + ".narinfo")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", err, resp.StatusCode)
	}
	got, err := narinfo.Parse(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if got.URL != "nar/"+ni.NarHash32()+".nar" || got.Compression != "none" || got.FileHash != "" || got.FileSize != 0 {
		t.Errorf("not rewritten:\n%s", body)
	}
	if strings.Contains(string(body), "FileHash") || !strings.Contains(string(body), "Compression: none\n") {
		t.Errorf("body:\n%s", body)
	}
	if len(got.Sigs) != 2 || got.Sigs[0] != ni.Sigs[0] {
		t.Fatalf("upstream sig not kept first, own sig not appended: %v", got.Sigs)
	}
	if err := got.Verify(narinfo.PublicKeys{f.cache.PublicKey}); err != nil {
		t.Errorf("upstream key: %v", err)
	}
	if err := got.Verify(narinfo.PublicKeys{f.pk}); err != nil {
		t.Errorf("narstore key: %v", err)
	}
	resp, body, _ = f.do("HEAD", "/"+ni.HashPart()+".narinfo", nil)
	if resp.StatusCode != 200 || len(body) != 0 {
		t.Errorf("HEAD narinfo: %d, %d bytes", resp.StatusCode, len(body))
	}
	for _, p := range []string{"/" + nixtest.RandomHashPart() + ".narinfo", "/not-a-hash.narinfo", "/" + ni.HashPart() + ".ls", "/log/foo.drv"} {
		if resp, _, _ := f.get(p); resp.StatusCode != 404 {
			t.Errorf("GET %s = %d, want 404", p, resp.StatusCode)
		}
	}
}

func TestNARFullRangeAndHead(t *testing.T) {
	f := newFixture(t, fixOpts{})
	ni, nar := f.add("http", "src/net/http")
	resp, body, err := f.get(narPath(ni))
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, nar) {
		t.Fatalf("full GET: %v %v, %d bytes of %d", err, resp.StatusCode, len(body), len(nar))
	}
	if resp.Header.Get("Content-Length") != fmt.Sprint(len(nar)) || resp.Header.Get("Accept-Ranges") != "bytes" || resp.Header.Get("Content-Encoding") != "" {
		t.Errorf("headers %v", resp.Header)
	}
	// The first GET checked every chunk's presence (no chunk cache here);
	// a second one trusts what it saw moments ago: no Has per chunk again.
	if f.cs.has.Load() == 0 {
		t.Error("first GET made no presence check")
	}
	hasBefore := f.cs.has.Load()
	if resp, body, _ := f.get(narPath(ni)); resp.StatusCode != 200 || !bytes.Equal(body, nar) {
		t.Fatalf("second GET: %d", resp.StatusCode)
	}
	if n := f.cs.has.Load() - hasBefore; n != 0 {
		t.Errorf("second GET made %d presence checks", n)
	}

	stored, _ := f.ix.NAR(t.Context(), ni.NarHash)
	if len(stored.Chunks) < 4 {
		t.Fatalf("fixture has only %d chunks", len(stored.Chunks))
	}
	c2 := stored.Chunks[2]
	boundary := int64(c2.Offset)
	size := int64(len(nar))
	for _, tc := range []struct {
		rng      string
		from, to int64 // inclusive
	}{
		{fmt.Sprintf("bytes=%d-", boundary-10), boundary - 10, size - 1},
		{fmt.Sprintf("bytes=%d-%d", boundary-10, boundary+10), boundary - 10, boundary + 10},
		{fmt.Sprintf("bytes=%d-%d", boundary, boundary), boundary, boundary},
		{"bytes=-100", size - 100, size - 1},
		{fmt.Sprintf("bytes=%d-%d", size-5, size+1000), size - 5, size - 1},
		{"bytes=0-0", 0, 0},
	} {
		t.Run(tc.rng, func(t *testing.T) {
			resp, body, err := f.get(narPath(ni), "Range", tc.rng, "Accept-Encoding", "zstd")
			if err != nil || resp.StatusCode != 206 {
				t.Fatalf("%v %d", err, resp.StatusCode)
			}
			if !bytes.Equal(body, nar[tc.from:tc.to+1]) {
				t.Fatalf("wrong bytes for %s", tc.rng)
			}
			if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to, size) {
				t.Errorf("Content-Range %q", cr)
			}
			if resp.Header.Get("Content-Encoding") != "" {
				t.Error("ranged response must not be transport-compressed")
			}
		})
	}
	// A range starting in chunk 2 never reads chunks 0 and 1.
	f.cs.mu.Lock()
	clear(f.cs.gets)
	f.cs.mu.Unlock()
	f.get(narPath(ni), "Range", fmt.Sprintf("bytes=%d-", boundary+1))
	f.cs.mu.Lock()
	if f.cs.gets[stored.Chunks[0].ID]+f.cs.gets[stored.Chunks[1].ID] != 0 || f.cs.gets[c2.ID] == 0 {
		t.Errorf("range read earlier chunks: %v", f.cs.gets)
	}
	f.cs.mu.Unlock()

	for _, bad := range []string{fmt.Sprintf("bytes=%d-", size), "bytes=5-2", "bytes=-0"} {
		if resp, _, _ := f.get(narPath(ni), "Range", bad); resp.StatusCode != 416 {
			t.Errorf("Range %s: %d, want 416", bad, resp.StatusCode)
		}
	}
	if resp, body, _ := f.get(narPath(ni), "Range", "bytes=0-1,5-9"); resp.StatusCode != 200 || len(body) != len(nar) {
		t.Errorf("multi-range should fall back to the full body: %d", resp.StatusCode)
	}
	if resp, body, _ := f.get(narPath(ni), "Range", "bytes=5-", "If-Range", `"other"`); resp.StatusCode != 200 || len(body) != len(nar) {
		t.Errorf("stale If-Range should give the full body: %d", resp.StatusCode)
	}

	// HEAD answers from the index: no chunk is read or even stat'ed.
	before, hasBefore := f.cs.totalGets(), f.cs.has.Load()
	resp, body, _ = f.do("HEAD", narPath(ni), nil)
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Length") != fmt.Sprint(len(nar)) {
		t.Errorf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	if f.cs.totalGets() != before || f.cs.has.Load() != hasBefore {
		t.Error("HEAD touched the chunk store")
	}
	if resp, _, _ := f.get("/nar/" + strings.Repeat("0", 52) + ".nar"); resp.StatusCode != 404 {
		t.Errorf("unknown NAR: %d", resp.StatusCode)
	}
}

func TestTransportZstd(t *testing.T) {
	f := newFixture(t, fixOpts{})
	ni, nar := f.add("http", "src/net/http")
	resp, body, err := f.get(narPath(ni), "Accept-Encoding", "gzip, zstd, br")
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(err, resp.StatusCode)
	}
	if resp.Header.Get("Content-Encoding") != "zstd" || resp.Header.Get("Content-Length") != "" || resp.Header.Get("Accept-Ranges") != "" || resp.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("headers %v", resp.Header)
	}
	d, _ := zstd.NewReader(nil)
	plain, err := d.DecodeAll(body, nil)
	if err != nil || !bytes.Equal(plain, nar) {
		t.Fatalf("zstd body does not decode to the NAR: %v", err)
	}
	if len(body) >= len(nar) {
		t.Errorf("zstd body %d bytes, NAR %d", len(body), len(nar))
	}
	for _, ae := range []string{"", "gzip, br", "zstd;q=0", "identity"} {
		resp, body, _ := f.get(narPath(ni), "Accept-Encoding", ae)
		if ce := resp.Header.Get("Content-Encoding"); ce != "" || !bytes.Equal(body, nar) {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q", ae, ce)
		}
	}
}

func TestFailClosed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		chunk    func(n int) int // which chunk to damage
		damage   func(t *testing.T, f *fixture, id chunker.ID)
		wantCode int // 0: headers go out, then the connection aborts
	}{
		{"MissingChunkMidNAR", func(n int) int { return n - 2 }, func(t *testing.T, f *fixture, id chunker.ID) { f.dir.Delete(t.Context(), id) }, 404},
		{"CorruptFirstChunk", func(int) int { return 0 }, corrupt, 503},
		{"CorruptChunkMidNAR", func(n int) int { return n - 2 }, corrupt, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fixOpts{})
			ni, nar := f.add("http", "src/net/http")
			stored, _ := f.ix.NAR(t.Context(), ni.NarHash)
			tc.damage(t, f, stored.Chunks[tc.chunk(len(stored.Chunks))].ID)
			req, _ := http.NewRequest("GET", f.http.URL+narPath(ni), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, rerr := io.ReadAll(resp.Body)
			if tc.wantCode != 0 {
				if resp.StatusCode != tc.wantCode {
					t.Fatalf("status %d, want %d before any NAR byte", resp.StatusCode, tc.wantCode)
				}
				return
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if rerr == nil || len(body) >= len(nar) {
				t.Fatalf("a damaged NAR was delivered cleanly: %d of %d bytes, err %v", len(body), len(nar), rerr)
			}
		})
	}
}

func corrupt(t *testing.T, f *fixture, id chunker.ID) {
	t.Helper()
	storetest.Corrupt(t, f.dir, id)
}

// upstreamServer serves a cache dir over HTTP and counts NAR and narinfo fetches.
func upstreamServer(t *testing.T, dir string, gate chan struct{}) (*httptest.Server, *atomic.Int32, *atomic.Int32) {
	var nars, narinfos atomic.Int32
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/nar/"):
			nars.Add(1)
			if gate != nil {
				<-gate
			}
		case strings.HasSuffix(r.URL.Path, ".narinfo"):
			narinfos.Add(1)
		}
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &nars, &narinfos
}

func TestPullThrough(t *testing.T) {
	f := newFixture(t, fixOpts{}) // for its upstream cache and key
	gate := make(chan struct{})
	srvUp, nars, narinfos := upstreamServer(t, f.cache.Dir, gate)
	g := newFixture(t, fixOpts{upstream: srvUp.URL})
	// g trusts its own cache's key; point it at f's cache by re-signing there.
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	ni := f.cache.Add(t, nixtest.Path{Name: "http", NAR: nar, Compression: "xz"})
	ni.Sigs = nil
	ni.Sign(g.cache.SecretKey)
	f.cache.WriteNarInfo(t, ni)

	const clients = 12
	var wg sync.WaitGroup
	bodies := make([][]byte, clients)
	errs := make([]error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _, err := g.get("/" + ni.HashPart() + ".narinfo")
			if err != nil || resp.StatusCode != 200 {
				errs[i] = fmt.Errorf("narinfo: %v %v", err, resp)
				return
			}
			resp, body, err := g.get(narPath(ni))
			if err != nil || resp.StatusCode != 200 {
				errs[i] = fmt.Errorf("nar: %v %v", err, resp)
				return
			}
			bodies[i] = body
		}()
	}
	for nars.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let every client reach the server
	close(gate)
	wg.Wait()
	for i := range clients {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(bodies[i], nar) {
			t.Fatalf("client %d got %d bytes, not the NAR", i, len(bodies[i]))
		}
	}
	if n := nars.Load(); n != 1 {
		t.Errorf("%d upstream NAR downloads for %d clients, want 1", n, clients)
	}
	if n := narinfos.Load(); n != 1 {
		t.Errorf("%d upstream narinfo fetches, want 1", n)
	}
	// Now it is stored: served from chunks with Range support.
	g.srv.Close(context.Background())
	if ok, _ := g.ix.HasNAR(t.Context(), ni.NarHash); !ok {
		t.Fatal("pull-through did not ingest the NAR")
	}
	resp, body, _ := g.get(narPath(ni), "Range", "bytes=10-19")
	if resp.StatusCode != 206 || !bytes.Equal(body, nar[10:20]) {
		t.Errorf("after ingest: %d", resp.StatusCode)
	}

	_, metrics, _ := g.get("/metrics")
	if !strings.Contains(string(metrics), `narstore_upstream_fetches_total{kind="nar",result="ok"} 1`) {
		t.Errorf("upstream fetch metric missing:\n%s", metrics)
	}

	// Misses are looked up upstream once and remembered.
	missing := "/" + nixtest.RandomHashPart() + ".narinfo"
	before := narinfos.Load()
	for range 3 {
		if resp, _, _ := g.get(missing); resp.StatusCode != 404 {
			t.Fatalf("miss: %d", resp.StatusCode)
		}
	}
	if n := narinfos.Load() - before; n != 1 {
		t.Errorf("upstream asked %d times for a missing path, want 1 (negative cache)", n)
	}
}

// Behind a load balancer the narinfo and the NAR request reach different
// instances: the pending narinfo is shared through the index.
func TestPullThroughNARRequestOnAnotherInstance(t *testing.T) {
	f := newFixture(t, fixOpts{})
	srvUp, nars, _ := upstreamServer(t, f.cache.Dir, nil)
	g := newFixture(t, fixOpts{upstream: srvUp.URL})
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/url"))
	ni := f.cache.Add(t, nixtest.Path{Name: "url", NAR: nar, Compression: "xz"})
	ni.Sigs = nil
	ni.Sign(g.cache.SecretKey)
	f.cache.WriteNarInfo(t, ni)

	// A second instance over the same index and store, with its own memory.
	up, _ := ingest.NewUpstream(srvUp.URL, ingest.UpstreamOptions{Delay: 1})
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	in2, _ := ingest.New(up, g.ix, g.chunks, ingest.Options{Preset: p, Keys: narinfo.PublicKeys{g.cache.PublicKey}})
	srv2 := reassembly.NewServer(g.ix, reassembly.NewCache(g.chunks, 0), in2, reassembly.Options{SpoolDir: t.TempDir()})
	h2 := httptest.NewServer(srv2.Handler())
	defer func() { h2.Close(); srv2.Close(context.Background()) }()

	if resp, err := http.Get(h2.URL + narPath(ni)); err != nil || resp.StatusCode != 404 {
		t.Fatalf("NAR before any narinfo request: %v %v, want 404", err, resp)
	}
	if resp, _, err := g.get("/" + ni.HashPart() + ".narinfo"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("narinfo: %v %v", err, resp)
	}
	resp, err := http.Get(h2.URL + narPath(ni))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, nar) {
		t.Fatalf("NAR from the other instance: %d, %d bytes, %v", resp.StatusCode, len(body), err)
	}
	if n := nars.Load(); n != 1 {
		t.Errorf("%d upstream NAR downloads, want 1", n)
	}
	srv2.Close(context.Background())
	if ok, _ := g.ix.HasNAR(t.Context(), ni.NarHash); !ok {
		t.Error("NAR not ingested")
	}
}

func TestPullThroughBadUpstreamNARNeverDeliveredWhole(t *testing.T) {
	f := newFixture(t, fixOpts{})
	srvUp, _, _ := upstreamServer(t, f.cache.Dir, nil)
	g := newFixture(t, fixOpts{upstream: srvUp.URL})
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	bad := append([]byte(nil), nar...)
	bad[len(bad)-3] ^= 1 // damage near the end: most bytes stream before it is noticed
	ni := f.cache.Add(t, nixtest.Path{Name: "http", NAR: bad, Compression: "none"})
	ni.NarHash = sha256Of(nar)
	ni.Sigs = nil
	ni.Sign(g.cache.SecretKey)
	f.cache.WriteNarInfo(t, ni)

	g.get("/" + ni.HashPart() + ".narinfo")
	resp, err := http.Get(g.http.URL + narPath(ni))
	if err != nil {
		t.Fatal(err)
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 && rerr == nil && len(body) == len(nar) {
		t.Fatal("a NAR that fails its NarHash was delivered whole")
	}
	if ok, _ := g.ix.HasNAR(t.Context(), ni.NarHash); ok {
		t.Fatal("bad NAR recorded")
	}
}

func TestUploads(t *testing.T) {
	f := newFixture(t, fixOpts{})
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort"))
	comp, _ := nixtest.Compress(t, nar, "zstd")
	h := nixtest.RandomHashPart()
	ni := &narinfo.NarInfo{StorePath: "/nix/store/" + h + "-sort", URL: "nar/upload1.nar.zst", Compression: "zstd", NarHash: sha256Of(nar), NarSize: uint64(len(nar))}
	auth := []string{"Authorization", "Bearer s3cret"}

	if resp, _, _ := f.do("PUT", "/nar/upload1.nar.zst", bytes.NewReader(comp)); resp.StatusCode != 401 {
		t.Fatalf("unauthenticated PUT: %d", resp.StatusCode)
	}
	// A narinfo whose NAR was never uploaded is refused.
	if resp, body, _ := f.do("PUT", "/"+h+".narinfo", strings.NewReader(ni.String()), auth...); resp.StatusCode != 400 || !strings.Contains(string(body), "upload the NAR first") {
		t.Fatalf("narinfo without NAR: %d %s", resp.StatusCode, body)
	}
	if resp, body, _ := f.do("PUT", "/nar/upload1.nar.zst", bytes.NewReader(comp), auth...); resp.StatusCode != 200 {
		t.Fatalf("PUT NAR: %d %s", resp.StatusCode, body)
	}
	if resp, _, _ := f.do("HEAD", "/nar/upload1.nar.zst", nil); resp.StatusCode != 200 {
		t.Errorf("HEAD of an uploaded NAR URL: %d", resp.StatusCode)
	}
	wrong := *ni
	wrong.NarSize--
	if resp, body, _ := f.do("PUT", "/"+h+".narinfo", strings.NewReader(wrong.String()), auth...); resp.StatusCode != 400 || !strings.Contains(string(body), "the narinfo says") {
		t.Fatalf("mismatching narinfo: %d %s", resp.StatusCode, body)
	}
	if _, err := f.ix.NarInfo(t.Context(), h); !errors.Is(err, index.ErrNotFound) {
		t.Fatal("mismatching narinfo was recorded")
	}
	if resp, body, _ := f.do("PUT", "/"+h+".narinfo", strings.NewReader(ni.String()), "Authorization", "Basic "+basic("anyone", "s3cret")); resp.StatusCode != 200 {
		t.Fatalf("PUT narinfo: %d %s", resp.StatusCode, body)
	}
	resp, body, _ := f.get("/nar/" + ni.NarHash32() + ".nar")
	if resp.StatusCode != 200 || !bytes.Equal(body, nar) {
		t.Fatalf("uploaded NAR not served: %d", resp.StatusCode)
	}
	// A corrupt upload is refused and nothing is recorded.
	bad := append([]byte(nil), comp...)
	bad = bad[:len(bad)/2]
	if resp, _, _ := f.do("PUT", "/nar/upload2.nar.zst", bytes.NewReader(bad), auth...); resp.StatusCode != 400 {
		t.Errorf("truncated upload: %d", resp.StatusCode)
	}

	g := newFixture(t, fixOpts{mod: func(o *reassembly.Options) { o.Uploads = false }})
	if resp, _, _ := g.do("PUT", "/nar/x.nar", bytes.NewReader(nar), auth...); resp.StatusCode != 405 {
		t.Errorf("uploads disabled: %d", resp.StatusCode)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	f := newFixture(t, fixOpts{cacheMB: 64})
	ni, _ := f.add("json", "src/encoding/json")
	f.get(narPath(ni))
	f.get(narPath(ni))
	if resp, body, _ := f.get("/healthz"); resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("healthz %d %q", resp.StatusCode, body)
	}
	// The request counter is bumped after the handler returns, which can be
	// just after the client has read the whole body.
	var body []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, body, _ = f.get("/metrics"); strings.Contains(string(body), `route="nar"} 2`) {
			break
		}
	}
	for _, want := range []string{`narstore_http_requests_total{code="200",route="nar"} 2`, "narstore_nar_bytes_served_total", "narstore_chunk_cache_hits_total", "narstore_ingest_errors_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(string(body), "narstore_chunk_cache_hits_total 0\n") {
		t.Error("second read of a NAR had no cache hits")
	}
}
