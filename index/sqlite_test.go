package index_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/index/indextest"
)

func TestSQLiteConformance(t *testing.T) {
	indextest.Run(t, func(t *testing.T, now func() time.Time) index.Index {
		ix, err := index.OpenSQLite(filepath.Join(t.TempDir(), "index.db"), now)
		if err != nil {
			t.Fatal(err)
		}
		return ix
	})
}

func TestSQLiteReopenKeepsDataAndMigratesOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix, err := index.OpenSQLite(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ni, nar, chunks := indextest.Fixture("persist", 2, 10)
	if err := ix.Commit(t.Context(), ni, nar, chunks); err != nil {
		t.Fatal(err)
	}
	ix.Close()
	ix, err = index.OpenSQLite(path, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer ix.Close()
	if ok, err := ix.HasNAR(t.Context(), nar.Hash); !ok || err != nil {
		t.Fatalf("after reopen HasNAR = %v, %v", ok, err)
	}
}
