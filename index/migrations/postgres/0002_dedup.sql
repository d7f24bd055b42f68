-- Store-reference normalization and delta chunks. Add-only: instances of the
-- previous release keep working (they never read these columns).
ALTER TABLE nars ADD COLUMN refmap BYTEA;
ALTER TABLE chunks ADD COLUMN depth SMALLINT NOT NULL DEFAULT 0;
CREATE TABLE nar_names (
    seq      BIGSERIAL PRIMARY KEY,
    pname    TEXT NOT NULL,
    nar_hash BYTEA NOT NULL
);
CREATE INDEX nar_names_pname ON nar_names(pname, seq);
