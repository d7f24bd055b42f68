package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testenv"
	"github.com/narstore/narstore/refnorm"
	"github.com/narstore/narstore/store"
)

// startServe runs narstore serve in-process and returns its base URL.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, append([]string{"serve", "--listen", addr, "--log-level", "error"}, args...), io.Discard, &syncWriter{w: &stderr})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	url := "http://" + addr
	for i := 0; ; i++ {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			return url
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if i > 500 {
			t.Fatalf("serve never became healthy")
		}
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// closureCache makes a signed upstream cache with a -> {b, c}, b -> c (and a -> a), of real files.
func closureCache(t *testing.T) (*nixtest.Cache, []*narinfo.NarInfo) {
	t.Helper()
	cache := nixtest.NewCache(t, "upstream-1")
	c := cache.Add(t, nixtest.Path{Name: "sort-src", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort"))})
	b := cache.Add(t, nixtest.Path{Name: "bufio-src", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/bufio")), References: []string{baseName(c)}, Compression: "zstd"})
	ah := nixtest.RandomHashPart()
	a := cache.Add(t, nixtest.Path{Name: "http-src", HashPart: ah, NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http")),
		References: []string{baseName(b), baseName(c), ah + "-http-src"}, Compression: "bzip2"})
	return cache, []*narinfo.NarInfo{a, b, c}
}

func baseName(ni *narinfo.NarInfo) string { return strings.TrimPrefix(ni.StorePath, "/nix/store/") }

func writeKey(t *testing.T, name string) (path string, pub string) {
	t.Helper()
	sk, pk, err := signature.GenerateKeypair(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), name+".sk")
	os.WriteFile(path, []byte(sk.String()), 0o600)
	return path, pk.String()
}

// substitute runs nix-store -r into a fresh chroot store and returns its output and error.
func substitute(nix *nixtest.Nix, storeDir, url, keys string, paths ...string) (string, error) {
	args := append([]string{"--store", storeDir, "-r"}, paths...)
	args = append(args, "--option", "substituters", url, "--option", "trusted-public-keys", keys,
		"--option", "narinfo-cache-negative-ttl", "0")
	out, err := nix.Command("nix-store", args...).CombinedOutput()
	return string(out), err
}

func verifyPaths(t *testing.T, nix *nixtest.Nix, storeDir string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		nix.Run(t, "nix-store", "--store", storeDir, "--verify-path", p)
	}
}

func TestNixSubstitutesClosureFromServe(t *testing.T) {
	nix := nixtest.NewNix(t)
	cache, nis := closureCache(t)
	data := t.TempDir()
	if _, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(), "--closure", nis[0].StorePath); code != 0 {
		t.Fatalf("ingest: %s", errs)
	}
	skFile, ownPub := writeKey(t, "narstore-test-1")
	url := startServe(t, "--data", data, "--secret-key-file", skFile)
	var paths []string
	for _, ni := range nis {
		paths = append(paths, ni.StorePath)
	}
	for name, keys := range map[string]string{"UpstreamKey": cache.PublicKey.String(), "NarstoreKey": ownPub} {
		t.Run(name, func(t *testing.T) {
			client := filepath.Join(t.TempDir(), "client")
			if out, err := substitute(nix, client, url, keys, nis[0].StorePath); err != nil {
				t.Fatalf("nix-store -r: %v\n%s", err, out)
			}
			verifyPaths(t, nix, client, paths...)
		})
	}
	t.Run("UntrustedKeyRefused", func(t *testing.T) {
		_, other := writeKey(t, "someone-else-1")
		out, err := substitute(nix, filepath.Join(t.TempDir(), "client"), url, other, nis[0].StorePath)
		if err == nil || !strings.Contains(out, "signed by any of the keys") {
			t.Fatalf("want a signature refusal, got %v\n%s", err, out)
		}
	})
}

func TestNixCopyUploadThenSubstitute(t *testing.T) {
	nix := nixtest.NewNix(t)
	cache, nis := closureCache(t)
	// The source store gets the closure from the file:// cache, as a builder would have it.
	if out, err := substitute(nix, nix.SourceDir, cache.URL(), cache.PublicKey.String(), nis[0].StorePath); err != nil {
		t.Fatalf("seed source store: %v\n%s", err, out)
	}
	data := t.TempDir()
	skFile, ownPub := writeKey(t, "narstore-test-1")
	url := startServe(t, "--data", data, "--secret-key-file", skFile, "--allow-uploads", "--upload-user", "ci", "--upload-password", "pw")
	netrc := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(netrc, []byte("machine 127.0.0.1 login ci password pw\n"), 0o600)

	for _, comp := range []string{"zstd", "xz"} {
		t.Run(comp, func(t *testing.T) {
			out, err := nix.Command("nix", "copy", "--store", nix.SourceDir, "--to", url+"?compression="+comp,
				"--option", "netrc-file", netrc, nis[0].StorePath).CombinedOutput()
			if err != nil {
				t.Fatalf("nix copy: %v\n%s", err, out)
			}
		})
	}
	if st := stats(t, data); st.NarInfos != 3 {
		t.Fatalf("after upload: %+v", st)
	}
	// A second client with its own HOME: the uploader's Nix cached the narinfos
	// it uploaded (without narstore's signature) for 30 days.
	nix2 := nixtest.NewNix(t)
	client := filepath.Join(t.TempDir(), "client")
	if out, err := substitute(nix2, client, url, ownPub, nis[0].StorePath); err != nil {
		t.Fatalf("second client: %v\n%s", err, out)
	}
	verifyPaths(t, nix2, client, nis[0].StorePath, nis[1].StorePath, nis[2].StorePath)

	// Without credentials the upload is refused.
	out, err := nix.Command("nix", "copy", "--store", nix.SourceDir, "--to", url, nis[0].StorePath).CombinedOutput()
	_ = out
	if err == nil {
		// Everything is already there, so Nix may have nothing to upload; force a new path.
		p := nix.Add(t, nixtest.GoRoot(t, "src/unicode"))
		if out, err := nix.Command("nix", "copy", "--store", nix.SourceDir, "--to", url, p).CombinedOutput(); err == nil {
			t.Fatalf("unauthenticated nix copy succeeded:\n%s", out)
		}
	}
}

func TestNixPullThroughConcurrentClients(t *testing.T) {
	cache, nis := closureCache(t)
	var narGets sync.Map // URL path -> *atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			v, _ := narGets.LoadOrStore(r.URL.Path, new(atomic.Int32))
			v.(*atomic.Int32).Add(1)
			time.Sleep(200 * time.Millisecond) // a slow upstream, so clients overlap
		}
		http.FileServer(http.Dir(cache.Dir)).ServeHTTP(w, r)
	}))
	defer up.Close()
	data := t.TempDir()
	url := startServe(t, "--data", data, "--upstream", up.URL, "--trusted-public-key", cache.PublicKey.String())

	const clients = 5
	var wg sync.WaitGroup
	errs := make([]string, clients)
	nixes := make([]*nixtest.Nix, clients)
	stores := make([]string, clients)
	for i := range clients {
		nixes[i] = nixtest.NewNix(t)
		stores[i] = filepath.Join(t.TempDir(), "client")
	}
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := substitute(nixes[i], stores[i], url, cache.PublicKey.String(), nis[0].StorePath); err != nil {
				errs[i] = fmt.Sprintf("client %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Fatal(e)
		}
	}
	for i := range clients {
		verifyPaths(t, nixes[i], stores[i], nis[0].StorePath, nis[1].StorePath, nis[2].StorePath)
	}
	n := 0
	narGets.Range(func(k, v any) bool {
		n++
		if c := v.(*atomic.Int32).Load(); c != 1 {
			t.Errorf("%s downloaded %d times from upstream for %d clients, want 1", k, c, clients)
		}
		return true
	})
	if n != 3 {
		t.Errorf("%d distinct NARs downloaded, want 3", n)
	}
	if st := stats(t, data); st.NARs != 3 {
		t.Errorf("pull-through stored %d NARs, want 3", st.NARs)
	}
}

func TestNixRefusesDamagedNAR(t *testing.T) {
	nix := nixtest.NewNix(t)
	cache := nixtest.NewCache(t, "upstream-1")
	ni := cache.Add(t, nixtest.Path{Name: "http-src", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/net/http"))})
	data := t.TempDir()
	if _, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(), "--preset", "fastcdc-16k-64k-256k", ni.StorePath); code != 0 {
		t.Fatal(errs)
	}
	// Damage the last blob written in the middle of the NAR: find chunk files
	// and flip a byte in one that is not the first.
	var files []string
	filepath.Walk(filepath.Join(data, "chunks", "chunks"), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 3 {
		t.Fatalf("only %d chunks", len(files))
	}
	for _, f := range files[1:] { // all but one: whatever the order, the stream breaks after headers or before
		b, _ := os.ReadFile(f)
		b[len(b)-1] ^= 0xff
		os.WriteFile(f, b, 0o644)
	}
	url := startServe(t, "--data", data)
	client := filepath.Join(t.TempDir(), "client")
	out, err := substitute(nix, client, url, cache.PublicKey.String(), ni.StorePath)
	if err == nil {
		t.Fatalf("Nix accepted a damaged NAR:\n%s", out)
	}
	if nix.Command("nix-store", "--store", client, "--verify-path", ni.StorePath).Run() == nil {
		t.Fatal("damaged path is valid in the client store")
	}
}

// Two releases of a package that embeds store paths of its dependency and of
// itself, ingested with normalization and delta (the ingest defaults), and
// recompressed (which stores a near-copy within the newest release as a
// delta of its original), are substituted byte-exact by the real Nix client.
func TestNixSubstitutesDeltaAndNormalizedNARs(t *testing.T) {
	nix := nixtest.NewNix(t)
	cache := nixtest.NewCache(t, "upstream-1")
	dep := cache.Add(t, nixtest.Path{Name: "dep-1.0", NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, "src/sort"))})
	var paths []string
	for v := 1; v <= 2; v++ {
		self := nixtest.RandomHashPart()
		dir := t.TempDir()
		src, _ := os.ReadFile(filepath.Join(nixtest.GoRoot(t, "src/net/http"), "server.go"))
		if v == 2 {
			src = append([]byte("// release 2\n"), src...)
		}
		os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
		os.WriteFile(filepath.Join(dir, "server.go"), src, 0o644)
		// A near-copy: recompress --similar makes it a delta of the original.
		half := len(src) / 2
		os.WriteFile(filepath.Join(dir, "server-copy.go"), append(append(slices.Clone(src[:half]), "// copied\n"...), src[half:]...), 0o644)
		script := strings.Repeat(fmt.Sprintf("#!%s/bin/sh\nexec /nix/store/%s-pkg-%d.0/bin/x\n", dep.StorePath, self, v), 200)
		os.WriteFile(filepath.Join(dir, "bin", "run"), []byte(script), 0o755)
		name := fmt.Sprintf("pkg-%d.0", v)
		ni := cache.Add(t, nixtest.Path{Name: name, HashPart: self, NAR: nixtest.DumpPath(t, dir), References: []string{baseName(dep), self + "-" + name}})
		paths = append(paths, ni.StorePath)
	}
	data := t.TempDir()
	for i, p := range paths {
		out, errs, code := narstore(t, "ingest", "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(), "--closure", "--preset", "fastcdc-16k-64k-256k", p)
		if code != 0 {
			t.Fatal(errs)
		}
		// Reverse deltas (the default): release 1 is re-encoded against 2.
		if rev := strings.Contains(out, "Reverse deltas: "); rev != (i == 1) {
			t.Errorf("ingest of release %d: reverse deltas reported: %v\n%s", i+1, rev, out)
		}
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
		t.Fatalf("verify: %s %s", out, errs)
	}
	// stats counts the chunks per delta depth, adding up to all of them.
	st := stats(t, data)
	var n int64
	var stored uint64
	for _, d := range st.Depths {
		n += d.Chunks
		stored += d.StoredBytes
	}
	if len(st.Depths) < 2 || st.Depths[0].Depth != 0 || n != st.Chunks || stored != st.StoredBytes {
		t.Errorf("stats depths %+v do not add up to %d chunks, %d bytes", st.Depths, st.Chunks, st.StoredBytes)
	}
	ix, err := index.OpenSQLite(filepath.Join(data, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	deltas, normalized := 0, 0
	for i, p := range paths {
		ni, _ := ix.NarInfo(t.Context(), narinfo.HashPart(p))
		nar, _ := ix.NAR(t.Context(), ni.NarHash)
		if nar.Transform == refnorm.Transform {
			normalized++
		}
		for _, c := range nar.Chunks {
			recs, _ := ix.Chunks(t.Context(), []chunker.ID{c.ID})
			if store.Encoding(recs[0].Encoding).IsDelta() {
				deltas++
				if i == len(paths)-1 {
					t.Errorf("the newest release has a delta chunk: with reverse deltas it is stored plain")
				}
			}
		}
	}
	ix.Close()
	if normalized != 2 || deltas == 0 {
		t.Fatalf("fixture does not exercise the features: %d normalized NARs, %d delta chunks", normalized, deltas)
	}
	// Recompressed by the zstd program: its delta frames name no dictionary.
	testenv.LookPath(t, "zstd", "apt install zstd")
	if out, errs, code := narstore(t, "recompress", "--data", data, "--level", "19", "--zstd-program", "exec"); code != 0 || strings.Contains(out, " 0 rewritten") || !strings.Contains(out, "now deltas of similar chunks") {
		t.Fatalf("recompress: exit %d (want rewrites, some as deltas of similar chunks)\n%s\n%s", code, out, errs)
	}
	if out, errs, code := narstore(t, "verify", "--data", data); code != 0 {
		t.Fatalf("verify after recompress: %s %s", out, errs)
	}
	url := startServe(t, "--data", data)
	client := filepath.Join(t.TempDir(), "client")
	if out, err := substitute(nix, client, url, cache.PublicKey.String(), paths...); err != nil {
		t.Fatalf("nix-store -r: %v\n%s", err, out)
	}
	verifyPaths(t, nix, client, append(paths, dep.StorePath)...)
}

// Pull-through with delta encoding: a client fetching release 2 after
// release 1 gets it whole while serve rewrites release 1 as deltas of it
// (reverse deltas, the default with --delta); afterwards a fresh client
// substitutes both from the rewritten store.
func TestNixPullThroughReverseDeltas(t *testing.T) {
	cache := nixtest.NewCache(t, "upstream-1")
	var paths []string
	for v := 1; v <= 2; v++ {
		dir := t.TempDir()
		nixtest.CopyTree(t, nixtest.GoRoot(t, "src/encoding/json"), dir)
		if v == 2 {
			for _, f := range []string{"decode.go", "encode.go"} {
				p := filepath.Join(dir, f)
				b, _ := os.ReadFile(p)
				os.WriteFile(p, append([]byte("// release 2\n"), b...), 0o644)
			}
		}
		ni := cache.Add(t, nixtest.Path{Name: fmt.Sprintf("tool-%d.0", v), NAR: nixtest.DumpPath(t, dir), Compression: "zstd"})
		paths = append(paths, ni.StorePath)
	}
	data := t.TempDir()
	url := startServe(t, "--data", data, "--upstream", cache.URL(), "--trusted-public-key", cache.PublicKey.String(),
		"--delta", "--preset", "fastcdc-16k-64k-256k")
	nix := nixtest.NewNix(t)
	client := filepath.Join(t.TempDir(), "client")
	for _, p := range paths {
		if out, err := substitute(nix, client, url, cache.PublicKey.String(), p); err != nil {
			t.Fatalf("nix-store -r %s: %v\n%s", p, err, out)
		}
	}
	// The rewrite of release 1 runs after release 2 was served.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := stats(t, data)
		if len(st.Depths) > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("release 1 was not rewritten as deltas of release 2: %+v", st.Depths)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The deltas are release 1's: release 2, the newest, is plain.
	ix, err := index.OpenSQLite(filepath.Join(data, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		ni, err := ix.NarInfo(t.Context(), narinfo.HashPart(p))
		if err != nil {
			t.Fatal(err)
		}
		nar, _ := ix.NAR(t.Context(), ni.NarHash)
		deltas := 0
		for _, c := range nar.Chunks {
			recs, _ := ix.Chunks(t.Context(), []chunker.ID{c.ID})
			if store.Encoding(recs[0].Encoding).IsDelta() {
				deltas++
			}
		}
		if (deltas > 0) != (i == 0) {
			t.Errorf("release %d: %d delta chunks of %d; want release 1 only to have deltas", i+1, deltas, len(nar.Chunks))
		}
	}
	ix.Close()
	fresh := filepath.Join(t.TempDir(), "fresh")
	if out, err := substitute(nix, fresh, url, cache.PublicKey.String(), paths...); err != nil {
		t.Fatalf("nix-store -r from the rewritten store: %v\n%s", err, out)
	}
	verifyPaths(t, nix, client, paths...)
	verifyPaths(t, nix, fresh, paths...)
}
