package reassembly_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

func BenchmarkTTFBPhases(b *testing.B) {
	e := benchStore()
	var tNAR, tPresent, tFirst, tHM time.Duration
	buf := make([]byte, 64<<10)
	for b.Loop() {
		ctx := context.Background()
		t0 := time.Now()
		nar, _ := e.ix.NAR(ctx, e.ni.NarHash)
		t1 := time.Now()
		ids := make([]chunker.ID, len(nar.Chunks))
		for i, c := range nar.Chunks {
			ids[i] = c.ID
		}
		ta := time.Now()
		e.chunks.Store().(store.BatchHaser).HasMany(ctx, ids)
		tHM += time.Since(ta)
		t1 = time.Now()
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
	b.ReportMetric(float64(tHM.Microseconds())/n/1000, "ms-hasmany")
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
