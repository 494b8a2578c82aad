//! Storage of the teleradiology workflow: site profiles (contract, triage rules),
//! reader profiles, orders, cases and their transitions. The rules live in
//! `meridian-workflow`; this module only keeps its facts.
//!
//! Cases change by optimistic concurrency: every update names the `version` it read
//! and fails (returns `false`) if another node changed the case in between, so several
//! nodes can route over one PostgreSQL without two of them assigning one study.

use meridian_workflow::model::{Case, Lock, Priority, Reader, Site, State};
use serde::{Deserialize, Serialize};

use crate::accounts::{valid_site_id, valid_username};
use crate::{Store, StoreError, now_ms, rand_u64};

fn bad(what: &str) -> StoreError {
    StoreError::Config(what.to_owned())
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Config(format!("stored profile does not parse: {e}"))
}

/// An order (HL7, FHIR, web requisition or automatic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderRow {
    pub order_id: String,
    pub site_id: String,
    pub accession: String,
    /// Placer order number (HL7 ORC-2).
    pub placer: String,
    pub patient_id: String,
    pub issuer: String,
    pub patient_name: String,
    pub birth_date: String,
    pub sex: String,
    pub modality: String,
    pub body_part: String,
    pub procedure_code: String,
    pub procedure_text: String,
    /// `stat`, `urgent` or `routine`.
    pub priority: String,
    pub reason: String,
    /// Clinical history (web requisitions).
    pub history: String,
    pub ordering: String,
    pub patient_class: String,
    pub location: String,
    pub ordered_at: i64,
    /// `active`, `matched` or `cancelled`.
    pub status: String,
    pub study_uid: Option<String>,
    /// `hl7`, `fhir`, `web` or `auto`.
    pub source: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const ORDER_COLS: &str = "order_id, site_id, accession, placer, patient_id, issuer, patient_name, birth_date, sex, modality, body_part, procedure_code, procedure_text, priority, reason, history, ordering, patient_class, location, ordered_at, status, study_uid, source, created_by, created_at, updated_at";

fn order_of(row: &sqlx::any::AnyRow) -> Result<OrderRow, StoreError> {
    use sqlx::Row;
    Ok(OrderRow {
        order_id: row.try_get(0)?,
        site_id: row.try_get(1)?,
        accession: row.try_get(2)?,
        placer: row.try_get(3)?,
        patient_id: row.try_get(4)?,
        issuer: row.try_get(5)?,
        patient_name: row.try_get(6)?,
        birth_date: row.try_get(7)?,
        sex: row.try_get(8)?,
        modality: row.try_get(9)?,
        body_part: row.try_get(10)?,
        procedure_code: row.try_get(11)?,
        procedure_text: row.try_get(12)?,
        priority: row.try_get(13)?,
        reason: row.try_get(14)?,
        history: row.try_get(15)?,
        ordering: row.try_get(16)?,
        patient_class: row.try_get(17)?,
        location: row.try_get(18)?,
        ordered_at: row.try_get(19)?,
        status: row.try_get(20)?,
        study_uid: row.try_get(21)?,
        source: row.try_get(22)?,
        created_by: row.try_get(23)?,
        created_at: row.try_get(24)?,
        updated_at: row.try_get(25)?,
    })
}

/// A case with its storage metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredCase {
    #[serde(flatten)]
    pub case: Case,
    pub order_id: Option<String>,
    /// The last assignment's (or non-assignment's) explanation, as stored.
    pub explanation: Option<serde_json::Value>,
    pub flags: Vec<String>,
    pub version: i64,
    pub updated_at: i64,
    /// Fingerprint of the stored explanation ([`explain_key`]).
    #[serde(skip)]
    pub explain_key: Option<String>,
}

/// A fingerprint of an explanation's substance (who was chosen, who was eligible with
/// which load, who was not and why), ignoring when it was made: a routing pass rewrites
/// an explanation only when this changes.
pub fn explain_key(v: &serde_json::Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for k in ["chosen", "eligible", "ineligible", "more_ineligible"] {
        v.get(k).map(|x| x.to_string()).hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// One transition or change of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseEvent {
    pub seq_id: String,
    pub study_uid: String,
    pub site_id: String,
    pub at: i64,
    /// `received`, `stable`, `matched`, `unmatched`, `assigned`, `claimed`, `opened`,
    /// `released`, `priority`, `cancelled`, `flag`, …
    pub kind: String,
    /// The state after the event.
    pub state: String,
    pub actor: String,
    /// The reader concerned, if any.
    pub reader: Option<String>,
    pub detail: String,
}

impl CaseEvent {
    pub fn new(c: &Case, at: i64, kind: &str, actor: &str, detail: String) -> CaseEvent {
        CaseEvent {
            seq_id: format!("{at:013}-{:08x}{:08x}", next_seq(), rand_u64() as u32),
            study_uid: c.study_uid.clone(),
            site_id: c.site.clone(),
            at,
            kind: kind.to_owned(),
            state: c.state.as_str().to_owned(),
            actor: actor.to_owned(),
            reader: c.assigned_to.clone(),
            detail,
        }
    }
}

type StudyRowT = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
);

type EventRowT = (
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
);

/// Orders the events of one instant as they were made (within a process).
fn next_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

const CASE_COLS: &str = "study_uid, site_id, order_id, state, priority, protocol, subspecialty, modality, patient_key, rvu_milli, base_at, deadline, reading_ms, assigned_to, assigned_at, opened_at, lock_holder, lock_expires, released_by, explanation, flags, version, updated_at, explain_key";

/// The same columns without the explanation (routing passes compare `explain_key`).
const CASE_COLS_LIGHT: &str = "study_uid, site_id, order_id, state, priority, protocol, subspecialty, modality, patient_key, rvu_milli, base_at, deadline, reading_ms, assigned_to, assigned_at, opened_at, lock_holder, lock_expires, released_by, CAST(NULL AS TEXT), flags, version, updated_at, explain_key";

fn case_of(row: &sqlx::any::AnyRow) -> Result<StoredCase, StoreError> {
    use sqlx::Row;
    let state: String = row.try_get(3)?;
    let priority: String = row.try_get(4)?;
    let lock_holder: Option<String> = row.try_get(16)?;
    let lock_expires: Option<i64> = row.try_get(17)?;
    let released: String = row.try_get(18)?;
    let explanation: Option<String> = row.try_get(19)?;
    let flags: String = row.try_get(20)?;
    let rvu_milli: i64 = row.try_get(9)?;
    Ok(StoredCase {
        case: Case {
            study_uid: row.try_get(0)?,
            site: row.try_get(1)?,
            state: state.parse().map_err(|e: String| bad(&e))?,
            priority: priority.parse().map_err(|e: String| bad(&e))?,
            protocol: row.try_get(5)?,
            subspecialty: row.try_get(6)?,
            modality: row.try_get(7)?,
            patient_key: row.try_get(8)?,
            rvu: rvu_milli as f64 / 1000.0,
            base_at: row.try_get(10)?,
            deadline: row.try_get(11)?,
            reading_ms: row.try_get(12)?,
            assigned_to: row.try_get(13)?,
            assigned_at: row.try_get(14)?,
            opened_at: row.try_get(15)?,
            lock: match (lock_holder, lock_expires) {
                (Some(reader), Some(expires)) => Some(Lock { reader, expires }),
                _ => None,
            },
            released_by: split(&released),
        },
        order_id: row.try_get(2)?,
        explanation: explanation.and_then(|e| serde_json::from_str(&e).ok()),
        flags: split(&flags),
        version: row.try_get(21)?,
        updated_at: row.try_get(22)?,
        explain_key: row.try_get(23)?,
    })
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn insert_events(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    events: &[CaseEvent],
) -> Result<(), StoreError> {
    for e in events {
        sqlx::query("INSERT INTO case_events (seq_id, study_uid, site_id, at, kind, state, actor, reader, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&e.seq_id)
            .bind(&e.study_uid)
            .bind(&e.site_id)
            .bind(e.at)
            .bind(&e.kind)
            .bind(&e.state)
            .bind(&e.actor)
            .bind(e.reader.as_deref())
            .bind(&e.detail)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The facts of a study that workflow needs, from the archive index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StudyFacts {
    pub study_uid: String,
    pub site_id: Option<String>,
    pub patient_id: String,
    pub issuer: String,
    pub accession: String,
    pub modalities: Vec<String>,
    pub study_date: String,
    pub description: String,
    pub received_at: i64,
    pub stable_at: Option<i64>,
}

impl Store {
    fn wpool(&self) -> &sqlx::AnyPool {
        &self.inner.db.pool
    }

    // ---- sites ----

    /// Stores a site's workflow profile, creating the site if it does not exist.
    pub async fn put_site_profile(&self, site: &Site) -> Result<(), StoreError> {
        if !valid_site_id(&site.id) {
            return Err(bad("a site id is 1-64 of a-z 0-9 - _ ."));
        }
        let json = serde_json::to_string(site).map_err(json_err)?;
        let name = if site.name.is_empty() {
            site.id.as_str()
        } else {
            site.name.as_str()
        };
        sqlx::query("INSERT INTO sites (site_id, name, created_at, profile) VALUES ($1, $2, $3, $4) ON CONFLICT (site_id) DO UPDATE SET name = $2, profile = $4")
            .bind(&site.id)
            .bind(name)
            .bind(now_ms())
            .bind(json)
            .execute(self.wpool())
            .await?;
        Ok(())
    }

    /// Sites that have a workflow profile.
    pub async fn site_profiles(&self) -> Result<Vec<Site>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT profile FROM sites WHERE profile IS NOT NULL ORDER BY site_id")
                .fetch_all(self.wpool())
                .await?;
        rows.into_iter()
            .map(|(p,)| serde_json::from_str(&p).map_err(json_err))
            .collect()
    }

    pub async fn site_profile(&self, id: &str) -> Result<Option<Site>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT profile FROM sites WHERE site_id = $1")
                .bind(id)
                .fetch_optional(self.wpool())
                .await?;
        match row {
            Some((Some(p),)) => Ok(Some(serde_json::from_str(&p).map_err(json_err)?)),
            _ => Ok(None),
        }
    }

    // ---- readers ----

    /// Stores a reader profile; the user must exist with the radiologist role.
    pub async fn put_reader(&self, r: &Reader) -> Result<(), StoreError> {
        if !valid_username(&r.id) {
            return Err(bad("a reader id is a user name"));
        }
        match self.user(&r.id).await? {
            Some(u) if u.role == "radiologist" => {}
            Some(_) => return Err(bad("a reader must be a user with the radiologist role")),
            None => return Err(bad("no such user; create the user first")),
        }
        let json = serde_json::to_string(r).map_err(json_err)?;
        sqlx::query("INSERT INTO readers (username, profile, last_seen, updated_at) VALUES ($1, $2, 0, $3) ON CONFLICT (username) DO UPDATE SET profile = $2, updated_at = $3")
            .bind(&r.id)
            .bind(json)
            .bind(now_ms())
            .execute(self.wpool())
            .await?;
        Ok(())
    }

    /// Every reader with the time they were last seen (ms, 0 = never).
    pub async fn readers(&self) -> Result<Vec<(Reader, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT r.profile, r.last_seen FROM readers r JOIN users u ON u.username = r.username WHERE u.disabled = 0 ORDER BY r.username",
        )
        .fetch_all(self.wpool())
        .await?;
        rows.into_iter()
            .map(|(p, seen)| Ok((serde_json::from_str(&p).map_err(json_err)?, seen)))
            .collect()
    }

    pub async fn reader(&self, id: &str) -> Result<Option<Reader>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT profile FROM readers WHERE username = $1")
                .bind(id)
                .fetch_optional(self.wpool())
                .await?;
        row.map(|(p,)| serde_json::from_str(&p).map_err(json_err))
            .transpose()
    }

    /// Records that a reader is present (worklist open) at `now`; `now = 0` signs out.
    pub async fn touch_reader(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE readers SET last_seen = $1 WHERE username = $2")
            .bind(now)
            .bind(id)
            .execute(self.wpool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- orders ----

    /// Saves an order: an existing active order of the site with the same placer
    /// number (else the same accession) is updated, otherwise a new one is created.
    /// Returns the stored order and whether it was created.
    pub async fn save_order(&self, o: &OrderRow) -> Result<(OrderRow, bool), StoreError> {
        if !valid_site_id(&o.site_id) {
            return Err(bad("an order needs a valid site"));
        }
        let existing = self.find_order(&o.site_id, &o.placer, &o.accession).await?;
        let now = now_ms();
        let mut row = o.clone();
        row.updated_at = now;
        let created = existing.is_none();
        match existing {
            Some(e) => {
                row.order_id = e.order_id;
                row.created_at = e.created_at;
                row.created_by = e.created_by;
                row.study_uid = e.study_uid;
                if row.status.is_empty() {
                    row.status = e.status;
                }
            }
            None => {
                row.order_id = format!("o{now:013x}{:08x}", rand_u64() as u32);
                row.created_at = now;
                if row.status.is_empty() {
                    row.status = "active".into();
                }
            }
        }
        let sql = format!(
            "INSERT INTO orders ({ORDER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26) \
             ON CONFLICT (order_id) DO UPDATE SET accession = $3, placer = $4, patient_id = $5, issuer = $6, patient_name = $7, birth_date = $8, sex = $9, modality = $10, body_part = $11, procedure_code = $12, procedure_text = $13, priority = $14, reason = $15, history = $16, ordering = $17, patient_class = $18, location = $19, ordered_at = $20, status = $21, updated_at = $26"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&row.order_id)
            .bind(&row.site_id)
            .bind(&row.accession)
            .bind(&row.placer)
            .bind(&row.patient_id)
            .bind(&row.issuer)
            .bind(&row.patient_name)
            .bind(&row.birth_date)
            .bind(&row.sex)
            .bind(&row.modality)
            .bind(&row.body_part)
            .bind(&row.procedure_code)
            .bind(&row.procedure_text)
            .bind(&row.priority)
            .bind(&row.reason)
            .bind(&row.history)
            .bind(&row.ordering)
            .bind(&row.patient_class)
            .bind(&row.location)
            .bind(row.ordered_at)
            .bind(&row.status)
            .bind(row.study_uid.as_deref())
            .bind(&row.source)
            .bind(&row.created_by)
            .bind(row.created_at)
            .bind(row.updated_at)
            .execute(self.wpool())
            .await?;
        Ok((row, created))
    }

    /// The site's order with this placer number, else this accession (newest first).
    pub async fn find_order(
        &self,
        site: &str,
        placer: &str,
        accession: &str,
    ) -> Result<Option<OrderRow>, StoreError> {
        for (col, v) in [("placer", placer), ("accession", accession)] {
            if v.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT {ORDER_COLS} FROM orders WHERE site_id = $1 AND {col} = $2 ORDER BY created_at DESC LIMIT 1"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(site)
                .bind(v)
                .fetch_optional(self.wpool())
                .await?;
            if let Some(r) = row {
                return order_of(&r).map(Some);
            }
        }
        Ok(None)
    }

    pub async fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError> {
        let sql = format!("SELECT {ORDER_COLS} FROM orders WHERE order_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.wpool())
            .await?;
        row.as_ref().map(order_of).transpose()
    }

    /// Orders of a site (all sites with `None`) in a status, newest first.
    pub async fn orders(
        &self,
        site: Option<&str>,
        status: &str,
        limit: i64,
    ) -> Result<Vec<OrderRow>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLS} FROM orders WHERE status = $1 AND ($2 = '' OR site_id = $2) ORDER BY ordered_at DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(site.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.wpool())
            .await?;
        rows.iter().map(order_of).collect()
    }

    /// Open orders of a patient at a site (for matching without an accession).
    pub async fn patient_orders(
        &self,
        site: &str,
        patient_id: &str,
        issuer: &str,
    ) -> Result<Vec<OrderRow>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLS} FROM orders WHERE site_id = $1 AND patient_id = $2 AND issuer = $3 AND status = 'active' ORDER BY ordered_at"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(site)
            .bind(patient_id)
            .bind(issuer)
            .fetch_all(self.wpool())
            .await?;
        rows.iter().map(order_of).collect()
    }

    /// Sets an order's status (and study), returning whether it changed.
    pub async fn set_order_status(
        &self,
        order_id: &str,
        status: &str,
        study_uid: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE orders SET status = $1, study_uid = COALESCE($2, study_uid), updated_at = $3 WHERE order_id = $4")
            .bind(status)
            .bind(study_uid)
            .bind(now_ms())
            .bind(order_id)
            .execute(self.wpool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Orders matched to a study, oldest first.
    pub async fn study_orders(&self, study_uid: &str) -> Result<Vec<OrderRow>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLS} FROM orders WHERE study_uid = $1 AND status = 'matched' ORDER BY created_at, order_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(study_uid)
            .fetch_all(self.wpool())
            .await?;
        rows.iter().map(order_of).collect()
    }

    /// Takes an order off its study: active again, waiting for a study.
    pub async fn unlink_order(&self, order_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE orders SET status = 'active', study_uid = NULL, updated_at = $1 WHERE order_id = $2 AND status = 'matched'")
            .bind(now_ms())
            .bind(order_id)
            .execute(self.wpool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Applies a patient update (HL7 ADT^A08) to the site's orders of that patient
    /// (same ID and issuer only). Returns how many orders changed.
    pub async fn update_patient(
        &self,
        site: &str,
        patient_id: &str,
        issuer: &str,
        name: &str,
        birth_date: &str,
        sex: &str,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query("UPDATE orders SET patient_name = $1, birth_date = $2, sex = $3, updated_at = $4 WHERE site_id = $5 AND patient_id = $6 AND issuer = $7")
            .bind(name)
            .bind(birth_date)
            .bind(sex)
            .bind(now_ms())
            .bind(site)
            .bind(patient_id)
            .bind(issuer)
            .execute(self.wpool())
            .await?;
        Ok(r.rows_affected())
    }

    // ---- studies (as workflow sees them) ----

    pub async fn study_facts(&self, study_uid: &str) -> Result<Option<StudyFacts>, StoreError> {
        let row: Option<StudyRowT> = sqlx::query_as("SELECT study_uid, site_id, patient_id, issuer, accession, modalities, study_date, study_description, received_at, stable_at FROM studies WHERE study_uid = $1")
            .bind(study_uid)
            .fetch_optional(self.wpool())
            .await?;
        Ok(row.map(|r| StudyFacts {
            study_uid: r.0,
            site_id: r.1,
            patient_id: r.2.unwrap_or_default(),
            issuer: r.3.unwrap_or_default(),
            accession: r.4.unwrap_or_default(),
            modalities: split_slash(&r.5),
            study_date: r.6.unwrap_or_default(),
            description: r.7.unwrap_or_default(),
            received_at: r.8,
            stable_at: r.9,
        }))
    }

    /// Stable studies that have no case yet (missed events, restarts), oldest
    /// first; only those of sites with a workflow profile (the others never get
    /// a case, and would fill every page, hiding the studies that should).
    pub async fn stable_without_case(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT s.study_uid FROM studies s JOIN sites t ON t.site_id = s.site_id LEFT JOIN cases c ON c.study_uid = s.study_uid WHERE s.stable_at IS NOT NULL AND t.profile IS NOT NULL AND c.study_uid IS NULL ORDER BY s.stable_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.wpool())
        .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    // ---- cases ----

    /// Creates a case with its first events; `false` if it already exists.
    pub async fn insert_case(
        &self,
        c: &Case,
        order_id: Option<&str>,
        explanation: Option<&serde_json::Value>,
        events: &[CaseEvent],
    ) -> Result<bool, StoreError> {
        let mut tx = self.inner.db.begin_write().await?;
        let sql = format!(
            "INSERT INTO cases ({CASE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, 0, $22, $23) ON CONFLICT (study_uid) DO NOTHING"
        );
        let r = bind_case(
            sqlx::query(sqlx::AssertSqlSafe(sql)),
            c,
            order_id,
            explanation,
            &[],
        )
        .bind(now_ms())
        .bind(explanation.map(explain_key))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Writes `c` over the stored case if it is still at `version`, with its events.
    /// `false`: someone else changed it first (nothing written). `explanation: None`
    /// keeps the stored explanation.
    pub async fn update_case(
        &self,
        c: &Case,
        order_id: Option<&str>,
        explanation: Option<&serde_json::Value>,
        flags: &[String],
        version: i64,
        events: &[CaseEvent],
    ) -> Result<bool, StoreError> {
        let mut tx = self.inner.db.begin_write().await?;
        let r = bind_case(
            sqlx::query(
                "UPDATE cases SET study_uid = $1, site_id = $2, order_id = $3, state = $4, priority = $5, protocol = $6, subspecialty = $7, modality = $8, patient_key = $9, rvu_milli = $10, base_at = $11, deadline = $12, reading_ms = $13, assigned_to = $14, assigned_at = $15, opened_at = $16, lock_holder = $17, lock_expires = $18, released_by = $19, explanation = COALESCE($20, explanation), flags = $21, version = version + 1, updated_at = $22, explain_key = COALESCE($24, explain_key) WHERE study_uid = $1 AND version = $23",
            ),
            c,
            order_id,
            explanation,
            flags,
        )
        .bind(now_ms())
        .bind(version)
        .bind(explanation.map(explain_key))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn case(&self, study_uid: &str) -> Result<Option<StoredCase>, StoreError> {
        let sql = format!("SELECT {CASE_COLS} FROM cases WHERE study_uid = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(study_uid)
            .fetch_optional(self.wpool())
            .await?;
        row.as_ref().map(case_of).transpose()
    }

    /// Cases in any of `states` (all sites, or one), earliest deadline first.
    pub async fn cases_in(
        &self,
        states: &[State],
        site: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredCase>, StoreError> {
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        // The state names are our own constants, not input.
        let sql = format!(
            "SELECT {CASE_COLS} FROM cases WHERE state IN ({}) AND ($1 = '' OR site_id = $1) ORDER BY deadline, study_uid LIMIT $2",
            list.join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(site.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.wpool())
            .await?;
        rows.iter().map(case_of).collect()
    }

    /// The routing engine's input: ready, assigned and opened cases, without their
    /// explanations (`explain_key` stands for them). `explanation: None` in an update
    /// keeps the stored one.
    pub async fn routing_cases(&self) -> Result<Vec<StoredCase>, StoreError> {
        let sql = format!(
            "SELECT {CASE_COLS_LIGHT} FROM cases WHERE state IN ('ready', 'assigned', 'opened')"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.wpool())
            .await?;
        rows.iter().map(case_of).collect()
    }

    /// A reader's assigned and opened cases, earliest deadline first.
    pub async fn assigned_to(&self, reader: &str) -> Result<Vec<StoredCase>, StoreError> {
        let sql = format!(
            "SELECT {CASE_COLS} FROM cases WHERE assigned_to = $1 AND state IN ('assigned', 'opened') ORDER BY deadline, study_uid"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(reader)
            .fetch_all(self.wpool())
            .await?;
        rows.iter().map(case_of).collect()
    }

    /// Unassigned ready cases of one site, earliest deadline first (the claimable list).
    /// Unassigned ready cases of one site in any of `modalities` (all with an empty
    /// list), earliest deadline first (the claimable list).
    pub async fn ready_at(
        &self,
        site: &str,
        modalities: &[String],
        limit: i64,
    ) -> Result<Vec<StoredCase>, StoreError> {
        let in_list: Vec<String> = (0..modalities.len())
            .map(|i| format!("${}", i + 3))
            .collect();
        let cond = if modalities.is_empty() {
            String::new()
        } else {
            format!(" AND modality IN ({})", in_list.join(", "))
        };
        let sql = format!(
            "SELECT {CASE_COLS_LIGHT} FROM cases WHERE state = 'ready' AND site_id = $1{cond} ORDER BY deadline, study_uid LIMIT $2"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(site).bind(limit);
        for m in modalities {
            q = q.bind(m.clone());
        }
        let rows = q.fetch_all(self.wpool()).await?;
        rows.iter().map(case_of).collect()
    }

    /// Case events from `since` (ms, inclusive) of one study or all (`""`), oldest
    /// first, at most `limit`.
    pub async fn case_events(
        &self,
        since: i64,
        study_uid: &str,
        limit: i64,
    ) -> Result<Vec<CaseEvent>, StoreError> {
        let rows: Vec<EventRowT> = sqlx::query_as(
            "SELECT seq_id, study_uid, site_id, at, kind, state, actor, reader, detail FROM case_events WHERE at >= $1 AND ($2 = '' OR study_uid = $2) ORDER BY at, seq_id LIMIT $3",
        )
        .bind(since)
        .bind(study_uid)
        .bind(limit)
        .fetch_all(self.wpool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CaseEvent {
                seq_id: r.0,
                study_uid: r.1,
                site_id: r.2,
                at: r.3,
                kind: r.4,
                state: r.5,
                actor: r.6,
                reader: r.7,
                detail: r.8,
            })
            .collect())
    }
}

/// A file attached to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub attachment_id: String,
    pub order_id: String,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    #[serde(skip)]
    pub object_key: String,
    pub created_by: String,
    pub created_at: i64,
}

type AttachmentT = (String, String, String, String, i64, String, String, i64);

fn attachment_of(r: AttachmentT) -> Attachment {
    Attachment {
        attachment_id: r.0,
        order_id: r.1,
        name: r.2,
        content_type: r.3,
        size: r.4,
        object_key: r.5,
        created_by: r.6,
        created_at: r.7,
    }
}

const ATT_COLS: &str =
    "attachment_id, order_id, name, content_type, size, object_key, created_by, created_at";

/// Our own generated ids only (letters and digits): safe in an object key.
fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Store {
    /// Attaches a file to an order: the file is written durably first, then its row.
    pub async fn add_attachment(
        &self,
        order_id: &str,
        name: &str,
        content_type: &str,
        bytes: bytes::Bytes,
        by: &str,
    ) -> Result<Attachment, StoreError> {
        if !valid_id(order_id) {
            return Err(StoreError::BadKey(order_id.to_owned()));
        }
        let id = format!("a{:013x}{:016x}", now_ms(), rand_u64());
        let key = format!("attachments/{order_id}/{id}.bin");
        let blobs = self.inner.blobs.clone();
        let (k, b) = (key.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || blobs.put_durable_blocking(&k, &[&b]))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let a = Attachment {
            attachment_id: id,
            order_id: order_id.to_owned(),
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            size: bytes.len() as i64,
            object_key: key,
            created_by: by.to_owned(),
            created_at: now_ms(),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO order_attachments ({ATT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )))
        .bind(&a.attachment_id)
        .bind(&a.order_id)
        .bind(&a.name)
        .bind(&a.content_type)
        .bind(a.size)
        .bind(&a.object_key)
        .bind(&a.created_by)
        .bind(a.created_at)
        .execute(self.wpool())
        .await?;
        Ok(a)
    }

    pub async fn attachments(&self, order_id: &str) -> Result<Vec<Attachment>, StoreError> {
        let rows: Vec<AttachmentT> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ATT_COLS} FROM order_attachments WHERE order_id = $1 ORDER BY created_at, attachment_id"
        )))
        .bind(order_id)
        .fetch_all(self.wpool())
        .await?;
        Ok(rows.into_iter().map(attachment_of).collect())
    }

    /// One attachment of an order, with its bytes.
    pub async fn attachment(
        &self,
        order_id: &str,
        id: &str,
    ) -> Result<Option<(Attachment, bytes::Bytes)>, StoreError> {
        let row: Option<AttachmentT> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ATT_COLS} FROM order_attachments WHERE order_id = $1 AND attachment_id = $2"
        )))
        .bind(order_id)
        .bind(id)
        .fetch_optional(self.wpool())
        .await?;
        match row.map(attachment_of) {
            Some(a) => {
                let b = self.inner.blobs.get(&a.object_key).await?;
                Ok(Some((a, b)))
            }
            None => Ok(None),
        }
    }
}

fn split_slash(s: &str) -> Vec<String> {
    s.split('/')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn bind_case<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    c: &Case,
    order_id: Option<&str>,
    explanation: Option<&serde_json::Value>,
    flags: &[String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(c.study_uid.clone())
        .bind(c.site.clone())
        .bind(order_id.map(str::to_owned))
        .bind(c.state.as_str())
        .bind(c.priority.as_str())
        .bind(c.protocol.clone())
        .bind(c.subspecialty.clone())
        .bind(c.modality.clone())
        .bind(c.patient_key.clone())
        .bind((c.rvu * 1000.0).round() as i64)
        .bind(c.base_at)
        .bind(c.deadline)
        .bind(c.reading_ms)
        .bind(c.assigned_to.clone())
        .bind(c.assigned_at)
        .bind(c.opened_at)
        .bind(c.lock.as_ref().map(|l| l.reader.clone()))
        .bind(c.lock.as_ref().map(|l| l.expires))
        .bind(c.released_by.join(","))
        .bind(explanation.map(|e| e.to_string()))
        .bind(flags.join(","))
}

/// Priority parse helper for callers holding stored strings.
pub fn priority_of(s: &str) -> Priority {
    s.parse().unwrap_or(Priority::Routine)
}
