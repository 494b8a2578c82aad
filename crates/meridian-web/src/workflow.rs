//! The teleradiology workflow over HTTP: site and reader profiles (admin), orders
//! (web requisition and FHIR `ServiceRequest`), the coordinators' queue, a reader's
//! worklist with live updates (Server-Sent Events), claims and releases, and the
//! operations view. Thin: the rules are in meridian-workflow, their application in
//! meridian-dispatch.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use meridian_auth::{Role, Scope};
use meridian_dispatch::{DispatchError, Filter};
use meridian_store::now_ms;
use meridian_store::workflow::OrderRow;
use meridian_workflow::model::{Reader, Site};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::{Authed, Req};

fn err(e: DispatchError) -> Response {
    match e {
        DispatchError::NotFound => {
            ApiError::not_found("no such study, order or reader").into_response()
        }
        DispatchError::Invalid(m) => ApiError::bad_request(m).into_response(),
        DispatchError::Conflict => {
            ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()).into_response()
        }
        DispatchError::Claim(c) => {
            use meridian_workflow::routing::ClaimError as C;
            let status = match c {
                C::NotFound | C::Unknown => StatusCode::NOT_FOUND,
                C::Ineligible(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::CONFLICT,
            };
            ApiError::new(status, "Cannot take this study", c.to_string()).into_response()
        }
        DispatchError::Store(meridian_store::StoreError::Config(m)) => {
            ApiError::bad_request(m).into_response()
        }
        DispatchError::Store(e) => ApiError::from(e).into_response(),
    }
}

fn store_err(e: meridian_store::StoreError) -> Response {
    err(DispatchError::Store(e))
}

/// Whether the caller may see a case or order of `site`.
fn sees_site(r: &Req, site: &str) -> bool {
    match r.scope() {
        Scope::All => true,
        Scope::Site(s) => s == site,
        _ => false,
    }
}

// ---- administration ----

pub async fn put_site_profile(
    Authed(r): Authed,
    Path(site): Path<String>,
    Json(mut s): Json<Site>,
) -> Response {
    s.id = site;
    if let Err(e) = validate_site(&s) {
        return ApiError::bad_request(e).into_response();
    }
    match r.store.put_site_profile(&s).await {
        Ok(()) => Json(s).into_response(),
        Err(e) => store_err(e),
    }
}

/// Checks what serde cannot: time zones exist, jurisdictions are given.
pub fn validate_site(s: &Site) -> Result<(), String> {
    meridian_workflow::shift::zone(&s.time_zone)?;
    if s.jurisdiction.trim().is_empty() {
        return Err(format!(
            "site {}: a jurisdiction is required (e.g. US-TX, GB)",
            s.id
        ));
    }
    Ok(())
}

pub fn validate_reader(r: &Reader) -> Result<(), String> {
    meridian_workflow::shift::zone(&r.time_zone)?;
    if r.max_concurrent == 0 {
        return Err(format!(
            "reader {}: max_concurrent must be at least 1",
            r.id
        ));
    }
    Ok(())
}

pub async fn site_profile(Authed(r): Authed, Path(site): Path<String>) -> Response {
    match r.store.site_profile(&site).await {
        Ok(Some(s)) => Json(s).into_response(),
        Ok(None) => ApiError::not_found("no workflow profile for this site").into_response(),
        Err(e) => store_err(e),
    }
}

pub async fn put_reader(
    Authed(r): Authed,
    Path(user): Path<String>,
    Json(mut p): Json<Reader>,
) -> Response {
    p.id = user;
    if let Err(e) = validate_reader(&p) {
        return ApiError::bad_request(e).into_response();
    }
    match r.store.put_reader(&p).await {
        Ok(()) => {
            r.dispatch.wake();
            Json(p).into_response()
        }
        Err(e) => store_err(e),
    }
}

pub async fn readers(Authed(r): Authed) -> Response {
    match r.store.readers().await {
        Ok(rs) => Json(
            rs.into_iter()
                .map(|(r, seen)| json!({"reader": r, "last_seen": seen}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct Days {
    days: Option<i32>,
}

/// Licences and credentials expiring within `days` (default 60), soonest first.
pub async fn expiring(Authed(r): Authed, Query(q): Query<Days>) -> Response {
    match r.store.readers().await {
        Ok(rs) => {
            let rs: Vec<Reader> = rs.into_iter().map(|x| x.0).collect();
            Json(meridian_workflow::eligibility::expiring(
                &rs,
                now_ms(),
                q.days.unwrap_or(60),
            ))
            .into_response()
        }
        Err(e) => store_err(e),
    }
}

// ---- orders ----

/// A web requisition.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Requisition {
    site: Option<String>,
    accession: String,
    placer: String,
    patient_id: String,
    issuer: String,
    patient_name: String,
    birth_date: String,
    sex: String,
    modality: String,
    body_part: String,
    procedure_code: String,
    procedure_text: String,
    priority: String,
    reason: String,
    clinical_history: String,
    ordering_physician: String,
    patient_class: String,
    location: String,
}

/// The site an order lands in: a site principal's own, else the one named.
fn order_site(r: &Req, named: Option<String>) -> Result<String, ApiError> {
    match (&r.who.site, r.who.role) {
        (Some(s), _) => {
            if named.as_ref().is_some_and(|n| n != s) {
                return Err(ApiError::not_found("no such site"));
            }
            Ok(s.clone())
        }
        (None, Role::Admin | Role::Service) => {
            named.ok_or_else(|| ApiError::bad_request("name the order's site (\"site\")"))
        }
        _ => Err(ApiError::not_found("no such site")),
    }
}

pub async fn create_order(Authed(r): Authed, Json(q): Json<Requisition>) -> Response {
    let site = match order_site(&r, q.site.clone()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let o = OrderRow {
        site_id: site,
        accession: q.accession,
        placer: q.placer,
        patient_id: q.patient_id,
        issuer: q.issuer,
        patient_name: q.patient_name,
        birth_date: q.birth_date,
        sex: q.sex,
        modality: q.modality.to_ascii_uppercase(),
        body_part: q.body_part,
        procedure_code: q.procedure_code,
        procedure_text: q.procedure_text,
        priority: q.priority.to_ascii_lowercase(),
        reason: q.reason,
        history: q.clinical_history,
        ordering: q.ordering_physician,
        patient_class: q.patient_class,
        location: q.location,
        source: "web".into(),
        ..OrderRow::default()
    };
    match r.dispatch.order_in(o, &r.who.name).await {
        Ok(o) => (StatusCode::CREATED, Json(o)).into_response(),
        Err(e) => err(e),
    }
}

pub async fn get_order(Authed(r): Authed, Path(id): Path<String>) -> Response {
    match r.store.order(&id).await {
        Ok(Some(o)) if sees_site(&r, &o.site_id) => Json(o).into_response(),
        Ok(_) => ApiError::not_found("no such order").into_response(),
        Err(e) => store_err(e),
    }
}

// ---- FHIR R4 ServiceRequest ----

const ACSN: &str = "ACSN";
const PLAC: &str = "PLAC";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

fn fhir_err(status: StatusCode, text: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": if status == StatusCode::NOT_FOUND {"not-found"} else {"invalid"}, "diagnostics": text}]
    });
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

fn ident(v: &Value, code: &str) -> String {
    v.get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|i| {
            i.pointer("/type/coding")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.get("code").and_then(Value::as_str) == Some(code))
                })
        })
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn s(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_owned()
}

#[derive(Deserialize)]
pub struct SiteParam {
    site: Option<String>,
}

/// `POST /fhir/ServiceRequest`: an order as a FHIR R4 ServiceRequest. The patient is
/// `subject.identifier` (value = patient ID, system = issuer); the accession and placer
/// numbers are identifiers typed `ACSN` and `PLAC` (v2-0203).
pub async fn fhir_create(
    Authed(r): Authed,
    Query(p): Query<SiteParam>,
    Json(v): Json<Value>,
) -> Response {
    if v.get("resourceType").and_then(Value::as_str) != Some("ServiceRequest") {
        return fhir_err(
            StatusCode::BAD_REQUEST,
            "expected a ServiceRequest resource",
        );
    }
    let site = match order_site(&r, p.site) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let codings: Vec<&Value> = v
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let modality = codings
        .iter()
        .find(|c| c.get("system").and_then(Value::as_str) == Some(DCM))
        .map(|c| s(c.get("code")))
        .unwrap_or_default();
    let proc_ = codings
        .iter()
        .find(|c| c.get("system").and_then(Value::as_str) != Some(DCM));
    let priority = match v
        .get("priority")
        .and_then(Value::as_str)
        .unwrap_or("routine")
    {
        "stat" => "stat",
        "urgent" | "asap" => "urgent",
        "routine" => "routine",
        other => {
            return fhir_err(
                StatusCode::BAD_REQUEST,
                &format!("unknown priority {other:?}"),
            );
        }
    };
    let ordered_at = v
        .get("authoredOn")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_millisecond());
    let o = OrderRow {
        site_id: site,
        accession: ident(&v, ACSN),
        placer: ident(&v, PLAC),
        patient_id: s(v.pointer("/subject/identifier/value")),
        issuer: s(v.pointer("/subject/identifier/system")),
        patient_name: s(v.pointer("/subject/display")),
        modality: modality.to_ascii_uppercase(),
        body_part: s(v.pointer("/bodySite/0/text")),
        procedure_code: proc_.map(|c| s(c.get("code"))).unwrap_or_default(),
        procedure_text: proc_
            .map(|c| s(c.get("display")))
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| s(v.pointer("/code/text"))),
        priority: priority.into(),
        reason: s(v.pointer("/reasonCode/0/text")),
        history: s(v.pointer("/note/0/text")),
        ordering: s(v.pointer("/requester/display")),
        location: s(v.pointer("/locationCode/0/text")),
        ordered_at,
        status: if v.get("status").and_then(Value::as_str) == Some("revoked") {
            "cancelled".into()
        } else {
            String::new()
        },
        source: "fhir".into(),
        ..OrderRow::default()
    };
    match r.dispatch.order_in(o, &r.who.name).await {
        Ok(o) => {
            let body = service_request(&o);
            (
                StatusCode::CREATED,
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/fhir+json".to_owned(),
                    ),
                    (
                        axum::http::header::LOCATION,
                        format!("/fhir/ServiceRequest/{}", o.order_id),
                    ),
                ],
                body.to_string(),
            )
                .into_response()
        }
        Err(DispatchError::Invalid(m)) => fhir_err(StatusCode::BAD_REQUEST, &m),
        Err(e) => err(e),
    }
}

pub async fn fhir_read(Authed(r): Authed, Path(id): Path<String>) -> Response {
    match r.store.order(&id).await {
        Ok(Some(o)) if sees_site(&r, &o.site_id) => (
            [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
            service_request(&o).to_string(),
        )
            .into_response(),
        Ok(_) => fhir_err(StatusCode::NOT_FOUND, "no such ServiceRequest"),
        Err(e) => store_err(e),
    }
}

/// An order as a FHIR R4 ServiceRequest.
pub fn service_request(o: &OrderRow) -> Value {
    let id_type = |code: &str| json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code}]});
    let mut identifiers = Vec::new();
    if !o.accession.is_empty() {
        identifiers.push(json!({"type": id_type(ACSN), "value": o.accession}));
    }
    if !o.placer.is_empty() {
        identifiers.push(json!({"type": id_type(PLAC), "value": o.placer}));
    }
    let mut coding = Vec::new();
    if !o.procedure_code.is_empty() {
        coding.push(json!({"code": o.procedure_code, "display": o.procedure_text}));
    }
    if !o.modality.is_empty() {
        coding.push(json!({"system": DCM, "code": o.modality}));
    }
    let status = match o.status.as_str() {
        "cancelled" => "revoked",
        "matched" => "active",
        _ => "active",
    };
    let priority = match o.priority.as_str() {
        "stat" => "stat",
        "urgent" => "urgent",
        _ => "routine",
    };
    let mut subject = json!({"identifier": {"value": o.patient_id}});
    if !o.issuer.is_empty() {
        subject["identifier"]["system"] = json!(o.issuer);
    }
    if !o.patient_name.is_empty() {
        subject["display"] = json!(o.patient_name);
    }
    let mut v = json!({
        "resourceType": "ServiceRequest",
        "id": o.order_id,
        "status": status,
        "intent": "order",
        "priority": priority,
        "subject": subject,
        "code": {"coding": coding, "text": o.procedure_text},
    });
    if !identifiers.is_empty() {
        v["identifier"] = json!(identifiers);
    }
    if let Ok(t) = jiff::Timestamp::from_millisecond(o.ordered_at) {
        v["authoredOn"] = json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    if !o.reason.is_empty() {
        v["reasonCode"] = json!([{"text": o.reason}]);
    }
    if !o.ordering.is_empty() {
        v["requester"] = json!({"display": o.ordering});
    }
    if !o.body_part.is_empty() {
        v["bodySite"] = json!([{"text": o.body_part}]);
    }
    if !o.location.is_empty() {
        v["locationCode"] = json!([{"text": o.location}]);
    }
    if !o.history.is_empty() {
        v["note"] = json!([{"text": o.history}]);
    }
    v
}

// ---- coordinators' queue ----

/// Unmatched studies and active orders without a study, in the caller's scope.
pub async fn reconcile_queue(Authed(r): Authed) -> Response {
    let site = match r.scope() {
        Scope::All => None,
        Scope::Site(s) => Some(s),
        _ => return ApiError::not_found("nothing here").into_response(),
    };
    let studies = r
        .store
        .cases_in(
            &[meridian_workflow::State::Unmatched],
            site.as_deref(),
            1000,
        )
        .await;
    let orders = r.store.orders(site.as_deref(), "active", 1000).await;
    match (studies, orders) {
        (Ok(s), Ok(o)) => Json(json!({"studies": s, "orders": o})).into_response(),
        (Err(e), _) | (_, Err(e)) => store_err(e),
    }
}

/// The study's case, if it belongs to a site the caller coordinates.
async fn coordinated_case(r: &Req, study: &str) -> Result<(), Response> {
    match r.store.case(study).await {
        Ok(Some(c)) if sees_site(r, &c.case.site) => Ok(()),
        Ok(_) => Err(ApiError::not_found("no such study").into_response()),
        Err(e) => Err(store_err(e)),
    }
}

#[derive(Deserialize)]
pub struct MatchBody {
    order_id: String,
}

pub async fn match_study(
    Authed(r): Authed,
    Path(study): Path<String>,
    Json(b): Json<MatchBody>,
) -> Response {
    if let Err(e) = coordinated_case(&r, &study).await {
        return e;
    }
    match r
        .dispatch
        .match_study(&study, &b.order_id, &r.who.name)
        .await
    {
        Ok(c) => Json(c).into_response(),
        Err(e) => err(e),
    }
}

/// Splits an order off a study (a wrong or partial match).
pub async fn unmatch_study(
    Authed(r): Authed,
    Path(study): Path<String>,
    Json(b): Json<MatchBody>,
) -> Response {
    if let Err(e) = coordinated_case(&r, &study).await {
        return e;
    }
    match r
        .dispatch
        .unmatch_study(&study, &b.order_id, &r.who.name)
        .await
    {
        Ok(c) => Json(c).into_response(),
        Err(e) => err(e),
    }
}

/// The orders a study fulfils.
pub async fn study_orders(Authed(r): Authed, Path(study): Path<String>) -> Response {
    if let Err(e) = coordinated_case(&r, &study).await {
        return e;
    }
    match r.store.study_orders(&study).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => store_err(e),
    }
}

// ---- worklist ----

pub async fn worklist(Authed(r): Authed, Query(f): Query<Filter>) -> Response {
    if let Err(e) = r.dispatch.heartbeat(&r.who.name).await {
        return err(e);
    }
    match r.dispatch.worklist(&r.who.name, &f, 200).await {
        Ok(w) => Json(w).into_response(),
        Err(e) => err(e),
    }
}

pub async fn heartbeat(Authed(r): Authed) -> Response {
    match r.dispatch.heartbeat(&r.who.name).await {
        Ok(true) => {
            r.dispatch.wake();
            Json(json!({"reader": r.who.name, "online": true})).into_response()
        }
        Ok(false) => ApiError::not_found("no reader profile for this user").into_response(),
        Err(e) => err(e),
    }
}

/// `GET /api/worklist/events`: Server-Sent Events of the cases this reader holds or may
/// claim: `assigned`, `claimed`, `opened`, `released`, `priority`, `matched`, `flag`,
/// `cancelled`, `lock-expired`. Each event's data is the case event (JSON). Listening
/// keeps the reader online.
pub async fn events(Authed(r): Authed) -> Response {
    let me = r.who.name.clone();
    let reader = match r.store.reader(&me).await {
        Ok(Some(x)) => x,
        Ok(None) => return ApiError::not_found("no reader profile for this user").into_response(),
        Err(e) => return store_err(e),
    };
    let sites: Vec<String> = match r.store.site_profiles().await {
        Ok(s) => meridian_dispatch::Dispatch::reader_sites(&reader, &s, now_ms())
            .into_iter()
            .map(|s| s.id.clone())
            .collect(),
        Err(e) => return store_err(e),
    };
    let _ = r.dispatch.heartbeat(&me).await;
    let mut rx = r.dispatch.subscribe();
    let dispatch = r.dispatch.clone();
    let stream = async_stream(move |tx| async move {
        let mut beat = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        let mine = e.reader.as_deref() == Some(me.as_str());
                        if mine || sites.contains(&e.site_id) {
                            let data = serde_json::to_string(&e).unwrap_or_default();
                            if tx.send(Event::default().event(e.kind.clone()).id(e.seq_id.clone()).data(data)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                        if tx.send(ev).await.is_err() { break; }
                    }
                    Err(_) => break,
                },
                _ = beat.tick() => {
                    let _ = dispatch.heartbeat(&me).await;
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream fed by a task through a small channel (ends when the client goes away).
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}

pub async fn claim(Authed(r): Authed, Path(study): Path<String>) -> Response {
    match r.dispatch.claim(&r.who.name, &study).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => err(e),
    }
}

pub async fn release(Authed(r): Authed, Path(study): Path<String>) -> Response {
    match r.dispatch.release(&r.who.name, &study).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => err(e),
    }
}

/// A case with its events (timestamps of every transition) and explanation. Visible to
/// whoever may see the study's images.
pub async fn case(Authed(r): Authed, Path(study): Path<String>) -> Response {
    match r.store.sees_study(&study, &r.scope()).await {
        Ok(true) => {}
        Ok(false) => return ApiError::not_found("no such study").into_response(),
        Err(e) => return store_err(e),
    }
    let c = match r.store.case(&study).await {
        Ok(Some(c)) => c,
        Ok(None) => return ApiError::not_found("no case for this study").into_response(),
        Err(e) => return store_err(e),
    };
    match r.store.case_events(0, &study, 10_000).await {
        Ok(evs) => {
            let sla = meridian_workflow::sla::state(&c.case, now_ms());
            Json(json!({"case": c, "sla": sla, "events": evs})).into_response()
        }
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
pub struct OpsQuery {
    #[serde(flatten)]
    filter: Filter,
    limit: Option<i64>,
}

/// Every open study with its SLA state, reader and explanation.
pub async fn operations(Authed(r): Authed, Query(q): Query<OpsQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    match r.dispatch.operations(&q.filter, limit).await {
        Ok(items) => {
            let mut counts = json!({"on-track": 0, "at-risk": 0, "breached": 0});
            for i in &items {
                let k = serde_json::to_value(i.sla).ok();
                if let Some(Value::String(k)) = k {
                    counts[&k] = json!(counts[&k].as_i64().unwrap_or(0) + 1);
                }
            }
            Json(json!({"counts": counts, "studies": items})).into_response()
        }
        Err(e) => err(e),
    }
}

// ---- order attachments ----

/// Largest attachment (a scanned requisition, a prior report).
pub const MAX_ATTACHMENT: usize = 20 << 20;
const ATTACHMENT_TYPES: [&str; 5] = [
    "application/pdf",
    "image/jpeg",
    "image/png",
    "text/plain",
    "application/dicom",
];

#[derive(Deserialize)]
pub struct AttachmentName {
    name: Option<String>,
}

/// The order, if the caller may see it.
async fn visible_order(r: &Req, id: &str) -> Result<OrderRow, Response> {
    match r.store.order(id).await {
        Ok(Some(o)) if sees_site(r, &o.site_id) => Ok(o),
        Ok(_) => Err(ApiError::not_found("no such order").into_response()),
        Err(e) => Err(store_err(e)),
    }
}

/// `POST /api/orders/{order}/attachments?name=FILE`: the raw file as the body, with its
/// Content-Type (PDF, JPEG, PNG, plain text or DICOM), at most 20 MiB.
pub async fn add_attachment(
    Authed(r): Authed,
    Path(id): Path<String>,
    Query(q): Query<AttachmentName>,
    req: axum::extract::Request,
) -> Response {
    let order = match visible_order(&r, &id).await {
        Ok(o) => o,
        Err(e) => return e,
    };
    let ct = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !ATTACHMENT_TYPES.contains(&ct.as_str()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported attachment type",
            format!("accepted: {}", ATTACHMENT_TYPES.join(", ")),
        )
        .into_response();
    }
    let name: String = q
        .name
        .unwrap_or_else(|| "attachment".into())
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '/' | '\\' | '"'))
        .take(200)
        .collect();
    let body = match axum::body::to_bytes(req.into_body(), MAX_ATTACHMENT).await {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => return ApiError::bad_request("empty attachment").into_response(),
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Attachment too large",
                format!("at most {MAX_ATTACHMENT} bytes"),
            )
            .into_response();
        }
    };
    match r
        .store
        .add_attachment(&order.order_id, &name, &ct, body, &r.who.name)
        .await
    {
        Ok(a) => (StatusCode::CREATED, Json(a)).into_response(),
        Err(e) => store_err(e),
    }
}

pub async fn attachments(Authed(r): Authed, Path(id): Path<String>) -> Response {
    let order = match visible_order(&r, &id).await {
        Ok(o) => o,
        Err(e) => return e,
    };
    match r.store.attachments(&order.order_id).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => store_err(e),
    }
}

pub async fn attachment(Authed(r): Authed, Path((id, att)): Path<(String, String)>) -> Response {
    let order = match visible_order(&r, &id).await {
        Ok(o) => o,
        Err(e) => return e,
    };
    match r.store.attachment(&order.order_id, &att).await {
        Ok(Some((a, bytes))) => (
            [
                (axum::http::header::CONTENT_TYPE, a.content_type.clone()),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", a.name),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => ApiError::not_found("no such attachment").into_response(),
        Err(e) => store_err(e),
    }
}
