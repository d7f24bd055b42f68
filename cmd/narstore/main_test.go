package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/lock"
)

// narstore runs the command in-process and returns stdout, stderr and the exit code.
func narstore(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	code := 0
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
		errb.WriteString(ee.msg)
	case err != nil:
		code = 1
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

type statsJSON struct {
	NARs              int64   `json:"nars"`
	NarInfos          int64   `json:"narinfos"`
	NARBytes          uint64  `json:"nar_bytes"`
	UpstreamBytes     uint64  `json:"upstream_bytes"`
	Chunks            int64   `json:"chunks"`
	StoredBytes       uint64  `json:"stored_bytes"`
	StoredPerUpstream float64 `json:"stored_per_upstream"`
	Rewrites          int64   `json:"rewrites_unreleased"`
	Holds             int64   `json:"bases_held"`
	Depths            []struct {
		Depth       int    `json:"depth"`
		Chunks      int64  `json:"chunks"`
		StoredBytes uint64 `json:"stored_bytes"`
	} `json:"depths"`
}

// toolReleases adds n releases of a package, tool-1.0 to tool-n.0, to
// cache: the Go tree's src/encoding with a marker of the release written
// every 8 KiB, so each release is nearly the one before.
func toolReleases(t *testing.T, cache *nixtest.Cache, n int) []*narinfo.NarInfo {
	t.Helper()
	base := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/encoding"))
	var nis []*narinfo.NarInfo
	for v := range n {
		nar := append([]byte(nil), base...)
		for i := 500 + v*97; i+8 < len(nar); i += 8 << 10 {
			copy(nar[i:], fmt.Sprintf("release%d", v+1))
		}
		nis = append(nis, cache.Add(t, nixtest.Path{Name: fmt.Sprintf("tool-%d.0", v+1), NAR: nar, Compression: "zstd"}))
	}
	return nis
}

func stats(t *testing.T, data string) statsJSON {
	t.Helper()
	out, errs, code := narstore(t, "stats", "--data", data, "--json")
	if code != 0 {
		t.Fatalf("stats: %d %s", code, errs)
	}
	var st statsJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("stats --json: %v\n%s", err, out)
	}
	return st
}

func TestIngestStatsVerify(t *testing.T) {
	cache := nixtest.NewCache(t, "up-1")
	var paths []string
	var narBytes uint64
	for _, d := range []string{"src/sort", "src/bufio", "src/encoding/json"} {
		ni := cache.Add(t, nixtest.Path{Name: filepath.Base(d), NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, d))})
		paths = append(paths, ni.StorePath)
		narBytes += ni.NarSize
	}
	pathsFile := filepath.Join(t.TempDir(), "store-paths")
	os.WriteFile(pathsFile, []byte(strings.Join(paths[1:], "\n")+"\n"), 0o644)
	data := t.TempDir()
	key := cache.PublicKey.String()

	out, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", key, "--paths", pathsFile, paths[0])
	if code != 0 {
		t.Fatalf("ingest exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "Ingested 3 NARs") || !strings.Contains(out, "Stored / upstream:") {
		t.Errorf("ingest summary:\n%s", out)
	}
	st := stats(t, data)
	if st.NARs != 3 || st.NARBytes != narBytes || st.UpstreamBytes == 0 || st.StoredBytes == 0 || st.StoredPerUpstream <= 0 {
		t.Errorf("stats %+v", st)
	}
	out, _, code = narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", key, paths[0])
	if code != 0 || !strings.Contains(out, "(1 already stored") {
		t.Errorf("re-ingest: %d\n%s", code, out)
	}

	out, errs, code = narstore(t, "verify", "--data", data)
	if code != 0 || !strings.Contains(out, "Verified 3 NARs") {
		t.Fatalf("verify: %d %s %s", code, out, errs)
	}
	// Damage one chunk on disk: verify names the store path and fails.
	damageFirstBlob(t, data)
	out, errs, code = narstore(t, "verify", "--data", data)
	if code != 1 || !strings.Contains(out, "DAMAGED /nix/store/") || !strings.Contains(out, "1 damaged") {
		t.Fatalf("verify after damage: exit %d\n%s\n%s", code, out, errs)
	}
}

// damageFirstBlob flips a byte in the middle of the first chunk blob (in
// walk order) under data's chunk directory, and returns its path and its
// damaged bytes.
func damageFirstBlob(t *testing.T, data string) (path string, damaged []byte) {
	t.Helper()
	filepath.WalkDir(filepath.Join(data, "chunks", "chunks"), func(p string, d fs.DirEntry, err error) error {
		if d != nil && !d.IsDir() && path == "" {
			path = p
		}
		return nil
	})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, b
}

func TestUsageErrors(t *testing.T) {
	data := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ingest", "--data", data, "/nix/store/x"}, "--upstream"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x"}, "--trusted-public-key"},
		{[]string{"ingest", "--data", data, "--upstream", "ftp://x", "--allow-untrusted", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"}, "http://"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--trusted-public-key", "nonsense"}, "NAME:BASE64"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "--preset", "huge"}, "unknown chunker preset"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "not-a-path"}, "not a store path"},
		{[]string{"stats", "--data", filepath.Join(data, "nothing")}, "ingest something first"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "--delta-bases", "9", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"}, "--delta-bases 9: want 1 to 4"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "--max-delta-depth", "9", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"}, "--max-delta-depth 9: want 1 to 8"},
		{[]string{"serve", "--data", data, "--max-delta-depth", "-1"}, "--max-delta-depth -1: want 1 to 8, or 0 for the default"},
		{[]string{"serve", "--data", data, "--max-delta-moves", "-1"}, "--max-delta-moves -1: want 0 (no bound) or more"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "--lock-backend", "zookeeper", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"}, "want local, redis, postgres or mysql"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "--lock-backend", "postgres", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"}, "set --database-url postgres://"},
		{[]string{"ingest", "--data", data, "--upstream", "file:///x", "--allow-untrusted", "--lock-backend", "redis", "--lock-retry-initial", "1ms", "--redis-addr", "127.0.0.1:1", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"}, "lock service unavailable"},
	} {
		_, errs, code := narstore(t, tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want it to mention %q", tc.args, code, errs, tc.want)
		}
	}
}

func TestConfigPrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "narstore.conf")
	os.WriteFile(cfg, []byte("# comment\ndata = /from/file\njobs = 7\nupstream = file:///file\njson = true\n"), 0o644)
	t.Setenv("NARSTORE_JOBS", "9")
	_, errs, code := narstore(t, "ingest", "--config", cfg, "--upstream", "file:///flag", "--print-config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"data = /from/file", "jobs = 9", "upstream = file:///flag"} {
		if !strings.Contains(errs, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, errs)
		}
	}
	os.WriteFile(cfg, []byte("no-such-setting = 1\n"), 0o644)
	if _, errs, code := narstore(t, "stats", "--config", cfg); code != 2 || !strings.Contains(errs, "unknown setting") {
		t.Errorf("unknown config key: exit %d %s", code, errs)
	}
}

// A cache written by the real Nix client (nix copy --to file://) ingests, in
// every compression Nix writes here.
func TestRealNixFileCache(t *testing.T) {
	nix := nixtest.NewNix(t)
	p1 := nix.Add(t, nixtest.GoRoot(t, "src/net/url"))
	p2 := nix.Add(t, nixtest.GoRoot(t, "src/encoding/json"))
	for _, comp := range []string{"xz", "zstd", "bzip2", "none"} {
		t.Run(comp, func(t *testing.T) {
			cache := nix.FileCache(t, comp, p1, p2)
			data := t.TempDir()
			out, errs, code := narstore(t, "ingest", "--data", data, "--upstream", "file://"+cache, "--trusted-public-key", nix.PublicKey, p1, p2)
			if code != 0 {
				t.Fatalf("exit %d: %s\n%s", code, errs, out)
			}
			if st := stats(t, data); st.NARs != 2 {
				t.Fatalf("stats %+v", st)
			}
			if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
				t.Fatalf("verify: %s %s", out, errs)
			}
		})
	}
}

var binPath string

func buildBinary(t testing.TB) string {
	t.Helper()
	if binPath != "" {
		return binPath
	}
	binPath = filepath.Join(os.TempDir(), fmt.Sprintf("narstore-test-%d", os.Getpid()))
	cmd := exec.Command("go", "build", "-o", binPath, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.Remove(binPath)
	}
	testservers.StopAll()
	os.Exit(code)
}

// A process SIGKILLed in the middle of a NAR leaves nothing recorded, and the
// next run finishes cleanly.
func TestKilledMidIngestRecovers(t *testing.T) {
	bin := buildBinary(t)
	cache := nixtest.NewCache(t, "up-1")
	ni := cache.Add(t, nixtest.Path{Name: "http", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http")), Compression: "none"})
	var slow atomic.Bool
	slow.Store(true)
	started := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/nar/") || !slow.Load() {
			http.FileServer(http.Dir(cache.Dir)).ServeHTTP(w, r)
			return
		}
		body, _ := os.ReadFile(filepath.Join(cache.Dir, r.URL.Path))
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		select {
		case started <- struct{}{}:
		default:
		}
		<-r.Context().Done() // hang until the client goes away
	}))
	defer srv.Close()
	data := t.TempDir()
	args := []string{"ingest", "--data", data, "--upstream", srv.URL, "--trusted-public-key", cache.PublicKey.String(), ni.StorePath}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("ingest never started downloading")
	}
	time.Sleep(100 * time.Millisecond) // let it chunk and store what it has
	cmd.Process.Kill()
	cmd.Wait()
	if st := stats(t, data); st.NARs != 0 || st.NarInfos != 0 {
		t.Fatalf("killed ingest left records: %+v", st)
	}
	slow.Store(false)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	if st := stats(t, data); st.NARs != 1 {
		t.Fatalf("after rerun: %+v", st)
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
		t.Fatalf("verify: %s %s", out, errs)
	}
}

// The scale-out backends through the command: ingest into PostgreSQL + S3
// (MinIO), then serve byte-exact NARs from them and verify.
func TestIngestAndServeOnPostgresAndS3(t *testing.T) {
	srv := testservers.MinIO(t)
	dsn := testservers.Postgres(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	storage := "s3://" + srv.Bucket(t) + "/cache1?endpoint=" + srv.Endpoint + "&region=us-east-1&path-style=true"
	cache, nis := closureCache(t)
	data := t.TempDir()
	common := []string{"--data", data, "--database-url", dsn, "--storage", storage}
	lockArgs := []string{"--lock-backend", "postgres"}
	args := append(append(append([]string{"ingest"}, common...), lockArgs...), "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(), "--closure", nis[0].StorePath)
	if _, errs, code := narstore(t, args...); code != 0 {
		t.Fatalf("ingest: %s", errs)
	}
	if _, err := os.Stat(filepath.Join(data, "index.db")); err == nil {
		t.Fatal("an embedded index was created although --database-url points at PostgreSQL")
	}
	out, errs, code := narstore(t, append([]string{"stats", "--json"}, common...)...)
	if code != 0 || !strings.Contains(out, `"nars": 3`) {
		t.Fatalf("stats: %s %s", out, errs)
	}
	if out, errs, code := narstore(t, append([]string{"verify"}, common...)...); code != 0 {
		t.Fatalf("verify: %s %s", out, errs)
	}
	// Recompression rewrites S3 objects in place under the PostgreSQL
	// maintenance lock; a second instance trying at the same time is refused.
	pgLock, err := lock.NewPostgres(t.Context(), dsn, 4, lock.Retry{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	lease, ok, err := pgLock.TryLock(t.Context(), "maintenance", time.Minute)
	if err != nil || !ok {
		t.Fatalf("take the maintenance lock: %v %v", ok, err)
	}
	rc := append(append(append([]string{"recompress"}, common...), lockArgs...), "--level", "9", "--zstd-program", "go")
	if _, errs, code := narstore(t, rc...); code != 1 || !strings.Contains(errs, "maintenance lock") {
		t.Fatalf("recompress with the lock held elsewhere: exit %d: %s", code, errs)
	}
	lease.Unlock(t.Context())
	pgLock.Close()
	if out, errs, code := narstore(t, rc...); code != 0 || strings.Contains(out, " 0 rewritten") {
		t.Fatalf("recompress: exit %d\n%s\n%s", code, out, errs)
	}
	statsBefore := out // stats --json from above
	if after, _, _ := narstore(t, append([]string{"stats", "--json"}, common...)...); after == statsBefore {
		t.Error("stats unchanged by recompress")
	}
	checkServedNARs(t, startServe(t, append(common, lockArgs...)...), nis)
}

// checkServedNARs GETs every NAR from a running serve and checks its hash.
func checkServedNARs(t *testing.T, url string, nis []*narinfo.NarInfo) {
	t.Helper()
	for _, ni := range nis {
		resp, err := http.Get(url + "/nar/" + ni.NarHash32() + ".nar")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || sha256.Sum256(body) != ni.NarHash {
			t.Fatalf("%s: status %d, %d bytes, err %v: not the NAR", ni.StorePath, resp.StatusCode, len(body), err)
		}
	}
}

// migrate copies an embedded cache to PostgreSQL + S3; a second run copies
// nothing; the copy verifies and serves.
func TestMigrateCommand(t *testing.T) {
	srv := testservers.MinIO(t)
	dsn := testservers.Postgres(t)
	// Credentials as flags for migrate, as NARSTORE_* variables for the
	// rest (no AWS_* variables: the AWS chain would not find any).
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	creds := []string{"--s3-access-key-id", srv.AccessKey, "--s3-secret-access-key", srv.SecretKey}
	storage := "s3://" + srv.Bucket(t) + "/moved?endpoint=" + srv.Endpoint + "&region=us-east-1&path-style=true"
	cache, nis := closureCache(t)
	data := t.TempDir()
	if _, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(), "--closure", nis[0].StorePath); code != 0 {
		t.Fatalf("ingest: %s", errs)
	}
	if _, errs, code := narstore(t, "migrate", "--data", data); code != 2 || !strings.Contains(errs, "--to-database-url") {
		t.Fatalf("migrate without a destination: %d %s", code, errs)
	}
	out, errs, code := narstore(t, append([]string{"migrate", "--data", data, "--to-database-url", dsn, "--to-storage", storage}, creds...)...)
	if code != 0 || !strings.Contains(out, "3 copied now") {
		t.Fatalf("migrate: %d %s %s", code, out, errs)
	}
	out, errs, code = narstore(t, append([]string{"migrate", "--data", data, "--to-database-url", dsn, "--to-storage", storage}, creds...)...)
	if code != 0 || !strings.Contains(out, "0 copied now") || !strings.Contains(out, "0 chunks") {
		t.Fatalf("second migrate: %d %s %s", code, out, errs)
	}
	t.Setenv("NARSTORE_S3_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("NARSTORE_S3_SECRET_ACCESS_KEY", srv.SecretKey)
	dest := []string{"--data", t.TempDir(), "--database-url", dsn, "--storage", storage}
	if out, errs, code := narstore(t, append([]string{"verify"}, dest...)...); code != 0 {
		t.Fatalf("verify the copy: %s %s", out, errs)
	}
	src, _, _ := narstore(t, "stats", "--json", "--data", data)
	dst, _, _ := narstore(t, append([]string{"stats", "--json"}, dest...)...)
	if src != dst {
		t.Errorf("stats differ:\nsource %s\ncopy   %s", src, dst)
	}
	checkServedNARs(t, startServe(t, dest...), nis)
}

func TestIngestMemoryLimitSetting(t *testing.T) {
	_, errs, code := narstore(t, "ingest", "--memory-limit-mb", "-1", "--upstream", "file:///nonexistent", "--allow-untrusted", "/nix/store/00000000000000000000000000000000-x")
	if code != 2 || !strings.Contains(errs, "--memory-limit-mb -1") {
		t.Fatalf("negative memory limit: exit %d, %q", code, errs)
	}
}
