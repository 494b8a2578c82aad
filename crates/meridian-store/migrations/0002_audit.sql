-- Tamper-evident audit trail: each row carries the hash of its predecessor.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    patient_id TEXT,
    issuer TEXT,
    study_uid TEXT,
    accession TEXT,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_study ON audit_log (study_uid);
CREATE INDEX audit_log_patient ON audit_log (patient_id, issuer);
