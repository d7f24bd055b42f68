package migrate_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/migrate"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

func TestMain(m *testing.M) { testservers.Main(m) }

type cache struct {
	ix     index.Index
	st     store.Store
	chunks *store.Chunks
}

func sqliteDir(t *testing.T) *cache {
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
	return wrap(t, ix, d)
}

func wrap(t *testing.T, ix index.Index, st store.Store) *cache {
	c, err := store.NewChunks(st, store.ChunksOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &cache{ix: ix, st: st, chunks: c}
}

// failingStore fails every Put once armed and after `after` more Puts.
type failingStore struct {
	store.Store
	armed atomic.Bool
	after atomic.Int64
}

var errInjected = errors.New("injected write failure")

func (f *failingStore) Put(ctx context.Context, id chunker.ID, blob []byte) error {
	if f.armed.Load() && f.after.Add(-1) < 0 {
		return errInjected
	}
	return f.Store.Put(ctx, id, blob)
}

// release makes a version of a package: base with 8 bytes changed every
// 16 KiB from offset seed, so every chunk differs from the previous version
// and is stored as a delta against it.
func release(base []byte, seed int) []byte {
	out := append([]byte(nil), base...)
	for i := seed * 97; i+8 < len(out); i += 16 << 10 {
		copy(out[i:], "release!")
	}
	return out
}

var releases atomic.Int64

// fill ingests three versions of one package (delta chains) and one other
// path into src, and returns their narinfos.
func fill(t *testing.T, src *cache, up *nixtest.Cache, names ...string) []*narinfo.NarInfo {
	t.Helper()
	base := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))
	var nis []*narinfo.NarInfo
	for _, name := range names {
		nar := release(base, int(releases.Add(1)))
		if name == "other-1.0" {
			nar = nixtest.DumpPath(t, nixtest.GoRoot(t, "src/encoding/json"))
		}
		nis = append(nis, up.Add(t, nixtest.Path{Name: name, NAR: nar, Compression: "xz"}))
	}
	u, err := ingest.NewUpstream(up.URL(), ingest.UpstreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
	in, err := ingest.New(u, src.ix, src.chunks, ingest.Options{Preset: p, Keys: narinfo.PublicKeys{up.PublicKey}, Normalize: true, Delta: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, ni := range nis {
		if _, err := in.IngestPath(t.Context(), ni.StorePath); err != nil {
			t.Fatal(err)
		}
	}
	return nis
}

// checkNAR reassembles a NAR from c and checks it against the narinfo.
func checkNAR(t *testing.T, c *cache, ni *narinfo.NarInfo) {
	t.Helper()
	nar, err := c.ix.NAR(t.Context(), ni.NarHash)
	if err != nil {
		t.Fatalf("%s: %v", ni.StorePath, err)
	}
	rd, err := reassembly.NewReader(t.Context(), reassembly.NewCache(c.chunks, 0), nar, 0, -1, reassembly.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	h := sha256.New()
	if n, err := io.Copy(h, rd); err != nil || uint64(n) != ni.NarSize || [32]byte(h.Sum(nil)) != ni.NarHash {
		t.Fatalf("%s: %d bytes, %v: not the NAR", ni.StorePath, n, err)
	}
}

func deltaChunks(t *testing.T, c *cache) int {
	t.Helper()
	var ids []chunker.ID
	c.st.Walk(t.Context(), func(id chunker.ID, _ int64) error { ids = append(ids, id); return nil })
	recs, err := c.ix.Chunks(t.Context(), ids)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if len(r.Bases) > 0 {
			n++
		}
	}
	return n
}

// migrateAndCheck copies src into dst through an interruption, resumes, and
// checks that dst serves everything src does, with the same chunk records.
func migrateAndCheck(t *testing.T, src *cache, dst func(st store.Store) *cache, dstStore store.Store) {
	ctx := t.Context()
	up := nixtest.NewCache(t, "upstream-1")
	nis := fill(t, src, up, "pkg-1.0", "pkg-2.0", "other-1.0", "pkg-3.0")
	if n := deltaChunks(t, src); n == 0 {
		t.Fatal("the source has no delta chunks: the test would not cover delta bases")
	}
	srcStats, _ := src.ix.Stats(ctx)

	// Interrupted: the destination store fails part-way.
	fs := &failingStore{Store: dstStore}
	fs.after.Store(int64(srcStats.Chunks / 2))
	fs.armed.Store(true)
	d := dst(fs)
	cp := migrate.New(src.ix, src.chunks, d.ix, d.chunks, migrate.Options{Jobs: 4})
	if err := cp.Run(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("interrupted run: %v, want the injected error", err)
	}
	copied := 0
	for _, ni := range nis {
		if ok, _ := d.ix.HasNAR(ctx, ni.NarHash); ok {
			copied++
			checkNAR(t, d, ni) // whatever was committed is whole
		}
	}
	if copied == len(nis) {
		t.Fatal("the interruption came too late to test resuming")
	}
	firstChunks := cp.Progress.Chunks.Load()

	// Resumed.
	fs.armed.Store(false)
	cp = migrate.New(src.ix, src.chunks, d.ix, d.chunks, migrate.Options{})
	if err := cp.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := cp.Progress.NARsCopied.Load(); got != int64(len(nis)-copied) {
		t.Errorf("resumed run copied %d NARs, want the %d missing", got, len(nis)-copied)
	}
	if cp.Progress.Chunks.Load()+firstChunks < srcStats.Chunks {
		t.Errorf("%d+%d chunks copied, source has %d", firstChunks, cp.Progress.Chunks.Load(), srcStats.Chunks)
	}
	for _, ni := range nis {
		checkNAR(t, d, ni)
		got, err := d.ix.NarInfo(ctx, ni.HashPart())
		want, _ := src.ix.NarInfo(ctx, ni.HashPart())
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("narinfo %s: %v\n got %+v\nwant %+v", ni.StorePath, err, got, want)
		}
	}
	dstStats, _ := d.ix.Stats(ctx)
	if dstStats.NARs != srcStats.NARs || dstStats.NarInfos != srcStats.NarInfos || dstStats.Chunks != srcStats.Chunks ||
		dstStats.StoredBytes != srcStats.StoredBytes || dstStats.ChunkBytes != srcStats.ChunkBytes {
		t.Errorf("stats differ:\n src %+v\n dst %+v", srcStats, dstStats)
	}
	if a, b := deltaChunks(t, src), deltaChunks(t, d); a != b {
		t.Errorf("%d delta chunks in the source, %d in the destination", a, b)
	}
	// Similarity keys came along: a plain chunk is found by its own keys.
	first, _ := d.ix.NAR(ctx, nis[0].NarHash)
	data, err := d.chunks.Get(ctx, first.Chunks[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err := d.ix.SimilarChunks(ctx, ingest.SimilarityKeys(data), 8); err != nil || !slices.Contains(ids, first.Chunks[1].ID) {
		t.Errorf("destination similarity search for a copied chunk: %v %v", ids, err)
	}
	// Lineage: the destination's newest pkg is still pkg-3.0.
	if p, err := d.ix.Predecessor(ctx, "pkg"); err != nil || p.Hash != nis[3].NarHash {
		t.Errorf("destination predecessor of pkg: %v, want pkg-3.0's NAR", err)
	}

	// The source keeps working; a later run copies only what is new.
	more := fill(t, src, up, "pkg-4.0")
	cp = migrate.New(src.ix, src.chunks, d.ix, d.chunks, migrate.Options{})
	if err := cp.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if cp.Progress.NARsCopied.Load() != 1 || cp.Progress.NarInfos.Load() != 1 {
		t.Errorf("catch-up run copied %d NARs and %d narinfos, want 1 and 1", cp.Progress.NARsCopied.Load(), cp.Progress.NarInfos.Load())
	}
	checkNAR(t, d, more[0])
}

func TestMigrateSQLiteToSQLite(t *testing.T) {
	root := t.TempDir()
	migrateAndCheck(t, sqliteDir(t), func(st store.Store) *cache {
		ix, err := index.OpenSQLite(filepath.Join(root, "index.db"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ix.Close() })
		return wrap(t, ix, st)
	}, mustDir(t, filepath.Join(root, "chunks")))
}

func TestMigrateToPostgresAndS3(t *testing.T) {
	srv := testservers.MinIO(t)
	dsn := testservers.Postgres(t)
	s3, err := store.OpenS3(t.Context(), store.S3Options{Endpoint: srv.Endpoint, Region: "us-east-1", Bucket: srv.Bucket(t), Prefix: "migrated",
		PathStyle: true, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	migrateAndCheck(t, sqliteDir(t), func(st store.Store) *cache {
		ix, err := index.OpenPostgres(t.Context(), dsn, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ix.Close() })
		return wrap(t, ix, st)
	}, s3)
}

func mustDir(t *testing.T, p string) *store.Dir {
	d, err := store.OpenDir(p)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestMigrateBlobMidRewrite copies a source stopped between recording a
// reverse-delta rewrite of a chunk and replacing its blob: the record names
// new bases, the blob still needs its old ones. The destination must not
// take the blob with a record that names bases it does not need.
func TestMigrateBlobMidRewrite(t *testing.T) {
	ctx := t.Context()
	src := sqliteDir(t)
	up := nixtest.NewCache(t, "upstream-1")
	nis := fill(t, src, up, "pkg-1.0", "other-1.0", "pkg-2.0")

	// A delta chunk of pkg-2.0, and a plain chunk of other-1.0 to record
	// as its new base.
	second, err := src.ix.NAR(ctx, nis[2].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	other, err := src.ix.NAR(ctx, nis[1].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	var old index.Chunk
	for _, ref := range second.Chunks {
		recs, err := src.ix.Chunks(ctx, []chunker.ID{ref.ID})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs[0].Bases) > 0 {
			old = recs[0]
			break
		}
	}
	if old.ID.IsZero() {
		t.Fatal("pkg-2.0 has no delta chunk")
	}
	rw := old
	rw.Bases = []chunker.ID{other.Chunks[0].ID}
	rw.Encoding = uint8(store.EncZstdDelta)
	if res, err := src.ix.Rebase(ctx, []index.Rewrite{{C: rw, Old: old}}, store.DefaultMaxDeltaDepth); err != nil || res[0] != index.Rebased {
		t.Fatalf("rebase: %v %v", res, err)
	}
	// The blob is not replaced: it still needs old's bases.

	dst := sqliteDir(t)
	cp := migrate.New(src.ix, src.chunks, dst.ix, dst.chunks, migrate.Options{})
	if err := cp.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if n := cp.Progress.Reencoded.Load(); n != 1 {
		t.Errorf("%d chunks copied plain, want the 1 mid-rewrite", n)
	}
	for _, ni := range nis {
		checkNAR(t, dst, ni)
	}
	// Every base a destination blob needs is named by that chunk's record.
	var ids []chunker.ID
	dst.st.Walk(ctx, func(id chunker.ID, _ int64) error { ids = append(ids, id); return nil })
	recs, err := dst.ix.Chunks(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		need, err := dst.chunks.BlobBases(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range need {
			if !slices.Contains(recs[i].Bases, b) {
				t.Errorf("destination chunk %s needs base %s, which its record (bases %v) does not name", id, b, recs[i].Bases)
			}
		}
	}
	if deltaChunks(t, dst) == 0 {
		t.Error("no delta chunk copied as a delta")
	}
}
