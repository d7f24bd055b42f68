package reassembly

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/store"
)

// Cache is a bounded in-memory LRU of chunk bytes in front of a
// *store.Chunks. Concurrent misses for one chunk share one load. Delta bases
// are loaded through the cache too, without checking their BLAKE3
// (store.Chunks.Load): the chunk decoded with them is checked, and a
// base's own bytes are checked the first time they are asked for as a chunk.
// Every chunk Chunk returns to a caller other than a delta decoding is
// verified. Safe for concurrent use.
type Cache struct {
	chunks *store.Chunks

	mu      sync.Mutex
	lru     *store.LRU
	loading map[chunker.ID]*load

	// present remembers chunks recently seen stored (checked or loaded), so
	// a hot NAR does not pay a presence check (an S3 HEAD) per chunk on
	// every request. Two generations: an ID is forgotten after one to two
	// presentTTLs, or sooner when a generation fills up.
	present, presentOld map[chunker.ID]struct{}
	presentSince        time.Time

	Hits, Misses atomic.Int64
}

const (
	presentTTL = 10 * time.Minute
	presentMax = 1 << 20 // IDs per generation (about 50 MB at most)
)

func (c *Cache) markPresentLocked(id chunker.ID) {
	if now := time.Now(); len(c.present) >= presentMax || now.Sub(c.presentSince) > presentTTL {
		c.presentOld, c.present, c.presentSince = c.present, make(map[chunker.ID]struct{}), now
	}
	c.present[id] = struct{}{}
}

func (c *Cache) knownPresentLocked(id chunker.ID) bool {
	if c.lru.Has(id) {
		return true
	}
	if time.Since(c.presentSince) > 2*presentTTL {
		return false
	}
	_, ok := c.present[id]
	if !ok {
		_, ok = c.presentOld[id]
	}
	return ok
}

type load struct {
	done     chan struct{}
	data     []byte
	err      error
	verified bool // data was checked against the chunk's ID

	// Loads of delta bases nest inside the load of the chunk that needs
	// them. waitingOn (guarded by Cache.mu) is the load this one cannot
	// finish before: the base it is loading or waiting for. Blobs that name
	// each other as bases (a corrupt store) would otherwise make a load wait
	// for itself, on one goroutine or across several.
	waitingOn *load
}

type curLoadKey struct{}

// NewCache returns a cache holding at most maxBytes of chunk data; 0 disables caching.
func NewCache(c *store.Chunks, maxBytes int64) *Cache {
	return &Cache{chunks: c, lru: store.NewLRU(maxBytes), loading: map[chunker.ID]*load{},
		present: map[chunker.ID]struct{}{}, presentSince: time.Now()}
}

// Chunk implements ChunkSource.
func (c *Cache) Chunk(ctx context.Context, id chunker.ID) ([]byte, error) {
	forBase := store.BaseLoad(ctx)
	c.mu.Lock()
	if data, checked, ok := c.lru.Lookup(id); ok {
		c.mu.Unlock()
		c.Hits.Add(1)
		if !checked && !forBase {
			return c.check(id, data)
		}
		return data, nil
	}
	cur, _ := ctx.Value(curLoadKey{}).(*load) // set when loading a base
	if l, ok := c.loading[id]; ok {
		if cur != nil {
			for x := l; x != nil; x = x.waitingOn {
				if x == cur {
					c.mu.Unlock()
					return nil, fmt.Errorf("chunk %s: delta bases form a cycle: %w", id, store.ErrCorrupt)
				}
			}
			cur.waitingOn = l
		}
		c.mu.Unlock()
		var data []byte
		var err error
		select {
		case <-l.done:
			c.Hits.Add(1)
			data, err = l.data, l.err
		case <-ctx.Done():
			err = ctx.Err()
		}
		if cur != nil {
			c.mu.Lock()
			cur.waitingOn = nil
			c.mu.Unlock()
		}
		if err == nil && !l.verified && !forBase {
			return c.check(id, data)
		}
		return data, err
	}
	l := &load{done: make(chan struct{})}
	if cur != nil {
		cur.waitingOn = l
	}
	c.loading[id] = l
	c.mu.Unlock()
	c.Misses.Add(1)

	// Load without the caller's cancellation so that waiters sharing this
	// load are not failed by the first caller going away.
	lctx := context.WithValue(context.WithoutCancel(ctx), curLoadKey{}, l)
	l.data, l.verified, l.err = c.chunks.Load(lctx, id, c.Chunk)
	if errors.Is(l.err, store.ErrCorrupt) {
		l.err = c.blameBases(l.err)
	}
	c.mu.Lock()
	delete(c.loading, id)
	if cur != nil {
		cur.waitingOn = nil
	}
	if l.err == nil {
		c.markPresentLocked(id)
		c.lru.Keep(id, l.data, l.verified)
	}
	c.mu.Unlock()
	close(l.done)
	return l.data, l.err
}

// check verifies bytes that were loaded as a delta base before they go to a
// caller as a chunk: it marks them checked, or drops them and fails.
func (c *Cache) check(id chunker.ID, data []byte) ([]byte, error) {
	if err := store.CheckCached(&c.mu, c.lru, id, data); err != nil {
		return nil, err
	}
	return data, nil
}

// blameBases is called when a chunk failed as corrupt (err). Its delta bases
// may be cached unchecked, and a damaged one would fail it: unchecked chunks
// are checked now, those that fail are dropped (so they are read again) and
// named in the error. Only failures pay this.
func (c *Cache) blameBases(err error) error {
	c.mu.Lock()
	ids := c.lru.UncheckedIDs()
	c.mu.Unlock()
	for _, id := range ids {
		c.mu.Lock()
		data, ok := c.lru.Get(id)
		c.mu.Unlock()
		if !ok {
			continue
		}
		if _, cerr := c.check(id, data); cerr != nil {
			err = fmt.Errorf("%w (a delta base read for it is damaged: %v)", err, cerr)
		}
	}
	return err
}

// Bytes returns how many bytes of chunk data are cached.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Bytes()
}

// CheckPresent reports the first of chunks (in order) whose blob is not
// stored, as an error that Is store.ErrNotFound. Chunks cached, or seen
// stored in the last minutes, are not checked again. It reads no chunk data.
func (c *Cache) CheckPresent(ctx context.Context, chunks []index.ChunkRef) error {
	var ids []chunker.ID
	seen := make(map[chunker.ID]bool, len(chunks))
	c.mu.Lock()
	for _, ref := range chunks {
		if !seen[ref.ID] && !c.knownPresentLocked(ref.ID) {
			ids = append(ids, ref.ID)
		}
		seen[ref.ID] = true
	}
	c.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	st := c.chunks.Store()
	var has []bool
	if bh, ok := st.(store.BatchHaser); ok {
		var err error
		if has, err = bh.HasMany(ctx, ids); err != nil {
			return err
		}
	} else {
		const parallel = 16 // remote stores answer Has in milliseconds
		has = make([]bool, len(ids))
		errs := make([]error, len(ids))
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for i, id := range ids {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				has[i], errs[i] = st.Has(ctx, id)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
	}
	var missing error
	c.mu.Lock()
	for i, id := range ids {
		if has[i] {
			c.markPresentLocked(id)
		} else if missing == nil {
			missing = fmt.Errorf("chunk %s: %w", id, store.ErrNotFound)
		}
	}
	c.mu.Unlock()
	return missing
}
