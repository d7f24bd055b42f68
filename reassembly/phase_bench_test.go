package reassembly_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/narstore/narstore/reassembly"
)

// BenchmarkTTFBPhases splits time to first byte into its sequential parts:
// the index lookup, the presence check of every chunk, and the first chunk's
// bytes (the server runs the last two concurrently).
func BenchmarkTTFBPhases(b *testing.B) {
	e := benchStore()
	var tNAR, tPresent, tFirst time.Duration
	buf := make([]byte, 64<<10)
	for b.Loop() {
		ctx := context.Background()
		t0 := time.Now()
		nar, _ := e.ix.NAR(ctx, e.ni.NarHash)
		t1 := time.Now()
		c := reassembly.NewCache(e.chunks, 256<<20)
		c.CheckPresent(ctx, nar.Chunks)
		t2 := time.Now()
		rd, _ := reassembly.NewReader(ctx, c, nar, 0, -1, reassembly.ReaderOptions{})
		io.ReadAtLeast(rd, buf, 1)
		t3 := time.Now()
		rd.Close()
		tNAR += t1.Sub(t0)
		tPresent += t2.Sub(t1)
		tFirst += t3.Sub(t2)
		time.Sleep(20 * time.Millisecond)
	}
	n := float64(b.N)
	b.ReportMetric(float64(tNAR.Microseconds())/n/1000, "ms-index")
	b.ReportMetric(float64(tPresent.Microseconds())/n/1000, "ms-present")
	b.ReportMetric(float64(tFirst.Microseconds())/n/1000, "ms-first")
}

type firstWriteRecorder struct {
	h     http.Header
	first time.Time
}

func (f *firstWriteRecorder) Header() http.Header { return f.h }
func (f *firstWriteRecorder) WriteHeader(int)     {}
func (f *firstWriteRecorder) Write(p []byte) (int, error) {
	if f.first.IsZero() {
		f.first = time.Now()
		return len(p), nil
	}
	return 0, io.ErrClosedPipe
}

// BenchmarkTTFBHandler is the handler's time from a NAR request to its first
// body write, without HTTP or a client.
func BenchmarkTTFBHandler(b *testing.B) {
	e := benchStore()
	var total time.Duration
	for b.Loop() {
		srv := reassembly.NewServer(e.ix, reassembly.NewCache(e.chunks, 256<<20), nil, reassembly.Options{})
		req := httptest.NewRequest("GET", "/nar/"+e.ni.NarHash32()+".nar", nil)
		rec := &firstWriteRecorder{h: http.Header{}}
		start := time.Now()
		func() {
			defer func() { recover() }()
			srv.Handler().ServeHTTP(rec, req)
		}()
		total += rec.first.Sub(start)
		time.Sleep(20 * time.Millisecond)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms-handler-first-write")
}
