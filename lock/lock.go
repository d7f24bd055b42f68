// Package lock provides the Locker contract narstore uses for "one ingest per
// NAR across all instances" and "one GC at a time", with local, PostgreSQL
// advisory-lock, Redis and MySQL backends.
//
// A lease renews itself while the work runs, so a multi-GB ingest never
// outlives its lock; if renewal fails the lease reports it on Lost and the
// holder must stop. A holder whose lease expired cannot release the lock of
// the next holder.
package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

var (
	// ErrNotHeld means the lease expired or was lost; the lock may now belong
	// to someone else, and nothing was released.
	ErrNotHeld = errors.New("lock not held")
	// ErrUnavailable means the lock service could not be reached.
	ErrUnavailable = errors.New("lock service unavailable")
)

// Locker hands out leases on named locks. Safe for concurrent use.
type Locker interface {
	// TryLock takes key if it is free, without waiting. ok is false when
	// someone else holds it.
	TryLock(ctx context.Context, key string, ttl time.Duration) (l Lease, ok bool, err error)
	// Lock takes key, waiting (retrying with backoff) until it is free or
	// ctx ends.
	Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error)
}

// Lease is a held lock. It renews itself about every ttl/3 until Unlock.
type Lease interface {
	// Lost is closed when the lease could not be renewed in time and may
	// have expired: stop the work it protects.
	Lost() <-chan struct{}
	// Unlock releases the lock. It returns ErrNotHeld (and releases nothing)
	// when the lease had already expired. Unlock is idempotent.
	Unlock(ctx context.Context) error
}

// Guard returns a context that ends, with a cause naming what and wrapping
// ErrNotHeld, when the lease is lost: work run under it stops as soon as the
// lock may belong to someone else. Call stop when the work is done (before
// or after Unlock); it releases the watcher.
func Guard(ctx context.Context, l Lease, what string) (guarded context.Context, stop func()) {
	gctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-l.Lost():
			cancel(fmt.Errorf("%s lost: %w", what, ErrNotHeld))
		case <-gctx.Done():
		}
	}()
	return gctx, func() { cancel(nil) }
}

// Retry configures Lock. Errors reaching the lock server are retried
// MaxAttempts times in all; a lock held by someone else is waited for until
// ctx ends (its holder may be ingesting a multi-GB NAR). Delays grow
// exponentially from InitialDelay to MaxDelay, with full jitter.
type Retry struct {
	MaxAttempts  int           // 0 means 3
	InitialDelay time.Duration // 0 means 100ms
	MaxDelay     time.Duration // 0 means 2s
}

func lockWithRetry(ctx context.Context, try func() (Lease, bool, error), r Retry) (Lease, error) {
	if r.MaxAttempts <= 0 {
		r.MaxAttempts = 3
	}
	if r.InitialDelay <= 0 {
		r.InitialDelay = 100 * time.Millisecond
	}
	if r.MaxDelay <= 0 {
		r.MaxDelay = 2 * time.Second
	}
	delay := r.InitialDelay
	failures := 0
	for {
		l, ok, err := try()
		switch {
		case err != nil:
			failures++
			if failures >= r.MaxAttempts || !errors.Is(err, ErrUnavailable) {
				return nil, err
			}
		case ok:
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(rand.N(delay) + time.Millisecond):
		}
		delay = min(2*delay, r.MaxDelay)
	}
}

// renewer runs renew every interval until stop, closing lost when renew
// fails or the deadline passes without a successful renewal.
type renewer struct {
	lost chan struct{}
	stop chan struct{}
	done chan struct{}
}

func startRenewer(ttl time.Duration, renew func(ctx context.Context) error) *renewer {
	r := &renewer{lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		t := time.NewTicker(max(ttl/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
				err := renew(ctx)
				cancel()
				if err != nil {
					close(r.lost)
					return
				}
			}
		}
	}()
	return r
}

func (r *renewer) halt() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}
