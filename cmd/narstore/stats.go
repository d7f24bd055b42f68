package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/recompress"
)

func setupStats(fs *flag.FlagSet) runFunc {
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	return func(ctx context.Context, env *cmdEnv) error {
		ix, _, err := env.openData(false, 0)
		if err != nil {
			return err
		}
		defer ix.Close()
		st, err := ix.Stats(ctx)
		if err != nil {
			return err
		}
		// What `narstore recompress` (at its default level) has left to do.
		below, belowBytes, err := ix.CountBelowLevel(ctx, recompress.DefaultLevel)
		if err != nil {
			return err
		}
		depths, err := ix.Depths(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			out := struct {
				index.Stats
				StoredPerUpstream float64            `json:"stored_per_upstream"`
				StoredPerNAR      float64            `json:"stored_per_nar"`
				NotRecompressed   int64              `json:"chunks_below_recompress_level"`
				Depths            []index.DepthStats `json:"depths"`
			}{st, ratio(st.StoredBytes, st.UpstreamSize), ratio(st.StoredBytes, st.NARBytes), below, depths}
			enc := json.NewEncoder(env.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		}
		writeStats(env.stdout, st)
		fmt.Fprintf(env.stdout, "Rewrites not released:     %d chunks, %d bases held for their old blobs (reverse deltas in progress, failed, or left by a crash; they only keep bases from deletion)\n", st.Rewrites, st.Holds)
		fmt.Fprintf(env.stdout, "Not yet recompressed:      %d chunks (%s) below zstd level %d (narstore recompress)\n", below, human(uint64(belowBytes)), recompress.DefaultLevel)
		for _, d := range depths {
			what := fmt.Sprintf("Delta depth %d:", d.Depth)
			if d.Depth == 0 {
				what = "Plain chunks (depth 0):"
			}
			fmt.Fprintf(env.stdout, "%-26s %d chunks, %s stored for %s\n", what, d.Chunks, human(d.StoredBytes), human(d.ChunkBytes))
		}
		return nil
	}
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func writeStats(w io.Writer, st index.Stats) {
	fmt.Fprintf(w, "NARs:                      %d (%d store paths)\n", st.NARs, st.NarInfos)
	fmt.Fprintf(w, "Upstream compressed bytes: %s\n", human(st.UpstreamSize))
	fmt.Fprintf(w, "NAR bytes:                 %s\n", human(st.NARBytes))
	fmt.Fprintf(w, "Distinct chunks:           %d (%s before compression)\n", st.Chunks, human(st.ChunkBytes))
	fmt.Fprintf(w, "Stored bytes:              %s\n", human(st.StoredBytes))
	fmt.Fprintf(w, "Stored / upstream:         %.3f\n", ratio(st.StoredBytes, st.UpstreamSize))
	fmt.Fprintf(w, "Stored / NAR:              %.3f\n", ratio(st.StoredBytes, st.NARBytes))
}
