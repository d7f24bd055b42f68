package ingest

import (
	"context"
	"fmt"
	"sync"
)

// Failure is a store path that could not be ingested.
type Failure struct {
	Path string
	Err  error
}

// Report is the outcome of a Batch.
type Report struct {
	Results  []*Result
	Failures []Failure
}

// Batch ingests paths (store paths or hash parts) with Options.Jobs NARs in
// flight, following References when closure is set. One path failing does not
// stop the others; its error is in the report. Only a cancelled ctx ends the
// batch early.
func (in *Ingester) Batch(ctx context.Context, paths []string, closure bool) (*Report, error) {
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		queue   []string
		seen    = map[string]bool{}
		pending int
		rep     = &Report{}
	)
	enqueue := func(p string) { // with mu held
		h, err := ParseHashPart(p)
		if err != nil {
			rep.Failures = append(rep.Failures, Failure{Path: p, Err: err})
			return
		}
		if seen[h] {
			return
		}
		seen[h] = true
		queue = append(queue, p)
		pending++
		in.Progress.NARsTotal.Add(1)
		cond.Signal()
	}
	mu.Lock()
	for _, p := range paths {
		enqueue(p)
	}
	mu.Unlock()

	stop := context.AfterFunc(ctx, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
	defer stop()

	var wg sync.WaitGroup
	for range in.opts.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				for len(queue) == 0 && pending > 0 && ctx.Err() == nil {
					cond.Wait()
				}
				if len(queue) == 0 || ctx.Err() != nil {
					mu.Unlock()
					return
				}
				p := queue[0]
				queue = queue[1:]
				mu.Unlock()

				res, err := in.IngestPath(ctx, p)

				mu.Lock()
				if err != nil {
					rep.Failures = append(rep.Failures, Failure{Path: p, Err: err})
				} else {
					rep.Results = append(rep.Results, res)
					if closure {
						for _, ref := range res.References {
							enqueue("/nix/store/" + ref)
						}
					}
				}
				pending--
				if pending == 0 {
					cond.Broadcast()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("ingest interrupted: %w", err)
	}
	return rep, nil
}
