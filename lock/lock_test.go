package lock_test

import (
	"context"
	"testing"
	"time"

	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/lock"
	"github.com/narstore/narstore/lock/locktest"
)

func TestMain(m *testing.M) { testservers.Main(m) }

func TestLocal(t *testing.T) {
	var shared *lock.Local
	var owner *testing.T
	locktest.Run(t, func(t *testing.T) lock.Locker {
		if owner != t {
			shared, owner = lock.NewLocal(lock.Retry{InitialDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond}, nil), t
		}
		return shared
	}, 300*time.Millisecond)
}

func TestPostgres(t *testing.T) {
	dsn := testservers.Postgres(t)
	locktest.Run(t, func(t *testing.T) lock.Locker {
		lk, err := lock.NewPostgres(context.Background(), dsn, 0, lock.Retry{InitialDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lk.Close)
		return lk
	}, 300*time.Millisecond)
}

func TestPostgresDown(t *testing.T) {
	lk, err := lock.NewPostgres(context.Background(), "postgres://postgres@127.0.0.1:1/x?connect_timeout=1", 0, lock.Retry{})
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	locktest.Unavailable(t, lk)
}

func TestRedis(t *testing.T) {
	addr := testservers.Redis(t)
	locktest.Run(t, func(t *testing.T) lock.Locker {
		lk, err := lock.NewRedis(lock.RedisOptions{Addrs: []string{addr}, KeyPrefix: "test:" + t.Name() + ":",
			Retry: lock.Retry{InitialDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lk.Close)
		return lk
	}, 300*time.Millisecond)
}

func TestRedisDown(t *testing.T) {
	lk, err := lock.NewRedis(lock.RedisOptions{Addrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	locktest.Unavailable(t, lk)
}

func TestMySQL(t *testing.T) {
	dsn := testservers.MariaDB(t)
	locktest.Run(t, func(t *testing.T) lock.Locker {
		lk, err := lock.NewMySQL(dsn, lock.Retry{InitialDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lk.Close)
		return lk
	}, 300*time.Millisecond)
}

func TestMySQLDown(t *testing.T) {
	lk, err := lock.NewMySQL("root@tcp(127.0.0.1:1)/?timeout=1s", lock.Retry{})
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	locktest.Unavailable(t, lk)
}
