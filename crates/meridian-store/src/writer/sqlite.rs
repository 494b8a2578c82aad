//! The SQLite index's common group (new instances of studies of the sending
//! site), written on a connection the writer's thread owns.
//!
//! Through sqlx every statement is a hop to the connection's own thread and
//! back, and each row a statement returns is one more: a group of one cost
//! about six thread wake-ups, some of them after its file was durable, on
//! the path to the C-STORE response. Here the statements run in the
//! writer's thread itself (prepared once, each `$n` bound to its value by an order worked
//! out when the connection opens), so staging costs no wake-up and the commit one fsync.
//!
//! The path writes what the general path would (`writer::tests` checks the
//! rows) and assumes the same: every instance new, every study the sender's.
//! The rows returned check both; when they fail, or on any error, the group
//! is rolled back and handed to the general path, which writes it through
//! sqlx with the duplicate policy and the owners' checks.

use std::path::Path;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{CachedStatement, Connection, OpenFlags, Statement, ToSql};

use super::{
    Fates, Groups, INSTANCE_PARAMS, Job, Param, SERIES_PARAMS, STUDY_PARAMS, UPSERT_SERIES,
    UPSERT_STUDY_RECOUNT, Written, file_failed, insert_instances, instance_params, series_params,
    study_params,
};
use crate::db::SQLITE_PRAGMAS;
use crate::{StoreError, now_ms};

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Param::Int(Some(v)) => ToSqlOutput::Owned(Value::Integer(*v)),
            Param::Text(None) | Param::Int(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// The writer's own connection to the SQLite index.
pub(crate) struct Conn {
    c: Connection,
    /// `INSERT_INSTANCES` for one row, returning `'i'` when it is new.
    insert_one: Bound,
    series: Bound,
    study: Bound,
}

/// A statement the writer runs, and which of its `Param`s each of its
/// parameters takes (SQLite numbers `$n` parameters by first appearance,
/// not by `n`), worked out once when the connection opens.
struct Bound {
    sql: String,
    /// For SQLite's parameter `i + 1`, the index of its `Param`.
    order: Vec<usize>,
}

impl Bound {
    /// `sql`, whose parameters are `$1`..`$params`.
    fn new(c: &Connection, sql: String, params: usize) -> Result<Bound, StoreError> {
        let stmt = c.prepare_cached(&sql)?;
        let order = (1..=stmt.parameter_count())
            .map(|i| {
                let name = stmt.parameter_name(i).unwrap_or("?");
                name.strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=params).contains(n))
                    .map(|n| n - 1)
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        drop(stmt);
        Ok(Bound { sql, order })
    }

    /// The statement, from the connection's cache.
    fn prepare<'c>(&self, c: &'c Connection) -> rusqlite::Result<CachedStatement<'c>> {
        c.prepare_cached(&self.sql)
    }

    /// Binds `params` (as many as `new` was told) to `stmt`.
    fn bind(&self, stmt: &mut Statement<'_>, params: &[Param<'_>]) -> rusqlite::Result<()> {
        for (i, &n) in self.order.iter().enumerate() {
            let p = params
                .get(n)
                .ok_or(rusqlite::Error::InvalidParameterCount(n + 1, params.len()))?;
            stmt.raw_bind_parameter(i + 1, p)?;
        }
        Ok(())
    }
}

impl Conn {
    /// Opens the index (already created and migrated through the pool, so
    /// in WAL mode) with the pool's settings: a commit is durable when it
    /// returns.
    pub(crate) fn open(path: &Path) -> Result<Conn, StoreError> {
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        for pragma in SQLITE_PRAGMAS {
            c.execute_batch(pragma)?;
        }
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Config(format!(
                "the SQLite index is in journal mode {mode}, not WAL"
            )));
        }
        Ok(Conn {
            insert_one: Bound::new(&c, insert_instances(1, 0, "'i'"), INSTANCE_PARAMS)?,
            series: Bound::new(&c, UPSERT_SERIES.to_owned(), SERIES_PARAMS)?,
            study: Bound::new(&c, UPSERT_STUDY_RECOUNT.to_owned(), STUDY_PARAMS)?,
            c,
        })
    }

    /// Writes the group if it is the common case: stages it, waits for its
    /// files, commits; a failed file rolls the group back and stages it
    /// again without that row. One result per job; `None` (nothing written,
    /// `fates` kept) sends the group to the general path.
    pub(crate) async fn write(
        &mut self,
        jobs: &mut [Job],
        fates: &mut Fates,
    ) -> Option<Vec<Result<Written, StoreError>>> {
        let now = now_ms();
        let all: Vec<usize> = (0..jobs.len()).collect();
        if !self.stage(jobs, &all, now) {
            return None;
        }
        let ok = fates.settle(jobs).await.to_vec();
        let good: Vec<usize> = all.into_iter().filter(|&k| ok[k] == Some(true)).collect();
        if good.len() < jobs.len() {
            self.rollback();
            if !good.is_empty() && !self.stage(jobs, &good, now) {
                return None;
            }
        }
        if !good.is_empty()
            && let Err(e) = self.c.execute_batch("COMMIT")
        {
            tracing::warn!(error = %e, "index commit failed; retrying through the pool");
            self.rollback();
            return None;
        }
        Some(
            ok.iter()
                .map(|o| match o {
                    Some(true) => Ok(Written::Inserted),
                    _ => Err(file_failed()),
                })
                .collect(),
        )
    }

    /// Begins a write transaction and stages `jobs[pick]`; `false` (rolled
    /// back) when the group is not the common case or a statement failed.
    fn stage(&mut self, jobs: &[Job], pick: &[usize], now: i64) -> bool {
        if !common(jobs, pick) {
            return false;
        }
        let staged = self
            .c
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| self.stage_rows(jobs, pick, now));
        match staged {
            Ok(true) => true,
            Ok(false) => {
                self.rollback();
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "index staging failed; retrying through the pool");
                self.rollback();
                false
            }
        }
    }

    /// The rows of `jobs[pick]`; `false` when an instance is known or a
    /// study belongs to another site.
    fn stage_rows(&self, jobs: &[Job], pick: &[usize], now: i64) -> rusqlite::Result<bool> {
        let mut insert = self.insert_one.prepare(&self.c)?;
        for &k in pick {
            self.insert_one
                .bind(&mut insert, &instance_params(&jobs[k], now))?;
            if insert.raw_query().next()?.is_none() {
                return Ok(false); // known already: the duplicate policy decides
            }
        }
        let g = Groups::of(jobs, pick);
        let mut series = self.series.prepare(&self.c)?;
        for &(uid, k, count) in &g.series {
            self.series
                .bind(&mut series, &series_params(uid, &jobs[k].info, now, count))?;
            series.raw_execute()?;
        }
        let mut study = self.study.prepare(&self.c)?;
        for &(_, modality, k, count, _) in &g.studies {
            // The series count is recounted in SQL here: parameter $16 is unused.
            self.study
                .bind(&mut study, &study_params(&jobs[k], modality, now, 0, count))?;
            if study.raw_query().next()?.is_none() {
                return Ok(false); // another site's study
            }
        }
        Ok(true)
    }

    fn rollback(&self) {
        if !self.c.is_autocommit()
            && let Err(e) = self.c.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "index rollback failed");
        }
    }
}

/// No SOP instance twice and one site per study: the general path sorts out
/// anything else.
fn common(jobs: &[Job], pick: &[usize]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut site_of = std::collections::HashMap::new();
    pick.iter().all(|&k| {
        let i = &jobs[k].info;
        seen.insert(i.sop_instance_uid.as_str())
            && *site_of
                .entry(i.study_uid.as_str())
                .or_insert(jobs[k].site.as_str())
                == jobs[k].site
    })
}
