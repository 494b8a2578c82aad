//! `meridian demo`: synthetic studies so a new user sees data at once.

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use meridian_auth::{Role, password};
use meridian_store::Store;
use meridian_store::ingest::{Ingest, Input};
use meridian_synth::{DemoOptions, demo_instances};

use crate::config::Settings;

/// The demo site and the calling AE titles registered to it (DCMTK's and pynetdicom's defaults).
pub const DEMO_SITE: &str = "demo";
pub const DEMO_AES: &[&str] = &[
    "ECHOSCU",
    "STORESCU",
    "FINDSCU",
    "MOVESCU",
    "GETSCU",
    "DCMSEND",
    "PYNETDICOM",
    "MODALITY",
];
pub const DEMO_RADIOLOGIST: &str = "dr.reader";

/// Demo accounts, one per role that has something to see; fresh passwords on every start.
pub async fn accounts(store: &Store) -> Result<Vec<(String, Role, String)>> {
    store
        .put_site(DEMO_SITE, "Demo Imaging Centre (synthetic)")
        .await?;
    for ae in DEMO_AES {
        store.put_site_ae(ae, DEMO_SITE, None).await?;
    }
    let mut out = Vec::new();
    for (user, role, site) in [
        ("admin", Role::Admin, None),
        (DEMO_RADIOLOGIST, Role::Radiologist, None),
        ("tech.demo", Role::Site, Some(DEMO_SITE)),
        ("auditor", Role::Auditor, None),
    ] {
        let pw = password::generate();
        let hash = password::hash(&pw).map_err(anyhow::Error::msg)?;
        if store.user(user).await?.is_none() {
            store.add_user(user, role, site, Some(&hash), None).await?;
        } else {
            store.set_password_hash(user, &hash).await?;
        }
        out.push((user.to_owned(), role, pw));
    }
    profiles(store).await?;
    Ok(out)
}

/// The demo site's contract and triage rules, and two readers: dr.reader (licensed in
/// Texas, credentialed at the demo site) and dr.offshore (licensed in England only,
/// so never eligible here: the explanations say so).
async fn profiles(store: &Store) -> Result<()> {
    let site: meridian_workflow::Site = serde_json::from_value(serde_json::json!({
        "id": DEMO_SITE,
        "name": "Demo Imaging Centre (synthetic)",
        "time_zone": "America/Chicago",
        "jurisdiction": "US-TX",
        "data_region": "us",
        "hl7_facilities": ["DEMO_RIS"],
        "contract": {
            "sla_minutes": {"stat": 30, "urgent": 120, "routine": 1440},
            "protocol_sla_minutes": {"stroke": 20, "trauma": 30},
            "mode": "pull",
            "unordered": "read",
            "unopened_minutes": 15
        },
        "rvu": {"CT": 1.5, "MR": 2.0, "CR": 0.3, "US": 0.7},
        "triage": [
            {"name": "code-stroke", "keywords": ["code stroke", "stroke"], "modality": ["CT", "MR"],
             "priority": "stat", "protocol": "stroke", "subspecialty": "neuro"},
            {"name": "trauma", "keywords": ["trauma"], "priority": "stat", "protocol": "trauma"},
            {"name": "emergency-department", "location": ["ED", "E"], "priority": "urgent"}
        ]
    }))?;
    store.put_site_profile(&site).await?;
    if store.user("dr.offshore").await?.is_none() {
        store
            .add_user("dr.offshore", Role::Radiologist, None, None, None)
            .await?;
    }
    let always =
        serde_json::json!([{"days": [0, 1, 2, 3, 4, 5, 6], "start": "00:00", "end": "00:00"}]);
    for r in [
        serde_json::json!({
            "id": DEMO_RADIOLOGIST, "name": "Dr Demo Reader (synthetic)", "time_zone": "America/Chicago",
            "region": "us",
            "licences": [{"jurisdiction": "US-TX", "number": "TX-DEMO-1", "expires": "2030-12-31"}],
            "credentials": [{"site": DEMO_SITE, "scope": "final", "expires": "2030-06-30"}],
            "subspecialties": ["neuro"], "modalities": ["CT", "MR", "CR", "US"],
            "shifts": always, "max_concurrent": 8
        }),
        serde_json::json!({
            "id": "dr.offshore", "name": "Dr Offshore (synthetic)", "time_zone": "Europe/London",
            "region": "gb",
            "licences": [{"jurisdiction": "GB", "number": "GMC-DEMO-2", "expires": "2030-12-31"}],
            "credentials": [{"site": DEMO_SITE, "scope": "prelim", "expires": "2030-06-30"}],
            "modalities": ["CT", "MR", "CR", "US"],
            "shifts": always, "max_concurrent": 8
        }),
    ] {
        let r: meridian_workflow::Reader = serde_json::from_value(r)?;
        store.put_reader(&r).await?;
    }
    Ok(())
}

pub fn banner(
    s: &Settings,
    http: SocketAddr,
    dicom: SocketAddr,
    dicom_tls: Option<SocketAddr>,
    hl7: Option<SocketAddr>,
    logins: &[(String, Role, String)],
) {
    let web = if s.tls.is_some() { "https" } else { "http" };
    println!(
        "Meridian demo (embedded SQLite + local files in {})",
        s.data_dir.display()
    );
    println!(
        "  loading synthetic demo studies: CT (phantom), MR, CR, US cine - all marked SYNTHETIC"
    );
    match &s.viewer_dir {
        Some(_) => println!("  viewer (OHIF):    {web}://{http}/"),
        None => println!(
            "  viewer:           none (run scripts/fetch-ohif, then `meridian demo` serves it at {web}://{http}/)"
        ),
    }
    println!("  DICOMweb:         {web}://{http}/dicom-web/studies");
    println!("  health / metrics: {web}://{http}/healthz  {web}://{http}/metrics");
    println!(
        "  DICOM (DIMSE):    AE {} at {dicom}   e.g. echoscu -aet ECHOSCU -aec {} {} {}",
        s.ae_title,
        s.ae_title,
        dicom.ip(),
        dicom.port()
    );
    println!(
        "                    calling AE titles of site '{DEMO_SITE}': {}",
        DEMO_AES.join(" ")
    );
    if let Some(t) = dicom_tls {
        println!(
            "  DICOM TLS:        AE {} at {t}   e.g. echoscu +tls KEY CERT +cf CA -aet ECHOSCU -aec {} {} {}",
            s.ae_title,
            s.ae_title,
            t.ip(),
            t.port()
        );
    }
    if let Some(h) = hl7 {
        println!(
            "  HL7 v2 (MLLP):     {h}   orders from sending facility DEMO_RIS, e.g. mllp_send --loose -f docs/examples/orm-stroke.hl7 -p {} {}",
            h.port(),
            h.ip()
        );
    }
    println!(
        "  worklist:         {web}://{http}/api/worklist (as dr.reader)   operations: {web}://{http}/api/operations (as admin)"
    );
    println!("  logins (new passwords on every start; sign in at {web}://{http}/login):");
    for (user, role, pw) in logins {
        println!("    {user:<12} {pw}   ({role})");
    }
}

pub async fn load(ingest: &Ingest) -> Result<()> {
    let mut studies = std::collections::BTreeSet::new();
    let opts = DemoOptions {
        seed: 0,
        ..DemoOptions::default()
    };
    let iter = demo_instances(&opts);
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    // Generation is CPU work: do it off the async threads.
    tokio::task::spawn_blocking(move || {
        for inst in iter {
            if tx.blocking_send(inst).is_err() {
                break;
            }
        }
    });
    let (mut stored, mut present) = (0, 0);
    while let Some(inst) = rx.recv().await {
        let inst = inst?;
        let (info, outcome) = ingest
            .ingest(
                DEMO_SITE,
                Input::Part10 {
                    bytes: Bytes::from(inst.bytes),
                    expect_study: None,
                },
            )
            .await?;
        studies.insert(info.study_uid);
        match outcome {
            meridian_store::StoreOutcome::Duplicate => present += 1,
            _ => stored += 1,
        }
    }
    // The demo radiologist may open every demo study in the viewer at once (the
    // workflow grants access on claim or assignment; this saves a claim per study).
    for study in &studies {
        ingest.store.grant(DEMO_RADIOLOGIST, study, "demo").await?;
    }
    println!("  demo studies ready: {stored} instances loaded, {present} already present");
    Ok(())
}
