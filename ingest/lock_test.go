package ingest_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/lock"
)

// Two instances (separate index handles on one database, one chunk store,
// separate lockers on one PostgreSQL) asked for the same path at once
// download its NAR exactly once.
func TestOneDownloadAcrossInstances(t *testing.T) {
	dsn := testservers.Postgres(t)
	e := newEnv(t)
	ni := e.cache.Add(t, nixtest.Path{Name: "http", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))})
	var downloads atomic.Int32
	srv := httpUpstream(t, e.cache.Dir, func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			downloads.Add(1)
			time.Sleep(200 * time.Millisecond) // a slow upstream, so the instances overlap
		}
		return false
	})
	dbPath := filepath.Join(t.TempDir(), "shared.db")
	var instances []*ingest.Ingester
	for range 2 {
		ix, err := index.OpenSQLite(dbPath, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ix.Close() })
		lk, err := lock.NewPostgres(context.Background(), dsn, 0, lock.Retry{InitialDelay: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lk.Close)
		up, _ := ingest.NewUpstream(srv.URL, ingest.UpstreamOptions{})
		p, _ := chunker.LookupPreset("fastcdc-16k-64k-256k")
		in, err := ingest.New(up, ix, e.chunks, ingest.Options{Preset: p, Keys: narinfo.PublicKeys{e.cache.PublicKey}, Locker: lk, LockTTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		instances = append(instances, in)
	}
	var wg sync.WaitGroup
	var ingested, skipped atomic.Int32
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := instances[i%2].IngestPath(context.Background(), ni.StorePath)
			if err != nil {
				errs <- err
				return
			}
			if res.Skipped {
				skipped.Add(1)
			} else {
				ingested.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := downloads.Load(); n != 1 {
		t.Fatalf("%d upstream downloads across two instances, want 1", n)
	}
	// In-process waiters share their instance's result: one instance reports
	// the ingest (4 callers), the other found it done under the lock (4).
	if ingested.Load() != 4 || skipped.Load() != 4 {
		t.Errorf("ingested %d, skipped %d; want 4 and 4", ingested.Load(), skipped.Load())
	}
	shared, err := index.OpenSQLite(dbPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	e.ix = shared
	if got := e.readBack(t, ni); len(got) != int(ni.NarSize) {
		t.Fatal("NAR not readable after the shared ingest")
	}
}
