//! Wiring of the workflow: the HL7 v2 MLLP listener (orders in) mapped onto the
//! dispatch service, and `meridian admin import FILE` (bulk onboarding of sites and
//! readers from TOML, YAML or JSON).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use meridian_dispatch::{Dispatch, parse_hl7_ts};
use meridian_hl7::{Header, Hl7Error, Inbound, Location, OrderFields, codes};
use meridian_store::workflow::OrderRow;
use meridian_workflow::model::{Priority, Reader, Site};
use serde::Deserialize;

use crate::config::{ServeArgs, Settings};

/// Receives interpreted HL7 messages: orders, cancels, patient updates.
pub struct Hl7Sink {
    pub dispatch: Arc<Dispatch>,
}

fn site_of(sites: &[Site], facility: Option<&str>) -> Result<Site, Hl7Error> {
    let f = facility.unwrap_or_default();
    sites
        .iter()
        .find(|s| s.hl7_facilities.iter().any(|x| x.eq_ignore_ascii_case(f)))
        .cloned()
        .ok_or_else(|| {
            Hl7Error::reject(
                codes::TABLE_VALUE_NOT_FOUND,
                format!("sending facility {f:?} is not registered to any site"),
            )
            .at(Location::new("MSH", 1, 4, 1))
        })
}

fn order_row(site: &Site, o: &OrderFields) -> Result<OrderRow, Hl7Error> {
    let priority = match o.priority.as_deref().filter(|p| !p.trim().is_empty()) {
        None => Priority::Routine,
        Some(p) => Priority::from_code(p).ok_or_else(|| {
            Hl7Error::error(
                codes::TABLE_VALUE_NOT_FOUND,
                format!("unknown priority {p:?}"),
            )
            .at(Location::new("ORC", 1, 7, 6))
        })?,
    };
    let ordered_at = match o.order_datetime.as_deref().filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => parse_hl7_ts(t, &site.time_zone).ok_or_else(|| {
            Hl7Error::error(codes::DATA_TYPE, format!("not an HL7 timestamp: {t:?}"))
                .at(Location::new("ORC", 1, 9, 1))
        })?,
    };
    let s = |x: &Option<String>| x.clone().unwrap_or_default();
    Ok(OrderRow {
        site_id: site.id.clone(),
        accession: s(&o.accession),
        placer: s(&o.placer_order),
        patient_id: o.patient_id.clone(),
        issuer: s(&o.issuer),
        patient_name: s(&o.patient_name),
        birth_date: s(&o.birth_date),
        sex: s(&o.sex),
        modality: s(&o.modality).to_ascii_uppercase(),
        body_part: s(&o.body_part),
        procedure_code: s(&o.procedure_code),
        procedure_text: s(&o.procedure_text),
        priority: priority.as_str().into(),
        reason: s(&o.reason_for_exam),
        ordering: s(&o.ordering_physician),
        patient_class: s(&o.patient_class),
        location: s(&o.patient_location),
        ordered_at,
        source: "hl7".into(),
        ..OrderRow::default()
    })
}

fn internal(e: impl std::fmt::Display) -> Hl7Error {
    Hl7Error::internal(e.to_string())
}

impl meridian_hl7::Sink for Hl7Sink {
    async fn accept(
        &self,
        peer: SocketAddr,
        header: &Header,
        msg: Vec<Inbound>,
    ) -> Result<(), Hl7Error> {
        let store = self.dispatch.store();
        let sites = self.dispatch.sites_cached().await.map_err(internal)?;
        let facility = header.sending_facility.namespace.as_str();
        let site = site_of(&sites, Some(facility))?;
        // Validate every item before storing any: nothing partial.
        enum Step {
            Save(Box<OrderRow>),
            Cancel(String, String),
            Patient(meridian_hl7::PatientFields),
        }
        let mut steps = Vec::new();
        for item in &msg {
            steps.push(match item {
                Inbound::NewOrder(o) | Inbound::UpdateOrder(o) => {
                    Step::Save(Box::new(order_row(&site, o)?))
                }
                Inbound::CancelOrder(o) => Step::Cancel(
                    o.placer_order.clone().unwrap_or_default(),
                    o.accession.clone().unwrap_or_default(),
                ),
                Inbound::PatientUpdate(p) => Step::Patient(p.clone()),
            });
        }
        let actor = format!("hl7:{facility}");
        for step in steps {
            let (patient, issuer, accession, action) = match step {
                Step::Save(o) => {
                    let o = self
                        .dispatch
                        .order_in(*o, &actor)
                        .await
                        .map_err(|e| match e {
                            meridian_dispatch::DispatchError::Invalid(m) => {
                                Hl7Error::error(codes::REQUIRED_FIELD_MISSING, m)
                            }
                            e => internal(e),
                        })?;
                    (o.patient_id, o.issuer, o.accession, "order")
                }
                Step::Cancel(placer, acc) => {
                    let found = self
                        .dispatch
                        .cancel_order(&site.id, &placer, &acc, &actor)
                        .await
                        .map_err(internal)?;
                    if !found {
                        return Err(Hl7Error::error(
                            codes::TABLE_VALUE_NOT_FOUND,
                            "no such order to cancel (placer number / accession)",
                        )
                        .at(Location::new("ORC", 1, 2, 1)));
                    }
                    (String::new(), String::new(), acc, "order cancel")
                }
                Step::Patient(p) => {
                    let issuer = p.issuer.clone().unwrap_or_default();
                    store
                        .update_patient(
                            &site.id,
                            &p.patient_id,
                            &issuer,
                            p.name.as_deref().unwrap_or_default(),
                            p.birth_date.as_deref().unwrap_or_default(),
                            p.sex.as_deref().unwrap_or_default(),
                        )
                        .await
                        .map_err(internal)?;
                    (p.patient_id, issuer, String::new(), "patient update")
                }
            };
            let some = |s: String| (!s.is_empty()).then_some(s);
            store
                .audit(meridian_audit::AuditEvent {
                    at_ms: meridian_store::now_ms(),
                    actor: actor.clone(),
                    role: "service".into(),
                    action: format!(
                        "HL7 {}^{} {action}",
                        header.message_type, header.trigger_event
                    ),
                    patient_id: some(patient),
                    issuer: some(issuer),
                    accession: some(accession),
                    source: peer.to_string(),
                    outcome: "AA".into(),
                    detail: format!("site {} control id {}", site.id, header.control_id),
                    ..Default::default()
                })
                .await
                .map_err(internal)?;
        }
        Ok(())
    }
}

/// Binds the MLLP listener and serves it in the background.
pub async fn start_hl7(addr: &str, dispatch: Arc<Dispatch>, fallback: bool) -> Result<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if fallback => {
            tracing::warn!(%addr, error = %e, "HL7 port taken; using a free port");
            tokio::net::TcpListener::bind("127.0.0.1:0").await?
        }
        Err(e) => return Err(e).with_context(|| format!("binding HL7 MLLP port {addr}")),
    };
    let local = listener.local_addr()?;
    let sink = Arc::new(Hl7Sink { dispatch });
    tokio::spawn(async move {
        if let Err(e) =
            meridian_hl7::mllp::serve(listener, sink, meridian_hl7::MllpConfig::default()).await
        {
            tracing::error!(error = %e, "HL7 listener stopped");
        }
    });
    Ok(local)
}

// ---- meridian admin import ----

#[derive(Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    cmd: AdminCmd,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Onboard sites and readers in bulk from a TOML, YAML (.yaml/.yml) or JSON (.json) file; see docs/workflow.md.
    Import { file: PathBuf },
}

/// An onboarding file: sites (with their AE titles) and readers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Onboarding {
    #[serde(default)]
    sites: Vec<ImportSite>,
    #[serde(default)]
    readers: Vec<Reader>,
}

#[derive(Deserialize)]
struct ImportSite {
    #[serde(flatten)]
    site: Site,
    #[serde(default)]
    ae_titles: Vec<String>,
}

pub async fn admin(a: AdminArgs) -> Result<()> {
    let s = Settings::resolve(a.serve, false)?;
    match a.cmd {
        AdminCmd::Import { file } => import(&s, &file).await,
    }
}

/// Parses and checks an onboarding file completely before writing anything.
fn read_onboarding(file: &PathBuf) -> Result<Onboarding> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if meta.len() > 16 << 20 {
        bail!("{} is larger than 16 MiB", file.display());
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let what = || format!("parsing {}", file.display());
    let ob: Onboarding = match ext.as_str() {
        "json" => serde_json::from_str(&text).with_context(what)?,
        "yaml" | "yml" => serde_saphyr::from_str(&text).with_context(what)?,
        _ => toml::from_str(&text).with_context(what)?,
    };
    for s in &ob.sites {
        meridian_web::workflow::validate_site(&s.site).map_err(anyhow::Error::msg)?;
    }
    for r in &ob.readers {
        meridian_web::workflow::validate_reader(r).map_err(anyhow::Error::msg)?;
    }
    Ok(ob)
}

async fn import(s: &Settings, file: &PathBuf) -> Result<()> {
    let ob = read_onboarding(file)?;
    let store = crate::open_store(s).await?;
    let actor = format!("cli:{}", crate::admin_cli::os_user());
    for is in &ob.sites {
        store.put_site_profile(&is.site).await?;
        for ae in &is.ae_titles {
            let (title, host) = match ae.split_once('@') {
                Some((t, h)) => (t, Some(h)),
                None => (ae.as_str(), None),
            };
            store.put_site_ae(title, &is.site.id, host).await?;
        }
        println!(
            "site {} ({}, {}): {} AE titles, {} triage rules",
            is.site.id,
            is.site.jurisdiction,
            is.site.time_zone,
            is.ae_titles.len(),
            is.site.triage.len()
        );
    }
    for r in &ob.readers {
        if store.user(&r.id).await?.is_none() {
            store
                .add_user(&r.id, meridian_auth::Role::Radiologist, None, None, None)
                .await?;
            println!(
                "user {} created (radiologist, no password: set one with `meridian user password {}` or use SSO)",
                r.id, r.id
            );
        }
        store.put_reader(r).await?;
        println!(
            "reader {}: {} licences, {} credentials, {} shifts",
            r.id,
            r.licences.len(),
            r.credentials.len(),
            r.shifts.len()
        );
    }
    store
        .audit(meridian_audit::AuditEvent {
            at_ms: meridian_store::now_ms(),
            actor,
            role: "admin".into(),
            action: "CONFIG admin import".into(),
            source: "cli".into(),
            outcome: "ok".into(),
            detail: format!(
                "{} sites, {} readers from {}",
                ob.sites.len(),
                ob.readers.len(),
                file.display()
            ),
            ..Default::default()
        })
        .await?;
    let soon = meridian_workflow::eligibility::expiring(&ob.readers, meridian_store::now_ms(), 60);
    for e in soon {
        println!(
            "warning: {} {} {} expires {}",
            e.reader, e.kind, e.of, e.expires
        );
    }
    store.close().await;
    Ok(())
}
