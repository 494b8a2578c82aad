//! Authentication and authorisation, in one place. Every route is declared
//! through [`Routes`] with the permission it requires and whether it touches
//! patient data; one middleware ([`guard`]) resolves the caller (session cookie
//! or bearer token), enforces the policy table of meridian-auth, checks CSRF
//! for cookie sessions, and writes the audit record. Handlers receive the
//! caller through [`Authed`] and query the store within its scope.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Mutex;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use meridian_audit::AuditEvent;
use meridian_auth::{Permission, Principal, PrincipalKind, Role, Scope, token};
use serde::Serialize;

use crate::{ApiError, AppState};

pub const SESSION_COOKIE: &str = "meridian_session";
pub const CSRF_COOKIE: &str = "meridian_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What an access means for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// No record (health, assets, login page); denials are still recorded.
    None,
    /// An access to patient data: one record per request.
    PatientData,
    /// A configuration change (users, tokens, sites, grants): one record per request.
    Config,
    /// A search of the audit log itself.
    AuditLog,
}

/// One route and its policy.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: &'static str,
    pub audit: AuditKind,
    #[serde(skip)]
    pub perm: Permission,
}

/// Builds the router; a route cannot be added without its permission.
pub struct Routes {
    state: AppState,
    router: Router<AppState>,
    specs: Vec<RouteSpec>,
}

impl Routes {
    pub fn new(state: AppState) -> Routes {
        Routes {
            state,
            router: Router::new(),
            specs: Vec::new(),
        }
    }

    /// Adds `handler` for `method` at `path`, guarded by `perm`.
    pub fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        perm: Permission,
        audit: AuditKind,
        handler: H,
    ) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let spec = RouteSpec {
            method: method_name(&method),
            path,
            permission: perm.as_str(),
            audit,
            perm,
        };
        let filter = MethodFilter::try_from(method).unwrap_or(MethodFilter::GET);
        let mr = on(filter, handler).route_layer(axum::middleware::from_fn_with_state(
            (self.state.clone(), spec.clone()),
            guard,
        ));
        self.router = self.router.route(path, mr);
        self.specs.push(spec);
        self
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        perm: Permission,
        audit: AuditKind,
        h: H,
    ) -> Routes {
        self.add(Method::GET, path, perm, audit, h)
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        perm: Permission,
        audit: AuditKind,
        h: H,
    ) -> Routes {
        self.add(Method::POST, path, perm, audit, h)
    }

    pub fn delete<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        perm: Permission,
        audit: AuditKind,
        h: H,
    ) -> Routes {
        self.add(Method::DELETE, path, perm, audit, h)
    }

    pub fn put<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        perm: Permission,
        audit: AuditKind,
        h: H,
    ) -> Routes {
        self.add(Method::PUT, path, perm, audit, h)
    }

    pub fn finish(self) -> (Router<AppState>, Vec<RouteSpec>) {
        (self.router, self.specs)
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// A request with its authenticated caller; derefs to the app state.
pub struct Req {
    pub app: AppState,
    pub who: Principal,
}

impl Deref for Req {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

impl Req {
    /// The studies this caller may see.
    pub fn scope(&self) -> Scope {
        self.who.scope()
    }
}

/// Extractor of the caller, set by [`guard`]; a handler behind a public route
/// that asks for it answers 401 when nobody is signed in.
pub struct Authed(pub Req);

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        match parts.extensions.get::<Principal>() {
            Some(p) => Ok(Authed(Req {
                app: st.clone(),
                who: p.clone(),
            })),
            None => Err(unauthorized("sign in or present a bearer token")),
        }
    }
}

pub fn unauthorized(detail: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"meridian\""),
    );
    r
}

pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// How the caller authenticated.
#[derive(Debug, Clone)]
pub enum Credential {
    Session { id_hash: String, csrf: String },
    Token,
}

/// Resolves the caller from the request headers. `Ok(None)`: nobody;
/// `Err`: a credential was presented and is not valid.
pub async fn resolve(
    st: &AppState,
    h: &HeaderMap,
) -> Result<Option<(Principal, Credential)>, &'static str> {
    if let Some(auth) = h.get(header::AUTHORIZATION) {
        let text = auth
            .to_str()
            .map_err(|_| "malformed Authorization header")?;
        let Some(tok) = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
        else {
            return Err("only Bearer tokens are accepted");
        };
        let (id, secret) = token::parse(tok.trim()).ok_or("malformed token")?;
        let t = st
            .store
            .token(id)
            .await
            .map_err(|_| "token store unavailable")?
            .ok_or("unknown token")?;
        if !token::same(&t.secret_hash, &token::hash_secret(secret)) {
            return Err("unknown token");
        }
        if t.revoked_at.is_some() {
            return Err("token revoked");
        }
        if t.expires_at <= meridian_store::now_ms() {
            return Err("token expired");
        }
        let role: Role = t.role.parse().map_err(|_| "token has an unknown role")?;
        return Ok(Some((
            Principal {
                name: format!("token:{}:{}", t.token_id, t.name),
                kind: PrincipalKind::Token,
                role,
                site: t.site_id,
            },
            Credential::Token,
        )));
    }
    let Some(secret) = cookie(h, SESSION_COOKIE) else {
        return Ok(None);
    };
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let id_hash = token::hash_secret(secret);
    let Some(sess) = st
        .store
        .session(&id_hash)
        .await
        .map_err(|_| "session store unavailable")?
    else {
        return Ok(None);
    };
    let Some(u) = st
        .store
        .user(&sess.username)
        .await
        .map_err(|_| "user store unavailable")?
    else {
        return Ok(None);
    };
    if u.disabled {
        return Ok(None);
    }
    let role: Role = u.role.parse().map_err(|_| "user has an unknown role")?;
    Ok(Some((
        Principal {
            name: u.username,
            kind: PrincipalKind::User,
            role,
            site: u.site_id,
        },
        Credential::Session {
            id_hash,
            csrf: sess.csrf,
        },
    )))
}

pub fn client_addr(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

pub fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The one gate of every route.
// With the benchmark-only feature, everything after its early return is unreachable.
#[cfg_attr(
    feature = "bench-unguarded",
    allow(unreachable_code, unused_mut, unused_variables)
)]
pub async fn guard(
    State((st, spec)): State<(AppState, RouteSpec)>,
    mut req: Request,
    next: Next,
) -> Response {
    // Public routes never look at the caller: no lookups for health, metrics, assets.
    if spec.perm == Permission::Public {
        return next.run(req).await;
    }
    #[cfg(feature = "bench-unguarded")]
    {
        return unguarded::admit(req, next).await;
    }
    let resolved = resolve(&st, req.headers()).await;
    let source = client_addr(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let denied = format!("DENIED {method} {}", spec.path);
    let deny = |who: Option<&Principal>, why: &str, resp: Response| {
        let ev = event(who, &denied, &path, &source, why, resp.status().as_u16());
        let st = st.clone();
        async move { audited(&st, ev, resp).await }
    };
    let (who, cred) = match resolved {
        Ok(Some(x)) => x,
        other => {
            let why = other.err().unwrap_or("sign in or present a bearer token");
            return deny(None, why, unauthorized(why)).await;
        }
    };
    let forbidden = |detail: String| ApiError::new(StatusCode::FORBIDDEN, "Forbidden", detail);
    if !who.may(spec.perm) {
        let detail = format!(
            "the {} role does not hold the {} permission",
            who.role,
            spec.perm.as_str()
        );
        return deny(
            Some(&who),
            "missing permission",
            forbidden(detail).into_response(),
        )
        .await;
    }
    if let Credential::Session { csrf, .. } = &cred
        && is_unsafe(&method)
    {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !token::same(sent, csrf) {
            let detail = format!(
                "missing or wrong {CSRF_HEADER} header (cookie sessions need it on changes)"
            );
            return deny(Some(&who), "csrf", forbidden(detail).into_response()).await;
        }
    }
    let query: String = req.uri().query().unwrap_or("").chars().take(512).collect();
    req.extensions_mut().insert(who.clone());
    req.extensions_mut().insert(cred);
    let resp = next.run(req).await;
    let action = match spec.audit {
        AuditKind::None => return resp,
        AuditKind::PatientData => format!(
            "{} {method} {}",
            crate::audit::kind(&method, &path),
            spec.path
        ),
        AuditKind::Config => format!("ADMIN {method} {}", spec.path),
        AuditKind::AuditLog => format!("AUDIT-SEARCH {method} {}", spec.path),
    };
    let ev = event(
        Some(&who),
        &action,
        &path,
        &source,
        &query,
        resp.status().as_u16(),
    );
    audited(&st, ev, resp).await
}

/// Benchmarks only (feature `bench-unguarded`): what a request costs without the gate.
#[cfg(feature = "bench-unguarded")]
mod unguarded {
    use axum::extract::Request;
    use axum::middleware::Next;
    use axum::response::Response;
    use meridian_auth::{Principal, PrincipalKind, Role};

    use super::Credential;

    /// The principal of every request: an administrator without a site (scope: all).
    pub const NAME: &str = "bench-unguarded";

    /// Admits the request as [`NAME`]: no credential lookup, no policy, no CSRF, no audit.
    pub async fn admit(mut req: Request, next: Next) -> Response {
        req.extensions_mut().insert(Principal {
            name: NAME.to_owned(),
            kind: PrincipalKind::Token,
            role: Role::Admin,
            site: None,
        });
        req.extensions_mut().insert(Credential::Token);
        next.run(req).await
    }
}

/// An audit event of an HTTP access (the study comes from the path).
fn event(
    who: Option<&Principal>,
    action: &str,
    path: &str,
    source: &str,
    detail: &str,
    status: u16,
) -> AuditEvent {
    AuditEvent {
        at_ms: meridian_store::now_ms(),
        actor: who
            .map(|p| p.name.clone())
            .unwrap_or_else(|| "anonymous".into()),
        role: who
            .map(|p| p.role.as_str().to_owned())
            .unwrap_or_else(|| "none".into()),
        action: action.to_owned(),
        study_uid: crate::audit::study_of(path),
        source: source.to_owned(),
        outcome: status.to_string(),
        detail: detail.chars().take(512).collect(),
        ..Default::default()
    }
}

/// Appends one audit record (actor and detail bounded); 503 when it cannot be written.
pub async fn write_audit(st: &AppState, mut event: AuditEvent) -> Result<(), ApiError> {
    event.actor = event.actor.chars().take(128).collect();
    event.detail = event.detail.chars().take(512).collect();
    st.store.audit(event).await.map(|_| ()).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Audit unavailable",
            e.to_string(),
        )
    })
}

/// A sign-in event (login, failed login, logout) of `user`, by any method.
pub async fn audit_sign_in(
    st: &AppState,
    user: &str,
    role: &str,
    action: &str,
    source: &str,
    outcome: u16,
    detail: &str,
) -> Result<(), ApiError> {
    let ev = AuditEvent {
        at_ms: meridian_store::now_ms(),
        actor: user.to_owned(),
        role: role.to_owned(),
        action: action.to_owned(),
        source: source.to_owned(),
        outcome: outcome.to_string(),
        detail: detail.to_owned(),
        ..Default::default()
    };
    write_audit(st, ev).await
}

/// Writes the audit record of a response; an access that cannot be audited is not served.
async fn audited(st: &AppState, event: AuditEvent, resp: Response) -> Response {
    match write_audit(st, event).await {
        Ok(()) => resp,
        Err(e) => e.into_response(),
    }
}

/// Failed logins per client address: a sliding window that answers 429
/// before per-account lockout, so one address cannot lock out many accounts.
#[derive(Default)]
pub struct Throttle {
    inner: Mutex<HashMap<IpAddr, (u32, i64)>>,
}

pub const IP_MAX_FAILURES: u32 = 20;
pub const IP_WINDOW_MS: i64 = 10 * 60 * 1000;

impl Throttle {
    pub fn blocked(&self, ip: Option<IpAddr>, now: i64) -> bool {
        let Some(ip) = ip else { return false };
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.get(&ip)
            .is_some_and(|(n, start)| now - start < IP_WINDOW_MS && *n >= IP_MAX_FAILURES)
    }

    pub fn failed(&self, ip: Option<IpAddr>, now: i64) {
        let Some(ip) = ip else { return };
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() > 100_000 {
            g.retain(|_, (_, start)| now - *start < IP_WINDOW_MS);
        }
        let e = g.entry(ip).or_insert((0, now));
        if now - e.1 >= IP_WINDOW_MS {
            *e = (0, now);
        }
        e.0 += 1;
    }
}
