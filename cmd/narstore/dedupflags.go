package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/narstore/narstore/ingest"
	"github.com/narstore/narstore/store"
)

// dedupConfig holds the dedup settings ingest and serve share.
type dedupConfig struct {
	normalize, delta, similar, reverse bool
	bases, depth, moves                int
}

// dedupFlags registers --normalize, --delta, --similar-search,
// --delta-bases, --reverse-delta, --max-delta-depth and --max-delta-moves;
// the first two have per-command defaults and help.
func dedupFlags(fs *flag.FlagSet, delta bool, normalizeHelp, deltaHelp string) *dedupConfig {
	c := &dedupConfig{}
	fs.BoolVar(&c.normalize, "normalize", true, normalizeHelp)
	fs.BoolVar(&c.delta, "delta", delta, deltaHelp)
	fs.BoolVar(&c.similar, "similar-search", true, "with --delta: also look for delta bases anywhere in the store (similarity keys in the index), for chunks the package's previous version has nothing like")
	fs.IntVar(&c.bases, "delta-bases", 3, "with --delta: how many similar chunks (the best one and its neighbours) one delta may use as its dictionary, 1 to 4; more stores less, and costs ingest and read CPU")
	fs.BoolVar(&c.reverse, "reverse-delta", true, "with --delta: store a package's new release plain and re-encode its previous release as deltas of it once the new one is recorded, so the release clients fetch reads without delta decoding; off: the new release is stored as deltas of the previous one (less ingest CPU, slower reads of the newest release)")
	fs.IntVar(&c.depth, "max-delta-depth", 0, fmt.Sprintf("with --delta: longest delta chain new chunks may extend (a base of a base of …), 1 to %d; deeper stores less for packages with many releases and costs reads one more decode per step (readers follow any depth up to %d). 0: %d with --reverse-delta (where it only bounds reads of releases that many bumps old, and fewer older releases need moving), %d without", store.MaxDeltaDepthLimit, store.MaxDeltaDepthLimit, ingest.DefaultReverseDeltaDepth, store.DefaultMaxDeltaDepth))
	fs.IntVar(&c.moves, "max-delta-moves", 0, "with --reverse-delta: at most this many chunks of older releases moved onto a new release per chunk of the previous one that needs it to stay within --max-delta-depth; past it the rest of the previous release stays plain. Bounds ingest work per release, which otherwise grows with the releases kept (about one release's worth more every --max-delta-depth releases), at a cost in storage; 0: no bound")
	return c
}

// check reports a bad setting as a usage error.
func (c *dedupConfig) check() error {
	if c.bases < 1 || c.bases > store.MaxDeltaBases {
		return &exitError{code: 2, msg: fmt.Sprintf("--delta-bases %d: want 1 to %d", c.bases, store.MaxDeltaBases)}
	}
	if c.moves < 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("--max-delta-moves %d: want 0 (no bound) or more", c.moves)}
	}
	if c.depth < 0 || c.depth > store.MaxDeltaDepthLimit {
		return &exitError{code: 2, msg: fmt.Sprintf("--max-delta-depth %d: want 1 to %d, or 0 for the default", c.depth, store.MaxDeltaDepthLimit)}
	}
	return nil
}

// options returns o with the dedup settings set.
func (c *dedupConfig) options(o ingest.Options) ingest.Options {
	o.Normalize, o.Delta, o.SimilarSearch, o.DeltaBases, o.MaxDeltaDepth, o.ReverseDelta, o.MaxMoves = c.normalize, c.delta, c.similar, c.bases, c.depth, c.reverse, c.moves
	return o
}

// spillDir is where delta ingest keeps its spill files: the data directory
// if there is one (where the operator gave the cache disk space; /tmp may be
// RAM), else "" for the system's temporary directory.
func spillDir(data string) string {
	if fi, err := os.Stat(data); err == nil && fi.IsDir() {
		return data
	}
	return ""
}
