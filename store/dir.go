package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/narstore/narstore/chunker"
)

// Dir is a Store on a local directory. Blobs live at
// ROOT/chunks/ab/cd/abcd…(64 hex digits). A write goes to an unnamed file in
// the target directory (O_TMPFILE) that is linked in once complete, or, where
// the filesystem lacks O_TMPFILE, to ROOT/tmp and is renamed into place; a
// crash never leaves a partial blob under a chunk's name. Put is atomic; Sync (one syncfs(2) for the whole filesystem, instead
// of two fsyncs per chunk) makes the Puts before it durable.
type Dir struct {
	root string
	// NoSync makes Sync a no-op. Only for throwaway stores (bench); a crash
	// may then lose blobs the index already names.
	NoSync bool
	made   sync.Map // fan-out directories known to exist
	// noTmpfile is set once the filesystem refused O_TMPFILE; Put then
	// writes a named temp file and renames it.
	noTmpfile atomic.Bool
}

var (
	_ Store    = (*Dir)(nil)
	_ Syncer   = (*Dir)(nil)
	_ Replacer = (*Dir)(nil)
)

// staleTmpAge is how old a leftover temp file must be before OpenDir removes
// it; younger ones may belong to a writer in another process.
const staleTmpAge = time.Hour

// OpenDir opens (creating if needed) a directory store at root and removes
// temp files that a killed writer left behind.
func OpenDir(root string) (*Dir, error) {
	for _, d := range []string{"chunks", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("open chunk directory %s: %w", root, err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(root, "tmp"))
	if err != nil {
		return nil, fmt.Errorf("open chunk directory %s: %w", root, err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTmpAge {
			os.Remove(filepath.Join(root, "tmp", e.Name()))
		}
	}
	return &Dir{root: root}, nil
}

func (d *Dir) path(id chunker.ID) string {
	return filepath.Join(d.root, "chunks", relPath(id))
}

// relPath is a blob's path below ROOT/chunks: ab/cd/abcd….
func relPath(id chunker.ID) string {
	h := id.String()
	return h[:2] + "/" + h[2:4] + "/" + h
}

// Get implements Store.
func (d *Dir) Get(ctx context.Context, id chunker.ID) (io.ReadCloser, error) {
	f, err := os.Open(d.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get chunk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	return f, nil
}

// Has implements Store.
func (d *Dir) Has(ctx context.Context, id chunker.ID) (bool, error) {
	_, err := os.Stat(d.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat chunk %s: %w", id, err)
	}
	return true, nil
}

// HasMany implements BatchHaser: one stat after another, relative to the
// open chunks directory (shorter path walks), which on a local filesystem
// beats spreading them over goroutines.
func (d *Dir) HasMany(ctx context.Context, ids []chunker.ID) ([]bool, error) {
	dir, err := os.Open(filepath.Join(d.root, "chunks"))
	if err != nil {
		return nil, fmt.Errorf("chunk directory: %w", err)
	}
	defer dir.Close()
	fd := int(dir.Fd())
	out := make([]bool, len(ids))
	var st unix.Stat_t
	for i, id := range ids {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		switch err := unix.Fstatat(fd, relPath(id), &st, 0); {
		case err == nil:
			out[i] = true
		case errors.Is(err, unix.ENOENT):
		default:
			return nil, fmt.Errorf("stat chunk %s: %w", id, err)
		}
	}
	return out, nil
}

// Put implements Store.
func (d *Dir) Put(ctx context.Context, id chunker.ID, blob []byte) error {
	_, err := d.Create(ctx, id, blob)
	return err
}

// Create implements Creator: a blob already there stays.
func (d *Dir) Create(ctx context.Context, id chunker.ID, blob []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	final := d.path(id)
	dir := filepath.Dir(final)
	if _, ok := d.made.Load(dir); !ok {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, fmt.Errorf("put chunk %s: %w", id, err)
		}
		d.made.Store(dir, struct{}{})
	}
	if !d.noTmpfile.Load() {
		created, err := d.putTmpfile(dir, final, blob)
		if !errors.Is(err, errNoTmpfile) {
			if err != nil {
				return false, fmt.Errorf("put chunk %s: %w", id, err)
			}
			return created, nil
		}
		d.noTmpfile.Store(true)
	}
	if _, err := os.Stat(final); err == nil {
		return false, nil
	}
	tmp := d.tmpPath(id)
	if err := d.writeTmp(tmp, blob); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("put chunk %s: %w", id, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("put chunk %s: %w", id, err)
	}
	return true, nil
}

var errNoTmpfile = errors.New("O_TMPFILE not supported")

// putTmpfile writes blob to an unnamed file in dir (O_TMPFILE) and links it
// in as final: no temp name, no rename, and nothing left behind by a crash.
// An existing final (the same chunk) is success, and not created.
func (d *Dir) putTmpfile(dir, final string, blob []byte) (created bool, err error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
		return false, errNoTmpfile
	}
	if err != nil {
		return false, err
	}
	f := os.NewFile(uintptr(fd), final)
	defer f.Close()
	if _, err := f.Write(blob); err != nil {
		return false, err
	}
	d.startWriteback(fd)
	err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, final, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if errors.Is(err, unix.ENOENT) { // no /proc
		return false, errNoTmpfile
	}
	return err == nil, err
}

// Sync implements Syncer.
func (d *Dir) Sync(ctx context.Context) error {
	if d.NoSync {
		return nil
	}
	f, err := os.Open(d.root)
	if err != nil {
		return fmt.Errorf("sync chunk directory: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync chunk directory: %w", err)
	}
	return nil
}

// tmpPath is a fresh name under ROOT/tmp for a blob of id being written.
func (d *Dir) tmpPath(id chunker.ID) string {
	var rnd [8]byte
	rand.Read(rnd[:])
	return filepath.Join(d.root, "tmp", id.String()+"."+hex.EncodeToString(rnd[:]))
}

// writeTmp writes blob to a new file at path and starts its writeback; a
// Sync makes it durable.
func (d *Dir) writeTmp(path string, blob []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(blob); err != nil {
		f.Close()
		return err
	}
	d.startWriteback(int(f.Fd()))
	return f.Close()
}

// startWriteback asks the kernel to start writing a new blob to disk now, so
// that the Sync before the index commit waits for little: writing overlaps
// with chunking and compressing the rest of the NAR instead of following it.
// It does not wait and does not make the blob durable; Sync still does that.
func (d *Dir) startWriteback(fd int) {
	if !d.NoSync {
		unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
}

// Replace implements Replacer. The new blobs are written under ROOT/tmp,
// made durable together (one Sync), renamed over the old ones, and the
// renames made durable (another Sync): two syncs per call however many
// blobs it replaces, where one blob at a time took two fsyncs each.
func (d *Dir) Replace(ctx context.Context, blobs []Blob) error {
	st, err := d.Stage(ctx, blobs)
	if st == nil {
		return err
	}
	return errors.Join(err, st.Swap(ctx), st.Finish(ctx))
}

// Stage implements Stager: the first half of Replace, up to the first
// Sync. A blob that cannot be staged (not there: ErrNotFound, or not
// written) is left out and named in the error; the Staged holds the others,
// nil if none.
func (d *Dir) Stage(ctx context.Context, blobs []Blob) (Staged, error) {
	st := &dirStaged{d: d}
	var errs []error
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			st.Finish(ctx)
			return nil, err
		}
		final := d.path(b.ID)
		if _, err := os.Stat(final); errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("replace chunk %s: %w", b.ID, ErrNotFound))
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("replace chunk %s: %w", b.ID, err))
			continue
		}
		tmp := d.tmpPath(b.ID)
		if err := d.writeTmp(tmp, b.Data); err != nil {
			os.Remove(tmp)
			errs = append(errs, fmt.Errorf("replace chunk %s: %w", b.ID, err))
			continue
		}
		st.blobs = append(st.blobs, dirStagedBlob{b.ID, tmp, final})
	}
	if len(st.blobs) == 0 {
		return nil, errors.Join(errs...)
	}
	if err := d.Sync(ctx); err != nil {
		st.Finish(ctx)
		return nil, errors.Join(append(errs, fmt.Errorf("replace %d chunks: %w", len(st.blobs), err))...)
	}
	return st, errors.Join(errs...)
}

type dirStaged struct {
	d       *Dir
	blobs   []dirStagedBlob
	swapped bool
}

type dirStagedBlob struct {
	id         chunker.ID
	tmp, final string // tmp is "" once renamed
}

// Swap implements Staged: the renames.
func (s *dirStaged) Swap(context.Context) error {
	var errs []error
	for i, b := range s.blobs {
		if err := os.Rename(b.tmp, b.final); err != nil {
			errs = append(errs, fmt.Errorf("replace chunk %s: %w", b.id, err))
			continue
		}
		s.blobs[i].tmp = ""
		s.swapped = true
	}
	return errors.Join(errs...)
}

// Finish implements Staged: the second Sync, if anything was renamed.
func (s *dirStaged) Finish(ctx context.Context) error {
	for _, b := range s.blobs {
		if b.tmp != "" {
			os.Remove(b.tmp)
		}
	}
	if !s.swapped {
		return nil
	}
	if err := s.d.Sync(ctx); err != nil {
		return fmt.Errorf("replace %d chunks: %w", len(s.blobs), err)
	}
	return nil
}

// Delete implements Store.
func (d *Dir) Delete(ctx context.Context, id chunker.ID) error {
	err := os.Remove(d.path(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	return nil
}

// Walk implements Store.
func (d *Dir) Walk(ctx context.Context, fn func(id chunker.ID, size int64) error) error {
	return filepath.WalkDir(filepath.Join(d.root, "chunks"), func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		id, perr := chunker.ParseID(e.Name())
		if perr != nil {
			return nil // not ours
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		return fn(id, info.Size())
	})
}
