-- The zstd level each chunk's blob was made at (0: not recorded, written
-- before this migration), so `narstore recompress` knows what is left to do.
ALTER TABLE chunks ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
