package index

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/narstore/narstore/chunker"
	"github.com/narstore/narstore/internal/narinfo"
)

// Postgres is the Index backend for many instances sharing one database.
type Postgres struct {
	pool *pgxpool.Pool
	now  func() time.Time
}

var _ Index = (*Postgres)(nil)

// migrationLock is the advisory lock key taken while migrating, so that
// instances starting together migrate once.
const migrationLock = 0x6e617273746f7265 // "narstore"

// OpenPostgres connects to dsn (postgres://…) and applies pending migrations.
func OpenPostgres(ctx context.Context, dsn string, now func() time.Time) (*Postgres, error) {
	if now == nil {
		now = time.Now
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", redactDSN(dsn), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s is not reachable: %w", redactDSN(dsn), err)
	}
	p := &Postgres{pool: pool, now: now}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", redactDSN(dsn), err)
	}
	return p, nil
}

// redactDSN hides a password in a connection string.
func redactDSN(dsn string) string {
	if i := strings.Index(dsn, "://"); i >= 0 {
		if at := strings.LastIndex(dsn, "@"); at > i {
			cred := dsn[i+3 : at]
			if c := strings.Index(cred, ":"); c >= 0 {
				return dsn[:i+3] + cred[:c] + ":xxxxx" + dsn[at:]
			}
		}
	}
	return dsn
}

func (p *Postgres) migrate(ctx context.Context) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return err
	}
	files, err := fs.Glob(migrationFiles, "migrations/postgres/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, f := range files {
		v, err := strconv.Atoi(strings.SplitN(filepath.Base(f), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: bad name", f)
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM schema_migrations WHERE version = $1`, v).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			continue
		}
		body, _ := migrationFiles.ReadFile(f)
		if _, err := tx.Exec(ctx, string(body)); err != nil {
			return fmt.Errorf("migration %s: %w", f, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, v, p.now().Unix()); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// Close implements Index.
func (p *Postgres) Close() error { p.pool.Close(); return nil }

const pgNarinfoCols = `store_path, nar_hash, nar_size, refs, deriver, system, sigs, ca, upstream_url, upstream_compression, file_hash, file_size`

func pgScanNarInfo(row pgx.Row) (*narinfo.NarInfo, error) {
	var (
		ni                narinfo.NarInfo
		hash              []byte
		refs, sigs        string
		narSize, fileSize int64
	)
	if err := row.Scan(&ni.StorePath, &hash, &narSize, &refs, &ni.Deriver, &ni.System, &sigs, &ni.CA, &ni.URL, &ni.Compression, &ni.FileHash, &fileSize); err != nil {
		return nil, err
	}
	copy(ni.NarHash[:], hash)
	ni.NarSize, ni.FileSize = uint64(narSize), uint64(fileSize)
	ni.References = strings.Fields(refs)
	if sigs != "" {
		ni.Sigs = strings.Split(sigs, "\n")
	}
	return &ni, nil
}

// NarInfo implements Index.
func (p *Postgres) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error) {
	ni, err := pgScanNarInfo(p.pool.QueryRow(ctx, `SELECT `+pgNarinfoCols+` FROM narinfos WHERE hash_part = $1`, hashPart))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("narinfo %s: %w", hashPart, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("narinfo %s: %w", hashPart, err)
	}
	return ni, nil
}

const pgNarCols = `nar_hash, nar_size, preset, transform, chunk_count, upstream_size, upstream_compression, refmap`

func pgScanNAR(row pgx.Row) (*NAR, error) {
	var n NAR
	var hash []byte
	var size, up int64
	var count int32
	if err := row.Scan(&hash, &size, &n.Preset, &n.Transform, &count, &up, &n.UpstreamCompression, &n.RefMap); err != nil {
		return nil, err
	}
	copy(n.Hash[:], hash)
	n.Size, n.UpstreamSize = uint64(size), uint64(up)
	n.Chunks = make([]ChunkRef, 0, count)
	return &n, nil
}

// NAR implements Index.
func (p *Postgres) NAR(ctx context.Context, narHash [32]byte) (*NAR, error) {
	n, err := pgScanNAR(p.pool.QueryRow(ctx, `SELECT `+pgNarCols+` FROM nars WHERE nar_hash = $1`, narHash[:]))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("nar %s: %w", narinfo.FormatHash(narHash), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("nar %s: %w", narinfo.FormatHash(narHash), err)
	}
	rows, err := p.pool.Query(ctx, `SELECT chunk_id, "offset", size FROM nar_chunks WHERE nar_hash = $1 ORDER BY seq`, narHash[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id []byte
		var off int64
		var size int32
		if err := rows.Scan(&id, &off, &size); err != nil {
			return nil, err
		}
		var c ChunkRef
		copy(c.ID[:], id)
		c.Offset, c.Size = uint64(off), uint32(size)
		n.Chunks = append(n.Chunks, c)
	}
	return n, rows.Err()
}

// HasNAR implements Index.
func (p *Postgres) HasNAR(ctx context.Context, narHash [32]byte) (bool, error) {
	var ok bool
	err := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM nars WHERE nar_hash = $1)`, narHash[:]).Scan(&ok)
	return ok, err
}

func idBytes(ids []chunker.ID) [][]byte {
	out := make([][]byte, len(ids))
	for i := range ids {
		out[i] = ids[i][:]
	}
	return out
}

// HasChunks implements Index.
func (p *Postgres) HasChunks(ctx context.Context, ids []chunker.ID) ([]bool, error) {
	rows, err := p.pool.Query(ctx, `SELECT id FROM chunks WHERE id = ANY($1)`, idBytes(ids))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := map[chunker.ID]bool{}
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		var id chunker.ID
		copy(id[:], b)
		found[id] = true
	}
	out := make([]bool, len(ids))
	for i, id := range ids {
		out[i] = found[id]
	}
	return out, rows.Err()
}

// ChunksBelowLevel implements Index.
func (p *Postgres) ChunksBelowLevel(ctx context.Context, level int, after chunker.ID, limit int) ([]chunker.ID, error) {
	rows, err := p.pool.Query(ctx, `SELECT id FROM chunks WHERE level < $1 AND id > $2 ORDER BY id LIMIT $3`, int16(level), after[:], limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

// CountBelowLevel implements Index.
func (p *Postgres) CountBelowLevel(ctx context.Context, level int) (chunks, bytes int64, err error) {
	err = p.pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(size), 0) FROM chunks WHERE level < $1`, int16(level)).Scan(&chunks, &bytes)
	return chunks, bytes, err
}

// Recode implements Index. The record's row stays locked (FOR UPDATE, as
// Rebase locks it) until the transaction ends.
func (p *Postgres) Recode(ctx context.Context, id chunker.ID, from, to Chunk, replace func() error) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		r := pgRebase{ctx, tx, p.now()}
		if err := r.lock([]chunker.ID{id}); err != nil {
			return err
		}
		if err := checkRecode(r, id, from); err != nil {
			return err
		}
		if replace != nil {
			if err := replace(); err != nil {
				return replaceError{err}
			}
		}
		_, err := tx.Exec(ctx, `UPDATE chunks SET stored_size = $1, encoding = $2, level = $3 WHERE id = $4`, int32(to.StoredSize), int16(to.Encoding), int16(to.Level), id[:])
		return err
	})
	var re replaceError
	if errors.As(err, &re) {
		return re.err
	}
	if err != nil {
		return fmt.Errorf("record recompressed chunk %s: %w", id, err)
	}
	return nil
}

// replaceError carries the error of Recode's replace out of its
// transaction as it was.
type replaceError struct{ err error }

func (e replaceError) Error() string { return e.err.Error() }

// Chunks implements Index.
func (p *Postgres) Chunks(ctx context.Context, ids []chunker.ID) ([]Chunk, error) {
	return pgChunks(ctx, p.pool, ids)
}

// pgQuerier is what a pool and a transaction have in common.
type pgQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// pgChunks reads chunk records through q (the pool or a transaction); a
// missing one has a zero ID.
func pgChunks(ctx context.Context, q pgQuerier, ids []chunker.ID) ([]Chunk, error) {
	rows, err := q.Query(ctx, `SELECT id, size, stored_size, encoding, base_id, depth, level FROM chunks WHERE id = ANY($1)`, idBytes(ids))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := map[chunker.ID]Chunk{}
	for rows.Next() {
		var idb, base []byte
		var size, stored int32
		var enc, depth, level int16
		if err := rows.Scan(&idb, &size, &stored, &enc, &base, &depth, &level); err != nil {
			return nil, err
		}
		var c Chunk
		copy(c.ID[:], idb)
		if base != nil {
			c.Bases = []chunker.ID{chunker.ID(base)}
		}
		c.Size, c.StoredSize, c.Encoding, c.Depth, c.Level = uint32(size), uint32(stored), uint8(enc), uint8(depth), uint8(level)
		found[c.ID] = c
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	var multi [][]byte
	for id, c := range found {
		if multiBase(c.Encoding) {
			multi = append(multi, append([]byte(nil), id[:]...))
			c.Bases = nil
			found[id] = c
		}
	}
	if len(multi) > 0 {
		brows, err := q.Query(ctx, `SELECT chunk_id, base_id FROM chunk_bases WHERE chunk_id = ANY($1) ORDER BY chunk_id, seq`, multi)
		if err != nil {
			return nil, err
		}
		defer brows.Close()
		for brows.Next() {
			var cid, b []byte
			if err := brows.Scan(&cid, &b); err != nil {
				return nil, err
			}
			c := found[chunker.ID(cid)]
			c.Bases = append(c.Bases, chunker.ID(b))
			found[chunker.ID(cid)] = c
		}
		if err := brows.Err(); err != nil {
			return nil, err
		}
	}
	out := make([]Chunk, len(ids))
	for i, id := range ids {
		out[i] = found[id]
	}
	return out, nil
}

// Commit implements Index.
func (p *Postgres) Commit(ctx context.Context, ni *narinfo.NarInfo, nar *NAR, newChunks []Chunk) error {
	what := narinfo.FormatHash(nar.Hash)
	if ni != nil {
		what = ni.StorePath
		if ni.NarHash != nar.Hash || ni.NarSize != nar.Size {
			return fmt.Errorf("commit %s: narinfo and NAR disagree on hash or size", ni.StorePath)
		}
	}
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		now := p.now().Unix()
		for _, c := range newChunks {
			var base any
			if len(c.Bases) > 0 {
				base = c.Bases[0][:]
			}
			tag, err := tx.Exec(ctx, `INSERT INTO chunks (id, size, stored_size, encoding, base_id, depth, level, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING`,
				c.ID[:], int32(c.Size), int32(c.StoredSize), int16(c.Encoding), base, int16(c.Depth), int16(c.Level), now)
			if err != nil {
				return fmt.Errorf("insert chunk %s: %w", c.ID, err)
			}
			if tag.RowsAffected() == 0 {
				if err := holdOnConflict(pgRebase{ctx, tx, time.Unix(now, 0)}, c); err != nil {
					return err
				}
			}
			if tag.RowsAffected() == 1 {
				for _, sf := range c.Sims {
					if _, err := tx.Exec(ctx, `INSERT INTO chunk_sims (sf, chunk_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, int64(sf), c.ID[:]); err != nil {
						return fmt.Errorf("insert chunk %s similarity key: %w", c.ID, err)
					}
				}
			}
			if tag.RowsAffected() == 1 && len(c.Bases) > 1 {
				for i, b := range c.Bases {
					if _, err := tx.Exec(ctx, `INSERT INTO chunk_bases (chunk_id, seq, base_id) VALUES ($1, $2, $3)`, c.ID[:], int16(i), b[:]); err != nil {
						return fmt.Errorf("insert chunk %s base: %w", c.ID, err)
					}
				}
			}
		}
		tag, err := tx.Exec(ctx, `INSERT INTO nars (`+pgNarCols+`, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (nar_hash) DO NOTHING`,
			nar.Hash[:], int64(nar.Size), nar.Preset, nar.Transform, len(nar.Chunks), int64(nar.UpstreamSize), nar.UpstreamCompression, nar.RefMap, now)
		if err != nil {
			return fmt.Errorf("insert nar: %w", err)
		}
		if tag.RowsAffected() == 1 {
			if err := p.insertNARChunks(ctx, tx, nar); err != nil {
				return err
			}
			if nar.PName != "" {
				if _, err := tx.Exec(ctx, `INSERT INTO nar_names (pname, nar_hash) VALUES ($1, $2)`, nar.PName, nar.Hash[:]); err != nil {
					return err
				}
			}
		}
		if ni != nil {
			if err := pgUpsertNarInfo(ctx, tx, ni, now); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `DELETE FROM pending_narinfos WHERE nar_hash = $1`, nar.Hash[:])
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit %s: %w", what, err)
	}
	return nil
}

func (p *Postgres) insertNARChunks(ctx context.Context, tx pgx.Tx, nar *NAR) error {
	var off uint64
	distinct := map[chunker.ID]bool{}
	rows := make([][]any, len(nar.Chunks))
	for i, c := range nar.Chunks {
		if c.Offset != off {
			return fmt.Errorf("chunk %d of NAR at offset %d, want %d", i, c.Offset, off)
		}
		off += uint64(c.Size)
		distinct[c.ID] = true
		rows[i] = []any{nar.Hash[:], int32(i), c.ID[:], int64(c.Offset), int32(c.Size)}
	}
	if off != nar.Size {
		return fmt.Errorf("chunks cover %d bytes, NAR has %d", off, nar.Size)
	}
	ids := make([]chunker.ID, 0, len(distinct))
	for id := range distinct {
		ids = append(ids, id)
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM chunks WHERE id = ANY($1)`, idBytes(ids)).Scan(&n); err != nil {
		return err
	}
	if n != len(ids) {
		return fmt.Errorf("%d of %d chunks: %w", len(ids)-n, len(ids), ErrMissingChunk)
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"nar_chunks"}, []string{"nar_hash", "seq", "chunk_id", "offset", "size"}, pgx.CopyFromRows(rows))
	return err
}

func pgUpsertNarInfo(ctx context.Context, tx pgx.Tx, ni *narinfo.NarInfo, now int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO narinfos (hash_part, `+pgNarinfoCols+`, created_at, last_access)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
		ON CONFLICT (hash_part) DO UPDATE SET store_path = excluded.store_path, nar_hash = excluded.nar_hash,
			nar_size = excluded.nar_size, refs = excluded.refs, deriver = excluded.deriver, system = excluded.system,
			sigs = excluded.sigs, ca = excluded.ca, upstream_url = excluded.upstream_url,
			upstream_compression = excluded.upstream_compression, file_hash = excluded.file_hash, file_size = excluded.file_size`,
		ni.HashPart(), ni.StorePath, ni.NarHash[:], int64(ni.NarSize), strings.Join(ni.SortedReferences(), " "), ni.Deriver, ni.System,
		strings.Join(ni.Sigs, "\n"), ni.CA, ni.URL, ni.Compression, ni.FileHash, int64(ni.FileSize), now, now)
	if err != nil {
		return fmt.Errorf("record narinfo: %w", err)
	}
	return nil
}

// AddNarInfo implements Index.
func (p *Postgres) AddNarInfo(ctx context.Context, ni *narinfo.NarInfo) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var size int64
		err := tx.QueryRow(ctx, `SELECT nar_size FROM nars WHERE nar_hash = $1`, ni.NarHash[:]).Scan(&size)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("narinfo %s: nar %s: %w", ni.StorePath, ni.NarHashString(), ErrNotFound)
		}
		if err != nil {
			return err
		}
		if uint64(size) != ni.NarSize {
			return fmt.Errorf("narinfo %s: NarSize %d, but the recorded NAR has %d bytes", ni.StorePath, ni.NarSize, size)
		}
		return pgUpsertNarInfo(ctx, tx, ni, p.now().Unix())
	})
}

// Predecessor implements Index.
func (p *Postgres) Predecessor(ctx context.Context, pname string) (*NAR, error) {
	var hash []byte
	err := p.pool.QueryRow(ctx, `SELECT nar_hash FROM nar_names WHERE pname = $1 ORDER BY seq DESC LIMIT 1`, pname).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("predecessor of %s: %w", pname, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var h [32]byte
	copy(h[:], hash)
	return p.NAR(ctx, h)
}

// WalkNARs implements Index.
func (p *Postgres) WalkNARs(ctx context.Context, fn func(*NAR) error) error {
	rows, err := p.pool.Query(ctx, `SELECT `+qualified(pgNarCols, "nars")+walkNARsFrom)
	if err != nil {
		return err
	}
	var nars []*NAR
	for rows.Next() {
		n, err := pgScanNAR(rows)
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
func (p *Postgres) StorePaths(ctx context.Context, narHash [32]byte) ([]string, error) {
	rows, err := p.pool.Query(ctx, `SELECT store_path FROM narinfos WHERE nar_hash = $1 ORDER BY store_path`, narHash[:])
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// Stats implements Index.
func (p *Postgres) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	var nb, up, cb, sb int64
	err := p.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM narinfos),
		(SELECT count(*) FROM nars), (SELECT coalesce(sum(nar_size),0)::bigint FROM nars), (SELECT coalesce(sum(upstream_size),0)::bigint FROM nars),
		(SELECT count(*) FROM chunks), (SELECT coalesce(sum(size),0)::bigint FROM chunks), (SELECT coalesce(sum(stored_size),0)::bigint FROM chunks),
		(SELECT count(*) FROM rewrites), (SELECT count(*) FROM base_holds)`).
		Scan(&st.NarInfos, &st.NARs, &nb, &up, &st.Chunks, &cb, &sb, &st.Rewrites, &st.Holds)
	st.NARBytes, st.UpstreamSize, st.ChunkBytes, st.StoredBytes = uint64(nb), uint64(up), uint64(cb), uint64(sb)
	return st, err
}

// Depths implements Index.
func (p *Postgres) Depths(ctx context.Context) ([]DepthStats, error) {
	rows, err := p.pool.Query(ctx, depthsQuery)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []DepthStats
	for rows.Next() {
		var depth int16
		var n, size, stored int64
		if err := rows.Scan(&depth, &n, &size, &stored); err != nil {
			return nil, err
		}
		out = append(out, DepthStats{Depth: int(depth), Chunks: n, ChunkBytes: uint64(size), StoredBytes: uint64(stored)})
	}
	return out, rows.Err()
}

// AddPending implements Index.
func (p *Postgres) AddPending(ctx context.Context, ni *narinfo.NarInfo) error {
	now := p.now()
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pending_narinfos WHERE created_at < $1`, now.Add(-PendingTTL).Unix()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO pending_narinfos (nar_hash, hash_part, narinfo, created_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (nar_hash) DO UPDATE SET hash_part = excluded.hash_part, narinfo = excluded.narinfo, created_at = excluded.created_at`,
			ni.NarHash[:], ni.HashPart(), ni.String(), now.Unix())
		return err
	})
	if err != nil {
		return fmt.Errorf("record pending %s: %w", ni.StorePath, err)
	}
	return nil
}

// Pending implements Index.
func (p *Postgres) Pending(ctx context.Context, narHash [32]byte) (*narinfo.NarInfo, error) {
	var text string
	err := p.pool.QueryRow(ctx, `SELECT narinfo FROM pending_narinfos WHERE nar_hash = $1 AND created_at >= $2`,
		narHash[:], p.now().Add(-PendingTTL).Unix()).Scan(&text)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("pending narinfo: %w", err)
	}
	return parsePending(text)
}

// SimilarChunks implements Index.
func (p *Postgres) SimilarChunks(ctx context.Context, sims []uint64, limit int) ([]chunker.ID, error) {
	keys := make([]int64, len(sims))
	for i, sf := range sims {
		keys[i] = int64(sf)
	}
	rows, err := p.pool.Query(ctx, `SELECT chunk_id FROM (SELECT chunk_id, row_number() OVER (PARTITION BY sf) AS n FROM chunk_sims WHERE sf = ANY($1)) s WHERE n <= 16`, keys)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	hits := map[chunker.ID]int{}
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		hits[chunker.ID(id)]++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return rankSimilar(hits, limit), nil
}

// Rebase implements Index. The rows of the chunks and their new bases are
// locked (in ID order, so two rebases cannot deadlock on them) before they
// are checked, so a concurrent rebase of any of them waits for this one.
// The dependents whose depths change are only found, and updated, after
// that, so two batches can still deadlock: one updating a dependent the
// other has locked while that one waits for a base the first holds (two
// instances rewriting releases of one package against the same newer
// chunks). PostgreSQL ends one of them; that one starts again from the
// top, checking every rewrite against the records as they are then.
func (p *Postgres) Rebase(ctx context.Context, rw []Rewrite, maxDepth int) ([]RebaseResult, error) {
	for attempt := 1; ; attempt++ {
		var out []RebaseResult
		err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			var err error
			out, err = rebaseAll(pgRebase{ctx, tx, p.now()}, rw, maxDepth)
			return err
		})
		if err == nil {
			return out, nil
		}
		if attempt < rebaseAttempts && retryable(err) && ctx.Err() == nil {
			continue
		}
		return nil, err
	}
}

// rebaseAttempts bounds how often Rebase starts again after a deadlock.
const rebaseAttempts = 4

// retryable reports whether err ended a transaction that may simply be run
// again: PostgreSQL broke a deadlock or a serialization conflict.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// Dependents implements Index.
func (p *Postgres) Dependents(ctx context.Context, id chunker.ID) ([]chunker.ID, error) {
	rows, err := p.pool.Query(ctx, pgDependentsQuery, id[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

const pgDependentsQuery = `SELECT id FROM chunks WHERE base_id = $1 UNION SELECT chunk_id FROM chunk_bases WHERE base_id = $1 UNION SELECT chunk_id FROM base_holds WHERE base_id = $1`

type pgRebase struct {
	ctx context.Context
	tx  pgx.Tx
	now time.Time
}

// lock locks the rows of ids in ID order, so two rebases cannot deadlock.
func (r pgRebase) lock(ids []chunker.ID) error {
	rows, err := r.tx.Query(r.ctx, `SELECT id FROM chunks WHERE id = ANY($1) ORDER BY id FOR UPDATE`, idBytes(ids))
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

func (r pgRebase) chunks(ids []chunker.ID) ([]Chunk, error) { return pgChunks(r.ctx, r.tx, ids) }

func (r pgRebase) dependents(id chunker.ID) ([]chunker.ID, error) {
	rows, err := r.tx.Query(r.ctx, pgDependentsQuery, id[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

func (r pgRebase) set(c Chunk) error {
	if _, err := r.tx.Exec(r.ctx, `UPDATE chunks SET stored_size = $1, encoding = $2, base_id = $3, depth = $4, level = $5 WHERE id = $6`,
		int32(c.StoredSize), int16(c.Encoding), c.Bases[0][:], int16(c.Depth), int16(c.Level), c.ID[:]); err != nil {
		return err
	}
	if _, err := r.tx.Exec(r.ctx, `DELETE FROM chunk_bases WHERE chunk_id = $1`, c.ID[:]); err != nil {
		return err
	}
	if multiBase(c.Encoding) {
		for i, b := range c.Bases {
			if _, err := r.tx.Exec(r.ctx, `INSERT INTO chunk_bases (chunk_id, seq, base_id) VALUES ($1, $2, $3)`, c.ID[:], int16(i), b[:]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r pgRebase) hold(id, base chunker.ID) error {
	_, err := r.tx.Exec(r.ctx, `INSERT INTO base_holds (chunk_id, base_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id[:], base[:])
	return err
}

// ReleaseHolds implements Index.
func (p *Postgres) ReleaseHolds(ctx context.Context, ids []chunker.ID) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM base_holds WHERE chunk_id = ANY($1)`, idBytes(ids)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM rewrites WHERE chunk_id = ANY($1)`, idBytes(ids))
		return err
	})
	if err != nil {
		return fmt.Errorf("release holds of %d chunks: %w", len(ids), err)
	}
	return nil
}

func (r pgRebase) held(id chunker.ID) ([]chunker.ID, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT base_id FROM base_holds WHERE chunk_id = $1`, id[:])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectIDs(rows)
}

func (r pgRebase) inFlight(id chunker.ID) (bool, error) {
	var n int
	err := r.tx.QueryRow(r.ctx, `SELECT count(*) FROM rewrites WHERE chunk_id = $1 AND created_at > $2`, id[:], r.now.Add(-RewriteTTL).Unix()).Scan(&n)
	return n > 0, err
}

func (r pgRebase) markRewrite(id chunker.ID) error {
	_, err := r.tx.Exec(r.ctx, `INSERT INTO rewrites (chunk_id, created_at) VALUES ($1, $2) ON CONFLICT (chunk_id) DO UPDATE SET created_at = excluded.created_at`, id[:], r.now.Unix())
	return err
}

func (r pgRebase) setDepth(id chunker.ID, depth uint8) error {
	_, err := r.tx.Exec(r.ctx, `UPDATE chunks SET depth = $1 WHERE id = $2`, int16(depth), id[:])
	return err
}
