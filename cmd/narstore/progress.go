package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/narstore/narstore/ingest"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// startProgress redraws one status line on w until the returned func is called.
func startProgress(w io.Writer, mode string, p *ingest.Progress, start time.Time) func() {
	return startStatusLine(w, mode, func() {
		el := time.Since(start).Seconds()
		b := p.NARBytes.Load()
		fmt.Fprintf(w, "\r\033[K%d/%d NARs (%d already stored, %d failed)  %s NAR  %s from upstream  %.1f MB/s",
			p.NARsDone.Load()+p.NARsSkipped.Load(), p.NARsTotal.Load(), p.NARsSkipped.Load(), p.NARsFailed.Load(),
			human(uint64(b)), human(uint64(p.UpstreamBytes.Load())), float64(b)/1e6/max(el, 0.001))
	})
}

// startStatusLine calls draw (which redraws one line) every 250ms, on a
// terminal or when mode is "always", until the returned func is called.
func startStatusLine(w io.Writer, mode string, draw func()) func() {
	if mode == "never" || (mode != "always" && !isTerminal(w)) {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				draw()
				fmt.Fprintln(w)
				return
			case <-t.C:
				draw()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func human(n uint64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// humanSigned is human for a count that may be negative.
func humanSigned(n int64) string {
	if n < 0 {
		return "-" + human(uint64(-n))
	}
	return human(uint64(n))
}
