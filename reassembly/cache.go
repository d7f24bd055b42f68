package reassembly

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/store"
)

// Cache is a bounded in-memory LRU of verified chunk bytes in front of a
// *store.Chunks. Concurrent misses for one chunk share one load. Delta bases
// are loaded through the cache too. Safe for concurrent use.
type Cache struct {
	chunks   *store.Chunks
	maxBytes int64

	mu      sync.Mutex
	lru     *list.List // of *cacheEntry, most recent at front
	entries map[chunker.ID]*list.Element
	bytes   int64
	loading map[chunker.ID]*load

	Hits, Misses atomic.Int64
}

type cacheEntry struct {
	id   chunker.ID
	data []byte
}

type load struct {
	done chan struct{}
	data []byte
	err  error
}

// NewCache returns a cache holding at most maxBytes of chunk data; 0 disables caching.
func NewCache(c *store.Chunks, maxBytes int64) *Cache {
	return &Cache{chunks: c, maxBytes: maxBytes, lru: list.New(), entries: map[chunker.ID]*list.Element{}, loading: map[chunker.ID]*load{}}
}

// Chunk implements ChunkSource.
func (c *Cache) Chunk(ctx context.Context, id chunker.ID) ([]byte, error) {
	c.mu.Lock()
	if el, ok := c.entries[id]; ok {
		c.lru.MoveToFront(el)
		c.mu.Unlock()
		c.Hits.Add(1)
		return el.Value.(*cacheEntry).data, nil
	}
	if l, ok := c.loading[id]; ok {
		c.mu.Unlock()
		select {
		case <-l.done:
			c.Hits.Add(1)
			return l.data, l.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	l := &load{done: make(chan struct{})}
	c.loading[id] = l
	c.mu.Unlock()
	c.Misses.Add(1)

	// Load without the caller's cancellation so that waiters sharing this
	// load are not failed by the first caller going away.
	l.data, l.err = c.chunks.GetWith(context.WithoutCancel(ctx), id, c.Chunk)
	c.mu.Lock()
	delete(c.loading, id)
	if l.err == nil && c.maxBytes > 0 && int64(len(l.data)) <= c.maxBytes/4 {
		c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, data: l.data})
		c.bytes += int64(len(l.data))
		for c.bytes > c.maxBytes {
			el := c.lru.Back()
			e := el.Value.(*cacheEntry)
			c.lru.Remove(el)
			delete(c.entries, e.id)
			c.bytes -= int64(len(e.data))
		}
	}
	c.mu.Unlock()
	close(l.done)
	return l.data, l.err
}

// Bytes returns how many bytes of chunk data are cached.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// CheckPresent reports the first of chunks (in order) whose blob is not
// stored, as an error that Is store.ErrNotFound. Cached chunks are not
// checked again. It reads no chunk data.
func (c *Cache) CheckPresent(ctx context.Context, chunks []index.ChunkRef) error {
	const parallel = 16 // remote stores answer Has in milliseconds
	sem := make(chan struct{}, parallel)
	errs := make([]error, len(chunks))
	var wg sync.WaitGroup
	seen := make(map[chunker.ID]bool, len(chunks))
	for i, ref := range chunks {
		if seen[ref.ID] {
			continue
		}
		seen[ref.ID] = true
		c.mu.Lock()
		_, cached := c.entries[ref.ID]
		c.mu.Unlock()
		if cached {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok, err := c.chunks.Store().Has(ctx, ref.ID)
			switch {
			case err != nil:
				errs[i] = err
			case !ok:
				errs[i] = fmt.Errorf("chunk %s: %w", ref.ID, store.ErrNotFound)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
