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

// rebaseRow is what Rebase checks of a chunk record.
type rebaseRow struct {
	found      bool
	storedSize uint32
	encoding   uint8
	firstBase  []byte // chunks.base_id: nil for a chunk without bases
	depth      uint8
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
	// deepen adds by to the recorded depth of id (at most 255).
	deepen(id chunker.ID, by uint8) error
}

// rebase implements Index.Rebase over a transaction.
func rebase(tx rebaseTx, c Chunk, old Chunk, maxDepth int) (bool, error) {
	if len(c.Bases) == 0 {
		return false, fmt.Errorf("rebase chunk %s: no bases given", c.ID)
	}
	ids := append([]chunker.ID{c.ID}, c.Bases...)
	rows, err := tx.rows(ids, true)
	if err != nil {
		return false, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	cur := rows[c.ID]
	if !cur.found {
		return false, fmt.Errorf("rebase chunk %s: %w", c.ID, ErrNotFound)
	}
	// Compare and swap: the chunk is still as the caller read it, so its
	// blob is the one the caller is about to replace.
	if cur.storedSize != old.StoredSize || cur.encoding != old.Encoding || (cur.firstBase == nil) != (len(old.Bases) == 0) {
		return false, nil
	}
	var depth uint8
	for _, b := range c.Bases {
		r := rows[b]
		// Every new base is plain (a chunk without bases) now, in this
		// transaction: no chain can lead from it back to the chunk, so no
		// cycle can form (a chunk with bases never becomes a base of a
		// rebase, and new chunks' deltas only point at older ones).
		if b == c.ID || !r.found || r.firstBase != nil {
			return false, nil
		}
		depth = max(depth, r.depth+1)
	}
	// The chunk's dependents go as much deeper as the chunk does.
	grow := int(depth) - int(cur.depth)
	var desc []chunker.ID
	if grow > 0 {
		seen := map[chunker.ID]bool{c.ID: true}
		frontier := []chunker.ID{c.ID}
		for len(frontier) > 0 {
			var next []chunker.ID
			for _, id := range frontier {
				deps, err := tx.dependents(id)
				if err != nil {
					return false, fmt.Errorf("rebase chunk %s: dependents: %w", c.ID, err)
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
				return false, nil
			}
			frontier = next
		}
		if len(desc) > 0 {
			drows, err := tx.rows(desc, false)
			if err != nil {
				return false, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
			}
			for _, r := range drows {
				if int(r.depth)+grow > maxDepth {
					return false, nil
				}
			}
		}
	}
	if int(depth) > maxDepth {
		return false, nil
	}
	c.Depth = depth
	if err := tx.set(c); err != nil {
		return false, fmt.Errorf("rebase chunk %s: %w", c.ID, err)
	}
	for _, d := range desc {
		if err := tx.deepen(d, uint8(grow)); err != nil {
			return false, fmt.Errorf("rebase chunk %s: deepen dependent %s: %w", c.ID, d, err)
		}
	}
	return true, nil
}
