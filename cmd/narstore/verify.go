package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/reassembly"
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
			checked  atomic.Int64
			bytesChk atomic.Uint64
		)
		for range max(*jobs, 1) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range nars {
					if err := verifyNAR(ctx, ix, chunks, n); err != nil {
						paths, _ := ix.StorePaths(ctx, n.Hash)
						mu.Lock()
						damaged = append(damaged, fmt.Sprintf("DAMAGED %s: %v", strings.Join(paths, ", "), err))
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
		for _, d := range damaged {
			fmt.Fprintln(env.stdout, d)
		}
		fmt.Fprintf(env.stdout, "Verified %d NARs (%s): %d damaged.\n", checked.Load(), human(bytesChk.Load()), len(damaged))
		if walkErr != nil {
			return walkErr
		}
		if len(damaged) > 0 {
			return &exitError{code: 1, msg: fmt.Sprintf("%d NARs are damaged; re-ingest those store paths from upstream", len(damaged))}
		}
		return nil
	}
}

func verifyNAR(ctx context.Context, ix index.Index, src reassembly.ChunkSource, n *index.NAR) error {
	full, err := ix.NAR(ctx, n.Hash)
	if err != nil {
		return err
	}
	r, err := reassembly.NewReader(ctx, src, full, 0, -1, reassembly.ReaderOptions{})
	if err != nil {
		return err
	}
	defer r.Close()
	got, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	if uint64(got) != full.Size {
		return errors.New("reassembled size differs from NarSize")
	}
	return nil
}
