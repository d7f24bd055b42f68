package ingest

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// lookup finds exactly the entries of a feature, through the buckets, for
// indexes from empty to large, with features repeated across bases and at
// the edges of the feature range.
func TestDeltaIndexLookup(t *testing.T) {
	for _, n := range []int{0, 1, 3, 17, 1000, 100000} {
		r := rand.New(rand.NewPCG(uint64(n), 1))
		di := &deltaIndex{}
		want := map[uint64][]featBase{}
		for i := range n {
			f := r.Uint64() >> 8
			switch i % 10 {
			case 0:
				f = 0
			case 1:
				f = 1<<56 - 1
			case 2: // shared with another base
				f = uint64(i/10) << 30
			}
			e := featBase{f, int32(i)}
			di.inv = append(di.inv, e)
			want[f] = append(want[f], e)
		}
		slices.SortFunc(di.inv, func(a, b featBase) int {
			if c := cmp.Compare(a.f, b.f); c != 0 {
				return c
			}
			return cmp.Compare(a.base, b.base)
		})
		di.index()
		for f, w := range want {
			if got := di.lookup(f); !slices.Equal(got, w) {
				t.Fatalf("n=%d: lookup(%#x) = %v, want %v", n, f, got, w)
			}
		}
		for range 1000 {
			f := r.Uint64() >> 8
			if got := di.lookup(f); len(got) != len(want[f]) {
				t.Fatalf("n=%d: lookup(%#x) = %v, want %v", n, f, got, want[f])
			}
		}
	}
	if got := (&deltaIndex{}).lookup(5); got != nil {
		t.Errorf("lookup in an index never built: %v", got)
	}
}
