-- Delta chunks with several bases (store.EncZstdMultiDelta): every base in
-- dictionary order. chunks.base_id keeps the first, so a release that only
-- knows base_id still sees a base of every delta chunk. Add-only.
CREATE TABLE chunk_bases (
    chunk_id BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    base_id  BLOB NOT NULL,
    PRIMARY KEY (chunk_id, seq)
) WITHOUT ROWID;
CREATE INDEX chunk_bases_base ON chunk_bases(base_id);
