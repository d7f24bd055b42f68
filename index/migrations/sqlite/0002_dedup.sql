-- Store-reference normalization and delta chunks. Add-only: instances of the
-- previous release keep working (they never read these columns).
ALTER TABLE nars ADD COLUMN refmap BLOB;
ALTER TABLE chunks ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
-- Package lineage: which NARs carried a package name, newest last; the
-- predecessor of a new version is the newest NAR of the same name.
CREATE TABLE nar_names (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    pname    TEXT NOT NULL,
    nar_hash BLOB NOT NULL
);
CREATE INDEX nar_names_pname ON nar_names(pname, seq);
