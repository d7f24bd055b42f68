package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/narstore/narstore/chunker"
)

// Encoding says how a chunk's bytes are turned into its blob.
type Encoding uint8

const (
	// EncRaw stores the bytes as they are (used when zstd does not shrink them).
	EncRaw Encoding = 0
	// EncZstd is one zstd frame of the bytes.
	EncZstd Encoding = 1
	// EncZstdDelta is one zstd frame compressed with the bytes of a base chunk
	// as a raw dictionary. The base's ID follows the blob header.
	EncZstdDelta Encoding = 2
	// EncZstdMultiDelta is one zstd frame compressed with the bytes of
	// several base chunks, concatenated in the order listed, as a raw
	// dictionary. A count byte and the bases' IDs follow the blob header.
	// Content that moved across a chunk boundary between two versions is
	// found in the neighbouring base.
	EncZstdMultiDelta Encoding = 3
	// EncZstdRangeDelta is EncZstdMultiDelta with a byte range of each base
	// in the dictionary: a count byte, then per base its 32-byte ID and the
	// range's offset and length as uvarints. A neighbouring base is there
	// for content that crossed its boundary, so the dictionary takes only
	// the end near that boundary: a smaller dictionary costs less to hash
	// when encoding and to assemble when decoding.
	EncZstdRangeDelta Encoding = 4
)

// MaxDeltaBases bounds the bases of one delta chunk.
const MaxDeltaBases = 4

// IsDelta reports whether chunks of this encoding need bases to decode.
func (e Encoding) IsDelta() bool { return e == EncZstdDelta || e.MultiBase() }

// MultiBase reports whether chunks of this encoding may name several bases
// (the index keeps those in a table of their own).
func (e Encoding) MultiBase() bool { return e == EncZstdMultiDelta || e == EncZstdRangeDelta }

func (e Encoding) String() string {
	switch e {
	case EncRaw:
		return "raw"
	case EncZstd:
		return "zstd"
	case EncZstdDelta:
		return "zstd-delta"
	case EncZstdMultiDelta:
		return "zstd-multi-delta"
	case EncZstdRangeDelta:
		return "zstd-range-delta"
	}
	return fmt.Sprintf("encoding(%d)", uint8(e))
}

// Blob layout: version byte, encoding byte, [32-byte base ID if delta | count
// byte and count 32-byte base IDs if multi-delta | count byte and count
// (32-byte base ID, uvarint offset, uvarint length) if range-delta], payload.
// Blobs are self-describing so a store can be read (or migrated) without the index.
const blobVersion = 1

// MaxChunkSize bounds what a blob may decode to; it is the largest preset max.
const MaxChunkSize = 8 << 20

// DefaultMaxDeltaDepth is how deep writers let delta chains grow unless
// configured (ingest --max-delta-depth), with forward deltas: reading a
// chunk then decodes at most this many deltas on top of a plain chunk.
// Reverse deltas default deeper (ingest.DefaultReverseDeltaDepth), since
// there only old releases sit deep.
const DefaultMaxDeltaDepth = 3

// MaxDeltaDepthLimit is the deepest chain any writer may build and every
// reader follows, whatever the writers' setting was: a store written with a
// deeper setting stays readable by a reader left at its defaults. Anything
// deeper is corrupt (a cycle of blobs naming each other ends here).
const MaxDeltaDepthLimit = 8

// Chunks stores and loads chunks on a Store, encoding them on the way in and
// decoding and BLAKE3-verifying them on the way out. Safe for concurrent use.
type Chunks struct {
	store    Store
	enc      *zstd.Encoder
	dec      *zstd.Decoder
	level    zstd.EncoderLevel
	levelNum int // the zstd level asked for, at most GoMaxLevel
	maxDepth int
	blobs    sync.Pool // *[]byte buffers for Encode

	// Delta decoders are reused with a new raw dictionary each time:
	// creating one per chunk allocates (and clears) its whole window.
	deltaDecs sync.Pool // *zstd.Decoder
	// Delta encoders are reused too, a pool per window size (an encoder's
	// window is fixed): see encodeDeltaFrame.
	deltaEncs sync.Map // int -> *sync.Pool of *zstd.Encoder
	// Dictionaries of several bases are assembled in reused buffers: a
	// fresh one per chunk (up to MaxDeltaBases chunks) was mostly spent
	// zeroing, growing and copying (~25% of a delta-heavy cold read).
	dictBufs sync.Pool // *[]byte
}

// DefaultLevel is the zstd level new chunks get unless configured. Measured
// on a real 122 MB NAR (Go toolchain binaries and sources), one core, store on
// tmpfs: level 1 ingests new data at ~153 MB/s and stores 0.355 of the NAR;
// level 3 at ~107 MB/s stores 0.338. Decoding speed is the same.
const DefaultLevel = 1

// ChunksOptions tune a Chunks. The zero value is usable.
type ChunksOptions struct {
	// Level is the zstd level (1–22, as in the zstd CLI); 0 means DefaultLevel. It changes
	// stored bytes and ingest CPU, not decoding speed.
	Level int
	// MaxDeltaDepth bounds delta chains on read; 0 means MaxDeltaDepthLimit.
	MaxDeltaDepth int
}

// NewChunks returns a Chunks over s.
func NewChunks(s Store, o ChunksOptions) (*Chunks, error) {
	if o.Level == 0 {
		o.Level = DefaultLevel
	}
	if o.Level < 1 || o.Level > 22 {
		return nil, fmt.Errorf("zstd level %d out of range 1–22", o.Level)
	}
	if o.MaxDeltaDepth == 0 {
		o.MaxDeltaDepth = MaxDeltaDepthLimit
	}
	lvl := zstd.EncoderLevelFromZstd(o.Level)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderCRC(false),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithZeroFrames(true))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunkSize))
	if err != nil {
		return nil, err
	}
	return &Chunks{store: s, enc: enc, dec: dec, level: lvl, levelNum: min(o.Level, GoMaxLevel), maxDepth: o.MaxDeltaDepth}, nil
}

// Store returns the backend the chunks live on.
func (c *Chunks) Store() Store { return c.store }

// Written describes how a chunk was stored.
type Written struct {
	Encoding   Encoding
	Bases      []chunker.ID // delta bases, in dictionary order; nil unless a delta
	StoredSize int          // blob bytes
	Level      int          // zstd level the blob was made at (recorded with the chunk)
}

// Base is a base chunk's ID and verified bytes, for EncodeDelta. Len > 0
// limits the dictionary to Data[Off:Off+Len]; Len 0 takes all of Data.
type Base struct {
	ID       chunker.ID
	Data     []byte
	Off, Len int
}

// part is the bytes of b that go into the dictionary.
func (b Base) part() []byte {
	if b.Len == 0 {
		return b.Data
	}
	return b.Data[b.Off : b.Off+b.Len]
}

// ranged reports whether the dictionary takes only part of b.
func (b Base) ranged() bool { return b.Len != 0 && b.Len != len(b.Data) }

// BaseRef is a delta base as a blob names it: the chunk, and the byte range
// of it in the dictionary (Len 0: all of it).
type BaseRef struct {
	ID       chunker.ID
	Off, Len int
}

// part returns the bytes of data (the base chunk's) that ref puts in the
// dictionary; a range past its end means a corrupt blob.
func (ref BaseRef) part(data []byte) ([]byte, error) {
	if ref.Len == 0 {
		return data, nil
	}
	if ref.Off > len(data) || ref.Len > len(data)-ref.Off {
		return nil, fmt.Errorf("delta base %s: range %d+%d outside its %d bytes: %w", ref.ID, ref.Off, ref.Len, len(data), ErrCorrupt)
	}
	return data[ref.Off : ref.Off+ref.Len], nil
}

// IDs returns the chunks refs name, in order.
func IDs(refs []BaseRef) []chunker.ID {
	ids := make([]chunker.ID, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	return ids
}

// Encode returns the blob for data: zstd, or raw when zstd does not shrink it.
func (c *Chunks) Encode(data []byte) ([]byte, Written) {
	// Room for zstd's worst case, so EncodeAll never regrows the buffer.
	need := 2 + len(data) + len(data)/128 + 64
	var blob []byte
	if p, ok := c.blobs.Get().(*[]byte); ok && cap(*p) >= need {
		blob = (*p)[:2]
	} else {
		blob = make([]byte, 2, need)
	}
	blob[0] = blobVersion
	blob = c.enc.EncodeAll(data, blob)
	if len(blob)-2 >= len(data) {
		blob = append(blob[:2], data...)
		blob[1] = byte(EncRaw)
	} else {
		blob[1] = byte(EncZstd)
	}
	return blob, Written{Encoding: Encoding(blob[1]), StoredSize: len(blob), Level: c.levelNum}
}

// Recycle hands a blob returned by Encode back for reuse once it has been
// stored. Optional; the blob must not be used afterwards.
func (c *Chunks) Recycle(blob []byte) { c.blobs.Put(&blob) }

// EncodeDelta returns the blob for data compressed against the bases' bytes
// (or the part of each a Base's range names), concatenated in order (put the
// most similar last: nearest matches cost least). One whole base gives
// EncZstdDelta, several EncZstdMultiDelta, any range EncZstdRangeDelta. The
// caller decides whether it beats Encode by enough to keep.
func (c *Chunks) EncodeDelta(data []byte, bases []Base) ([]byte, Written, error) {
	blob, w, dict, release, err := c.deltaHeader(bases, len(data)/4)
	if err != nil {
		return nil, Written{}, err
	}
	defer release()
	w.Level = max(c.levelNum, 3)
	blob, err = c.encodeDeltaFrame(blob, data, dict)
	if err != nil {
		return nil, Written{}, fmt.Errorf("delta encoder: %w", err)
	}
	w.StoredSize = len(blob)
	return blob, w, nil
}

// EncodeDeltaWith is EncodeDelta with enc making the frame (recompression's
// encoder: the zstd program at level 19), recorded at enc's level.
func (c *Chunks) EncodeDeltaWith(ctx context.Context, data []byte, bases []Base, enc FrameEncoder) ([]byte, Written, error) {
	blob, w, dict, release, err := c.deltaHeader(bases, 0)
	if err != nil {
		return nil, Written{}, err
	}
	defer release()
	frame, err := enc.EncodeFrame(ctx, data, dict)
	if err != nil {
		return nil, Written{}, fmt.Errorf("delta encoder %s: %w", enc.Name(), err)
	}
	blob = append(blob, frame...)
	w.Level, w.StoredSize = enc.Level(), len(blob)
	return blob, w, nil
}

// deltaHeader returns the header of a delta blob against bases (with room
// for extra bytes of frame after it), its description but for level and
// size, and the frame's dictionary; call release once the dictionary is no
// longer used.
func (c *Chunks) deltaHeader(bases []Base, extra int) (blob []byte, w Written, dict []byte, release func(), err error) {
	if len(bases) == 0 || len(bases) > MaxDeltaBases {
		return nil, Written{}, nil, nil, fmt.Errorf("delta with %d bases: want 1 to %d", len(bases), MaxDeltaBases)
	}
	w = Written{Encoding: EncZstdDelta}
	for _, b := range bases {
		if b.Off < 0 || b.Len < 0 || b.Off+b.Len > len(b.Data) || (b.Len == 0 && b.Off != 0) {
			return nil, Written{}, nil, nil, fmt.Errorf("delta base %s: range %d+%d outside its %d bytes", b.ID, b.Off, b.Len, len(b.Data))
		}
		if b.ranged() {
			w.Encoding = EncZstdRangeDelta
		}
	}
	if w.Encoding == EncZstdDelta && len(bases) > 1 {
		w.Encoding = EncZstdMultiDelta
	}
	dict, release = bases[0].part(), func() {}
	if len(bases) > 1 {
		parts := make([][]byte, len(bases))
		for i, b := range bases {
			parts[i] = b.part()
		}
		// The encoder copies the dictionary in on each reset and keeps no
		// hold of it after the frame: its buffer goes back to the pool.
		var pooled *[]byte
		dict, pooled = c.joinDict(parts)
		release = func() { c.releaseDict(pooled, dict) }
	}
	blob = make([]byte, 2, 3+len(bases)*(len(chunker.ID{})+2*binary.MaxVarintLen32)+extra)
	blob[0] = blobVersion
	blob[1] = byte(w.Encoding)
	if w.Encoding.MultiBase() {
		blob = append(blob, byte(len(bases)))
	}
	for _, b := range bases {
		blob = append(blob, b.ID[:]...)
		if w.Encoding == EncZstdRangeDelta {
			p := b.part()
			blob = binary.AppendUvarint(blob, uint64(b.Off))
			blob = binary.AppendUvarint(blob, uint64(len(p)))
		}
		w.Bases = append(w.Bases, b.ID)
	}
	return blob, w, dict, release, nil
}

// encodeDeltaFrame appends to dst the zstd frame of data with dict as its
// raw dictionary, on a pooled encoder. The frame is written as a stream:
// EncodeAll on a reused encoder hashes the dictionary twice (once for the
// stream state that ResetWithOptions resets, once for its own), and a new
// encoder per delta allocates and clears its history and tables. Measured
// on a 0.84 MB dictionary and a 0.32 MB chunk: 2.3 ms against 4.1 for a new
// encoder, the same frame but for a byte of header.
func (c *Chunks) encodeDeltaFrame(dst, data, dict []byte) ([]byte, error) {
	window := windowFor(len(dict) + len(data))
	p, _ := c.deltaEncs.LoadOrStore(window, &sync.Pool{})
	pool := p.(*sync.Pool)
	out := &appendWriter{b: dst}
	enc, _ := pool.Get().(*zstd.Encoder)
	if enc == nil {
		var err error
		if enc, err = c.deltaEncoder(dict, window); err != nil {
			return nil, err
		}
		enc.ResetContentSize(out, int64(len(data)))
	} else {
		if err := enc.ResetWithOptions(out, zstd.WithEncoderDictRaw(1, dict)); err != nil {
			return nil, err
		}
		enc.ResetContentSize(out, int64(len(data))) // the dictionary is the same: not hashed again
	}
	if _, err := enc.Write(data); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	pool.Put(enc)
	return out.b, nil
}

// appendWriter appends what is written to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// deltaEncoder returns an encoder with dict as its raw dictionary.
func (c *Chunks) deltaEncoder(dict []byte, window int) (*zstd.Encoder, error) {
	// The fastest zstd level barely matches into a raw dictionary, so deltas
	// always use at least the default level.
	return frameEncoder(max(c.level, zstd.SpeedDefault), dict, window)
}

// frameEncoder returns a single-threaded encoder of blob payloads at lvl,
// with dict (if any) as raw dictionary 1 and a window of window bytes.
func frameEncoder(lvl zstd.EncoderLevel, dict []byte, window int) (*zstd.Encoder, error) {
	opts := []zstd.EOption{zstd.WithEncoderLevel(lvl), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1), zstd.WithZeroFrames(true)}
	if len(dict) > 0 {
		opts = append(opts, zstd.WithEncoderDictRaw(1, dict), zstd.WithWindowSize(window))
	}
	return zstd.NewWriter(nil, opts...)
}

func windowFor(n int) int {
	w := zstd.MinWindowSize
	for w < n && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}

// Put encodes data as plain zstd (or raw) and stores it under id.
// Like Store.Put it is idempotent.
func (c *Chunks) Put(ctx context.Context, id chunker.ID, data []byte) (Written, error) {
	blob, w := c.Encode(data)
	if err := c.store.Put(ctx, id, blob); err != nil {
		return Written{}, err
	}
	return w, nil
}

// PutBlob stores blob, encoded by Encode or EncodeDelta (or copied from
// another store), under id, for a chunk the index does not record yet. A
// store that keeps a blob already there (Creator: a directory) may hold one
// encoded otherwise: left by a writer that failed before its index commit,
// or stored by one running now, against other delta bases (an ingest's
// search saw another index; a copy's source was rewritten since). If that
// one needs other bases than blob, blob replaces it, so that the record
// about to be committed names the bases of the blob in place (a concurrent
// writer's commit holds its own: index.Index.Commit). Other stores keep the
// last blob stored, this one.
func (c *Chunks) PutBlob(ctx context.Context, id chunker.ID, blob []byte) error {
	cr, ok := c.store.(Creator)
	if !ok {
		return c.store.Put(ctx, id, blob)
	}
	created, err := cr.Create(ctx, id, blob)
	if err != nil || created {
		return err
	}
	_, want, _, err := BlobHeader(blob)
	if err != nil {
		return fmt.Errorf("put chunk %s: %w", id, err)
	}
	have, err := c.BlobBases(ctx, id)
	if err == nil && sameBases(have, IDs(want)) {
		return nil
	}
	// Other bases, or a blob that does not parse: this one goes in its place.
	if err := c.Replace(ctx, []Blob{{ID: id, Data: blob}}); err != nil {
		return fmt.Errorf("replace chunk %s stored before with other delta bases: %w", id, err)
	}
	return nil
}

// sameBases reports whether a and b name the same chunks.
func sameBases(a, b []chunker.ID) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x chunker.ID) bool { return !slices.Contains(b, x) })
}

// Sync makes the chunks Put so far durable, if the store needs that (Syncer).
func (c *Chunks) Sync(ctx context.Context) error {
	if s, ok := c.store.(Syncer); ok {
		return s.Sync(ctx)
	}
	return nil
}

// BlobHeader parses a blob's header: its encoding, delta bases (in
// dictionary order) and payload.
func BlobHeader(blob []byte) (enc Encoding, bases []BaseRef, payload []byte, err error) {
	if len(blob) < 2 || blob[0] != blobVersion {
		return 0, nil, nil, fmt.Errorf("unknown blob format: %w", ErrCorrupt)
	}
	enc = Encoding(blob[1])
	payload = blob[2:]
	n := 0
	switch enc {
	case EncRaw, EncZstd:
	case EncZstdDelta:
		n = 1
	case EncZstdMultiDelta, EncZstdRangeDelta:
		if len(payload) < 1 || payload[0] < 2 || payload[0] > MaxDeltaBases {
			return 0, nil, nil, fmt.Errorf("bad delta base count: %w", ErrCorrupt)
		}
		n = int(payload[0])
		payload = payload[1:]
	default:
		return 0, nil, nil, fmt.Errorf("unknown encoding %d (written by a newer narstore?): %w", enc, ErrCorrupt)
	}
	const idLen = len(chunker.ID{})
	for range n {
		if len(payload) < idLen {
			return 0, nil, nil, fmt.Errorf("short delta header: %w", ErrCorrupt)
		}
		ref := BaseRef{ID: chunker.ID(payload[:idLen])}
		payload = payload[idLen:]
		if enc == EncZstdRangeDelta {
			off, k := binary.Uvarint(payload)
			if k <= 0 || off > MaxChunkSize {
				return 0, nil, nil, fmt.Errorf("bad delta base range: %w", ErrCorrupt)
			}
			payload = payload[k:]
			l, k := binary.Uvarint(payload)
			if k <= 0 || l == 0 || l > MaxChunkSize {
				return 0, nil, nil, fmt.Errorf("bad delta base range: %w", ErrCorrupt)
			}
			payload = payload[k:]
			ref.Off, ref.Len = int(off), int(l)
		}
		bases = append(bases, ref)
	}
	return enc, bases, payload, nil
}

// BaseFunc returns the bytes of a base chunk, for decoding deltas; they may
// be unchecked (see Load), since the chunk decoded with them is checked.
// Reassembly passes one that goes through its cache. Its context says how
// deep in the delta chain that base sits; a BaseFunc that decodes through
// Get, GetWith or Blob with that context keeps the count, so chains stay
// bounded by MaxDeltaDepth (and blobs naming each other as bases fail as
// corrupt) whatever loader the bases go through.
type BaseFunc func(ctx context.Context, id chunker.ID) ([]byte, error)

type chainDepthKey struct{}

// chainDepth is the delta-chain depth of the chunk ctx asks for: 0, or what
// decode passed to a BaseFunc.
func chainDepth(ctx context.Context) int {
	d, _ := ctx.Value(chainDepthKey{}).(int)
	return d
}

// BaseLoad reports whether ctx is that of a delta base being loaded to
// decode another chunk (what decoding passes to a BaseFunc).
func BaseLoad(ctx context.Context) bool { return chainDepth(ctx) > 0 }

// Verify returns an error that Is ErrCorrupt unless data hashes to id.
func Verify(id chunker.ID, data []byte) error {
	if chunker.Sum(data) != id {
		return fmt.Errorf("chunk %s: content does not hash to its id: %w", id, ErrCorrupt)
	}
	return nil
}

// Get returns the verified bytes of chunk id. A missing blob Is ErrNotFound;
// bytes that do not hash to id, or a blob that does not decode, Is ErrCorrupt.
// Delta bases are loaded with Get itself.
func (c *Chunks) Get(ctx context.Context, id chunker.ID) ([]byte, error) {
	return c.get(ctx, id, nil, chainDepth(ctx), true)
}

// GetWith is Get with delta bases loaded through base.
func (c *Chunks) GetWith(ctx context.Context, id chunker.ID, base BaseFunc) ([]byte, error) {
	return c.get(ctx, id, base, chainDepth(ctx), true)
}

// Load is GetWith for a cache of decoded chunks that is also the BaseFunc
// of its own loads. Asked for a delta base (BaseLoad(ctx)), the bytes are
// not checked against id, and checked is false: the chunk decoded with them
// is checked, so a damaged base still fails that chunk as corrupt, but the
// bytes themselves must pass Verify before they are served or encoded
// against. On a cold read of a delta chain this spares the BLAKE3 of every
// chunk but the one asked for.
func (c *Chunks) Load(ctx context.Context, id chunker.ID, base BaseFunc) (data []byte, checked bool, err error) {
	checked = !BaseLoad(ctx)
	data, err = c.get(ctx, id, base, chainDepth(ctx), checked)
	return data, checked, err
}

// Unchecked returns chunk id's bytes without checking them, or its bases',
// against their IDs: for a caller that checks what it makes of them
// against id itself (reverse deltas read each new delta back with
// CheckDelta, which does) and would otherwise hash the same bytes twice.
// Never serve or store them unchecked. Errors are as Get's.
func (c *Chunks) Unchecked(ctx context.Context, id chunker.ID) ([]byte, error) {
	var base BaseFunc
	base = func(ctx context.Context, bid chunker.ID) ([]byte, error) {
		return c.get(ctx, bid, base, chainDepth(ctx), false)
	}
	return c.get(ctx, id, base, chainDepth(ctx), false)
}

func (c *Chunks) get(ctx context.Context, id chunker.ID, baseFn BaseFunc, depth int, verify bool) ([]byte, error) {
	blob, err := c.readBlob(ctx, id)
	if err != nil {
		return nil, err
	}
	data, err := c.decode(ctx, id, blob, baseFn, depth, verify)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	return data, nil
}

// BlobBases returns the bases chunk id's blob needs (none for a plain
// blob), reading only its header.
func (c *Chunks) BlobBases(ctx context.Context, id chunker.ID) ([]chunker.ID, error) {
	rc, err := c.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	hdr := make([]byte, maxHeaderSize)
	n, err := io.ReadFull(rc, hdr)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("read chunk %s: %w", id, err)
	}
	_, bases, _, err := BlobHeader(hdr[:n])
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	return IDs(bases), nil
}

// maxHeaderSize bounds a blob's header: version, encoding, base count, and
// each base's ID and range.
const maxHeaderSize = 3 + MaxDeltaBases*(len(chunker.ID{})+2*binary.MaxVarintLen64)

func (c *Chunks) readBlob(ctx context.Context, id chunker.ID) ([]byte, error) {
	rc, err := c.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	size := 64 << 10
	if st, ok := rc.(interface{ Stat() (os.FileInfo, error) }); ok { // local files: read in one go
		if fi, err := st.Stat(); err == nil && fi.Size() <= MaxChunkSize+64 {
			// ReadFrom wants MinRead bytes free before each read, also the
			// one that sees EOF; with less it reallocates and copies.
			size = int(fi.Size()) + bytes.MinRead
		}
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	if _, err := io.Copy(buf, io.LimitReader(rc, MaxChunkSize+64)); err != nil {
		return nil, fmt.Errorf("read chunk %s: %w", id, err)
	}
	return buf.Bytes(), nil
}

func (c *Chunks) decode(ctx context.Context, id chunker.ID, blob []byte, baseFn BaseFunc, depth int, verify bool) ([]byte, error) {
	enc, bases, payload, err := BlobHeader(blob)
	if err != nil {
		return nil, err
	}
	dict, pooled, err := c.baseDict(ctx, enc, bases, baseFn, depth)
	if err != nil {
		return nil, err
	}
	defer c.releaseDict(pooled, dict)
	return c.decodePayload(id, enc, payload, dict, verify)
}

// baseDict loads a delta's bases (through baseFn, or Get if nil, one chain
// step deeper than depth) and returns them concatenated: the raw dictionary
// of its frame. It is nil for a chunk of a plain encoding. Hand pooled (nil
// unless several bases were concatenated) to releaseDict once the
// dictionary is no longer used.
func (c *Chunks) baseDict(ctx context.Context, enc Encoding, bases []BaseRef, baseFn BaseFunc, depth int) (dict []byte, pooled *[]byte, err error) {
	if !enc.IsDelta() {
		return nil, nil, nil
	}
	if depth >= c.maxDepth {
		return nil, nil, fmt.Errorf("delta chain deeper than %d: %w", c.maxDepth, ErrCorrupt)
	}
	baseData := make([][]byte, len(bases))
	for i, ref := range bases {
		var base []byte
		if baseFn != nil {
			base, err = baseFn(context.WithValue(ctx, chainDepthKey{}, depth+1), ref.ID)
		} else {
			base, err = c.get(ctx, ref.ID, nil, depth+1, true)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("delta base %s: %w", ref.ID, err)
		}
		if base, err = ref.part(base); err != nil {
			return nil, nil, err
		}
		baseData[i] = base
	}
	if len(bases) == 1 {
		return baseData[0], nil, nil
	}
	dict, pooled = c.joinDict(baseData)
	return dict, pooled, nil
}

// joinDict concatenates parts in a reused buffer; hand pooled to
// releaseDict once the dictionary is no longer used.
func (c *Chunks) joinDict(parts [][]byte) (dict []byte, pooled *[]byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	pooled, _ = c.dictBufs.Get().(*[]byte)
	if pooled == nil || cap(*pooled) < n {
		b := make([]byte, 0, n)
		pooled = &b
	}
	dict = (*pooled)[:0]
	for _, p := range parts {
		dict = append(dict, p...)
	}
	return dict, pooled
}

// releaseDict hands baseDict's buffer back for reuse. Decoded data never
// aliases the dictionary, and the decoder has let go of it by then.
func (c *Chunks) releaseDict(pooled *[]byte, dict []byte) {
	if pooled != nil {
		*pooled = dict[:0]
		c.dictBufs.Put(pooled)
	}
}

// decodePayload decodes a blob payload of encoding enc (dict: its bases,
// from baseDict) and, if verify, checks that the bytes hash to id.
func (c *Chunks) decodePayload(id chunker.ID, enc Encoding, payload, dict []byte, verify bool) ([]byte, error) {
	var data []byte
	var err error
	switch enc {
	case EncRaw:
		data = payload
	case EncZstd:
		data, err = c.dec.DecodeAll(payload, make([]byte, 0, frameSize(payload)))
		if err != nil {
			return nil, fmt.Errorf("zstd: %v: %w", err, ErrCorrupt)
		}
	case EncZstdDelta, EncZstdMultiDelta, EncZstdRangeDelta:
		data, err = c.decodeDelta(payload, dict)
		if err != nil {
			return nil, fmt.Errorf("zstd delta: %v: %w", err, ErrCorrupt)
		}
	}
	if verify && chunker.Sum(data) != id {
		return nil, fmt.Errorf("content does not hash to its id: %w", ErrCorrupt)
	}
	return data, nil
}

// Blob returns chunk id's stored blob as it is, and the bytes it decodes to,
// after checking that they hash to id (bases loaded through base, or Get if
// nil). Copying blobs keeps their encoding, so a copy costs no recompression.
func (c *Chunks) Blob(ctx context.Context, id chunker.ID, base BaseFunc) (blob, data []byte, err error) {
	blob, err = c.readBlob(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if data, err = c.decode(ctx, id, blob, base, chainDepth(ctx), true); err != nil {
		return nil, nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	return blob, data, nil
}

// decodeDelta decodes one delta frame with dict as its raw dictionary, on a
// pooled decoder.
func (c *Chunks) decodeDelta(payload, dict []byte) ([]byte, error) {
	// Frames made here name dictionary 1; frames recompressed by the zstd
	// program (Recode) name none, which is dictionary 0.
	opts := []zstd.DOption{zstd.WithDecoderDictRaw(1, dict), zstd.WithDecoderDictRaw(0, dict),
		zstd.WithDecoderMaxWindow(uint64(windowFor(len(dict) + MaxChunkSize)))}
	dec, _ := c.deltaDecs.Get().(*zstd.Decoder)
	if dec != nil {
		if err := dec.ResetWithOptions(nil, opts...); err != nil {
			dec.Close()
			dec = nil
		}
	}
	if dec == nil {
		var err error
		dec, err = zstd.NewReader(nil, append(opts, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxChunkSize))...)
		if err != nil {
			return nil, err
		}
	}
	data, err := dec.DecodeAll(payload, make([]byte, 0, frameSize(payload)))
	if dec.ResetWithOptions(nil, zstd.WithDecoderDictRaw(1, nil), zstd.WithDecoderDictRaw(0, nil)) == nil { // drop the dictionary while pooled
		c.deltaDecs.Put(dec)
	}
	return data, err
}

// Chunk is Get under the name reassembly's ChunkSource uses.
func (c *Chunks) Chunk(ctx context.Context, id chunker.ID) ([]byte, error) { return c.Get(ctx, id) }

// frameSize returns a zstd frame's declared content size, for allocating
// the output once; 0 if unknown or implausible.
func frameSize(frame []byte) int {
	var h zstd.Header
	if err := h.Decode(frame); err != nil || !h.HasFCS || h.FrameContentSize > MaxChunkSize {
		return 0
	}
	return int(h.FrameContentSize)
}
