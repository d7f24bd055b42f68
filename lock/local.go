package lock

import (
	"context"
	"sync"
	"time"
)

// Local is an in-process Locker for a single instance.
type Local struct {
	mu    sync.Mutex
	held  map[string]*localLease
	retry Retry
	now   func() time.Time
}

var _ Locker = (*Local)(nil)

// NewLocal returns a Local locker. now may be nil (time.Now).
func NewLocal(r Retry, now func() time.Time) *Local {
	if now == nil {
		now = time.Now
	}
	return &Local{held: map[string]*localLease{}, retry: r, now: now}
}

type localLease struct {
	l       *Local
	key     string
	expires time.Time
	ttl     time.Duration
	ren     *renewer
	once    sync.Once
}

// TryLock implements Locker.
func (l *Local) TryLock(ctx context.Context, key string, ttl time.Duration) (Lease, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur := l.held[key]; cur != nil && l.now().Before(cur.expires) {
		return nil, false, nil
	}
	ls := &localLease{l: l, key: key, ttl: ttl, expires: l.now().Add(ttl)}
	l.held[key] = ls
	ls.ren = startRenewer(ttl, ls.renew)
	return ls, true, nil
}

// Lock implements Locker.
func (l *Local) Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	return lockWithRetry(ctx, func() (Lease, bool, error) { return l.TryLock(ctx, key, ttl) }, l.retry)
}

func (ls *localLease) renew(context.Context) error {
	ls.l.mu.Lock()
	defer ls.l.mu.Unlock()
	if ls.l.held[ls.key] != ls || !ls.l.now().Before(ls.expires) {
		return ErrNotHeld
	}
	ls.expires = ls.l.now().Add(ls.ttl)
	return nil
}

func (ls *localLease) Lost() <-chan struct{} { return ls.ren.lost }

func (ls *localLease) Unlock(ctx context.Context) error {
	var err error
	ls.once.Do(func() {
		ls.ren.halt()
		ls.l.mu.Lock()
		defer ls.l.mu.Unlock()
		if ls.l.held[ls.key] != ls {
			err = ErrNotHeld
			return
		}
		delete(ls.l.held, ls.key)
	})
	return err
}

// Abandon stops renewing without unlocking, as a crashed holder would; the
// lock frees itself after its TTL. For tests.
func (ls *localLease) Abandon() { ls.ren.halt() }
