package ingest_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

// benchBackends are the chunk stores compared by BenchmarkBackend*: the local
// directory and S3 on a MinIO started for the benchmark (loopback, so the
// figures show narstore's costs, not a network's latency).
func benchBackends(b *testing.B) map[string]func(b *testing.B) store.Store {
	return map[string]func(b *testing.B) store.Store{
		"dir": func(b *testing.B) store.Store {
			d, err := store.OpenDir(filepath.Join(b.TempDir(), "chunks"))
			if err != nil {
				b.Fatal(err)
			}
			return d
		},
		"minio": func(b *testing.B) store.Store {
			srv := testservers.MinIO(b)
			s, err := store.OpenS3(b.Context(), store.S3Options{Bucket: srv.Bucket(b), Endpoint: srv.Endpoint, PathStyle: true,
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
}

type requester interface{ Requests() store.S3Requests }

// requests returns the store's S3 request count so far; ok is false for a
// store that makes no S3 requests.
func requests(st store.Store) (r store.S3Requests, ok bool) {
	if rq, ok := st.(requester); ok {
		return rq.Requests(), true
	}
	return r, false
}

// reportRequests reports n, the S3 requests of the whole benchmark, per GB.
func reportRequests(b *testing.B, n store.S3Requests, bytesPerOp int64) {
	gb := float64(bytesPerOp) * float64(b.N) / 1e9
	b.ReportMetric(float64(n.Put)/gb, "PUT/GB")
	b.ReportMetric(float64(n.Get)/gb, "GET/GB")
	b.ReportMetric(float64(n.Head)/gb, "HEAD/GB")
	b.ReportMetric(float64(n.Total())/gb, "req/GB")
}

// BenchmarkBackendIngest ingests the benchmark NAR (uncompressed input, new
// data, default preset and level) into each store; req/GB is S3 requests per
// GB of NAR ingested.
func BenchmarkBackendIngest(b *testing.B) {
	nar, _ := benchNAR()
	for name, open := range benchBackends(b) {
		b.Run(name, func(b *testing.B) {
			var reqs store.S3Requests
			s3 := false
			b.SetBytes(int64(len(nar)))
			for b.Loop() {
				b.StopTimer()
				// A fresh store and index each time: every chunk is new.
				st := open(b)
				before, _ := requests(st)
				c, _ := store.NewChunks(st, store.ChunksOptions{})
				ix, err := index.OpenSQLite(filepath.Join(b.TempDir(), "index.db"), nil)
				if err != nil {
					b.Fatal(err)
				}
				in, _ := ingest.New(nil, ix, c, ingest.Options{})
				b.StartTimer()
				if _, err := in.IngestNAR(b.Context(), narinfoFor(nar), io.NopCloser(bytes.NewReader(nar)), "none"); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				ix.Close()
				var after store.S3Requests
				after, s3 = requests(st)
				reqs = reqs.Add(after.Sub(before))
				b.StartTimer()
			}
			if s3 {
				reportRequests(b, reqs, int64(len(nar)))
			}
		})
	}
}

// BenchmarkBackendRead reassembles the whole benchmark NAR from each store
// with an empty chunk cache, through the server's presence check and
// read-ahead, as a cold NAR GET does; req/GB is per GB of NAR served.
func BenchmarkBackendRead(b *testing.B) {
	nar, _ := benchNAR()
	for name, open := range benchBackends(b) {
		b.Run(name, func(b *testing.B) {
			st := open(b)
			c, _ := store.NewChunks(st, store.ChunksOptions{})
			ix, err := index.OpenSQLite(filepath.Join(b.TempDir(), "index.db"), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer ix.Close()
			in, _ := ingest.New(nil, ix, c, ingest.Options{})
			ni := narinfoFor(nar)
			if _, err := in.IngestNAR(b.Context(), ni, io.NopCloser(bytes.NewReader(nar)), "none"); err != nil {
				b.Fatal(err)
			}
			rec, _ := ix.NAR(b.Context(), ni.NarHash)
			before, s3 := requests(st)
			b.SetBytes(int64(len(nar)))
			b.ResetTimer()
			for b.Loop() {
				cache := reassembly.NewCache(c, 0)
				if err := cache.CheckPresent(context.Background(), rec.Chunks); err != nil {
					b.Fatal(err)
				}
				rd, err := reassembly.NewReader(context.Background(), cache, rec, 0, -1, reassembly.ReaderOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, rd); err != nil || n != int64(len(nar)) {
					b.Fatalf("%d bytes, %v", n, err)
				}
				rd.Close()
			}
			if s3 {
				after, _ := requests(st)
				reportRequests(b, after.Sub(before), int64(len(nar)))
			}
		})
	}
}
