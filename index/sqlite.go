package index

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/internal/narinfo"
)

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// SQLite is the embedded Index backend.
type SQLite struct {
	db  *sql.DB
	now func() time.Time
}

var _ Index = (*SQLite)(nil)

// OpenSQLite opens (creating and migrating if needed) the database at path.
// now may be nil (time.Now).
func OpenSQLite(path string, now func() time.Time) (*SQLite, error) {
	if now == nil {
		now = time.Now
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Set("_txlock", "immediate")
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(30000)", "synchronous(NORMAL)", "foreign_keys(ON)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+abs+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	s := &SQLite{db: db, now: now}
	if err := s.migrate(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	return s, nil
}

// Migrations are numbered files applied in order, each in its own
// transaction, and recorded in schema_migrations. They only ever add.
func (s *SQLite) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	files, err := fs.Glob(migrationFiles, "migrations/sqlite/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, f := range files {
		v, err := strconv.Atoi(strings.SplitN(filepath.Base(f), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: bad name", f)
		}
		body, _ := migrationFiles.ReadFile(f)
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, v).Scan(&n); err != nil {
			tx.Rollback()
			return err
		}
		if n > 0 {
			tx.Rollback()
			continue
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %s: %w", f, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, s.now().Unix()); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %s: %w", f, err)
		}
	}
	return nil
}

// Close implements Index.
func (s *SQLite) Close() error { return s.db.Close() }

const narinfoCols = `store_path, nar_hash, nar_size, refs, deriver, system, sigs, ca, upstream_url, upstream_compression, file_hash, file_size`

type scanner interface{ Scan(...any) error }

func scanNarInfo(row scanner) (*narinfo.NarInfo, error) {
	var (
		ni         narinfo.NarInfo
		hash       []byte
		refs, sigs string
	)
	if err := row.Scan(&ni.StorePath, &hash, &ni.NarSize, &refs, &ni.Deriver, &ni.System, &sigs, &ni.CA, &ni.URL, &ni.Compression, &ni.FileHash, &ni.FileSize); err != nil {
		return nil, err
	}
	copy(ni.NarHash[:], hash)
	ni.References = strings.Fields(refs)
	if sigs != "" {
		ni.Sigs = strings.Split(sigs, "\n")
	}
	return &ni, nil
}

// NarInfo implements Index.
func (s *SQLite) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error) {
	ni, err := scanNarInfo(s.db.QueryRowContext(ctx, `SELECT `+narinfoCols+` FROM narinfos WHERE hash_part = ?`, hashPart))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("narinfo %s: %w", hashPart, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("narinfo %s: %w", hashPart, err)
	}
	return ni, nil
}

func scanNAR(row scanner) (*NAR, error) {
	var n NAR
	var hash []byte
	var count int
	if err := row.Scan(&hash, &n.Size, &n.Preset, &n.Transform, &count, &n.UpstreamSize, &n.UpstreamCompression, &n.RefMap); err != nil {
		return nil, err
	}
	copy(n.Hash[:], hash)
	n.Chunks = make([]ChunkRef, 0, count)
	return &n, nil
}

const narCols = `nar_hash, nar_size, preset, transform, chunk_count, upstream_size, upstream_compression, refmap`

// NAR implements Index.
func (s *SQLite) NAR(ctx context.Context, narHash [32]byte) (*NAR, error) {
	n, err := scanNAR(s.db.QueryRowContext(ctx, `SELECT `+narCols+` FROM nars WHERE nar_hash = ?`, narHash[:]))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("nar %s: %w", narinfo.FormatHash(narHash), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("nar %s: %w", narinfo.FormatHash(narHash), err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT chunk_id, offset, size FROM nar_chunks WHERE nar_hash = ? ORDER BY seq`, narHash[:])
	if err != nil {
		return nil, fmt.Errorf("nar %s chunks: %w", narinfo.FormatHash(narHash), err)
	}
	defer rows.Close()
	for rows.Next() {
		var c ChunkRef
		var id []byte
		if err := rows.Scan(&id, &c.Offset, &c.Size); err != nil {
			return nil, err
		}
		copy(c.ID[:], id)
		n.Chunks = append(n.Chunks, c)
	}
	return n, rows.Err()
}

// HasNAR implements Index.
func (s *SQLite) HasNAR(ctx context.Context, narHash [32]byte) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM nars WHERE nar_hash = ?`, narHash[:]).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// HasChunks implements Index.
func (s *SQLite) HasChunks(ctx context.Context, ids []chunker.ID) ([]bool, error) {
	out := make([]bool, len(ids))
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stmt, err := conn.PrepareContext(ctx, `SELECT 1 FROM chunks WHERE id = ?`)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	for i, id := range ids {
		var one int
		err := stmt.QueryRowContext(ctx, id[:]).Scan(&one)
		switch {
		case err == nil:
			out[i] = true
		case !errors.Is(err, sql.ErrNoRows):
			return nil, fmt.Errorf("look up chunk %s: %w", id, err)
		}
	}
	return out, nil
}

// Commit implements Index.
func (s *SQLite) Commit(ctx context.Context, ni *narinfo.NarInfo, nar *NAR, newChunks []Chunk) error {
	what := narinfo.FormatHash(nar.Hash)
	if ni != nil {
		what = ni.StorePath
		if ni.NarHash != nar.Hash || ni.NarSize != nar.Size {
			return fmt.Errorf("commit %s: narinfo and NAR disagree on hash or size", ni.StorePath)
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("commit %s: %w", what, err)
	}
	defer tx.Rollback()
	now := s.now().Unix()
	if err := insertChunks(ctx, tx, newChunks, now); err != nil {
		return fmt.Errorf("commit %s: %w", what, err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO nars (`+narCols+`, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (nar_hash) DO NOTHING`,
		nar.Hash[:], nar.Size, nar.Preset, nar.Transform, len(nar.Chunks), nar.UpstreamSize, nar.UpstreamCompression, nar.RefMap, now)
	if err != nil {
		return fmt.Errorf("commit %s: insert nar: %w", what, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		if err := insertNARChunks(ctx, tx, nar); err != nil {
			return fmt.Errorf("commit %s: %w", what, err)
		}
		if nar.PName != "" {
			if _, err := tx.ExecContext(ctx, `INSERT INTO nar_names (pname, nar_hash) VALUES (?, ?)`, nar.PName, nar.Hash[:]); err != nil {
				return fmt.Errorf("commit %s: %w", what, err)
			}
		}
	}
	if ni != nil {
		if err := upsertNarInfo(ctx, tx, ni, now); err != nil {
			return fmt.Errorf("commit %s: %w", what, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM pending_narinfos WHERE nar_hash = ?`, nar.Hash[:]); err != nil {
			return fmt.Errorf("commit %s: %w", what, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit %s: %w", what, err)
	}
	return nil
}

func insertChunks(ctx context.Context, tx *sql.Tx, chunks []Chunk, now int64) error {
	if len(chunks) == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO chunks (id, size, stored_size, encoding, base_id, depth, level, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, c := range chunks {
		var base any
		if len(c.Bases) > 0 {
			base = c.Bases[0][:]
		}
		res, err := stmt.ExecContext(ctx, c.ID[:], c.Size, c.StoredSize, c.Encoding, base, c.Depth, c.Level, now)
		if err != nil {
			return fmt.Errorf("insert chunk %s: %w", c.ID, err)
		}
		n, _ := res.RowsAffected()
		if n == 0 {
			if err := holdOnConflict(sqliteRebase{ctx, tx, time.Unix(now, 0)}, c); err != nil {
				return err
			}
		}
		if n == 1 {
			for _, sf := range c.Sims {
				if _, err := tx.ExecContext(ctx, `INSERT INTO chunk_sims (sf, chunk_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, int64(sf), c.ID[:]); err != nil {
					return fmt.Errorf("insert chunk %s similarity key: %w", c.ID, err)
				}
			}
		}
		if n == 1 && len(c.Bases) > 1 {
			for i, b := range c.Bases {
				if _, err := tx.ExecContext(ctx, `INSERT INTO chunk_bases (chunk_id, seq, base_id) VALUES (?, ?, ?)`, c.ID[:], i, b[:]); err != nil {
					return fmt.Errorf("insert chunk %s base: %w", c.ID, err)
				}
			}
		}
	}
	return nil
}

func insertNARChunks(ctx context.Context, tx *sql.Tx, nar *NAR) error {
	check, err := tx.PrepareContext(ctx, `SELECT 1 FROM chunks WHERE id = ?`)
	if err != nil {
		return err
	}
	defer check.Close()
	ins, err := tx.PrepareContext(ctx, `INSERT INTO nar_chunks (nar_hash, seq, chunk_id, offset, size) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	seen := make(map[chunker.ID]bool, len(nar.Chunks))
	var off uint64
	for i, c := range nar.Chunks {
		if c.Offset != off {
			return fmt.Errorf("chunk %d of NAR at offset %d, want %d", i, c.Offset, off)
		}
		off += uint64(c.Size)
		if !seen[c.ID] {
			var one int
			if err := check.QueryRowContext(ctx, c.ID[:]).Scan(&one); errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("chunk %s: %w", c.ID, ErrMissingChunk)
			} else if err != nil {
				return err
			}
			seen[c.ID] = true
		}
		if _, err := ins.ExecContext(ctx, nar.Hash[:], i, c.ID[:], c.Offset, c.Size); err != nil {
			return fmt.Errorf("insert nar chunk %d: %w", i, err)
		}
	}
	if off != nar.Size {
		return fmt.Errorf("chunks cover %d bytes, NAR has %d", off, nar.Size)
	}
	return nil
}

func upsertNarInfo(ctx context.Context, tx *sql.Tx, ni *narinfo.NarInfo, now int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO narinfos (hash_part, `+narinfoCols+`, created_at, last_access)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (hash_part) DO UPDATE SET store_path = excluded.store_path, nar_hash = excluded.nar_hash,
			nar_size = excluded.nar_size, refs = excluded.refs, deriver = excluded.deriver, system = excluded.system,
			sigs = excluded.sigs, ca = excluded.ca, upstream_url = excluded.upstream_url,
			upstream_compression = excluded.upstream_compression, file_hash = excluded.file_hash, file_size = excluded.file_size`,
		ni.HashPart(), ni.StorePath, ni.NarHash[:], ni.NarSize, strings.Join(ni.SortedReferences(), " "), ni.Deriver, ni.System,
		strings.Join(ni.Sigs, "\n"), ni.CA, ni.URL, ni.Compression, ni.FileHash, ni.FileSize, now, now)
	if err != nil {
		return fmt.Errorf("record narinfo: %w", err)
	}
	return nil
}

// Predecessor implements Index.
func (s *SQLite) Predecessor(ctx context.Context, pname string) (*NAR, error) {
	var hash []byte
	err := s.db.QueryRowContext(ctx, `SELECT nar_hash FROM nar_names WHERE pname = ? ORDER BY seq DESC LIMIT 1`, pname).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("predecessor of %s: %w", pname, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var h [32]byte
	copy(h[:], hash)
	return s.NAR(ctx, h)
}

// Chunks implements Index.
func (s *SQLite) Chunks(ctx context.Context, ids []chunker.ID) ([]Chunk, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return sqliteChunks(ctx, conn, ids)
}

// sqliteQuerier is what *sql.Conn and *sql.Tx have in common.
type sqliteQuerier interface {
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// sqliteChunks reads chunk records through q (a connection or a
// transaction); a missing one has a zero ID.
func sqliteChunks(ctx context.Context, conn sqliteQuerier, ids []chunker.ID) ([]Chunk, error) {
	out := make([]Chunk, len(ids))
	stmt, err := conn.PrepareContext(ctx, `SELECT size, stored_size, encoding, base_id, depth, level FROM chunks WHERE id = ?`)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	for i, id := range ids {
		var c Chunk
		var base []byte
		err := stmt.QueryRowContext(ctx, id[:]).Scan(&c.Size, &c.StoredSize, &c.Encoding, &base, &c.Depth, &c.Level)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		c.ID = id
		if base != nil {
			c.Bases = []chunker.ID{chunker.ID(base)}
		}
		out[i] = c
	}
	for i := range out {
		if !multiBase(out[i].Encoding) {
			continue
		}
		rows, err := conn.QueryContext(ctx, `SELECT base_id FROM chunk_bases WHERE chunk_id = ? ORDER BY seq`, out[i].ID[:])
		if err != nil {
			return nil, err
		}
		out[i].Bases = nil
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				rows.Close()
				return nil, err
			}
			out[i].Bases = append(out[i].Bases, chunker.ID(b))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ChunksBelowLevel implements Index.
func (s *SQLite) ChunksBelowLevel(ctx context.Context, level int, after chunker.ID, limit int) ([]chunker.ID, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM chunks WHERE level < ? AND id > ? ORDER BY id LIMIT ?`, level, after[:], limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

// CountBelowLevel implements Index.
func (s *SQLite) CountBelowLevel(ctx context.Context, level int) (chunks, bytes int64, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(size), 0) FROM chunks WHERE level < ?`, level).Scan(&chunks, &bytes)
	return chunks, bytes, err
}

// Recode implements Index. The transaction is SQLite's write lock
// (immediate), which Rebase's takes too.
func (s *SQLite) Recode(ctx context.Context, id chunker.ID, from, to Chunk, replace func() error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record recompressed chunk %s: %w", id, err)
	}
	defer tx.Rollback()
	if err := checkRecode(sqliteRebase{ctx, tx, s.now()}, id, from); err != nil {
		return fmt.Errorf("record recompressed chunk %s: %w", id, err)
	}
	if replace != nil {
		if err := replace(); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE chunks SET stored_size = ?, encoding = ?, level = ? WHERE id = ?`, to.StoredSize, to.Encoding, to.Level, id[:]); err != nil {
		return fmt.Errorf("record recompressed chunk %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record recompressed chunk %s: %w", id, err)
	}
	return nil
}

// AddNarInfo implements Index.
func (s *SQLite) AddNarInfo(ctx context.Context, ni *narinfo.NarInfo) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var size uint64
	err = tx.QueryRowContext(ctx, `SELECT nar_size FROM nars WHERE nar_hash = ?`, ni.NarHash[:]).Scan(&size)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("narinfo %s: nar %s: %w", ni.StorePath, ni.NarHashString(), ErrNotFound)
	}
	if err != nil {
		return err
	}
	if size != ni.NarSize {
		return fmt.Errorf("narinfo %s: NarSize %d, but the recorded NAR has %d bytes", ni.StorePath, ni.NarSize, size)
	}
	if err := upsertNarInfo(ctx, tx, ni, s.now().Unix()); err != nil {
		return err
	}
	return tx.Commit()
}

// WalkNARs implements Index.
func (s *SQLite) WalkNARs(ctx context.Context, fn func(*NAR) error) error {
	rows, err := s.db.QueryContext(ctx, `SELECT `+qualified(narCols, "nars")+walkNARsFrom)
	if err != nil {
		return err
	}
	// Collect first: fn may query the index, and SQLite would otherwise hold
	// a read transaction open for the whole walk.
	var nars []*NAR
	for rows.Next() {
		n, err := scanNAR(rows)
		if err != nil {
			rows.Close()
			return err
		}
		nars = append(nars, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, n := range nars {
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}

// StorePaths implements Index.
func (s *SQLite) StorePaths(ctx context.Context, narHash [32]byte) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT store_path FROM narinfos WHERE nar_hash = ? ORDER BY store_path`, narHash[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// Stats implements Index.
func (s *SQLite) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM narinfos),
		(SELECT count(*) FROM nars), (SELECT coalesce(sum(nar_size),0) FROM nars), (SELECT coalesce(sum(upstream_size),0) FROM nars),
		(SELECT count(*) FROM chunks), (SELECT coalesce(sum(size),0) FROM chunks), (SELECT coalesce(sum(stored_size),0) FROM chunks),
		(SELECT count(*) FROM rewrites), (SELECT count(*) FROM base_holds)`).
		Scan(&st.NarInfos, &st.NARs, &st.NARBytes, &st.UpstreamSize, &st.Chunks, &st.ChunkBytes, &st.StoredBytes, &st.Rewrites, &st.Holds)
	return st, err
}

// Depths implements Index.
func (s *SQLite) Depths(ctx context.Context) ([]DepthStats, error) {
	rows, err := s.db.QueryContext(ctx, depthsQuery)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []DepthStats
	for rows.Next() {
		var d DepthStats
		if err := rows.Scan(&d.Depth, &d.Chunks, &d.ChunkBytes, &d.StoredBytes); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Footprint is the index's size: rows per table and bytes on disk.
type Footprint struct {
	Rows  int64 `json:"rows"`
	Bytes int64 `json:"bytes"`
}

// Footprint checkpoints the WAL and reports the rows in all tables and the
// database size (page_count × page_size).
func (s *SQLite) Footprint(ctx context.Context) (Footprint, error) {
	var f Footprint
	if _, err := s.db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		return f, err
	}
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM chunks) + (SELECT count(*) FROM nars) +
		(SELECT count(*) FROM nar_chunks) + (SELECT count(*) FROM narinfos)`).Scan(&f.Rows)
	if err != nil {
		return f, err
	}
	var pages, size int64
	if err := s.db.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		return f, err
	}
	if err := s.db.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&size); err != nil {
		return f, err
	}
	f.Bytes = pages * size
	return f, nil
}

// AddPending implements Index.
func (s *SQLite) AddPending(ctx context.Context, ni *narinfo.NarInfo) error {
	now := s.now()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record pending %s: %w", ni.StorePath, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM pending_narinfos WHERE created_at < ?`, now.Add(-PendingTTL).Unix()); err != nil {
		return fmt.Errorf("record pending %s: %w", ni.StorePath, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO pending_narinfos (nar_hash, hash_part, narinfo, created_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (nar_hash) DO UPDATE SET hash_part = excluded.hash_part, narinfo = excluded.narinfo, created_at = excluded.created_at`,
		ni.NarHash[:], ni.HashPart(), ni.String(), now.Unix()); err != nil {
		return fmt.Errorf("record pending %s: %w", ni.StorePath, err)
	}
	return tx.Commit()
}

// Pending implements Index.
func (s *SQLite) Pending(ctx context.Context, narHash [32]byte) (*narinfo.NarInfo, error) {
	var text string
	err := s.db.QueryRowContext(ctx, `SELECT narinfo FROM pending_narinfos WHERE nar_hash = ? AND created_at >= ?`,
		narHash[:], s.now().Add(-PendingTTL).Unix()).Scan(&text)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("pending narinfo: %w", err)
	}
	return parsePending(text)
}

// qualified prefixes each of a comma-separated column list with table.
func qualified(cols, table string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = table + "." + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

// SimilarChunks implements Index.
func (s *SQLite) SimilarChunks(ctx context.Context, sims []uint64, limit int) ([]chunker.ID, error) {
	hits := map[chunker.ID]int{}
	for _, sf := range sims {
		rows, err := s.db.QueryContext(ctx, `SELECT chunk_id FROM chunk_sims WHERE sf = ? LIMIT 16`, int64(sf))
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id []byte
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			hits[chunker.ID(id)]++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return rankSimilar(hits, limit), nil
}

// Rebase implements Index. The write transaction (BEGIN IMMEDIATE) excludes
// every other writer, so the rows it checks cannot change under it.
func (s *SQLite) Rebase(ctx context.Context, rw []Rewrite, maxDepth int) ([]RebaseResult, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	out, err := rebaseAll(sqliteRebase{ctx, tx, s.now()}, rw, maxDepth)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("rebase %d chunks: %w", len(rw), err)
	}
	return out, nil
}

// Dependents implements Index.
func (s *SQLite) Dependents(ctx context.Context, id chunker.ID) ([]chunker.ID, error) {
	rows, err := s.db.QueryContext(ctx, dependentsQuery, id[:], id[:], id[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

type sqliteRebase struct {
	ctx context.Context
	tx  *sql.Tx
	now time.Time
}

// lock is a no-op: SQLite's write transaction already excludes other
// writers.
func (r sqliteRebase) lock([]chunker.ID) error { return nil }

func (r sqliteRebase) chunks(ids []chunker.ID) ([]Chunk, error) {
	return sqliteChunks(r.ctx, r.tx, ids)
}

func (r sqliteRebase) dependents(id chunker.ID) ([]chunker.ID, error) {
	rows, err := r.tx.QueryContext(r.ctx, dependentsQuery, id[:], id[:], id[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

func (r sqliteRebase) set(c Chunk) error {
	if _, err := r.tx.ExecContext(r.ctx, `UPDATE chunks SET stored_size = ?, encoding = ?, base_id = ?, depth = ?, level = ? WHERE id = ?`,
		c.StoredSize, c.Encoding, c.Bases[0][:], c.Depth, c.Level, c.ID[:]); err != nil {
		return err
	}
	if _, err := r.tx.ExecContext(r.ctx, `DELETE FROM chunk_bases WHERE chunk_id = ?`, c.ID[:]); err != nil {
		return err
	}
	if multiBase(c.Encoding) {
		for i, b := range c.Bases {
			if _, err := r.tx.ExecContext(r.ctx, `INSERT INTO chunk_bases (chunk_id, seq, base_id) VALUES (?, ?, ?)`, c.ID[:], i, b[:]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r sqliteRebase) hold(id, base chunker.ID) error {
	_, err := r.tx.ExecContext(r.ctx, `INSERT OR IGNORE INTO base_holds (chunk_id, base_id) VALUES (?, ?)`, id[:], base[:])
	return err
}

// ReleaseHolds implements Index.
func (s *SQLite) ReleaseHolds(ctx context.Context, ids []chunker.ID) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, `DELETE FROM base_holds WHERE chunk_id = ?`, id[:]); err != nil {
			return fmt.Errorf("release holds of chunk %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM rewrites WHERE chunk_id = ?`, id[:]); err != nil {
			return fmt.Errorf("release holds of chunk %s: %w", id, err)
		}
	}
	return tx.Commit()
}

func (r sqliteRebase) held(id chunker.ID) ([]chunker.ID, error) {
	rows, err := r.tx.QueryContext(r.ctx, `SELECT base_id FROM base_holds WHERE chunk_id = ?`, id[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

func (r sqliteRebase) inFlight(id chunker.ID) (bool, error) {
	var n int
	err := r.tx.QueryRowContext(r.ctx, `SELECT count(*) FROM rewrites WHERE chunk_id = ? AND created_at > ?`, id[:], r.now.Add(-RewriteTTL).Unix()).Scan(&n)
	return n > 0, err
}

func (r sqliteRebase) markRewrite(id chunker.ID) error {
	_, err := r.tx.ExecContext(r.ctx, `INSERT INTO rewrites (chunk_id, created_at) VALUES (?, ?) ON CONFLICT (chunk_id) DO UPDATE SET created_at = excluded.created_at`, id[:], r.now.Unix())
	return err
}

func (r sqliteRebase) setDepth(id chunker.ID, depth uint8) error {
	_, err := r.tx.ExecContext(r.ctx, `UPDATE chunks SET depth = ? WHERE id = ?`, depth, id[:])
	return err
}
