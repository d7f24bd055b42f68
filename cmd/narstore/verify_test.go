package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/store"
)

// verify checks the deletion rule's premise: every delta base a blob needs
// is named for it in the index, in its record or held while a rewrite is in
// progress. A record changed without its blob (here by hand, through the
// index) fails verify with UNSAFE naming the chunk, once nothing holds the
// base the blob needs.
func TestVerifyNamesDeltaBasesTheIndexDoesNot(t *testing.T) {
	cache := nixtest.NewCache(t, "up-1")
	nis := toolReleases(t, cache, 2)
	p1, p2 := nis[0], nis[1]
	data := t.TempDir()
	for _, p := range []string{p1.StorePath, p2.StorePath} {
		if _, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(),
			"--delta", "--preset", "fastcdc-16k-64k-256k", p); code != 0 {
			t.Fatal(errs)
		}
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 || strings.Contains(out, "UNSAFE") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errs)
	}

	ix, err := index.OpenSQLite(filepath.Join(data, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	ctx := t.Context()
	chunksOf := func(narHash [32]byte) []index.Chunk {
		t.Helper()
		nar, err := ix.NAR(ctx, narHash)
		if err != nil {
			t.Fatal(err)
		}
		var ids []chunker.ID
		for _, c := range nar.Chunks {
			ids = append(ids, c.ID)
		}
		recs, err := ix.Chunks(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	// A chunk of release 1 (a delta of release 2's) gets a record naming
	// another base of release 2 than those its blob needs.
	var d, other index.Chunk
	for _, c := range chunksOf(p1.NarHash) {
		if len(c.Bases) > 0 {
			d = c
			break
		}
	}
	for _, c := range chunksOf(p2.NarHash) {
		if len(c.Bases) == 0 && !slices.Contains(d.Bases, c.ID) {
			other = c
			break
		}
	}
	if d.ID.IsZero() || other.ID.IsZero() {
		t.Fatal("no delta chunk of release 1, or no other plain chunk of release 2")
	}
	c := d
	c.Encoding, c.Bases = uint8(store.EncZstdDelta), []chunker.ID{other.ID}
	if r, err := ix.Rebase(ctx, []index.Rewrite{{C: c, Old: d}}, 8); err != nil || r[0] != index.Rebased {
		t.Fatalf("Rebase: %v, %v", r, err)
	}
	// Held (a rewrite in progress): the rule holds.
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 || strings.Contains(out, "UNSAFE") {
		t.Fatalf("verify with the old bases held: exit %d\n%s%s", code, out, errs)
	}
	if err := ix.ReleaseHolds(ctx, []chunker.ID{d.ID}); err != nil {
		t.Fatal(err)
	}
	out, errs, code := narstore(t, "verify", "--data", data)
	if code != 1 || !strings.Contains(out, "UNSAFE /nix/store/") || !strings.Contains(out, "chunk "+d.ID.String()+" needs delta base "+d.Bases[0].String()) ||
		!strings.Contains(errs, "does not name every delta base") {
		t.Fatalf("verify with a base named nowhere: exit %d\n%s%s", code, out, errs)
	}
}
