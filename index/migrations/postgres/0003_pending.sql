-- Pull-through: upstream narinfos whose NAR is not stored yet, shared by every
-- instance so a NAR request can reach any of them. Add-only.
CREATE TABLE pending_narinfos (
    nar_hash   BYTEA PRIMARY KEY,
    hash_part  TEXT NOT NULL,
    narinfo    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX pending_narinfos_created ON pending_narinfos(created_at);
