//! Appending to and reading the hash-chained audit log.
//!
//! One task appends, in batches, so the chain stays linear on one node; on
//! PostgreSQL each batch also takes an exclusive table lock, so several
//! nodes append to one chain. A record is durable when `Store::audit`
//! returns.

use meridian_audit::{AuditEvent, GENESIS, Record, Verifier, VerifyError, seal};
use sqlx::Executor;
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::db::{Db, DbKind};

pub(crate) struct Job {
    pub event: AuditEvent,
    pub reply: oneshot::Sender<Result<i64, StoreError>>,
}

pub(crate) async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(256);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let jobs = std::mem::take(&mut batch);
        let events: Vec<AuditEvent> = jobs.iter().map(|j| j.event.clone()).collect();
        match append(&db, events).await {
            Ok(seqs) => {
                for (j, s) in jobs.into_iter().zip(seqs) {
                    let _ = j.reply.send(Ok(s));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit append failed");
                let msg = e.to_string();
                for j in jobs {
                    let _ = j.reply.send(Err(StoreError::Config(format!(
                        "audit append failed: {msg}"
                    ))));
                }
            }
        }
    }
}

async fn append(db: &Db, events: Vec<AuditEvent>) -> Result<Vec<i64>, StoreError> {
    let mut tx = db.begin_write().await?;
    if db.kind == DbKind::Postgres {
        tx.execute("LOCK TABLE audit_log IN EXCLUSIVE MODE").await?;
    }
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (mut seq, mut prev) = last.unwrap_or((0, GENESIS.to_owned()));
    let mut out = Vec::with_capacity(events.len());
    for mut e in events {
        // Name the patient of a study access from the index.
        if let (Some(study), None) = (&e.study_uid, &e.patient_id) {
            let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT patient_id, issuer, accession FROM studies WHERE study_uid = $1",
            )
            .bind(study)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((pid, issuer, acc)) = row {
                e.patient_id = pid;
                e.issuer = issuer;
                if e.accession.is_none() {
                    e.accession = acc;
                }
            }
        }
        seq += 1;
        let r = seal(&prev, seq, e);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, role, action, patient_id, issuer, study_uid, accession, source, outcome, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(r.seq)
        .bind(r.event.at_ms)
        .bind(&r.event.actor)
        .bind(&r.event.role)
        .bind(&r.event.action)
        .bind(&r.event.patient_id)
        .bind(&r.event.issuer)
        .bind(&r.event.study_uid)
        .bind(&r.event.accession)
        .bind(&r.event.source)
        .bind(&r.event.outcome)
        .bind(&r.event.detail)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(&mut *tx)
        .await?;
        prev = r.hash;
        out.push(seq);
    }
    tx.commit().await?;
    Ok(out)
}

type Row = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
);

fn to_record(r: Row) -> Record {
    Record {
        seq: r.0,
        event: AuditEvent {
            at_ms: r.1,
            actor: r.2,
            role: r.3,
            action: r.4,
            patient_id: r.5,
            issuer: r.6,
            study_uid: r.7,
            accession: r.8,
            source: r.9,
            outcome: r.10,
            detail: r.11,
        },
        prev_hash: r.12,
        hash: r.13,
    }
}

const COLS: &str = "seq, at, actor, role, action, patient_id, issuer, study_uid, accession, source, outcome, detail, prev_hash, hash";

/// Walks the whole chain in order.
pub(crate) async fn verify(db: &Db) -> Result<Result<u64, VerifyError>, StoreError> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM audit_log ORDER BY seq"
    )))
    .fetch(&db.pool);
    let mut v = Verifier::default();
    while let Some(r) = rows.try_next().await? {
        if let Err(e) = v.push(&to_record(r)) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(v.checked))
}

/// Records of a study, or all, newest last (bounded).
pub(crate) async fn records(
    db: &Db,
    study_uid: Option<&str>,
    limit: i64,
) -> Result<Vec<Record>, StoreError> {
    let rows: Vec<Row> = match study_uid {
        Some(s) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM audit_log WHERE study_uid = $1 ORDER BY seq LIMIT $2"
            )))
            .bind(s)
            .bind(limit)
            .fetch_all(&db.pool)
            .await?
        }
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLS} FROM audit_log ORDER BY seq LIMIT $1"
            )))
            .bind(limit)
            .fetch_all(&db.pool)
            .await?
        }
    };
    Ok(rows.into_iter().map(to_record).collect())
}

/// What an auditor searches by; every field is optional and they combine with AND.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AuditFilter {
    pub patient_id: Option<String>,
    pub issuer: Option<String>,
    /// Actor: user name, `token:ID...` or `ae:TITLE` (exact).
    pub actor: Option<String>,
    pub study_uid: Option<String>,
    /// UTC milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// UTC milliseconds, exclusive.
    pub to_ms: Option<i64>,
    /// Records after this sequence number (paging).
    pub after_seq: Option<i64>,
    pub limit: Option<i64>,
}

/// Records matching a filter, oldest first, bounded.
pub(crate) async fn search(db: &Db, f: &AuditFilter) -> Result<Vec<Record>, StoreError> {
    enum P {
        T(String),
        I(i64),
    }
    // Conditions from static column names; every value is a placeholder, bound in order.
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<P> = Vec::new();
    let mut add = |cond: &str, p: P| {
        params.push(p);
        conds.push(format!("{cond} ${}", params.len()));
    };
    for (col, v) in [
        ("patient_id =", &f.patient_id),
        ("issuer =", &f.issuer),
        ("actor =", &f.actor),
        ("study_uid =", &f.study_uid),
    ] {
        if let Some(v) = v {
            add(col, P::T(v.clone()));
        }
    }
    for (cond, v) in [
        ("at >=", f.from_ms),
        ("at <", f.to_ms),
        ("seq >", f.after_seq),
    ] {
        if let Some(v) = v {
            add(cond, P::I(v));
        }
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    params.push(P::I(f.limit.unwrap_or(1000).clamp(1, 10_000)));
    let sql = format!(
        "SELECT {COLS} FROM audit_log{where_} ORDER BY seq LIMIT ${}",
        params.len()
    );
    let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
    for p in params {
        q = match p {
            P::T(t) => q.bind(t),
            P::I(i) => q.bind(i),
        };
    }
    Ok(q.fetch_all(&db.pool)
        .await?
        .into_iter()
        .map(to_record)
        .collect())
}
