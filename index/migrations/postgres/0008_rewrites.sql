-- Reverse-delta rewrites in flight: a chunk whose new bases Rebase recorded
-- and whose new blob is not known to be in place yet (ReleaseHolds ends it).
-- Another Rebase of the chunk meanwhile is refused, so two rewrites of one
-- chunk (two packages' older releases sharing it) cannot replace its blob
-- in the opposite order to the one they recorded it in. A mark older than
-- index.RewriteTTL is one a crash left, and no longer refuses.
CREATE TABLE rewrites (chunk_id BYTEA PRIMARY KEY, created_at BIGINT NOT NULL);
