package lock_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/narstore/narstore/internal/testservers"
	"github.com/narstore/narstore/lock"
)

// BenchmarkLockAcquire measures Lock on a free key (as an ingest of a new
// NAR takes nar/<hash>) and, separately, Unlock, per backend, with its
// servers on loopback. Reported: p50 and p99 of acquire latency in ms.
func BenchmarkLockAcquire(b *testing.B) {
	backends := []struct {
		name string
		open func(b *testing.B) (lock.Locker, func())
	}{
		{"local", func(b *testing.B) (lock.Locker, func()) { return lock.NewLocal(lock.Retry{}, nil), func() {} }},
		{"redis", func(b *testing.B) (lock.Locker, func()) {
			lk, err := lock.NewRedis(lock.RedisOptions{Addrs: []string{testservers.Redis(b)}, KeyPrefix: "bench:"})
			if err != nil {
				b.Fatal(err)
			}
			return lk, lk.Close
		}},
		{"postgres", func(b *testing.B) (lock.Locker, func()) {
			lk, err := lock.NewPostgres(context.Background(), testservers.Postgres(b), 0, lock.Retry{})
			if err != nil {
				b.Fatal(err)
			}
			return lk, lk.Close
		}},
		{"mysql", func(b *testing.B) (lock.Locker, func()) {
			lk, err := lock.NewMySQL(testservers.MariaDB(b), lock.Retry{})
			if err != nil {
				b.Fatal(err)
			}
			return lk, lk.Close
		}},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			lk, closeFn := be.open(b)
			defer closeFn()
			ctx := context.Background()
			var acquire []time.Duration
			i := 0
			for b.Loop() {
				i++
				key := fmt.Sprintf("nar/bench-%d-%d", time.Now().UnixNano(), i)
				start := time.Now()
				l, err := lk.Lock(ctx, key, 30*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				acquire = append(acquire, time.Since(start))
				if err := l.Unlock(ctx); err != nil {
					b.Fatal(err)
				}
			}
			slices.Sort(acquire)
			q := func(p float64) float64 {
				return float64(acquire[min(len(acquire)-1, int(p*float64(len(acquire))))].Nanoseconds()) / 1e6
			}
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
		})
	}
}
