-- Study lists are ordered newest first (study date, time, then UID: a total
-- order). An index in exactly that order lets a page at any offset walk index
-- entries only: rows before the page are skipped without reading the table.
-- Without it, a deep page (offset 9 950 of 10 000 studies) read every skipped
-- row and sorted the ties: 11 ms in SQLite, against 0.4 ms with it.
-- The new indexes start with the columns of the ones they replace.
CREATE INDEX studies_order ON studies (study_date DESC, study_time DESC, study_uid);
CREATE INDEX studies_site_order ON studies (site_id, study_date DESC, study_time DESC, study_uid);
DROP INDEX studies_date;
DROP INDEX studies_site;
