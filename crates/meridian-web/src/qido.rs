//! QIDO-RS (PS3.18 10.6): the same matching as C-FIND, over the index.

use axum::extract::{Path, Query as Q};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use meridian_core::attrs::{self, Level};
use meridian_core::{Query, QueryError};
use meridian_dicom::json::string_attr;
use meridian_store::QueryRow;
use serde_json::{Map, Value as J, json};

use crate::auth::{Authed, Req};
use crate::base_url;
use crate::error::{ApiError, uid};

const DEFAULT_LIMIT: u64 = 1000;
const MAX_LIMIT: u64 = 10_000;

type Params = Q<Vec<(String, String)>>;

pub async fn studies(Authed(st): Authed, h: HeaderMap, Q(p): Params) -> Response {
    run(st, h, p, Level::Study, &[]).await
}
pub async fn all_series(Authed(st): Authed, h: HeaderMap, Q(p): Params) -> Response {
    run(st, h, p, Level::Series, &[]).await
}
pub async fn all_instances(Authed(st): Authed, h: HeaderMap, Q(p): Params) -> Response {
    run(st, h, p, Level::Image, &[]).await
}
pub async fn study_series(
    Authed(st): Authed,
    Path(study): Path<String>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    run(st, h, p, Level::Series, &[(0x0020_000D, study)]).await
}
pub async fn study_instances(
    Authed(st): Authed,
    Path(study): Path<String>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    run(st, h, p, Level::Image, &[(0x0020_000D, study)]).await
}
pub async fn series_instances(
    Authed(st): Authed,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    run(
        st,
        h,
        p,
        Level::Image,
        &[(0x0020_000D, study), (0x0020_000E, series)],
    )
    .await
}

async fn run(
    st: Req,
    h: HeaderMap,
    params: Vec<(String, String)>,
    level: Level,
    fixed: &[(u32, String)],
) -> Response {
    match search(&st, &h, params, level, fixed).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn qerr(e: QueryError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

async fn search(
    st: &Req,
    h: &HeaderMap,
    params: Vec<(String, String)>,
    level: Level,
    fixed: &[(u32, String)],
) -> Result<Response, ApiError> {
    let mut q = Query::new(level);
    q.limit = Some(DEFAULT_LIMIT);
    let fuzzy = params
        .iter()
        .any(|(k, v)| k == "fuzzymatching" && v == "true");
    let mut warnings = Vec::new();
    for (tag, v) in fixed {
        uid(v)?;
        let a = attrs::by_tag(*tag).ok_or_else(|| ApiError::internal("catalogue"))?;
        q.add_key(a, v, false).map_err(qerr)?;
    }
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                q.limit = Some(
                    v.parse::<u64>()
                        .map_err(|_| ApiError::bad_request(format!("bad limit {v:?}")))?
                        .min(MAX_LIMIT),
                )
            }
            "offset" => {
                q.offset = v
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad offset {v:?}")))?
            }
            "fuzzymatching" => {}
            "includefield" => {
                for f in v.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if f == "all" {
                        q.include_all = true;
                    } else if let Some(t) = attrs::parse_attribute_id(f) {
                        q.include.push(t);
                    } else {
                        warnings.push(format!("unknown includefield {f}"));
                    }
                }
            }
            key => {
                let tag = attrs::parse_attribute_id(key).ok_or_else(|| {
                    ApiError::bad_request(format!("unknown query attribute {key:?}"))
                })?;
                match attrs::by_tag(tag) {
                    Some(a)
                        if !matches!(a.column, "num_series" | "num_instances")
                            && a.tag != 0x0008_3002 =>
                    {
                        if a.level > level {
                            return Err(ApiError::bad_request(format!(
                                "{} cannot be matched at this level",
                                a.keyword
                            )));
                        }
                        q.add_key(a, v, fuzzy).map_err(qerr)?;
                    }
                    _ => warnings.push(format!("attribute {key} is not matchable and was ignored")),
                }
            }
        }
    }
    let rows = st.store.find(&q, &st.scope()).await?;
    let base = base_url(h, st.cfg.http_port);
    let out: Vec<J> = rows.iter().map(|r| row_json(r, &q, &base)).collect();
    let mut resp = (
        [(header::CONTENT_TYPE, "application/dicom+json")],
        J::Array(out).to_string(),
    )
        .into_response();
    if !warnings.is_empty() {
        let w = format!("299 meridian \"{}\"", warnings.join("; ").replace('"', "'"));
        if let Ok(v) = header::HeaderValue::from_str(&w) {
            resp.headers_mut().insert(header::WARNING, v);
        }
    }
    Ok(resp)
}

fn row_json(r: &QueryRow, q: &Query, base: &str) -> J {
    let mut wanted: Vec<u32> = attrs::qido_defaults(q.level).to_vec();
    // The UIDs of the levels above, so results can be navigated.
    wanted.push(0x0020_000D);
    if q.level >= Level::Series {
        wanted.push(0x0020_000E);
    }
    wanted.extend(q.keys.iter().map(|(a, _)| a.tag));
    wanted.extend(q.include.iter().copied());
    if q.include_all {
        wanted.extend(attrs::attrs_up_to(q.level).map(|a| a.tag));
    }
    let mut m = Map::new();
    for t in wanted {
        if let Some(a) = attrs::by_tag(t) {
            if a.level > q.level {
                continue;
            }
            let key = format!("{t:08X}");
            if m.contains_key(&key) {
                continue;
            }
            let v = r.get(t).unwrap_or("");
            m.insert(key, string_attr(a.vr, v));
        }
    }
    let study = r.get(0x0020_000D).unwrap_or("");
    let url = match q.level {
        Level::Patient | Level::Study => format!("{base}/studies/{study}"),
        Level::Series => format!(
            "{base}/studies/{study}/series/{}",
            r.get(0x0020_000E).unwrap_or("")
        ),
        Level::Image => format!(
            "{base}/studies/{study}/series/{}/instances/{}",
            r.get(0x0020_000E).unwrap_or(""),
            r.get(0x0008_0018).unwrap_or("")
        ),
    };
    m.insert("00081190".into(), json!({"vr": "UR", "Value": [url]}));
    m.insert("00080056".into(), json!({"vr": "CS", "Value": ["ONLINE"]}));
    J::Object(m)
}
