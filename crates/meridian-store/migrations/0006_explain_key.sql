-- A fingerprint of a case's stored explanation, so routing passes compare it without
-- loading (and parsing) the explanation itself.
ALTER TABLE cases ADD COLUMN explain_key TEXT;
