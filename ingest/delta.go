package ingest

import (
	"context"
	"math/rand/v2"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/index"
	"github.com/narstore/narstore/store"
)

// Delta encoding: a new chunk is compressed with a similar stored chunk of the
// predecessor NAR (the newest NAR of the same package name) as a zstd raw
// dictionary. The similar chunk is found by sampled content features: a gear
// rolling hash is sampled where its top byte is zero (about one position in
// 256), and the base is the predecessor chunk sharing most samples. Samples
// follow content, so a file that moved within the NAR still finds its old
// chunk.

var gear = func() (t [256]uint64) {
	r := rand.New(rand.NewPCG(0x6e617273, 0x746f7265))
	for i := range t {
		t[i] = r.Uint64()
	}
	return t
}()

// features returns the distinct sampled rolling-hash values of data.
func features(data []byte, into map[uint64]struct{}) {
	var h uint64
	for _, b := range data {
		h = h<<1 + gear[b]
		if h>>56 == 0 {
			into[h] = struct{}{}
		}
	}
}

type baseCandidate struct {
	id    chunker.ID
	depth uint8
}

// deltaIndex maps features to predecessor chunks that may serve as bases.
type deltaIndex struct {
	bases []baseCandidate
	inv   map[uint64][]int32
}

// newDeltaIndex loads the predecessor's chunks whose delta depth allows one
// more step and indexes their features. It returns nil when there is nothing
// to delta against.
func (in *Ingester) newDeltaIndex(ctx context.Context, pred *index.NAR) *deltaIndex {
	seen := map[chunker.ID]bool{}
	var ids []chunker.ID
	for _, c := range pred.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			ids = append(ids, c.ID)
		}
	}
	recs, err := in.ix.Chunks(ctx, ids)
	if err != nil {
		return nil
	}
	di := &deltaIndex{inv: map[uint64][]int32{}}
	feats := map[uint64]struct{}{}
	for i, id := range ids {
		if recs[i].ID.IsZero() || int(recs[i].Depth) >= in.opts.MaxDeltaDepth {
			continue
		}
		data, err := in.chunks.Get(ctx, id)
		if err != nil {
			continue
		}
		clear(feats)
		features(data, feats)
		idx := int32(len(di.bases))
		di.bases = append(di.bases, baseCandidate{id: id, depth: recs[i].Depth})
		for f := range feats {
			di.inv[f] = append(di.inv[f], idx)
		}
	}
	if len(di.bases) == 0 {
		return nil
	}
	return di
}

// best returns the most similar base for data, if it shares enough samples.
func (di *deltaIndex) best(data []byte) (baseCandidate, bool) {
	feats := map[uint64]struct{}{}
	features(data, feats)
	if len(feats) < 4 {
		return baseCandidate{}, false
	}
	votes := map[int32]int{}
	bestIdx, bestVotes := int32(-1), 0
	for f := range feats {
		for _, b := range di.inv[f] {
			votes[b]++
			if votes[b] > bestVotes {
				bestIdx, bestVotes = b, votes[b]
			}
		}
	}
	if bestIdx < 0 || bestVotes*20 < len(feats) { // under 5% shared: not worth trying
		return baseCandidate{}, false
	}
	return di.bases[bestIdx], true
}

// encodeChunk returns the blob to store for data: the delta against the best
// base when it beats plain zstd by the configured margin, else plain zstd.
// A delta of 1/20 of the chunk or less is taken without trying plain zstd,
// which on real data does not compress that well.
func (in *Ingester) encodeChunk(ctx context.Context, di *deltaIndex, data []byte) ([]byte, store.Written, uint8, error) {
	if di != nil {
		if base, ok := di.best(data); ok {
			if baseData, err := in.chunks.Get(ctx, base.id); err == nil { // a base that went away: plain is always correct
				dblob, dw, err := in.chunks.EncodeDelta(data, base.id, baseData)
				if err != nil {
					return nil, store.Written{}, 0, err
				}
				if dw.StoredSize*20 <= len(data) {
					return dblob, dw, base.depth + 1, nil
				}
				blob, w := in.chunks.Encode(data)
				if float64(dw.StoredSize) <= float64(w.StoredSize)*(1-in.opts.DeltaMargin) {
					return dblob, dw, base.depth + 1, nil
				}
				return blob, w, 0, nil
			}
		}
	}
	blob, w := in.chunks.Encode(data)
	return blob, w, 0, nil
}
