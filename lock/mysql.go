package lock

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"
	"time"

	_ "github.com/go-sql-driver/mysql" // registers the "mysql" driver
)

// MySQL is a Locker on MySQL/MariaDB GET_LOCK. Like PostgreSQL advisory
// locks, a lock belongs to a session: each held lock keeps one connection,
// and a holder that dies loses its connection and with it the lock.
type MySQL struct {
	db    *sql.DB
	retry Retry
}

var _ Locker = (*MySQL)(nil)

// NewMySQL opens dsn in go-sql-driver form (user:pass@tcp(host:port)/db).
func NewMySQL(dsn string, r Retry) (*MySQL, error) {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return nil, fmt.Errorf("mysql lock dsn: %w", err)
	}
	return &MySQL{db: db, retry: r}, nil
}

// Close closes the connections (releasing every lock still held).
func (m *MySQL) Close() { m.db.Close() }

type mysqlLease struct {
	conn *sql.Conn
	name string
	ren  *renewer
	once sync.Once
}

// lockName fits any key into MySQL's 64-character lock names.
func lockName(key string) string { return fmt.Sprintf("narstore:%016x", uint64(advisoryKey(key))) }

// TryLock implements Locker.
func (m *MySQL) TryLock(ctx context.Context, key string, ttl time.Duration) (Lease, bool, error) {
	conn, err := m.db.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %v: %w", key, err, ErrUnavailable)
	}
	name := lockName(key)
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, `SELECT GET_LOCK(?, 0)`, name).Scan(&got); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("lock %s: %v: %w", key, err, ErrUnavailable)
	}
	if !got.Valid || got.Int64 != 1 {
		conn.Close()
		return nil, false, nil
	}
	l := &mysqlLease{conn: conn, name: name}
	l.ren = startRenewer(ttl, func(ctx context.Context) error { return conn.PingContext(ctx) })
	return l, true, nil
}

// Lock implements Locker.
func (m *MySQL) Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	return lockWithRetry(ctx, func() (Lease, bool, error) { return m.TryLock(ctx, key, ttl) }, m.retry)
}

func (l *mysqlLease) Lost() <-chan struct{} { return l.ren.lost }

func (l *mysqlLease) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		l.ren.halt()
		var released sql.NullInt64
		if qerr := l.conn.QueryRowContext(ctx, `SELECT RELEASE_LOCK(?)`, l.name).Scan(&released); qerr != nil || !released.Valid || released.Int64 != 1 {
			err = ErrNotHeld
		}
		l.conn.Close()
	})
	return err
}

// Abandon stops renewing and drops the session without releasing, as a
// crashed holder would. For tests.
func (l *mysqlLease) Abandon() {
	l.ren.halt()
	l.conn.Raw(func(any) error { return driver.ErrBadConn }) // the pool discards the session
}

// Check pings the server; unreachable Is ErrUnavailable.
func (m *MySQL) Check(ctx context.Context) error {
	if err := m.db.PingContext(ctx); err != nil {
		return fmt.Errorf("mysql locks: %v: %w", err, ErrUnavailable)
	}
	return nil
}
