package ingest_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/refnorm"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// versionTree lays out a package version: real Go sources (edited in v2),
// plus files that embed store paths of its references and of itself, a hash
// that is not a listed reference, and placeholder-looking bytes.
func versionTree(t *testing.T, v int, self, dep, unlisted string) string {
	t.Helper()
	dir := t.TempDir()
	nixtest.CopyTree(t, nixtest.GoRoot(t, "src/net/http"), filepath.Join(dir, "share"))
	if v == 2 { // a new release: some files edited, one added
		for _, f := range []string{"server.go", "transport.go", "request.go"} {
			p := filepath.Join(dir, "share", f)
			b, _ := os.ReadFile(p)
			b = append([]byte("// release 2\n"), b...)
			b = append(b[:len(b)/2], append([]byte("\n// changed in release 2\n"), b[len(b)/2:]...)...)
			os.WriteFile(p, b, 0o644)
		}
		os.WriteFile(filepath.Join(dir, "share", "NEWS"), []byte("release 2\n"), 0o644)
	}
	var refs strings.Builder
	for i := range 300 {
		fmt.Fprintf(&refs, "#!/nix/store/%s-bash/bin/sh\nexec /nix/store/%s-pkg/bin/run %d\nrpath=/nix/store/%s-glibc/lib\n", dep, self, i, dep)
		fmt.Fprintf(&refs, "unlisted /nix/store/%s-other and /nix/store/%s-placeholder %s\n", unlisted, refnorm.Placeholder, refnorm.Placeholder)
	}
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "run"), []byte(refs.String()), 0o755)
	return dir
}

type version struct {
	ni  *narinfo.NarInfo
	nar []byte
}

// publish adds v1, a mass rebuild of v1 (new hashes only) and v2 to a cache.
func publish(t *testing.T, e *env) []version {
	t.Helper()
	unlisted := nixtest.RandomHashPart()
	var out []version
	for _, v := range []int{1, 1, 2} {
		self, dep := nixtest.RandomHashPart(), nixtest.RandomHashPart()
		nar := nixtest.DumpPath(t, versionTree(t, v, self, dep, unlisted))
		ni := e.cache.Add(t, nixtest.Path{Name: fmt.Sprintf("pkg-%d.0", v), HashPart: self, NAR: nar,
			References: []string{self + fmt.Sprintf("-pkg-%d.0", v), dep + "-glibc"}})
		out = append(out, version{ni, nar})
	}
	return out
}

func ingestAll(t *testing.T, e *env, vs []version, mod func(*ingest.Options)) []*ingest.Result {
	t.Helper()
	in := e.ingester(t, e.cache.URL(), mod)
	var res []*ingest.Result
	for _, v := range vs {
		r, err := in.IngestPath(t.Context(), v.ni.StorePath)
		if err != nil {
			t.Fatal(err)
		}
		res = append(res, r)
	}
	return res
}

func TestNormalizedAndDeltaNARsAreByteExact(t *testing.T) {
	plain := newEnv(t)
	vs := publish(t, plain)
	plainRes := ingestAll(t, plain, vs, nil)

	e := newEnv(t)
	e.cache = plain.cache
	spills := t.TempDir()
	res := ingestAll(t, e, vs, func(o *ingest.Options) { o.Normalize, o.Delta, o.TempDir = true, true, spills })
	if left, err := os.ReadDir(spills); err != nil || len(left) != 0 {
		t.Errorf("delta ingest left %v in its spill directory (%v)", left, err)
	}

	for i, v := range vs {
		if got := e.readBack(t, v.ni); string(got) != string(v.nar) {
			t.Fatalf("version %d does not reassemble byte-exact", i)
		}
		nar, _ := e.ix.NAR(t.Context(), v.ni.NarHash)
		if nar.Transform != refnorm.Transform {
			t.Errorf("version %d: transform %q", i, nar.Transform)
		}
		// Ranges that start and end inside replaced hashes restore exactly too.
		m, _ := refnorm.Unmarshal(nar.RefMap)
		off := int64(m.Offsets[len(m.Offsets)/2]) + 7
		r, err := reassembly.NewReader(t.Context(), e.chunks, nar, off, 1000, reassembly.ReaderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil || string(b) != string(v.nar[off:off+1000]) {
			t.Errorf("version %d: range inside a replaced hash differs (%v)", i, err)
		}
	}
	// The rebuild differs from v1 only in store hashes: with normalization it
	// adds (almost) nothing; without, its reference-bearing chunks are new.
	if res[1].StoredBytes >= plainRes[1].StoredBytes || res[1].NewChunks > 1 {
		t.Errorf("mass rebuild: normalized stored %d bytes in %d new chunks, plain %d bytes in %d", res[1].StoredBytes, res[1].NewChunks, plainRes[1].StoredBytes, plainRes[1].NewChunks)
	}
	// v2 is stored partly as deltas against v1, and smaller than plain.
	nar2, _ := e.ix.NAR(t.Context(), vs[2].ni.NarHash)
	dcs := deltaChunks(t, e.ix, nar2)
	deltas := len(dcs)
	for _, c := range dcs {
		if len(c.Bases) == 0 || c.Depth == 0 {
			t.Errorf("delta chunk %s without base or depth", c.ID)
		}
	}
	if deltas == 0 {
		t.Fatal("no chunk of the new release was delta-encoded")
	}
	if res[2].StoredBytes*2 > plainRes[2].StoredBytes {
		t.Errorf("new release stored %d bytes with delta, %d without; want at least 2x smaller", res[2].StoredBytes, plainRes[2].StoredBytes)
	}
	t.Logf("new release: %d delta chunks; stored %d bytes (plain CDC %d); rebuild stored %d (plain %d)",
		deltas, res[2].StoredBytes, plainRes[2].StoredBytes, res[1].StoredBytes, plainRes[1].StoredBytes)
}

func TestDeltaBaseMissingOrCorruptFailsClosed(t *testing.T) {
	for _, damage := range []string{"missing", "corrupt"} {
		t.Run(damage, func(t *testing.T) {
			e := newEnv(t)
			vs := publish(t, e)
			ingestAll(t, e, vs, func(o *ingest.Options) { o.Delta = true })
			nar2, _ := e.ix.NAR(t.Context(), vs[2].ni.NarHash)
			dcs := deltaChunks(t, e.ix, nar2)
			if len(dcs) == 0 {
				t.Fatal("no delta chunk")
			}
			base := dcs[0].Bases[len(dcs[0].Bases)-1] // the best base
			if damage == "missing" {
				e.dir.Delete(t.Context(), base)
			} else {
				storetest.Corrupt(t, e.dir, base)
			}
			r, err := reassembly.NewReader(t.Context(), reassembly.NewCache(e.chunks, 1<<20), nar2, 0, -1, reassembly.ReaderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			want := store.ErrNotFound
			if damage == "corrupt" {
				want = store.ErrCorrupt
			}
			if !errors.Is(err, want) || len(got) >= len(vs[2].nar) {
				t.Fatalf("read %d of %d bytes, err %v; want %v before the end", len(got), len(vs[2].nar), err, want)
			}
		})
	}
}

// A package whose previous version is not in the store (here: a different
// name) still finds delta bases anywhere in the store by similarity keys.
func TestSimilarSearchAcrossPackages(t *testing.T) {
	base := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	other := append([]byte(nil), base...)
	for i := 1000; i+8 < len(other); i += 16 << 10 {
		copy(other[i:], "renamed!")
	}
	for _, search := range []bool{false, true} {
		t.Run(fmt.Sprint("search=", search), func(t *testing.T) {
			e := newEnv(t)
			a := e.cache.Add(t, nixtest.Path{Name: "alpha-1.0", NAR: base})
			b := e.cache.Add(t, nixtest.Path{Name: "beta-1.0", NAR: other})
			in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) { o.Delta, o.SimilarSearch = true, search })
			if _, err := in.IngestPath(t.Context(), a.StorePath); err != nil {
				t.Fatal(err)
			}
			res, err := in.IngestPath(t.Context(), b.StorePath)
			if err != nil {
				t.Fatal(err)
			}
			nar, _ := e.ix.NAR(t.Context(), b.NarHash)
			dcs := deltaChunks(t, e.ix, nar)
			if search && (len(dcs) == 0 || res.StoredBytes*5 > uint64(len(other))/10) {
				t.Errorf("with search: %d delta chunks, %d bytes stored for a %d-byte NAR", len(dcs), res.StoredBytes, len(other))
			}
			if !search && len(dcs) != 0 {
				t.Errorf("without search: %d delta chunks (no predecessor to find them in)", len(dcs))
			}
			if !bytes.Equal(e.readBack(t, b), other) {
				t.Error("not read back")
			}
		})
	}
}

// Delta chains grow release by release up to the configured depth and no
// further; releases past it still delta, against the newest chunks below
// the cap (found through the predecessor, or by store-wide similar search
// when each release is a different package); every release reads
// back byte-exact with the reader's defaults, which follow any depth a
// writer may choose.
func TestMaxDeltaDepthSetting(t *testing.T) {
	preset, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	nars := releases(t, 6)
	for _, tc := range []struct {
		limit   int
		similar bool // each release a different package: only similar search finds bases
	}{{2, false}, {5, false}, {1, true}} {
		t.Run(fmt.Sprintf("depth=%d,similar=%v", tc.limit, tc.similar), func(t *testing.T) {
			e := newEnv(t)
			var nis []*narinfo.NarInfo
			for v, n := range nars {
				name := "tool"
				if tc.similar {
					name += string(rune('a' + v))
				}
				nis = append(nis, e.cache.Add(t, nixtest.Path{Name: fmt.Sprintf("%s-%d.0", name, v+1), NAR: n, Compression: "zstd"}))
			}
			in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) {
				o.Delta, o.SimilarSearch, o.MaxDeltaDepth, o.Preset = true, tc.similar, tc.limit, preset
			})
			deepest := 0
			var firstStored int64
			for v, ni := range nis {
				before := in.Progress.NewStoredBytes.Load()
				if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
					t.Fatal(err)
				}
				stored := in.Progress.NewStoredBytes.Load() - before
				if v == 0 {
					firstStored = stored
				} else if stored*4 > firstStored {
					t.Errorf("release %d stored %d bytes, release 1 %d: not delta-encoded", v+1, stored, firstStored)
				}
				nar, _ := e.ix.NAR(t.Context(), ni.NarHash)
				for _, c := range deltaChunks(t, e.ix, nar) {
					deepest = max(deepest, int(c.Depth))
					if int(c.Depth) > tc.limit {
						t.Fatalf("release %d: chunk at depth %d, limit %d", v+1, c.Depth, tc.limit)
					}
				}
				if got := e.readBack(t, ni); string(got) != string(nars[v]) {
					t.Fatalf("release %d does not read back byte-exact", v+1)
				}
			}
			if deepest != min(tc.limit, len(nars)-1) {
				t.Errorf("deepest chain %d after %d releases with limit %d; want %d", deepest, len(nars), tc.limit, min(tc.limit, len(nars)-1))
			}
		})
	}
	if _, err := ingest.New(nil, newEnv(t).ix, nil, ingest.Options{MaxDeltaDepth: store.MaxDeltaDepthLimit + 1}); err == nil {
		t.Error("a depth over the limit was accepted")
	}
}

// A new release whose chunk boundaries all moved (bytes changed next to every
// old boundary) has chunks spanning two old ones. Each is a delta against the
// old chunk holding most of it, with the neighbour's end next to that chunk
// (half as long as the new chunk) in the dictionary, not the whole neighbour;
// it stays a small fraction of the plain bytes and reads back byte-exact.
func TestDeltaNeighbourRanges(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	text := func(n int, seed uint64) []byte { // random lower-case words: no 8 bytes repeat often
		r := rand.New(rand.NewPCG(seed, 3))
		b := make([]byte, n)
		for i := range b {
			if b[i] = byte('a' + r.IntN(26)); r.IntN(6) == 0 {
				b[i] = ' '
			}
		}
		return b
	}
	os.WriteFile(filepath.Join(dir, "data"), text(3<<20, 1), 0o644)
	v1 := nixtest.DumpPath(t, dir)
	ni1 := e.cache.Add(t, nixtest.Path{Name: "pkg-1.0", HashPart: nixtest.RandomHashPart(), NAR: v1})
	in := e.ingester(t, e.cache.URL(), func(o *ingest.Options) { o.Delta = true })
	if _, err := in.IngestPath(t.Context(), ni1.StorePath); err != nil {
		t.Fatal(err)
	}
	nar1, _ := e.ix.NAR(t.Context(), ni1.NarHash)
	v2 := append([]byte(nil), v1...)
	for _, c := range nar1.Chunks[1:] {
		copy(v2[c.Offset-16:], text(16, c.Offset)) // the cut point moves
	}
	ni2 := e.cache.Add(t, nixtest.Path{Name: "pkg-2.0", HashPart: nixtest.RandomHashPart(), NAR: v2})
	res, err := in.IngestPath(t.Context(), ni2.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.readBack(t, ni2); !bytes.Equal(got, v2) {
		t.Fatal("the new release does not read back byte-exact")
	}
	nar2, _ := e.ix.NAR(t.Context(), ni2.NarHash)
	sizes := map[chunker.ID]int{}
	for _, c := range append(nar1.Chunks, nar2.Chunks...) {
		sizes[c.ID] = int(c.Size)
	}
	encs := map[store.Encoding]int{}
	for _, c := range deltaChunks(t, e.ix, nar2) {
		blob := storetest.ReadBlob(t, e.dir, c.ID)
		enc, refs, _, err := store.BlobHeader(blob)
		if err != nil {
			t.Fatal(err)
		}
		encs[enc]++
		if enc != store.EncZstdRangeDelta {
			continue
		}
		whole := func(r store.BaseRef) bool { return r.Off == 0 && r.Len == sizes[r.ID] }
		if last := refs[len(refs)-1]; !whole(last) {
			t.Errorf("chunk %s: best base %s (%d bytes) is in the dictionary as %d+%d; want all of it", c.ID, last.ID, sizes[last.ID], last.Off, last.Len)
		}
		for _, r := range refs[:len(refs)-1] {
			head, tail := r.Off == 0, r.Off+r.Len == sizes[r.ID]
			if !whole(r) && (r.Len != int(c.Size)/2 || head == tail) {
				t.Errorf("chunk %s (%d bytes): neighbour %s of %d bytes in the dictionary as %d+%d; want all of it or its first or last %d bytes",
					c.ID, c.Size, r.ID, sizes[r.ID], r.Off, r.Len, c.Size/2)
			}
		}
	}
	ranged := encs[store.EncZstdRangeDelta]
	if ranged < len(nar2.Chunks)/4 {
		t.Errorf("%d of %d chunks are range deltas (%v); want a good part", ranged, len(nar2.Chunks), encs)
	}
	plain := 0
	for _, c := range nar2.Chunks {
		data, err := e.chunks.Get(t.Context(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		_, w := e.chunks.Encode(data)
		plain += w.StoredSize
	}
	if res.StoredBytes*8 > uint64(plain) {
		t.Errorf("new release stored %d bytes; plain zstd %d", res.StoredBytes, plain)
	}
	t.Logf("%d chunks: %v; %d bytes stored, plain zstd %d", len(nar2.Chunks), encs, res.StoredBytes, plain)
}
