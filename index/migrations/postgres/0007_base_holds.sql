-- Bases a chunk's blob may still need while reverse deltas rewrite it. The
-- new bases are recorded before the blob is replaced, so until the new blob
-- is in place (or for good, after a crash in between) the old blob's bases
-- are held here, and count for the deletion rule like bases.
CREATE TABLE base_holds (chunk_id BYTEA NOT NULL, base_id BYTEA NOT NULL, PRIMARY KEY (chunk_id, base_id));
CREATE INDEX base_holds_base ON base_holds (base_id);
