//! Group administration over the API (the `admin` role): users, API tokens,
//! sites and their AE titles, and study grants. Each change is audited by
//! the guard as a configuration change.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_auth::{Role, password, token};
use serde::Deserialize;
use serde_json::json;

use crate::ApiError;
use crate::auth::Authed;

fn bad(e: impl std::fmt::Display) -> Response {
    ApiError::bad_request(e.to_string()).into_response()
}

fn store_err(e: meridian_store::StoreError) -> Response {
    match e {
        meridian_store::StoreError::Config(m) => {
            ApiError::new(StatusCode::CONFLICT, "Conflict", m).into_response()
        }
        e => ApiError::from(e).into_response(),
    }
}

fn role_site(role: &str, site: Option<&str>) -> Result<Role, ApiError> {
    let role: Role = role.parse().map_err(ApiError::bad_request)?;
    if role.needs_site() && site.is_none() {
        return Err(ApiError::bad_request(format!(
            "the {role} role needs a site"
        )));
    }
    Ok(role)
}

pub async fn users(Authed(r): Authed) -> Response {
    match r.store.users().await {
        Ok(u) => Json(u).into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct NewUser {
    username: String,
    role: String,
    site: Option<String>,
    password: Option<String>,
}

/// Creates a user; without a password one is generated and returned once.
pub async fn add_user(Authed(r): Authed, Json(b): Json<NewUser>) -> Response {
    let role = match role_site(&b.role, b.site.as_deref()) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let (pw, generated) = match b.password {
        Some(p) => (p, false),
        None => (password::generate(), true),
    };
    if let Err(e) = password::check_rule(&pw) {
        return bad(e);
    }
    let hash = match tokio::task::spawn_blocking(move || password::hash(&pw).map(|h| (h, pw))).await
    {
        Ok(Ok(x)) => x,
        _ => return ApiError::internal("hashing failed").into_response(),
    };
    if let Err(e) = r
        .store
        .add_user(&b.username, role, b.site.as_deref(), Some(&hash.0), None)
        .await
    {
        return store_err(e);
    }
    let mut out = json!({"username": b.username, "role": role, "site": b.site});
    if generated {
        out["password"] = json!(hash.1);
    }
    (StatusCode::CREATED, Json(out)).into_response()
}

pub async fn disable_user(Authed(r): Authed, Path(u): Path<String>) -> Response {
    set_disabled(r, u, true).await
}

pub async fn enable_user(Authed(r): Authed, Path(u): Path<String>) -> Response {
    set_disabled(r, u, false).await
}

async fn set_disabled(r: crate::auth::Req, u: String, d: bool) -> Response {
    match r.store.set_user_disabled(&u, d).await {
        Ok(true) => Json(json!({"username": u, "disabled": d})).into_response(),
        Ok(false) => ApiError::not_found("no such user").into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct NewPassword {
    password: String,
}

pub async fn set_password(
    Authed(r): Authed,
    Path(u): Path<String>,
    Json(b): Json<NewPassword>,
) -> Response {
    if let Err(e) = password::check_rule(&b.password) {
        return bad(e);
    }
    let pw = b.password;
    let Ok(Ok(hash)) = tokio::task::spawn_blocking(move || password::hash(&pw)).await else {
        return ApiError::internal("hashing failed").into_response();
    };
    match r.store.set_password_hash(&u, &hash).await {
        Ok(true) => Json(json!({"username": u})).into_response(),
        Ok(false) => ApiError::not_found("no such user").into_response(),
        Err(e) => store_err(e),
    }
}

pub async fn tokens(Authed(r): Authed) -> Response {
    match r.store.tokens().await {
        Ok(t) => Json(t).into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct NewToken {
    name: String,
    role: String,
    site: Option<String>,
    /// Lifetime in days [default 90, at most 3650].
    days: Option<u32>,
    /// Lifetime in seconds instead (short-lived tokens), at least 1.
    seconds: Option<u32>,
}

/// Creates an API token; its text is in this response only.
pub async fn add_token(Authed(r): Authed, Json(b): Json<NewToken>) -> Response {
    let role = match role_site(&b.role, b.site.as_deref()) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if b.name.is_empty() || b.name.len() > 64 || b.name.chars().any(char::is_control) {
        return bad("a token name is 1-64 printable characters");
    }
    let life_ms = match b.seconds {
        Some(s) => i64::from(s.max(1)) * 1000,
        None => i64::from(b.days.unwrap_or(90).clamp(1, 3650)) * 86_400_000,
    };
    let expires = meridian_store::now_ms() + life_ms;
    let t = token::generate();
    if let Err(e) = r
        .store
        .create_token(
            &t.id,
            &t.secret_hash,
            &b.name,
            role,
            b.site.as_deref(),
            &r.who.name,
            expires,
        )
        .await
    {
        return store_err(e);
    }
    (
        StatusCode::CREATED,
        Json(json!({"token_id": t.id, "token": t.text, "role": role, "site": b.site, "expires_at": expires})),
    )
        .into_response()
}

pub async fn revoke_token(Authed(r): Authed, Path(id): Path<String>) -> Response {
    match r.store.revoke_token(&id).await {
        Ok(true) => Json(json!({"token_id": id, "revoked": true})).into_response(),
        Ok(false) => ApiError::not_found("no such live token").into_response(),
        Err(e) => store_err(e),
    }
}

pub async fn sites(Authed(r): Authed) -> Response {
    match r.store.sites().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct NewSite {
    site_id: String,
    name: String,
}

pub async fn put_site(Authed(r): Authed, Json(b): Json<NewSite>) -> Response {
    match r.store.put_site(&b.site_id, &b.name).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({"site_id": b.site_id, "name": b.name})),
        )
            .into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize, Default)]
pub struct AeBody {
    host: Option<String>,
}

pub async fn put_ae(
    Authed(r): Authed,
    Path((site, ae)): Path<(String, String)>,
    body: Option<Json<AeBody>>,
) -> Response {
    let host = body.and_then(|b| b.0.host);
    if let Some(h) = &host
        && h.parse::<std::net::IpAddr>().is_err()
    {
        return bad("host must be an IP address");
    }
    match r.store.put_site_ae(&ae, &site, host.as_deref()).await {
        Ok(()) => {
            r.ae_changed.notify_waiters();
            Json(json!({"ae_title": ae, "site_id": site, "host": host})).into_response()
        }
        Err(e) => store_err(e),
    }
}

pub async fn delete_ae(Authed(r): Authed, Path(ae): Path<String>) -> Response {
    match r.store.delete_site_ae(&ae).await {
        Ok(true) => {
            r.ae_changed.notify_waiters();
            Json(json!({"ae_title": ae, "deleted": true})).into_response()
        }
        Ok(false) => ApiError::not_found("no such AE title").into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct GrantBody {
    username: String,
    study_uid: String,
}

pub async fn grant(Authed(r): Authed, Json(b): Json<GrantBody>) -> Response {
    if meridian_core::validate_uid(&b.study_uid).is_err() {
        return bad("invalid Study Instance UID");
    }
    match r.store.user(&b.username).await {
        Ok(Some(_)) => {}
        Ok(None) => return ApiError::not_found("no such user").into_response(),
        Err(e) => return store_err(e),
    }
    match r.store.grant(&b.username, &b.study_uid, &r.who.name).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({"username": b.username, "study_uid": b.study_uid})),
        )
            .into_response(),
        Err(e) => store_err(e),
    }
}

pub async fn revoke_grant(Authed(r): Authed, Path((u, study)): Path<(String, String)>) -> Response {
    match r.store.revoke_grant(&u, &study).await {
        Ok(true) => {
            Json(json!({"username": u, "study_uid": study, "revoked": true})).into_response()
        }
        Ok(false) => ApiError::not_found("no such grant").into_response(),
        Err(e) => store_err(e),
    }
}
