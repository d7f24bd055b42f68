package store

import (
	"container/list"

	"github.com/narstore/narstore/chunker"
)

// LRU keeps verified chunk bytes, most recently used first, up to a byte
// bound; a chunk larger than a quarter of the bound is not kept. Not safe
// for concurrent use: callers hold their own lock.
type LRU struct {
	max, bytes int64
	order      *list.List // of *lruEntry, most recent at front
	entries    map[chunker.ID]*list.Element
}

type lruEntry struct {
	id   chunker.ID
	data []byte
}

// NewLRU returns an LRU of at most maxBytes; 0 keeps nothing.
func NewLRU(maxBytes int64) *LRU {
	return &LRU{max: maxBytes, order: list.New(), entries: map[chunker.ID]*list.Element{}}
}

// Get returns id's bytes and marks them recently used.
func (l *LRU) Get(id chunker.ID) ([]byte, bool) {
	el, ok := l.entries[id]
	if !ok {
		return nil, false
	}
	l.order.MoveToFront(el)
	return el.Value.(*lruEntry).data, true
}

// Has reports whether id is kept, without marking it used.
func (l *LRU) Has(id chunker.ID) bool { _, ok := l.entries[id]; return ok }

// Add keeps data as id's bytes, evicting the least recently used beyond the bound.
func (l *LRU) Add(id chunker.ID, data []byte) {
	if _, ok := l.entries[id]; ok || l.max <= 0 || int64(len(data)) > l.max/4 {
		return
	}
	l.entries[id] = l.order.PushFront(&lruEntry{id: id, data: data})
	l.bytes += int64(len(data))
	for l.bytes > l.max {
		el := l.order.Back()
		e := el.Value.(*lruEntry)
		l.order.Remove(el)
		delete(l.entries, e.id)
		l.bytes -= int64(len(e.data))
	}
}

// Bytes is how many bytes are kept; Len how many chunks.
func (l *LRU) Bytes() int64 { return l.bytes }
func (l *LRU) Len() int     { return len(l.entries) }
