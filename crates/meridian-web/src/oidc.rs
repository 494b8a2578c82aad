//! "Sign in with SSO": OpenID Connect authorization code + PKCE against an
//! external identity provider (meridian-oidc does the protocol). IdP groups
//! map to Meridian roles by configuration; the site comes from a claim.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use meridian_auth::Role;
use meridian_oidc::{OidcClient, OidcConfig, PendingLogin};
use serde::Deserialize;

use crate::auth::{audit_sign_in, client_addr, cookie};
use crate::{ApiError, AppState};

const STATE_COOKIE: &str = "meridian_oidc";
const MAX_PENDING: usize = 10_000;

/// OIDC settings and runtime state.
pub struct Oidc {
    cfg: OidcConfig,
    /// Claim with the user's groups.
    pub role_claim: String,
    /// Claim with the user's site.
    pub site_claim: String,
    /// IdP group → role, first match wins.
    pub roles: Vec<(String, Role)>,
    client: tokio::sync::OnceCell<OidcClient>,
    pending: Mutex<HashMap<String, PendingLogin>>,
}

impl Oidc {
    pub fn new(
        cfg: OidcConfig,
        role_claim: String,
        site_claim: String,
        roles: Vec<(String, Role)>,
    ) -> Oidc {
        Oidc {
            cfg,
            role_claim,
            site_claim,
            roles,
            client: tokio::sync::OnceCell::new(),
            pending: Mutex::default(),
        }
    }

    /// The client, discovering the provider on first use (so Meridian starts
    /// even while the IdP is down).
    async fn client(&self) -> Result<&OidcClient, ApiError> {
        self.client
            .get_or_try_init(|| OidcClient::discover(self.cfg.clone()))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "Identity provider unavailable",
                    e.to_string(),
                )
            })
    }

    /// The role for a set of IdP groups.
    pub fn role_for(&self, groups: &[String]) -> Option<Role> {
        self.roles
            .iter()
            .find(|(g, _)| groups.iter().any(|x| x == g))
            .map(|(_, r)| *r)
    }
}

fn enabled(st: &AppState) -> Result<&Oidc, ApiError> {
    st.oidc
        .as_deref()
        .ok_or_else(|| ApiError::not_found("single sign-on is not configured"))
}

/// `GET /auth/oidc/login`: to the provider, with state, nonce and PKCE.
pub async fn login(State(st): State<AppState>) -> Response {
    let o = match enabled(&st) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let client = match o.client().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let (url, pending) = client.begin();
    let state = pending.state.clone();
    {
        let mut p = o.pending.lock().unwrap_or_else(|e| e.into_inner());
        let now = meridian_store::now_ms();
        p.retain(|_, v| now - v.created_ms < meridian_oidc::PENDING_LOGIN_TTL_MS);
        if p.len() >= MAX_PENDING {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "too many sign-ins in progress",
            )
            .into_response();
        }
        p.insert(state.clone(), pending);
    }
    let secure = if st.cfg.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let mut r = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={state}; HttpOnly; SameSite=Lax; Path=/auth/oidc; Max-Age=600{secure}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/oidc/callback`: checks the response, maps the identity to a
/// user, opens a session.
pub async fn callback(
    State(st): State<AppState>,
    Query(q): Query<Callback>,
    req: Request,
) -> Response {
    let source = client_addr(&req);
    match callback_inner(&st, q, req.headers(), &source).await {
        Ok(r) => r,
        Err((e, who)) => {
            if let Err(a) = audit_sign_in(
                &st,
                &who,
                "none",
                "LOGIN-FAILED",
                &source,
                e.status.as_u16(),
                &format!("oidc: {}", e.detail),
            )
            .await
            {
                return a.into_response();
            }
            e.into_response()
        }
    }
}

async fn callback_inner(
    st: &AppState,
    q: Callback,
    h: &HeaderMap,
    source: &str,
) -> Result<Response, (ApiError, String)> {
    let anon = || "anonymous".to_owned();
    let o = enabled(st).map_err(|e| (e, anon()))?;
    let unauthorized = |d: String| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", d);
    if let Some(err) = q.error {
        let d = q.error_description.unwrap_or_default();
        return Err((
            unauthorized(format!("the identity provider refused: {err} {d}")),
            anon(),
        ));
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return Err((ApiError::bad_request("code and state are required"), anon()));
    };
    // The state must be the one this browser started with.
    if cookie(h, STATE_COOKIE) != Some(state.as_str()) {
        return Err((
            unauthorized("sign-in state does not match this browser".into()),
            anon(),
        ));
    }
    let pending = o
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&state)
        .ok_or_else(|| {
            (
                unauthorized("unknown or already used sign-in state".into()),
                anon(),
            )
        })?;
    let client = o.client().await.map_err(|e| (e, anon()))?;
    let id = client
        .finish(&pending, &code, &state)
        .await
        .map_err(|e| (unauthorized(e.to_string()), anon()))?;
    let name = id.username.clone();
    if !meridian_store::accounts::valid_username(&name) {
        return Err((
            unauthorized(format!(
                "user name {name:?} from the identity provider is not valid here"
            )),
            anon(),
        ));
    }
    let groups = meridian_oidc::groups(&id.claims, &o.role_claim);
    let Some(role) = o.role_for(&groups) else {
        return Err((
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("no Meridian role is mapped to the groups {groups:?}"),
            ),
            name,
        ));
    };
    let site = id
        .claims
        .get(&o.site_claim)
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    if role.needs_site() {
        match &site {
            Some(s) if st.store.site_exists(s).await.unwrap_or(false) => {}
            _ => {
                return Err((
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!(
                            "the {role} role needs a known site in the {} claim",
                            o.site_claim
                        ),
                    ),
                    name,
                ));
            }
        }
    }
    let site = if role.needs_site() || role == Role::Service {
        site
    } else {
        None
    };
    let subject = format!("{}|{}", id.issuer, id.subject);
    let user = st
        .store
        .upsert_oidc_user(&name, &subject, role, site.as_deref())
        .await
        .map_err(|e| {
            (
                ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
                name.clone(),
            )
        })?;
    if user.disabled {
        return Err((unauthorized("this account is disabled".into()), name));
    }
    let (mut headers, _) = crate::account::open_session(st, &name)
        .await
        .map_err(|e| (e, name.clone()))?;
    audit_sign_in(st, &name, role.as_str(), "LOGIN", source, 200, "oidc")
        .await
        .map_err(|e| (e, name.clone()))?;
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{STATE_COOKIE}=; HttpOnly; SameSite=Lax; Path=/auth/oidc; Max-Age=0"
    )) {
        headers.append(header::SET_COOKIE, v);
    }
    // A same-site navigation to `/` (a redirect would still count as cross-site,
    // and the SameSite=Strict session cookie would not be sent).
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("x-meridian-page", HeaderValue::from_static("1"));
    Ok((
        headers,
        "<!doctype html><meta charset=utf-8><meta http-equiv=\"refresh\" content=\"0;url=/\"><title>Signed in</title><p>Signed in. <a href=\"/\">Continue</a></p>",
    )
        .into_response())
}
