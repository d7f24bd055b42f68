// Package bench ingests channel bumps, in order, into throwaway stores, one
// per configuration (chunker preset × zstd level), through the same code path
// as a real ingest, and reports what each configuration stores and costs.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/recompress"
	"github.com/narstore/narstore/store"
)

// Config is one point of the sweep.
type Config struct {
	Preset    chunker.Preset
	Level     int  // zstd level
	Delta     bool // delta-encode new chunks against the package's previous NAR
	Normalize bool // store-reference normalization (needs narinfos: store-path bumps)
	// Recompress, if not 0, is the zstd level `narstore recompress` rewrites
	// the store at after each bump (as a nightly job would), with the zstd
	// program when installed.
	Recompress int
}

// Name identifies the configuration in reports.
func (c Config) Name() string {
	n := fmt.Sprintf("%s/zstd%d", c.Preset.Name, c.Level)
	if c.Normalize {
		n += "+norm"
	}
	if c.Delta {
		n += "+delta"
	}
	if c.Recompress > 0 {
		n += fmt.Sprintf("+rc%d", c.Recompress)
	}
	return n
}

// Bump is one channel bump: either NAR files (.nar, .nar.xz, .nar.zst,
// .nar.bz2, named <storepath-basename>.nar[.ext]) or store paths to fetch
// from Options.Upstream.
type Bump struct {
	Name       string
	Files      []string
	StorePaths []string
}

// Prices are list prices for the cost columns, in USD.
type Prices struct {
	PutPer1000 float64 // S3 Standard PUT, per 1000 requests
	GetPer1000 float64 // S3 Standard GET, per 1000 requests
	GBMonth    float64 // S3 Standard storage, per GB-month
}

// DefaultPrices are AWS S3 Standard us-east-1 list prices.
var DefaultPrices = Prices{PutPer1000: 0.005, GetPer1000: 0.0004, GBMonth: 0.023}

// Options configure a run.
type Options struct {
	Bumps    []Bump
	Configs  []Config
	Parallel int    // configurations run at once; 0 means 1
	TempDir  string // where throwaway stores go; "" means os.TempDir
	Prices   Prices
	// Upstream and Keys are needed for bumps given as store paths.
	Upstream string
	Keys     narinfo.PublicKeys
	Progress io.Writer // one line per finished bump; nil for none
	// DeltaBases and SimilarSearch tune delta configurations as the ingest
	// options of the same names; zero values mean ingest's defaults (3 bases,
	// search on).
	DeltaBases      int
	NoSimilarSearch bool
	// RecompressPlainOnly: recompression (Config.Recompress) keeps every
	// chunk's encoding, not trying plain chunks as deltas of similar ones
	// (recompress.Options.Similar).
	RecompressPlainOnly bool
	// MaxDeltaDepth is ingest's setting of that name; 0 means its default.
	MaxDeltaDepth int
	// ReverseDelta is ingest's setting of that name, for delta configurations.
	ReverseDelta bool
}

// Row is one configuration after one bump. Byte and count columns are
// cumulative over the bumps so far.
type Row struct {
	Config         string  `json:"config"`
	Preset         string  `json:"preset"`
	AvgChunk       int     `json:"avg_chunk"`
	Level          int     `json:"zstd_level"`
	Delta          bool    `json:"delta"`
	ReverseDelta   bool    `json:"reverse_delta"`
	Normalize      bool    `json:"normalize"`
	Bump           int     `json:"bump"`
	BumpName       string  `json:"bump_name"`
	NARs           int64   `json:"nars"`
	UpstreamBytes  uint64  `json:"upstream_bytes"`
	NARBytes       uint64  `json:"nar_bytes"`
	Chunks         int64   `json:"chunks"`
	StoredBytes    uint64  `json:"stored_bytes"`
	StoredUpstream float64 `json:"stored_per_upstream"`
	StoredNAR      float64 `json:"stored_per_nar"`
	IndexRows      int64   `json:"index_rows"`
	IndexBytes     int64   `json:"index_bytes"`
	Objects        int64   `json:"objects"`
	PutRequests    int64   `json:"put_requests"`
	GetRequests    int64   `json:"get_requests_per_full_read"` // to read this bump's new NARs once, no cache
	PutCost        float64 `json:"put_cost_usd"`
	GetCost        float64 `json:"get_cost_usd"`
	StorageCost    float64 `json:"storage_cost_usd_month"`
	IngestMBps     float64 `json:"ingest_mb_per_s"`  // this bump's NAR bytes / ingest time
	Recompress     int     `json:"recompress_level"` // 0: no recompression
	// StoredBeforeRecompress is StoredBytes as ingest left it (cumulative,
	// earlier bumps recompressed); RecompressMBps is this bump's new chunk
	// bytes (decoded) / recompression time.
	StoredBeforeRecompress uint64  `json:"stored_bytes_before_recompress"`
	RecompressMBps         float64 `json:"recompress_mb_per_s"`
	ReassemblyMBps         float64 `json:"reassembly_mb_per_s"` // this bump's NAR bytes / read time from an empty 256 MB chunk cache
}

// PackageRow is what one configuration stored for one package name over all
// bumps, next to what the upstream holds for it.
type PackageRow struct {
	Config        string  `json:"config"`
	Package       string  `json:"package"`
	NARs          int     `json:"nars"`
	NARBytes      uint64  `json:"nar_bytes"`
	UpstreamBytes uint64  `json:"upstream_bytes"`
	StoredBytes   uint64  `json:"stored_bytes"`
	Ratio         float64 `json:"stored_per_upstream"`
}

// Result is a sweep's outcome.
type Result struct {
	Rows     []Row
	Packages []PackageRow
}

// Run sweeps every configuration over every bump.
func Run(ctx context.Context, o Options) ([]Row, error) {
	res, err := RunAll(ctx, o)
	if err != nil {
		return nil, err
	}
	return res.Rows, nil
}

// RunAll sweeps every configuration over every bump, with per-package totals.
func RunAll(ctx context.Context, o Options) (*Result, error) {
	if o.Parallel <= 0 {
		o.Parallel = 1
	}
	if o.Prices == (Prices{}) {
		o.Prices = DefaultPrices
	}
	for _, c := range o.Configs {
		for _, b := range o.Bumps {
			if c.Normalize && len(b.Files) > 0 {
				return nil, fmt.Errorf("%s: store-reference normalization needs each NAR's References: give bumps as store-paths files with an upstream, not NAR files", c.Name())
			}
		}
	}
	var (
		mu   sync.Mutex
		rows []Row
		pkgs []PackageRow
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, o.Parallel)
	)
	for _, c := range o.Configs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r, p, err := runConfig(ctx, o, c)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c.Name(), err))
				return
			}
			rows = append(rows, r...)
			pkgs = append(pkgs, p...)
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Config != rows[j].Config {
			if rows[i].AvgChunk != rows[j].AvgChunk {
				return rows[i].AvgChunk < rows[j].AvgChunk
			}
			return rows[i].Config < rows[j].Config
		}
		return rows[i].Bump < rows[j].Bump
	})
	sort.Slice(pkgs, func(i, j int) bool {
		if pkgs[i].Config != pkgs[j].Config {
			return pkgs[i].Config < pkgs[j].Config
		}
		return pkgs[i].Package < pkgs[j].Package
	})
	return &Result{Rows: rows, Packages: pkgs}, nil
}

func baseOf(file string) string {
	b := filepath.Base(file)
	return b[:strings.Index(b, ".nar")]
}

func runConfig(ctx context.Context, o Options, c Config) ([]Row, []PackageRow, error) {
	dir, err := os.MkdirTemp(o.TempDir, "narstore-bench-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	ix, err := index.OpenSQLite(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		return nil, nil, err
	}
	defer ix.Close()
	d, err := store.OpenDir(filepath.Join(dir, "chunks"))
	if err != nil {
		return nil, nil, err
	}
	d.NoSync = true
	chunks, err := store.NewChunks(d, store.ChunksOptions{Level: c.Level})
	if err != nil {
		return nil, nil, err
	}
	var up *ingest.Upstream
	if o.Upstream != "" {
		if up, err = ingest.NewUpstream(o.Upstream, ingest.UpstreamOptions{}); err != nil {
			return nil, nil, err
		}
	}
	in, err := ingest.New(up, ix, chunks, ingest.Options{Preset: c.Preset, Keys: o.Keys, Jobs: 1, Delta: c.Delta, SimilarSearch: c.Delta && !o.NoSimilarSearch, DeltaBases: o.DeltaBases, Normalize: c.Normalize, MaxDeltaDepth: o.MaxDeltaDepth, ReverseDelta: c.Delta && o.ReverseDelta})
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	var rows []Row
	pkgs := map[string]*PackageRow{}
	owner := map[chunker.ID]string{} // package whose NAR stored the chunk first; for recompression's per-package figures
	// storedSoFar is what ingest added to the store: new chunks, less what
	// reverse deltas saved by rewriting older ones.
	storedSoFar := func() int64 { return in.Progress.NewStoredBytes.Load() - in.Progress.RebaseSaved.Load() }
	account := func(pname string, before int64, nar *index.NAR) {
		p := pkgs[pname]
		if p == nil {
			p = &PackageRow{Config: c.Name(), Package: pname}
			pkgs[pname] = p
		}
		p.NARs++
		p.NARBytes += nar.Size
		for _, ch := range nar.Chunks {
			if _, ok := owner[ch.ID]; !ok && c.Recompress > 0 {
				owner[ch.ID] = pname
			}
		}
		p.UpstreamBytes += nar.UpstreamSize
		p.StoredBytes += uint64(storedSoFar() - before) // net of its previous release's rebase
	}
	var puts int64
	for i, b := range o.Bumps {
		before, err := ix.Stats(ctx)
		if err != nil {
			return nil, nil, err
		}
		var newNARs [][32]byte
		start := time.Now()
		for _, f := range b.Files {
			base := baseOf(f)
			if seen[base] { // the same store path as an earlier bump: nothing to fetch
				continue
			}
			seen[base] = true
			comp, ok := ingest.CompressionOfFile(f)
			if !ok {
				return nil, nil, fmt.Errorf("%s: not a .nar, .nar.xz, .nar.zst or .nar.bz2 file", f)
			}
			fh, err := os.Open(f)
			if err != nil {
				return nil, nil, err
			}
			// The same path as an upload: upstream bytes are the file's bytes.
			before := storedSoFar()
			nar, err := in.IngestUpload(ctx, fh, comp, 1<<40, base)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", f, err)
			}
			account(narinfo.PName(base), before, nar)
			newNARs = append(newNARs, nar.Hash)
		}
		for _, p := range b.StorePaths {
			h, err := ingest.ParseHashPart(p)
			if err != nil {
				return nil, nil, err
			}
			if seen[h] {
				continue
			}
			seen[h] = true
			before := storedSoFar()
			res, err := in.IngestPath(ctx, p)
			if err != nil {
				return nil, nil, err
			}
			if !res.Skipped {
				ni, err := ix.NarInfo(ctx, h)
				if err != nil {
					return nil, nil, err
				}
				newNARs = append(newNARs, ni.NarHash)
				nar, err := ix.NAR(ctx, ni.NarHash)
				if err != nil {
					return nil, nil, err
				}
				account(narinfo.PName(p), before, nar)
			}
		}
		ingestDur := time.Since(start)
		st, err := ix.Stats(ctx)
		if err != nil {
			return nil, nil, err
		}
		storedBefore := st.StoredBytes
		var recompressMBps float64
		if c.Recompress > 0 {
			enc, err := store.NewFrameEncoder(c.Recompress, "auto")
			if err != nil {
				return nil, nil, err
			}
			var mu sync.Mutex
			start := time.Now()
			depth := o.MaxDeltaDepth
			if depth == 0 && !(c.Delta && o.ReverseDelta) {
				depth = store.DefaultMaxDeltaDepth // ingest's cap without reverse deltas
			}
			rep, err := recompress.Run(ctx, ix, chunks, recompress.Options{Encoder: enc, Jobs: 1, Similar: !o.RecompressPlainOnly, MaxDepth: depth, OnChunk: func(id chunker.ID, before, after int) {
				mu.Lock()
				if p := pkgs[owner[id]]; p != nil {
					p.StoredBytes -= uint64(before - after)
				}
				mu.Unlock()
			}}, nil)
			if err != nil {
				return nil, nil, err
			}
			if rep.Failed > 0 {
				return nil, nil, fmt.Errorf("recompress: %d chunks failed: %s", rep.Failed, rep.Errors[0])
			}
			recompressMBps = float64(rep.ChunkBytes) / 1e6 / max(time.Since(start).Seconds(), 1e-9)
			if st, err = ix.Stats(ctx); err != nil {
				return nil, nil, err
			}
		}
		fp, err := ix.Footprint(ctx)
		if err != nil {
			return nil, nil, err
		}
		puts += st.Chunks - before.Chunks
		// Cold reassembly of this bump's new NARs, each from an empty chunk
		// cache of serve's default size (delta bases are loaded through it,
		// as when serving). GET counts are one per chunk reference.
		var gets int64
		start = time.Now()
		for _, h := range newNARs {
			nar, err := ix.NAR(ctx, h)
			if err != nil {
				return nil, nil, err
			}
			r, err := reassembly.NewReader(ctx, reassembly.NewCache(chunks, 256<<20), nar, 0, -1, reassembly.ReaderOptions{})
			if err != nil {
				return nil, nil, err
			}
			_, err = io.Copy(io.Discard, r)
			r.Close()
			if err != nil {
				return nil, nil, fmt.Errorf("reassemble %s: %w", narinfo.FormatHash(h), err)
			}
			gets += int64(len(nar.Chunks))
		}
		readDur := time.Since(start)
		bumpNAR := float64(st.NARBytes - before.NARBytes)
		row := Row{
			Config: c.Name(), Preset: c.Preset.Name, AvgChunk: c.Preset.Avg, Level: c.Level, Delta: c.Delta, ReverseDelta: c.Delta && o.ReverseDelta, Normalize: c.Normalize, Bump: i + 1, BumpName: b.Name,
			NARs: st.NARs, UpstreamBytes: st.UpstreamSize, NARBytes: st.NARBytes, Chunks: st.Chunks, StoredBytes: st.StoredBytes,
			StoredUpstream: ratio(st.StoredBytes, st.UpstreamSize), StoredNAR: ratio(st.StoredBytes, st.NARBytes),
			IndexRows: fp.Rows, IndexBytes: fp.Bytes, Objects: st.Chunks, PutRequests: puts, GetRequests: gets,
			PutCost:     float64(puts) / 1000 * o.Prices.PutPer1000,
			GetCost:     float64(gets) / 1000 * o.Prices.GetPer1000,
			StorageCost: float64(st.StoredBytes) / 1e9 * o.Prices.GBMonth,
			IngestMBps:  bumpNAR / 1e6 / ingestDur.Seconds(),
			Recompress:  c.Recompress, StoredBeforeRecompress: storedBefore, RecompressMBps: recompressMBps,
			ReassemblyMBps: bumpNAR / 1e6 / max(readDur.Seconds(), 1e-9),
		}
		rows = append(rows, row)
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "%-34s bump %d: stored/upstream %.3f, %d chunks, ingest %.0f MB/s\n", c.Name(), i+1, row.StoredUpstream, row.Chunks, row.IngestMBps)
		}
	}
	var prows []PackageRow
	for _, p := range pkgs {
		p.Ratio = ratio(p.StoredBytes, p.UpstreamBytes)
		prows = append(prows, *p)
	}
	return rows, prows, nil
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
