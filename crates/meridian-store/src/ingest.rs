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

use crate::blobs::Early;
use crate::{Blobs, PendingIndex, Store, StoreError, StoreOutcome};

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    prometheus::register(Box::new(c.clone())).ok();
    c
}

static RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meridian_instances_received_total",
        "Instances stored (new, duplicate or replaced)",
    )
});
static BYTES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("meridian_bytes_received_total", "Bytes of instances stored"));
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
static STREAMED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meridian_instances_streamed_total",
        "Instances whose file was written while they arrived (DIMSE C-STORE on an association with few others open)",
    )
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
    LazyLock::force(&STREAMED);
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

/// A data set written to its object file while it arrives (DIMSE C-STORE),
/// so that writing overlaps the transfer instead of following it. The file
/// is named from the header as soon as the bytes before Pixel Data are in
/// ([`parse::peek_info`]), then each fragment is appended as it comes.
/// Nothing is kept on the strength of that: [`Ingest::ingest_streamed`]
/// checks the complete data set as for any instance ([`parse::scan_whole`])
/// and uses the file only if it holds all of it and Pixel Data is where the
/// header was read (so the header read early is the data set's); otherwise
/// the data set takes the ordinary path. A stream dropped unfinished
/// (refused data set, aborted association, failed write) removes its file.
pub struct Stream {
    blobs: Blobs,
    limits: Limits,
    transfer_syntax: String,
    sop_class: String,
    sop_instance: String,
    source_ae: String,
    open: Option<Streamed>,
    /// Bytes there were at the last look for the header: it is looked for
    /// again only once they have doubled, so a header spread over many small
    /// fragments costs linear, not quadratic, time.
    looked_at: usize,
    /// Not streaming (the header came too late or did not fit the command,
    /// or a write failed): the instance takes the ordinary path.
    off: bool,
}

struct Streamed {
    key: String,
    file: std::fs::File,
    /// Syncs started early: the directory entry's when the file was
    /// created, the file's when its last byte was written.
    early: Early,
    info: InstanceInfo,
    head: Vec<u8>,
    /// Offset of Pixel Data in the data set: the header ends there.
    pixel_data: usize,
    /// Data set bytes written after `head`.
    written: usize,
    /// Data set bytes whose writeback has been started.
    kicked: usize,
}

/// A header not complete in this many bytes is not streamed.
const PEEK_MAX: usize = 1 << 20;
/// Writeback is started every this many bytes written.
const KICK_EVERY: usize = 128 << 10;

impl Stream {
    /// Takes `all`, the data set received so far (it only grows); writes
    /// what is new. Blocking (short writes to the page cache).
    pub fn feed(&mut self, all: &[u8]) {
        if self.off {
            return;
        }
        if self.open.is_none() {
            if all.len() < 2 * self.looked_at {
                return;
            }
            self.looked_at = all.len();
            match self.start(all) {
                Ok(true) => {}
                Ok(false) => {
                    self.off = all.len() > PEEK_MAX;
                    return;
                }
                Err(()) => {
                    self.off = true;
                    return;
                }
            }
        }
        let Some(o) = self.open.as_mut() else { return };
        use std::io::Write;
        // `all` only grows; a shorter one would be a caller's bug: give up.
        let fresh = all.get(o.written..);
        if fresh.is_none_or(|b| o.file.write_all(b).is_err()) {
            self.abandon();
            return;
        }
        o.written = all.len();
        if o.written - o.kicked >= KICK_EVERY {
            start_writeback(
                &o.file,
                (o.head.len() + o.kicked) as u64,
                (o.written - o.kicked) as u64,
            );
            o.kicked = o.written;
        }
    }

    /// The data set is complete (every byte was fed): starts the file's
    /// fsync, so that it overlaps the check of the data set and the hops
    /// before [`Ingest::ingest_streamed`] waits for it. A data set the check
    /// then refuses has its file removed as before.
    pub fn complete(&mut self) {
        if let Some(o) = self.open.as_mut()
            && o.early.file.is_none()
        {
            o.early.file = self.blobs.start_file_sync(&o.file);
        }
    }

    /// Opens the file once the header is in: `Ok(false)` not yet.
    fn start(&mut self, all: &[u8]) -> Result<bool, ()> {
        let Some((info, pixel_data)) = parse::peek_info(all, &self.transfer_syntax, &self.limits)
        else {
            return Ok(false);
        };
        let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
        if info.sop_instance_uid != trim(&self.sop_instance)
            || info.sop_class_uid != trim(&self.sop_class)
            || !sop::is_storage_sop_class(&info.sop_class_uid)
        {
            return Err(());
        }
        let key = Store::new_key(&info).map_err(|_| ())?;
        let head = parse::part10_header(&info, &self.source_ae).map_err(|_| ())?;
        let mut file = self.blobs.create_blocking(&key).map_err(|_| ())?;
        use std::io::Write;
        if file.write_all(&head).is_err() {
            drop(file);
            self.blobs.remove_blocking(&key);
            return Err(());
        }
        let early = Early {
            file: None,
            dirs: self.blobs.start_dir_sync(&key),
        };
        self.open = Some(Streamed {
            key,
            file,
            early,
            info,
            head,
            pixel_data,
            written: 0,
            kicked: 0,
        });
        Ok(true)
    }

    fn abandon(&mut self) {
        if let Some(o) = self.open.take() {
            drop(o.file);
            self.blobs.remove_blocking(&o.key);
        }
        self.off = true;
    }

    /// The file, with the facts read from its header, if it holds the whole
    /// data set `data` and the complete scan (which refuses what the ordinary
    /// parse refuses) finds Pixel Data where the header was read.
    fn take_if_whole(&mut self, data: &[u8]) -> Result<Option<Streamed>, ParseError> {
        let Some(o) = self.open.as_ref() else {
            return Ok(None);
        };
        if o.written != data.len() {
            return Ok(None);
        }
        let at = parse::scan_whole(data, &self.transfer_syntax, &self.limits)?;
        Ok(if at == Some(o.pixel_data) {
            self.open.take()
        } else {
            None
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Starts writing `len` bytes of `file` at `offset` back to the disk without
/// waiting, so that the fsync before the acknowledgement finds less to do.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor owned by `file`, alive for the
    // call; SYNC_FILE_RANGE_WRITE only starts writeback. Failure is harmless
    // (the fsync does the work).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

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

    /// A stream for a C-STORE data set about to arrive (see [`Stream`]).
    pub fn stream(
        &self,
        transfer_syntax: &str,
        sop_class: &str,
        sop_instance: &str,
        source_ae: &str,
    ) -> Stream {
        Stream {
            blobs: self.store.blobs().clone(),
            limits: self.limits,
            transfer_syntax: transfer_syntax.to_owned(),
            sop_class: sop_class.to_owned(),
            sop_instance: sop_instance.to_owned(),
            source_ae: source_ae.to_owned(),
            open: None,
            looked_at: 0,
            off: false,
        }
    }

    /// [`Ingest::ingest`] of a data set that was streamed to its file while
    /// it arrived: parsed and checked all the same, the streamed file kept
    /// only if it is exactly what the ordinary path would have written.
    pub async fn ingest_streamed(
        &self,
        site: &str,
        input: Input,
        stream: Option<Stream>,
    ) -> Result<(InstanceInfo, StoreOutcome), IngestError> {
        let t = Instant::now();
        let r = self.ingest_inner(site, input, stream).await;
        match &r {
            Ok((_, _)) => {
                RECEIVED.inc();
                LATENCY.observe(t.elapsed().as_secs_f64());
            }
            Err(e) => FAILURES.with_label_values(&[e.reason()]).inc(),
        }
        r
    }

    /// Parses, validates and durably stores one instance.
    /// `site` is the tenant the instance arrives for (from the calling AE or
    /// the STOW-RS credential); a study keeps the site that sent it first.
    pub async fn ingest(
        &self,
        site: &str,
        input: Input,
    ) -> Result<(InstanceInfo, StoreOutcome), IngestError> {
        self.ingest_streamed(site, input, None).await
    }

    async fn ingest_inner(
        &self,
        site: &str,
        input: Input,
        mut stream: Option<Stream>,
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
        // (which stages it) while the file is written and fsynced; then this
        // task waits for the commit.
        let (info, pending, len) = tokio::task::spawn_blocking(
            move || -> Result<(InstanceInfo, PendingIndex, usize), IngestError> {
                // A data set streamed to its file had its header read (and
                // its file named, and its command and SOP class checked) while
                // it arrived: only the complete data set's structure is left
                // to check, not its header to decode again.
                let streamed = match (&input, stream.as_mut()) {
                    (Input::Dataset { data, .. }, Some(s)) => s.take_if_whole(data),
                    _ => Ok(None),
                };
                // A stream not taken removes its file here.
                drop(stream);
                if let Some(Streamed {
                    key,
                    file,
                    early,
                    info,
                    head,
                    written,
                    ..
                }) = streamed?
                {
                    drop(permit);
                    STREAMED.inc();
                    let len = head.len() + written;
                    let blobs = store.blobs();
                    let k = key.clone();
                    let pending = store.put_with(&site, info.clone(), key, len, move || {
                        blobs.finish_blocking(&k, file, early)
                    })?;
                    return Ok((info, pending, len));
                }
                let parsed = parse_input(input, &limits);
                // The permit bounds parsing (CPU and memory); waiting on the
                // disk below does not hold it.
                drop(permit);
                let (info, head, body) = parsed?;
                if !sop::is_storage_sop_class(&info.sop_class_uid) {
                    return Err(IngestError::NotStorage(info.sop_class_uid));
                }
                let len = head.len() + body.len();
                let key = Store::new_key(&info)?;
                let pending = store.put_blocking(&site, info.clone(), key, &[&head, &body])?;
                Ok((info, pending, len))
            },
        )
        .await
        .map_err(|_| IngestError::Busy)??;
        // A failed file leaves no row; the outcome also removes what was written.
        let outcome = pending.committed().await.outcome().await?;
        BYTES.inc_by(len as u64);
        Ok((info, outcome))
    }
}
