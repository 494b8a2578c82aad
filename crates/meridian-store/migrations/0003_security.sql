-- Accounts, sites (tenants), AE titles, sessions, API tokens and grants.
CREATE TABLE sites (
    site_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Calling AE titles registered to a site; `host`, when set, must match the peer's IP.
CREATE TABLE site_aes (
    ae_title TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    host TEXT
);

CREATE TABLE users (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    site_id TEXT,
    password_hash TEXT,
    totp_secret TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    oidc_subject TEXT,
    created_at BIGINT NOT NULL
);

-- Only the SHA-256 of a session secret is stored.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (username);

CREATE TABLE api_tokens (
    token_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    site_id TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Explicit access of a user (radiologist) to a study.
CREATE TABLE grants (
    username TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (username, study_uid)
);
CREATE INDEX grants_study ON grants (study_uid);

-- Every study belongs to a site, decided at ingest.
ALTER TABLE studies ADD COLUMN site_id TEXT;
CREATE INDEX studies_site ON studies (site_id, study_date);
