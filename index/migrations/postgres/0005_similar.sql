-- Store-wide similar-chunk search for delta bases: a few min-hash
-- "super-features" of each chunk that may serve as a base. Add-only.
CREATE TABLE chunk_sims (
    sf       BIGINT NOT NULL,
    chunk_id BYTEA NOT NULL,
    PRIMARY KEY (sf, chunk_id)
);
