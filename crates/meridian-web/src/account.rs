//! Signing in and out, the caller's own account (who am I, TOTP), and the
//! login page. Passwords are argon2id; sessions are random 256-bit secrets
//! of which only the SHA-256 is stored; a CSRF secret rides with each session.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_auth::{Permission, PrincipalKind, password, token, totp};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{
    Authed, CSRF_COOKIE, Credential, SESSION_COOKIE, audit_sign_in, client_addr, client_ip,
};
use crate::{ApiError, AppState};

/// Failures before an account locks, and for how long.
pub const MAX_FAILURES: i64 = 5;
pub const LOCK_MS: i64 = 15 * 60 * 1000;

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

/// Whether a browser request comes from another origin (login CSRF).
fn cross_origin(h: &HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let o = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    o != host
}

fn cookie_attrs(st: &AppState) -> &'static str {
    if st.cfg.secure_cookies {
        "; Path=/; SameSite=Strict; Secure"
    } else {
        "; Path=/; SameSite=Strict"
    }
}

/// Opens a session for `user`: sets the session and CSRF cookies.
pub async fn open_session(st: &AppState, user: &str) -> Result<(HeaderMap, String), ApiError> {
    let secret = token::secret();
    let csrf = token::secret();
    let ttl = st.cfg.session_ttl_ms;
    st.store
        .create_session(
            &token::hash_secret(&secret),
            user,
            &csrf,
            meridian_store::now_ms() + ttl,
        )
        .await?;
    let attrs = cookie_attrs(st);
    let max_age = ttl / 1000;
    let mut h = HeaderMap::new();
    for c in [
        format!("{SESSION_COOKIE}={secret}; HttpOnly; Max-Age={max_age}{attrs}"),
        format!("{CSRF_COOKIE}={csrf}; Max-Age={max_age}{attrs}"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((h, csrf))
}

fn failure(status: StatusCode, detail: &str) -> Response {
    ApiError::new(
        status,
        if status == StatusCode::TOO_MANY_REQUESTS {
            "Too Many Requests"
        } else {
            "Unauthorized"
        },
        detail,
    )
    .into_response()
}

/// `POST /auth/login` with JSON `{username, password, totp?}`.
pub async fn login(State(st): State<AppState>, req: Request) -> Response {
    let source = client_addr(&req);
    let ip = client_ip(&req);
    let headers = req.headers().clone();
    if cross_origin(&headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "cross-origin login refused",
        )
        .into_response();
    }
    let body = match axum::body::to_bytes(req.into_body(), 16 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad_request("login body too large or unreadable").into_response();
        }
    };
    let Ok(b) = serde_json::from_slice::<LoginBody>(&body) else {
        return ApiError::bad_request("expected JSON {\"username\", \"password\", \"totp\"?}")
            .into_response();
    };
    match login_inner(&st, &b, ip, &source).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn login_inner(
    st: &AppState,
    b: &LoginBody,
    ip: Option<std::net::IpAddr>,
    source: &str,
) -> Result<Response, ApiError> {
    let now = meridian_store::now_ms();
    let name = b.username.trim();
    if st.throttle.blocked(ip, now) {
        audit_sign_in(
            st,
            name,
            "none",
            "LOGIN-FAILED",
            source,
            429,
            "too many failures from this address",
        )
        .await?;
        let mut r = failure(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins from this address; try again later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("600"));
        return Ok(r);
    }
    let user = if meridian_store::accounts::valid_username(name) {
        st.store.user(name).await?
    } else {
        None
    };
    let hash = user
        .as_ref()
        .filter(|u| !u.disabled)
        .and_then(|u| u.password_hash.clone());
    let locked = user.as_ref().is_some_and(|u| u.locked_until > now);
    // Always pay the hashing cost, so timing does not tell which accounts exist.
    let pw = b.password.clone();
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => password::verify(&h, &pw),
        None => {
            password::verify(password::dummy_hash(), &pw);
            false
        }
    })
    .await
    .unwrap_or(false);
    if locked {
        st.throttle.failed(ip, now);
        audit_sign_in(
            st,
            name,
            "none",
            "LOGIN-FAILED",
            source,
            429,
            "account locked",
        )
        .await?;
        let mut r = failure(
            StatusCode::TOO_MANY_REQUESTS,
            "this account is temporarily locked after repeated failed sign-ins",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("900"));
        return Ok(r);
    }
    let Some(u) = user.filter(|_| ok) else {
        st.throttle.failed(ip, now);
        let until = if meridian_store::accounts::valid_username(name) {
            st.store.login_failed(name, MAX_FAILURES, LOCK_MS).await?
        } else {
            0
        };
        let detail = if until > 0 {
            "bad credentials; account now locked"
        } else {
            "bad credentials"
        };
        audit_sign_in(st, name, "none", "LOGIN-FAILED", source, 401, detail).await?;
        return Ok(failure(
            StatusCode::UNAUTHORIZED,
            "wrong user name or password",
        ));
    };
    if let Some(secret) = &u.totp_secret {
        let Some(code) = b.totp.as_deref().filter(|c| !c.is_empty()) else {
            return Ok((
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "application/problem+json")],
                json!({"type": "about:blank", "title": "Unauthorized", "status": 401,
                       "detail": "this account needs its one-time code", "totp_required": true})
                .to_string(),
            )
                .into_response());
        };
        let unix = (now / 1000) as u64;
        let step = totp::verify(secret, code, unix);
        let fresh = match step {
            Some(s) => st.store.use_totp_step(&u.username, s as i64).await?,
            None => false,
        };
        if !fresh {
            st.throttle.failed(ip, now);
            st.store
                .login_failed(&u.username, MAX_FAILURES, LOCK_MS)
                .await?;
            audit_sign_in(
                st,
                &u.username,
                &u.role,
                "LOGIN-FAILED",
                source,
                401,
                "wrong or reused one-time code",
            )
            .await?;
            return Ok(failure(
                StatusCode::UNAUTHORIZED,
                "wrong or reused one-time code",
            ));
        }
    }
    st.store.login_succeeded(&u.username).await?;
    let (headers, csrf) = open_session(st, &u.username).await?;
    audit_sign_in(st, &u.username, &u.role, "LOGIN", source, 200, "password").await?;
    Ok((
        headers,
        Json(json!({"user": u.username, "role": u.role, "site": u.site_id, "csrf": csrf})),
    )
        .into_response())
}

/// `POST /auth/logout`: ends the session (cookie) and clears the cookies.
pub async fn logout(Authed(r): Authed, req: Request) -> Response {
    let source = client_addr(&req);
    if let Some(Credential::Session { id_hash, .. }) = req.extensions().get::<Credential>()
        && let Err(e) = r.store.delete_session(id_hash).await
    {
        return ApiError::from(e).into_response();
    }
    if let Err(e) = audit_sign_in(
        &r,
        &r.who.name,
        r.who.role.as_str(),
        "LOGOUT",
        &source,
        200,
        "",
    )
    .await
    {
        return e.into_response();
    }
    let attrs = cookie_attrs(&r);
    let mut h = HeaderMap::new();
    for c in [
        format!("{SESSION_COOKIE}=; HttpOnly; Max-Age=0{attrs}"),
        format!("{CSRF_COOKIE}=; Max-Age=0{attrs}"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    (h, Json(json!({"signed_out": true}))).into_response()
}

/// `GET /api/me`
pub async fn me(Authed(r): Authed) -> Response {
    let perms: Vec<&str> = Permission::ALL
        .into_iter()
        .filter(|p| r.who.may(*p))
        .map(|p| p.as_str())
        .collect();
    let totp = if r.who.kind == PrincipalKind::User {
        r.store
            .user(&r.who.name)
            .await
            .ok()
            .flatten()
            .is_some_and(|u| u.totp)
    } else {
        false
    };
    Json(json!({
        "user": r.who.name,
        "role": r.who.role,
        "site": r.who.site,
        "kind": r.who.kind,
        "totp": totp,
        "permissions": perms,
    }))
    .into_response()
}

#[derive(Deserialize)]
pub struct TotpBody {
    secret: Option<String>,
    code: String,
}

/// `POST /api/me/totp/begin`: a new secret to load into an authenticator app.
pub async fn totp_begin(Authed(r): Authed) -> Response {
    if r.who.kind != PrincipalKind::User {
        return ApiError::bad_request("only user accounts have a second factor").into_response();
    }
    let secret = totp::new_secret();
    let uri = totp::uri(&secret, &r.who.name, "Meridian");
    Json(json!({"secret": secret, "uri": uri})).into_response()
}

/// `POST /api/me/totp {secret, code}`: turns the second factor on once a code proves the app has it.
pub async fn totp_enable(Authed(r): Authed, Json(b): Json<TotpBody>) -> Response {
    let Some(secret) = b.secret.filter(|s| s.len() <= 64) else {
        return ApiError::bad_request("secret missing").into_response();
    };
    let now = (meridian_store::now_ms() / 1000) as u64;
    if r.who.kind != PrincipalKind::User || totp::verify(&secret, &b.code, now).is_none() {
        return ApiError::bad_request("the code does not match that secret").into_response();
    }
    match r.store.set_totp_secret(&r.who.name, Some(&secret)).await {
        Ok(_) => Json(json!({"totp": true})).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /api/me/totp/disable {code}`
pub async fn totp_disable(Authed(r): Authed, Json(b): Json<TotpBody>) -> Response {
    let u = match r.store.user(&r.who.name).await {
        Ok(Some(u)) => u,
        Ok(None) => return ApiError::bad_request("not a user account").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let now = (meridian_store::now_ms() / 1000) as u64;
    let ok = u
        .totp_secret
        .as_deref()
        .is_some_and(|s| totp::verify(s, &b.code, now).is_some());
    if !ok {
        return ApiError::bad_request("wrong one-time code").into_response();
    }
    match r.store.set_totp_secret(&r.who.name, None).await {
        Ok(_) => Json(json!({"totp": false})).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /login`: the sign-in page (its script is `/login.js`, so the CSP needs no inline script).
pub async fn login_page(State(st): State<AppState>) -> Response {
    let sso = if st.oidc.is_some() {
        r#"<p class="or">or</p><a id="sso" class="button" href="/auth/oidc/login">Sign in with SSO</a>"#
    } else {
        ""
    };
    let body = format!(
        r#"<!doctype html><html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sign in - Meridian</title><link rel="stylesheet" href="/login.css">
<main><h1>Meridian</h1>
<form id="login" autocomplete="on">
<label>User name <input id="username" name="username" autocomplete="username" required></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
<label id="totp-row" hidden>One-time code <input id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code"></label>
<button id="submit" type="submit">Sign in</button>
<p id="error" role="alert"></p>
</form>{sso}</main>
<script src="/login.js"></script>"#
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-meridian-page"), "1"),
        ],
        body,
    )
        .into_response()
}

const LOGIN_JS: &str = r#"'use strict';
const f = document.getElementById('login');
const err = document.getElementById('error');
function nextUrl() {
  const n = new URLSearchParams(location.search).get('next') || '/';
  return (n.startsWith('/') && !n.startsWith('//')) ? n : '/';
}
f.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  err.textContent = '';
  const body = {
    username: document.getElementById('username').value,
    password: document.getElementById('password').value,
    totp: document.getElementById('totp').value || null,
  };
  const r = await fetch('/auth/login', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
  if (r.ok) { location.assign(nextUrl()); return; }
  let p = {};
  try { p = await r.json(); } catch (e) {}
  if (p.totp_required) { document.getElementById('totp-row').hidden = false; document.getElementById('totp').focus(); }
  err.textContent = p.detail || ('sign-in failed (' + r.status + ')');
});
"#;

const LOGIN_CSS: &str = "body{font-family:system-ui,sans-serif;background:#0b1a2a;color:#e8eef5;display:grid;place-items:center;min-height:100vh;margin:0}\
main{background:#13263a;padding:2rem 2.5rem;border-radius:8px;min-width:18rem}label{display:block;margin:.8rem 0}\
input{display:block;width:100%;padding:.4rem;margin-top:.2rem;box-sizing:border-box}button,.button{margin-top:1rem;padding:.5rem 1rem;background:#3b82f6;color:#fff;border:0;border-radius:4px;text-decoration:none;display:inline-block;cursor:pointer}\
#error{color:#fca5a5;min-height:1.2em}.or{margin:1rem 0 0}";

pub async fn login_js() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/javascript; charset=utf-8",
        )],
        LOGIN_JS,
    )
        .into_response()
}

pub async fn login_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        LOGIN_CSS,
    )
        .into_response()
}
