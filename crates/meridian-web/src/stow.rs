//! STOW-RS (PS3.18 10.5): each part is validated and stored on its own;
//! the response lists what was stored and what failed, and why.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use meridian_store::ingest::{IngestError, Input};
use serde_json::{Value as J, json};

use crate::auth::{Authed, Req};
use crate::base_url;
use crate::error::{ApiError, uid};

pub async fn stow(Authed(st): Authed, uri: Uri, h: HeaderMap, body: Body) -> Response {
    run(st, &uri, h, None, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn stow_study(
    Authed(st): Authed,
    Path(study): Path<String>,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Response {
    run(st, &uri, h, Some(study), body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Extracts `boundary` from a multipart Content-Type, quoted or not.
fn boundary_of(ct: &str) -> Option<String> {
    ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Whether a multipart error comes from a size limit (ours or the body limit layer's).
fn too_large(e: &multer::Error) -> bool {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => true,
        multer::Error::StreamReadFailed(inner) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
            while let Some(s) = src {
                if s.to_string().contains("length limit exceeded") {
                    return true;
                }
                src = s.source();
            }
            false
        }
        _ => false,
    }
}

struct Outcome {
    sop_class: String,
    sop_uid: String,
    failure: Option<(u16, String)>,
}

async fn run(
    st: Req,
    uri: &Uri,
    h: HeaderMap,
    study: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(s) = &study {
        uid(s)?;
    }
    // The caller's own site; a caller of every site (admin, unscoped service) names one with `?site=`.
    let asked = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("site="));
    let site = match (st.who.store_site(), asked) {
        (Some(own), None) => own.to_owned(),
        (Some(own), Some(a)) if a == own => own.to_owned(),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "this credential stores into its own site only",
            ));
        }
        (None, Some(a)) if st.scope() == meridian_store::Scope::All => {
            if !st.store.site_exists(a).await? {
                return Err(ApiError::bad_request(format!("no site {a:?}")));
            }
            a.to_owned()
        }
        (None, _) => {
            return Err(ApiError::bad_request(
                "stored studies belong to a site: name it with ?site=ID (or use a site-scoped credential)",
            ));
        }
    };
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.cfg.max_request as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!(
                "request body exceeds the limit of {} bytes",
                st.cfg.max_request
            ),
        ));
    }
    let mut outcomes = Vec::new();
    let max_part = st.ingest.limits.max_object;
    if media == "application/dicom" {
        let bytes = axum::body::to_bytes(body, max_part.min(st.cfg.max_request))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large",
                    e.to_string(),
                )
            })?;
        outcomes.push(store_one(&st, &site, bytes, study.clone()).await);
    } else if media == "multipart/related" {
        let part_type = ct.split(';').find_map(|p| {
            p.split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("type"))
                .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase())
        });
        if part_type
            .as_deref()
            .is_some_and(|t| t != "application/dicom")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "only type=\"application/dicom\" parts are accepted",
            ));
        }
        let boundary = boundary_of(&ct)
            .ok_or_else(|| ApiError::bad_request("multipart/related without a boundary"))?;
        let constraints = multer::Constraints::new().size_limit(
            multer::SizeLimit::new()
                .per_field(max_part as u64)
                .whole_stream(st.cfg.max_request as u64),
        );
        let mut mp =
            multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    if outcomes.is_empty() {
                        let status = if matches!(
                            e,
                            multer::Error::FieldSizeExceeded { .. }
                                | multer::Error::StreamSizeExceeded { .. }
                        ) {
                            StatusCode::PAYLOAD_TOO_LARGE
                        } else {
                            StatusCode::BAD_REQUEST
                        };
                        return Err(ApiError::new(status, "Bad multipart body", e.to_string()));
                    }
                    outcomes.push(Outcome {
                        sop_class: String::new(),
                        sop_uid: String::new(),
                        failure: Some((0xA700, e.to_string())),
                    });
                    break;
                }
            };
            if let Some(ct) = field.content_type()
                && ct.essence_str() != "application/dicom"
            {
                outcomes.push(Outcome {
                    sop_class: String::new(),
                    sop_uid: String::new(),
                    failure: Some((
                        0xC000,
                        format!("part of type {ct} is not application/dicom"),
                    )),
                });
                continue;
            }
            match field.bytes().await {
                Ok(bytes) => outcomes.push(store_one(&st, &site, bytes, study.clone()).await),
                Err(e) if too_large(&e) => {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Payload Too Large",
                        format!(
                            "{e} (limits: {} bytes per instance, {} per request)",
                            max_part, st.cfg.max_request
                        ),
                    ));
                }
                Err(e) => {
                    outcomes.push(Outcome {
                        sop_class: String::new(),
                        sop_uid: String::new(),
                        failure: Some((0xA700, e.to_string())),
                    });
                    break;
                }
            }
        }
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            format!("STOW-RS takes multipart/related; type=\"application/dicom\", not {media:?}"),
        ));
    }
    if outcomes.is_empty() {
        return Err(ApiError::bad_request("no instances in the request"));
    }
    let base = base_url(&h, st.cfg.http_port);
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut study_of_first: Option<String> = study.clone();
    for o in &outcomes {
        match &o.failure {
            None => referenced.push(json!({
                "00081150": {"vr": "UI", "Value": [o.sop_class]},
                "00081155": {"vr": "UI", "Value": [o.sop_uid]},
            })),
            Some((code, why)) => {
                tracing::info!(sop = %o.sop_uid, reason = %why, "STOW-RS instance refused");
                let mut item = serde_json::Map::new();
                if !o.sop_class.is_empty() {
                    item.insert(
                        "00081150".into(),
                        json!({"vr": "UI", "Value": [o.sop_class]}),
                    );
                }
                if !o.sop_uid.is_empty() {
                    item.insert("00081155".into(), json!({"vr": "UI", "Value": [o.sop_uid]}));
                }
                item.insert("00081197".into(), json!({"vr": "US", "Value": [code]}));
                item.insert(
                    "00000902".into(),
                    json!({"vr": "LO", "Value": [why.chars().take(64).collect::<String>()]}),
                );
                failed.push(J::Object(item));
            }
        }
    }
    // RetrieveURL of each referenced instance needs its study/series: look them up.
    for r in referenced.iter_mut() {
        let sop = r["00081155"]["Value"][0].as_str().unwrap_or("").to_owned();
        if let Ok(v) = st
            .store
            .instances(None, None, Some(&sop), &st.scope())
            .await
            && let Some(i) = v.first()
        {
            study_of_first.get_or_insert_with(|| i.study_uid.clone());
            r["00081190"] = json!({"vr": "UR", "Value": [format!("{base}/studies/{}/series/{}/instances/{}", i.study_uid, i.series_uid, i.sop_uid)]});
        }
    }
    let mut resp = serde_json::Map::new();
    if let Some(s) = &study_of_first {
        resp.insert(
            "00081190".into(),
            json!({"vr": "UR", "Value": [format!("{base}/studies/{s}")]}),
        );
    }
    if !referenced.is_empty() {
        resp.insert("00081199".into(), json!({"vr": "SQ", "Value": referenced}));
    }
    if !failed.is_empty() {
        resp.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    let status = if failed.is_empty() {
        StatusCode::OK
    } else if referenced.is_empty() {
        StatusCode::CONFLICT
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        J::Object(resp).to_string(),
    )
        .into_response())
}

async fn store_one(st: &Req, site: &str, bytes: Bytes, study: Option<String>) -> Outcome {
    // Identify the instance from the meta group for the failure report, if we can.
    let meta = meridian_dicom::parse::split_part10(&bytes).ok();
    let (mc, mi) = meta
        .map(|m| {
            (
                m.sop_class_uid.unwrap_or_default(),
                m.sop_instance_uid.unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    match st
        .ingest
        .ingest(
            site,
            Input::Part10 {
                bytes,
                expect_study: study,
            },
        )
        .await
    {
        Ok((info, _)) => Outcome {
            sop_class: info.sop_class_uid,
            sop_uid: info.sop_instance_uid,
            failure: None,
        },
        Err(e) => {
            let code = match &e {
                IngestError::Parse(p) => p.dimse_status(),
                IngestError::NotStorage(_) => 0x0122,
                IngestError::Store(meridian_store::StoreError::OtherSite) => 0x0124,
                IngestError::Store(_) | IngestError::Busy => 0xA700,
            };
            let valid = |u: &str| meridian_core::validate_uid(u).is_ok();
            Outcome {
                sop_class: if valid(&mc) { mc } else { String::new() },
                sop_uid: if valid(&mi) { mi } else { String::new() },
                failure: Some((code, e.to_string())),
            }
        }
    }
}
