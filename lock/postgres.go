package lock

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is a Locker on PostgreSQL session-level advisory locks. Each held
// lock keeps one pooled connection; if the holder dies its connection closes
// and the server releases the lock at once, so the TTL only paces the
// liveness checks of that connection.
type Postgres struct {
	pool  *pgxpool.Pool
	retry Retry
}

var _ Locker = (*Postgres)(nil)

// NewPostgres connects to dsn. maxLocks bounds the connections (and so the
// locks held at once); 0 means 64.
func NewPostgres(ctx context.Context, dsn string, maxLocks int, r Retry) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres lock dsn: %w", err)
	}
	if maxLocks <= 0 {
		maxLocks = 64
	}
	cfg.MaxConns = int32(maxLocks)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres locks: %v: %w", err, ErrUnavailable)
	}
	return &Postgres{pool: pool, retry: r}, nil
}

// Close releases the pool (and with it every lock still held).
func (p *Postgres) Close() { p.pool.Close() }

func advisoryKey(key string) int64 {
	h := fnv.New64a()
	h.Write([]byte("narstore:" + key))
	return int64(h.Sum64())
}

type pgLease struct {
	conn *pgxpool.Conn
	key  int64
	ren  *renewer
	once sync.Once
}

// TryLock implements Locker.
func (p *Postgres) TryLock(ctx context.Context, key string, ttl time.Duration) (Lease, bool, error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %v: %w", key, err, ErrUnavailable)
	}
	k := advisoryKey(key)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, k).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, fmt.Errorf("lock %s: %v: %w", key, err, ErrUnavailable)
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	l := &pgLease{conn: conn, key: k}
	l.ren = startRenewer(ttl, func(ctx context.Context) error { return conn.Ping(ctx) })
	return l, true, nil
}

// Lock implements Locker.
func (p *Postgres) Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	return lockWithRetry(ctx, func() (Lease, bool, error) { return p.TryLock(ctx, key, ttl) }, p.retry)
}

func (l *pgLease) Lost() <-chan struct{} { return l.ren.lost }

func (l *pgLease) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		l.ren.halt()
		var ok bool
		if qerr := l.conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1)`, l.key).Scan(&ok); qerr != nil || !ok {
			err = ErrNotHeld
			l.conn.Conn().Close(ctx) // a broken session must not go back to the pool
		}
		l.conn.Release()
	})
	return err
}

// Abandon stops renewing and drops the connection without unlocking, as a
// crashed holder would. For tests.
func (l *pgLease) Abandon() {
	l.ren.halt()
	l.conn.Conn().Close(context.Background())
}

// Check pings the server; unreachable Is ErrUnavailable.
func (p *Postgres) Check(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres locks: %v: %w", err, ErrUnavailable)
	}
	return nil
}
