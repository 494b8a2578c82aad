//! The index writer: one task that commits index rows in groups, so fsync
//! cost of the database commit is shared by concurrent associations.

use meridian_dicom::InstanceInfo;
use tokio::sync::{mpsc, oneshot};

use crate::db::Db;
use crate::{DuplicatePolicy, StoreError, now_ms};

pub(crate) struct Job {
    /// The site (tenant) the instance arrives for.
    pub site: String,
    pub info: InstanceInfo,
    pub key: String,
    pub size: i64,
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

pub(crate) async fn run(db: Db, mut rx: mpsc::Receiver<Job>, policy: DuplicatePolicy) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let jobs = std::mem::take(&mut batch);
        match commit(&db, &jobs, policy).await {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                // The group failed as a whole: retry one by one so one bad row
                // does not fail its neighbours.
                tracing::warn!(error = %e, "group commit failed; retrying individually");
                for job in jobs {
                    let r = commit(&db, std::slice::from_ref(&job), policy)
                        .await
                        .map(|mut v| v.remove(0));
                    let _ = job.reply.send(r);
                }
            }
        }
    }
}

async fn commit(
    db: &Db,
    jobs: &[Job],
    policy: DuplicatePolicy,
) -> Result<Vec<Written>, StoreError> {
    let mut tx = db.begin_write().await?;
    let now = now_ms();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        out.push(insert_one(&mut tx, job, now, policy).await?);
    }
    tx.commit().await?;
    Ok(out)
}

fn int(info: &InstanceInfo, tag: u32) -> Option<i64> {
    info.get(tag).and_then(|v| v.parse().ok())
}

fn s(info: &InstanceInfo, tag: u32) -> Option<String> {
    info.get(tag).map(str::to_owned)
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

async fn insert_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job: &Job,
    now: i64,
    policy: DuplicatePolicy,
) -> Result<Written, StoreError> {
    let i = &job.info;
    // A study belongs to the site that sent it first; another site may not add to it.
    let owner: Option<(Option<String>,)> =
        sqlx::query_as("SELECT site_id FROM studies WHERE study_uid = $1")
            .bind(&i.study_uid)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some((Some(owner),)) = owner
        && owner != job.site
    {
        return Ok(Written::OtherSite);
    }
    let r = sqlx::query(
        "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class, instance_number, rows_, columns_, frames, bits_allocated, transfer_syntax, object_key, size, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (sop_uid) DO NOTHING",
    )
    .bind(&i.sop_instance_uid)
    .bind(&i.series_uid)
    .bind(&i.study_uid)
    .bind(&i.sop_class_uid)
    .bind(int(i, 0x0020_0013))
    .bind(int(i, 0x0028_0010))
    .bind(int(i, 0x0028_0011))
    .bind(int(i, 0x0028_0008).or(Some(1)))
    .bind(int(i, 0x0028_0100))
    .bind(&i.transfer_syntax)
    .bind(&job.key)
    .bind(job.size)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() == 0 {
        return match policy {
            DuplicatePolicy::KeepFirst => Ok(Written::Duplicate),
            DuplicatePolicy::Replace => {
                let (old,): (String,) =
                    sqlx::query_as("SELECT object_key FROM instances WHERE sop_uid = $1")
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
                sqlx::query(
                    "UPDATE studies SET updated_at = $1, stable_at = NULL WHERE study_uid = $2",
                )
                .bind(now)
                .bind(&i.study_uid)
                .execute(&mut **tx)
                .await?;
                Ok(Written::Replaced(old))
            }
        };
    }
    // Series row and counter in one statement; a count of 1 means a new series.
    let (series_count,): (i64,) = sqlx::query_as(
        "INSERT INTO series (series_uid, study_uid, modality, series_number, series_description, body_part, series_date, pps_start_date, num_instances, received_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9) \
         ON CONFLICT (series_uid) DO UPDATE SET num_instances = series.num_instances + 1, updated_at = $9 RETURNING num_instances",
    )
    .bind(&i.series_uid)
    .bind(&i.study_uid)
    .bind(s(i, 0x0008_0060))
    .bind(int(i, 0x0020_0011))
    .bind(s(i, 0x0008_103E))
    .bind(s(i, 0x0018_0015))
    .bind(s(i, 0x0008_0021))
    .bind(s(i, 0x0040_0244))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let new_series = i64::from(series_count == 1);
    // Study row, counters and modalities in one statement.
    let name = s(i, 0x0010_0010);
    let modality = i
        .get(0x0008_0060)
        .filter(|m| !m.is_empty() && !m.contains(['/', '%', '_', '!']))
        .unwrap_or("");
    let (mods, pattern) = if modality.is_empty() {
        (String::new(), "%".to_owned())
    } else {
        (format!("{modality}/"), format!("%/{modality}/%"))
    };
    sqlx::query(
        "INSERT INTO studies (study_uid, patient_name, patient_name_fuzzy, patient_id, issuer, birth_date, sex, study_date, study_time, accession, study_description, referring_physician, study_id, modalities, num_series, num_instances, received_at, updated_at, site_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, '/' || $15, $16, 1, $14, $14, $18) \
         ON CONFLICT (study_uid) DO UPDATE SET num_instances = studies.num_instances + 1, num_series = studies.num_series + $16, updated_at = $14, stable_at = NULL, \
         modalities = CASE WHEN studies.modalities LIKE $17 THEN studies.modalities ELSE studies.modalities || $15 END",
    )
    .bind(&i.study_uid)
    .bind(name.clone())
    .bind(name.as_deref().map(fuzzy_name))
    .bind(s(i, 0x0010_0020))
    .bind(s(i, 0x0010_0021))
    .bind(s(i, 0x0010_0030))
    .bind(s(i, 0x0010_0040))
    .bind(s(i, 0x0008_0020))
    .bind(s(i, 0x0008_0030))
    .bind(s(i, 0x0008_0050))
    .bind(s(i, 0x0008_1030))
    .bind(s(i, 0x0008_0090))
    .bind(s(i, 0x0020_0010))
    .bind(now)
    .bind(mods)
    .bind(new_series)
    .bind(pattern)
    .bind(&job.site)
    .execute(&mut **tx)
    .await?;
    Ok(Written::Inserted)
}
