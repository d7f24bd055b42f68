package index_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/index/indextest"
	"github.com/narstore/narstore/internal/testservers"
)

func TestMain(m *testing.M) { testservers.Main(m) }

func TestPostgresConformance(t *testing.T) {
	indextest.Run(t, func(t *testing.T) index.Index {
		ix, err := index.OpenPostgres(t.Context(), testservers.Postgres(t), nil)
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
