package lock

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-redsync/redsync/v4"
	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	goredislib "github.com/redis/go-redis/v9"
)

// RedisOptions configure the Redis locker. Several Addrs are independent
// Redis servers locked together with the Redlock quorum rule.
type RedisOptions struct {
	Addrs     []string
	Username  string
	Password  string
	DB        int
	TLS       bool
	PoolSize  int    // per address; 0: go-redis default
	KeyPrefix string // default "narstore:lock:"
	Retry     Retry
}

// Redis is a Locker on Redis with redsync: a lock is a key with an expiry
// that the holder extends; a holder that dies stops extending and the key
// expires after its TTL.
type Redis struct {
	rs      *redsync.Redsync
	clients []*goredislib.Client
	o       RedisOptions
}

var _ Locker = (*Redis)(nil)

// NewRedis connects to every address.
func NewRedis(o RedisOptions) (*Redis, error) {
	if len(o.Addrs) == 0 {
		return nil, errors.New("redis locks need at least one address (--redis-addr)")
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = "narstore:lock:"
	}
	r := &Redis{o: o}
	var pools []redsyncredis.Pool
	for _, a := range o.Addrs {
		opt := &goredislib.Options{Addr: a, Username: o.Username, Password: o.Password, DB: o.DB, PoolSize: o.PoolSize,
			DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxRetries: 1}
		if o.TLS {
			opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		c := goredislib.NewClient(opt)
		r.clients = append(r.clients, c)
		pools = append(pools, goredis.NewPool(c))
	}
	r.rs = redsync.New(pools...)
	return r, nil
}

// Close closes the connections.
func (r *Redis) Close() {
	for _, c := range r.clients {
		c.Close()
	}
}

type redisLease struct {
	m    *redsync.Mutex
	ren  *renewer
	once sync.Once
}

// TryLock implements Locker.
func (r *Redis) TryLock(ctx context.Context, key string, ttl time.Duration) (Lease, bool, error) {
	m := r.rs.NewMutex(r.o.KeyPrefix+key, redsync.WithExpiry(ttl), redsync.WithTries(1))
	err := m.TryLockContext(ctx)
	var rerr *redsync.RedisError
	switch {
	case err == nil:
	case errors.As(err, &rerr):
		return nil, false, fmt.Errorf("lock %s: %v: %w", key, err, ErrUnavailable)
	default: // taken (ErrTaken, ErrNodeTaken, ErrFailed)
		return nil, false, nil
	}
	l := &redisLease{m: m}
	l.ren = startRenewer(ttl, func(ctx context.Context) error {
		ok, err := m.ExtendContext(ctx)
		if err == nil && !ok {
			err = ErrNotHeld
		}
		return err
	})
	return l, true, nil
}

// Lock implements Locker.
func (r *Redis) Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	return lockWithRetry(ctx, func() (Lease, bool, error) { return r.TryLock(ctx, key, ttl) }, r.o.Retry)
}

func (l *redisLease) Lost() <-chan struct{} { return l.ren.lost }

func (l *redisLease) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		l.ren.halt()
		// The script deletes the key only if it still holds our value, so an
		// expired holder never releases the next holder's lock.
		ok, uerr := l.m.UnlockContext(ctx)
		if uerr != nil || !ok {
			err = ErrNotHeld
		}
	})
	return err
}

// Abandon stops renewing without unlocking, as a crashed holder would. For tests.
func (l *redisLease) Abandon() { l.ren.halt() }

// Check pings every server; an unreachable one Is ErrUnavailable.
func (r *Redis) Check(ctx context.Context) error {
	for i, c := range r.clients {
		if err := c.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis %s: %v: %w", r.o.Addrs[i], err, ErrUnavailable)
		}
	}
	return nil
}
