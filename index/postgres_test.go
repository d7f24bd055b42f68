package index_test

import (
	"context"
	"crypto/sha256"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/index/indextest"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/store"
)

func TestMain(m *testing.M) { testservers.Main(m) }

func TestPostgresConformance(t *testing.T) {
	indextest.Run(t, func(t *testing.T, now func() time.Time) index.Index {
		ix, err := index.OpenPostgres(t.Context(), testservers.Postgres(t), now)
		if err != nil {
			t.Fatal(err)
		}
		return ix
	})
}

// Instances starting together migrate once, and reopening is a no-op.
func TestPostgresConcurrentMigration(t *testing.T) {
	dsn := testservers.Postgres(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ix, err := index.OpenPostgres(context.Background(), dsn, nil)
			if err == nil {
				ix.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestPostgresUnreachableIsAClearError(t *testing.T) {
	_, err := index.OpenPostgres(t.Context(), "postgres://u:secret@127.0.0.1:1/x?connect_timeout=1", nil)
	if err == nil || !strings.Contains(err.Error(), "not reachable") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("got %v (must say unreachable and hide the password)", err)
	}
}

// Two rebase batches that deadlock on PostgreSQL: B rewrites W (locking W,
// then the new base c); A rewrites r, a dependent of W (locking r, then c).
// B gets c first and must then update r's depth, which A holds, while A
// waits for c. PostgreSQL aborts one; Rebase runs it again, and both land.
func TestPostgresRebaseDeadlockIsRetried(t *testing.T) {
	ctx := t.Context()
	dsn := testservers.Postgres(t)
	ix, err := index.OpenPostgres(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	id := func(b byte) chunker.ID { var c chunker.ID; c[0] = b; return c } // r < W < c in the order rows are locked
	r, w, c := id(0x10), id(0x20), id(0x30)
	plain := func(x chunker.ID) index.Chunk {
		return index.Chunk{ID: x, Size: 100, StoredSize: 50, Encoding: uint8(store.EncZstd), Level: 3}
	}
	rRec := index.Chunk{ID: r, Size: 100, StoredSize: 10, Encoding: uint8(store.EncZstdDelta), Bases: []chunker.ID{w}, Depth: 1, Level: 3}
	commit := func(name string, recs ...index.Chunk) {
		nar := &index.NAR{Hash: sha256.Sum256([]byte(name)), Preset: chunker.DefaultPreset}
		for _, rec := range recs {
			nar.Chunks = append(nar.Chunks, index.ChunkRef{ID: rec.ID, Offset: nar.Size, Size: rec.Size})
			nar.Size += uint64(rec.Size)
		}
		if err := ix.Commit(ctx, nil, nar, recs); err != nil {
			t.Fatal(err)
		}
	}
	commit("older", plain(w), rRec)
	commit("newer", plain(c))

	// Hold c, so that B and then A queue for it in that order.
	hold, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close(context.Background())
	mon, err := pgx.Connect(ctx, dsn) // outside hold's transaction, whose statistics snapshot would stay as it was
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close(context.Background())
	tx, err := hold.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT id FROM chunks WHERE id = $1 FOR UPDATE`, c[:]); err != nil {
		t.Fatal(err)
	}
	waiting := func(n int) {
		t.Helper()
		for range 500 {
			var k int
			if err := mon.QueryRow(ctx, `SELECT pg_stat_clear_snapshot(), count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(nil, &k); err != nil {
				t.Fatal(err)
			}
			if k >= n {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("fewer than %d rebases waiting for a lock", n)
	}
	deadlocks := func() (n int64) {
		if err := mon.QueryRow(ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := deadlocks()
	type result struct {
		res []index.RebaseResult
		err error
	}
	run := func(rw index.Rewrite) chan result {
		ch := make(chan result, 1)
		go func() {
			res, err := ix.Rebase(ctx, []index.Rewrite{rw}, store.DefaultMaxDeltaDepth)
			ch <- result{res, err}
		}()
		return ch
	}
	delta := func(old index.Chunk) index.Chunk {
		n := old
		n.Encoding, n.StoredSize, n.Bases = uint8(store.EncZstdDelta), 7, []chunker.ID{c}
		return n
	}
	b := run(index.Rewrite{C: delta(plain(w)), Old: plain(w)})
	waiting(1)
	a := run(index.Rewrite{C: delta(rRec), Old: rRec})
	waiting(2)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan result{"W onto c": b, "r onto c": a} {
		got := <-ch
		if got.err != nil || len(got.res) != 1 || got.res[0] != index.Rebased {
			t.Errorf("rebase %s: %v, %v; want Rebased", name, got.res, got.err)
		}
	}
	// The statistics reach pg_stat_database within a second or so.
	for i := 0; deadlocks() == before; i++ {
		if i == 100 {
			t.Fatal("PostgreSQL saw no deadlock: the test did not exercise what it is for")
		}
		mon.Exec(ctx, `SELECT pg_stat_clear_snapshot()`)
		time.Sleep(100 * time.Millisecond)
	}
	recs, err := ix.Chunks(ctx, []chunker.ID{w, r})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if !slices.Equal(rec.Bases, []chunker.ID{c}) || rec.Depth != 1 {
			t.Errorf("chunk %s: bases %v depth %d, want c and 1", rec.ID, rec.Bases, rec.Depth)
		}
	}
}
