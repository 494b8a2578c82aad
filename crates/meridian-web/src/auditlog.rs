//! The auditor API: search the audit trail by patient, user, study and time
//! range, as JSON records (with their chain hashes), FHIR R4 AuditEvent
//! (a Bundle) or DICOM audit messages (PS3.15 A.5). Each search is itself audited.

use axum::Json;
use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_store::AuditFilter;
use serde::Deserialize;

use crate::ApiError;
use crate::auth::Authed;

#[derive(Deserialize, Default)]
pub struct Params {
    patient_id: Option<String>,
    issuer: Option<String>,
    /// Actor: user name, `token:ID:NAME` or `ae:TITLE`.
    user: Option<String>,
    study: Option<String>,
    /// Start of the range: RFC 3339 (`2026-11-23T00:00:00Z`), a date (`2026-11-23`) or epoch ms.
    from: Option<String>,
    /// End of the range (exclusive), same forms.
    to: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
    /// json (default), fhir, dicom.
    format: Option<String>,
}

/// Parses a time bound into epoch milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
}

pub async fn search(Authed(r): Authed, Query(p): Query<Params>) -> Response {
    let bound = |v: &Option<String>, what: &str| -> Result<Option<i64>, ApiError> {
        match v {
            None => Ok(None),
            Some(s) => parse_time(s).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{what}: expected RFC 3339, YYYY-MM-DD or epoch milliseconds"
                ))
            }),
        }
    };
    let (from, to) = match (bound(&p.from, "from"), bound(&p.to, "to")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let f = AuditFilter {
        patient_id: p.patient_id,
        issuer: p.issuer,
        actor: p.user,
        study_uid: p.study,
        from_ms: from,
        to_ms: to,
        after_seq: p.after,
        limit: p.limit,
    };
    let recs = match r.store.audit_search(&f).await {
        Ok(v) => v,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match p.format.as_deref().unwrap_or("json") {
        "json" => Json(recs).into_response(),
        "fhir" => (
            [(header::CONTENT_TYPE, "application/fhir+json")],
            meridian_audit::fhir::to_fhir_bundle(&recs).to_string(),
        )
            .into_response(),
        "dicom" => {
            let mut xml =
                String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AuditMessages>\n");
            for rec in &recs {
                let m = meridian_audit::dicom::to_dicom_audit_message(rec);
                xml.push_str(
                    m.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
                        .trim(),
                );
                xml.push('\n');
            }
            xml.push_str("</AuditMessages>\n");
            ([(header::CONTENT_TYPE, "application/xml")], xml).into_response()
        }
        other => ApiError::bad_request(format!("format {other:?}: expected json, fhir or dicom"))
            .into_response(),
    }
}
