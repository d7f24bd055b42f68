package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

func TestDirConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.Dir(t) })
}

// Without O_TMPFILE (some filesystems), Put writes a named temp file and
// renames it; the contract holds all the same.
func TestDirConformanceWithoutTmpfile(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		d := storetest.Dir(t)
		d.DisableTmpfile()
		return d
	})
}

func TestDirUsesTmpfileHere(t *testing.T) {
	d := storetest.Dir(t)
	if err := d.Put(t.Context(), chunker.Sum([]byte("x")), []byte("blob")); err != nil {
		t.Fatal(err)
	}
	if !d.UsesTmpfile() {
		t.Skip("this filesystem has no O_TMPFILE: the rename path is what runs")
	}
	entries, _ := os.ReadDir(filepath.Join(d.Root(), "tmp"))
	if len(entries) != 0 {
		t.Errorf("O_TMPFILE put left %d files in tmp/", len(entries))
	}
}

func TestOpenDirRemovesOnlyStaleTempFiles(t *testing.T) {
	root := t.TempDir()
	if _, err := store.OpenDir(root); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(root, "tmp", "stale")
	fresh := filepath.Join(root, "tmp", "fresh")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	if _, err := store.OpenDir(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp file survived: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temp file (maybe another writer's) was removed: %v", err)
	}
}

func textBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	words := []string{"nix", "store", "chunk", "zstd ", "delta\n", "/nix/store/", "lib", "share"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

func TestChunksRoundTripAndEncodingChoice(t *testing.T) {
	ctx := context.Background()
	c, err := store.NewChunks(storetest.Dir(t), store.ChunksOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want store.Encoding
	}{
		{"compressible", textBytes(100<<10, 1), store.EncZstd},
		{"incompressible", storetest.RandomBytes(100<<10, 2), store.EncRaw},
		{"empty", nil, store.EncRaw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := chunker.Sum(tc.data)
			w, err := c.Put(ctx, id, tc.data)
			if err != nil {
				t.Fatal(err)
			}
			if w.Encoding != tc.want {
				t.Errorf("encoding %v, want %v", w.Encoding, tc.want)
			}
			got, err := c.Get(ctx, id)
			if err != nil || !bytes.Equal(got, tc.data) {
				t.Fatalf("Get: %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestChunksDelta(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	base := storetest.RandomBytes(200<<10, 3)
	next := append([]byte(nil), base...)
	copy(next[5000:], "a small edit in the middle of an otherwise identical chunk")
	baseID, nextID := chunker.Sum(base), chunker.Sum(next)
	if _, err := c.Put(ctx, baseID, base); err != nil {
		t.Fatal(err)
	}
	blob, w, err := c.EncodeDelta(next, []store.Base{{ID: baseID, Data: base}})
	if err != nil {
		t.Fatal(err)
	}
	if w.StoredSize > 2<<10 {
		t.Errorf("delta of a near-identical chunk is %d bytes, want < 2 KiB", w.StoredSize)
	}
	if err := d.Put(ctx, nextID, blob); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, nextID)
	if err != nil || !bytes.Equal(got, next) {
		t.Fatalf("Get delta chunk: %v", err)
	}

	t.Run("MissingBase", func(t *testing.T) {
		d.Delete(ctx, baseID)
		if _, err := c.Get(ctx, nextID); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound for the missing base", err)
		}
	})
	t.Run("CorruptBase", func(t *testing.T) {
		// Store different bytes under the base's name: the base fails its own
		// hash check before the delta is even tried.
		bad, _ := c.Encode(storetest.RandomBytes(200<<10, 4))
		d.Put(ctx, baseID, bad)
		if _, err := c.Get(ctx, nextID); !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("got %v, want ErrCorrupt", err)
		}
	})
	t.Run("ChainDeeperThanLimit", func(t *testing.T) {
		d2, c2 := storetest.Chunks(t, store.ChunksOptions{MaxDeltaDepth: 1})
		c2.Put(ctx, baseID, base)
		b1, _, _ := c2.EncodeDelta(next, []store.Base{{ID: baseID, Data: base}})
		d2.Put(ctx, nextID, b1)
		third := append([]byte(nil), next...)
		third[0] ^= 1
		b2, _, _ := c2.EncodeDelta(third, []store.Base{{ID: nextID, Data: next}})
		d2.Put(ctx, chunker.Sum(third), b2)
		if _, err := c2.Get(ctx, chunker.Sum(third)); !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("depth-2 chain with limit 1: got %v, want ErrCorrupt", err)
		}
	})
}

// A chunk whose content came from two bases (it straddles their boundary)
// decodes from both, in order; a missing or damaged second base fails it.
func TestChunksMultiDelta(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	a, b := storetest.RandomBytes(100<<10, 7), storetest.RandomBytes(100<<10, 8)
	aID, bID := chunker.Sum(a), chunker.Sum(b)
	c.Put(ctx, aID, a)
	c.Put(ctx, bID, b)
	// The new chunk: the second half of a, an edit, the first half of b.
	next := append(append(append([]byte(nil), a[50<<10:]...), "an edit"...), b[:50<<10]...)
	nextID := chunker.Sum(next)
	single, _, _ := c.EncodeDelta(next, []store.Base{{ID: aID, Data: a}})
	blob, w, err := c.EncodeDelta(next, []store.Base{{ID: aID, Data: a}, {ID: bID, Data: b}})
	if err != nil {
		t.Fatal(err)
	}
	if w.Encoding != store.EncZstdMultiDelta || len(w.Bases) != 2 || w.Bases[0] != aID || w.Bases[1] != bID {
		t.Fatalf("written %+v", w)
	}
	if len(blob) > 2<<10 || len(single) < 40<<10 {
		t.Errorf("two bases: %d bytes, one base: %d bytes; want under 2 KiB and over 40 KiB", len(blob), len(single))
	}
	enc, bases, _, err := store.BlobHeader(blob)
	if err != nil || enc != store.EncZstdMultiDelta || len(bases) != 2 || bases[1].ID != bID || bases[1].Len != 0 {
		t.Fatalf("BlobHeader: %v %v %v", enc, bases, err)
	}
	d.Put(ctx, nextID, blob)
	if got, err := c.Get(ctx, nextID); err != nil || !bytes.Equal(got, next) {
		t.Fatalf("Get: %v", err)
	}

	// The same from the end of a and the start of b only: as small, and the
	// blob names the ranges.
	ranged, w, err := c.EncodeDelta(next, []store.Base{{ID: aID, Data: a, Off: 40 << 10, Len: 60 << 10}, {ID: bID, Data: b, Len: 60 << 10}})
	if err != nil || w.Encoding != store.EncZstdRangeDelta || len(w.Bases) != 2 || w.Bases[0] != aID || w.Bases[1] != bID {
		t.Fatalf("ranged: written %+v, %v", w, err)
	}
	if len(ranged) > 2<<10 {
		t.Errorf("two ranges: %d bytes; want under 2 KiB", len(ranged))
	}
	enc, bases, _, err = store.BlobHeader(ranged)
	if want := []store.BaseRef{{ID: aID, Off: 40 << 10, Len: 60 << 10}, {ID: bID, Len: 60 << 10}}; err != nil || enc != store.EncZstdRangeDelta || !reflect.DeepEqual(bases, want) {
		t.Fatalf("BlobHeader of ranged: %v %+v %v", enc, bases, err)
	}
	d.Delete(ctx, nextID) // Put keeps what is there
	d.Put(ctx, nextID, ranged)
	if got, err := c.Get(ctx, nextID); err != nil || !bytes.Equal(got, next) {
		t.Fatalf("Get ranged: %v", err)
	}
	// BlobBases reads the bases from the header alone; a plain blob has none.
	if got, err := c.BlobBases(ctx, nextID); err != nil || !reflect.DeepEqual(got, []chunker.ID{aID, bID}) {
		t.Errorf("BlobBases = %v, %v; want a's and b's IDs", got, err)
	}
	if got, err := c.BlobBases(ctx, aID); err != nil || len(got) != 0 {
		t.Errorf("BlobBases of a plain blob = %v, %v; want none", got, err)
	}
	if _, err := c.BlobBases(ctx, chunker.ID{7}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("BlobBases of a missing blob: %v, want ErrNotFound", err)
	}
	// A range past the end of its base (a damaged header) fails as corrupt.
	long := append(append([]byte(nil), a...), b...)
	past, _, err := c.EncodeDelta(next, []store.Base{{ID: aID, Data: long, Off: 40 << 10, Len: 70 << 10}, {ID: bID, Data: b}})
	if err != nil {
		t.Fatal(err)
	}
	d.Delete(ctx, nextID)
	d.Put(ctx, nextID, past)
	if _, err := c.Get(ctx, nextID); !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "outside its") {
		t.Errorf("range past its base: %v, want ErrCorrupt naming the range", err)
	}
	for _, r := range [][2]int{{50 << 10, 60 << 10}, {-1, 10}, {5, 0}} {
		if _, _, err := c.EncodeDelta(next, []store.Base{{ID: aID, Data: a, Off: r[0], Len: r[1]}, {ID: bID, Data: b, Len: 10}}); err == nil {
			t.Errorf("EncodeDelta took the range %d+%d of a %d-byte base", r[0], r[1], len(a))
		}
	}
	for _, hdr := range [][]byte{
		append([]byte{1, byte(store.EncZstdRangeDelta), 2}, aID[:]...),                                    // no range
		append(append([]byte{1, byte(store.EncZstdRangeDelta), 2}, aID[:]...), 0, 0),                      // empty range
		append(append([]byte{1, byte(store.EncZstdRangeDelta), 2}, aID[:]...), 0, 0xff, 0xff, 0xff, 0x7f), // past MaxChunkSize
	} {
		if _, _, _, err := store.BlobHeader(hdr); !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("header % x: %v, want ErrCorrupt", hdr[35:], err)
		}
	}
	d.Delete(ctx, nextID)
	d.Put(ctx, nextID, blob)
	if _, _, err := c.EncodeDelta(next, make([]store.Base, store.MaxDeltaBases+1)); err == nil {
		t.Error("more than MaxDeltaBases bases accepted")
	}
	bad, _ := c.Encode(storetest.RandomBytes(100<<10, 9))
	d.Delete(ctx, bID)
	if _, err := c.Get(ctx, nextID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second base missing: %v, want ErrNotFound", err)
	}
	d.Put(ctx, bID, bad)
	if _, err := c.Get(ctx, nextID); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("second base damaged: %v, want ErrCorrupt", err)
	}
}

func TestChunksDetectCorruption(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	data := textBytes(64<<10, 5)
	id := chunker.Sum(data)
	other := textBytes(64<<10, 6)
	for _, tc := range []struct {
		name string
		blob []byte
	}{
		{"OtherContent", func() []byte { b, _ := c.Encode(other); return b }()},
		{"FlippedByte", func() []byte { b, _ := c.Encode(data); b[len(b)/2] ^= 0xff; return b }()},
		{"Truncated", func() []byte { b, _ := c.Encode(data); return b[:len(b)/2] }()},
		{"UnknownVersion", []byte{9, 1, 2, 3}},
		{"Empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d.Delete(ctx, id)
			if err := d.Put(ctx, id, tc.blob); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, id); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			// Unchecked hands out whatever decodes, for a caller that
			// checks what it makes of it; what does not decode still fails.
			got, err := c.Unchecked(ctx, id)
			if tc.name == "OtherContent" {
				if err != nil || !bytes.Equal(got, other) {
					t.Errorf("Unchecked of a blob of other content: %v; want those bytes", err)
				}
			} else if !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("Unchecked: %v, want ErrCorrupt", err)
			}
		})
	}
	// Nor does it check a delta's base.
	base, other2 := textBytes(64<<10, 7), textBytes(64<<10, 8)
	baseID := chunker.Sum(base)
	next := append(slices.Clone(base), "and more"...)
	blob, _, err := c.EncodeDelta(next, []store.Base{{ID: baseID, Data: base}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Put(ctx, chunker.Sum(next), blob); err != nil {
		t.Fatal(err)
	}
	wrong, _ := c.Encode(other2)
	if err := d.Put(ctx, baseID, wrong); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, chunker.Sum(next)); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Get of a delta of a damaged base: %v, want ErrCorrupt", err)
	}
	if got, err := c.Unchecked(ctx, chunker.Sum(next)); err != nil || chunker.Sum(got) == chunker.Sum(next) {
		t.Errorf("Unchecked of a delta of a damaged base: %v; want other bytes, no error", err)
	}
}

func BenchmarkEncode(b *testing.B) {
	data := textBytes(256<<10, 9)
	for _, lvl := range []int{1, 3, 7, 19} {
		c, _ := store.NewChunks(nil, store.ChunksOptions{Level: lvl})
		b.Run("level"+string(rune('0'+lvl/10))+string(rune('0'+lvl%10)), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				c.Encode(data)
			}
		})
	}
}

// BenchmarkDirPut writes new 128 KiB blobs to a directory store (without the
// sync), the per-chunk file-system cost of ingesting new data.
func BenchmarkDirPut(b *testing.B) {
	d, err := store.OpenDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	blob := storetest.RandomBytes(128<<10, 1)
	b.SetBytes(int64(len(blob)))
	i := 0
	for b.Loop() {
		i++
		if err := d.Put(context.Background(), chunker.Sum([]byte(fmt.Sprint(i))), blob); err != nil {
			b.Fatal(err)
		}
	}
}

// Delta encoders and decoders are pooled and get a new dictionary each
// time: many deltas against different bases, concurrently, all round-trip.
func TestChunksDeltaCodersReused(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	// Decoded chunks are checked again once every goroutine is done: a
	// result sharing memory with a reused dictionary buffer would change.
	gots, wants := make([][]byte, 64), make([][]byte, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := storetest.RandomBytes(64<<10+i*1000, uint64(100+i))
			next := append([]byte(nil), base...)
			copy(next[i*10:], "edited")
			baseID, nextID := chunker.Sum(base), chunker.Sum(next)
			if _, err := c.Put(ctx, baseID, base); err != nil {
				errs <- err
				return
			}
			bases := []store.Base{{ID: baseID, Data: base}}
			if i%2 == 1 { // some with two bases
				other := storetest.RandomBytes(10<<10, uint64(1000+i))
				otherID := chunker.Sum(other)
				c.Put(ctx, otherID, other)
				bases = append([]store.Base{{ID: otherID, Data: other}}, bases...)
			}
			blob, w, err := c.EncodeDelta(next, bases)
			if err != nil {
				errs <- err
				return
			}
			if w.StoredSize > 2<<10 {
				errs <- fmt.Errorf("delta %d: %d bytes, the dictionary was not used", i, w.StoredSize)
				return
			}
			d.Put(ctx, nextID, blob)
			got, err := c.Get(ctx, nextID)
			if err != nil || !bytes.Equal(got, next) {
				errs <- fmt.Errorf("delta %d: %v", i, err)
			}
			gots[i], wants[i] = got, next
		}()
	}
	wg.Wait()
	for i := range gots {
		if gots[i] != nil && !bytes.Equal(gots[i], wants[i]) {
			t.Errorf("delta %d: decoded bytes changed after Get returned", i)
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Delta chains stay bounded when bases load through a BaseFunc that decodes
// with GetWith itself (as caches do): blobs naming each other fail as
// corrupt instead of recursing forever.
func TestChunksDeltaDepthBoundThroughBaseFunc(t *testing.T) {
	ctx := context.Background()
	d, c := storetest.Chunks(t, store.ChunksOptions{})
	a, _ := storetest.DeltaCycle(t, d, c)
	calls := 0
	var load store.BaseFunc
	load = func(ctx context.Context, id chunker.ID) ([]byte, error) {
		if calls++; calls > 100 {
			return nil, errors.New("base loader called 100 times: the chain is unbounded")
		}
		return c.GetWith(ctx, id, load)
	}
	if _, err := c.GetWith(ctx, a, load); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("cycle through a base loader: %v, want ErrCorrupt", err)
	}
	if calls > store.MaxDeltaDepthLimit {
		t.Errorf("base loader called %d times, chains are bounded at %d", calls, store.MaxDeltaDepthLimit)
	}
}

func TestLRU(t *testing.T) {
	l := store.NewLRU(100)
	id := func(i int) chunker.ID { return chunker.Sum([]byte{byte(i)}) }
	for i := range 4 {
		l.Add(id(i), make([]byte, 25))
	}
	l.Get(id(0)) // most recent now: id(1) goes first
	l.Add(id(4), make([]byte, 25))
	if l.Has(id(1)) || !l.Has(id(0)) || l.Len() != 4 || l.Bytes() != 100 {
		t.Fatalf("after eviction: has 1 %v, has 0 %v, %d chunks, %d bytes", l.Has(id(1)), l.Has(id(0)), l.Len(), l.Bytes())
	}
	if l.Add(id(5), make([]byte, 26)); l.Has(id(5)) {
		t.Error("a chunk over a quarter of the bound was kept")
	}
	z := store.NewLRU(0)
	if z.Add(id(6), nil); z.Len() != 0 {
		t.Error("an LRU of 0 bytes kept a chunk")
	}
}

// Create reports whether it stored the blob; a blob already there stays,
// also on the path without O_TMPFILE.
func TestDirCreateKeepsABlobThere(t *testing.T) {
	for _, tmpfile := range []bool{true, false} {
		d := storetest.Dir(t)
		if !tmpfile {
			d.DisableTmpfile()
		}
		id := chunker.Sum([]byte("x"))
		if created, err := d.Create(t.Context(), id, []byte("first")); err != nil || !created {
			t.Fatalf("tmpfile %v: first Create = %v, %v; want created", tmpfile, created, err)
		}
		if created, err := d.Create(t.Context(), id, []byte("second")); err != nil || created {
			t.Fatalf("tmpfile %v: second Create = %v, %v; want not created", tmpfile, created, err)
		}
		if got := storetest.ReadBlob(t, d, id); string(got) != "first" {
			t.Errorf("tmpfile %v: blob %q, want the first", tmpfile, got)
		}
	}
}

// PutBlob keeps a blob already there that needs the same bases (another
// level, say), and replaces one that needs others.
func TestPutBlobReplacesOneNeedingOtherBases(t *testing.T) {
	ctx := t.Context()
	d, c := storetest.Chunks(t, store.ChunksOptions{Level: 1})
	a, b := textBytes(64<<10, 11), textBytes(64<<10, 12)
	x := append(slices.Clone(a), "x"...)
	id := chunker.Sum(x)
	onA, _, err := c.EncodeDelta(x, []store.Base{{ID: chunker.Sum(a), Data: a}})
	if err != nil {
		t.Fatal(err)
	}
	onB, _, err := c.EncodeDelta(x, []store.Base{{ID: chunker.Sum(b), Data: b}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Put(ctx, id, onA); err != nil {
		t.Fatal(err)
	}
	c9, err := store.NewChunks(d, store.ChunksOptions{Level: 9})
	if err != nil {
		t.Fatal(err)
	}
	onA9, _, err := c9.EncodeDelta(x, []store.Base{{ID: chunker.Sum(a), Data: a}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(onA9, onA) {
		t.Fatal("the same delta at two levels: the test would not tell kept from replaced")
	}
	plain, _ := c.Encode(x)
	plain = slices.Clone(plain)
	for _, tc := range []struct {
		name string
		blob []byte
		want []byte
	}{
		{"same base, another level", onA9, onA},
		{"another base", onB, onB},
		{"plain", plain, plain},
	} {
		if err := c.PutBlob(ctx, id, tc.blob); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := storetest.ReadBlob(t, d, id); !bytes.Equal(got, tc.want) {
			t.Errorf("%s: the blob in place is not the one wanted", tc.name)
		}
	}
}
