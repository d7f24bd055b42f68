package store_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/store"
	"github.com/narstore/narstore/store/storetest"
)

func TestMain(m *testing.M) { testservers.Main(m) }

func TestS3Conformance(t *testing.T) {
	srv := testservers.MinIO(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenS3(t.Context(), store.S3Options{Bucket: srv.Bucket(t), Prefix: "cache1", Endpoint: srv.Endpoint,
			PathStyle: true, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestS3MissingBucketIsAClearError(t *testing.T) {
	srv := testservers.MinIO(t)
	_, err := store.OpenS3(t.Context(), store.S3Options{Bucket: "no-such-bucket", Endpoint: srv.Endpoint, PathStyle: true,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, MaxAttempts: 1})
	if err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("got %v", err)
	}
}

func TestParseS3URL(t *testing.T) {
	o, err := store.ParseS3URL("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9100&region=eu-west-1&path-style=true")
	if err != nil || o.Bucket != "bucket" || o.Prefix != "some/prefix" || o.Endpoint != "http://127.0.0.1:9100" || o.Region != "eu-west-1" || !o.PathStyle {
		t.Fatalf("%+v %v", o, err)
	}
	for _, bad := range []string{"http://x/y", "s3:///nobucket", "s3://b/p?path-style=maybe"} {
		if _, err := store.ParseS3URL(bad); err == nil {
			t.Errorf("ParseS3URL(%q) succeeded", bad)
		}
	}
}

// Transient S3 errors are retried with backoff, and every HTTP request,
// retries included, is counted.
func TestS3RetriesAndCountsRequests(t *testing.T) {
	srv := testservers.MinIO(t)
	target, _ := url.Parse(srv.Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var n atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && n.Add(1)%2 == 1 { // every other PUT fails once
			http.Error(w, "<Error><Code>SlowDown</Code></Error>", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer flaky.Close()
	s, err := store.OpenS3(t.Context(), store.S3Options{Bucket: srv.Bucket(t), Endpoint: flaky.URL, PathStyle: true,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	base := s.Requests()
	var ids []chunker.ID
	for i := range 3 {
		id := chunker.Sum([]byte{byte(i)})
		ids = append(ids, id)
		if err := s.Put(t.Context(), id, []byte{1, 2, byte(i)}); err != nil {
			t.Fatalf("put through transient 503s: %v", err)
		}
	}
	rc, err := s.Get(t.Context(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	s.Has(t.Context(), ids[1])
	s.Walk(t.Context(), func(chunker.ID, int64) error { return nil })
	got := s.Requests()
	total := got.Total() - base.Total()
	got.Head -= base.Head // OpenS3's HeadBucket
	if got.Put != 6 || got.Get != 1 || got.Head != 1 || got.List != 1 || total != 9 {
		t.Errorf("requests %+v, want 6 PUTs (3 retried), 1 GET, 1 HEAD, 1 LIST", got)
	}
}
