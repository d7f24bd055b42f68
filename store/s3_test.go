package store_test

import (
	"strings"
	"testing"

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
