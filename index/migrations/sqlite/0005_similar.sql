-- Store-wide similar-chunk search for delta bases: a few min-hash
-- "super-features" of each chunk that may serve as a base. Add-only.
CREATE TABLE chunk_sims (
    sf       INTEGER NOT NULL,
    chunk_id BLOB NOT NULL,
    PRIMARY KEY (sf, chunk_id)
) WITHOUT ROWID;
