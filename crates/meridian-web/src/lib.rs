//! Meridian's HTTP side: DICOMweb (PS3.18: STOW-RS, QIDO-RS, WADO-RS incl.
//! rendered/thumbnail), `/healthz`, `/metrics`, and the optional viewer.
//! Thin: matching, parsing and storage live in the lower crates.

mod account;
mod admin;
mod audit;
mod auditlog;
pub mod auth;
mod error;
mod multipart;
pub mod oidc;
mod qido;
mod stow;
mod viewer;
mod wado;
pub mod workflow;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use meridian_auth::Permission::{
    self, AuditRead, Authenticated, Coordinate, ImagesRead, ImagesStore, Operations, Orders,
    Public, Worklist,
};
use meridian_store::Store;
use meridian_store::ingest::Ingest;
use tower_http::trace::TraceLayer;

pub use auth::{AuditKind, RouteSpec, Throttle};
pub use error::ApiError;

/// True only in benchmark builds (feature `bench-unguarded`): every non-public route
/// admits any request as an administrator, without authorisation or audit records.
pub const UNGUARDED: bool = cfg!(feature = "bench-unguarded");

/// Largest body of a JSON API request (sign-in, administration).
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Web settings.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Largest accepted STOW-RS request body.
    pub max_request: usize,
    /// Directory of a prebuilt viewer (OHIF dist) served at `/`.
    pub viewer_dir: Option<PathBuf>,
    /// The listening port, for URLs when a client's Host header has none.
    pub http_port: u16,
    /// Cookies carry `Secure` (served over TLS).
    pub secure_cookies: bool,
    /// Session lifetime.
    pub session_ttl_ms: i64,
    /// Longest time to answer a request (the response's body, e.g. an SSE stream or a
    /// WADO-RS download, is not limited by it). Request bodies must also keep flowing:
    /// [`BODY_IDLE_TIMEOUT`] without a byte ends the request.
    pub request_timeout: std::time::Duration,
}

/// A request body that sends nothing for this long is cut off (slow-client defence).
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ingest: Ingest,
    pub cfg: Arc<WebConfig>,
    /// Failed sign-ins per client address.
    pub throttle: Arc<Throttle>,
    /// Signalled when AE title registrations change (the DIMSE side reloads them).
    pub ae_changed: Arc<tokio::sync::Notify>,
    /// The route table, for `/api/routes`.
    pub routes: Arc<OnceLock<Vec<RouteSpec>>>,
    /// Single sign-on, when configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// The workflow service (orders, cases, routing, worklists).
    pub dispatch: Arc<meridian_dispatch::Dispatch>,
}

impl AppState {
    pub fn new(store: Store, ingest: Ingest, cfg: WebConfig) -> AppState {
        AppState {
            dispatch: meridian_dispatch::Dispatch::new(store.clone(), Default::default()),
            store,
            ingest,
            cfg: Arc::new(cfg),
            throttle: Arc::default(),
            ae_changed: Arc::default(),
            routes: Arc::default(),
            oidc: None,
        }
    }
}

use AuditKind::{AuditLog, Config, PatientData};
const NO: AuditKind = AuditKind::None;
const ADMIN: Permission = Permission::Admin;

/// Every route with its permission: the one policy of the HTTP side.
fn routes(state: &AppState) -> auth::Routes {
    auth::Routes::new(state.clone())
        .get("/healthz", Public, NO, healthz)
        .get("/metrics", Public, NO, metrics)
        .get("/app-config.js", Public, NO, viewer::app_config)
        .get("/login", Public, NO, account::login_page)
        .get("/login.js", Public, NO, account::login_js)
        .get("/login.css", Public, NO, account::login_css)
        .post("/auth/login", Public, NO, account::login)
        .post("/auth/logout", Authenticated, NO, account::logout)
        .get("/auth/oidc/login", Public, NO, oidc::login)
        .get("/auth/oidc/callback", Public, NO, oidc::callback)
        .get("/api/me", Authenticated, NO, account::me)
        .post("/api/me/totp/begin", Authenticated, NO, account::totp_begin)
        .post("/api/me/totp", Authenticated, Config, account::totp_enable)
        .post("/api/me/totp/disable", Authenticated, Config, account::totp_disable)
        .get("/api/routes", Authenticated, NO, route_list)
        // DICOMweb
        .get("/dicom-web/studies", ImagesRead, PatientData, qido::studies)
        .post("/dicom-web/studies", ImagesStore, PatientData, stow::stow)
        .get("/dicom-web/series", ImagesRead, PatientData, qido::all_series)
        .get("/dicom-web/instances", ImagesRead, PatientData, qido::all_instances)
        .get("/dicom-web/studies/{study}", ImagesRead, PatientData, wado::study)
        .post("/dicom-web/studies/{study}", ImagesStore, PatientData, stow::stow_study)
        .get("/dicom-web/studies/{study}/metadata", ImagesRead, PatientData, wado::study_metadata)
        .get("/dicom-web/studies/{study}/rendered", ImagesRead, PatientData, wado::study_rendered)
        .get("/dicom-web/studies/{study}/thumbnail", ImagesRead, PatientData, wado::study_thumbnail)
        .get("/dicom-web/studies/{study}/series", ImagesRead, PatientData, qido::study_series)
        .get("/dicom-web/studies/{study}/instances", ImagesRead, PatientData, qido::study_instances)
        .get("/dicom-web/studies/{study}/series/{series}", ImagesRead, PatientData, wado::series)
        .get("/dicom-web/studies/{study}/series/{series}/metadata", ImagesRead, PatientData, wado::series_metadata)
        .get("/dicom-web/studies/{study}/series/{series}/rendered", ImagesRead, PatientData, wado::series_rendered)
        .get("/dicom-web/studies/{study}/series/{series}/thumbnail", ImagesRead, PatientData, wado::series_thumbnail)
        .get("/dicom-web/studies/{study}/series/{series}/instances", ImagesRead, PatientData, qido::series_instances)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}", ImagesRead, PatientData, wado::instance)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata", ImagesRead, PatientData, wado::instance_metadata)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered", ImagesRead, PatientData, wado::instance_rendered)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/thumbnail", ImagesRead, PatientData, wado::instance_thumbnail)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", ImagesRead, PatientData, wado::frames)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", ImagesRead, PatientData, wado::frame_rendered)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", ImagesRead, PatientData, wado::frame_thumbnail)
        .get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}", ImagesRead, PatientData, wado::bulkdata)
        // Administration
        .get("/api/admin/users", ADMIN, NO, admin::users)
        .post("/api/admin/users", ADMIN, Config, admin::add_user)
        .post("/api/admin/users/{username}/disable", ADMIN, Config, admin::disable_user)
        .post("/api/admin/users/{username}/enable", ADMIN, Config, admin::enable_user)
        .post("/api/admin/users/{username}/password", ADMIN, Config, admin::set_password)
        .get("/api/admin/tokens", ADMIN, NO, admin::tokens)
        .post("/api/admin/tokens", ADMIN, Config, admin::add_token)
        .delete("/api/admin/tokens/{token_id}", ADMIN, Config, admin::revoke_token)
        .get("/api/admin/sites", ADMIN, NO, admin::sites)
        .post("/api/admin/sites", ADMIN, Config, admin::put_site)
        .put("/api/admin/sites/{site}/aes/{ae}", ADMIN, Config, admin::put_ae)
        .delete("/api/admin/aes/{ae}", ADMIN, Config, admin::delete_ae)
        .post("/api/admin/grants", ADMIN, Config, admin::grant)
        .delete("/api/admin/grants/{username}/{study}", ADMIN, Config, admin::revoke_grant)
        .get("/api/admin/sites/{site}/profile", ADMIN, NO, workflow::site_profile)
        .put("/api/admin/sites/{site}/profile", ADMIN, Config, workflow::put_site_profile)
        .get("/api/admin/readers", ADMIN, NO, workflow::readers)
        .put("/api/admin/readers/{username}", ADMIN, Config, workflow::put_reader)
        .get("/api/admin/expiring", ADMIN, NO, workflow::expiring)
        // Audit
        .get("/api/audit", AuditRead, AuditLog, auditlog::search)
        // Workflow: orders, coordinators' queue, worklists, operations
        .post("/api/orders", Orders, PatientData, workflow::create_order)
        .get("/api/orders/{order}", Orders, PatientData, workflow::get_order)
        .post("/api/orders/{order}/attachments", Orders, PatientData, workflow::add_attachment)
        .get("/api/orders/{order}/attachments", Orders, PatientData, workflow::attachments)
        .get("/api/orders/{order}/attachments/{attachment}", Orders, PatientData, workflow::attachment)
        .post("/fhir/ServiceRequest", Orders, PatientData, workflow::fhir_create)
        .get("/fhir/ServiceRequest/{order}", Orders, PatientData, workflow::fhir_read)
        .get("/api/reconcile", Coordinate, PatientData, workflow::reconcile_queue)
        .post("/api/studies/{study}/match", Coordinate, PatientData, workflow::match_study)
        .post("/api/studies/{study}/unmatch", Coordinate, PatientData, workflow::unmatch_study)
        .get("/api/studies/{study}/orders", Coordinate, PatientData, workflow::study_orders)
        .get("/api/worklist", Worklist, PatientData, workflow::worklist)
        .get("/api/worklist/events", Worklist, PatientData, workflow::events)
        .post("/api/worklist/heartbeat", Worklist, NO, workflow::heartbeat)
        .post("/api/studies/{study}/claim", Worklist, PatientData, workflow::claim)
        .post("/api/studies/{study}/release", Worklist, PatientData, workflow::release)
        .get("/api/studies/{study}/case", ImagesRead, PatientData, workflow::case)
        .get("/api/operations", Operations, PatientData, workflow::operations)
}

/// Builds the HTTP router.
pub fn router(state: AppState) -> Router {
    let mut r = routes(&state);
    if state.cfg.viewer_dir.is_none() {
        r = r.get("/", Public, NO, index);
    }
    let (mut app, specs) = r.finish();
    state.routes.set(specs).ok();
    app = match &state.cfg.viewer_dir {
        Some(dir) => app.fallback_service(viewer::service(dir).with_state(()).layer(
            axum::middleware::from_fn_with_state(state.clone(), viewer_gate),
        )),
        None => app.fallback(|| async { ApiError::not_found("not found") }),
    };
    // JSON APIs take small bodies; STOW-RS reads its raw body under its own limits
    // (`max_request`, `max_object`), which this default does not apply to.
    let timeout = state.cfg.request_timeout;
    app.layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn(body_idle_timeout))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(compression())
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Wraps the request body so that a client pausing longer than [`BODY_IDLE_TIMEOUT`]
/// between bytes fails the read (the handler answers with its body-read error).
async fn body_idle_timeout(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(tower_http::timeout::TimeoutBody::new(
        BODY_IDLE_TIMEOUT,
        body,
    ));
    next.run(Request::from_parts(parts, body)).await
}

/// `GET /api/routes`: every route with its permission and audit class.
async fn route_list(State(st): State<AppState>) -> Response {
    axum::Json(st.routes.get().cloned().unwrap_or_default()).into_response()
}

/// The viewer's pages (not its assets) need a signed-in user: others go to /login.
async fn viewer_gate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let last = path.rsplit('/').next().unwrap_or("");
    let page = last.is_empty() || !last.contains('.') || last.ends_with(".html");
    if page && !matches!(auth::resolve(&st, req.headers()).await, Ok(Some(_))) {
        let next_q: String = path
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        return Redirect::to(&format!("/login?next={next_q}")).into_response();
    }
    next.run(req).await
}

/// gzip for text-like responses (DICOM JSON, the viewer's scripts and styles) when the
/// client accepts it; never for pixel data or DICOM files, which are binary and large.
fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{Predicate, SizeAbove};
    let text_like =
        |_: StatusCode, _: axum::http::Version, h: &HeaderMap, _: &axum::http::Extensions| {
            let ct = h
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ct.starts_with("application/dicom+json")
                || ct.starts_with("application/json")
                || ct.starts_with("text/")
                || ct.starts_with("application/javascript")
                || ct.starts_with("application/wasm")
                || ct.starts_with("image/svg")
        };
    tower_http::compression::CompressionLayer::new()
        .gzip(true)
        .compress_when(SizeAbove::new(1024).and(text_like))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    // Meridian's own pages and API responses: nothing inline, nothing foreign, never framed.
    // The viewer (OHIF, served as files) gets a looser policy it can run under.
    // Meridian's own pages and API responses: nothing inline, nothing foreign, never
    // framed. The viewer's files (OHIF: HTML, scripts and workers that compile
    // WebAssembly) get a looser policy they can run under, still never framed.
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ours = h.contains_key("x-meridian-page")
        || ct.starts_with("application/json")
        || ct.starts_with("application/problem+json")
        || ct.starts_with("application/dicom+json");
    let csp = if ours {
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'; form-action 'self'"
    } else {
        "frame-ancestors 'none'; object-src 'none'; base-uri 'self'"
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.remove("x-meridian-page");
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn healthz(State(st): State<AppState>) -> Response {
    match st.store.counts().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Index unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

async fn metrics() -> Response {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    if let Err(e) = enc.encode(&prometheus::gather(), &mut buf) {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Metrics unavailable",
            e.to_string(),
        )
        .into_response();
    }
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    (h, buf).into_response()
}

async fn index() -> Response {
    let body = "<!doctype html><meta charset=utf-8><title>Meridian</title><h1>Meridian</h1>\
        <p>DICOMweb at <a href=\"/dicom-web/studies\">/dicom-web</a>, health at <a href=\"/healthz\">/healthz</a>, \
        metrics at <a href=\"/metrics\">/metrics</a>. Start with <code>--viewer-dir</code> to serve a viewer here.</p>";
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::HeaderName::from_static("x-meridian-page"), "1"),
        ],
        body,
    )
        .into_response()
}

/// The base URL of the request (scheme and host), for RetrieveURL and BulkDataURI.
pub(crate) fn base_url(headers: &HeaderMap, port: u16) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@')
        })
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    // A Host without a port (some clients drop it) means our own port, not 80.
    let has_port = !host.ends_with(']')
        && host
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if has_port || (proto == "http" && port == 80) {
        format!("{proto}://{host}/dicom-web")
    } else {
        format!("{proto}://{host}:{port}/dicom-web")
    }
}
