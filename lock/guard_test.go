package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/narstore/narstore/lock"
)

// lostLease is a lease whose loss the test decides.
type lostLease struct{ lost chan struct{} }

func (l *lostLease) Lost() <-chan struct{}            { return l.lost }
func (l *lostLease) Unlock(ctx context.Context) error { return nil }

// Work under Guard stops when the lease is lost, and says why; stop ends the
// watch without a loss.
func TestGuard(t *testing.T) {
	l := &lostLease{lost: make(chan struct{})}
	ctx, stop := lock.Guard(t.Context(), l, "test lock")
	defer stop()
	select {
	case <-ctx.Done():
		t.Fatal("guarded context ended while the lease is held")
	case <-time.After(50 * time.Millisecond):
	}
	close(l.lost)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("guarded context still running after the lease was lost")
	}
	if err := context.Cause(ctx); !errors.Is(err, lock.ErrNotHeld) || !strings.Contains(err.Error(), "test lock lost") {
		t.Errorf("cause %v, want ErrNotHeld naming the lock", err)
	}

	ctx2, stop2 := lock.Guard(t.Context(), &lostLease{lost: make(chan struct{})}, "other")
	stop2()
	<-ctx2.Done()
	if errors.Is(context.Cause(ctx2), lock.ErrNotHeld) {
		t.Error("stop reported a lost lease")
	}
}
