//! `meridian demo`: synthetic studies so a new user sees data at once.

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use meridian_store::ingest::{Ingest, Input};
use meridian_synth::{DemoOptions, demo_instances};

use crate::config::Settings;

pub fn banner(s: &Settings, http: SocketAddr, dicom: SocketAddr) {
    println!(
        "Meridian demo (embedded SQLite + local files in {})",
        s.data_dir.display()
    );
    println!(
        "  loading synthetic demo studies: CT (phantom), MR, CR, US cine - all marked SYNTHETIC"
    );
    match &s.viewer_dir {
        Some(_) => println!("  viewer (OHIF):    http://{http}/"),
        None => println!(
            "  viewer:           none (run scripts/fetch-ohif, then `meridian demo` serves it at http://{http}/)"
        ),
    }
    println!("  DICOMweb:         http://{http}/dicom-web/studies");
    println!("  health / metrics: http://{http}/healthz  http://{http}/metrics");
    println!(
        "  DICOM (DIMSE):    AE {} at {dicom}   e.g. echoscu -aec {} {} {}",
        s.ae_title,
        s.ae_title,
        dicom.ip(),
        dicom.port()
    );
    println!(
        "  logins:           none yet - accounts and roles arrive with the security layer; bind to loopback only"
    );
}

pub async fn load(ingest: &Ingest) -> Result<()> {
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
        let (_, outcome) = ingest
            .ingest(Input::Part10 {
                bytes: Bytes::from(inst.bytes),
                expect_study: None,
            })
            .await?;
        match outcome {
            meridian_store::StoreOutcome::Duplicate => present += 1,
            _ => stored += 1,
        }
    }
    println!("  demo studies ready: {stored} instances loaded, {present} already present");
    Ok(())
}
