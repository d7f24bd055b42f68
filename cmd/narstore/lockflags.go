package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/narstore/narstore/lock"
)

// lockConfig holds the settings for cross-instance locks.
type lockConfig struct {
	backend     string
	redisAddrs  stringList
	redisUser   string
	redisPass   string
	redisDB     int
	redisTLS    bool
	redisPool   int
	redisPrefix string
	mysqlDSN    string
	attempts    int
	initial     time.Duration
	maxDelay    time.Duration
	ttl         time.Duration
}

func lockFlags(fs *flag.FlagSet) *lockConfig {
	c := &lockConfig{}
	fs.StringVar(&c.backend, "lock-backend", "local", "locks across instances (one ingest per NAR, one recompression at a time): local (this process, or a file lock in --data for recompress), redis, postgres (uses --database-url) or mysql")
	fs.Var(&c.redisAddrs, "redis-addr", "Redis host:port for --lock-backend redis (repeatable: several independent servers lock by quorum)")
	fs.StringVar(&c.redisUser, "redis-username", "", "Redis username")
	fs.StringVar(&c.redisPass, "redis-password", "", "Redis password")
	fs.IntVar(&c.redisDB, "redis-db", 0, "Redis database number")
	fs.BoolVar(&c.redisTLS, "redis-tls", false, "connect to Redis with TLS")
	fs.IntVar(&c.redisPool, "redis-pool-size", 0, "Redis connections per server (0: the client's default)")
	fs.StringVar(&c.redisPrefix, "redis-key-prefix", "narstore:lock:", "prefix of the Redis lock keys")
	fs.StringVar(&c.mysqlDSN, "mysql-dsn", "", "MySQL/MariaDB for --lock-backend mysql, as user:pass@tcp(host:3306)/db")
	fs.IntVar(&c.attempts, "lock-retry-attempts", 3, "attempts to reach the lock server before failing (a held lock is waited for)")
	fs.DurationVar(&c.initial, "lock-retry-initial", 100*time.Millisecond, "first delay between lock attempts (doubles, with jitter)")
	fs.DurationVar(&c.maxDelay, "lock-retry-max", 2*time.Second, "longest delay between lock attempts")
	fs.DurationVar(&c.ttl, "lock-ttl", 30*time.Second, "lease TTL; leases renew every TTL/3 while an ingest runs")
	return c
}

// open returns the Locker (nil for local: in-process flights already ensure
// one download per process) and a func that closes it. A lock server that
// cannot be reached is an error at start, never a silent fallback.
func (c *lockConfig) open(ctx context.Context, databaseURL string) (lock.Locker, func(), error) {
	lk, closeFn, err := c.dial(ctx, databaseURL)
	if err != nil || lk == nil {
		return lk, closeFn, err
	}
	if ch, ok := lk.(interface{ Check(context.Context) error }); ok {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := ch.Check(cctx); err != nil {
			closeFn()
			return nil, nil, fmt.Errorf("--lock-backend %s: %w; check the server address and credentials", c.backend, err)
		}
	}
	return lk, closeFn, nil
}

func (c *lockConfig) dial(ctx context.Context, databaseURL string) (lock.Locker, func(), error) {
	r := lock.Retry{MaxAttempts: c.attempts, InitialDelay: c.initial, MaxDelay: c.maxDelay}
	switch c.backend {
	case "local", "":
		return nil, func() {}, nil
	case "redis":
		lk, err := lock.NewRedis(lock.RedisOptions{Addrs: c.redisAddrs, Username: c.redisUser, Password: c.redisPass, DB: c.redisDB,
			TLS: c.redisTLS, PoolSize: c.redisPool, KeyPrefix: c.redisPrefix, Retry: r})
		if err != nil {
			return nil, nil, &exitError{code: 2, msg: err.Error()}
		}
		return lk, lk.Close, nil
	case "postgres":
		if !strings.HasPrefix(databaseURL, "postgres://") && !strings.HasPrefix(databaseURL, "postgresql://") {
			return nil, nil, &exitError{code: 2, msg: "--lock-backend postgres takes its locks in the index database: set --database-url postgres://…"}
		}
		lk, err := lock.NewPostgres(ctx, databaseURL, 0, r)
		if err != nil {
			return nil, nil, err
		}
		return lk, lk.Close, nil
	case "mysql":
		if c.mysqlDSN == "" {
			return nil, nil, &exitError{code: 2, msg: "--lock-backend mysql needs --mysql-dsn user:pass@tcp(host:3306)/db"}
		}
		lk, err := lock.NewMySQL(c.mysqlDSN, r)
		if err != nil {
			return nil, nil, err
		}
		return lk, lk.Close, nil
	}
	return nil, nil, &exitError{code: 2, msg: fmt.Sprintf("--lock-backend %q: want local, redis, postgres or mysql", c.backend)}
}
