// Package locktest is the conformance suite every lock.Locker passes.
package locktest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/narstore/narstore/lock"
)

// Run runs the suite. newLocker returns a Locker sharing state with every
// other Locker it returns in the same test (as instances share a server); it
// is called from the test's goroutine only.
// ttl is the lease TTL to test with: expiry and renewal are checked against it.
func Run(t *testing.T, newLocker func(t *testing.T) lock.Locker, ttl time.Duration) {
	ctx := context.Background()
	key := func(t *testing.T) string { return "locktest/" + t.Name() }

	t.Run("MutualExclusionUnderContention", func(t *testing.T) {
		var inside, maxInside, done atomic.Int32
		var wg sync.WaitGroup
		lockers := make([]lock.Locker, 6)
		for i := range lockers {
			lockers[i] = newLocker(t)
		}
		for i, lk := range lockers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					l, err := lk.Lock(ctx, key(t), ttl)
					if err != nil {
						t.Errorf("worker %d: %v", i, err)
						return
					}
					n := inside.Add(1)
					if n > maxInside.Load() {
						maxInside.Store(n)
					}
					time.Sleep(2 * time.Millisecond)
					inside.Add(-1)
					if err := l.Unlock(ctx); err != nil {
						t.Errorf("unlock: %v", err)
					}
					done.Add(1)
				}
			}()
		}
		wg.Wait()
		if maxInside.Load() != 1 || done.Load() != 18 {
			t.Fatalf("max holders at once %d (want 1), %d of 18 critical sections", maxInside.Load(), done.Load())
		}
	})

	t.Run("TryLockWhileHeld", func(t *testing.T) {
		a, b := newLocker(t), newLocker(t)
		l, ok, err := a.TryLock(ctx, key(t), ttl)
		if err != nil || !ok {
			t.Fatalf("first TryLock: %v %v", ok, err)
		}
		if _, ok, err := b.TryLock(ctx, key(t), ttl); err != nil || ok {
			t.Fatalf("second TryLock while held: ok=%v err=%v", ok, err)
		}
		other, ok, _ := b.TryLock(ctx, key(t)+"-other", ttl)
		if !ok {
			t.Fatal("a different key is blocked")
		}
		other.Unlock(ctx)
		l.Unlock(ctx)
		l2, ok, err := b.TryLock(ctx, key(t), ttl)
		if err != nil || !ok {
			t.Fatalf("TryLock after unlock: %v %v", ok, err)
		}
		l2.Unlock(ctx)
		if err := l2.Unlock(ctx); err != nil {
			t.Fatalf("second Unlock is not idempotent: %v", err)
		}
	})

	t.Run("RenewalKeepsTheLockPastItsTTL", func(t *testing.T) {
		a, b := newLocker(t), newLocker(t)
		l, ok, _ := a.TryLock(ctx, key(t), ttl)
		if !ok {
			t.Fatal("no lock")
		}
		deadline := time.Now().Add(3 * ttl)
		for time.Now().Before(deadline) {
			if _, ok, _ := b.TryLock(ctx, key(t), ttl); ok {
				t.Fatal("lock taken over while its holder renews it")
			}
			select {
			case <-l.Lost():
				t.Fatal("lease reported lost while renewing fine")
			case <-time.After(ttl / 4):
			}
		}
		if err := l.Unlock(ctx); err != nil {
			t.Fatalf("unlock after renewals: %v", err)
		}
	})

	t.Run("ExpiryAfterHolderDiesAndNoReleaseByOldOwner", func(t *testing.T) {
		a, b := newLocker(t), newLocker(t)
		l, ok, _ := a.TryLock(ctx, key(t), ttl)
		if !ok {
			t.Fatal("no lock")
		}
		ab, ok := l.(interface{ Abandon() })
		if !ok {
			t.Skip("lease cannot simulate a crashed holder")
		}
		ab.Abandon()
		wctx, cancel := context.WithTimeout(ctx, 10*ttl+5*time.Second)
		defer cancel()
		l2, err := b.Lock(wctx, key(t), ttl)
		if err != nil {
			t.Fatalf("lock of a dead holder never freed: %v", err)
		}
		defer l2.Unlock(ctx)
		// The dead holder's Unlock reports the loss and releases nothing.
		if err := l.Unlock(ctx); !errors.Is(err, lock.ErrNotHeld) {
			t.Errorf("Unlock of an expired lease: %v, want ErrNotHeld", err)
		}
		if _, ok, _ := a.TryLock(ctx, key(t), ttl); ok {
			t.Fatal("the old holder's Unlock released the new holder's lock")
		}
	})
}

// Unavailable checks that a Locker whose server is down says so clearly,
// from TryLock at once and from Lock after its retries.
func Unavailable(t *testing.T, lk lock.Locker) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := lk.TryLock(ctx, "locktest/down", time.Second); !errors.Is(err, lock.ErrUnavailable) {
		t.Fatalf("lock server down: TryLock gave %v, want ErrUnavailable", err)
	}
	if _, err := lk.Lock(ctx, "locktest/down", time.Second); !errors.Is(err, lock.ErrUnavailable) {
		t.Fatalf("lock server down: Lock gave %v, want ErrUnavailable after its retries", err)
	}
}
