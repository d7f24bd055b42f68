package main

// Several narstore serve processes as one cache: shared PostgreSQL index,
// MinIO chunk store and a lock service, as behind a load balancer.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/internal/nixtest"
	"github.com/narstore/narstore/internal/testservers"
)

// instance is one narstore serve process.
type instance struct {
	addr   string
	data   string
	cmd    *exec.Cmd
	stderr *syncWriter
	log    *bytes.Buffer
	exited chan struct{}
}

func (in *instance) url() string { return "http://" + in.addr }

type cluster struct {
	t      *testing.T
	bin    string
	env    []string
	args   []string // shared settings: --database-url, --storage, locks, upstream
	dsn    string
	inst   []*instance
	client *http.Client
}

// newCluster prepares n instances sharing a fresh PostgreSQL database and
// MinIO bucket; lockArgs picks the lock service. Start them with start.
func newCluster(t *testing.T, n int, lockArgs ...string) *cluster {
	t.Helper()
	srv := testservers.MinIO(t)
	dsn := testservers.Postgres(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey) // for in-process commands
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	storage := "s3://" + srv.Bucket(t) + "/cache?endpoint=" + srv.Endpoint + "&region=us-east-1&path-style=true"
	c := &cluster{t: t, bin: buildBinary(t), dsn: dsn,
		env:    append(os.Environ(), "AWS_ACCESS_KEY_ID="+srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+srv.SecretKey),
		args:   append([]string{"--database-url", dsn, "--storage", storage}, lockArgs...),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	for range n {
		c.inst = append(c.inst, &instance{addr: freeAddr(t), data: t.TempDir(), log: &bytes.Buffer{}})
	}
	t.Cleanup(func() {
		for i, in := range c.inst {
			if in.cmd != nil {
				in.cmd.Process.Kill()
				<-in.exited
			}
			if t.Failed() && in.stderr != nil {
				in.stderr.mu.Lock()
				t.Logf("instance %d log:\n%s", i, tail(in.log.String(), 4000))
				in.stderr.mu.Unlock()
			}
		}
	})
	return c
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs instance i with the shared settings plus extra, and waits until
// it is healthy. The port picked for it may have been taken by another
// process since (a busy CI machine): then it moves to another port, once or
// twice.
func (c *cluster) start(i int, extra ...string) {
	c.t.Helper()
	for attempt := 0; ; attempt++ {
		if c.tryStart(i, extra...) || attempt == 2 {
			return
		}
		c.inst[i].addr = freeAddr(c.t)
		c.inst[i].log.Reset()
	}
}

// tryStart is one attempt of start; false if the port was in use.
func (c *cluster) tryStart(i int, extra ...string) bool {
	c.t.Helper()
	in := c.inst[i]
	args := append([]string{"serve", "--listen", in.addr, "--data", in.data, "--log-level", "warn", "--lock-retry-max", "200ms"}, c.args...)
	in.cmd = exec.Command(c.bin, append(args, extra...)...)
	in.cmd.Env = c.env
	in.stderr = &syncWriter{w: in.log}
	in.cmd.Stderr = in.stderr
	if err := in.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	in.exited = make(chan struct{})
	go func() { in.cmd.Wait(); close(in.exited) }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := c.client.Get(in.url() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return true
			}
		}
		select {
		case <-in.exited:
			in.stderr.mu.Lock()
			log := in.log.String()
			in.stderr.mu.Unlock()
			if strings.Contains(log, "address already in use") {
				in.cmd = nil
				return false
			}
			c.t.Fatalf("instance %d exited at start:\n%s", i, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("instance %d never became healthy", i)
		}
	}
}

// stop sends sig to instance i and waits for it to exit.
func (c *cluster) stop(i int, sig syscall.Signal) {
	c.t.Helper()
	in := c.inst[i]
	in.cmd.Process.Signal(sig)
	select {
	case <-in.exited:
	case <-time.After(60 * time.Second):
		c.t.Fatalf("instance %d did not exit after %v", i, sig)
	}
	in.cmd = nil
}

// index opens the shared index directly, for checks.
func (c *cluster) index() *index.Postgres {
	c.t.Helper()
	ix, err := index.OpenPostgres(c.t.Context(), c.dsn, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { ix.Close() })
	return ix
}

// fetch GETs narinfo and NAR of ni from the given instances and checks the
// bytes hash to NarHash.
func (c *cluster) fetch(ni *narinfo.NarInfo, narinfoFrom, narFrom int) error {
	resp, err := c.client.Get(c.inst[narinfoFrom].url() + "/" + ni.HashPart() + ".narinfo")
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("narinfo from instance %d: %s", narinfoFrom, resp.Status)
	}
	return c.fetchNAR(ni, narFrom)
}

func (c *cluster) fetchNAR(ni *narinfo.NarInfo, from int) error {
	resp, err := c.client.Get(c.inst[from].url() + "/nar/" + ni.NarHash32() + ".nar")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("NAR from instance %d: %s", from, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return fmt.Errorf("NAR from instance %d after %d bytes: %w (%w)", from, n, errCutMidStream, err)
	}
	if uint64(n) != ni.NarSize || [32]byte(h.Sum(nil)) != ni.NarHash {
		return fmt.Errorf("NAR from instance %d: %d bytes that are not the NAR", from, n)
	}
	return nil
}

// errCutMidStream marks a NAR response that broke off after its headers.
var errCutMidStream = errors.New("response cut mid-stream")

// countingUpstream serves a binary cache directory over HTTP, counting NAR
// downloads; hook, if set, may take over a NAR request.
type countingUpstream struct {
	*httptest.Server
	nars atomic.Int64
	mu   sync.Mutex
	hook func(w http.ResponseWriter, r *http.Request, n int64) bool
}

func newCountingUpstream(t *testing.T, dir string) *countingUpstream {
	u := &countingUpstream{}
	files := http.FileServer(http.Dir(dir))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			n := u.nars.Add(1)
			u.mu.Lock()
			hook := u.hook
			u.mu.Unlock()
			if hook != nil && hook(w, r, n) {
				return
			}
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *countingUpstream) setHook(h func(w http.ResponseWriter, r *http.Request, n int64) bool) {
	u.mu.Lock()
	u.hook = h
	u.mu.Unlock()
}

// Many clients ask three instances for one uncached path, the narinfo from
// one instance and the NAR from another: one upstream download, and every
// client gets the NAR. Once with Redis locks, once with PostgreSQL advisory
// locks.
func TestClusterOneUpstreamDownload(t *testing.T) {
	for _, backend := range []string{"redis", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			lockArgs := []string{"--lock-backend", backend}
			if backend == "redis" {
				lockArgs = append(lockArgs, "--redis-addr", testservers.Redis(t), "--redis-key-prefix", "narstore-test-"+nixtest.RandomHashPart()+":")
			}
			c := newCluster(t, 3, lockArgs...)
			cache := nixtest.NewCache(t, "upstream-1")
			nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/go"))
			ni := cache.Add(t, nixtest.Path{Name: "go-src", NAR: nar, Compression: "xz"})
			up := newCountingUpstream(t, cache.Dir)
			gate := make(chan struct{})
			up.setHook(func(w http.ResponseWriter, r *http.Request, n int64) bool {
				<-gate // hold the download until every client has asked
				return false
			})
			for i := range c.inst {
				c.start(i, "--upstream", up.URL, "--trusted-public-key", cache.PublicKey.String())
			}
			const clients = 12
			errs := make(chan error, clients)
			var asked atomic.Int64
			for i := range clients {
				go func() {
					asked.Add(1)
					errs <- c.fetch(ni, i%3, (i+1)%3)
				}()
			}
			for up.nars.Load() == 0 || asked.Load() < clients {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond) // let every NAR request reach its instance
			close(gate)
			for range clients {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			if n := up.nars.Load(); n != 1 {
				t.Errorf("%d upstream NAR downloads for %d clients on 3 instances, want 1", n, clients)
			}
			if ok, err := c.index().HasNAR(t.Context(), ni.NarHash); !ok || err != nil {
				t.Errorf("NAR not recorded: %v", err)
			}
		})
	}
}

// An instance SIGKILLed while it pulls a large NAR through: its client never
// gets a whole NAR, nothing is recorded, and another instance completes the
// ingest once the dead instance's lease has expired.
func TestClusterCrashMidIngest(t *testing.T) {
	const ttl = 3 * time.Second
	c := newCluster(t, 3, "--lock-backend", "redis", "--redis-addr", testservers.Redis(t),
		"--redis-key-prefix", "narstore-test-"+nixtest.RandomHashPart()+":", "--lock-ttl", ttl.String())
	cache := nixtest.NewCache(t, "upstream-1")
	nar := nixtest.DumpPath(t, nixtest.GoRoot(t, "src/runtime"))
	ni := cache.Add(t, nixtest.Path{Name: "runtime-src", NAR: nar, Compression: "none"})
	up := newCountingUpstream(t, cache.Dir)
	halfSent := make(chan struct{})
	var secondAt atomic.Int64
	up.setHook(func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n > 1 {
			secondAt.Store(time.Now().UnixNano())
			return false
		}
		body, _ := os.ReadFile(filepath.Join(cache.Dir, r.URL.Path))
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		close(halfSent)
		<-r.Context().Done() // hang until the downloader dies
		return true
	})
	for i := range c.inst {
		c.start(i, "--upstream", up.URL, "--trusted-public-key", cache.PublicKey.String())
	}
	victim := make(chan error, 1)
	go func() { victim <- c.fetch(ni, 0, 0) }()
	select {
	case <-halfSent:
	case <-time.After(60 * time.Second):
		t.Fatal("the pull-through download never started")
	}
	time.Sleep(300 * time.Millisecond) // chunks of the first half reach the store
	c.stop(0, syscall.SIGKILL)
	killedAt := time.Now()
	if err := <-victim; err == nil {
		t.Fatal("the killed instance's client got a whole, valid NAR")
	}
	ix := c.index()
	if ok, _ := ix.HasNAR(t.Context(), ni.NarHash); ok {
		t.Fatal("a killed ingest recorded its NAR")
	}
	// A retry through another instance: it waits for the dead holder's lease.
	if err := c.fetchNAR(ni, 1); err != nil {
		t.Fatal(err)
	}
	if up.nars.Load() != 2 {
		t.Errorf("%d upstream downloads, want 2 (the killed one and the takeover)", up.nars.Load())
	}
	// The dead instance renewed every ttl/3, so its lease had at least 2/3 of
	// ttl left when it died; the takeover must not start before it expired.
	if wait := time.Unix(0, secondAt.Load()).Sub(killedAt); wait < ttl/2 {
		t.Errorf("takeover download started %v after the kill: before the lease (TTL %v) could expire", wait, ttl)
	}
	if ok, _ := ix.HasNAR(t.Context(), ni.NarHash); !ok {
		t.Fatal("takeover did not record the NAR")
	}
	if err := c.fetchNAR(ni, 2); err != nil {
		t.Fatal(err)
	}
	if out, errs, code := narstore(t, append([]string{"verify", "--data", t.TempDir()}, c.args[:4]...)...); code != 0 {
		t.Fatalf("verify: %s %s", out, errs)
	}
}

// lbClient sends each request to a healthy instance, and on a connection
// error or a 5xx retries through the others, as a load balancer with
// health checks does.
type lbClient struct {
	c       *cluster
	next    atomic.Int64
	healthy []atomic.Bool
	cut     atomic.Int64 // attempts whose response broke off mid-stream
}

func newLBClient(ctx context.Context, c *cluster) *lbClient {
	lb := &lbClient{c: c, healthy: make([]atomic.Bool, len(c.inst))}
	check := func() {
		for i, in := range c.inst {
			resp, err := c.client.Get(in.url() + "/healthz")
			ok := err == nil && resp.StatusCode == 200
			if err == nil {
				resp.Body.Close()
			}
			lb.healthy[i].Store(ok)
		}
	}
	check()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
				check()
			}
		}
	}()
	return lb
}

// do runs fn against instances until it succeeds, for up to 10 rounds.
func (lb *lbClient) do(fn func(i int) error) error {
	var errs []error
	for attempt := range 10 * len(lb.healthy) {
		i := int(lb.next.Add(1)) % len(lb.healthy)
		if !lb.healthy[i].Load() && attempt < 5*len(lb.healthy) {
			continue
		}
		err := fn(i)
		if err == nil {
			return nil
		}
		if errors.Is(err, errCutMidStream) {
			lb.cut.Add(1)
		}
		errs = append(errs, fmt.Errorf("instance %d: %w", i, err))
		time.Sleep(20 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// All three instances are restarted one by one (SIGTERM, start) while
// clients keep downloading, stored and pulled-through paths alike. Clients
// that retry through the remaining instances see no failed request, and no
// NAR is ever delivered wrong.
func TestClusterRollingRestart(t *testing.T) {
	c := newCluster(t, 3, "--lock-backend", "redis", "--redis-addr", testservers.Redis(t),
		"--redis-key-prefix", "narstore-test-"+nixtest.RandomHashPart()+":")
	cache := nixtest.NewCache(t, "upstream-1")
	var nis []*narinfo.NarInfo
	for i, dir := range []string{"src/net/http", "src/encoding", "src/go", "src/strings", "src/crypto/tls", "src/net", "src/os", "src/fmt"} {
		comp := []string{"xz", "zstd", "none"}[i%3]
		nis = append(nis, cache.Add(t, nixtest.Path{Name: strings.ReplaceAll(dir, "/", "-"), NAR: nixtest.DumpPath(t, nixtest.GoRoot(t, dir)), Compression: comp}))
	}
	up := newCountingUpstream(t, cache.Dir)
	upArgs := []string{"--upstream", up.URL, "--trusted-public-key", cache.PublicKey.String()}
	// Half the paths are stored before; the rest are pulled through under load.
	ingestArgs := append(append([]string{"ingest", "--data", t.TempDir()}, c.args[:4]...), upArgs...)
	for _, ni := range nis[:4] {
		ingestArgs = append(ingestArgs, ni.StorePath)
	}
	if _, errs, code := narstore(t, ingestArgs...); code != 0 {
		t.Fatalf("ingest: %s", errs)
	}
	serveArgs := append([]string{"--drain-delay", "300ms"}, upArgs...)
	for i := range c.inst {
		c.start(i, serveArgs...)
	}
	ctx, cancel := context.WithCancel(t.Context())
	lb := newLBClient(ctx, c)
	var requests, failures atomic.Int64
	var failMu sync.Mutex
	var failed []error
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; ctx.Err() == nil; k++ {
				ni := nis[k%len(nis)]
				requests.Add(1)
				err := lb.do(func(i int) error {
					// The narinfo and the NAR may reach different instances.
					return c.fetch(ni, i, (i+k)%len(c.inst))
				})
				if err != nil && ctx.Err() == nil {
					failures.Add(1)
					failMu.Lock()
					failed = append(failed, fmt.Errorf("%s: %w", ni.StorePath, err))
					failMu.Unlock()
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	for i := range c.inst {
		before := requests.Load()
		c.stop(i, syscall.SIGTERM)
		c.start(i, serveArgs...)
		for requests.Load() < before+10 { // under load between restarts
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d requests failed for a retrying client; first: %v", n, requests.Load(), failed[0])
	}
	// SIGTERM lets in-flight downloads finish: retries are only ever needed
	// for connections that were refused, never for a half-sent NAR.
	if n := lb.cut.Load(); n != 0 {
		t.Errorf("%d NAR responses were cut mid-stream by a graceful restart", n)
	}
	if requests.Load() < 50 {
		t.Errorf("only %d requests during the restarts: not under load", requests.Load())
	}
	t.Logf("%d requests through 3 rolling restarts, %d upstream NAR downloads", requests.Load(), up.nars.Load())
	ix := c.index()
	for _, ni := range nis {
		if ok, _ := ix.HasNAR(t.Context(), ni.NarHash); !ok {
			t.Errorf("%s never recorded", ni.StorePath)
		}
	}
}

// Two instances pull three releases of a package through, with reverse
// deltas, the second and third at once on different instances: both then
// rewrite the first release (one of them, holding its rebase lock, does).
// Every release reads back whole from either instance, old releases hold
// deltas of newer ones, and verify finds every delta base named in the index
// (PostgreSQL) for the blobs in MinIO.
func TestClusterReverseDeltas(t *testing.T) {
	c := newCluster(t, 2, "--lock-backend", "redis", "--redis-addr", testservers.Redis(t),
		"--redis-key-prefix", "narstore-test-"+nixtest.RandomHashPart()+":")
	cache := nixtest.NewCache(t, "upstream-1")
	all := toolReleases(t, cache, 4)
	nis, fourth := all[:3], all[3]
	up := newCountingUpstream(t, cache.Dir)
	for i := range c.inst {
		c.start(i, "--upstream", up.URL, "--trusted-public-key", cache.PublicKey.String(), "--delta", "--preset", "fastcdc-16k-64k-256k")
	}
	if err := c.fetch(nis[0], 0, 0); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for v := 1; v < 3; v++ {
		go func() { errs <- c.fetch(nis[v], v%2, v%2) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ix := c.index()
	for _, ni := range nis {
		if ok, err := ix.HasNAR(t.Context(), ni.NarHash); err != nil || !ok {
			t.Fatalf("%s not recorded: %v", ni.StorePath, err)
		}
	}
	// Reverse deltas rewrite after the client has its NAR: wait for them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		depths, err := ix.Depths(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(depths) > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no release was rewritten as deltas of a newer one: %+v", depths)
		}
		time.Sleep(100 * time.Millisecond)
	}
	readAllAndVerify(t, c, nis)

	// A recompression (with its similar-chunk deltas), on PostgreSQL and S3
	// under the Redis maintenance lock, while a fourth release is pulled
	// through and the third is rewritten as deltas of it: every release still reads whole from
	// either instance, every rewrite is released, and verify finds every
	// base a blob needs named.
	before := deltaCount(t, ix)
	recompressed := make(chan error, 1)
	go func() {
		out, errs, code := narstore(t, append([]string{"recompress", "--data", t.TempDir(), "--jobs", "2", "--progress", "never"}, c.args...)...)
		if code != 0 {
			recompressed <- fmt.Errorf("recompress: exit %d\n%s%s", code, out, errs)
			return
		}
		// Its similar-chunk deltas are rewrites too, recorded while the
		// ingest records its own.
		if !strings.Contains(out, "now deltas of similar chunks") {
			recompressed <- fmt.Errorf("recompress made no similar-chunk deltas:\n%s", out)
			return
		}
		recompressed <- nil
	}()
	if err := c.fetch(fourth, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-recompressed; err != nil {
		t.Fatal(err)
	}
	// The fourth release's predecessor (the release recorded last) is
	// rewritten as deltas of it: more delta chunks than before, and every
	// rewrite released in the end.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n := deltaCount(t, ix)
		st, err := ix.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if n > before && st.Rewrites == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no release was rewritten as deltas of the fourth, or its rewrites were not released: %d delta chunks (%d before), %d rewrites", n, before, st.Rewrites)
		}
	}
	readAllAndVerify(t, c, all)
}

// readAllAndVerify reads every NAR of nis whole from every instance, and
// runs narstore verify on the cluster's store, which must pass without an
// UNSAFE line.
func readAllAndVerify(t *testing.T, c *cluster, nis []*narinfo.NarInfo) {
	t.Helper()
	for _, ni := range nis {
		for i := range c.inst {
			if err := c.fetchNAR(ni, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, errs, code := narstore(t, append([]string{"verify", "--data", t.TempDir()}, c.args[:4]...)...); code != 0 || strings.Contains(out, "UNSAFE") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errs)
	}
}

// deltaCount counts the chunks of the index's delta depths past 0.
func deltaCount(t *testing.T, ix index.Index) int64 {
	t.Helper()
	depths, err := ix.Depths(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, d := range depths {
		if d.Depth > 0 {
			n += d.Chunks
		}
	}
	return n
}
