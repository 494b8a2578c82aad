//! Meridian's storage layer: the archive index (SQLite or PostgreSQL through
//! sqlx `Any`, one set of portable migrations) and instance files (through
//! `object_store`, local filesystem by default).
//!
//! Invariants:
//! - an instance is acknowledged only after its file is durable (fsync of
//!   file and directory) and then its index row is committed: file first,
//!   index second, so no row ever lacks its file (the writer may stage the
//!   row in an open transaction while the file is written; it commits only
//!   after the file is durable, and rolls a failed file's row back);
//! - object keys are built from validated UIDs only;
//! - a re-sent SOP Instance UID never duplicates (keep-first or replace);
//! - study stability is derived from timestamps in the index and claimed by
//!   a conditional update, so a restart loses nothing and several nodes on
//!   one PostgreSQL fire each stable event once.

pub mod accounts;
mod audit;
mod blobs;
mod db;
pub mod ingest;
mod query;
pub mod workflow;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use audit::AuditFilter;
pub use blobs::{Blobs, Early, EarlySync};
pub use db::DbKind;
pub use meridian_auth::Scope;
use meridian_dicom::InstanceInfo;
pub use query::{InstanceRef, QueryRow};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Storage failures.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database error (index writer): {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("object store error: {0}")]
    Blob(#[from] object_store::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid UID for a storage key: {0}")]
    BadKey(String),
    #[error("storage is shutting down")]
    Closed,
    #[error("migration {0} failed: {1}")]
    Migration(i64, String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the study belongs to another site")]
    OtherSite,
}

impl StoreError {
    /// The store has been closed (the server is shutting down).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            StoreError::Closed | StoreError::Db(sqlx::Error::PoolClosed)
        )
    }
}

/// What happens when an instance with a known SOP Instance UID arrives again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatePolicy {
    /// Keep the first copy; the new one is acknowledged and discarded.
    #[default]
    KeepFirst,
    /// Replace the stored copy with the new one.
    Replace,
}

impl std::str::FromStr for DuplicatePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep-first" => Ok(DuplicatePolicy::KeepFirst),
            "replace" => Ok(DuplicatePolicy::Replace),
            other => Err(format!(
                "unknown duplicate policy `{other}` (keep-first or replace)"
            )),
        }
    }
}

/// Outcome of storing one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    /// Already present; kept the first copy.
    Duplicate,
    /// Already present; replaced.
    Replaced,
}

/// Objects up to this size have their index row staged while their file is
/// written; larger ones are written first.
pub const PIPELINE_MAX: usize = 8 << 20;

/// Studies claimed per write transaction by the stable sweep, and batches per sweep.
const SWEEP_BATCH: i64 = 100;
const SWEEP_BATCHES: usize = 5;

/// An index row handed to the writer, its file written (or failed);
/// [`PendingIndex::committed`] waits for the writer's answer.
pub struct PendingIndex {
    store: Store,
    key: String,
    rx: oneshot::Receiver<Result<writer::Written, StoreError>>,
    /// The file's own error, reported instead of the writer's answer.
    file_error: Option<StoreError>,
}

impl PendingIndex {
    /// Waits for the commit. Awaited in async code, not on the blocking
    /// thread that made the file durable: that thread is free as soon as the
    /// file is, and the commit's answer wakes the waiting task directly.
    pub async fn committed(self) -> Committed {
        let res = match self.file_error {
            // No row was committed; report the write's own error.
            Some(e) => Ok(Err(e)),
            None => self.rx.await.map_err(|_| StoreError::Closed),
        };
        Committed {
            store: self.store,
            key: self.key,
            res,
        }
    }
}

/// A committed (or refused) index row; [`Committed::outcome`] tidies up files.
pub struct Committed {
    store: Store,
    key: String,
    res: Result<Result<writer::Written, StoreError>, StoreError>,
}

impl Committed {
    /// The outcome. Removes the new file when it lost to an existing copy
    /// (or was refused), the old one when it was replaced.
    pub async fn outcome(self) -> Result<StoreOutcome, StoreError> {
        let blobs = &self.store.inner.blobs;
        match self.res.and_then(|r| r) {
            Ok(writer::Written::Inserted) => Ok(StoreOutcome::Stored),
            Ok(writer::Written::Duplicate) => {
                // Keep-first, or lost a race with another copy: drop ours.
                blobs.delete(&self.key).await.ok();
                Ok(StoreOutcome::Duplicate)
            }
            Ok(writer::Written::Replaced(old)) => {
                blobs.delete(&old).await.ok();
                Ok(StoreOutcome::Replaced)
            }
            Ok(writer::Written::OtherSite) => {
                blobs.delete(&self.key).await.ok();
                Err(StoreError::OtherSite)
            }
            Err(e) => {
                blobs.delete(&self.key).await.ok();
                Err(e)
            }
        }
    }
}

/// Reports to the writer whether a file queued with [`Store::queue_blocking`]
/// became durable.
pub struct FileFate(oneshot::Sender<bool>);

impl FileFate {
    pub fn report(self, durable: bool) {
        let _ = self.0.send(durable);
    }
}

/// Storage configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; defaults to SQLite in the data dir.
    pub database_url: Option<String>,
    pub duplicate_policy: DuplicatePolicy,
    /// Whether to fsync files and directories before acknowledging.
    pub fsync: bool,
}

/// A study event published on the internal bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyEvent {
    pub study_uid: String,
    pub kind: String,
    pub at_ms: i64,
}

/// The archive store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: db::Db,
    audit: mpsc::Sender<audit::Job>,
    blobs: Blobs,
    writer: mpsc::Sender<writer::Job>,
    events: broadcast::Sender<StudyEvent>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Builds the object key of an instance from its (validated) UIDs.
pub fn object_key(info: &InstanceInfo, nonce: u64) -> Result<String, StoreError> {
    for u in [&info.study_uid, &info.series_uid, &info.sop_instance_uid] {
        meridian_core::validate_uid(u).map_err(|e| StoreError::BadKey(format!("{u:?}: {e}")))?;
    }
    Ok(format!(
        "{}/{}/{}.{:016x}.dcm",
        info.study_uid, info.series_uid, info.sop_instance_uid, nonce
    ))
}

impl Store {
    /// Opens (creating if needed) the store and runs migrations.
    pub async fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let url = match &cfg.database_url {
            Some(u) => u.clone(),
            None => db::sqlite_url(&cfg.data_dir.join("index.db"))?,
        };
        let db = db::Db::connect(&url).await?;
        db.migrate().await?;
        db.spawn_checkpoints();
        let blobs = Blobs::local(&cfg.data_dir.join("objects"), cfg.fsync)?;
        let (tx, rx) = mpsc::channel(4096);
        writer::start(
            db.clone(),
            db.sqlite_file().await?.as_deref(),
            rx,
            cfg.duplicate_policy,
        )?;
        let (events, _) = broadcast::channel(1024);
        let (atx, arx) = mpsc::channel(4096);
        tokio::spawn(audit::run(db.clone(), arx));
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                audit: atx,
                blobs,
                writer: tx,
                events,
            }),
        })
    }

    pub fn db_kind(&self) -> DbKind {
        self.inner.db.kind
    }

    pub fn blobs(&self) -> &Blobs {
        &self.inner.blobs
    }

    /// Subscribes to study events (e.g. `stable`).
    pub fn subscribe(&self) -> broadcast::Receiver<StudyEvent> {
        self.inner.events.subscribe()
    }

    /// Stores one validated instance: its index row is staged while the file
    /// is written and committed only once the file is durable. Returns only
    /// when both are durable.
    pub async fn store(
        &self,
        site: &str,
        info: InstanceInfo,
        file: bytes::Bytes,
    ) -> Result<StoreOutcome, StoreError> {
        let key = object_key(&info, rand_u64())?;
        let (store, site) = (self.clone(), site.to_owned());
        tokio::task::spawn_blocking(move || store.put_blocking(&site, info, key, &[&file]))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??
            .committed()
            .await
            .outcome()
            .await
    }

    /// Makes a new object key for an instance (validated UIDs and a random suffix).
    pub fn new_key(info: &InstanceInfo) -> Result<String, StoreError> {
        object_key(info, rand_u64())
    }

    /// From a blocking thread: writes `parts` durably as the file of `key`
    /// and hands the instance's index row to the writer (the caller awaits
    /// [`PendingIndex::committed`], then tidies up with [`Committed::outcome`]). The row of an
    /// object up to [`PIPELINE_MAX`] is handed to the writer before the file
    /// is written, so its statements overlap the fsync; a larger object is
    /// made durable first, so the writer never holds a transaction open for
    /// long. Either way the row is committed only after the file is durable.
    pub fn put_blocking(
        &self,
        site: &str,
        info: InstanceInfo,
        key: String,
        parts: &[&[u8]],
    ) -> Result<PendingIndex, StoreError> {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let blobs = &self.inner.blobs;
        let k = key.clone();
        self.put_with(site, info, key, size, || {
            blobs.put_durable_blocking(&k, parts)
        })
    }

    /// [`Store::put_blocking`] for a file written otherwise (e.g. while it
    /// arrived): `make_durable` finishes the file of `key` (`size` bytes) and
    /// makes it durable, removing it if it cannot. The row is committed only
    /// after it returned `Ok`.
    pub fn put_with(
        &self,
        site: &str,
        info: InstanceInfo,
        key: String,
        size: usize,
        make_durable: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<PendingIndex, StoreError> {
        if size <= PIPELINE_MAX {
            let (mut pending, fate) = self.queue_blocking(site, info, key, size as i64)?;
            let wrote = make_durable();
            fate.report(wrote.is_ok());
            pending.file_error = wrote.err();
            Ok(pending)
        } else {
            make_durable()?;
            let (pending, fate) = self.queue_blocking(site, info, key, size as i64)?;
            fate.report(true);
            Ok(pending)
        }
    }

    /// From a blocking thread that is about to write the file of `key`:
    /// queues its index row now, so the writer stages it while the file is
    /// written. The row is committed only after `FileFate::report(true)`;
    /// a report of `false`, or dropping the `FileFate`, leaves no row.
    pub fn queue_blocking(
        &self,
        site: &str,
        info: InstanceInfo,
        key: String,
        size: i64,
    ) -> Result<(PendingIndex, FileFate), StoreError> {
        let (fate, durable) = oneshot::channel();
        let (reply, rx) = oneshot::channel();
        let job = writer::Job {
            site: site.to_owned(),
            info,
            key: key.clone(),
            size,
            durable,
            reply,
        };
        self.inner
            .writer
            .blocking_send(job)
            .map_err(|_| StoreError::Closed)?;
        let pending = PendingIndex {
            store: self.clone(),
            key,
            rx,
            file_error: None,
        };
        Ok((pending, FileFate(fate)))
    }

    /// Appends an audit record; returns its sequence number once it is durable.
    pub async fn audit(&self, event: meridian_audit::AuditEvent) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .audit
            .send(audit::Job { event, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Walks the audit chain; `Ok(Err(..))` names the first broken record.
    pub async fn verify_audit(
        &self,
    ) -> Result<Result<u64, meridian_audit::VerifyError>, StoreError> {
        audit::verify(&self.inner.db).await
    }

    /// Audit records (of one study, or all), oldest first, at most `limit`.
    pub async fn audit_records(
        &self,
        study_uid: Option<&str>,
        limit: i64,
    ) -> Result<Vec<meridian_audit::Record>, StoreError> {
        audit::records(&self.inner.db, study_uid, limit).await
    }

    /// Audit records matching a filter (auditor search), oldest first.
    pub async fn audit_search(
        &self,
        f: &AuditFilter,
    ) -> Result<Vec<meridian_audit::Record>, StoreError> {
        audit::search(&self.inner.db, f).await
    }

    /// The sequence number of the newest audit record (0 when empty).
    pub async fn audit_head(&self) -> Result<i64, StoreError> {
        let r: Option<(i64,)> = sqlx::query_as("SELECT MAX(seq) FROM audit_log")
            .fetch_optional(&self.inner.db.pool)
            .await?;
        Ok(r.map(|x| x.0).unwrap_or(0))
    }

    /// Whether an instance is indexed.
    pub async fn contains(&self, sop_uid: &str) -> Result<bool, StoreError> {
        let n: Option<(String,)> =
            sqlx::query_as("SELECT sop_uid FROM instances WHERE sop_uid = $1")
                .bind(sop_uid)
                .fetch_optional(&self.inner.db.pool)
                .await?;
        Ok(n.is_some())
    }

    /// Runs a C-FIND / QIDO query.
    /// Runs a C-FIND / QIDO query within what `scope` may see.
    pub async fn find(
        &self,
        q: &meridian_core::Query,
        scope: &Scope,
    ) -> Result<Vec<QueryRow>, StoreError> {
        query::find(&self.inner.db, q, scope).await
    }

    /// Instances under a study / series / instance, ordered for retrieval.
    /// Whether `scope` may see the study (another site's UID answers exactly like a
    /// missing one).
    pub async fn sees_study(&self, study_uid: &str, scope: &Scope) -> Result<bool, StoreError> {
        query::sees_study(&self.inner.db, study_uid, scope).await
    }

    pub async fn instances(
        &self,
        study: Option<&str>,
        series: Option<&str>,
        sop: Option<&str>,
        scope: &Scope,
    ) -> Result<Vec<InstanceRef>, StoreError> {
        query::instances(&self.inner.db, study, series, sop, scope).await
    }

    /// Instances matching a C-MOVE/C-GET identifier at a level (UID lists allowed).
    pub async fn instances_for_query(
        &self,
        q: &meridian_core::Query,
        scope: &Scope,
    ) -> Result<Vec<InstanceRef>, StoreError> {
        query::instances_for_query(&self.inner.db, q, scope).await
    }

    /// Reads a stored file.
    pub async fn read(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
        self.inner.blobs.get(key).await
    }

    /// Marks studies with no new instance for `quiet_ms` as stable (at most
    /// `SWEEP_BATCHES` × `SWEEP_BATCH` per call), claiming
    /// each with a conditional update (exactly one node wins), records a
    /// `stable` event in the outbox and publishes it. Returns the events fired.
    pub async fn sweep_stable(
        &self,
        quiet_ms: i64,
        now: i64,
    ) -> Result<Vec<StudyEvent>, StoreError> {
        let cutoff = now - quiet_ms;
        // A few short write transactions per sweep (one durable commit per
        // batch, not per study; short enough that requests' audit appends
        // barely wait behind one). The conditional UPDATE claims each study
        // once: on PostgreSQL a node that loses the race finds `stable_at` set
        // and returns nothing for that study, so the event fires once.
        let mut fired = Vec::new();
        for _ in 0..SWEEP_BATCHES {
            let mut tx = self.inner.db.begin_write().await?;
            let batch: Vec<(String,)> = sqlx::query_as(
                "UPDATE studies SET stable_at = $1 WHERE stable_at IS NULL AND updated_at <= $2 AND study_uid IN (SELECT study_uid FROM studies WHERE stable_at IS NULL AND updated_at <= $2 ORDER BY updated_at LIMIT $3) RETURNING study_uid",
            )
            .bind(now)
            .bind(cutoff)
            .bind(SWEEP_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            for (uid,) in &batch {
                sqlx::query(
                    "INSERT INTO study_events (id, study_uid, kind, at) VALUES ($1, $2, $3, $4)",
                )
                .bind(format!("{now:013}-{:016x}", rand_u64()))
                .bind(uid)
                .bind("stable")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            // Published as soon as their batch is durable (a later batch's
            // error does not hold back the events of one already committed).
            let last = (batch.len() as i64) < SWEEP_BATCH;
            for (uid,) in batch {
                let ev = StudyEvent {
                    study_uid: uid,
                    kind: "stable".into(),
                    at_ms: now,
                };
                let _ = self.inner.events.send(ev.clone());
                fired.push(ev);
            }
            if last {
                break;
            }
        }
        Ok(fired)
    }

    /// Events recorded in the outbox since `since_ms` (inclusive), oldest first.
    pub async fn events_since(&self, since_ms: i64) -> Result<Vec<StudyEvent>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT study_uid, kind, at FROM study_events WHERE at >= $1 ORDER BY at, id",
        )
        .bind(since_ms)
        .fetch_all(&self.inner.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(study_uid, kind, at_ms)| StudyEvent {
                study_uid,
                kind,
                at_ms,
            })
            .collect())
    }

    /// Stability state of a study: `Some(stable_at)` once stable.
    pub async fn study_stable_at(
        &self,
        study_uid: &str,
    ) -> Result<Option<Option<i64>>, StoreError> {
        let r: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT stable_at FROM studies WHERE study_uid = $1")
                .bind(study_uid)
                .fetch_optional(&self.inner.db.pool)
                .await?;
        Ok(r.map(|(s,)| s))
    }

    /// Counts of studies, series and instances.
    pub async fn counts(&self) -> Result<(i64, i64, i64), StoreError> {
        let pool = &self.inner.db.pool;
        let (a,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM studies")
            .fetch_one(pool)
            .await?;
        let (b,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM series")
            .fetch_one(pool)
            .await?;
        let (c,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM instances")
            .fetch_one(pool)
            .await?;
        Ok((a, b, c))
    }

    /// Checks that every indexed instance has its file with the recorded size,
    /// and lists files no index row refers to.
    pub async fn fsck(&self) -> Result<FsckReport, StoreError> {
        use futures::TryStreamExt;
        let pool = &self.inner.db.pool;
        let mut rows = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT sop_uid, object_key, size FROM instances",
        )
        .fetch(pool);
        let mut report = FsckReport::default();
        let mut known = std::collections::HashSet::new();
        while let Some((sop, key, size)) = rows.try_next().await? {
            report.checked += 1;
            match self.inner.blobs.size(&key).await? {
                None => report.missing.push((sop, key.clone())),
                Some(s) if s as i64 != size => {
                    report.wrong_size.push((sop, key.clone(), size, s as i64))
                }
                Some(_) => {}
            }
            known.insert(key);
        }
        let mut att = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT attachment_id, object_key, size FROM order_attachments",
        )
        .fetch(pool);
        while let Some((id, key, size)) = att.try_next().await? {
            report.checked += 1;
            match self.inner.blobs.size(&key).await? {
                None => report.missing.push((id, key.clone())),
                Some(s) if s as i64 != size => {
                    report.wrong_size.push((id, key.clone(), size, s as i64))
                }
                Some(_) => {}
            }
            known.insert(key);
        }
        for key in self.inner.blobs.list_all().await? {
            if !known.contains(&key) {
                report.orphans.push(key);
            }
        }
        Ok(report)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.inner.db.pool.close().await;
    }
}

/// Result of [`Store::fsck`].
#[derive(Debug, Default)]
pub struct FsckReport {
    pub checked: u64,
    /// (SOP Instance UID, key) of rows whose file is missing.
    pub missing: Vec<(String, String)>,
    /// (SOP Instance UID, key, expected, found).
    pub wrong_size: Vec<(String, String, i64, i64)>,
    /// Files with no index row (harmless leftovers of interrupted stores).
    pub orphans: Vec<String>,
}

impl FsckReport {
    /// Whether the index and the files agree (orphans are not errors).
    pub fn is_consistent(&self) -> bool {
        self.missing.is_empty() && self.wrong_size.is_empty()
    }
}

fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CTR: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = CTR.fetch_add(1, Ordering::Relaxed);
    // SplitMix64 of time, counter and pid: unique per process, unpredictable enough for keys.
    let mut z =
        t ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Default data directory path helper.
pub fn default_db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("index.db")
}
