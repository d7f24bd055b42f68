package index

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/narstore/narstore/chunker"
)

// MaxRebaseDependents bounds the chunks Rebase walks above the chunk it
// rewrites (its dependents, theirs, and so on), since the walk and their
// new depths are written in the transaction. A chunk that more chunks
// depend on is left as it is.
const MaxRebaseDependents = 1024

// dependentsQuery lists the chunks naming a chunk (given three times) among
// their bases or holds, in SQLite's dialect.
const dependentsQuery = `SELECT id FROM chunks WHERE base_id = ? UNION SELECT chunk_id FROM chunk_bases WHERE base_id = ? UNION SELECT chunk_id FROM base_holds WHERE base_id = ?`

// Rewrite is one chunk for Rebase: C is its new record (encoding, stored
// size, level and bases; the depth is computed) and Old the record the
// caller read before encoding C.
type Rewrite struct{ C, Old Chunk }

// RebaseResult says what Rebase did with one chunk.
type RebaseResult int

const (
	// Rebased: the chunk is recorded with its new bases; replace its blob.
	Rebased RebaseResult = iota
	// RebaseStale: the chunk's record changed since the caller read it (or
	// is gone), or a base is not a recorded chunk without bases (any more).
	// Nothing was recorded.
	RebaseStale
	// RebaseTooDeep: a chunk depending on it would pass maxDepth, or more
	// than MaxRebaseDependents depend on it. Nothing was recorded.
	RebaseTooDeep
)

// sameFirstBase reports whether two base lists start with the same base
// (or are both empty).
func sameFirstBase(a, b []chunker.ID) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	return a[0] == b[0]
}

// RewriteTTL is how long a rewrite recorded by Rebase and not released
// (ReleaseHolds) refuses other rewrites of its chunk: longer than any
// writer takes from record to replace (an ingest whose lock lease lapses
// stops before its next replace), so an older mark is one a crash left.
// Its holds still name what the blob there may need.
const RewriteTTL = time.Hour

// rebaseTx is what rebase needs inside one transaction, in either dialect.
type rebaseTx interface {
	// lock keeps the records of ids from other writers until the
	// transaction ends, taking them in ID order (PostgreSQL; SQLite's write
	// transaction already excludes them).
	lock(ids []chunker.ID) error
	// chunks reads records, as Index.Chunks.
	chunks(ids []chunker.ID) ([]Chunk, error)
	// dependents returns the chunks that name id among their bases.
	dependents(id chunker.ID) ([]chunker.ID, error)
	// set records c (encoding, stored size, level, depth and bases).
	set(c Chunk) error
	// hold records that chunk id's blob may still need base, and held
	// lists the bases held for id.
	hold(id, base chunker.ID) error
	held(id chunker.ID) ([]chunker.ID, error)
	// inFlight reports whether a rewrite of chunk id is recorded and not
	// yet released (ReleaseHolds), and not older than RewriteTTL.
	inFlight(id chunker.ID) (bool, error)
	// markRewrite records that a rewrite of chunk id is in flight.
	markRewrite(id chunker.ID) error
	// setDepth records id's depth.
	setDepth(id chunker.ID, depth uint8) error
}

// Descendants lists the chunks depending on chunk id, directly or not
// (Dependents, then theirs, and so on), nearest first. ok is false, with
// the list cut short, when more than MaxRebaseDependents do.
func Descendants(ctx context.Context, ix interface {
	Dependents(ctx context.Context, id chunker.ID) ([]chunker.ID, error)
}, id chunker.ID) (desc []chunker.ID, ok bool, err error) {
	return descendants(func(id chunker.ID) ([]chunker.ID, error) { return ix.Dependents(ctx, id) }, id)
}

// descendants implements Descendants (and Rebase's walk) over dependents.
func descendants(dependents func(chunker.ID) ([]chunker.ID, error), id chunker.ID) ([]chunker.ID, bool, error) {
	var desc []chunker.ID
	seen := map[chunker.ID]bool{id: true}
	for frontier := []chunker.ID{id}; len(frontier) > 0; {
		var next []chunker.ID
		for _, f := range frontier {
			deps, err := dependents(f)
			if err != nil {
				return nil, false, err
			}
			for _, d := range deps {
				if !seen[d] {
					seen[d] = true
					next = append(next, d)
				}
			}
		}
		desc = append(desc, next...)
		if len(desc) > MaxRebaseDependents {
			return desc, false, nil
		}
		frontier = next
	}
	return desc, true, nil
}

// rebaseAll implements Index.Rebase over a transaction: the rows of every
// chunk and base are locked first, in ID order (so two transactions cannot
// deadlock on them), then each rewrite is checked and recorded in turn. An
// error ends it; the caller rolls the transaction back.
func rebaseAll(tx rebaseTx, rw []Rewrite, maxDepth int) ([]RebaseResult, error) {
	var ids []chunker.ID
	for _, r := range rw {
		if len(r.C.Bases) == 0 {
			return nil, fmt.Errorf("rebase chunk %s: no bases given", r.C.ID)
		}
		ids = append(append(ids, r.C.ID), r.C.Bases...)
	}
	if err := tx.lock(ids); err != nil {
		return nil, fmt.Errorf("rebase %d chunks: %w", len(rw), err)
	}
	out := make([]RebaseResult, len(rw))
	for i, r := range rw {
		var err error
		if out[i], err = rebase(tx, r.C, r.Old, maxDepth); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// holdOnConflict is Commit's step for c, a new chunk that turned out to be
// recorded already: it holds c's bases that the record there does not
// name. Two ingests that stored the same new chunk at once, each encoding
// it its own way (deltas of other bases, found by a search of an index that
// changed between them), may leave either one's blob in place (a directory
// keeps the first Put, S3 the last), while the first Commit's record stays.
// Whoever commits second holds its own bases, so that every base the blob
// in place may need is named.
func holdOnConflict(tx rebaseTx, c Chunk) error {
	if len(c.Bases) == 0 {
		return nil
	}
	cur, err := tx.chunks([]chunker.ID{c.ID})
	if err != nil {
		return fmt.Errorf("chunk %s recorded already: %w", c.ID, err)
	}
	for _, b := range c.Bases {
		if !slices.Contains(cur[0].Bases, b) {
			if err := tx.hold(c.ID, b); err != nil {
				return fmt.Errorf("chunk %s recorded already: hold base %s: %w", c.ID, b, err)
			}
		}
	}
	return nil
}

// checkRecode is Recode's check, in its transaction with the chunk's row
// locked: a blob like from may replace the one there if every base from
// needs is named for the chunk (in its record or held: two ingests that
// stored it at once may have left either's blob) and no rewrite is between
// its record and its blob (whose replace this one could overwrite, or be
// overwritten by); else ErrChanged. Size and encoding may differ; the
// record takes the blob's.
func checkRecode(tx rebaseTx, id chunker.ID, from Chunk) error {
	cur, err := tx.chunks([]chunker.ID{id})
	if err != nil {
		return err
	}
	if cur[0].ID.IsZero() {
		return ErrNotFound
	}
	held, err := tx.held(id)
	if err != nil {
		return err
	}
	busy, err := tx.inFlight(id)
	if err != nil {
		return err
	}
	if busy {
		return ErrChanged
	}
	for _, b := range from.Bases {
		if !slices.Contains(cur[0].Bases, b) && !slices.Contains(held, b) {
			return ErrChanged
		}
	}
	return nil
}

// rebase records one rewrite, its rows locked.
func rebase(tx rebaseTx, c Chunk, old Chunk, maxDepth int) (RebaseResult, error) {
	recs, err := tx.chunks(append([]chunker.ID{c.ID}, c.Bases...))
	if err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	cur := recs[0]
	if cur.ID.IsZero() {
		return RebaseStale, nil
	}
	// Compare and swap: the chunk is still as the caller read it, so its
	// blob is the one the caller is about to replace.
	if cur.StoredSize != old.StoredSize || cur.Encoding != old.Encoding || cur.Level != old.Level || !sameFirstBase(cur.Bases, old.Bases) {
		return RebaseStale, nil
	}
	// Not while another rewrite of it is between its record and its blob:
	// this one's replace could land first and the other's after it, leaving
	// a blob that needs bases this record does not name (and, once this
	// one's holds are released, nothing does).
	if busy, err := tx.inFlight(c.ID); err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	} else if busy {
		return RebaseStale, nil
	}
	var depth uint8
	for i, b := range c.Bases {
		r := recs[i+1]
		// Every new base is plain (a chunk without bases) now, in this
		// transaction: no chain can lead from it back to the chunk, so no
		// cycle can form (a chunk with bases never becomes a base of a
		// rebase, and new chunks' deltas only point at older ones).
		if b == c.ID || r.ID.IsZero() || len(r.Bases) > 0 {
			return RebaseStale, nil
		}
		depth = max(depth, r.Depth+1)
	}
	if int(depth) > maxDepth {
		return RebaseTooDeep, nil
	}
	// The chunks depending on it, directly or not, get their depths again
	// (1 + their deepest base's), with the chunk's new one; all must stay
	// within maxDepth.
	desc, ok, err := descendants(tx.dependents, c.ID)
	if err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: dependents: %w", c.ID, err)
	}
	if !ok {
		return RebaseTooDeep, nil
	}
	depths := map[chunker.ID]uint8{c.ID: depth}
	var changed []chunker.ID
	if len(desc) > 0 {
		drecs, err := tx.chunks(desc)
		if err != nil {
			return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
		}
		inside := map[chunker.ID]bool{c.ID: true}
		for _, d := range desc {
			inside[d] = true
		}
		var outside []chunker.ID
		for _, r := range drecs {
			depths[r.ID] = r.Depth
			for _, b := range r.Bases {
				if !inside[b] {
					outside = append(outside, b)
				}
			}
		}
		orecs, err := tx.chunks(outside)
		if err != nil {
			return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
		}
		for _, r := range orecs {
			if !r.ID.IsZero() {
				depths[r.ID] = r.Depth
			}
		}
		// Relax until nothing changes: dependents form no cycle, so this
		// ends within the longest chain's length of rounds.
		for round := 0; ; round++ {
			moved := false
			for _, r := range drecs {
				var nd uint8
				for _, b := range r.Bases {
					nd = max(nd, depths[b]+1)
				}
				if nd != depths[r.ID] {
					depths[r.ID], moved = nd, true
				}
			}
			if !moved {
				break
			}
			if round > len(desc) {
				return RebaseStale, fmt.Errorf("rebase chunk %s: its dependents' depths do not settle: the index has a delta cycle", c.ID)
			}
		}
		for _, r := range drecs {
			if int(depths[r.ID]) > maxDepth {
				return RebaseTooDeep, nil
			}
			if depths[r.ID] != r.Depth {
				changed = append(changed, r.ID)
			}
		}
	}
	c.Depth = depth
	if err := tx.set(c); err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	if err := tx.markRewrite(c.ID); err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	// The blob there now needs its bases until the caller has replaced it
	// (ReleaseHolds).
	for _, b := range cur.Bases {
		if !slices.Contains(c.Bases, b) {
			if err := tx.hold(c.ID, b); err != nil {
				return RebaseStale, fmt.Errorf("rebase chunk %s: hold base %s: %w", c.ID, b, err)
			}
		}
	}
	for _, d := range changed {
		if err := tx.setDepth(d, depths[d]); err != nil {
			return RebaseStale, fmt.Errorf("rebase chunk %s: depth of dependent %s: %w", c.ID, d, err)
		}
	}
	return Rebased, nil
}
