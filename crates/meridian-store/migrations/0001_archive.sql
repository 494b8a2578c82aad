-- Archive index. Portable SQL for SQLite and PostgreSQL: TEXT and BIGINT only.
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    patient_name TEXT,
    patient_name_fuzzy TEXT,
    patient_id TEXT,
    issuer TEXT,
    birth_date TEXT,
    sex TEXT,
    study_date TEXT,
    study_time TEXT,
    accession TEXT,
    study_description TEXT,
    referring_physician TEXT,
    study_id TEXT,
    modalities TEXT NOT NULL DEFAULT '/',
    num_series BIGINT NOT NULL DEFAULT 0,
    num_instances BIGINT NOT NULL DEFAULT 0,
    received_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    stable_at BIGINT
);
CREATE INDEX studies_patient_id ON studies (patient_id, issuer);
CREATE INDEX studies_patient_name ON studies (patient_name);
CREATE INDEX studies_date ON studies (study_date, study_time);
CREATE INDEX studies_accession ON studies (accession);
CREATE INDEX studies_updated ON studies (updated_at);
CREATE INDEX studies_unstable ON studies (updated_at) WHERE stable_at IS NULL;

CREATE TABLE series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT,
    series_number BIGINT,
    series_description TEXT,
    body_part TEXT,
    series_date TEXT,
    pps_start_date TEXT,
    num_instances BIGINT NOT NULL DEFAULT 0,
    received_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX series_study ON series (study_uid);

CREATE TABLE instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    instance_number BIGINT,
    rows_ BIGINT,
    columns_ BIGINT,
    frames BIGINT,
    bits_allocated BIGINT,
    transfer_syntax TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX instances_series ON instances (series_uid, instance_number);
CREATE INDEX instances_study ON instances (study_uid);

-- Durable outbox of study events (e.g. `stable`), consumed by later modules.
CREATE TABLE study_events (
    id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX study_events_at ON study_events (at);
