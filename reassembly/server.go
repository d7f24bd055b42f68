package reassembly

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/store"
)

// Index is what the server needs from the index.
type Index interface {
	NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
	NAR(ctx context.Context, narHash [32]byte) (*index.NAR, error)
	HasNAR(ctx context.Context, narHash [32]byte) (bool, error)
	AddNarInfo(ctx context.Context, ni *narinfo.NarInfo) error
	AddPending(ctx context.Context, ni *narinfo.NarInfo) error
	Pending(ctx context.Context, narHash [32]byte) (*narinfo.NarInfo, error)
}

// Ingester is what the server needs for pull-through and uploads.
type Ingester interface {
	HasUpstream() bool
	UpstreamNarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
	IngestFromUpstream(ctx context.Context, ni *narinfo.NarInfo, tee io.Writer) (*ingest.Result, error)
	IngestUpload(ctx context.Context, body io.ReadCloser, compression string, maxSize uint64, name string) (*index.NAR, error)
}

// Options configure a Server.
type Options struct {
	Priority      int  // nix-cache-info Priority; lower wins (cache.nixos.org is 40)
	WantMassQuery bool // nix-cache-info WantMassQuery
	// SecretKey, if set, adds narstore's own signature to every narinfo served.
	SecretKey *signature.SecretKey
	// NegativeTTL is how long an upstream "not found" is remembered.
	NegativeTTL time.Duration
	ReadAhead   int // chunks fetched ahead per NAR response
	// TransportZstd compresses NAR responses with Content-Encoding: zstd when
	// the client's Accept-Encoding asks for zstd.
	TransportZstd bool
	// Uploads enables PUT of nix-cache-info, narinfos and NARs (nix copy --to).
	Uploads        bool
	UploadUser     string // HTTP Basic user (with UploadPassword)
	UploadPassword string
	UploadToken    string // Bearer token, or the Basic password with any user
	MaxUploadSize  uint64 // largest uploaded NAR (uncompressed); 0 means 64 GiB
	SpoolDir       string // temp files for pull-through streaming
	Logger         *slog.Logger
	Registry       *prometheus.Registry // metrics; nil: a private one
	Now            func() time.Time
}

// Server is the Nix binary-cache HTTP front.
type Server struct {
	ix    Index
	cache *Cache
	in    Ingester // nil: no pull-through, no uploads
	o     Options
	log   *slog.Logger
	now   func() time.Time

	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	mu       sync.Mutex
	negative map[string]time.Time          // hash part -> expiry
	pending  map[[32]byte]*narinfo.NarInfo // NAR hash -> trusted upstream narinfo not yet ingested
	pendingP map[string]*narinfo.NarInfo   // the same, by store path hash part
	spools   map[[32]byte]*spool           // NAR hash -> in-flight pull-through
	uploads  map[string]uploaded           // upload URL path -> NAR it carried
	lookups  map[string]*narinfoLookup     // hash part -> in-flight upstream narinfo fetch

	zenc     sync.Pool
	m        metrics
	draining atomic.Bool
}

// Drain makes /healthz answer 503 so that load balancers take this instance
// out of rotation; every other route keeps working.
func (s *Server) Drain() { s.draining.Store(true) }

type uploaded struct {
	hash [32]byte
	size uint64
	at   time.Time
}

type narinfoLookup struct {
	done chan struct{}
	ni   *narinfo.NarInfo
	err  error
}

type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	bytesServed prometheus.Counter
	upstream    *prometheus.CounterVec
	ingestErrs  prometheus.Counter
}

const maxPending = 100_000

// errIndexUnavailable marks index failures, answered with 503, never 404.
var errIndexUnavailable = errors.New("index unavailable")

// NewServer returns a server. cache is the chunk source; in may be nil.
func NewServer(ix Index, cache *Cache, in Ingester, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxUploadSize == 0 {
		o.MaxUploadSize = 64 << 30
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = DefaultReadAhead
	}
	s := &Server{ix: ix, cache: cache, in: in, o: o, log: o.Logger, now: o.Now,
		negative: map[string]time.Time{}, pending: map[[32]byte]*narinfo.NarInfo{}, pendingP: map[string]*narinfo.NarInfo{},
		spools: map[[32]byte]*spool{}, uploads: map[string]uploaded{}, lookups: map[string]*narinfoLookup{}}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.zenc.New = func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		return e
	}
	s.initMetrics()
	return s
}

func (s *Server) initMetrics() {
	reg := s.o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s.m.reg = reg
	s.m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "narstore_http_requests_total", Help: "HTTP requests by route and status code."}, []string{"route", "code"})
	s.m.bytesServed = prometheus.NewCounter(prometheus.CounterOpts{Name: "narstore_nar_bytes_served_total", Help: "NAR bytes written to clients (before transport compression)."})
	s.m.upstream = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "narstore_upstream_fetches_total", Help: "Upstream fetches by kind (narinfo, nar) and result."}, []string{"kind", "result"})
	s.m.ingestErrs = prometheus.NewCounter(prometheus.CounterOpts{Name: "narstore_ingest_errors_total", Help: "Pull-through and upload ingests that failed."})
	reg.MustRegister(s.m.requests, s.m.bytesServed, s.m.upstream, s.m.ingestErrs,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "narstore_chunk_cache_hits_total", Help: "Chunk cache hits."}, func() float64 { return float64(s.cache.Hits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "narstore_chunk_cache_misses_total", Help: "Chunk cache misses."}, func() float64 { return float64(s.cache.Misses.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "narstore_chunk_cache_bytes", Help: "Bytes of chunk data in the cache."}, func() float64 { return float64(s.cache.Bytes()) }))
}

// Close stops background pull-through ingests (after ctx expires) and waits for them.
func (s *Server) Close(ctx context.Context) {
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.bgCancel()
		<-done
	}
	s.bgCancel()
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serve)
}

type statusWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func route(p string) string {
	switch {
	case p == "/nix-cache-info":
		return "nix-cache-info"
	case strings.HasSuffix(p, ".narinfo"):
		return "narinfo"
	case strings.HasPrefix(p, "/nar/"):
		return "nar"
	case p == "/healthz", p == "/metrics":
		return p[1:]
	}
	return "other"
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	sw := &statusWriter{ResponseWriter: w}
	rt := route(r.URL.Path)
	defer func() {
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		aborted := recover()
		if aborted != nil {
			code = 599 // connection aborted mid-response
		}
		s.m.requests.WithLabelValues(rt, strconv.Itoa(code)).Inc()
		s.log.Info("request", "method", r.Method, "path", r.URL.Path, "status", code, "bytes", sw.bytes, "dur_ms", s.now().Sub(start).Milliseconds())
		if aborted != nil {
			panic(aborted)
		}
	}()
	p := r.URL.Path
	switch {
	case p == "/healthz":
		if s.draining.Load() {
			// Shutting down: load balancers stop sending new requests.
			sw.Header().Set("Connection", "close")
			http.Error(sw, "draining", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(sw, "ok\n")
	case p == "/metrics":
		promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{}).ServeHTTP(sw, r)
	case r.Method == http.MethodPut:
		s.servePut(sw, r)
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		sw.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(sw, "method not allowed", http.StatusMethodNotAllowed)
	case p == "/nix-cache-info":
		sw.Header().Set("Content-Type", "text/x-nix-cache-info")
		mass := 0
		if s.o.WantMassQuery {
			mass = 1
		}
		fmt.Fprintf(sw, "StoreDir: %s\nWantMassQuery: %d\nPriority: %d\n", narinfo.StoreDir, mass, s.o.Priority)
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		s.serveNarInfo(sw, r, strings.TrimSuffix(p[1:], ".narinfo"))
	case strings.HasPrefix(p, "/nar/"):
		s.serveNAR(sw, r, strings.TrimPrefix(p, "/nar/"))
	default:
		// .ls listings, logs and realisations are not kept: "not here" to Nix.
		http.NotFound(sw, r)
	}
}

// ---- narinfo ----

func (s *Server) serveNarInfo(w http.ResponseWriter, r *http.Request, h string) {
	if !narinfo.ValidHashPart(h) {
		http.NotFound(w, r)
		return
	}
	ni, err := s.ix.NarInfo(r.Context(), h)
	if errors.Is(err, index.ErrNotFound) {
		ni, err = s.pullNarInfo(r.Context(), h)
	} else if err != nil {
		err = fmt.Errorf("%w: %w", errIndexUnavailable, err)
	}
	switch {
	case errors.Is(err, errIndexUnavailable):
		// Not a 404: Nix would remember the path as missing.
		s.log.Error("narinfo", "hash", h, "err", err)
		http.Error(w, "index unavailable, try again", http.StatusServiceUnavailable)
		return
	case errors.Is(err, ingest.ErrNotFound), errors.Is(err, index.ErrNotFound):
		w.Header().Set("Cache-Control", "no-store")
		http.NotFound(w, r)
		return
	case errors.Is(err, ingest.ErrUpstreamTransient):
		s.log.Warn("upstream narinfo", "hash", h, "err", err)
		http.Error(w, "upstream unavailable, try again", http.StatusServiceUnavailable)
		return
	case err != nil:
		// Untrusted or malformed upstream entries are "not here" for clients.
		s.log.Warn("narinfo", "hash", h, "err", err)
		w.Header().Set("Cache-Control", "no-store")
		http.NotFound(w, r)
		return
	}
	out := *ni
	out.URL = "nar/" + ni.NarHash32() + ".nar"
	out.Compression = "none"
	out.FileHash, out.FileSize = "", 0
	out.Sigs = append([]string(nil), ni.Sigs...)
	if s.o.SecretKey != nil {
		if err := out.Sign(*s.o.SecretKey); err != nil {
			http.Error(w, "signing failed", http.StatusInternalServerError)
			return
		}
	}
	body := out.String()
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		io.WriteString(w, body)
	}
}

// pullNarInfo asks the upstream for a narinfo the index lacks, remembering
// misses for NegativeTTL and hits (as pending NARs) until their NAR is fetched.
func (s *Server) pullNarInfo(ctx context.Context, h string) (*narinfo.NarInfo, error) {
	if s.in == nil || !s.in.HasUpstream() {
		return nil, index.ErrNotFound
	}
	now := s.now()
	s.mu.Lock()
	if ni := s.pendingP[h]; ni != nil {
		s.mu.Unlock()
		return ni, nil
	}
	if exp, ok := s.negative[h]; ok && now.Before(exp) {
		s.mu.Unlock()
		return nil, ingest.ErrNotFound
	}
	l, ok := s.lookups[h]
	if !ok {
		l = &narinfoLookup{done: make(chan struct{})}
		s.lookups[h] = l
	}
	s.mu.Unlock()
	if ok {
		select {
		case <-l.done:
			return l.ni, l.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	l.ni, l.err = s.in.UpstreamNarInfo(context.WithoutCancel(ctx), h)
	if l.err == nil {
		// Shared through the index, so the NAR request may reach any instance.
		if err := s.ix.AddPending(context.WithoutCancel(ctx), l.ni); err != nil {
			l.ni, l.err = nil, fmt.Errorf("%w: %w", errIndexUnavailable, err)
		}
	}
	s.mu.Lock()
	delete(s.lookups, h)
	switch {
	case l.err == nil:
		s.m.upstream.WithLabelValues("narinfo", "hit").Inc()
		if len(s.pending) >= maxPending {
			clear(s.pending)
			clear(s.pendingP)
		}
		s.pending[l.ni.NarHash] = l.ni
		s.pendingP[h] = l.ni
	case errors.Is(l.err, ingest.ErrNotFound):
		s.m.upstream.WithLabelValues("narinfo", "miss").Inc()
		if s.o.NegativeTTL > 0 {
			if len(s.negative) >= maxPending {
				for k, exp := range s.negative {
					if !now.Before(exp) {
						delete(s.negative, k)
					}
				}
				if len(s.negative) >= maxPending {
					clear(s.negative)
				}
			}
			s.negative[h] = now.Add(s.o.NegativeTTL)
		}
	default:
		s.m.upstream.WithLabelValues("narinfo", "error").Inc()
	}
	s.mu.Unlock()
	close(l.done)
	return l.ni, l.err
}

// ---- NAR ----

func parseNARName(name string) ([32]byte, bool) {
	var h [32]byte
	base, ok := strings.CutSuffix(name, ".nar")
	if !ok || len(base) != 52 {
		return h, false
	}
	b, err := nixbase32.DecodeString(base)
	if err != nil || len(b) != 32 {
		return h, false
	}
	copy(h[:], b)
	return h, true
}

func (s *Server) serveNAR(w http.ResponseWriter, r *http.Request, name string) {
	hash, ok := parseNARName(name)
	if !ok {
		s.serveUploadedHead(w, r, name)
		return
	}
	ctx := r.Context()
	nar, err := s.ix.NAR(ctx, hash)
	if errors.Is(err, index.ErrNotFound) {
		s.mu.Lock()
		ni := s.pending[hash]
		s.mu.Unlock()
		if ni == nil && s.in != nil && s.in.HasUpstream() {
			// Announced by another instance sharing the index?
			ni, err = s.ix.Pending(ctx, hash)
			if err != nil && !errors.Is(err, index.ErrNotFound) {
				s.log.Error("pending lookup", "nar_hash", narinfo.FormatHash(hash), "err", err)
				http.Error(w, "index unavailable", http.StatusServiceUnavailable)
				return
			}
		}
		if ni != nil && s.in != nil {
			s.servePullThrough(w, r, ni)
			return
		}
		http.NotFound(w, r)
		return
	}
	if err != nil {
		s.log.Error("nar lookup", "nar_hash", narinfo.FormatHash(hash), "err", err)
		http.Error(w, "index unavailable", http.StatusServiceUnavailable)
		return
	}
	etag := `"` + nixbase32.EncodeToString(hash[:]) + `"`
	w.Header().Set("Content-Type", "application/x-nix-nar")
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	if s.o.TransportZstd {
		w.Header().Set("Vary", "Accept-Encoding")
	}
	size := int64(nar.Size)

	off, n, partial, ok := parseRange(r.Header.Get("Range"), size)
	if ir := r.Header.Get("If-Range"); ir != "" && ir != etag {
		off, n, partial, ok = 0, size, false, true
	}
	if !ok {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	useZstd := s.o.TransportZstd && !partial && acceptsZstd(r.Header.Get("Accept-Encoding"))
	if r.Method == http.MethodHead {
		// From the index alone: a recorded NAR has all its chunks stored.
		s.writeNARHeaders(w, size, off, n, partial, useZstd)
		return
	}
	// Fail closed: every chunk must be present and the first bytes in hand
	// before any header goes out. The presence check runs while the first
	// chunk loads.
	present := make(chan error, 1)
	go func() { present <- s.cache.CheckPresent(ctx, chunksInRange(nar.Chunks, off, n)) }()
	rd, err := NewReader(ctx, s.cache, nar, off, n, ReaderOptions{ReadAhead: s.o.ReadAhead})
	if err != nil {
		<-present
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer rd.Close()
	first := make([]byte, 64<<10)
	m, err := io.ReadAtLeast(rd, first, 1)
	if perr := <-present; perr != nil {
		err = perr // the missing chunk is the better explanation
	}
	if err != nil && !(err == io.EOF && n == 0) {
		s.chunkFailure(w, nar, err)
		return
	}
	s.writeNARHeaders(w, size, off, n, partial, useZstd)
	var out io.Writer = w
	var enc *zstd.Encoder
	if useZstd {
		enc = s.zenc.Get().(*zstd.Encoder)
		enc.Reset(w)
		out = enc
	}
	counted := &countWriter{w: out}
	_, err = counted.Write(first[:m])
	if err == nil {
		_, err = io.Copy(counted, rd)
	}
	if err == nil && enc != nil {
		err = enc.Close()
	}
	s.m.bytesServed.Add(float64(counted.n))
	if enc != nil {
		enc.Reset(nil)
		s.zenc.Put(enc)
	}
	if err != nil {
		// Headers are out: abort the connection so the client sees a broken
		// transfer, never a tidy short 200.
		s.log.Error("nar stream aborted", "nar_hash", narinfo.FormatHash(hash), "bytes", counted.n, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// chunksInRange returns the chunks holding bytes [off, off+n).
func chunksInRange(chunks []index.ChunkRef, off, n int64) []index.ChunkRef {
	first := sort.Search(len(chunks), func(i int) bool { return chunks[i].Offset > uint64(off) }) - 1
	last := sort.Search(len(chunks), func(i int) bool { return chunks[i].Offset >= uint64(off+n) })
	if first < 0 || n <= 0 {
		return nil
	}
	return chunks[first:last]
}

func (s *Server) chunkFailure(w http.ResponseWriter, nar *index.NAR, err error) {
	s.log.Error("nar not servable", "nar_hash", narinfo.FormatHash(nar.Hash), "err", err)
	if errors.Is(err, store.ErrNotFound) {
		// A missing chunk is permanent: "not here" lets Nix use another substituter.
		http.Error(w, "NAR incomplete in this cache", http.StatusNotFound)
		return
	}
	http.Error(w, "NAR temporarily unavailable", http.StatusServiceUnavailable)
}

func (s *Server) writeNARHeaders(w http.ResponseWriter, size, off, n int64, partial, useZstd bool) {
	h := w.Header()
	switch {
	case useZstd:
		h.Set("Content-Encoding", "zstd")
		w.WriteHeader(http.StatusOK)
	case partial:
		h.Set("Accept-Ranges", "bytes")
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, size))
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		w.WriteHeader(http.StatusPartialContent)
	default:
		h.Set("Accept-Ranges", "bytes")
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// parseRange understands one range: bytes=N-, bytes=N-M, bytes=-S. A
// missing, multi-range or non-bytes header means the whole body (RFC 9110
// lets a server ignore Range). ok is false for an unsatisfiable range.
func parseRange(hdr string, size int64) (off, n int64, partial, ok bool) {
	spec, found := strings.CutPrefix(hdr, "bytes=")
	if hdr == "" || !found || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, size, false, true
	}
	if a == "" { // suffix: last b bytes
		sfx, err := strconv.ParseInt(b, 10, 64)
		if err != nil || sfx <= 0 {
			return 0, 0, false, false
		}
		sfx = min(sfx, size)
		return size - sfx, sfx, true, true
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false, false
	}
	end := size - 1
	if b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil || e < start {
			return 0, 0, false, false
		}
		end = min(e, size-1)
	}
	return start, end - start + 1, true, true
}

func acceptsZstd(ae string) bool {
	for _, part := range strings.Split(ae, ",") {
		tok, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(tok), "zstd") {
			q := strings.TrimSpace(params)
			return !(strings.HasPrefix(q, "q=0") && strings.Trim(q, "q=0.") == "")
		}
	}
	return false
}

// servePullThrough streams a NAR that is being (or is about to be) ingested
// from upstream. All clients asking for one NAR share one download.
func (s *Server) servePullThrough(w http.ResponseWriter, r *http.Request, ni *narinfo.NarInfo) {
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "application/x-nix-nar")
		w.Header().Set("Content-Length", strconv.FormatUint(ni.NarSize, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	s.mu.Lock()
	sp := s.spools[ni.NarHash]
	if sp == nil {
		var err error
		sp, err = newSpool(s.o.SpoolDir, int64(ni.NarSize))
		if err != nil {
			s.mu.Unlock()
			s.log.Error("spool", "err", err)
			http.Error(w, "cannot stage download", http.StatusServiceUnavailable)
			return
		}
		s.spools[ni.NarHash] = sp
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			_, err := s.in.IngestFromUpstream(s.bgCtx, ni, sp)
			result := "ok"
			if err != nil {
				result = "error"
				s.m.ingestErrs.Inc()
				s.log.Warn("pull-through ingest failed", "store_path", ni.StorePath, "err", err)
			}
			s.m.upstream.WithLabelValues("nar", result).Inc()
			s.mu.Lock()
			delete(s.spools, ni.NarHash)
			if err == nil {
				delete(s.pending, ni.NarHash)
				delete(s.pendingP, ni.HashPart())
			}
			s.mu.Unlock()
			sp.finish(err)
		}()
	}
	rd := sp.reader(r.Context())
	s.mu.Unlock()
	defer rd.Close()

	first := make([]byte, 64<<10)
	m, err := io.ReadAtLeast(rd, first, 1)
	if errors.Is(err, ingest.ErrIngestedElsewhere) {
		// Another instance stored it while this one waited for the lock.
		s.serveNAR(w, r, ni.NarHash32()+".nar")
		return
	}
	if err != nil {
		s.log.Warn("pull-through not servable", "store_path", ni.StorePath, "err", err)
		if errors.Is(err, ingest.ErrNotFound) {
			http.NotFound(w, r)
		} else {
			http.Error(w, "upstream NAR unavailable", http.StatusServiceUnavailable)
		}
		return
	}
	w.Header().Set("Content-Type", "application/x-nix-nar")
	w.Header().Set("Content-Length", strconv.FormatUint(ni.NarSize, 10))
	w.WriteHeader(http.StatusOK)
	counted := &countWriter{w: w}
	_, err = counted.Write(first[:m])
	if err == nil {
		_, err = io.Copy(counted, rd)
	}
	s.m.bytesServed.Add(float64(counted.n))
	if err != nil {
		s.log.Error("pull-through stream aborted", "store_path", ni.StorePath, "bytes", counted.n, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// ---- uploads ----

func (s *Server) authorized(r *http.Request) bool {
	eq := func(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
	if s.o.UploadToken != "" {
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && eq(tok, s.o.UploadToken) {
			return true
		}
		if _, pass, ok := r.BasicAuth(); ok && eq(pass, s.o.UploadToken) {
			return true
		}
	}
	if s.o.UploadUser != "" {
		if user, pass, ok := r.BasicAuth(); ok && eq(user, s.o.UploadUser) && eq(pass, s.o.UploadPassword) {
			return true
		}
	}
	return s.o.UploadToken == "" && s.o.UploadUser == ""
}

func (s *Server) servePut(w http.ResponseWriter, r *http.Request) {
	if !s.o.Uploads || s.in == nil {
		http.Error(w, "uploads are disabled on this narstore (serve --allow-uploads)", http.StatusMethodNotAllowed)
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="narstore"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	p := r.URL.Path
	switch {
	case p == "/nix-cache-info":
		io.Copy(io.Discard, io.LimitReader(r.Body, 4096))
		w.WriteHeader(http.StatusNoContent)
	case strings.HasPrefix(p, "/nar/"):
		comp, ok := ingest.CompressionOfFile(p)
		if !ok {
			http.Error(w, "unsupported NAR compression: upload with compression=none, xz, zstd or bzip2", http.StatusUnsupportedMediaType)
			return
		}
		nar, err := s.in.IngestUpload(r.Context(), r.Body, comp, s.o.MaxUploadSize, "")
		if err != nil {
			s.m.ingestErrs.Inc()
			s.log.Warn("upload rejected", "path", p, "err", err)
			http.Error(w, "NAR rejected: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		now := s.now()
		for k, u := range s.uploads {
			if now.Sub(u.at) > 24*time.Hour {
				delete(s.uploads, k)
			}
		}
		s.uploads[strings.TrimPrefix(p, "/")] = uploaded{hash: nar.Hash, size: nar.Size, at: now}
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		s.putNarInfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
	default:
		// .ls listings, logs, realisations: accepted and dropped.
		io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) putNarInfo(w http.ResponseWriter, r *http.Request, h string) {
	ni, err := narinfo.Parse(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if ni.HashPart() != h {
		http.Error(w, fmt.Sprintf("narinfo for %s uploaded as %s.narinfo", ni.StorePath, h), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	up, ok := s.uploads[ni.URL]
	s.mu.Unlock()
	if ok && (up.hash != ni.NarHash || up.size != ni.NarSize) {
		http.Error(w, fmt.Sprintf("the NAR uploaded to %s has %s and %d bytes, the narinfo says %s and %d bytes",
			ni.URL, narinfo.FormatHash(up.hash), up.size, ni.NarHashString(), ni.NarSize), http.StatusBadRequest)
		return
	}
	if err := s.ix.AddNarInfo(r.Context(), ni); err != nil {
		status := http.StatusBadRequest
		msg := err.Error()
		if errors.Is(err, index.ErrNotFound) {
			msg = fmt.Sprintf("no NAR with %s was uploaded: upload the NAR first", ni.NarHashString())
		}
		http.Error(w, msg, status)
		return
	}
	s.mu.Lock()
	delete(s.negative, h)
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// serveUploadedHead answers Nix's HEAD/GET of an upload URL (nar/<filehash>.nar.xz):
// 200 only when that upload is recorded, so Nix skips re-uploading it.
func (s *Server) serveUploadedHead(w http.ResponseWriter, r *http.Request, name string) {
	s.mu.Lock()
	up, ok := s.uploads["nar/"+name]
	s.mu.Unlock()
	if ok && r.Method == http.MethodHead {
		if has, err := s.ix.HasNAR(r.Context(), up.hash); err == nil && has {
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	http.NotFound(w, r)
}
