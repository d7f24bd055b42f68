package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/narstore/narstore/lock"
	"github.com/narstore/narstore/recompress"
	"github.com/narstore/narstore/store"
)

func setupRecompress(fs *flag.FlagSet) runFunc {
	level := fs.Int("level", recompress.DefaultLevel, "zstd level (1-22) to rewrite chunks at; chunks recorded below it are tried, each keeps the smaller blob")
	program := fs.String("zstd-program", "auto", "encoder: auto (the zstd program if installed, else pure Go, which stops at about level 11), exec or go")
	jobs := fs.Int("jobs", runtime.GOMAXPROCS(0), "chunks recompressed at once")
	limit := fs.Int("limit", 0, "stop after this many chunks (0: all); a later run continues")
	similar := fs.Bool("similar", true, "first try each plain chunk as a delta of the most similar other plain chunk (chunks ingest stored plain because what they resemble was not recorded yet, as near-copies within one NAR)")
	similarAll := fs.Bool("similar-all", false, "with --similar: also try the plain chunks already at --level (recompressed by a release without --similar); run once after upgrading, since every run with it tries them all again")
	depth := fs.Int("max-delta-depth", 0, fmt.Sprintf("with --similar: longest delta chain a new delta may make, counting the chunks that depend on it (0: %d, ingest's default with reverse deltas); give ingest's cap if it differs (--max-delta-depth, or 3 with --reverse-delta=false)", recompress.DefaultMaxDepth))
	progress := fs.String("progress", "auto", "progress display on stderr: auto (when stderr is a terminal), always or never")
	locks := lockFlags(fs)
	return func(ctx context.Context, env *cmdEnv) error {
		enc, err := store.NewFrameEncoder(*level, *program)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		if *jobs < 1 || *limit < 0 {
			return &exitError{code: 2, msg: "--jobs must be 1 or more and --limit 0 or more"}
		}
		if *similarAll && !*similar {
			return &exitError{code: 2, msg: "--similar-all needs --similar"}
		}
		if *depth < 0 || *depth > store.MaxDeltaDepthLimit {
			return &exitError{code: 2, msg: fmt.Sprintf("--max-delta-depth must be 0 (the default, %d) to %d", recompress.DefaultMaxDepth, store.MaxDeltaDepthLimit)}
		}
		ix, chunks, err := env.openData(false, 0)
		if err != nil {
			return err
		}
		defer ix.Close()
		ctx, unlock, err := env.maintenanceLock(ctx, locks)
		if err != nil {
			return err
		}
		defer unlock()
		if enc.Level() < *level {
			fmt.Fprintf(env.stderr, "narstore: no zstd program on PATH; recompressing at the pure-Go encoder's level %d instead of %d (install zstd for more)\n", enc.Level(), *level)
		}
		opts := recompress.Options{Encoder: enc, Jobs: *jobs, Limit: *limit, Log: env.log, Similar: *similar, SimilarAll: *similarAll, MaxDepth: *depth}
		todo, todoBytes, err := ix.CountBelowLevel(ctx, opts.ListedBelow())
		if err != nil {
			return err
		}
		if *limit > 0 && int64(*limit) < todo {
			todo, todoBytes = int64(*limit), 0 // bytes unknown for a part
		}
		var p recompress.Progress
		start := time.Now()
		stopProgress := startStatusLine(env.stderr, *progress, func() {
			el := time.Since(start).Seconds()
			done := p.ChunkBytes.Load()
			rate := float64(done) / max(el, 0.001)
			eta := ""
			if todoBytes > 0 && done > 0 {
				eta = "  ETA " + (time.Duration(float64(todoBytes-done)/rate) * time.Second).Round(time.Second).String()
			}
			fmt.Fprintf(env.stderr, "\r\033[K%d/%d chunks (%d rewritten, %d as deltas, %d failed)  %s -> %s  %.1f MB/s of chunk data%s",
				p.Chunks.Load(), todo, p.Replaced.Load(), p.Deltas.Load(), p.Failed.Load(), human(uint64(p.BytesBefore.Load())), human(uint64(p.BytesAfter.Load())),
				rate/1e6, eta)
		})
		rep, err := recompress.Run(ctx, ix, chunks, opts, &p)
		stopProgress()
		el := time.Since(start)
		saved := 0.0
		if rep.BytesBefore > 0 {
			saved = 100 * (1 - float64(rep.BytesAfter)/float64(rep.BytesBefore))
		}
		fmt.Fprintf(env.stdout, "Recompressed %d chunks with %s in %s: %d rewritten, %d failed; %s -> %s stored (%.1f%% less), %.1f MB/s of chunk data.\n",
			rep.Chunks, enc.Name(), el.Round(time.Millisecond), rep.Replaced, rep.Failed, human(uint64(rep.BytesBefore)), human(uint64(rep.BytesAfter)),
			saved, float64(rep.ChunkBytes)/1e6/max(el.Seconds(), 0.001))
		if rep.Deltas > 0 {
			fmt.Fprintf(env.stdout, "%d of the rewritten chunks are now deltas of similar chunks.\n", rep.Deltas)
		}
		if rep.Changed > 0 {
			fmt.Fprintf(env.stdout, "%d chunks were left as they were: the blobs read need delta bases the index no longer names for them, or a rewrite of them was in flight (an ingest rewriting them as reverse deltas); a later run tries them again.\n", rep.Changed)
		}
		for _, e := range rep.Errors {
			fmt.Fprintln(env.stdout, "FAILED", e)
		}
		if err != nil {
			return err
		}
		if rep.Failed > 0 {
			return &exitError{code: 1, msg: fmt.Sprintf("%d chunks could not be recompressed (left as they were); run narstore verify to find the NARs they belong to", rep.Failed)}
		}
		return nil
	}
}

// maintenanceLock takes the lock that recompression (and any GC) holds
// while rewriting or deleting chunks: with --lock-backend local a file lock
// in --data, otherwise the shared lock server's "maintenance" lock. It fails
// at once when another instance holds it.
// The returned context ends if the lease is lost.
func (e *cmdEnv) maintenanceLock(ctx context.Context, locks *lockConfig) (context.Context, func(), error) {
	busy := "another recompression or GC is running on this cache (it holds the maintenance lock); try again when it has finished"
	if locks.backend == "local" || locks.backend == "" {
		if err := os.MkdirAll(e.data, 0o755); err != nil {
			return nil, nil, err
		}
		path := filepath.Join(e.data, "maintenance.lock")
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("maintenance lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil, &exitError{code: 1, msg: busy + " (" + path + ")"}
			}
			return nil, nil, fmt.Errorf("maintenance lock %s: %w", path, err)
		}
		return ctx, func() { f.Close() }, nil
	}
	locker, closeLocker, err := locks.open(ctx, e.database)
	if err != nil {
		return nil, nil, err
	}
	lease, ok, err := locker.TryLock(ctx, recompress.MaintenanceLock, locks.ttl)
	if err != nil {
		closeLocker()
		return nil, nil, fmt.Errorf("maintenance lock: %w", err)
	}
	if !ok {
		closeLocker()
		return nil, nil, &exitError{code: 1, msg: busy}
	}
	lctx, stop := lock.Guard(ctx, lease, "maintenance lock")
	return lctx, func() {
		stop()
		if err := lease.Unlock(context.Background()); err != nil && !errors.Is(err, lock.ErrNotHeld) {
			e.log.Warn("release maintenance lock", "err", err)
		}
		closeLocker()
	}, nil
}
