-- Every stored instance moves its study's updated_at, and with it an entry of
-- each index on that column. Nothing reads studies by updated_at except the
-- stable sweep, which looks for studies not yet stable and uses the partial
-- index studies_unstable (updated_at WHERE stable_at IS NULL). The full index
-- only cost an extra index page per ingest commit.
DROP INDEX studies_updated;
