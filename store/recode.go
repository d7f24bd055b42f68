package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/klauspost/compress/zstd"

	"github.com/narstore/narstore/chunker"
)

// GoMaxLevel is the strongest zstd level the pure-Go encoder reaches:
// klauspost/compress's SpeedBestCompression is about zstd's level 11. A chunk
// encoded in Go at a higher level asked for is recorded at this one.
const GoMaxLevel = 11

// FrameEncoder compresses data into one zstd frame, with dict (possibly
// empty) as a raw-content dictionary: the encoding of plain and delta blob
// payloads. Used for recompression, where it may be slow.
type FrameEncoder interface {
	EncodeFrame(ctx context.Context, data, dict []byte) ([]byte, error)
	// Level is the zstd level the frames are made at, as recorded with the
	// chunk (GoMaxLevel at most for the pure-Go encoder).
	Level() int
	// Name says which encoder it is, for logs and reports.
	Name() string
}

// NewFrameEncoder returns the encoder for recompressing at level (1–22):
// the zstd program (its optimal parsers at levels 16–22 store native
// binaries' deltas in half the bytes of level 11) or pure Go. program is
// "auto" (the zstd program on PATH if there is one, else Go), "exec" (the
// program; an error without it) or "go".
func NewFrameEncoder(level int, program string) (FrameEncoder, error) {
	if level < 1 || level > 22 {
		return nil, fmt.Errorf("zstd level %d out of range 1–22", level)
	}
	switch program {
	case "", "auto", "exec":
		path, err := exec.LookPath("zstd")
		if err == nil {
			return &execEncoder{path: path, level: level}, nil
		}
		if program == "exec" {
			return nil, fmt.Errorf("--zstd-program exec: no zstd program on PATH (install the zstd package): %w", err)
		}
		fallthrough
	case "go":
		return newGoEncoder(level), nil
	}
	return nil, fmt.Errorf("zstd program %q: want auto, exec or go", program)
}

type goEncoder struct{ level int }

func newGoEncoder(level int) *goEncoder { return &goEncoder{level: min(level, GoMaxLevel)} }

func (g *goEncoder) Level() int   { return g.level }
func (g *goEncoder) Name() string { return "go zstd level " + strconv.Itoa(g.level) }

func (g *goEncoder) EncodeFrame(_ context.Context, data, dict []byte) ([]byte, error) {
	enc, err := frameEncoder(zstd.EncoderLevelFromZstd(g.level), dict, windowFor(len(dict)+len(data)))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil), nil
}

// execEncoder runs the zstd program once per frame. Its frames name no
// dictionary (a raw-content dictionary has ID 0); the decoder registers a
// delta's dictionary under both IDs.
type execEncoder struct {
	path  string
	level int
}

func (e *execEncoder) Level() int   { return e.level }
func (e *execEncoder) Name() string { return e.path + " -" + strconv.Itoa(e.level) }

func (e *execEncoder) EncodeFrame(ctx context.Context, data, dict []byte) (frame []byte, err error) {
	dir, err := os.MkdirTemp("", "narstore-recode-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, data, 0o600); err != nil {
		return nil, err
	}
	// --single-thread: the same frame with half the memory (about 57 MB
	// for a 3 MB dictionary and a 1 MB chunk at level 19, 101 MB for 12 + 4).
	args := []string{"-q", "-c", "--no-check", "--no-progress", "--single-thread", "-" + strconv.Itoa(e.level)}
	if e.level > 19 {
		args = append(args, "--ultra")
	}
	if len(dict) > 0 {
		// --patch-from loads dict as raw content and sizes the window to
		// reach all of it (-D would keep the default window).
		d := filepath.Join(dir, "dict")
		if err := os.WriteFile(d, dict, 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--patch-from="+d)
	}
	args = append(args, in)
	cmd := exec.CommandContext(ctx, e.path, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", e.path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// Recoded is what Recode did with one chunk.
type Recoded struct {
	From     Encoding // the blob's encoding as read
	Encoding Encoding // and now (From unless raw became zstd)
	Bases    []chunker.ID
	OldSize  int // blob bytes before
	NewSize  int // blob bytes now (OldSize when not replaced)
	Replaced bool
}

// RecodeCommit orders Recode's outcome with the index: it gets what Recode
// would do, r, and replace, which writes the new blob (nil when the blob
// stays as it is, the new one being no smaller), and calls replace, if not
// nil, where no other writer of the chunk's record can come in between
// (index.Index.Recode). Its error is Recode's.
type RecodeCommit func(r Recoded, replace func() error) error

// ErrNoReplace is returned by Recode when the store cannot rewrite blobs.
var ErrNoReplace = errors.New("store cannot replace blobs")

// Recode re-encodes stored chunk id with enc, keeping its encoding kind and
// bases (so nothing that depends on it changes), and replaces the blob when
// the new one is smaller. The new payload is decoded by the read path's own
// decoder (decodePayload) and checked against the chunk's ID before it
// replaces the old one, so a recompression can never store bytes that do not
// read back. Bases are loaded once, verified, since the new frame is
// encoded against them. A raw chunk that now compresses becomes plain zstd.
// commit decides whether and when the blob is replaced: a reverse-delta
// rewrite of the chunk between the read and the replace would otherwise be
// overwritten by a blob that needs the bases it left.
func (c *Chunks) Recode(ctx context.Context, id chunker.ID, enc FrameEncoder, commit RecodeCommit) (Recoded, error) {
	r, ok := c.store.(Replacer)
	if !ok {
		return Recoded{}, ErrNoReplace
	}
	blob, err := c.readBlob(ctx, id)
	if err != nil {
		return Recoded{}, err
	}
	kind, bases, payload, err := BlobHeader(blob)
	if err != nil {
		return Recoded{}, fmt.Errorf("chunk %s: %w", id, err)
	}
	// The bases are loaded once: to read the chunk, as the new frame's
	// dictionary, and to read that frame back.
	dict, pooled, err := c.baseDict(ctx, kind, bases, nil, chainDepth(ctx))
	if err != nil {
		return Recoded{}, fmt.Errorf("chunk %s: %w", id, err)
	}
	defer c.releaseDict(pooled, dict)
	data, err := c.decodePayload(id, kind, payload, dict, true)
	if err != nil {
		return Recoded{}, fmt.Errorf("chunk %s: %w", id, err)
	}
	out := Recoded{From: kind, Encoding: kind, Bases: IDs(bases), OldSize: len(blob), NewSize: len(blob)}
	frame, err := enc.EncodeFrame(ctx, data, dict)
	if err != nil {
		return out, fmt.Errorf("chunk %s: recompress: %w", id, err)
	}
	// Same header as before (the raw case becomes zstd), new payload.
	newKind := kind
	if kind == EncRaw {
		newKind = EncZstd
	}
	hdr := len(blob) - len(payload)
	nb := make([]byte, 0, hdr+len(frame))
	nb = append(nb, blob[:hdr]...)
	nb[1] = byte(newKind)
	nb = append(nb, frame...)
	if len(nb) >= len(blob) {
		return out, commit(out, nil)
	}
	if _, err := c.decodePayload(id, newKind, frame, dict, true); err != nil {
		return out, fmt.Errorf("chunk %s: recompressed frame does not read back (%v); left as it was", id, err)
	}
	next := out
	next.Encoding, next.NewSize = newKind, len(nb)
	// commit calls swap where no other writer of the record comes in
	// between, an index transaction: on a Stager only the rename happens
	// there, the writes and syncs before and after it.
	blobs := []Blob{{ID: id, Data: nb}}
	swap := func() error { return r.Replace(ctx, blobs) }
	finish := func() error { return nil }
	if sr, ok := c.store.(Stager); ok {
		st, err := sr.Stage(ctx, blobs)
		if err != nil {
			if st != nil {
				st.Finish(ctx)
			}
			return out, err
		}
		swap = func() error { return st.Swap(ctx) }
		finish = func() error { return st.Finish(ctx) }
	}
	replaced := false
	err = commit(next, func() error {
		if err := swap(); err != nil {
			return err
		}
		replaced = true
		return nil
	})
	if ferr := finish(); ferr != nil && err == nil {
		err = ferr
	}
	if replaced {
		out, out.Replaced = next, true
	}
	return out, err
}

// CanReplace reports whether the store can rewrite blobs in place (Recode,
// Replace).
func (c *Chunks) CanReplace() bool { _, ok := c.store.(Replacer); return ok }

// CheckDelta reads blob, a delta EncodeDelta made of chunk id's bytes
// against bases, back against the same base bytes, and returns an error
// unless it hashes to id. Reverse deltas check each delta so before it
// replaces a blob that reads fine (Replace).
func (c *Chunks) CheckDelta(ctx context.Context, id chunker.ID, blob []byte, bases []Base) error {
	byID := make(map[chunker.ID][]byte, len(bases))
	for _, b := range bases {
		byID[b.ID] = b.Data
	}
	have := func(_ context.Context, bid chunker.ID) ([]byte, error) {
		if d, ok := byID[bid]; ok {
			return d, nil
		}
		return nil, fmt.Errorf("delta names base %s it was not made with: %w", bid, ErrCorrupt)
	}
	if _, err := c.decode(ctx, id, blob, have, 0, true); err != nil {
		return fmt.Errorf("chunk %s: delta does not read back (%w); left as it was", id, err)
	}
	return nil
}

// Replace replaces the blobs of chunks with new ones (Replacer), for reverse
// deltas: each one checked (CheckDelta) and recorded in the index first, in
// the order the deletion rule needs. On error every blob is the old one or
// the new one, and each reads as before.
func (c *Chunks) Replace(ctx context.Context, blobs []Blob) error {
	r, ok := c.store.(Replacer)
	if !ok {
		return ErrNoReplace
	}
	return r.Replace(ctx, blobs)
}
