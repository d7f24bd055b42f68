package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/narstore/narstore/bench"
	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/internal/narinfo"
)

// zstdLevels parses a comma-separated list of zstd levels (1-22, or 0 too
// when zero means "none") given as flag name.
func zstdLevels(name, list string, zero bool) ([]int, error) {
	lowest, want := 1, "a zstd level 1-22"
	if zero {
		lowest, want = 0, "0 or a zstd level 1-22"
	}
	var out []int
	for _, l := range strings.Split(list, ",") {
		lvl, err := strconv.Atoi(strings.TrimSpace(l))
		if err != nil || lvl < lowest || lvl > 22 {
			return nil, &exitError{code: 2, msg: fmt.Sprintf("%s: %q is not %s", name, l, want)}
		}
		out = append(out, lvl)
	}
	return out, nil
}

func setupBench(fs *flag.FlagSet) runFunc {
	bumps := fs.String("bumps", "", "comma-separated directories, one per channel bump in order, each holding .nar/.nar.xz/.nar.zst/.nar.bz2 files")
	bumpPaths := fs.String("bump-paths", "", "comma-separated store-paths files, one per bump in order (with --upstream)")
	upstream := fs.String("upstream", "", "binary cache the --bump-paths store paths come from")
	var keys stringList
	fs.Var(&keys, "trusted-public-key", "trusted upstream key NAME:BASE64 (with --upstream)")
	out := fs.String("out", "bench-out", "directory for results.csv, results.json and the SVG charts")
	presets := fs.String("presets", strings.Join(chunker.PresetNames(), ","), "comma-separated chunker presets to sweep")
	levels := fs.String("levels", "1,3", "comma-separated zstd levels to sweep")
	delta := fs.String("delta", "off", "delta encoding values to sweep: off, on or off,on")
	normalize := fs.String("normalize", "off", "store-reference normalization values to sweep: off, on or off,on (needs --bump-paths)")
	recompressLevels := fs.String("recompress", "0", "comma-separated zstd levels to sweep for `narstore recompress` after each bump (0: none), with the zstd program when installed")
	rcSimilar := fs.Bool("recompress-similar", true, "with --recompress: try plain chunks as deltas of similar ones (as recompress --similar)")
	parallel := fs.Int("parallel", 2, "configurations run at once")
	deltaBases := fs.Int("delta-bases", 3, "for delta configurations: bases per delta chunk (as ingest --delta-bases)")
	similar := fs.Bool("similar-search", true, "for delta configurations: store-wide similar-chunk search (as ingest --similar-search)")
	reverse := fs.Bool("reverse-delta", true, "for delta configurations: reverse deltas (as ingest --reverse-delta)")
	depth := fs.Int("max-delta-depth", 0, "for delta configurations: longest delta chain (as ingest --max-delta-depth; 0: ingest's default)")
	fromJSON := fs.String("from-json", "", "re-render the table, CSV and charts from an earlier results.json instead of running")
	tmp := fs.String("tmp", "", "where throwaway stores are made (default: the system temp dir)")
	putPrice := fs.Float64("price-put", bench.DefaultPrices.PutPer1000, "USD per 1000 PUT requests (S3 Standard list price)")
	getPrice := fs.Float64("price-get", bench.DefaultPrices.GetPer1000, "USD per 1000 GET requests (S3 Standard list price)")
	gbPrice := fs.Float64("price-gb-month", bench.DefaultPrices.GBMonth, "USD per GB-month stored (S3 Standard list price)")
	return func(ctx context.Context, env *cmdEnv) error {
		if *fromJSON != "" {
			b, err := os.ReadFile(*fromJSON)
			if err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("--from-json: %v", err)}
			}
			var rows []bench.Row
			if err := json.Unmarshal(b, &rows); err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("--from-json %s: %v", *fromJSON, err)}
			}
			bench.WriteTable(env.stdout, rows)
			return bench.WriteFiles(*out, rows)
		}
		o := bench.Options{Parallel: *parallel, TempDir: *tmp, Progress: env.stderr, DeltaBases: *deltaBases, NoSimilarSearch: !*similar, RecompressPlainOnly: !*rcSimilar, MaxDeltaDepth: *depth, ReverseDelta: *reverse,
			Prices: bench.Prices{PutPer1000: *putPrice, GetPer1000: *getPrice, GBMonth: *gbPrice}}
		switch {
		case *bumps != "" && *bumpPaths != "":
			return &exitError{code: 2, msg: "give either --bumps or --bump-paths, not both"}
		case *bumps != "":
			for _, d := range strings.Split(*bumps, ",") {
				files, err := filepath.Glob(filepath.Join(d, "*.nar*"))
				if err != nil || len(files) == 0 {
					return &exitError{code: 2, msg: fmt.Sprintf("--bumps: %s holds no .nar files", d)}
				}
				sort.Strings(files)
				o.Bumps = append(o.Bumps, bench.Bump{Name: filepath.Base(d), Files: files})
			}
		case *bumpPaths != "":
			if *upstream == "" {
				return &exitError{code: 2, msg: "--bump-paths needs --upstream URL and --trusted-public-key"}
			}
			pk, err := narinfo.ParsePublicKeys(keys)
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			o.Upstream, o.Keys = *upstream, pk
			for _, f := range strings.Split(*bumpPaths, ",") {
				paths, err := readPathsFile(f)
				if err != nil {
					return &exitError{code: 2, msg: err.Error()}
				}
				o.Bumps = append(o.Bumps, bench.Bump{Name: strings.TrimSuffix(filepath.Base(f), ".store-paths"), StorePaths: paths})
			}
		default:
			return &exitError{code: 2, msg: "bench needs --bumps DIR1,DIR2,... or --bump-paths F1,F2,... --upstream URL"}
		}
		deltas, err := onOff("--delta", *delta)
		if err != nil {
			return err
		}
		norms, err := onOff("--normalize", *normalize)
		if err != nil {
			return err
		}
		lvls, err := zstdLevels("--levels", *levels, false)
		if err != nil {
			return err
		}
		rcs, err := zstdLevels("--recompress", *recompressLevels, true)
		if err != nil {
			return err
		}
		for _, p := range strings.Split(*presets, ",") {
			preset, err := chunker.LookupPreset(strings.TrimSpace(p))
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			for _, lvl := range lvls {
				for _, n := range norms {
					for _, d := range deltas {
						for _, rc := range rcs {
							o.Configs = append(o.Configs, bench.Config{Preset: preset, Level: lvl, Delta: d, Normalize: n, Recompress: rc})
						}
					}
				}
			}
		}
		start := time.Now()
		res, err := bench.RunAll(ctx, o)
		if err != nil {
			return err
		}
		rows := res.Rows
		bench.WriteTable(env.stdout, rows)
		fmt.Fprintln(env.stdout)
		bench.WritePackages(env.stdout, res.Packages)
		if err := bench.WriteFiles(*out, rows); err != nil {
			return err
		}
		if err := bench.WritePackagesCSV(*out, res.Packages); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "\n%d configurations × %d bumps in %s; wrote %s/results.csv, packages.csv, results.json, ratio_by_bump.svg, throughput_by_chunk_size.svg, objects_by_chunk_size.svg\n",
			len(o.Configs), len(o.Bumps), time.Since(start).Round(time.Second), *out)
		return nil
	}
}

func onOff(flagName, v string) ([]bool, error) {
	var out []bool
	for _, x := range strings.Split(v, ",") {
		switch strings.TrimSpace(x) {
		case "off":
			out = append(out, false)
		case "on":
			out = append(out, true)
		default:
			return nil, &exitError{code: 2, msg: fmt.Sprintf("%s: %q: want off, on or off,on", flagName, x)}
		}
	}
	return out, nil
}
