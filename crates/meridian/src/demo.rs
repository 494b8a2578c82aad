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
    Ok(out)
}

pub fn banner(
    s: &Settings,
    http: SocketAddr,
    dicom: SocketAddr,
    dicom_tls: Option<SocketAddr>,
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
    // Until the workflow assigns studies, the demo radiologist is granted them explicitly.
    for study in &studies {
        ingest.store.grant(DEMO_RADIOLOGIST, study, "demo").await?;
    }
    println!("  demo studies ready: {stored} instances loaded, {present} already present");
    Ok(())
}
