// Package ingest takes NARs from an upstream binary cache (or an upload),
// verifies them against their narinfo while streaming, cuts them into chunks,
// stores the new chunks and records the NAR in the index in one commit.
//
// A NAR is either fully ingested and verified, or absent: nothing reaches the
// index before NarHash and NarSize have been checked on the whole stream and
// every chunk is stored. Chunk blobs written by a failed ingest are harmless
// orphans (content-addressed, reused by the next attempt).
package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/lock"
	"github.com/narstore/narstore/refnorm"
	"github.com/narstore/narstore/store"
)

var (
	// ErrNotFound means the upstream has no narinfo (or NAR) for the path.
	ErrNotFound = errors.New("not found upstream")
	// ErrHashMismatch means the NAR bytes do not hash to the narinfo's NarHash.
	ErrHashMismatch = errors.New("NAR does not match its NarHash")
	// ErrSizeMismatch means the NAR has a different length than NarSize.
	ErrSizeMismatch = errors.New("NAR does not match its NarSize")
)

// Index is what ingest needs from the index.
type Index interface {
	NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
	HasNAR(ctx context.Context, narHash [32]byte) (bool, error)
	HasChunks(ctx context.Context, ids []chunker.ID) ([]bool, error)
	Commit(ctx context.Context, ni *narinfo.NarInfo, nar *index.NAR, newChunks []index.Chunk) error
	AddNarInfo(ctx context.Context, ni *narinfo.NarInfo) error
	Predecessor(ctx context.Context, pname string) (*index.NAR, error)
	Chunks(ctx context.Context, ids []chunker.ID) ([]index.Chunk, error)
	SimilarChunks(ctx context.Context, sims []uint64, limit int) ([]chunker.ID, error)
	Rebase(ctx context.Context, rw []index.Rewrite, maxDepth int) ([]index.RebaseResult, error)
	ReleaseHolds(ctx context.Context, ids []chunker.ID) error
	Dependents(ctx context.Context, id chunker.ID) ([]chunker.ID, error)
	StorePaths(ctx context.Context, narHash [32]byte) ([]string, error)
}

// Options configure an Ingester.
type Options struct {
	Preset chunker.Preset // zero: chunker.DefaultPreset
	// Keys are the trusted upstream keys. A narinfo no key verifies is refused
	// unless AllowUntrusted is set.
	Keys           narinfo.PublicKeys
	AllowUntrusted bool
	Jobs           int // NARs ingested in parallel by Batch; 0 means 4
	ChunkWorkers   int // encode/store workers per NAR; 0 means GOMAXPROCS
	XZ             XZDecoder
	Logger         *slog.Logger // nil: silent
	// TempDir holds delta ingest's spill files (decoded predecessor chunks,
	// unlinked; each up to the predecessor NAR's size, 8 GiB or an eighth of
	// the space free); "" means os.TempDir.
	TempDir string
	// Normalize replaces reference hashes with a placeholder before chunking
	// (refnorm), so rebuilds that differ only in store hashes dedup.
	Normalize bool
	// Delta stores a new chunk as a zstd delta against a similar chunk of the
	// package's previous NAR when that is DeltaMargin smaller than plain zstd.
	Delta bool
	// ReverseDelta (with Delta) turns that around for a package with a
	// previous NAR: the new NAR's chunks are stored plain, and once it is
	// recorded, the previous NAR's chunks it does not share are re-encoded
	// as deltas of them (rebasePredecessor). The newest release, the one
	// clients fetch, then reads without delta decoding. The store must be
	// able to replace blobs (store.Replacer).
	ReverseDelta bool
	DeltaMargin  float64 // 0 means 0.2
	// SimilarSearch (with Delta) also looks for a delta base anywhere in the
	// store, by similarity keys kept in the index, for chunks the package's
	// previous NAR has nothing similar to (a first version, a renamed
	// package). New chunks get keys recorded either way when Delta is on.
	SimilarSearch bool
	// DeltaBases is how many predecessor chunks a delta may use as its
	// dictionary: the most similar one and its neighbours. 0 means 3; 1 is
	// the best base alone.
	DeltaBases int
	// MaxDeltaDepth bounds the delta chains this ingest builds, at most
	// store.MaxDeltaDepthLimit; 0 means DefaultReverseDeltaDepth with
	// ReverseDelta, store.DefaultMaxDeltaDepth without. Deeper chains store
	// less (a package's fourth release after a plain one can still be a
	// delta of the third) and cost reads more decoding.
	// It must not exceed the depth readers accept.
	MaxDeltaDepth int
	// MaxMoves bounds, with reverse deltas, the chunks of older releases
	// moved onto the new release per chunk of the previous one whose
	// rewrite would pass MaxDeltaDepth; past it those previous chunks stay
	// plain, and the chains under them stop growing. The moves per bump
	// otherwise grow with the releases kept. 0 means no bound.
	MaxMoves int
	// Locker, if set, makes "one ingest per NAR" hold across every instance
	// sharing it: a download starts only under the NAR's lock, and a NAR that
	// another instance finished meanwhile is not downloaded again.
	Locker  lock.Locker
	LockTTL time.Duration // lease TTL (renewed while the ingest runs); 0 means 30s
}

// Progress counts work as it happens; read it from any goroutine.
type Progress struct {
	NARsTotal, NARsDone, NARsSkipped, NARsFailed atomic.Int64
	NARBytes, UpstreamBytes                      atomic.Int64 // bytes processed so far
	NewChunks, NewStoredBytes                    atomic.Int64
	// Rebased counts older chunks re-encoded as deltas of newer ones
	// (Options.ReverseDelta), RebaseSaved the stored bytes that saved, and
	// Rehomed the chunks moved from a chunk so it could be rebased.
	Rebased, RebaseSaved, Rehomed atomic.Int64
}

// Ingester ingests NARs. Safe for concurrent use.
type Ingester struct {
	up     *Upstream // nil when there is no upstream (uploads only)
	ix     Index
	chunks *store.Chunks
	opts   Options
	// newDepth caps the deltas of new chunks found by the store-wide
	// search: MaxDeltaDepth, but with reverse deltas at their default cap
	// only store.DefaultMaxDeltaDepth, since a new chunk sits in the
	// release clients fetch (a package's first, with no predecessor).
	newDepth int
	log      *slog.Logger
	Progress Progress

	mu      sync.Mutex
	flights map[string]*flight
	bufs    sync.Pool
}

type flight struct {
	done chan struct{}
	res  *Result
	err  error
}

// New returns an Ingester. up may be nil if only IngestNAR is used.
func New(up *Upstream, ix Index, chunks *store.Chunks, o Options) (*Ingester, error) {
	if o.Preset.Name == "" {
		p, err := chunker.LookupPreset(chunker.DefaultPreset)
		if err != nil {
			return nil, err
		}
		o.Preset = p
	}
	if o.Jobs <= 0 {
		o.Jobs = 4
	}
	if o.ChunkWorkers <= 0 {
		o.ChunkWorkers = runtime.GOMAXPROCS(0)
	}
	if o.XZ == "" {
		o.XZ = XZAuto
	}
	if o.DeltaMargin <= 0 {
		o.DeltaMargin = 0.2
	}
	if o.DeltaBases <= 0 {
		o.DeltaBases = 3
	}
	if o.DeltaBases > store.MaxDeltaBases {
		return nil, fmt.Errorf("delta bases %d: at most %d", o.DeltaBases, store.MaxDeltaBases)
	}
	newDepth := o.MaxDeltaDepth
	if o.MaxDeltaDepth <= 0 {
		o.MaxDeltaDepth, newDepth = store.DefaultMaxDeltaDepth, store.DefaultMaxDeltaDepth
		if o.Delta && o.ReverseDelta {
			o.MaxDeltaDepth = DefaultReverseDeltaDepth
		}
	}
	if o.MaxMoves < 0 {
		return nil, fmt.Errorf("max moves %d: want 0 (no bound) or more", o.MaxMoves)
	}
	if o.MaxDeltaDepth > store.MaxDeltaDepthLimit {
		return nil, fmt.Errorf("delta depth %d: at most %d", o.MaxDeltaDepth, store.MaxDeltaDepthLimit)
	}
	if o.LockTTL <= 0 {
		o.LockTTL = 30 * time.Second
	}
	if o.Delta && o.ReverseDelta && !chunks.CanReplace() {
		return nil, fmt.Errorf("reverse deltas rewrite stored blobs, and this chunk store cannot replace them; turn reverse deltas off")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	in := &Ingester{up: up, ix: ix, chunks: chunks, opts: o, newDepth: newDepth, log: log, flights: map[string]*flight{}}
	max := o.Preset.Max
	in.bufs.New = func() any { b := make([]byte, max); return &b }
	return in, nil
}

// Result describes one ingested (or skipped) store path.
type Result struct {
	StorePath    string
	References   []string // basenames
	Skipped      bool     // the NAR was already stored; only the narinfo was recorded
	NarSize      uint64
	UpstreamSize uint64
	Chunks       int // chunks in the NAR
	NewChunks    int // chunks that were not stored before
	StoredBytes  uint64
	// Rebased counts the predecessor's chunks re-encoded as deltas of this
	// NAR's (Options.ReverseDelta), and RebaseSaved the bytes that saved.
	Rebased     int
	RebaseSaved int64
	// Moved counts chunks of older releases moved onto this NAR's so that
	// the predecessor's could be rebased within the depth cap.
	Moved    int
	Duration time.Duration

	pred *index.NAR  // the package's previous NAR, to rebase once this one is recorded
	rev  *deltaIndex // what stored this NAR plain, for the rebase; closed by it or release
}

// release frees what ingestStream left for the rebase, if it did not run.
func (r *Result) release() {
	if r.rev != nil {
		r.rev.cache.close()
		r.rev = nil
	}
}

// ParseHashPart accepts a store path, a store path basename or a bare hash part.
func ParseHashPart(s string) (string, error) {
	s = strings.TrimSpace(s)
	base := strings.TrimPrefix(s, narinfo.StoreDir+"/")
	if i := strings.IndexByte(base, '/'); i >= 0 { // a path inside a store path
		base = base[:i]
	}
	h := narinfo.HashPart(base)
	if !narinfo.ValidHashPart(h) || (len(base) > narinfo.HashPartLen && base[narinfo.HashPartLen] != '-') {
		return "", fmt.Errorf("%q is not a store path (/nix/store/<32-char-hash>-<name>) or hash part", s)
	}
	return h, nil
}

// IngestPath ingests one store path from the upstream. Concurrent calls for
// the same path share one download. A path whose NAR is stored already is
// skipped without downloading.
func (in *Ingester) IngestPath(ctx context.Context, path string) (*Result, error) {
	h, err := ParseHashPart(path)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	if f, ok := in.flights[h]; ok {
		in.mu.Unlock()
		select {
		case <-f.done:
			return f.res, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	in.flights[h] = f
	in.mu.Unlock()

	f.res, f.err = in.ingestPath(ctx, h)
	in.mu.Lock()
	delete(in.flights, h)
	in.mu.Unlock()
	close(f.done)
	return f.res, f.err
}

func (in *Ingester) ingestPath(ctx context.Context, h string) (*Result, error) {
	if ni, err := in.ix.NarInfo(ctx, h); err == nil {
		if ok, err := in.ix.HasNAR(ctx, ni.NarHash); err == nil && ok {
			in.Progress.NARsSkipped.Add(1)
			return &Result{StorePath: ni.StorePath, References: ni.References, Skipped: true, NarSize: ni.NarSize}, nil
		}
	} else if !errors.Is(err, index.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	ni, err := in.UpstreamNarInfo(ctx, h)
	if err != nil {
		return nil, err
	}
	if res, err := in.recordIfStored(ctx, ni); res != nil || err != nil {
		return res, err
	}
	return in.IngestFromUpstream(ctx, ni, nil)
}

// recordIfStored records ni and reports a skipped result when its NAR is
// already stored; (nil, nil) when it is not.
func (in *Ingester) recordIfStored(ctx context.Context, ni *narinfo.NarInfo) (*Result, error) {
	ok, err := in.ix.HasNAR(ctx, ni.NarHash)
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("%s: %w", ni.StorePath, err)
		}
		return nil, err
	}
	if err := in.ix.AddNarInfo(ctx, ni); err != nil {
		return nil, fmt.Errorf("%s: %w", ni.StorePath, err)
	}
	in.Progress.NARsSkipped.Add(1)
	return &Result{StorePath: ni.StorePath, References: ni.References, Skipped: true, NarSize: ni.NarSize}, nil
}

// HasUpstream reports whether an upstream is configured.
func (in *Ingester) HasUpstream() bool { return in.up != nil }

// UpstreamNarInfo fetches a narinfo from the upstream and checks that a
// trusted key signed it. Errors name the path and say what to do; a missing
// narinfo Is ErrNotFound.
func (in *Ingester) UpstreamNarInfo(ctx context.Context, h string) (*narinfo.NarInfo, error) {
	if in.up == nil {
		return nil, fmt.Errorf("%s: not stored and no upstream configured: pass --upstream: %w", h, ErrNotFound)
	}
	ni, err := in.up.NarInfo(ctx, h)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("upstream %s has no narinfo for %s: check the store path and --upstream: %w", in.up, h, err)
	case errors.Is(err, narinfo.ErrMalformed):
		return nil, fmt.Errorf("upstream narinfo for %s is unusable (%w): the upstream is broken or not a Nix binary cache", h, err)
	case errors.Is(err, ErrUpstreamTransient):
		return nil, fmt.Errorf("upstream narinfo for %s: %w; try again later", h, err)
	case err != nil:
		return nil, fmt.Errorf("upstream narinfo for %s: %w", h, err)
	}
	if err := in.checkTrust(ni); err != nil {
		return nil, err
	}
	return ni, nil
}

// Committer is implemented by a tee (IngestFromUpstream) that wants to know
// as soon as the NAR is verified and recorded, before the work that follows
// it (reverse deltas' rewrite of the package's previous release): a client
// streaming the NAR through the tee need not wait for that work.
type Committer interface{ Committed() }

// IngestFromUpstream downloads and ingests the NAR of a trusted narinfo. If
// tee is not nil, the NAR bytes are written to it as they are verified-in-
// progress (the final verdict is this method's error).
func (in *Ingester) IngestFromUpstream(ctx context.Context, ni *narinfo.NarInfo, tee io.Writer) (*Result, error) {
	// ni may come from the shared index (pull-through announced by another
	// instance): trust is checked here, not assumed.
	if err := in.checkTrust(ni); err != nil {
		return nil, err
	}
	if in.opts.Locker == nil {
		return in.downloadAndIngest(ctx, ni, tee)
	}
	lease, err := in.opts.Locker.Lock(ctx, "nar/"+ni.NarHash32(), in.opts.LockTTL)
	if err != nil {
		return nil, fmt.Errorf("NAR for %s: take the ingest lock: %w", ni.StorePath, err)
	}
	defer lease.Unlock(context.WithoutCancel(ctx))
	ctx, stop := lock.Guard(ctx, lease, "ingest lock")
	defer stop()
	// Another instance may have ingested it while we waited for the lock.
	if res, err := in.recordIfStored(ctx, ni); err != nil {
		return nil, err
	} else if res != nil && tee != nil {
		return nil, fmt.Errorf("NAR for %s was ingested by another instance: %w", ni.StorePath, ErrIngestedElsewhere)
	} else if res != nil {
		return res, nil
	}
	return in.downloadAndIngest(ctx, ni, tee)
}

// HeadChunkSize is the most a NAR's first chunk holds when the chunker's
// first chunk is at least twice as long: it is split there.
const HeadChunkSize = 64 << 10

// ErrIngestedElsewhere means another instance stored the NAR while this one
// waited for its lock; the caller can serve it from the index.
var ErrIngestedElsewhere = errors.New("NAR ingested by another instance")

func (in *Ingester) downloadAndIngest(ctx context.Context, ni *narinfo.NarInfo, tee io.Writer) (*Result, error) {
	body, err := in.up.NAR(ctx, ni)
	if err != nil {
		hint := "the upstream lost it or the narinfo URL is wrong"
		if errors.Is(err, ErrUpstreamTransient) {
			hint = "try again later"
		}
		return nil, fmt.Errorf("NAR for %s (%s): %w; %s", ni.StorePath, ni.URL, err, hint)
	}
	return in.ingestNAR(ctx, ni, body, ni.Compression, tee)
}

func (in *Ingester) checkTrust(ni *narinfo.NarInfo) error {
	err := ni.Verify(in.opts.Keys)
	if err == nil || in.opts.AllowUntrusted {
		return nil
	}
	return fmt.Errorf("upstream narinfo for %s is %w: add the upstream's key with --trusted-public-key NAME:KEY, or pass --allow-untrusted", ni.StorePath, err)
}

// IngestNAR ingests the NAR described by ni from body, compressed with
// compression. It closes body. ni must already be trusted by the caller.
// On any error nothing is recorded.
func (in *Ingester) IngestNAR(ctx context.Context, ni *narinfo.NarInfo, body io.ReadCloser, compression string) (*Result, error) {
	return in.ingestNAR(ctx, ni, body, compression, nil)
}

func (in *Ingester) ingestNAR(ctx context.Context, ni *narinfo.NarInfo, body io.ReadCloser, compression string, tee io.Writer) (*Result, error) {
	start := time.Now()
	res := &Result{StorePath: ni.StorePath, References: ni.References, NarSize: ni.NarSize}
	refs := []string{ni.HashPart()}
	for _, r := range ni.References {
		refs = append(refs, narinfo.HashPart(r))
	}
	nar, newChunks, err := in.ingestStream(ctx, streamReq{what: ni.StorePath, wantHash: &ni.NarHash, size: ni.NarSize,
		body: body, compression: compression, tee: tee, refs: refs, pname: narinfo.PName(ni.StorePath),
		version: narinfo.Version(ni.StorePath)}, res)
	defer res.release()
	if err != nil {
		in.Progress.NARsFailed.Add(1)
		in.log.Info("ingest failed", "store_path", ni.StorePath, "err", err)
		return nil, err
	}
	if err := in.syncChunks(ctx, newChunks); err != nil {
		in.Progress.NARsFailed.Add(1)
		return nil, fmt.Errorf("NAR for %s: %w; nothing was recorded", ni.StorePath, err)
	}
	if err := in.ix.Commit(ctx, ni, nar, newChunks); err != nil {
		in.Progress.NARsFailed.Add(1)
		return nil, fmt.Errorf("NAR for %s: record in index: %w", ni.StorePath, err)
	}
	res.Duration = time.Since(start)
	in.Progress.NARsDone.Add(1)
	if c, ok := tee.(Committer); ok {
		c.Committed()
	}
	if res.pred != nil {
		in.rebasePredecessor(ctx, nar, res)
	}
	in.log.Info("ingested", "store_path", ni.StorePath, "nar_hash", ni.NarHashString(), "bytes", ni.NarSize,
		"chunks", res.Chunks, "new_chunks", res.NewChunks, "stored_bytes", res.StoredBytes, "dur_ms", res.Duration.Milliseconds())
	return res, nil
}

type chunkJob struct {
	id   chunker.ID
	buf  *[]byte
	size int
}

// streamReq describes one NAR stream to ingest.
type streamReq struct {
	what        string    // for messages: the store path, or "upload"
	wantHash    *[32]byte // nil for uploads: hash and size are computed
	size        uint64    // NarSize, or the upload limit
	body        io.ReadCloser
	compression string
	tee         io.Writer // receives the NAR bytes as read; may be nil
	refs        []string  // hash parts to normalize (with Options.Normalize)
	pname       string    // package name, for delta bases and lineage; may be ""
	version     string    // its version, to tell whether it is older than the stored one; may be ""
}

// olderThan reports whether version is older than that of a store path of
// pred (Nix's version order). Reverse deltas then leave pred plain and store
// the older release as deltas of it, so that ingesting an old release after
// a new one (a backfill, a client pulling an old channel through) does not
// turn the newer release into deltas.
func (in *Ingester) olderThan(ctx context.Context, version string, pred *index.NAR) bool {
	paths, err := in.ix.StorePaths(ctx, pred.Hash)
	if err != nil {
		return false
	}
	for _, p := range paths {
		if narinfo.CompareVersions(version, narinfo.Version(p)) < 0 {
			return true
		}
	}
	return false
}

// ingestStream reads, verifies, chunks and stores one NAR. With wantHash nil
// (uploads) the NAR's hash and size are computed, up to size bytes; else
// they must equal *wantHash and size.
func (in *Ingester) ingestStream(ctx context.Context, req streamReq, res *Result) (*index.NAR, []index.Chunk, error) {
	what, wantHash, size, body, compression, tee := req.what, req.wantHash, req.size, req.body, req.compression, req.tee
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(format string, a ...any) (*index.NAR, []index.Chunk, error) {
		return nil, nil, fmt.Errorf("NAR for %s: "+format, append([]any{what}, a...)...)
	}

	counted := &countingReader{r: body, n: &in.Progress.UpstreamBytes}
	dec, err := Decompress(counted, compression, in.opts.XZ)
	if err != nil {
		body.Close()
		return fail("%w; nothing was recorded", err)
	}
	var src io.Reader = dec
	var ra *readAhead
	if compression != "none" && compression != "" && !isExec(dec) {
		ra = newReadAhead(dec, 1<<20, 4)
		src = ra
	}
	// Close the body first so a read blocked on it returns, then stop the
	// read-ahead goroutine, and only then the decoder it was reading.
	defer func() {
		body.Close()
		if ra != nil {
			ra.stop()
		}
		dec.Close()
	}()

	// Read at most NarSize+1 bytes: enough to notice a NAR that is too long
	// without reading an endless stream.
	hr := narinfo.NewHashingReader(io.LimitReader(src, int64(size)+1))
	var chunkSrc io.Reader = hr
	if tee != nil {
		chunkSrc = io.TeeReader(hr, tee)
	}
	var norm *refnorm.Normalizer
	if in.opts.Normalize && len(req.refs) > 0 {
		norm = refnorm.NewNormalizer(chunkSrc, req.refs)
		chunkSrc = norm
	}
	ch, err := chunker.New(chunkSrc, in.opts.Preset)
	if err != nil {
		return fail("%w", err)
	}

	nar := &index.NAR{Preset: in.opts.Preset.Name, UpstreamCompression: compression, PName: req.pname}
	var di *deltaIndex
	if in.opts.Delta {
		var pred *index.NAR
		if req.pname != "" {
			if p, err := in.ix.Predecessor(ctx, req.pname); err == nil && (wantHash == nil || p.Hash != *wantHash) {
				pred = p
			}
		}
		if in.opts.ReverseDelta && pred != nil && !in.olderThan(ctx, req.version, pred) {
			// The new release is stored plain; once it is recorded, its
			// predecessor is re-encoded against it (rebasePredecessor),
			// which takes di over (and closes it).
			di = in.newDeltaIndex(ctx, nil, 0, nil)
			di.captured = map[chunker.ID][]uint64{}
			in.spillFor(di)
			res.pred, res.rev = pred, di
		} else {
			di = in.newDeltaIndex(ctx, pred, in.opts.MaxDeltaDepth, nil)
			defer di.cache.close()
		}
	}
	var (
		mu        sync.Mutex
		newChunks []index.Chunk
		wg        sync.WaitGroup
		jobs      = make(chan chunkJob, in.opts.ChunkWorkers)
	)
	for range in.opts.ChunkWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if ctx.Err() == nil {
					if c, err := in.storeChunk(ctx, di, j); err != nil {
						cancel(err)
					} else if c != nil {
						mu.Lock()
						newChunks = append(newChunks, *c)
						mu.Unlock()
					}
				}
				in.bufs.Put(j.buf)
			}
		}()
	}
	seen := map[chunker.ID]bool{}
	var readErr error
	for {
		c, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
		pieces := [][]byte{c.Data}
		if c.Offset == 0 && len(c.Data) >= 2*HeadChunkSize {
			// Time to first byte: a server must load and verify the first
			// chunk before it answers, so the NAR's head is cut short. Later
			// boundaries are untouched.
			pieces = [][]byte{c.Data[:HeadChunkSize], c.Data[HeadChunkSize:]}
		}
		off := uint64(c.Offset)
		for _, data := range pieces {
			id := chunker.Sum(data)
			nar.Chunks = append(nar.Chunks, index.ChunkRef{ID: id, Offset: off, Size: uint32(len(data))})
			off += uint64(len(data))
			in.Progress.NARBytes.Add(int64(len(data)))
			if seen[id] {
				continue
			}
			seen[id] = true
			buf := in.bufs.Get().(*[]byte)
			n := copy(*buf, data)
			select {
			case jobs <- chunkJob{id: id, buf: buf, size: n}:
			case <-ctx.Done():
				in.bufs.Put(buf)
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil {
		if errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
			return fail("%w; nothing was recorded", cause)
		}
		return fail("store chunk: %w; check that the chunk store is writable and has space; nothing was recorded", cause)
	}
	if readErr != nil {
		switch {
		case errors.Is(readErr, ErrDecompress):
			return fail("%s data is corrupt or truncated after %d NAR bytes: %w; nothing was recorded, the upstream copy may be damaged", compression, hr.Count(), readErr)
		default:
			return fail("reading from upstream broke after %d NAR bytes: %v: %w; nothing was recorded, run the ingest again", hr.Count(), readErr, ErrUpstreamTransient)
		}
	}
	if wantHash == nil {
		if hr.Count() > size {
			return fail("%w: larger than the limit of %d bytes; nothing was recorded", ErrSizeMismatch, size)
		}
		if hr.Count() == 0 {
			return fail("%w: empty; nothing was recorded", ErrSizeMismatch)
		}
		nar.Hash, nar.Size = hr.Sum(), hr.Count()
	} else {
		if hr.Count() != size {
			return fail("%w: narinfo says %d bytes, upstream sent %s; nothing was recorded, the upstream copy may be truncated or damaged",
				ErrSizeMismatch, size, sizeDesc(hr.Count(), size))
		}
		if got := hr.Sum(); got != *wantHash {
			return fail("%w: narinfo says %s, the bytes hash to %s; nothing was recorded, the upstream copy is damaged",
				ErrHashMismatch, narinfo.FormatHash(*wantHash), narinfo.FormatHash(got))
		}
		nar.Hash, nar.Size = *wantHash, size
	}
	if norm != nil {
		if m := norm.Map(); len(m.Offsets) > 0 {
			nar.Transform, nar.RefMap = refnorm.Transform, m.Marshal()
		}
	}
	nar.UpstreamSize = uint64(counted.count.Load())
	res.UpstreamSize = nar.UpstreamSize
	res.Chunks = len(nar.Chunks)
	res.NewChunks = len(newChunks)
	for _, c := range newChunks {
		res.StoredBytes += uint64(c.StoredSize)
	}
	return nar, newChunks, nil
}

func sizeDesc(got, want uint64) string {
	if got > want {
		return "more"
	}
	return fmt.Sprint(got)
}

// storeChunk stores a chunk unless the index already records it. It returns
// the record for a chunk it stored, nil for a known one.
func (in *Ingester) storeChunk(ctx context.Context, di *deltaIndex, j chunkJob) (*index.Chunk, error) {
	known, err := in.ix.HasChunks(ctx, []chunker.ID{j.id})
	if err != nil {
		return nil, err
	}
	if known[0] {
		return nil, nil
	}
	data := (*j.buf)[:j.size]
	blob, w, depth, keys, err := in.encodeChunk(ctx, di, j.id, data)
	if err != nil {
		return nil, err
	}
	if err := in.chunks.PutBlob(ctx, j.id, blob); err != nil {
		return nil, err
	}
	if !w.Encoding.IsDelta() { // Put keeps no reference to the blob
		in.chunks.Recycle(blob)
	}
	in.Progress.NewChunks.Add(1)
	in.Progress.NewStoredBytes.Add(int64(w.StoredSize))
	rec := &index.Chunk{ID: j.id, Size: uint32(j.size), StoredSize: uint32(w.StoredSize), Encoding: uint8(w.Encoding), Bases: w.Bases, Depth: depth, Level: uint8(w.Level)}
	if int(depth) < in.opts.MaxDeltaDepth { // may serve as a base
		rec.Sims = keys
	}
	return rec, nil
}

// countingReader counts the bytes read from r. The count is atomic: an
// external decoder's feeding goroutine may still be reading when the ingest
// looks at it.
type countingReader struct {
	r     io.Reader
	count atomic.Int64
	n     *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.count.Add(int64(n))
	c.n.Add(int64(n))
	return n, err
}

func isExec(r io.ReadCloser) bool { _, ok := r.(*execReader); return ok }

// readAhead decodes on its own goroutine into a few buffers, so decoding
// overlaps with hashing and chunking.
type readAhead struct {
	ch   chan []byte
	free chan []byte
	cur  []byte
	buf  []byte
	err  error
	errc chan error
	quit chan struct{}
	wg   sync.WaitGroup
}

func newReadAhead(r io.Reader, size, n int) *readAhead {
	ra := &readAhead{ch: make(chan []byte, n), free: make(chan []byte, n+1), errc: make(chan error, 1), quit: make(chan struct{})}
	for range n + 1 {
		ra.free <- make([]byte, size)
	}
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		defer close(ra.ch)
		for {
			var b []byte
			select {
			case b = <-ra.free:
			case <-ra.quit:
				return
			}
			n, err := io.ReadFull(r, b)
			if n > 0 {
				select {
				case ra.ch <- b[:n]:
				case <-ra.quit:
					return
				}
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			if err != nil {
				ra.errc <- err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf = nil
		}
		if ra.err != nil {
			return 0, ra.err
		}
		b, ok := <-ra.ch
		if !ok {
			ra.err = <-ra.errc
			return 0, ra.err
		}
		ra.buf, ra.cur = b, b
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// stop ends the goroutine. The source must be unblocked (closed) first or
// concurrently, since a Read in progress is waited for.
func (ra *readAhead) stop() {
	close(ra.quit)
	ra.wg.Wait()
}

func (in *Ingester) syncChunks(ctx context.Context, newChunks []index.Chunk) error {
	if len(newChunks) == 0 {
		return nil
	}
	return in.chunks.Sync(ctx)
}

// IngestUpload ingests an uploaded NAR whose hash is not known in advance
// (nix copy sends the NAR before its narinfo). It records the NAR without a
// narinfo and returns it; AddNarInfo attaches the narinfo later. At most
// maxSize NAR bytes are accepted.
// name, the store path or basename the NAR belongs to, may be "" when unknown.
func (in *Ingester) IngestUpload(ctx context.Context, body io.ReadCloser, compression string, maxSize uint64, name string) (*index.NAR, error) {
	res := &Result{}
	nar, newChunks, err := in.ingestStream(ctx, streamReq{what: "upload", size: maxSize, body: body, compression: compression,
		pname: narinfo.PName(name), version: narinfo.Version(name)}, res)
	defer res.release()
	if err != nil {
		in.Progress.NARsFailed.Add(1)
		return nil, err
	}
	if err := in.syncChunks(ctx, newChunks); err != nil {
		return nil, fmt.Errorf("uploaded NAR: %w; nothing was recorded", err)
	}
	if err := in.ix.Commit(ctx, nil, nar, newChunks); err != nil {
		return nil, fmt.Errorf("uploaded NAR: record in index: %w", err)
	}
	in.Progress.NARsDone.Add(1)
	if res.pred != nil {
		in.rebasePredecessor(ctx, nar, res)
	}
	return nar, nil
}
