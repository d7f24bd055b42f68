package bench_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/narstore/narstore/bench"
	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/store"
)

// corpus makes two bumps of real files in a signed cache, and the same NARs
// as bump directories of <basename>.nar.xz files.
func corpus(t *testing.T) (*nixtest.Cache, []string, [][]string) {
	cache := nixtest.NewCache(t, "corpus-1")
	bumps := [][]string{{"src/net/url", "src/encoding/json", "src/sort"}, {"src/net/url", "src/encoding/json", "src/bufio", "src/net/http"}}
	var dirs []string
	var paths [][]string
	seen := map[string]*narinfo.NarInfo{}
	for i, b := range bumps {
		dir := filepath.Join(t.TempDir(), "bump"+string(rune('1'+i)))
		os.MkdirAll(dir, 0o755)
		var ps []string
		for _, src := range b {
			ni := seen[src]
			if ni == nil {
				ni = cache.Add(t, nixtest.Path{Name: filepath.Base(src), NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, src)), Compression: "xz"})
				seen[src] = ni
			}
			base := strings.TrimPrefix(ni.StorePath, "/nix/store/")
			if err := os.Link(cache.NARFile(ni), filepath.Join(dir, base+".nar.xz")); err != nil {
				t.Fatal(err)
			}
			ps = append(ps, ni.StorePath)
		}
		dirs = append(dirs, dir)
		paths = append(paths, ps)
	}
	return cache, dirs, paths
}

func bumpsOf(t *testing.T, dirs []string) []bench.Bump {
	var out []bench.Bump
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*.nar.xz"))
		out = append(out, bench.Bump{Name: filepath.Base(d), Files: files})
	}
	return out
}

// The figures bench reports are the figures a real ingest produces.
func TestBenchMatchesRealIngest(t *testing.T) {
	cache, dirs, paths := corpus(t)
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	cfg := bench.Config{Preset: preset, Level: 3}
	rows, err := bench.Run(t.Context(), bench.Options{Bumps: bumpsOf(t, dirs), Configs: []bench.Config{cfg}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}

	// A real, durable local store fed by the ordinary ingest of the same paths.
	root := t.TempDir()
	ix, err := index.OpenSQLite(filepath.Join(root, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	d, _ := store.OpenDir(filepath.Join(root, "chunks"))
	chunks, _ := store.NewChunks(d, store.ChunksOptions{Level: cfg.Level})
	up, _ := ingest.NewUpstream(cache.URL(), ingest.UpstreamOptions{})
	in, _ := ingest.New(up, ix, chunks, ingest.Options{Preset: preset, Keys: narinfo.PublicKeys{cache.PublicKey}})
	for i, ps := range paths {
		rep, err := in.Batch(t.Context(), ps, false)
		if err != nil || len(rep.Failures) > 0 {
			t.Fatalf("ingest: %v %v", err, rep.Failures)
		}
		st, _ := ix.Stats(t.Context())
		r := rows[i]
		if r.StoredBytes != st.StoredBytes || r.Chunks != st.Chunks || r.NARBytes != st.NARBytes || r.UpstreamBytes != st.UpstreamSize || r.NARs != st.NARs {
			t.Errorf("bump %d: bench reported stored %d, chunks %d, NAR %d, upstream %d, NARs %d; real ingest has %+v",
				i+1, r.StoredBytes, r.Chunks, r.NARBytes, r.UpstreamBytes, r.NARs, st)
		}
	}
	// The chunk files on disk add up to what was reported.
	var onDisk int64
	var n int64
	d.Walk(t.Context(), func(_ chunker.ID, size int64) error { onDisk += size; n++; return nil })
	last := rows[len(rows)-1]
	if uint64(onDisk) != last.StoredBytes || n != last.Objects {
		t.Errorf("on disk %d bytes in %d objects; bench said %d bytes in %d", onDisk, n, last.StoredBytes, last.Objects)
	}
}

func TestBenchFromBinaryCacheAndFiles(t *testing.T) {
	cache, dirs, paths := corpus(t)
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	cfgs := []bench.Config{{Preset: preset, Level: 1}}
	var bumps []bench.Bump
	for i, ps := range paths {
		bumps = append(bumps, bench.Bump{Name: filepath.Base(dirs[i]), StorePaths: ps})
	}
	fromCache, err := bench.Run(t.Context(), bench.Options{Bumps: bumps, Configs: cfgs, Upstream: cache.URL(), Keys: narinfo.PublicKeys{cache.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	fromFiles, err := bench.Run(t.Context(), bench.Options{Bumps: bumpsOf(t, dirs), Configs: cfgs})
	if err != nil {
		t.Fatal(err)
	}
	for i := range fromCache {
		a, b := fromCache[i], fromFiles[i]
		if a.StoredBytes != b.StoredBytes || a.Chunks != b.Chunks || a.UpstreamBytes != b.UpstreamBytes {
			t.Errorf("bump %d: cache form %+v\nfile form %+v", i+1, a, b)
		}
	}
	// Outputs.
	out := t.TempDir()
	if err := bench.WriteFiles(out, fromFiles); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.csv", "results.json", "ratio_by_bump.svg", "throughput_by_chunk_size.svg", "objects_by_chunk_size.svg"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil || len(b) == 0 {
			t.Errorf("%s: %v", f, err)
		}
		if strings.HasSuffix(f, ".svg") && (!strings.HasPrefix(string(b), "<svg") || !strings.Contains(string(b), "<polyline")) {
			t.Errorf("%s is not a line chart", f)
		}
	}
	csv, _ := os.ReadFile(filepath.Join(out, "results.csv"))
	if lines := strings.Count(string(csv), "\n"); lines != 1+len(fromFiles) {
		t.Errorf("results.csv has %d lines, want header + %d", lines, len(fromFiles))
	}
}

// With recompression after each bump, the same ingest stores fewer bytes,
// the row keeps what ingest alone stored, and per-package figures still add
// up to the store's total.
func TestBenchRecompress(t *testing.T) {
	_, dirs, _ := corpus(t)
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	cfgs := []bench.Config{{Preset: preset, Level: 1}, {Preset: preset, Level: 1, Recompress: 9}}
	res, err := bench.RunAll(t.Context(), bench.Options{Bumps: bumpsOf(t, dirs), Configs: cfgs})
	if err != nil {
		t.Fatal(err)
	}
	byCfg := map[string][]bench.Row{}
	for _, r := range res.Rows {
		byCfg[r.Config] = append(byCfg[r.Config], r)
	}
	plain, rc := byCfg[cfgs[0].Name()], byCfg[cfgs[1].Name()]
	if len(plain) != len(dirs) || len(rc) != len(dirs) || !strings.HasSuffix(cfgs[1].Name(), "+rc9") {
		t.Fatalf("rows: %v", byCfg)
	}
	if rc[0].StoredBeforeRecompress != plain[0].StoredBytes {
		t.Errorf("bump 1 before recompression: %d bytes, plain ingest stored %d", rc[0].StoredBeforeRecompress, plain[0].StoredBytes)
	}
	for i := range rc {
		if rc[i].StoredBytes >= plain[i].StoredBytes || rc[i].RecompressMBps <= 0 || rc[i].Recompress != 9 || rc[i].Chunks != plain[i].Chunks {
			t.Errorf("bump %d: recompressed %+v\nplain %+v", i+1, rc[i], plain[i])
		}
	}
	var sum uint64
	for _, p := range res.Packages {
		if p.Config == cfgs[1].Name() {
			sum += p.StoredBytes
		}
	}
	if last := rc[len(rc)-1]; sum != last.StoredBytes {
		t.Errorf("packages add up to %d stored bytes, the store holds %d", sum, last.StoredBytes)
	}
}

// With reverse deltas, ingesting a release shrinks its predecessor: the
// package's figures must take that off, so packages still add up to the
// store, and the releases after the first cost little.
func TestBenchReverseDeltasAddUp(t *testing.T) {
	base := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/encoding"))
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	var bumps []bench.Bump
	for v := range 3 {
		n := append([]byte(nil), base...)
		for i := 1000 + v*97; i+8 < len(n); i += 4 << 10 {
			copy(n[i:], fmt.Sprintf("release%d", v))
		}
		f := filepath.Join(t.TempDir(), fmt.Sprintf("%s-tool-%d.0.nar", nixtest.RandomHashPart(), v+1))
		if err := os.WriteFile(f, n, 0o644); err != nil {
			t.Fatal(err)
		}
		bumps = append(bumps, bench.Bump{Name: fmt.Sprintf("bump%d", v+1), Files: []string{f}})
	}
	res, err := bench.RunAll(t.Context(), bench.Options{Bumps: bumps, Configs: []bench.Config{{Preset: preset, Level: 3, Delta: true}}, ReverseDelta: true})
	if err != nil {
		t.Fatal(err)
	}
	rows := res.Rows
	last := rows[len(rows)-1]
	if len(res.Packages) != 1 || res.Packages[0].StoredBytes != last.StoredBytes {
		t.Errorf("packages %+v; the store holds %d bytes", res.Packages, last.StoredBytes)
	}
	if !last.ReverseDelta || last.StoredBytes > rows[0].StoredBytes*3/2 {
		t.Errorf("three releases stored in %d bytes, the first alone in %d (reverse %v)", last.StoredBytes, rows[0].StoredBytes, last.ReverseDelta)
	}
}
