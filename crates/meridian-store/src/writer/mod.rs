//! The index writer: one task that commits index rows in groups, so the
//! cost of a database commit is shared by concurrent associations.
//!
//! A group is one transaction: one upsert per series and per study and
//! modality, and the instance rows (through sqlx one multi-row insert, a
//! round trip to the database whatever the group's size; on the writer's own
//! SQLite connection one prepared insert per row, with no round trip). It is
//! staged while the files of its instances are still being written: the
//! writer runs the statements, then waits until every file in the group is
//! durable, and only then commits. A file that fails takes its row out of
//! the group (the group is rolled back and written again without it), so no
//! committed row ever lacks its file.
//!
//! On SQLite the common group (new instances of studies of the sending
//! site) is written by [`sqlite::Conn`], on a connection the writer's thread
//! owns; everything else, and every group on PostgreSQL, through sqlx.

mod sqlite;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use meridian_dicom::InstanceInfo;
use tokio::sync::{mpsc, oneshot};

use crate::db::Db;
use crate::{DuplicatePolicy, StoreError, now_ms};

/// Whether the instance's file became durable (sent by the thread writing it).
pub(crate) type Durable = oneshot::Receiver<bool>;

pub(crate) struct Job {
    /// The site (tenant) the instance arrives for.
    pub site: String,
    pub info: InstanceInfo,
    pub key: String,
    pub size: i64,
    /// The row may be staged at once but is committed only after this
    /// reports `true` (awaited once, through [`Fates`]).
    pub durable: Durable,
    pub reply: oneshot::Sender<Result<Written, StoreError>>,
}

#[derive(Debug)]
pub(crate) enum Written {
    Inserted,
    Duplicate,
    /// Replaced; carries the old object key to delete.
    Replaced(String),
    /// Refused: the study exists and belongs to another site.
    OtherSite,
}

const MAX_BATCH: usize = 256;
/// Rows per multi-row statement (13 parameters each; well under the
/// parameter limits of SQLite and PostgreSQL).
const ROWS_PER_STATEMENT: usize = 128;

/// Starts the writer on a thread of its own (a single-threaded runtime), so
/// its turns at the database do not queue behind the associations' tasks on
/// a busy machine. `sqlite_file` (the SQLite index) gives the writer its own
/// connection for the common group.
pub(crate) fn start(
    db: Db,
    sqlite_file: Option<&Path>,
    rx: mpsc::Receiver<Job>,
    policy: DuplicatePolicy,
) -> Result<(), StoreError> {
    // Without its own connection the writer still works, every group through sqlx.
    let fast = sqlite_file.and_then(|f| {
        sqlite::Conn::open(f)
            .inspect_err(|e| {
                tracing::warn!(error = %e, file = %f.display(), "index writer: no connection of its own")
            })
            .ok()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("meridian-index-writer".into())
        .spawn(move || rt.block_on(run(db, fast, rx, policy)))?;
    Ok(())
}

async fn run(
    db: Db,
    mut fast: Option<sqlite::Conn>,
    mut rx: mpsc::Receiver<Job>,
    policy: DuplicatePolicy,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut jobs = std::mem::take(&mut batch);
        let mut fates = Fates(vec![None; jobs.len()]);
        if let Some(conn) = fast.as_mut()
            && let Some(results) = conn.write(&mut jobs, &mut fates).await
        {
            reply(jobs, results);
            continue;
        }
        write_group(&db, jobs, fates, policy).await;
    }
}

fn reply(jobs: Vec<Job>, results: Vec<Result<Written, StoreError>>) {
    for (job, r) in jobs.into_iter().zip(results) {
        let _ = job.reply.send(r);
    }
}

/// The files' fates, waited for once.
struct Fates(Vec<Option<bool>>);

impl Fates {
    async fn settle(&mut self, jobs: &mut [Job]) -> &[Option<bool>] {
        for (k, job) in jobs.iter_mut().enumerate() {
            if self.0[k].is_none() {
                self.0[k] = Some((&mut job.durable).await.unwrap_or(false));
            }
        }
        &self.0
    }
}

/// The general path: any group, on either database (`fates` may already
/// hold some files' outcomes).
async fn write_group(db: &Db, mut jobs: Vec<Job>, mut fates: Fates, policy: DuplicatePolicy) {
    let staged = stage_and_commit(db, &mut jobs, &mut fates, policy).await;
    match staged {
        Ok(results) => reply(jobs, results),
        Err(e) => {
            // The group failed as a whole: write each durable job on its own
            // so one bad row does not fail its neighbours.
            tracing::warn!(error = %e, "group commit failed; retrying individually");
            let ok = fates.settle(&mut jobs).await.to_vec();
            for (job, ok) in jobs.into_iter().zip(ok) {
                let r = if ok == Some(true) {
                    commit_alone(db, &job, policy).await
                } else {
                    Err(file_failed())
                };
                let _ = job.reply.send(r);
            }
        }
    }
}

fn file_failed() -> StoreError {
    StoreError::Io(std::io::Error::other(
        "the instance file could not be made durable",
    ))
}

/// Stages the group, waits for its files, commits. A failed file rolls the
/// group back and stages it again without that row. Returns one result per job.
async fn stage_and_commit(
    db: &Db,
    jobs: &mut [Job],
    fates: &mut Fates,
    policy: DuplicatePolicy,
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let now = now_ms();
    let all: Vec<usize> = (0..jobs.len()).collect();
    let (tx, written) = begin_and_stage(db, jobs, &all, now, policy).await?;
    let ok = fates.settle(jobs).await.to_vec();
    if ok.iter().all(|o| *o == Some(true)) {
        tx.commit().await?;
        return Ok(written.into_iter().map(Ok).collect());
    }
    tx.rollback().await?;
    let good: Vec<usize> = all.into_iter().filter(|&k| ok[k] == Some(true)).collect();
    let mut out: Vec<Result<Written, StoreError>> =
        (0..jobs.len()).map(|_| Err(file_failed())).collect();
    if !good.is_empty() {
        let (tx, written) = begin_and_stage(db, jobs, &good, now, policy).await?;
        tx.commit().await?;
        for (k, w) in good.into_iter().zip(written) {
            out[k] = Ok(w);
        }
    }
    Ok(out)
}

async fn commit_alone(db: &Db, job: &Job, policy: DuplicatePolicy) -> Result<Written, StoreError> {
    let (tx, mut w) =
        begin_and_stage(db, std::slice::from_ref(job), &[0], now_ms(), policy).await?;
    tx.commit().await?;
    Ok(w.remove(0))
}

fn int(info: &InstanceInfo, tag: u32) -> Option<i64> {
    info.get(tag).and_then(|v| v.parse().ok())
}

/// Lower-cased name components, delimited by `^` on both sides, for fuzzy matching.
pub(crate) fn fuzzy_name(name: &str) -> String {
    let comps: Vec<String> = name
        .split(['^', '=', ' '])
        .filter(|c| !c.is_empty())
        .map(str::to_lowercase)
        .collect();
    format!("^{}^", comps.join("^"))
}

/// `($1, $2, …), (…)` for `rows` rows of `cols` parameters.
fn values(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", r * cols + c + 1));
        }
        out.push(')');
    }
    out
}

/// A modality as kept in `studies.modalities` (`/CT/MR/`), or "" when
/// absent or holding LIKE metacharacters.
fn modality_of(info: &InstanceInfo) -> &str {
    info.get(0x0008_0060)
        .filter(|m| !m.is_empty() && !m.contains(['/', '%', '_', '!']))
        .unwrap_or("")
}

/// The groups one statement each is written for, by job index: series
/// `(uid, first job, new instances)` and study+modality `(study, modality,
/// first job, new instances, new series)`.
struct Groups<'a> {
    series: Vec<(&'a str, usize, i64)>,
    studies: Vec<(&'a str, &'a str, usize, i64, i64)>,
}

impl<'a> Groups<'a> {
    /// Groups the new rows `jobs[k]` for `k` in `new` (new-series counts 0).
    fn of(jobs: &'a [Job], new: &[usize]) -> Groups<'a> {
        let mut g = Groups {
            series: Vec::new(),
            studies: Vec::new(),
        };
        for &k in new {
            let i = &jobs[k].info;
            match g.series.iter_mut().find(|(s, ..)| *s == i.series_uid) {
                Some(e) => e.2 += 1,
                None => g.series.push((i.series_uid.as_str(), k, 1)),
            }
            let m = modality_of(i);
            match g
                .studies
                .iter_mut()
                .find(|(s, mm, ..)| *s == i.study_uid && *mm == m)
            {
                Some(e) => e.3 += 1,
                None => g.studies.push((i.study_uid.as_str(), m, k, 1, 0)),
            }
        }
        g
    }

    /// Counts the series that `is_new` names into their study's group.
    fn count_new_series(&mut self, jobs: &[Job], is_new: impl Fn(&str) -> bool) {
        for &(uid, k, _) in &self.series {
            let i = &jobs[k].info;
            if is_new(uid)
                && let Some(e) = self
                    .studies
                    .iter_mut()
                    .find(|(s, m, ..)| *s == i.study_uid && *m == modality_of(i))
            {
                e.4 += 1;
            }
        }
    }
}

/// `INSERT_INSTANCES` for `rows` rows, placeholders from `$from + 1`.
fn insert_instances(rows: usize, from: usize, returning: &str) -> String {
    format!(
        "{INSERT_INSTANCES}{} ON CONFLICT (sop_uid) DO NOTHING RETURNING {returning}",
        shift_params(&values(rows, INSTANCE_PARAMS), from)
    )
}

/// How the writer learns which site owns each study of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    /// Assume the group's first site for each new or known study and let the
    /// study upsert verify it: one statement fewer, the common case.
    Assume,
    /// Read the owners first (after `Assume` met a study of another site).
    Check,
}

/// Begins a transaction and writes the rows of `jobs[pick]`; returns the
/// open transaction and the results in `pick` order.
async fn begin_and_stage(
    db: &Db,
    jobs: &[Job],
    pick: &[usize],
    now: i64,
    policy: DuplicatePolicy,
) -> Result<(sqlx::Transaction<'static, sqlx::Any>, Vec<Written>), StoreError> {
    let mut tx = db.begin_write().await?;
    if let Some(w) = stage(&mut tx, jobs, pick, now, policy, Owners::Assume).await? {
        return Ok((tx, w));
    }
    tx.rollback().await?;
    let mut tx = db.begin_write().await?;
    let w = stage(&mut tx, jobs, pick, now, policy, Owners::Check)
        .await?
        .ok_or_else(|| {
            StoreError::Io(std::io::Error::other("study owners changed while writing"))
        })?;
    Ok((tx, w))
}

/// Renumbers the `$n` placeholders of `sql` by `by`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' {
            let mut n = 0usize;
            let mut digits = false;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n * 10 + d as usize;
                digits = true;
                chars.next();
            }
            if digits {
                out.push_str(&(n + by).to_string());
            }
        }
    }
    out
}

const INSERT_INSTANCES: &str = "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class, instance_number, rows_, columns_, frames, bits_allocated, transfer_syntax, object_key, size, received_at) VALUES ";

/// The series row and its instance count ($10 new instances).
macro_rules! upsert_series {
    () => {
        "INSERT INTO series (series_uid, study_uid, modality, series_number, series_description, body_part, series_date, pps_start_date, num_instances, received_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $9, $9) \
         ON CONFLICT (series_uid) DO UPDATE SET num_instances = series.num_instances + $10, updated_at = $9"
    };
}
const UPSERT_SERIES: &str = upsert_series!();
const UPSERT_SERIES_COUNT: &str = concat!(upsert_series!(), " RETURNING num_instances");
/// Study row, counters ($19 new instances; the series count is the
/// macro's argument) and modalities; the `WHERE` refuses a study of another
/// site (no row returned).
macro_rules! upsert_study {
    ($new_study_series:literal, $series:literal, $returning:literal) => {
        concat!(
            "INSERT INTO studies (study_uid, patient_name, patient_name_fuzzy, patient_id, issuer, birth_date, sex, study_date, study_time, accession, study_description, referring_physician, study_id, modalities, num_series, num_instances, received_at, updated_at, site_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, '/' || $15, ",
            $new_study_series,
            ", $19, $14, $14, $18) \
             ON CONFLICT (study_uid) DO UPDATE SET num_instances = studies.num_instances + $19, num_series = ",
            $series,
            ", updated_at = $14, stable_at = NULL, \
             modalities = CASE WHEN studies.modalities LIKE $17 THEN studies.modalities ELSE studies.modalities || $15 END \
             WHERE studies.site_id IS NULL OR studies.site_id = $18 RETURNING ",
            $returning
        )
    };
}
/// Series count incremented by $16 (new series in the group).
const UPSERT_STUDY: &str = upsert_study!("$16", "studies.num_series + $16", "study_uid");
/// For SQLite's one-command path: the series count is recounted from
/// `series` (exact under SQLite's single writer; $16 unused).
const UPSERT_STUDY_RECOUNT: &str = upsert_study!(
    "(SELECT count(*) FROM series WHERE study_uid = $1)",
    "(SELECT count(*) FROM series WHERE study_uid = $1)",
    "'t'"
);

type Q<'q, O> = sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>;

/// A statement parameter, bound through sqlx or rusqlite alike.
#[derive(Debug)]
pub(crate) enum Param<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
}

fn text(v: &str) -> Param<'_> {
    Param::Text(Some(Cow::Borrowed(v)))
}

/// An element's value as text, NULL when absent.
fn tag_text(info: &InstanceInfo, tag: u32) -> Param<'_> {
    Param::Text(info.get(tag).map(Cow::Borrowed))
}

fn tag_int(info: &InstanceInfo, tag: u32) -> Param<'static> {
    Param::Int(int(info, tag))
}

/// Binds `params` in order (`$1`, `$2`, … after those already bound).
fn bind<'q, O>(mut q: Q<'q, O>, params: Vec<Param<'q>>) -> Q<'q, O> {
    for p in params {
        q = match p {
            Param::Text(Some(Cow::Borrowed(v))) => q.bind(v),
            Param::Text(Some(Cow::Owned(v))) => q.bind(v),
            Param::Text(None) => q.bind(None::<String>),
            Param::Int(v) => q.bind(v),
        };
    }
    q
}

/// Parameters of an `INSERT_INSTANCES` row, an `UPSERT_SERIES` and an
/// `UPSERT_STUDY` (each builder below gives that many).
const INSTANCE_PARAMS: usize = 13;
const SERIES_PARAMS: usize = 10;
const STUDY_PARAMS: usize = 19;

/// Instance row parameters ($1..$13 of an `INSERT_INSTANCES` row).
fn instance_params(job: &Job, now: i64) -> Vec<Param<'_>> {
    let i = &job.info;
    vec![
        text(&i.sop_instance_uid),
        text(&i.series_uid),
        text(&i.study_uid),
        text(&i.sop_class_uid),
        tag_int(i, 0x0020_0013),
        tag_int(i, 0x0028_0010),
        tag_int(i, 0x0028_0011),
        Param::Int(int(i, 0x0028_0008).or(Some(1))),
        tag_int(i, 0x0028_0100),
        text(&i.transfer_syntax),
        text(&job.key),
        Param::Int(Some(job.size)),
        Param::Int(Some(now)),
    ]
}

/// Series upsert parameters ($1..$10 of `UPSERT_SERIES`).
fn series_params<'a>(uid: &'a str, i: &'a InstanceInfo, now: i64, count: i64) -> Vec<Param<'a>> {
    vec![
        text(uid),
        text(&i.study_uid),
        tag_text(i, 0x0008_0060),
        tag_int(i, 0x0020_0011),
        tag_text(i, 0x0008_103E),
        tag_text(i, 0x0018_0015),
        tag_text(i, 0x0008_0021),
        tag_text(i, 0x0040_0244),
        Param::Int(Some(now)),
        Param::Int(Some(count)),
    ]
}

/// Study upsert parameters ($1..$19 of `UPSERT_STUDY` / `UPSERT_STUDY_RECOUNT`).
fn study_params<'a>(
    job: &'a Job,
    modality: &str,
    now: i64,
    new_series: i64,
    count: i64,
) -> Vec<Param<'a>> {
    let i = &job.info;
    let (mods, pattern) = if modality.is_empty() {
        (String::new(), "%".to_owned())
    } else {
        (format!("{modality}/"), format!("%/{modality}/%"))
    };
    let name = i.get(0x0010_0010);
    vec![
        text(&i.study_uid),
        Param::Text(name.map(Cow::Borrowed)),
        Param::Text(name.map(|n| Cow::Owned(fuzzy_name(n)))),
        tag_text(i, 0x0010_0020),
        tag_text(i, 0x0010_0021),
        tag_text(i, 0x0010_0030),
        tag_text(i, 0x0010_0040),
        tag_text(i, 0x0008_0020),
        tag_text(i, 0x0008_0030),
        tag_text(i, 0x0008_0050),
        tag_text(i, 0x0008_1030),
        tag_text(i, 0x0008_0090),
        tag_text(i, 0x0020_0010),
        Param::Int(Some(now)),
        Param::Text(Some(Cow::Owned(mods))),
        Param::Int(Some(new_series)),
        Param::Text(Some(Cow::Owned(pattern))),
        text(&job.site),
        Param::Int(Some(count)),
    ]
}

/// A study belongs to the site that sent it first; another site may not add
/// to it. The owners of the group's studies, one query per 128 studies.
async fn read_owners(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    jobs: &[Job],
    pick: &[usize],
) -> Result<HashMap<String, String>, StoreError> {
    let mut studies: Vec<&str> = pick
        .iter()
        .map(|&k| jobs[k].info.study_uid.as_str())
        .collect();
    studies.sort_unstable();
    studies.dedup();
    let mut owner: HashMap<String, String> = HashMap::new();
    for chunk in studies.chunks(ROWS_PER_STATEMENT) {
        let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT study_uid, site_id FROM studies WHERE study_uid IN ({})",
            params.join(", ")
        );
        // Only `$n` placeholders are formatted into the SQL; every value is bound.
        let mut q = sqlx::query_as::<_, (String, Option<String>)>(sqlx::AssertSqlSafe(sql));
        for s in chunk {
            q = q.bind(*s);
        }
        for (study, site) in q.fetch_all(&mut **tx).await? {
            if let Some(site) = site {
                owner.insert(study, site);
            }
        }
    }
    Ok(owner)
}

/// Writes the rows of `jobs[pick]` in `tx`; returns their results in `pick`
/// order, or `None` when, with `Owners::Assume`, a study turned out to
/// belong to another site (the caller rolls back and stages with `Check`).
async fn stage(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    jobs: &[Job],
    pick: &[usize],
    now: i64,
    policy: DuplicatePolicy,
    owners: Owners,
) -> Result<Option<Vec<Written>>, StoreError> {
    let mut out: Vec<Option<Written>> = pick.iter().map(|_| None).collect();
    let mut owner = match owners {
        Owners::Check => read_owners(tx, jobs, pick).await?,
        Owners::Assume => HashMap::new(),
    };
    // Candidates: the first of each SOP Instance UID in the group, of the
    // owning site (with `Assume`, the first site of each study in the group).
    let mut seen: HashSet<&str> = HashSet::new();
    let mut candidates: Vec<usize> = Vec::new(); // positions in `pick`
    let mut again: Vec<usize> = Vec::new(); // a SOP instance already in this group
    for (p, &k) in pick.iter().enumerate() {
        let job = &jobs[k];
        let site = owner
            .entry(job.info.study_uid.clone())
            .or_insert_with(|| job.site.clone());
        if *site != job.site {
            out[p] = Some(Written::OtherSite);
        } else if seen.insert(job.info.sop_instance_uid.as_str()) {
            candidates.push(p);
        } else {
            again.push(p);
        }
    }
    // The instance rows, many per statement; RETURNING names the new ones.
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in candidates.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_instances(chunk.len(), 0, "sop_uid");
        // Only `$n` placeholders are formatted into the SQL; every value is bound.
        let mut q = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
        for &p in chunk {
            q = bind(q, instance_params(&jobs[pick[p]], now));
        }
        for (sop,) in q.fetch_all(&mut **tx).await? {
            inserted.insert(sop);
        }
    }
    let mut new_rows: Vec<usize> = Vec::new();
    let mut conflicts: Vec<usize> = Vec::new();
    for &p in &candidates {
        if inserted.contains(&jobs[pick[p]].info.sop_instance_uid) {
            new_rows.push(p);
            out[p] = Some(Written::Inserted);
        } else {
            conflicts.push(p);
        }
    }
    conflicts.extend(again);
    if owners == Owners::Assume && !conflicts.is_empty() {
        // A known instance may sit in another site's study: read the owners
        // before answering for it (duplicates are rare).
        return Ok(None);
    }
    // Instances already known: the duplicate policy, one by one (rare).
    for p in conflicts {
        out[p] = Some(match policy {
            DuplicatePolicy::KeepFirst => Written::Duplicate,
            DuplicatePolicy::Replace => replace(tx, &jobs[pick[p]], now).await?,
        });
    }
    // Series rows and counters: one upsert per series; a count equal to
    // the group's own means the series is new.
    let new_jobs: Vec<usize> = new_rows.iter().map(|&p| pick[p]).collect();
    let mut g = Groups::of(jobs, &new_jobs);
    let mut new_series: HashSet<&str> = HashSet::new();
    for &(uid, k, count) in &g.series {
        let q = sqlx::query_as(UPSERT_SERIES_COUNT);
        let (total,): (i64,) = bind(q, series_params(uid, &jobs[k].info, now, count))
            .fetch_one(&mut **tx)
            .await?;
        if total == count {
            new_series.insert(uid);
        }
    }
    // Study rows, counters and modalities: one upsert per study and modality.
    g.count_new_series(jobs, |uid| new_series.contains(uid));
    for &(_, modality, k, count, series) in &g.studies {
        let q = sqlx::query_as(UPSERT_STUDY);
        let row: Option<(String,)> = bind(q, study_params(&jobs[k], modality, now, series, count))
            .fetch_optional(&mut **tx)
            .await?;
        if row.is_none() {
            // The study belongs to another site: only possible with `Assume`.
            return Ok(None);
        }
    }
    Ok(Some(
        out.into_iter()
            .map(|w| w.unwrap_or(Written::Duplicate))
            .collect(),
    ))
}

/// Replace policy: the known instance's row takes the new file.
async fn replace(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job: &Job,
    now: i64,
) -> Result<Written, StoreError> {
    let i = &job.info;
    let (old,): (String,) = sqlx::query_as("SELECT object_key FROM instances WHERE sop_uid = $1")
        .bind(&i.sop_instance_uid)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query("UPDATE instances SET object_key = $1, size = $2, transfer_syntax = $3, received_at = $4 WHERE sop_uid = $5")
        .bind(&job.key)
        .bind(job.size)
        .bind(&i.transfer_syntax)
        .bind(now)
        .bind(&i.sop_instance_uid)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE studies SET updated_at = $1, stable_at = NULL WHERE study_uid = $2")
        .bind(now)
        .bind(&i.study_uid)
        .execute(&mut **tx)
        .await?;
    Ok(Written::Replaced(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(site: &str, study: &str, series: &str, sop: &str, modality: &str) -> Job {
        job_with_fate(site, study, series, sop, modality, true)
    }

    fn job_with_fate(
        site: &str,
        study: &str,
        series: &str,
        sop: &str,
        modality: &str,
        durable_file: bool,
    ) -> Job {
        let (reply, _) = oneshot::channel();
        let (fate, durable) = oneshot::channel();
        let _ = fate.send(durable_file);
        Job {
            site: site.into(),
            info: InstanceInfo {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: sop.into(),
                study_uid: study.into(),
                series_uid: series.into(),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                values: vec![(0x0008_0060, modality.into()), (0x0010_0020, "P1".into())],
            },
            key: format!("{study}/{series}/{sop}.0.dcm"),
            size: 10,
            durable,
            reply,
        }
    }

    #[test]
    fn placeholders_shift() {
        assert_eq!(shift_params("($1, $2), $10", 13), "($14, $15), $23");
        assert_eq!(shift_params("a = $1 || '$'", 2), "a = $3 || '$'");
    }

    /// The parameter builders give as many parameters as their statements take.
    #[test]
    fn parameter_builders_fill_their_statements() {
        let j = job("a", "9.1", "9.1.1", "9.1.1.1", "CT");
        assert_eq!(instance_params(&j, 1).len(), INSTANCE_PARAMS);
        assert_eq!(series_params("9.1.1", &j.info, 1, 1).len(), SERIES_PARAMS);
        assert_eq!(study_params(&j, "CT", 1, 1, 1).len(), STUDY_PARAMS);
    }

    async fn sqlite_db(dir: &std::path::Path, name: &str) -> (Db, std::path::PathBuf) {
        let file = dir.join(name);
        let url = crate::db::sqlite_url(&file).expect("url");
        let db = Db::connect(&url).await.expect("db");
        db.migrate().await.expect("migrate");
        (db, file)
    }

    /// What a group left in the index, timestamps aside, a line per row.
    async fn rows(db: &Db) -> Vec<String> {
        let mut out = Vec::new();
        for sql in [
            "SELECT study_uid || '|' || coalesce(patient_name, '-') || '|' || coalesce(patient_name_fuzzy, '-') || '|' || coalesce(patient_id, '-') || '|' || modalities || '|' || num_series || '|' || num_instances || '|' || coalesce(site_id, '-') FROM studies ORDER BY study_uid",
            "SELECT series_uid || '|' || study_uid || '|' || coalesce(modality, '-') || '|' || num_instances FROM series ORDER BY series_uid",
            "SELECT sop_uid || '|' || series_uid || '|' || study_uid || '|' || object_key || '|' || size || '|' || coalesce(frames, -1) FROM instances ORDER BY sop_uid",
        ] {
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&db.pool).await.expect("rows");
            out.extend(rows.into_iter().map(|(r,)| r));
        }
        out
    }

    fn inserted(r: &[Result<Written, StoreError>]) -> bool {
        r.iter().all(|w| matches!(w, Ok(Written::Inserted)))
    }

    /// The common SQLite group is written on the writer's own connection and
    /// leaves the rows the general path leaves; anything unusual is handed
    /// back untouched (None).
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_common_groups_match_the_general_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fast_db, file) = sqlite_db(dir.path(), "fast.db").await;
        let (general_db, _) = sqlite_db(dir.path(), "general.db").await;
        let mut conn = sqlite::Conn::open(&file).expect("conn");
        let groups = || {
            vec![
                vec![
                    job("a", "9.1", "9.1.1", "9.1.1.1", "CT"),
                    job("a", "9.1", "9.1.1", "9.1.1.2", "CT"),
                    job("a", "9.1", "9.1.2", "9.1.2.1", "SR"),
                ],
                // A known series and study, and a new study.
                vec![
                    job("a", "9.1", "9.1.1", "9.1.1.3", "CT"),
                    job("a", "9.2", "9.2.1", "9.2.1.1", "MR"),
                ],
            ]
        };
        for mut g in groups() {
            let mut fates = Fates(vec![None; g.len()]);
            let r = conn.write(&mut g, &mut fates).await.expect("common path");
            assert!(inserted(&r), "{r:?}");
        }
        for mut g in groups() {
            let mut fates = Fates(vec![None; g.len()]);
            let r = stage_and_commit(&general_db, &mut g, &mut fates, DuplicatePolicy::KeepFirst)
                .await
                .expect("general path");
            assert!(inserted(&r), "{r:?}");
        }
        let fast = rows(&fast_db).await;
        assert_eq!(fast, rows(&general_db).await);
        assert!(
            fast.iter().any(|r| r.ends_with("|/CT/SR/|2|4|a")),
            "{fast:?}"
        );

        // A re-send, another site's instance, an in-group duplicate: handed
        // back with nothing written and the files' fates kept.
        for mut g in [
            vec![job("a", "9.1", "9.1.1", "9.1.1.1", "CT")],
            vec![job("b", "9.1", "9.1.3", "9.1.3.1", "CT")],
            vec![
                job("a", "9.3", "9.3.1", "9.3.1.1", "CT"),
                job("a", "9.3", "9.3.1", "9.3.1.1", "CT"),
            ],
        ] {
            let mut fates = Fates(vec![None; g.len()]);
            assert!(conn.write(&mut g, &mut fates).await.is_none());
            assert_eq!(rows(&fast_db).await, fast);
        }
    }

    /// A file that failed takes its row out of the group; the others commit.
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_common_group_without_a_failed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, file) = sqlite_db(dir.path(), "i.db").await;
        let mut conn = sqlite::Conn::open(&file).expect("conn");
        let mut g = vec![
            job("a", "9.1", "9.1.1", "9.1.1.1", "CT"),
            job_with_fate("a", "9.1", "9.1.1", "9.1.1.2", "CT", false),
            job("a", "9.1", "9.1.2", "9.1.2.1", "CT"),
        ];
        let mut fates = Fates(vec![None; g.len()]);
        let r = conn.write(&mut g, &mut fates).await.expect("common path");
        assert!(matches!(
            r.as_slice(),
            [Ok(Written::Inserted), Err(_), Ok(Written::Inserted)]
        ));
        let (series, instances): (i64, i64) =
            sqlx::query_as("SELECT num_series, num_instances FROM studies WHERE study_uid = '9.1'")
                .fetch_one(&db.pool)
                .await
                .expect("study");
        assert_eq!((series, instances), (2, 2));
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM instances WHERE sop_uid = '9.1.1.2'")
                .fetch_one(&db.pool)
                .await
                .expect("count");
        assert_eq!(n, 0);
    }
}
