CREATE TABLE chunks (
    id          BYTEA PRIMARY KEY,
    size        INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    encoding    SMALLINT NOT NULL,
    base_id     BYTEA,
    created_at  BIGINT NOT NULL
);
CREATE INDEX chunks_base ON chunks(base_id) WHERE base_id IS NOT NULL;

CREATE TABLE nars (
    nar_hash             BYTEA PRIMARY KEY,
    nar_size             BIGINT NOT NULL,
    preset               TEXT NOT NULL,
    transform            TEXT NOT NULL DEFAULT '',
    chunk_count          INTEGER NOT NULL,
    upstream_size        BIGINT NOT NULL DEFAULT 0,
    upstream_compression TEXT NOT NULL DEFAULT '',
    created_at           BIGINT NOT NULL
);

CREATE TABLE nar_chunks (
    nar_hash BYTEA NOT NULL,
    seq      INTEGER NOT NULL,
    chunk_id BYTEA NOT NULL,
    "offset" BIGINT NOT NULL,
    size     INTEGER NOT NULL,
    PRIMARY KEY (nar_hash, seq)
);
CREATE INDEX nar_chunks_chunk ON nar_chunks(chunk_id);

CREATE TABLE narinfos (
    hash_part            TEXT PRIMARY KEY,
    store_path           TEXT NOT NULL,
    nar_hash             BYTEA NOT NULL,
    nar_size             BIGINT NOT NULL,
    refs                 TEXT NOT NULL,
    deriver              TEXT NOT NULL DEFAULT '',
    system               TEXT NOT NULL DEFAULT '',
    sigs                 TEXT NOT NULL,
    ca                   TEXT NOT NULL DEFAULT '',
    upstream_url         TEXT NOT NULL DEFAULT '',
    upstream_compression TEXT NOT NULL DEFAULT '',
    file_hash            TEXT NOT NULL DEFAULT '',
    file_size            BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL,
    last_access          BIGINT NOT NULL
);
CREATE INDEX narinfos_nar ON narinfos(nar_hash);
