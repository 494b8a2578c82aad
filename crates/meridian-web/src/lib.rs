//! Meridian's HTTP side: DICOMweb (PS3.18: STOW-RS, QIDO-RS, WADO-RS incl.
//! rendered/thumbnail), `/healthz`, `/metrics`, and the optional viewer.
//! Thin: matching, parsing and storage live in the lower crates.

mod audit;
mod error;
mod multipart;
mod qido;
mod stow;
mod viewer;
mod wado;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_store::Store;
use meridian_store::ingest::Ingest;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// Web settings.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Largest accepted STOW-RS request body.
    pub max_request: usize,
    /// Directory of a prebuilt viewer (OHIF dist) served at `/`.
    pub viewer_dir: Option<PathBuf>,
    /// The listening port, for URLs when a client's Host header has none.
    pub http_port: u16,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ingest: Ingest,
    pub cfg: Arc<WebConfig>,
}

/// Builds the HTTP router.
pub fn router(state: AppState) -> Router {
    let max_request = state.cfg.max_request;
    let dw = Router::new()
        .route("/studies", get(qido::studies).post(stow::stow))
        .route("/studies/{study}", get(wado::study).post(stow::stow_study))
        .route("/studies/{study}/metadata", get(wado::study_metadata))
        .route("/studies/{study}/rendered", get(wado::study_rendered))
        .route("/studies/{study}/thumbnail", get(wado::study_thumbnail))
        .route("/studies/{study}/series", get(qido::study_series))
        .route("/studies/{study}/instances", get(qido::study_instances))
        .route("/studies/{study}/series/{series}", get(wado::series))
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(wado::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/rendered",
            get(wado::series_rendered),
        )
        .route(
            "/studies/{study}/series/{series}/thumbnail",
            get(wado::series_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}",
            get(wado::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            get(wado::instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/rendered",
            get(wado::instance_rendered),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            get(wado::instance_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            get(wado::frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            get(wado::frame_rendered),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
            get(wado::frame_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}",
            get(wado::bulkdata),
        )
        .route("/series", get(qido::all_series))
        .route("/instances", get(qido::all_instances))
        .fallback(|| async { ApiError::not_found("no such DICOMweb resource") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(DefaultBodyLimit::max(max_request));
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/app-config.js", get(viewer::app_config))
        .nest("/dicom-web", dw);
    app = match &state.cfg.viewer_dir {
        Some(dir) => app.fallback_service(viewer::service(dir).with_state(())),
        None => app
            .route("/", get(index))
            .fallback(|| async { ApiError::not_found("not found") }),
    };
    app.layer(compression())
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
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
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
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
