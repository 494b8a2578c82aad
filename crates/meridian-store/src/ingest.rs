//! The one ingest path shared by DIMSE C-STORE, STOW-RS and `meridian import`:
//! bounded parse on a bounded worker pool, then a durable store.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;
use meridian_dicom::parse::{self, Limits, ParseError};
use meridian_dicom::{InstanceInfo, sop};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::{Committed, Store, StoreError, StoreOutcome};

static RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "meridian_instances_received_total",
        "Instances stored (new, duplicate or replaced)",
    )
    .expect("metric");
    prometheus::register(Box::new(c.clone())).ok();
    c
});
static BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new("meridian_bytes_received_total", "Bytes of instances stored")
        .expect("metric");
    prometheus::register(Box::new(c.clone())).ok();
    c
});
static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "meridian_store_failures_total",
            "Instances refused, by reason",
        ),
        &["reason"],
    )
    .expect("metric");
    prometheus::register(Box::new(c.clone())).ok();
    c
});
static LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "meridian_store_seconds",
            "Time to parse and durably store one instance",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
    )
    .expect("metric");
    prometheus::register(Box::new(h.clone())).ok();
    h
});

/// Makes the ingest metrics appear on /metrics from start-up.
pub fn register_metrics() {
    LazyLock::force(&RECEIVED);
    LazyLock::force(&BYTES);
    LazyLock::force(&FAILURES);
    LazyLock::force(&LATENCY);
}

/// Why an instance was not stored.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("SOP class {0} is not a storage SOP class")]
    NotStorage(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("server busy")]
    Busy,
}

impl IngestError {
    /// DIMSE C-STORE status (PS3.4 B.2.3).
    pub fn dimse_status(&self) -> u16 {
        match self {
            IngestError::Parse(p) => p.dimse_status(),
            IngestError::NotStorage(_) => 0xA900,
            // Refused (PS3.4 B.2.3 "Refused: Not Authorized" is 0x0124).
            IngestError::Store(StoreError::OtherSite) => 0x0124,
            IngestError::Store(_) | IngestError::Busy => 0xA700,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Parse(p) => p.reason(),
            IngestError::NotStorage(_) => "not_storage_class",
            IngestError::Store(StoreError::OtherSite) => "other_site",
            IngestError::Store(_) => "storage_error",
            IngestError::Busy => "busy",
        }
    }

    /// Whether the client sent something wrong (4xx) rather than the server failing (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            IngestError::Parse(_)
                | IngestError::NotStorage(_)
                | IngestError::Store(StoreError::OtherSite)
        )
    }
}

/// What arrives.
pub enum Input {
    /// A whole Part 10 file (STOW-RS, import); `expect_study` refuses
    /// instances of another study (STOW-RS to /studies/{study}).
    Part10 {
        bytes: Bytes,
        expect_study: Option<String>,
    },
    /// A data set received over DIMSE in a negotiated transfer syntax.
    Dataset {
        data: Bytes,
        transfer_syntax: String,
        sop_class: String,
        sop_instance: String,
        source_ae: String,
    },
}

/// Parses what arrived: the instance's facts, the Part 10 header to put
/// before the data (empty for a whole file) and the data as received.
fn parse_input(
    input: Input,
    limits: &Limits,
) -> Result<(InstanceInfo, Vec<u8>, Bytes), IngestError> {
    Ok(match input {
        Input::Part10 {
            bytes,
            expect_study,
        } => {
            let (_, _, info) = parse::parse_part10(&bytes, limits)?;
            if expect_study.is_some_and(|s| s != info.study_uid) {
                return Err(ParseError::Mismatch(
                    "StudyInstanceUID",
                    "the study in the request URL",
                )
                .into());
            }
            (info, Vec::new(), bytes)
        }
        Input::Dataset {
            data,
            transfer_syntax,
            sop_class,
            sop_instance,
            source_ae,
        } => {
            let obj = parse::parse_header(&data, &transfer_syntax, limits)?;
            let info = parse::extract(&obj, &transfer_syntax)?;
            if info.sop_instance_uid != sop_instance.trim_end_matches(['\0', ' ']) {
                return Err(
                    ParseError::Mismatch("SOPInstanceUID", "AffectedSOPInstanceUID").into(),
                );
            }
            if info.sop_class_uid != sop_class.trim_end_matches(['\0', ' ']) {
                return Err(ParseError::Mismatch("SOPClassUID", "AffectedSOPClassUID").into());
            }
            // The data set is kept exactly as received, after a new meta group.
            let head = parse::part10_header(&info, &source_ae)?;
            (info, head, data)
        }
    })
}

/// Shared ingest service.
#[derive(Clone)]
pub struct Ingest {
    pub store: Store,
    pub limits: Limits,
    cpu: Arc<Semaphore>,
}

impl Ingest {
    pub fn new(store: Store, limits: Limits, workers: usize) -> Ingest {
        register_metrics();
        Ingest {
            store,
            limits,
            cpu: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// Parses, validates and durably stores one instance.
    /// `site` is the tenant the instance arrives for (from the calling AE or
    /// the STOW-RS credential); a study keeps the site that sent it first.
    pub async fn ingest(
        &self,
        site: &str,
        input: Input,
    ) -> Result<(InstanceInfo, StoreOutcome), IngestError> {
        let t = Instant::now();
        let r = self.ingest_inner(site, input).await;
        match &r {
            Ok((_, _)) => {
                RECEIVED.inc();
                LATENCY.observe(t.elapsed().as_secs_f64());
            }
            Err(e) => FAILURES.with_label_values(&[e.reason()]).inc(),
        }
        r
    }

    async fn ingest_inner(
        &self,
        site: &str,
        input: Input,
    ) -> Result<(InstanceInfo, StoreOutcome), IngestError> {
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| IngestError::Busy)?;
        let limits = self.limits;
        let store = self.store.clone();
        let site = site.to_owned();
        // One blocking hop: bounded parse; the index row goes to the writer
        // (which stages it) while the file is written and fsynced; then the
        // same thread waits for the commit.
        let (info, committed, len) = tokio::task::spawn_blocking(
            move || -> Result<(InstanceInfo, Committed, usize), IngestError> {
                let parsed = parse_input(input, &limits);
                // The permit bounds parsing (CPU and memory); waiting on the
                // disk below does not hold it.
                drop(permit);
                let (info, head, body) = parsed?;
                if !sop::is_storage_sop_class(&info.sop_class_uid) {
                    return Err(IngestError::NotStorage(info.sop_class_uid));
                }
                let key = Store::new_key(&info)?;
                let len = head.len() + body.len();
                let committed = store.put_blocking(&site, info.clone(), key, &[&head, &body])?;
                Ok((info, committed, len))
            },
        )
        .await
        .map_err(|_| IngestError::Busy)??;
        // A failed file leaves no row; the outcome also removes what was written.
        let outcome = committed.outcome().await?;
        BYTES.inc_by(len as u64);
        Ok((info, outcome))
    }
}
