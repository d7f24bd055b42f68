-- Delta chunks with several bases (store.EncZstdMultiDelta): every base in
-- dictionary order. chunks.base_id keeps the first, so a release that only
-- knows base_id still sees a base of every delta chunk. Add-only.
CREATE TABLE chunk_bases (
    chunk_id BYTEA NOT NULL,
    seq      SMALLINT NOT NULL,
    base_id  BYTEA NOT NULL,
    PRIMARY KEY (chunk_id, seq)
);
CREATE INDEX chunk_bases_base ON chunk_bases(base_id);
