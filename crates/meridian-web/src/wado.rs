//! WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered
//! and thumbnail resources.

use axum::body::Body;
use axum::extract::{Path, Query as Q};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use meridian_dicom::json;
use meridian_dicom::render::{self, Format, RenderParams};
use meridian_store::InstanceRef;
use serde_json::{Value as J, json as j};

use crate::auth::{Authed, Req};
use crate::base_url;
use crate::error::{ApiError, uid};
use crate::multipart::{self, AcceptItem, parse_accept};

type Params = Q<Vec<(String, String)>>;

fn accept(h: &HeaderMap) -> Vec<AcceptItem> {
    parse_accept(h.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
}

async fn list(
    st: &Req,
    study: &str,
    series: Option<&str>,
    sop: Option<&str>,
) -> Result<Vec<InstanceRef>, ApiError> {
    uid(study)?;
    if let Some(s) = series {
        uid(s)?;
    }
    if let Some(s) = sop {
        uid(s)?;
    }
    let v = st
        .store
        .instances(Some(study), series, sop, &st.scope())
        .await?;
    if v.is_empty() {
        return Err(ApiError::not_found("no such study, series or instance"));
    }
    Ok(v)
}

// ---------- retrieve (application/dicom) ----------

pub async fn study(Authed(st): Authed, Path(study): Path<String>, h: HeaderMap) -> Response {
    retrieve(st, h, study, None, None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn series(
    Authed(st): Authed,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    retrieve(st, h, study, Some(series), None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn instance(
    Authed(st): Authed,
    Path((study, series, inst)): Path<(String, String, String)>,
    h: HeaderMap,
) -> Response {
    retrieve(st, h, study, Some(series), Some(inst))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn retrieve(
    st: Req,
    h: HeaderMap,
    study: String,
    series: Option<String>,
    sop: Option<String>,
) -> Result<Response, ApiError> {
    let items = accept(&h);
    let ok_media = items.is_empty()
        || items.iter().any(|a| {
            (a.media == "multipart/related"
                && a.part_type
                    .as_deref()
                    .is_none_or(|t| t == "application/dicom"))
                || a.media == "*/*"
                || a.media == "application/dicom"
        });
    if !ok_media {
        return Err(ApiError::not_acceptable(
            "instances are available as multipart/related; type=\"application/dicom\"",
        ));
    }
    let wanted_ts = items
        .iter()
        .find_map(|a| a.transfer_syntax.clone())
        .filter(|t| t != "*");
    let instances = list(&st, &study, series.as_deref(), sop.as_deref()).await?;
    if let Some(t) = &wanted_ts
        && let Some(bad) = instances.iter().find(|i| &i.transfer_syntax != t)
    {
        return Err(ApiError::not_acceptable(format!(
            "instance {} is stored as {}; Meridian serves instances as stored (use transfer-syntax=*)",
            bad.sop_uid, bad.transfer_syntax
        )));
    }
    let boundary = multipart::boundary();
    let store = st.store.clone();
    let b2 = boundary.clone();
    let parts = futures::stream::iter(instances)
        .map(move |inst| {
            let store = store.clone();
            let b = b2.clone();
            async move {
                let data = store.read(&inst.key).await?;
                let head = multipart::part_head(
                    &b,
                    &format!(
                        "application/dicom; transfer-syntax={}",
                        inst.transfer_syntax
                    ),
                    None,
                );
                Ok::<_, meridian_store::StoreError>(futures::stream::iter([Ok(head), Ok(data)]))
            }
        })
        .buffered(4)
        .try_flatten();
    let close = futures::stream::once({
        let b = boundary.clone();
        async move { Ok::<Bytes, meridian_store::StoreError>(multipart::close(&b)) }
    });
    let body = Body::from_stream(parts.chain(close));
    Ok((
        [(
            header::CONTENT_TYPE,
            multipart::content_type(&boundary, "application/dicom"),
        )],
        body,
    )
        .into_response())
}

// ---------- metadata ----------

pub async fn study_metadata(
    Authed(st): Authed,
    Path(study): Path<String>,
    h: HeaderMap,
) -> Response {
    metadata(st, h, study, None, None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn series_metadata(
    Authed(st): Authed,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    metadata(st, h, study, Some(series), None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn instance_metadata(
    Authed(st): Authed,
    Path((study, series, inst)): Path<(String, String, String)>,
    h: HeaderMap,
) -> Response {
    metadata(st, h, study, Some(series), Some(inst))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn metadata(
    st: Req,
    h: HeaderMap,
    study: String,
    series: Option<String>,
    sop: Option<String>,
) -> Result<Response, ApiError> {
    let instances = list(&st, &study, series.as_deref(), sop.as_deref()).await?;
    let base = base_url(&h, st.cfg.http_port);
    let results: Vec<Result<J, ApiError>> = futures::stream::iter(instances)
        .map(|inst| {
            let store = st.store.clone();
            let base = base.clone();
            async move {
                let data = store.read(&inst.key).await?;
                tokio::task::spawn_blocking(move || instance_json(&data, &inst, &base))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
            }
        })
        .buffered(4)
        .collect()
        .await;
    let arr: Result<Vec<J>, ApiError> = results.into_iter().collect();
    Ok((
        [(header::CONTENT_TYPE, "application/dicom+json")],
        J::Array(arr?).to_string(),
    )
        .into_response())
}

fn instance_json(data: &[u8], inst: &InstanceRef, base: &str) -> Result<J, ApiError> {
    let obj = render::open_stored_header(data).map_err(|e| ApiError::internal(e.to_string()))?;
    let inst_url = format!(
        "{base}/studies/{}/series/{}/instances/{}",
        inst.study_uid, inst.series_uid, inst.sop_uid
    );
    let mut v = json::to_json(&obj, &format!("{inst_url}/bulkdata"));
    if let J::Object(m) = &mut v {
        if obj.get(dicom_dictionary_std::tags::ROWS).is_some() {
            let bits =
                meridian_dicom::parse::get_str(&obj, dicom_dictionary_std::tags::BITS_ALLOCATED)
                    .and_then(|b| b.parse::<u16>().ok())
                    .unwrap_or(16);
            let vr = if bits > 8
                && matches!(
                    inst.transfer_syntax.as_str(),
                    "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
                ) {
                "OW"
            } else {
                "OB"
            };
            m.insert(
                "7FE00010".into(),
                j!({"vr": vr, "BulkDataURI": format!("{inst_url}/bulkdata/7FE00010")}),
            );
        }
        m.insert(
            "00020010".into(),
            j!({"vr": "UI", "Value": [inst.transfer_syntax]}),
        );
        m.insert("00081190".into(), j!({"vr": "UR", "Value": [inst_url]}));
    }
    Ok(v)
}

// ---------- frames ----------

fn parse_frames(s: &str) -> Result<Vec<u32>, ApiError> {
    let v: Result<Vec<u32>, _> = s.split(',').map(|f| f.trim().parse::<u32>()).collect();
    let v = v.map_err(|_| ApiError::bad_request(format!("bad frame list {s:?}")))?;
    if v.is_empty() || v.contains(&0) || v.len() > 10_000 {
        return Err(ApiError::bad_request("frame numbers start at 1"));
    }
    Ok(v)
}

fn media_for_ts(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.5" => "image/x-dicom-rle",
        _ => return None,
    })
}

fn is_native_le(ts: &str) -> bool {
    matches!(ts, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1")
}

pub async fn frames(
    Authed(st): Authed,
    Path((study, series, inst, frames)): Path<(String, String, String, String)>,
    h: HeaderMap,
) -> Response {
    frames_inner(st, h, study, series, inst, frames)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn frames_inner(
    st: Req,
    h: HeaderMap,
    study: String,
    series: String,
    sop: String,
    frames: String,
) -> Result<Response, ApiError> {
    let nums = parse_frames(&frames)?;
    let inst = list(&st, &study, Some(&series), Some(&sop))
        .await?
        .remove(0);
    let ts = inst.transfer_syntax.clone();
    let items = accept(&h);
    let compressed_media = media_for_ts(&ts);
    // Does the client take the stored bitstream?
    let wants_stored = items.iter().any(|a| {
        a.transfer_syntax
            .as_deref()
            .is_some_and(|t| t == "*" || t == ts)
            || (a.part_type.is_some() && a.part_type.as_deref() == compressed_media)
            || (a.media != "multipart/related" && Some(a.media.as_str()) == compressed_media)
    });
    let octet_ok = items.is_empty()
        || items.iter().any(|a| {
            a.media == "*/*"
                || a.media == "application/octet-stream"
                || (a.media == "multipart/related"
                    && a.part_type
                        .as_deref()
                        .is_none_or(|t| t == "application/octet-stream" || t == "*/*"))
        });
    if !wants_stored && !octet_ok {
        return Err(ApiError::not_acceptable(format!(
            "frames of this instance are available as application/octet-stream or as stored ({ts})"
        )));
    }
    let data = st.store.read(&inst.key).await?;
    let ts2 = ts.clone();
    let (parts, part_type) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<Vec<u8>>, String), ApiError> {
            let obj = render::open_stored(&data).map_err(|e| ApiError::internal(e.to_string()))?;
            let mut out = Vec::with_capacity(nums.len());
            let stored = wants_stored || is_native_le(&ts2);
            for n in &nums {
                let r = if stored {
                    render::stored_frame(&obj, n - 1)
                } else {
                    render::decoded_frame(&obj, n - 1)
                };
                out.push(r.map_err(|e| match e {
                    render::RenderError::NoSuchFrame(..) => ApiError::not_found(e.to_string()),
                    render::RenderError::Decode(_) => ApiError::not_acceptable(e.to_string()),
                    _ => ApiError::internal(e.to_string()),
                })?);
            }
            let pt = if stored && !is_native_le(&ts2) {
                format!(
                    "{}; transfer-syntax={ts2}",
                    compressed_media.unwrap_or("application/octet-stream")
                )
            } else {
                "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1".to_owned()
            };
            Ok((out, pt))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let boundary = multipart::boundary();
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(&multipart::part_head(&boundary, &part_type, None));
        body.extend_from_slice(&p);
    }
    body.extend_from_slice(&multipart::close(&boundary));
    let outer = part_type
        .split(';')
        .next()
        .unwrap_or("application/octet-stream")
        .to_owned();
    Ok((
        [(
            header::CONTENT_TYPE,
            multipart::content_type(&boundary, &outer),
        )],
        body,
    )
        .into_response())
}

// ---------- bulk data ----------

pub async fn bulkdata(
    Authed(st): Authed,
    Path((study, series, inst, path)): Path<(String, String, String, String)>,
    h: HeaderMap,
) -> Response {
    bulk_inner(st, h, study, series, inst, path)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn bulk_inner(
    st: Req,
    h: HeaderMap,
    study: String,
    series: String,
    sop: String,
    path: String,
) -> Result<Response, ApiError> {
    if path.len() > 512
        || !path
            .split('/')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(
            "bulk data path must be TAG[/ITEM/TAG...]",
        ));
    }
    let inst = list(&st, &study, Some(&series), Some(&sop))
        .await?
        .remove(0);
    let data = st.store.read(&inst.key).await?;
    let value = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let obj = render::open_stored(&data).map_err(|e| ApiError::internal(e.to_string()))?;
        json::bulk_at(&obj, &path).ok_or_else(|| ApiError::not_found("no bulk data at that path"))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let single = accept(&h)
        .iter()
        .any(|a| a.media == "application/octet-stream");
    if single {
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response());
    }
    let boundary = multipart::boundary();
    let mut body = multipart::part_head(&boundary, "application/octet-stream", None).to_vec();
    body.extend_from_slice(&value);
    body.extend_from_slice(&multipart::close(&boundary));
    Ok((
        [(
            header::CONTENT_TYPE,
            multipart::content_type(&boundary, "application/octet-stream"),
        )],
        body,
    )
        .into_response())
}

// ---------- rendered and thumbnails ----------

struct RenderReq {
    params: RenderParams,
    format: Format,
}

fn render_req(
    h: &HeaderMap,
    p: &[(String, String)],
    thumbnail: bool,
) -> Result<RenderReq, ApiError> {
    let items = accept(h);
    let mut format = Format::Jpeg { quality: 90 };
    if !items.is_empty() {
        let pick = items.iter().find_map(|a| match a.media.as_str() {
            "image/jpeg" | "*/*" | "image/*" => Some(Format::Jpeg { quality: 90 }),
            "image/png" => Some(Format::Png),
            _ => None,
        });
        format = pick.ok_or_else(|| {
            ApiError::not_acceptable("rendered media types: image/jpeg, image/png")
        })?;
    }
    let mut params = RenderParams::default();
    if thumbnail {
        params.viewport = Some((128, 128));
    }
    for (k, v) in p {
        match k.as_str() {
            "window" => {
                let f: Vec<&str> = v.split(',').collect();
                let c = f.first().and_then(|x| x.trim().parse::<f64>().ok());
                let w = f.get(1).and_then(|x| x.trim().parse::<f64>().ok());
                match (c, w) {
                    (Some(c), Some(w)) if w > 0.0 && f.len() <= 3 => params.window = Some((c, w)),
                    _ => {
                        return Err(ApiError::bad_request(
                            "window=center,width[,function] with width > 0",
                        ));
                    }
                }
                params.function = match f.get(2).map(|x| x.trim().to_ascii_lowercase()) {
                    None => None,
                    Some(x) if x == "linear" => Some(render::WindowFunction::Linear),
                    Some(x) if x == "linear-exact" || x == "linear_exact" => {
                        Some(render::WindowFunction::LinearExact)
                    }
                    Some(x) if x == "sigmoid" => Some(render::WindowFunction::Sigmoid),
                    Some(x) => {
                        return Err(ApiError::bad_request(format!(
                            "unknown window function {x:?} (linear, linear-exact, sigmoid)"
                        )));
                    }
                };
            }
            "viewport" => {
                let f: Vec<u32> = v
                    .split(',')
                    .take(2)
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
                match f.as_slice() {
                    [w, h] if *w > 0 && *h > 0 && *w <= 8192 && *h <= 8192 => {
                        params.viewport = Some((*w, *h))
                    }
                    _ => return Err(ApiError::bad_request("viewport=width,height (1..8192)")),
                }
            }
            "quality" => {
                let q: u8 = v
                    .parse()
                    .map_err(|_| ApiError::bad_request("quality=1..100"))?;
                if let Format::Jpeg { .. } = format {
                    format = Format::Jpeg {
                        quality: q.clamp(1, 100),
                    };
                }
            }
            _ => {}
        }
    }
    Ok(RenderReq { params, format })
}

async fn render_instance(
    st: &Req,
    inst: InstanceRef,
    mut req: RenderReq,
    frame: u32,
) -> Result<Response, ApiError> {
    req.params.frame = frame;
    let data = st.store.read(&inst.key).await?;
    let (bytes, ct) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, &'static str), ApiError> {
            let obj = render::open_stored(&data).map_err(|e| ApiError::internal(e.to_string()))?;
            let out = render::render(&obj, &req.params, req.format).map_err(|e| match e {
                render::RenderError::NoSuchFrame(..) | render::RenderError::NoPixelData => {
                    ApiError::not_found(e.to_string())
                }
                render::RenderError::Decode(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Cannot Render",
                    e.to_string(),
                ),
                _ => ApiError::internal(e.to_string()),
            })?;
            Ok((
                out,
                if req.format == Format::Png {
                    "image/png"
                } else {
                    "image/jpeg"
                },
            ))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(([(header::CONTENT_TYPE, ct)], bytes).into_response())
}

/// The representative instance of a study or series: the middle one of the first series.
fn representative(mut v: Vec<InstanceRef>) -> InstanceRef {
    let first_series = v[0].series_uid.clone();
    v.retain(|i| i.series_uid == first_series);
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

pub async fn instance_rendered(
    Authed(st): Authed,
    Path((study, series, inst)): Path<(String, String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    async {
        let req = render_req(&h, &p, false)?;
        let i = list(&st, &study, Some(&series), Some(&inst))
            .await?
            .remove(0);
        render_instance(&st, i, req, 0).await
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

pub async fn instance_thumbnail(
    Authed(st): Authed,
    Path((study, series, inst)): Path<(String, String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    async {
        let req = render_req(&h, &p, true)?;
        let i = list(&st, &study, Some(&series), Some(&inst))
            .await?
            .remove(0);
        let frame = (i.frames.max(1) as u32) / 2;
        render_instance(&st, i, req, frame).await
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

pub async fn frame_rendered(
    Authed(st): Authed,
    Path((study, series, inst, frames)): Path<(String, String, String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    frame_render(st, h, p, study, series, inst, frames, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn frame_thumbnail(
    Authed(st): Authed,
    Path((study, series, inst, frames)): Path<(String, String, String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    frame_render(st, h, p, study, series, inst, frames, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[allow(clippy::too_many_arguments)]
async fn frame_render(
    st: Req,
    h: HeaderMap,
    p: Vec<(String, String)>,
    study: String,
    series: String,
    inst: String,
    frames: String,
    thumb: bool,
) -> Result<Response, ApiError> {
    let nums = parse_frames(&frames)?;
    if nums.len() != 1 {
        return Err(ApiError::bad_request("render one frame at a time"));
    }
    let req = render_req(&h, &p, thumb)?;
    let i = list(&st, &study, Some(&series), Some(&inst))
        .await?
        .remove(0);
    render_instance(&st, i, req, nums[0] - 1).await
}

pub async fn series_rendered(
    Authed(st): Authed,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    level_render(st, h, p, study, Some(series), false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn series_thumbnail(
    Authed(st): Authed,
    Path((study, series)): Path<(String, String)>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    level_render(st, h, p, study, Some(series), true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn study_rendered(
    Authed(st): Authed,
    Path(study): Path<String>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    level_render(st, h, p, study, None, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
pub async fn study_thumbnail(
    Authed(st): Authed,
    Path(study): Path<String>,
    h: HeaderMap,
    Q(p): Params,
) -> Response {
    level_render(st, h, p, study, None, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn level_render(
    st: Req,
    h: HeaderMap,
    p: Vec<(String, String)>,
    study: String,
    series: Option<String>,
    thumb: bool,
) -> Result<Response, ApiError> {
    let req = render_req(&h, &p, thumb)?;
    let v = list(&st, &study, series.as_deref(), None).await?;
    let i = representative(v);
    let frame = if thumb {
        (i.frames.max(1) as u32) / 2
    } else {
        0
    };
    render_instance(&st, i, req, frame).await
}
