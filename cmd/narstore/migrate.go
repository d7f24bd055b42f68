package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/narstore/narstore/migrate"
)

func setupMigrate(fs *flag.FlagSet) runFunc {
	toDB := fs.String("to-database-url", "", "destination index: postgres://user@host/db (or a SQLite file path)")
	toStorage := fs.String("to-storage", "", "destination chunk store: s3://bucket/prefix?endpoint=…&region=…&path-style=true (or a directory)")
	jobs := fs.Int("jobs", 16, "chunks copied at once")
	progress := fs.String("progress", "auto", "progress display on stderr: auto (when stderr is a terminal), always or never")
	return func(ctx context.Context, env *cmdEnv) error {
		if *toDB == "" || *toStorage == "" {
			return &exitError{code: 2, msg: "migrate needs --to-database-url and --to-storage (the cache to copy into); the source is --data, or --database-url and --storage"}
		}
		if len(env.args) > 0 {
			return &exitError{code: 2, msg: fmt.Sprintf("migrate takes no arguments, got %q", env.args)}
		}
		same := func(a, b string) bool {
			aa, _ := filepath.Abs(a)
			bb, _ := filepath.Abs(b)
			return a == b || aa == bb
		}
		srcDB, srcStorage := env.database, env.storage
		if srcDB == "" {
			srcDB = filepath.Join(env.data, "index.db")
		}
		if srcStorage == "" {
			srcStorage = filepath.Join(env.data, "chunks")
		}
		if same(srcDB, *toDB) || same(srcStorage, *toStorage) {
			return &exitError{code: 2, msg: "the destination must be another index and another chunk store than the source"}
		}
		src, srcChunks, err := env.openData(false, 0)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		defer src.Close()
		dst, dstChunks, err := env.openBackends(*toDB, *toStorage, true, 0)
		if err != nil {
			return fmt.Errorf("destination: %w", err)
		}
		defer dst.Close()
		cp := migrate.New(src, srcChunks, dst, dstChunks, migrate.Options{Jobs: *jobs})
		start := time.Now()
		p := &cp.Progress
		stop := startStatusLine(env.stderr, *progress, func() {
			fmt.Fprintf(env.stderr, "\r\033[K%d/%d NARs (%d copied, the rest already there)  %d chunks, %s copied  %.1f MB/s",
				p.NARsDone.Load(), p.NARsTotal.Load(), p.NARsCopied.Load(), p.Chunks.Load(), human(uint64(p.ChunkBytes.Load())),
				float64(p.ChunkBytes.Load())/1e6/max(time.Since(start).Seconds(), 0.001))
		})
		err = cp.Run(ctx)
		stop()
		fmt.Fprintf(env.stdout, "migrate: %d NARs in the source, %d copied now, %d narinfos written, %d chunks (%s stored) copied in %s\n",
			p.NARsTotal.Load(), p.NARsCopied.Load(), p.NarInfos.Load(), p.Chunks.Load(), human(uint64(p.ChunkBytes.Load())), time.Since(start).Round(time.Millisecond))
		if n := p.Reencoded.Load(); n > 0 {
			fmt.Fprintf(env.stdout, "migrate: %d of those chunks were copied plain: their source blobs need other delta bases than their records name (mostly a reverse-delta rewrite in progress)\n", n)
		}
		if err != nil {
			return fmt.Errorf("%w\nnothing half-copied was recorded; run the same migrate again to resume", err)
		}
		fmt.Fprintln(env.stdout, "migrate: done. Run it again right before switching to pick up what the source stored meanwhile.")
		return nil
	}
}
