//! Sites (tenants) and their AE titles, users, sessions, API tokens and
//! grants. Storage only: the rules (roles, lockout, hashing) live in
//! meridian-auth and are applied by the callers.

use meridian_auth::Role;
use serde::Serialize;

use crate::{Store, StoreError, now_ms};

/// A site identifier: 1-64 of `a-z 0-9 - _ .`.
pub fn valid_site_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A user name: 1-128 of `A-Z a-z 0-9 . _ @ -`.
pub fn valid_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// An AE title: 1-16 printable ASCII characters, no backslash, no leading/trailing space.
pub fn valid_ae(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s == s.trim()
        && s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub site_id: String,
    pub name: String,
    pub ae_titles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SiteAe {
    pub ae_title: String,
    pub site_id: String,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub username: String,
    pub role: String,
    pub site_id: Option<String>,
    #[serde(skip)]
    pub password_hash: Option<String>,
    #[serde(skip)]
    pub totp_secret: Option<String>,
    #[serde(skip)]
    pub totp_last_step: i64,
    pub totp: bool,
    pub disabled: bool,
    pub failed_logins: i64,
    pub locked_until: i64,
    pub oidc_subject: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub token_id: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub name: String,
    pub role: String,
    pub site_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub username: String,
    pub csrf: String,
    pub expires_at: i64,
}

type UserRowT = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
);
const USER_COLS: &str = "username, role, site_id, password_hash, totp_secret, totp_last_step, disabled, failed_logins, locked_until, oidc_subject, created_at";

fn user_of(r: UserRowT) -> User {
    User {
        username: r.0,
        role: r.1,
        site_id: r.2,
        password_hash: r.3,
        totp: r.4.is_some(),
        totp_secret: r.4,
        totp_last_step: r.5,
        disabled: r.6 != 0,
        failed_logins: r.7,
        locked_until: r.8,
        oidc_subject: r.9,
        created_at: r.10,
    }
}

type TokenRowT = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    Option<i64>,
);
const TOKEN_COLS: &str =
    "token_id, secret_hash, name, role, site_id, created_by, created_at, expires_at, revoked_at";

fn token_of(r: TokenRowT) -> Token {
    Token {
        token_id: r.0,
        secret_hash: r.1,
        name: r.2,
        role: r.3,
        site_id: r.4,
        created_by: r.5,
        created_at: r.6,
        expires_at: r.7,
        revoked_at: r.8,
    }
}

fn conflict(what: &str) -> StoreError {
    StoreError::Config(what.to_owned())
}

impl Store {
    fn pool(&self) -> &sqlx::AnyPool {
        &self.inner.db.pool
    }

    // ---- sites and AE titles ----

    /// Creates a site, or renames it when it exists.
    pub async fn put_site(&self, site_id: &str, name: &str) -> Result<(), StoreError> {
        if !valid_site_id(site_id) {
            return Err(conflict("a site id is 1-64 of a-z 0-9 - _ ."));
        }
        sqlx::query("INSERT INTO sites (site_id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (site_id) DO UPDATE SET name = $2")
            .bind(site_id)
            .bind(name)
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn site_exists(&self, site_id: &str) -> Result<bool, StoreError> {
        let r: Option<(String,)> = sqlx::query_as("SELECT site_id FROM sites WHERE site_id = $1")
            .bind(site_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(r.is_some())
    }

    pub async fn sites(&self) -> Result<Vec<Site>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT site_id, name FROM sites ORDER BY site_id")
                .fetch_all(self.pool())
                .await?;
        let aes = self.site_aes().await?;
        Ok(rows
            .into_iter()
            .map(|(site_id, name)| Site {
                ae_titles: aes
                    .iter()
                    .filter(|a| a.site_id == site_id)
                    .map(|a| a.ae_title.clone())
                    .collect(),
                site_id,
                name,
            })
            .collect())
    }

    /// Registers a calling AE title to a site (moving it if registered elsewhere).
    pub async fn put_site_ae(
        &self,
        ae_title: &str,
        site_id: &str,
        host: Option<&str>,
    ) -> Result<(), StoreError> {
        if !valid_ae(ae_title) {
            return Err(conflict("an AE title is 1-16 printable characters"));
        }
        if !self.site_exists(site_id).await? {
            return Err(conflict("no such site"));
        }
        sqlx::query("INSERT INTO site_aes (ae_title, site_id, host) VALUES ($1, $2, $3) ON CONFLICT (ae_title) DO UPDATE SET site_id = $2, host = $3")
            .bind(ae_title)
            .bind(site_id)
            .bind(host)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn delete_site_ae(&self, ae_title: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM site_aes WHERE ae_title = $1")
            .bind(ae_title)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn site_aes(&self) -> Result<Vec<SiteAe>, StoreError> {
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT ae_title, site_id, host FROM site_aes ORDER BY ae_title")
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(ae_title, site_id, host)| SiteAe {
                ae_title,
                site_id,
                host,
            })
            .collect())
    }

    /// The site of a study, `None` if the study does not exist; `Some(None)`
    /// for a study indexed before sites existed.
    pub async fn study_site(&self, study_uid: &str) -> Result<Option<Option<String>>, StoreError> {
        let r: Option<(Option<String>,)> =
            sqlx::query_as("SELECT site_id FROM studies WHERE study_uid = $1")
                .bind(study_uid)
                .fetch_optional(self.pool())
                .await?;
        Ok(r.map(|x| x.0))
    }

    // ---- users ----

    pub async fn add_user(
        &self,
        username: &str,
        role: Role,
        site_id: Option<&str>,
        password_hash: Option<&str>,
        oidc_subject: Option<&str>,
    ) -> Result<(), StoreError> {
        if !valid_username(username) {
            return Err(conflict("a user name is 1-128 of A-Z a-z 0-9 . _ @ -"));
        }
        if let Some(s) = site_id
            && !self.site_exists(s).await?
        {
            return Err(conflict("no such site"));
        }
        let r = sqlx::query("INSERT INTO users (username, role, site_id, password_hash, oidc_subject, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username) DO NOTHING")
            .bind(username)
            .bind(role.as_str())
            .bind(site_id)
            .bind(password_hash)
            .bind(oidc_subject)
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        if r.rows_affected() == 0 {
            return Err(conflict("that user name is taken"));
        }
        Ok(())
    }

    pub async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let r: Option<UserRowT> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.map(user_of))
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let r: Vec<UserRowT> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users ORDER BY username"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(r.into_iter().map(user_of).collect())
    }

    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Disables (or enables) a user; disabling ends their sessions.
    pub async fn set_user_disabled(
        &self,
        username: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.inner.db.begin_write().await?;
        let r = sqlx::query("UPDATE users SET disabled = $1 WHERE username = $2")
            .bind(i64::from(disabled))
            .bind(username)
            .execute(&mut *tx)
            .await?;
        if disabled {
            sqlx::query("DELETE FROM sessions WHERE username = $1")
                .bind(username)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_password_hash(&self, username: &str, hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE users SET password_hash = $1, failed_logins = 0, locked_until = 0 WHERE username = $2")
            .bind(hash)
            .bind(username)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_totp_secret(
        &self,
        username: &str,
        secret: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE users SET totp_secret = $1, totp_last_step = 0 WHERE username = $2",
        )
        .bind(secret)
        .bind(username)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records the TOTP step just used; false if it (or a later one) was used before (replay).
    pub async fn use_totp_step(&self, username: &str, step: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE username = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(username)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Counts a failed login; locks the account for `lock_ms` once `max` failures
    /// accumulate. Returns the lock expiry (0 = not locked).
    pub async fn login_failed(
        &self,
        username: &str,
        max: i64,
        lock_ms: i64,
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        let r: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE users SET failed_logins = failed_logins + 1, \
             locked_until = CASE WHEN failed_logins + 1 >= $1 THEN $2 ELSE locked_until END \
             WHERE username = $3 RETURNING failed_logins, locked_until",
        )
        .bind(max)
        .bind(now + lock_ms)
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.map(|x| if x.1 > now { x.1 } else { 0 }).unwrap_or(0))
    }

    pub async fn login_succeeded(&self, username: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = 0 WHERE username = $1")
            .bind(username)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Finds or creates the user behind an OIDC identity; the role and site
    /// come from the IdP on every login.
    pub async fn upsert_oidc_user(
        &self,
        username: &str,
        subject: &str,
        role: Role,
        site_id: Option<&str>,
    ) -> Result<User, StoreError> {
        if let Some(u) = self.user(username).await? {
            if u.oidc_subject.as_deref() != Some(subject) {
                return Err(conflict(
                    "a local account of that name exists and is not linked to this identity",
                ));
            }
            sqlx::query("UPDATE users SET role = $1, site_id = $2 WHERE username = $3")
                .bind(role.as_str())
                .bind(site_id)
                .bind(username)
                .execute(self.pool())
                .await?;
        } else {
            self.add_user(username, role, site_id, None, Some(subject))
                .await?;
        }
        self.user(username)
            .await?
            .ok_or_else(|| conflict("user vanished"))
    }

    // ---- sessions ----

    pub async fn create_session(
        &self,
        id_hash: &str,
        username: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        sqlx::query("INSERT INTO sessions (id_hash, username, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id_hash)
            .bind(username)
            .bind(csrf)
            .bind(now)
            .bind(expires_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// A live session by the hash of its secret.
    pub async fn session(&self, id_hash: &str) -> Result<Option<Session>, StoreError> {
        let r: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT username, csrf, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        Ok(r.map(|(username, csrf, expires_at)| Session {
            username,
            csrf,
            expires_at,
        }))
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    // ---- API tokens ----

    #[allow(clippy::too_many_arguments)]
    pub async fn create_token(
        &self,
        token_id: &str,
        secret_hash: &str,
        name: &str,
        role: Role,
        site_id: Option<&str>,
        created_by: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        if let Some(s) = site_id
            && !self.site_exists(s).await?
        {
            return Err(conflict("no such site"));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)"
        )))
        .bind(token_id)
        .bind(secret_hash)
        .bind(name)
        .bind(role.as_str())
        .bind(site_id)
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn token(&self, token_id: &str) -> Result<Option<Token>, StoreError> {
        let r: Option<TokenRowT> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLS} FROM api_tokens WHERE token_id = $1"
        )))
        .bind(token_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.map(token_of))
    }

    pub async fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        let r: Vec<TokenRowT> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(r.into_iter().map(token_of).collect())
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(token_id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- grants ----

    pub async fn grant(&self, username: &str, study_uid: &str, by: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO grants (username, study_uid, granted_by, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (username, study_uid) DO NOTHING")
            .bind(username)
            .bind(study_uid)
            .bind(by)
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn revoke_grant(&self, username: &str, study_uid: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM grants WHERE username = $1 AND study_uid = $2")
            .bind(username)
            .bind(study_uid)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn grants(&self, username: &str) -> Result<Vec<String>, StoreError> {
        let r: Vec<(String,)> =
            sqlx::query_as("SELECT study_uid FROM grants WHERE username = $1 ORDER BY study_uid")
                .bind(username)
                .fetch_all(self.pool())
                .await?;
        Ok(r.into_iter().map(|x| x.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(valid_site_id("site-a"));
        assert!(!valid_site_id("Site A"));
        assert!(!valid_site_id("../x"));
        assert!(valid_username("dr.house@example.org"));
        assert!(!valid_username("a b"));
        assert!(valid_ae("CT SCANNER 1"));
        assert!(!valid_ae(" X"));
        assert!(!valid_ae("A\\B"));
        assert!(!valid_ae("12345678901234567"));
    }
}
