package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testenv"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

// Recode rewrites plain, single-base and multi-base chunks at a stronger
// level with the pure-Go encoder and with the zstd program (whose frames
// name no dictionary): same bytes on read, same bases, smaller blobs.
func TestRecode(t *testing.T) {
	encoders := map[string]func(t *testing.T) store.FrameEncoder{
		"go": func(t *testing.T) store.FrameEncoder {
			e, err := store.NewFrameEncoder(19, "go")
			if err != nil {
				t.Fatal(err)
			}
			if e.Level() != store.GoMaxLevel {
				t.Errorf("go encoder at 19 reports level %d, want %d", e.Level(), store.GoMaxLevel)
			}
			return e
		},
		"exec": func(t *testing.T) store.FrameEncoder {
			testenv.LookPath(t, "zstd", "apt install zstd")
			e, err := store.NewFrameEncoder(19, "exec")
			if err != nil {
				t.Fatal(err)
			}
			if e.Level() != 19 {
				t.Errorf("zstd program at 19 reports level %d", e.Level())
			}
			return e
		},
	}
	for name, newEnc := range encoders {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			enc := newEnc(t)
			d, c := storetest.Chunks(t, store.ChunksOptions{Level: 1})
			a, b := textBytes(200<<10, 11), textBytes(200<<10, 12)
			aID, bID := chunker.Sum(a), chunker.Sum(b)
			c.Put(ctx, aID, a)
			c.Put(ctx, bID, b)
			// Half old content, half new: the new half is where the level shows.
			one := append(append([]byte(nil), a[:100<<10]...), textBytes(100<<10, 13)...)
			two := append(append(append([]byte(nil), a[150<<10:]...), textBytes(100<<10, 14)...), b[:50<<10]...)
			oneBlob, _, _ := c.EncodeDelta(one, []store.Base{{ID: aID, Data: a}})
			twoBlob, _, _ := c.EncodeDelta(two, []store.Base{{ID: aID, Data: a}, {ID: bID, Data: b}})
			// Like two, from the end of a and the start of b only.
			three := append(append(append([]byte(nil), a[160<<10:]...), textBytes(100<<10, 16)...), b[:40<<10]...)
			threeBlob, _, _ := c.EncodeDelta(three, []store.Base{{ID: aID, Data: a, Off: 150 << 10, Len: 50 << 10}, {ID: bID, Data: b, Len: 50 << 10}})
			oneID, twoID, threeID := chunker.Sum(one), chunker.Sum(two), chunker.Sum(three)
			d.Put(ctx, oneID, oneBlob)
			d.Put(ctx, twoID, twoBlob)
			d.Put(ctx, threeID, threeBlob)
			random := storetest.RandomBytes(64<<10, 15)
			rawID := chunker.Sum(random)
			c.Put(ctx, rawID, random)

			for _, tc := range []struct {
				name  string
				id    chunker.ID
				data  []byte
				kind  store.Encoding
				bases []chunker.ID
			}{
				{"plain", aID, a, store.EncZstd, nil},
				{"delta", oneID, one, store.EncZstdDelta, []chunker.ID{aID}},
				{"multi-delta", twoID, two, store.EncZstdMultiDelta, []chunker.ID{aID, bID}},
				{"range-delta", threeID, three, store.EncZstdRangeDelta, []chunker.ID{aID, bID}},
			} {
				before := storetest.ReadBlob(t, d, tc.id)
				// A commit that declines (the record changed) leaves the blob.
				refused := errors.New("record changed")
				if r, err := c.Recode(ctx, tc.id, enc, func(r store.Recoded, replace func() error) error {
					if replace == nil || r.From != r.Encoding || r.NewSize >= r.OldSize {
						t.Errorf("%s: commit got %+v, replace %v; want a smaller blob of the same kind to replace", tc.name, r, replace != nil)
					}
					return refused
				}); err != refused || r.Replaced {
					t.Errorf("%s: declined Recode: %+v, %v; want its commit's error, nothing replaced", tc.name, r, err)
				}
				if after := storetest.ReadBlob(t, d, tc.id); !bytes.Equal(after, before) {
					t.Errorf("%s: a declined Recode changed the blob", tc.name)
				}
				if left, _ := os.ReadDir(filepath.Join(d.Root(), "tmp")); len(left) != 0 {
					t.Errorf("%s: a declined Recode left %d staged files", tc.name, len(left))
				}
				// On a directory the new blob is written and synced before
				// commit, which then only renames it in.
				r, err := c.Recode(ctx, tc.id, enc, func(r store.Recoded, replace func() error) error {
					if staged, _ := os.ReadDir(filepath.Join(d.Root(), "tmp")); len(staged) != 1 {
						t.Errorf("%s: %d blobs staged when commit is called, want 1", tc.name, len(staged))
					}
					return replaceNow(r, replace)
				})
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if !r.Replaced || r.NewSize >= r.OldSize || r.OldSize != len(before) {
					t.Errorf("%s: %+v; want a smaller blob than the level-1 one (%d bytes)", tc.name, r, len(before))
				}
				after := storetest.ReadBlob(t, d, tc.id)
				if len(after) != r.NewSize {
					t.Errorf("%s: stored blob is %d bytes, Recode says %d", tc.name, len(after), r.NewSize)
				}
				kind, bases, _, err := store.BlobHeader(after)
				if err != nil || kind != tc.kind || !equalIDs(store.IDs(bases), tc.bases) || r.Encoding != tc.kind || !equalIDs(r.Bases, tc.bases) {
					t.Errorf("%s: rewritten blob is %v with bases %v (%v); want %v with %v", tc.name, kind, bases, err, tc.kind, tc.bases)
				}
				if got, err := c.Get(ctx, tc.id); err != nil || !bytes.Equal(got, tc.data) {
					t.Fatalf("%s: Get after Recode: %v", tc.name, err)
				}
				// Again: nothing smaller to gain, nothing rewritten.
				if r2, err := c.Recode(ctx, tc.id, enc, replaceNow); err != nil || r2.Replaced {
					t.Errorf("%s: second Recode: %+v, %v; want no rewrite", tc.name, r2, err)
				}
			}
			if r, err := c.Recode(ctx, rawID, enc, replaceNow); err != nil || r.Replaced || r.Encoding != store.EncRaw {
				t.Errorf("incompressible raw chunk: %+v, %v; want it left raw", r, err)
			}
		})
	}
}

func equalIDs(a, b []chunker.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// wrongFrames is an encoder whose frames decode to other bytes.
type wrongFrames struct{ store.FrameEncoder }

func (w wrongFrames) EncodeFrame(ctx context.Context, data, dict []byte) ([]byte, error) {
	return w.FrameEncoder.EncodeFrame(ctx, data[:len(data)/2], dict)
}

type noReplace struct{ store.Store }

// Recode leaves a blob as it was when the chunk cannot be read (missing or
// damaged base, damaged blob), when the new frame does not decode to the
// chunk, and on stores that cannot replace blobs.
func TestRecodeFailsClosed(t *testing.T) {
	ctx := context.Background()
	enc, _ := store.NewFrameEncoder(11, "go")
	d, c := storetest.Chunks(t, store.ChunksOptions{Level: 1})
	base := textBytes(100<<10, 21)
	next := append(append([]byte(nil), base[:50<<10]...), textBytes(50<<10, 22)...)
	baseID, nextID := chunker.Sum(base), chunker.Sum(next)
	c.Put(ctx, baseID, base)
	blob, _, _ := c.EncodeDelta(next, []store.Base{{ID: baseID, Data: base}})
	d.Put(ctx, nextID, blob)

	unchanged := func(name string, id chunker.ID, want []byte) {
		t.Helper()
		if got := storetest.ReadBlob(t, d, id); !bytes.Equal(got, want) {
			t.Errorf("%s: blob changed", name)
		}
	}
	if _, err := c.Recode(ctx, nextID, wrongFrames{enc}, replaceNow); err == nil {
		t.Error("frame decoding to other bytes: no error")
	}
	unchanged("wrong frame", nextID, blob)
	plainBlob := storetest.ReadBlob(t, d, baseID)
	if _, err := c.Recode(ctx, baseID, wrongFrames{enc}, replaceNow); err == nil {
		t.Error("plain frame decoding to other bytes: no error")
	}
	unchanged("wrong plain frame", baseID, plainBlob)

	c2, _ := store.NewChunks(noReplace{d}, store.ChunksOptions{})
	if _, err := c2.Recode(ctx, baseID, enc, replaceNow); !errors.Is(err, store.ErrNoReplace) {
		t.Errorf("store without Replace: %v, want ErrNoReplace", err)
	}

	bad, _ := c.Encode(textBytes(100<<10, 23))
	d.Delete(ctx, baseID)
	d.Put(ctx, baseID, bad)
	if _, err := c.Recode(ctx, nextID, enc, replaceNow); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("damaged base: %v, want ErrCorrupt", err)
	}
	unchanged("damaged base", nextID, blob)
	if _, err := c.Recode(ctx, baseID, enc, replaceNow); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("damaged blob: %v, want ErrCorrupt", err)
	}
	unchanged("damaged blob", baseID, bad)
	d.Delete(ctx, baseID)
	if _, err := c.Recode(ctx, nextID, enc, replaceNow); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing base: %v, want ErrNotFound", err)
	}
	unchanged("missing base", nextID, blob)
}

func TestNewFrameEncoderRejects(t *testing.T) {
	for _, tc := range []struct {
		level   int
		program string
	}{{0, "go"}, {23, "auto"}, {19, "gzip"}} {
		if _, err := store.NewFrameEncoder(tc.level, tc.program); err == nil {
			t.Errorf("NewFrameEncoder(%d, %q): no error", tc.level, tc.program)
		}
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := store.NewFrameEncoder(19, "exec"); err == nil {
		t.Error("exec without a zstd program: no error")
	}
	if e, err := store.NewFrameEncoder(19, "auto"); err != nil || e.Level() != store.GoMaxLevel {
		t.Errorf("auto without a zstd program: %v, %v; want the Go encoder", e, err)
	}
}

// BenchmarkRecode recompresses 256 KiB chunks of the real benchmark NAR,
// stored at level 1, plain and as deltas (8 bytes changed every 16 KiB
// against the original chunk); MB/s is of chunk bytes. Run with -cpu 1.
func BenchmarkRecode(b *testing.B) {
	nar := nixtest.BenchNAR()
	const size, n = 256 << 10, 16
	off := len(nar) / 3 // binaries and sources, past the NAR's first files
	for _, encName := range []string{"go11", "zstd19"} {
		var enc store.FrameEncoder
		var err error
		if encName == "go11" {
			enc, err = store.NewFrameEncoder(11, "go")
		} else {
			if _, lerr := exec.LookPath("zstd"); lerr != nil {
				b.Log("no zstd program: skipping zstd19")
				continue
			}
			enc, err = store.NewFrameEncoder(19, "exec")
		}
		if err != nil {
			b.Fatal(err)
		}
		for _, kind := range []string{"plain", "delta"} {
			b.Run(encName+"/"+kind, func(b *testing.B) {
				ctx := context.Background()
				var before, after int64
				for b.Loop() {
					b.StopTimer()
					d, _ := store.OpenDir(b.TempDir())
					d.NoSync = true
					c, _ := store.NewChunks(d, store.ChunksOptions{Level: 1})
					var ids []chunker.ID
					for i := range n {
						data := nar[off+i*size : off+(i+1)*size]
						id := chunker.Sum(data)
						c.Put(ctx, id, data)
						if kind == "delta" {
							next := append([]byte(nil), data...)
							for j := 100; j+8 < len(next); j += 16 << 10 {
								copy(next[j:], "narstore")
							}
							blob, _, err := c.EncodeDelta(next, []store.Base{{ID: id, Data: data}})
							if err != nil {
								b.Fatal(err)
							}
							id = chunker.Sum(next)
							d.Put(ctx, id, blob)
						}
						ids = append(ids, id)
					}
					b.StartTimer()
					for _, id := range ids {
						r, err := c.Recode(ctx, id, enc, replaceNow)
						if err != nil {
							b.Fatal(err)
						}
						before += int64(r.OldSize)
						after += int64(r.NewSize)
					}
				}
				b.SetBytes(size * n)
				b.ReportMetric(float64(after)/float64(before), "after/before")
			})
		}
	}
}

// replaceNow is a RecodeCommit without an index: it replaces at once.
func replaceNow(_ store.Recoded, replace func() error) error {
	if replace == nil {
		return nil
	}
	return replace()
}
