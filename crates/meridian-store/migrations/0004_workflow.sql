-- Teleradiology workflow: site profiles (contract, triage rules), reader profiles,
-- orders, cases (studies to read) and their timestamped transitions.
ALTER TABLE sites ADD COLUMN profile TEXT;

CREATE TABLE readers (
    username TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    last_seen BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    accession TEXT NOT NULL,
    placer TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    sex TEXT NOT NULL,
    modality TEXT NOT NULL,
    body_part TEXT NOT NULL,
    procedure_code TEXT NOT NULL,
    procedure_text TEXT NOT NULL,
    priority TEXT NOT NULL,
    reason TEXT NOT NULL,
    history TEXT NOT NULL,
    ordering TEXT NOT NULL,
    patient_class TEXT NOT NULL,
    location TEXT NOT NULL,
    ordered_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    study_uid TEXT,
    source TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX orders_accession ON orders (site_id, accession);
CREATE INDEX orders_placer ON orders (site_id, placer);
CREATE INDEX orders_patient ON orders (site_id, patient_id, issuer);
CREATE INDEX orders_status ON orders (status, site_id);

CREATE TABLE cases (
    study_uid TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    order_id TEXT,
    state TEXT NOT NULL,
    priority TEXT NOT NULL,
    protocol TEXT,
    subspecialty TEXT,
    modality TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    rvu_milli BIGINT NOT NULL,
    base_at BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    reading_ms BIGINT NOT NULL,
    assigned_to TEXT,
    assigned_at BIGINT,
    opened_at BIGINT,
    lock_holder TEXT,
    lock_expires BIGINT,
    released_by TEXT NOT NULL,
    explanation TEXT,
    flags TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX cases_queue ON cases (state, site_id, deadline);
CREATE INDEX cases_reader ON cases (assigned_to, state);
CREATE INDEX cases_deadline ON cases (state, deadline);

-- Every transition and priority change, timestamped (turnaround analytics, SSE feed).
CREATE TABLE case_events (
    seq_id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    site_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reader TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX case_events_study ON case_events (study_uid, at);
CREATE INDEX case_events_at ON case_events (at);
