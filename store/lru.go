package store

import (
	"container/list"
	"sync"

	"github.com/narstore/narstore/chunker"
)

// LRU keeps chunk bytes, most recently used first, up to a byte bound; a
// chunk larger than a quarter of the bound is not kept. Bytes are verified
// (they hash to their ID) unless kept with Keep(id, data, false). Not safe
// for concurrent use: callers hold their own lock.
type LRU struct {
	max, bytes int64
	order      *list.List // of *lruEntry, most recent at front
	entries    map[chunker.ID]*list.Element
}

type lruEntry struct {
	id        chunker.ID
	data      []byte
	unchecked bool
}

// NewLRU returns an LRU of at most maxBytes; 0 keeps nothing.
func NewLRU(maxBytes int64) *LRU {
	return &LRU{max: maxBytes, order: list.New(), entries: map[chunker.ID]*list.Element{}}
}

// Lookup is Get that also says whether the bytes were checked against id.
func (l *LRU) Lookup(id chunker.ID) (data []byte, checked, ok bool) {
	el, ok := l.entries[id]
	if !ok {
		return nil, false, false
	}
	l.order.MoveToFront(el)
	e := el.Value.(*lruEntry)
	return e.data, !e.unchecked, true
}

// Get returns id's bytes and marks them recently used.
func (l *LRU) Get(id chunker.ID) ([]byte, bool) {
	data, _, ok := l.Lookup(id)
	return data, ok
}

// Has reports whether id is kept, without marking it used.
func (l *LRU) Has(id chunker.ID) bool { _, ok := l.entries[id]; return ok }

// Add keeps data, verified, as id's bytes, evicting the least recently used
// beyond the bound.
func (l *LRU) Add(id chunker.ID, data []byte) { l.Keep(id, data, true) }

// Keep is Add for bytes that were checked against id or not (a delta base
// loaded only as a dictionary, Chunks.Load): unchecked ones must pass
// CheckCached before any other use. Keeping checked bytes of a chunk kept
// unchecked marks it checked.
func (l *LRU) Keep(id chunker.ID, data []byte, checked bool) {
	if el, ok := l.entries[id]; ok {
		if checked {
			el.Value.(*lruEntry).unchecked = false
		}
		return
	}
	if l.max <= 0 || int64(len(data)) > l.max/4 {
		return
	}
	l.entries[id] = l.order.PushFront(&lruEntry{id: id, data: data, unchecked: !checked})
	l.bytes += int64(len(data))
	for l.bytes > l.max {
		el := l.order.Back()
		e := el.Value.(*lruEntry)
		l.order.Remove(el)
		delete(l.entries, e.id)
		l.bytes -= int64(len(e.data))
	}
}

// UncheckedIDs returns the chunks kept with bytes not yet checked.
func (l *LRU) UncheckedIDs() []chunker.ID {
	var ids []chunker.ID
	for id, el := range l.entries {
		if el.Value.(*lruEntry).unchecked {
			ids = append(ids, id)
		}
	}
	return ids
}

// CheckCached verifies bytes l keeps unchecked, before they are used as
// the chunk itself: it marks them checked, or drops them and returns the
// error (Is ErrCorrupt). The hash runs outside mu, the lock guarding l.
func CheckCached(mu *sync.Mutex, l *LRU, id chunker.ID, data []byte) error {
	err := Verify(id, data)
	mu.Lock()
	if err != nil {
		l.Remove(id)
	} else {
		l.Add(id, data) // marks it checked
	}
	mu.Unlock()
	return err
}

// Remove drops id.
func (l *LRU) Remove(id chunker.ID) {
	if el, ok := l.entries[id]; ok {
		l.order.Remove(el)
		delete(l.entries, id)
		l.bytes -= int64(len(el.Value.(*lruEntry).data))
	}
}

// Bytes is how many bytes are kept; Len how many chunks.
func (l *LRU) Bytes() int64 { return l.bytes }
func (l *LRU) Len() int     { return len(l.entries) }
