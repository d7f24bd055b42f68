package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/reassembly"
	"github.com/narstore/narstore/store"
)

func setupVerify(fs *flag.FlagSet) runFunc {
	jobs := fs.Int("jobs", 2, "NARs verified in parallel")
	return func(ctx context.Context, env *cmdEnv) error {
		ix, chunks, err := env.openData(false, 0)
		if err != nil {
			return err
		}
		defer ix.Close()
		var (
			nars     = make(chan *index.NAR)
			wg       sync.WaitGroup
			mu       sync.Mutex
			damaged  []string
			unsafe   []string
			checked  atomic.Int64
			bytesChk atomic.Uint64
			seen     sync.Map // chunks whose bases were checked
		)
		for range max(*jobs, 1) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range nars {
					full, err := verifyNAR(ctx, ix, chunks, n)
					var problems []string
					if err == nil {
						problems, err = checkBases(ctx, ix, chunks, full, &seen)
					}
					if err != nil || len(problems) > 0 {
						paths, _ := ix.StorePaths(ctx, n.Hash)
						mu.Lock()
						if err != nil {
							damaged = append(damaged, fmt.Sprintf("DAMAGED %s: %v", strings.Join(paths, ", "), err))
						}
						for _, p := range problems {
							unsafe = append(unsafe, fmt.Sprintf("UNSAFE %s: %s", strings.Join(paths, ", "), p))
						}
						mu.Unlock()
					}
					checked.Add(1)
					bytesChk.Add(n.Size)
				}
			}()
		}
		walkErr := ix.WalkNARs(ctx, func(n *index.NAR) error {
			select {
			case nars <- n:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		close(nars)
		wg.Wait()
		for _, d := range append(damaged, unsafe...) {
			fmt.Fprintln(env.stdout, d)
		}
		fmt.Fprintf(env.stdout, "Verified %d NARs (%s): %d damaged.\n", checked.Load(), human(bytesChk.Load()), len(damaged))
		if len(unsafe) > 0 {
			fmt.Fprintf(env.stdout, "%d delta bases that chunks need are not named for them in the index (UNSAFE above): deleting those bases would damage these NARs.\n", len(unsafe))
		}
		if walkErr != nil {
			return walkErr
		}
		if len(damaged) > 0 {
			return &exitError{code: 1, msg: fmt.Sprintf("%d NARs are damaged; re-ingest those store paths from upstream", len(damaged))}
		}
		if len(unsafe) > 0 {
			return &exitError{code: 1, msg: "the index does not name every delta base a blob needs; do not delete chunks by hand, and report this as a narstore bug"}
		}
		return nil
	}
}

// verifyNAR reads NAR n whole from its chunks (checking each chunk's BLAKE3
// and the NAR's hash and size) and returns its record with the chunk list.
func verifyNAR(ctx context.Context, ix index.Index, src reassembly.ChunkSource, n *index.NAR) (*index.NAR, error) {
	full, err := ix.NAR(ctx, n.Hash)
	if err != nil {
		return nil, err
	}
	r, err := reassembly.NewReader(ctx, src, full, 0, -1, reassembly.ReaderOptions{})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	got, err := io.Copy(io.Discard, r)
	if err != nil {
		return nil, err
	}
	if uint64(got) != full.Size {
		return nil, errors.New("reassembled size differs from NarSize")
	}
	return full, nil
}

// checkBases checks the premise of the deletion rule for the chunks of n
// (and their bases, and theirs) not checked before (seen): each base a
// chunk's blob needs lists that chunk among its dependents, because its
// index record names the base or the index holds it for the chunk (a
// rewrite in progress, or one a crash interrupted). It returns what breaks
// the rule, one line per chunk and base.
func checkBases(ctx context.Context, ix index.Index, chunks *store.Chunks, n *index.NAR, seen *sync.Map) ([]string, error) {
	var (
		problems []string
		todo     []chunker.ID
	)
	for _, c := range n.Chunks {
		todo = append(todo, c.ID)
	}
	for len(todo) > 0 {
		id := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if _, done := seen.LoadOrStore(id, true); done {
			continue
		}
		bases, err := chunks.BlobBases(ctx, id)
		if err != nil {
			return problems, err
		}
		for _, b := range bases {
			deps, err := ix.Dependents(ctx, b)
			if err != nil {
				return problems, fmt.Errorf("dependents of chunk %s: %w", b, err)
			}
			if !slices.Contains(deps, id) {
				problems = append(problems, fmt.Sprintf("chunk %s needs delta base %s, which the index neither names in its record nor holds for it", id, b))
			}
			todo = append(todo, b)
		}
	}
	return problems, nil
}
