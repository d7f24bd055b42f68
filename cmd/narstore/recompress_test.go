package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testenv"
)

// recompressFixture ingests three Go source trees at zstd level 1 into a
// fresh data directory and returns it.
func recompressFixture(t *testing.T) string {
	t.Helper()
	cache := nixtest.NewCache(t, "up-1")
	var paths []string
	for _, d := range []string{"src/sort", "src/bufio", "src/encoding/json"} {
		ni := cache.Add(t, nixtest.Path{Name: filepath.Base(d), NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, d))})
		paths = append(paths, ni.StorePath)
	}
	data := t.TempDir()
	args := append([]string{"ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(),
		"--zstd-level", "1", "--preset", "fastcdc-16k-64k-256k"}, paths...)
	if _, errs, code := narstore(t, args...); code != 0 {
		t.Fatalf("ingest: %s", errs)
	}
	return data
}

func chunksBelow(t *testing.T, data string, level int) int {
	t.Helper()
	ix, err := index.OpenSQLite(filepath.Join(data, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	ids, err := ix.ChunksBelowLevel(t.Context(), level, chunker.ID{}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

func TestRecompressCommand(t *testing.T) {
	testenv.LookPath(t, "zstd", "apt install zstd")
	data := recompressFixture(t)
	before := stats(t, data)
	if out, _, _ := narstore(t, "stats", "--data", data); !strings.Contains(out, fmt.Sprintf("Not yet recompressed:      %d chunks", before.Chunks)) {
		t.Errorf("stats before recompress:\n%s", out)
	}
	if n := chunksBelow(t, data, 19); n != int(before.Chunks) {
		t.Fatalf("%d of %d chunks recorded below level 19 after a level-1 ingest", n, before.Chunks)
	}
	out, errs, code := narstore(t, "recompress", "--data", data, "--level", "19", "--progress", "always")
	if code != 0 {
		t.Fatalf("recompress: exit %d: %s %s", code, out, errs)
	}
	if want := fmt.Sprintf("%d/%d chunks", before.Chunks, before.Chunks); !strings.Contains(errs, want) {
		t.Errorf("progress line does not show %q:\n%s", want, errs)
	}
	if !strings.Contains(out, "with /") || !strings.Contains(out, "-19 in") || strings.Contains(out, " 0 rewritten") {
		t.Errorf("recompress summary:\n%s", out)
	}
	after := stats(t, data)
	if after.StoredBytes >= before.StoredBytes || after.Chunks != before.Chunks || after.NARBytes != before.NARBytes {
		t.Errorf("stats before %+v, after %+v: want fewer stored bytes, same chunks and NARs", before, after)
	}
	// The index's stored bytes match the blobs on disk.
	var onDisk uint64
	filepath.WalkDir(filepath.Join(data, "chunks", "chunks"), func(p string, d fs.DirEntry, err error) error {
		if d != nil && !d.IsDir() {
			fi, _ := d.Info()
			onDisk += uint64(fi.Size())
		}
		return nil
	})
	if onDisk != after.StoredBytes {
		t.Errorf("blobs on disk: %d bytes, index says %d", onDisk, after.StoredBytes)
	}
	if n := chunksBelow(t, data, 19); n != 0 {
		t.Errorf("%d chunks still below level 19", n)
	}
	if out, _, _ := narstore(t, "stats", "--data", data); !strings.Contains(out, "Not yet recompressed:      0 chunks") {
		t.Errorf("stats after recompress:\n%s", out)
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
		t.Fatalf("verify after recompress: %s %s", out, errs)
	}
	out, _, code = narstore(t, "recompress", "--data", data, "--level", "19")
	if code != 0 || !strings.Contains(out, "Recompressed 0 chunks") {
		t.Errorf("second run: exit %d\n%s", code, out)
	}

	// Another holder of the maintenance lock: refused, nothing done.
	f, err := os.OpenFile(filepath.Join(data, "maintenance.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	_, errs, code = narstore(t, "recompress", "--data", data, "--level", "22")
	f.Close()
	if code != 1 || !strings.Contains(errs, "maintenance lock") {
		t.Errorf("with the lock held: exit %d: %s", code, errs)
	}
	if n := chunksBelow(t, data, 22); n != int(before.Chunks) {
		t.Errorf("recompress ran without the lock: %d chunks below 22", n)
	}
}

// A damaged chunk is reported and left as it was; the others are done.
func TestRecompressReportsDamagedChunks(t *testing.T) {
	data := recompressFixture(t)
	victim, b := damageFirstBlob(t, data)
	out, errs, code := narstore(t, "recompress", "--data", data, "--level", "9", "--zstd-program", "go")
	if code != 1 || !strings.Contains(out, "FAILED chunk "+filepath.Base(victim)) || !strings.Contains(errs, "1 chunks could not be recompressed") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	if got, _ := os.ReadFile(victim); string(got) != string(b) {
		t.Error("the damaged blob was rewritten")
	}
	if n := chunksBelow(t, data, 9); n != 1 {
		t.Errorf("%d chunks below level 9 after the run, want just the damaged one", n)
	}
}

func TestRecompressUsageErrors(t *testing.T) {
	data := recompressFixture(t)
	for _, args := range [][]string{
		{"--level", "0"}, {"--level", "23"}, {"--zstd-program", "gzip"}, {"--jobs", "0"}, {"--limit", "-1"}, {"--max-delta-depth", "-1"}, {"--max-delta-depth", "99"}, {"--similar=false", "--similar-all"},
	} {
		_, errs, code := narstore(t, append([]string{"recompress", "--data", data}, args...)...)
		if code != 2 || errs == "" {
			t.Errorf("recompress %v: exit %d %q, want 2 and a message", args, code, errs)
		}
	}
	if _, errs, code := narstore(t, "recompress", "--data", t.TempDir()); code == 0 || !strings.Contains(errs, "no narstore index") {
		t.Errorf("empty data dir: exit %d %s", code, errs)
	}
}

// Recompression and an ingest that takes its delta bases from the chunks
// being rewritten run at once: both finish, and every NAR verifies.
func TestRecompressDuringIngest(t *testing.T) {
	cache := nixtest.NewCache(t, "up-1")
	nis := toolReleases(t, cache, 2)
	p1, p2 := nis[0], nis[1]
	data := t.TempDir()
	ingest := func(p string) (string, int) {
		_, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(),
			"--zstd-level", "1", "--preset", "fastcdc-16k-64k-256k", p)
		return errs, code
	}
	if errs, code := ingest(p1.StorePath); code != 0 {
		t.Fatal(errs)
	}
	done := make(chan string, 2)
	go func() {
		out, errs, code := narstore(t, "recompress", "--data", data, "--level", "7", "--zstd-program", "go", "--jobs", "2")
		done <- fmt.Sprintf("recompress exit %d: %s %s", code, out, errs)
	}()
	go func() {
		errs, code := ingest(p2.StorePath)
		done <- fmt.Sprintf("ingest exit %d: %s", code, errs)
	}()
	for range 2 {
		if r := <-done; !strings.Contains(r, "exit 0") {
			t.Fatal(r)
		}
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 || !strings.Contains(out, "Verified 2 NARs") {
		t.Fatalf("verify: %s %s", out, errs)
	}
	// The second release's chunks, written meanwhile, are done by the next run.
	if out, errs, code := narstore(t, "recompress", "--data", data, "--level", "7", "--zstd-program", "go"); code != 0 {
		t.Fatalf("second recompress: %s %s", out, errs)
	}
	if n := chunksBelow(t, data, 7); n != 0 {
		t.Errorf("%d chunks below level 7 after the second run", n)
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
		t.Fatalf("verify: %s %s", out, errs)
	}
}

// Four releases of a package holding a near-copy of one of its files,
// ingested with reverse deltas (the default) and recompressed after each:
// recompression makes near-copies in the newest release deltas of their
// originals, and the next ingest rewrites that release, those deltas
// included, as deltas of the release after it. Every NAR verifies after
// every step, and no rewrite is left unreleased.
func TestRecompressSimilarBetweenReverseBumps(t *testing.T) {
	cache := nixtest.NewCache(t, "up-1")
	src, err := os.ReadFile(filepath.Join(nixtest.GoRoot(t, "src/net/http"), "server.go"))
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	for v := 1; v <= 4; v++ {
		dir := t.TempDir()
		rel := slices.Clone(src)
		for i := 300 * v; i+8 < len(rel); i += 24 << 10 {
			copy(rel[i:], fmt.Sprintf("release%d", v))
		}
		half := len(rel) / 2
		os.WriteFile(filepath.Join(dir, "server.go"), rel, 0o644)
		os.WriteFile(filepath.Join(dir, "server-copy.go"), append(append(slices.Clone(rel[:half]), fmt.Sprintf("// copy %d\n", v)...), rel[half:]...), 0o644)
		ni := cache.Add(t, nixtest.Path{Name: fmt.Sprintf("srv-%d.0", v), NAR: nixtest.DumpPath(t, dir), Compression: "zstd"})
		out, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(),
			"--preset", "fastcdc-16k-64k-256k", "--zstd-level", "1", ni.StorePath)
		if code != 0 {
			t.Fatalf("ingest release %d: %s", v, errs)
		}
		if v > 1 && !strings.Contains(out, "Reverse deltas: ") {
			t.Errorf("ingest release %d: no reverse deltas reported\n%s", v, out)
		}
		if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
			t.Fatalf("verify after ingest of release %d: %s %s", v, out, errs)
		}
		out, errs, code = narstore(t, "recompress", "--data", data, "--level", "9", "--zstd-program", "go")
		if code != 0 {
			t.Fatalf("recompress after release %d: %s %s", v, out, errs)
		}
		var n int
		if _, err := fmt.Sscanf(out[strings.Index(out, "\n")+1:], "%d of the rewritten chunks are now deltas of similar chunks", &n); err != nil || n < 1 {
			t.Errorf("recompress after release %d made no similar-chunk delta of its near-copy\n%s", v, out)
		}
		if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
			t.Fatalf("verify after recompress of release %d: %s %s", v, out, errs)
		}
		if st := stats(t, data); st.Rewrites != 0 || st.Holds != 0 {
			t.Errorf("after release %d: %d rewrites unreleased, %d bases held", v, st.Rewrites, st.Holds)
		}
	}
}
