//! Every DICOMweb request is an access to patient data: one audit record
//! each, written durably before the response leaves.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_audit::AuditEvent;

use crate::{ApiError, AppState};

fn kind(method: &Method, path: &str) -> &'static str {
    if method == Method::POST {
        return "STOW-RS";
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if path.contains("/rendered") || path.contains("/thumbnail") {
        "WADO-RS rendered"
    } else if last == "metadata" {
        "WADO-RS metadata"
    } else if path.contains("/frames/") {
        "WADO-RS frames"
    } else if path.contains("/bulkdata/") {
        "WADO-RS bulkdata"
    } else if matches!(last, "studies" | "series" | "instances") {
        "QIDO-RS"
    } else {
        "WADO-RS retrieve"
    }
}

/// The study UID in a DICOMweb path, if any and valid.
fn study_of(path: &str) -> Option<String> {
    let mut it = path.split('/');
    it.find(|s| *s == "studies")?;
    let uid = it.next()?;
    meridian_core::validate_uid(uid).ok().map(str::to_owned)
}

pub async fn record(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let query: String = req.uri().query().unwrap_or("").chars().take(512).collect();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    let event = AuditEvent {
        at_ms: meridian_store::now_ms(),
        // Accounts arrive with the security layer; until then every caller is anonymous.
        actor: "anonymous".into(),
        role: "none".into(),
        action: format!("{} {method} {route}", kind(&method, &path)),
        study_uid: study_of(&path),
        source,
        outcome: resp.status().as_u16().to_string(),
        detail: query,
        ..Default::default()
    };
    match st.store.audit(event).await {
        Ok(_) => resp,
        // An access that cannot be audited is not served.
        Err(e) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "Audit unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_studies() {
        assert_eq!(kind(&Method::GET, "/dicom-web/studies"), "QIDO-RS");
        assert_eq!(
            kind(&Method::GET, "/dicom-web/studies/1.2/series/1.3/metadata"),
            "WADO-RS metadata"
        );
        assert_eq!(kind(&Method::POST, "/dicom-web/studies"), "STOW-RS");
        assert_eq!(
            kind(
                &Method::GET,
                "/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/1"
            ),
            "WADO-RS frames"
        );
        assert_eq!(
            study_of("/dicom-web/studies/1.2.3/series"),
            Some("1.2.3".into())
        );
        assert_eq!(study_of("/dicom-web/studies/..%2F/series"), None);
        assert_eq!(study_of("/dicom-web/series"), None);
    }
}
