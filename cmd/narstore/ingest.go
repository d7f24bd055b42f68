package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/internal/narinfo"
)

func setupIngest(fs *flag.FlagSet) runFunc {
	upstream := fs.String("upstream", "", "upstream binary cache URL: https://…, http://… or file:///…")
	var keys stringList
	fs.Var(&keys, "trusted-public-key", "trusted upstream key NAME:BASE64 (repeatable), e.g. cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=")
	allowUntrusted := fs.Bool("allow-untrusted", false, "accept narinfos that no trusted key signed (not recommended)")
	pathsFile := fs.String("paths", "", "file of store paths, one per line (plain or .xz, like a channel's store-paths.xz); - for stdin")
	closure := fs.Bool("closure", false, "also ingest every path the given paths reference, recursively")
	preset := presetFlag(fs)
	locks := lockFlags(fs)
	level := zstdLevelFlag(fs, 3)
	jobs := fs.Int("jobs", 4, "NARs ingested in parallel")
	workers := fs.Int("chunk-workers", 0, "chunk compress/store workers per NAR (0: one per CPU)")
	xzImpl := fs.String("xz-decoder", "auto", "xz decoder: auto (liblzma's xz program if installed, else pure Go), exec or go")
	dedup := dedupFlags(fs, true, "replace reference hashes with a placeholder before chunking, so rebuilds dedup (recorded per NAR)", "store new chunks as zstd deltas against similar chunks of the package's previous version when that saves 20% or more")
	progress := fs.String("progress", "auto", "progress display on stderr: auto (when stderr is a terminal), always or never")
	memLimit := fs.Int("memory-limit-mb", 200, "soft limit on the Go heap in MiB: garbage is collected sooner near it, so delta ingest stays within about 256 MB of RSS (0: no limit; a GOMEMLIMIT environment variable wins)")
	return func(ctx context.Context, env *cmdEnv) error {
		if *memLimit < 0 {
			return &exitError{code: 2, msg: fmt.Sprintf("--memory-limit-mb %d: want 0 (no limit) or more", *memLimit)}
		}
		if *memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
			defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(*memLimit) << 20))
		}
		if err := dedup.check(); err != nil {
			return err
		}
		if *upstream == "" {
			return &exitError{code: 2, msg: "ingest needs --upstream URL (for example https://cache.nixos.org)"}
		}
		pk, err := narinfo.ParsePublicKeys(keys)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		if len(pk) == 0 && !*allowUntrusted {
			return &exitError{code: 2, msg: "ingest needs --trusted-public-key NAME:KEY for the upstream's signing key (or --allow-untrusted)"}
		}
		p, err := chunker.LookupPreset(*preset)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		switch ingest.XZDecoder(*xzImpl) {
		case ingest.XZAuto, ingest.XZExec, ingest.XZGo:
		default:
			return &exitError{code: 2, msg: fmt.Sprintf("--xz-decoder %q: want auto, exec or go", *xzImpl)}
		}
		paths := append([]string(nil), env.args...)
		if *pathsFile != "" {
			more, err := readPathsFile(*pathsFile)
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			paths = append(paths, more...)
		}
		if len(paths) == 0 {
			return &exitError{code: 2, msg: "nothing to ingest: give store paths as arguments or --paths FILE"}
		}
		up, err := ingest.NewUpstream(*upstream, ingest.UpstreamOptions{})
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		ix, chunks, locker, closeAll, err := env.openWithLocks(ctx, *level, locks)
		if err != nil {
			return err
		}
		defer closeAll()
		in, err := ingest.New(up, ix, chunks, dedup.options(ingest.Options{
			Preset: p, Keys: pk, AllowUntrusted: *allowUntrusted, Jobs: *jobs, ChunkWorkers: *workers,
			XZ: ingest.XZDecoder(*xzImpl), Logger: env.log, Locker: locker, LockTTL: locks.ttl, TempDir: spillDir(env.data),
		}))
		if err != nil {
			return err
		}
		start := time.Now()
		stopProgress := startProgress(env.stderr, *progress, &in.Progress, start)
		rep, runErr := in.Batch(ctx, paths, *closure)
		stopProgress()

		for _, f := range rep.Failures {
			fmt.Fprintf(env.stderr, "FAILED %s: %v\n", f.Path, f.Err)
		}
		var nars, skipped int
		var narBytes, upBytes, stored uint64
		var newChunks, rebased, moved int
		var rebaseSaved int64
		for _, r := range rep.Results {
			if r.Skipped {
				skipped++
				continue
			}
			nars++
			narBytes += r.NarSize
			upBytes += r.UpstreamSize
			stored += r.StoredBytes
			newChunks += r.NewChunks
			rebased += r.Rebased
			rebaseSaved += r.RebaseSaved
			moved += r.Moved
		}
		el := time.Since(start)
		fmt.Fprintf(env.stdout, "Ingested %d NARs (%d already stored, %d failed) in %s: %s NAR, %s from upstream, %d new chunks, %s stored (%.1f MB/s of NAR).\n",
			nars, skipped, len(rep.Failures), el.Round(time.Millisecond), human(narBytes), human(upBytes), newChunks, human(stored),
			float64(narBytes)/1e6/el.Seconds())
		if rebased > 0 || rebaseSaved != 0 {
			fmt.Fprintf(env.stdout, "Reverse deltas: %d chunks of previous releases re-encoded against the new ones (%d of older releases moved to keep within --max-delta-depth), %s less stored.\n",
				rebased, moved, humanSigned(rebaseSaved))
		}
		st, err := ix.Stats(ctx)
		if err == nil {
			fmt.Fprintln(env.stdout)
			writeStats(env.stdout, st)
		}
		if runErr != nil {
			return runErr
		}
		if len(rep.Failures) > 0 {
			return &exitError{code: 1, msg: fmt.Sprintf("%d of %d store paths failed; nothing was recorded for them (see FAILED lines above)", len(rep.Failures), len(rep.Failures)+len(rep.Results))}
		}
		return nil
	}
}

// readPathsFile reads one store path per line; .xz files are decompressed.
func readPathsFile(name string) ([]string, error) {
	var r io.Reader
	if name == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--paths: %w", err)
		}
		defer f.Close()
		r = f
		if strings.HasSuffix(name, ".xz") {
			xr, err := ingest.Decompress(f, "xz", ingest.XZAuto)
			if err != nil {
				return nil, fmt.Errorf("--paths %s: %v", name, err)
			}
			defer xr.Close()
			r = xr
		}
	}
	var out []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, err := ingest.ParseHashPart(line); err != nil {
			return nil, fmt.Errorf("--paths %s line %d: %v", name, n, err)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--paths %s: %v", name, err)
	}
	return out, nil
}
