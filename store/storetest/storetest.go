// Package storetest is the conformance suite every store.Store backend passes.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/store"
)

// Run runs the suite. newStore returns an empty store for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	ctx := context.Background()
	blob := func(i int) (chunker.ID, []byte) {
		b := bytes.Repeat([]byte(fmt.Sprintf("blob %d;", i)), 100+i)
		return chunker.Sum(b), b
	}
	get := func(t *testing.T, s store.Store, id chunker.ID) ([]byte, error) {
		t.Helper()
		rc, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}

	t.Run("MissingIsNotFound", func(t *testing.T) {
		s := newStore(t)
		id, _ := blob(1)
		if _, err := get(t, s, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get missing: got %v, want ErrNotFound", err)
		}
		if ok, err := s.Has(ctx, id); err != nil || ok {
			t.Fatalf("Has missing = %v, %v", ok, err)
		}
	})
	t.Run("PutGetRoundTrip", func(t *testing.T) {
		s := newStore(t)
		id, b := blob(2)
		if err := s.Put(ctx, id, b); err != nil {
			t.Fatal(err)
		}
		got, err := get(t, s, id)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("Get after Put: %d bytes, %v; want %d bytes", len(got), err, len(b))
		}
		if ok, err := s.Has(ctx, id); err != nil || !ok {
			t.Fatalf("Has after Put = %v, %v", ok, err)
		}
	})
	t.Run("EmptyBlob", func(t *testing.T) {
		s := newStore(t)
		id := chunker.Sum(nil)
		if err := s.Put(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
		if got, err := get(t, s, id); err != nil || len(got) != 0 {
			t.Fatalf("Get empty: %q, %v", got, err)
		}
	})
	t.Run("PutIsIdempotent", func(t *testing.T) {
		s := newStore(t)
		id, b := blob(3)
		for range 3 {
			if err := s.Put(ctx, id, b); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		if err := s.Walk(ctx, func(chunker.ID, int64) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("Walk after 3 identical Puts saw %d blobs, want 1", n)
		}
	})
	t.Run("ConcurrentPutsOfSameID", func(t *testing.T) {
		s := newStore(t)
		id, b := blob(4)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- s.Put(ctx, id, b) }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got, err := get(t, s, id); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("after concurrent Puts: %d bytes, %v", len(got), err)
		}
	})
	t.Run("Delete", func(t *testing.T) {
		s := newStore(t)
		id, b := blob(5)
		other, ob := blob(6)
		if err := s.Put(ctx, id, b); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, other, ob); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := get(t, s, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete of a missing blob: %v, want nil", err)
		}
		if got, err := get(t, s, other); err != nil || !bytes.Equal(got, ob) {
			t.Fatalf("Delete removed the wrong blob: %v", err)
		}
	})
	t.Run("Replace", func(t *testing.T) {
		s := newStore(t)
		r, ok := s.(store.Replacer)
		if !ok {
			t.Skip("store does not implement Replacer")
		}
		id, b := blob(7)
		id2, b2 := blob(9)
		for _, p := range []store.Blob{{ID: id, Data: b}, {ID: id2, Data: b2}} {
			if err := s.Put(ctx, p.ID, p.Data); err != nil {
				t.Fatal(err)
			}
		}
		nb, nb2 := []byte("the same chunk, recompressed"), []byte("another chunk, recompressed")
		if err := r.Replace(ctx, []store.Blob{{ID: id, Data: nb}, {ID: id2, Data: nb2}}); err != nil {
			t.Fatal(err)
		}
		want := map[chunker.ID][]byte{id: nb, id2: nb2}
		for wid, w := range want {
			if got, err := get(t, s, wid); err != nil || !bytes.Equal(got, w) {
				t.Fatalf("Get after Replace: %q, %v; want the new blob", got, err)
			}
		}
		walk := func(when string) {
			t.Helper()
			n := 0
			if err := s.Walk(ctx, func(wid chunker.ID, size int64) error {
				n++
				if w, ok := want[wid]; !ok || size != int64(len(w)) {
					t.Errorf("Walk %s: %s, %d bytes; want the new blobs' sizes", when, wid, size)
				}
				return nil
			}); err != nil || n != len(want) {
				t.Fatalf("Walk %s saw %d blobs, %v; want %d (no temp file left)", when, n, err, len(want))
			}
		}
		walk("after Replace")
		// A missing blob among present ones: those are replaced, it is not
		// created, and the error says which.
		missing, _ := blob(8)
		nb3 := []byte("recompressed once more")
		if err := r.Replace(ctx, []store.Blob{{ID: missing, Data: nb}, {ID: id, Data: nb3}}); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), missing.String()) {
			t.Fatalf("Replace of a missing blob: %v, want ErrNotFound naming %s", err, missing)
		}
		if ok, err := s.Has(ctx, missing); err != nil || ok {
			t.Fatalf("Replace of a missing blob created it (Has = %v, %v)", ok, err)
		}
		want[id] = nb3
		if got, err := get(t, s, id); err != nil || !bytes.Equal(got, nb3) {
			t.Fatalf("Get of a blob replaced next to a missing one: %q, %v; want the new blob", got, err)
		}
		walk("after a Replace naming a missing blob")
	})
	t.Run("WalkListsEveryBlobWithSize", func(t *testing.T) {
		s := newStore(t)
		want := map[chunker.ID]int64{}
		for i := 10; i < 30; i++ {
			id, b := blob(i)
			want[id] = int64(len(b))
			if err := s.Put(ctx, id, b); err != nil {
				t.Fatal(err)
			}
		}
		got := map[chunker.ID]int64{}
		if err := s.Walk(ctx, func(id chunker.ID, size int64) error { got[id] = size; return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("Walk saw %d blobs, want %d", len(got), len(want))
		}
		for id, n := range want {
			if got[id] != n {
				t.Errorf("Walk size of %s = %d, want %d", id, got[id], n)
			}
		}
		stop := errors.New("stop")
		if err := s.Walk(ctx, func(chunker.ID, int64) error { return stop }); !errors.Is(err, stop) {
			t.Fatalf("Walk did not return fn's error: %v", err)
		}
	})
}

// Dir opens an empty directory store in a test's temp directory.
func Dir(t testing.TB) *store.Dir {
	t.Helper()
	d, err := store.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Chunks opens an empty directory store (as Dir) and a store.Chunks over it
// with o.
func Chunks(t testing.TB, o store.ChunksOptions) (*store.Dir, *store.Chunks) {
	t.Helper()
	d := Dir(t)
	c, err := store.NewChunks(d, o)
	if err != nil {
		t.Fatal(err)
	}
	return d, c
}

// ReadBlob returns the blob stored under id, as stored.
func ReadBlob(t testing.TB, s store.Store, id chunker.ID) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Corrupt flips a bit in the last byte of the blob stored under id, so it
// no longer decodes to its chunk.
func Corrupt(t testing.TB, s store.Store, id chunker.ID) {
	t.Helper()
	b := ReadBlob(t, s, id)
	b[len(b)-1] ^= 1
	if err := s.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), id, b); err != nil {
		t.Fatal(err)
	}
}

// RandomBytes returns n incompressible bytes determined by seed.
func RandomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// DeltaCycle puts two chunks into s whose blobs name each other as delta
// base (a corrupt or tampered store: no ingest writes one) and returns
// their IDs. Reading either must fail as corrupt, not recurse or wait
// forever.
func DeltaCycle(t testing.TB, s store.Store, c *store.Chunks) (a, b chunker.ID) {
	t.Helper()
	ctx := context.Background()
	aData, bData := RandomBytes(32<<10, 2), RandomBytes(32<<10, 3)
	a, b = chunker.Sum(aData), chunker.Sum(bData)
	blobA, _, errA := c.EncodeDelta(aData, []store.Base{{ID: b, Data: bData}})
	blobB, _, errB := c.EncodeDelta(bData, []store.Base{{ID: a, Data: aData}})
	if err := errors.Join(errA, errB, s.Put(ctx, a, blobA), s.Put(ctx, b, blobB)); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// FailsCorrupt runs the reads at once and requires every one to fail with
// store.ErrCorrupt within 10 seconds: a corrupt store (a DeltaCycle) must
// fail reads, not hang them. what names the case in failures.
func FailsCorrupt(t testing.TB, what string, reads ...func() error) {
	t.Helper()
	done := make(chan error, len(reads))
	for _, read := range reads {
		go func() { done <- read() }()
	}
	for range reads {
		select {
		case err := <-done:
			if !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("%s: %v, want ErrCorrupt", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the read hangs", what)
		}
	}
}
