// Package index records metadata: upstream narinfos, each NAR's ordered chunk
// list, and chunk records. Backends: SQLite (embedded default) and PostgreSQL.
//
// Invariants every backend keeps:
//   - A NAR and its chunk list are written in one transaction (Commit), and
//     only after its bytes were verified and all its chunks stored; a NAR is
//     either fully recorded or absent.
//   - A chunk record exists only for a chunk whose blob is stored.
//   - Deletion rule (GC): a chunk may be deleted only when no NAR lists it and
//     no chunk names it among its Bases or its holds (Dependents is empty).
//   - A chunk's record and holds name every base its blob needs. Rebase
//     (reverse deltas) changes a chunk's bases: the record changes first
//     and the blob after, so Rebase holds the bases of the blob there (those
//     it does not name again) until ReleaseHolds, which the caller calls once
//     the new blob is in place. A crash in between leaves bases named that
//     no blob needs (kept from deletion for nothing), never the reverse.
//     Until then no other Rebase of the chunk is taken (for RewriteTTL), so
//     two rewrites' replaces cannot land in the other order from their
//     records.
//     A Commit that finds a new chunk recorded already, with other bases
//     than its own record, holds those (two ingests stored the chunk at
//     once, each its own way, and either blob may be the one in place).
//     Recode (recompression) replaces a blob inside the transaction that
//     checks its record, so it cannot put back a blob needing bases that a
//     Rebase recorded after its read left.
//   - Delta bases form no cycle: a new chunk's bases are older chunks, and a
//     rebase only takes bases that have no bases themselves.
package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/internal/narinfo"
	"github.com/narstore/narstore/store"
)

var (
	// ErrNotFound means the narinfo or NAR is not recorded.
	ErrNotFound = errors.New("not found in index")
	// ErrMissingChunk means Commit was given a chunk list naming a chunk that
	// is neither recorded nor among the new chunks.
	ErrMissingChunk = errors.New("chunk list names an unrecorded chunk")
	// ErrChanged means a chunk's record is no longer what the caller read
	// (Recode).
	ErrChanged = errors.New("chunk record changed meanwhile")
)

// NAR is one stored NAR: its identity, how it was cut, and where its chunks are.
type NAR struct {
	Hash      [32]byte // SHA-256 of the NAR bytes (the narinfo's NarHash)
	Size      uint64
	Preset    string // chunker preset name it was cut with
	Transform string // pre-chunking transform ("" = none, refnorm.Transform); recorded so old NARs keep working
	RefMap    []byte // the transform's data (refnorm.Map, marshalled); nil if none
	// PName is the package name (store path name without version) the NAR was
	// ingested under, for finding a later version's delta bases. May be "".
	PName string
	// UpstreamSize is how many bytes the upstream served for it (compressed),
	// and UpstreamCompression how they were compressed. For stats only.
	UpstreamSize        uint64
	UpstreamCompression string
	Chunks              []ChunkRef // in NAR order; offsets ascending from 0
}

// ChunkRef places a chunk in a NAR.
type ChunkRef struct {
	ID     chunker.ID
	Offset uint64
	Size   uint32
}

// Chunk is a chunk record.
type Chunk struct {
	ID         chunker.ID
	Size       uint32       // decoded bytes
	StoredSize uint32       // blob bytes
	Encoding   uint8        // store.Encoding
	Bases      []chunker.ID // delta bases in dictionary order; nil if none
	Depth      uint8        // delta steps to a plain chunk: 0 plain, the deepest base's depth+1 otherwise
	Level      uint8        // zstd level the blob was made at; 0 if not recorded
	// Sims are the chunk's similarity keys (super-features) for SimilarChunks;
	// written by Commit, not returned by Chunks. Empty for a chunk that is not
	// to serve as a delta base.
	Sims []uint64
}

// multiBase reports whether a chunk of encoding enc keeps its bases in
// chunk_bases.
func multiBase(enc uint8) bool { return store.Encoding(enc).MultiBase() }

// walkNARsFrom is the FROM clause of WalkNARs, oldest first (then lineage
// order within a second), the same in both SQL dialects.
const walkNARsFrom = ` FROM nars LEFT JOIN (SELECT nar_hash AS lineage_hash, min(seq) AS lineage_seq FROM nar_names GROUP BY nar_hash) lineage
	ON lineage.lineage_hash = nars.nar_hash ORDER BY nars.created_at, lineage.lineage_seq`

// PendingTTL is how long a pending narinfo is kept when its NAR is never
// fetched.
const PendingTTL = 24 * time.Hour

// Stats summarises the index.
type Stats struct {
	NarInfos     int64  `json:"narinfos"`
	NARs         int64  `json:"nars"`
	NARBytes     uint64 `json:"nar_bytes"`
	UpstreamSize uint64 `json:"upstream_bytes"`
	Chunks       int64  `json:"chunks"`
	ChunkBytes   uint64 `json:"chunk_bytes"`
	StoredBytes  uint64 `json:"stored_bytes"`
	// Rewrites counts chunks whose reverse-delta rewrite is recorded and not
	// released (its new blob not known to be in place: in progress, failed,
	// or left by a crash), and Holds the bases held for blobs that may
	// still need them.
	Rewrites int64 `json:"rewrites_unreleased"`
	Holds    int64 `json:"bases_held"`
}

// DepthStats is what the chunks at one delta depth hold.
type DepthStats struct {
	Depth       int    `json:"depth"`
	Chunks      int64  `json:"chunks"`
	ChunkBytes  uint64 `json:"chunk_bytes"`
	StoredBytes uint64 `json:"stored_bytes"`
}

// depthsQuery is Depths' query, the same in both SQL dialects.
const depthsQuery = `SELECT depth, count(*), coalesce(sum(size),0), coalesce(sum(stored_size),0) FROM chunks GROUP BY depth ORDER BY depth`

// Index is the full contract a backend implements. Consumers declare the
// narrow subset they use. All methods are safe for concurrent use, also from
// several processes sharing one database.
type Index interface {
	// NarInfo returns the recorded narinfo for a store path hash part, as
	// upstream served it (all signatures kept). Missing: ErrNotFound.
	NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
	// NAR returns a NAR with its chunk list. Missing: ErrNotFound.
	NAR(ctx context.Context, narHash [32]byte) (*NAR, error)
	// HasNAR reports whether the NAR is recorded.
	HasNAR(ctx context.Context, narHash [32]byte) (bool, error)
	// HasChunks reports, for each id, whether a chunk record exists.
	HasChunks(ctx context.Context, ids []chunker.ID) ([]bool, error)
	// Commit records, in one transaction, the new chunk records, the NAR with
	// its chunk list, and the narinfo pointing at it. Every chunk in the list
	// must be recorded already or be in newChunks, else ErrMissingChunk and
	// nothing is written. Recording a NAR that exists keeps the existing one;
	// recording a narinfo that exists replaces it. ni may be nil to record
	// only the NAR (an upload whose narinfo comes later). A new chunk
	// recorded already keeps its record, and the bases of newChunks' record
	// that it does not name are held for it (the blob in place may be
	// either). Idempotent.
	Commit(ctx context.Context, ni *narinfo.NarInfo, nar *NAR, newChunks []Chunk) error
	// AddNarInfo records a narinfo for a NAR that is already recorded
	// (ErrNotFound otherwise), replacing any narinfo for the same path.
	AddNarInfo(ctx context.Context, ni *narinfo.NarInfo) error
	// Predecessor returns the newest NAR recorded under pname (with its chunk
	// list), or ErrNotFound.
	Predecessor(ctx context.Context, pname string) (*NAR, error)
	// Chunks returns the records of the given chunks; a missing one has a zero ID.
	Chunks(ctx context.Context, ids []chunker.ID) ([]Chunk, error)
	// ChunksBelowLevel lists up to limit chunks whose recorded level is
	// below level, in ID order, starting after the ID after (the zero ID
	// for the first page): what a recompression to level has left to do.
	ChunksBelowLevel(ctx context.Context, level int, after chunker.ID, limit int) ([]chunker.ID, error)
	// CountBelowLevel counts the chunks ChunksBelowLevel would list and
	// their decoded bytes, for progress reports.
	CountBelowLevel(ctx context.Context, level int) (chunks, bytes int64, err error)
	// Recode records a recompression of chunk id (narstore recompress):
	// the same bytes and bases in a blob of to's stored size and encoding
	// (which only changes from raw to zstd), made at to's level. from is
	// what the blob the caller read has: its size, encoding and bases. In
	// one transaction that keeps other writers of the record out until it
	// ends, it checks that every base from needs is still named for the
	// chunk (in its record, or held) and that no rewrite of it is in flight
	// (Rebase, not yet released), calls replace (nil when the blob stays as
	// it is) and records to; a replace error records nothing and is
	// returned. Otherwise it is ErrChanged, and replace is not called: a
	// reverse-delta rewrite recorded other bases meanwhile, and its blob, in
	// place or on its way, must not be overwritten by one needing the old
	// bases. A Rebase after it sees the new record. ErrNotFound if there is
	// no such chunk.
	Recode(ctx context.Context, id chunker.ID, from, to Chunk, replace func() error) error
	// Rebase records, for each rewrite, that chunk C.ID's blob is about to
	// be replaced by a delta of C.Bases (C's encoding, stored size and
	// level; its depth is computed), for reverse deltas: an older release
	// re-encoded against a newer one. In one transaction, taking the
	// rewrites in order, it checks that each chunk's record still has Old's
	// stored size, encoding, level and first base (so the blob the caller
	// read is the one it replaces), and that every base is recorded and has
	// no bases itself (so no cycle can form); else RebaseStale. It gives
	// every chunk depending on it, directly or not, its depth again; if one
	// would pass maxDepth, or more than MaxRebaseDependents depend on it,
	// RebaseTooDeep. A chunk rewritten before and not released since
	// (ReleaseHolds), less than RewriteTTL ago, is RebaseStale: its blob may
	// not be in place yet, and two replaces could land in the other order.
	// Only a Rebased rewrite records anything; an error records none. A
	// Rebased chunk holds the bases of its record before (the blob there
	// needs them) that C does not name, until ReleaseHolds. The caller
	// replaces a blob only after Rebased, and releases its holds only after
	// that: a crash in between leaves bases named that no blob needs, which
	// only keeps them from deletion.
	Rebase(ctx context.Context, rw []Rewrite, maxDepth int) ([]RebaseResult, error)
	// Dependents lists the chunks naming id among their bases or holding it.
	Dependents(ctx context.Context, id chunker.ID) ([]chunker.ID, error)
	// ReleaseHolds drops the holds of chunks ids (Rebase, Commit), once
	// their new blobs are in place: each blob then needs only the bases its
	// record names, and the chunks may be rewritten again.
	ReleaseHolds(ctx context.Context, ids []chunker.ID) error
	// WalkNARs calls fn for every NAR (without its chunk list), oldest
	// first: in the order they were recorded, to the second, and within a
	// second in package-lineage order (so a copy keeps each package's
	// newest NAR newest).
	WalkNARs(ctx context.Context, fn func(nar *NAR) error) error
	// StorePaths lists the store paths whose narinfo points at the NAR.
	StorePaths(ctx context.Context, narHash [32]byte) ([]string, error)
	// SimilarChunks returns recorded chunks that share at least one of sims,
	// most shared first, at most limit.
	SimilarChunks(ctx context.Context, sims []uint64, limit int) ([]chunker.ID, error)
	// AddPending records an upstream narinfo (already checked as trusted by
	// the caller) whose NAR is not stored yet, so that every instance sharing
	// the index can pull that NAR through. Commit of a narinfo for the NAR
	// removes it; entries older than PendingTTL are pruned.
	AddPending(ctx context.Context, ni *narinfo.NarInfo) error
	// Pending returns the pending narinfo for a NAR hash, or ErrNotFound.
	Pending(ctx context.Context, narHash [32]byte) (*narinfo.NarInfo, error)
	// Stats summarises the index.
	Stats(ctx context.Context) (Stats, error)
	// Depths counts the chunks at each delta depth (0: plain), shallowest
	// first.
	Depths(ctx context.Context) ([]DepthStats, error)
	// Close releases the backend.
	Close() error
}

func parsePending(text string) (*narinfo.NarInfo, error) {
	ni, err := narinfo.Parse(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("pending narinfo: %w", err)
	}
	return ni, nil
}

// rankSimilar orders chunk IDs by how many keys they matched, most first
// (ties by ID, for determinism), and keeps limit.
func rankSimilar(hits map[chunker.ID]int, limit int) []chunker.ID {
	out := make([]chunker.ID, 0, len(hits))
	for id := range hits {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool {
		if hits[out[i]] != hits[out[j]] {
			return hits[out[i]] > hits[out[j]]
		}
		return bytes.Compare(out[i][:], out[j][:]) < 0
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// idRows is what database/sql's and pgx's result rows have in common.
type idRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// collectIDs reads rows of one column of chunk IDs.
func collectIDs(rows idRows) ([]chunker.ID, error) {
	var out []chunker.ID
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		out = append(out, chunker.ID(b))
	}
	return out, rows.Err()
}
