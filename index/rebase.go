package index

import (
	"fmt"

	"github.com/narstore/narstore/chunker"
)

// MaxRebaseDependents bounds the chunks Rebase walks above the chunk it
// rewrites (its dependents, theirs, and so on). A chunk that more chunks
// depend on is left as it is: deepening all of them costs more reads than
// its smaller blob saves, and the walk is done in the transaction.
const MaxRebaseDependents = 1024

// dependentsQuery lists the chunks naming a chunk (given twice) among their
// bases, in SQLite's dialect.
const dependentsQuery = `SELECT id FROM chunks WHERE base_id = ? UNION SELECT chunk_id FROM chunk_bases WHERE base_id = ?`

// RebaseResult says what Rebase did.
type RebaseResult int

const (
	// Rebased: the chunk is recorded with its new bases; replace its blob.
	Rebased RebaseResult = iota
	// RebaseStale: the chunk's record changed since the caller read it, or
	// a base is not a recorded chunk without bases (any more). Nothing was
	// recorded.
	RebaseStale
	// RebaseTooDeep: a chunk depending on it would pass maxDepth, or more
	// than MaxRebaseDependents depend on it. Nothing was recorded.
	RebaseTooDeep
)

// rebaseRow is what Rebase checks of a chunk record.
type rebaseRow struct {
	found      bool
	storedSize uint32
	encoding   uint8
	firstBase  []byte // chunks.base_id: nil for a chunk without bases
	depth      uint8
	level      uint8
}

// sameFirstBase reports whether a record's base_id is the first of bases.
func sameFirstBase(first []byte, bases []chunker.ID) bool {
	if len(bases) == 0 {
		return first == nil
	}
	return first != nil && chunker.ID(first) == bases[0]
}

// rebaseTx is what rebase needs inside one transaction, in either dialect.
type rebaseTx interface {
	// rows returns the records of ids; with lock, they stay locked against
	// other writers until the transaction ends (PostgreSQL; SQLite's write
	// transaction already excludes them).
	rows(ids []chunker.ID, lock bool) (map[chunker.ID]rebaseRow, error)
	// dependents returns the chunks that name id among their bases.
	dependents(id chunker.ID) ([]chunker.ID, error)
	// set records c (encoding, stored size, level, depth and bases).
	set(c Chunk) error
	// bases returns the bases id's record names.
	bases(id chunker.ID) ([]chunker.ID, error)
	// setDepth records id's depth.
	setDepth(id chunker.ID, depth uint8) error
}

// rebase implements Index.Rebase over a transaction.
func rebase(tx rebaseTx, c Chunk, old Chunk, maxDepth int) (RebaseResult, error) {
	if len(c.Bases) == 0 {
		return RebaseStale, fmt.Errorf("rebase chunk %s: no bases given", c.ID)
	}
	ids := append([]chunker.ID{c.ID}, c.Bases...)
	rows, err := tx.rows(ids, true)
	if err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	cur := rows[c.ID]
	if !cur.found {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, ErrNotFound)
	}
	// Compare and swap: the chunk is still as the caller read it, so its
	// blob is the one the caller is about to replace.
	if cur.storedSize != old.StoredSize || cur.encoding != old.Encoding || cur.level != old.Level || !sameFirstBase(cur.firstBase, old.Bases) {
		return RebaseStale, nil
	}
	var depth uint8
	for _, b := range c.Bases {
		r := rows[b]
		// Every new base is plain (a chunk without bases) now, in this
		// transaction: no chain can lead from it back to the chunk, so no
		// cycle can form (a chunk with bases never becomes a base of a
		// rebase, and new chunks' deltas only point at older ones).
		if b == c.ID || !r.found || r.firstBase != nil {
			return RebaseStale, nil
		}
		depth = max(depth, r.depth+1)
	}
	if int(depth) > maxDepth {
		return RebaseTooDeep, nil
	}
	// The chunks depending on it, directly or not, get their depths again
	// (1 + their deepest base's), with the chunk's new one; all must stay
	// within maxDepth.
	var desc []chunker.ID
	seen := map[chunker.ID]bool{c.ID: true}
	for frontier := []chunker.ID{c.ID}; len(frontier) > 0; {
		var next []chunker.ID
		for _, id := range frontier {
			deps, err := tx.dependents(id)
			if err != nil {
				return RebaseStale, fmt.Errorf("rebase chunk %s: dependents: %w", c.ID, err)
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
			return RebaseTooDeep, nil
		}
		frontier = next
	}
	depths := map[chunker.ID]uint8{c.ID: depth}
	var changed []chunker.ID
	if len(desc) > 0 {
		baseOf := make(map[chunker.ID][]chunker.ID, len(desc))
		var outside []chunker.ID
		for _, d := range desc {
			bs, err := tx.bases(d)
			if err != nil {
				return RebaseStale, fmt.Errorf("rebase chunk %s: bases of %s: %w", c.ID, d, err)
			}
			baseOf[d] = bs
			for _, b := range bs {
				if !seen[b] {
					outside = append(outside, b)
				}
			}
		}
		drows, err := tx.rows(append(desc, outside...), false)
		if err != nil {
			return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
		}
		for id, r := range drows {
			if id != c.ID {
				depths[id] = r.depth
			}
		}
		// Relax until nothing changes: dependents form no cycle, so this
		// ends within the longest chain's length of rounds.
		for round := 0; ; round++ {
			moved := false
			for _, d := range desc {
				var nd uint8
				for _, b := range baseOf[d] {
					nd = max(nd, depths[b]+1)
				}
				if nd != depths[d] {
					depths[d], moved = nd, true
				}
			}
			if !moved {
				break
			}
			if round > len(desc) {
				return RebaseStale, fmt.Errorf("rebase chunk %s: its dependents' depths do not settle: the index has a delta cycle", c.ID)
			}
		}
		for _, d := range desc {
			if int(depths[d]) > maxDepth {
				return RebaseTooDeep, nil
			}
			if depths[d] != drows[d].depth {
				changed = append(changed, d)
			}
		}
	}
	c.Depth = depth
	if err := tx.set(c); err != nil {
		return RebaseStale, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	for _, d := range changed {
		if err := tx.setDepth(d, depths[d]); err != nil {
			return RebaseStale, fmt.Errorf("rebase chunk %s: depth of dependent %s: %w", c.ID, d, err)
		}
	}
	return Rebased, nil
}
