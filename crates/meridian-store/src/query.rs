//! Translation of the shared query model into parameterised SQL.

use meridian_auth::Scope;
use meridian_core::attrs::{ATTRS, Attr, AttrKind, Level};
use meridian_core::{Matcher, Query};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::StoreError;
use crate::db::Db;

/// One result of a query: decoded attribute values by tag (multi-values
/// joined with `\`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryRow {
    pub values: Vec<(u32, String)>,
}

impl QueryRow {
    pub fn get(&self, tag: u32) -> Option<&str> {
        self.values
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_str())
    }
}

/// A stored instance, for retrieval.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRef {
    pub sop_uid: String,
    pub series_uid: String,
    pub study_uid: String,
    pub sop_class: String,
    pub transfer_syntax: String,
    pub key: String,
    pub size: i64,
    pub frames: i64,
}

enum Param {
    Text(String),
    Int(i64),
}

fn alias(level: Level) -> &'static str {
    match level {
        Level::Patient | Level::Study => "st",
        Level::Series => "se",
        Level::Image => "i",
    }
}

fn col(a: &Attr) -> String {
    format!("{}.{}", alias(a.level), a.column)
}

/// Escapes LIKE metacharacters with `!`.
fn like_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '!') {
            o.push('!');
        }
        o.push(c);
    }
    o
}

/// Converts a DICOM wildcard pattern into a LIKE pattern.
fn wildcard_to_like(p: &str) -> String {
    let mut o = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '*' => o.push('%'),
            '?' => o.push('_'),
            '%' | '_' | '!' => {
                o.push('!');
                o.push(c);
            }
            c => o.push(c),
        }
    }
    o
}

struct Sql {
    conds: Vec<String>,
    params: Vec<Param>,
}

impl Sql {
    fn p(&mut self, v: Param) -> String {
        self.params.push(v);
        format!("${}", self.params.len())
    }

    fn add(&mut self, a: &Attr, m: &Matcher) {
        let c = col(a);
        match (m, a.kind) {
            (Matcher::Universal, _) => {}
            (Matcher::Single(v), AttrKind::Integer) => {
                let p = self.p(Param::Int(v.parse().unwrap_or(i64::MIN)));
                self.conds.push(format!("{c} = {p}"));
            }
            (Matcher::Single(v), AttrKind::CodeSet) => {
                let p = self.p(Param::Text(format!("%/{}/%", like_escape(v))));
                self.conds.push(format!("{c} LIKE {p} ESCAPE '!'"));
            }
            (Matcher::Single(v), _) => {
                let p = self.p(Param::Text(v.clone()));
                self.conds.push(format!("{c} = {p}"));
            }
            (Matcher::Wildcard(v), AttrKind::CodeSet) => {
                let p = self.p(Param::Text(format!("%/{}/%", wildcard_to_like(v))));
                self.conds.push(format!("{c} LIKE {p} ESCAPE '!'"));
            }
            (Matcher::Wildcard(v), _) => {
                let p = self.p(Param::Text(wildcard_to_like(v)));
                self.conds.push(format!("{c} LIKE {p} ESCAPE '!'"));
            }
            (Matcher::Range(lo, hi), kind) => {
                if let Some(lo) = lo {
                    let p = self.p(Param::Text(lo.clone()));
                    self.conds.push(format!("{c} >= {p}"));
                }
                if let Some(hi) = hi {
                    // A time bound like 1200 includes 120059.999: compare as a prefix.
                    let hi = if kind == AttrKind::Time {
                        format!("{hi}~")
                    } else {
                        hi.clone()
                    };
                    let p = self.p(Param::Text(hi));
                    self.conds.push(format!("{c} <= {p}"));
                }
                self.conds.push(format!("{c} <> ''"));
            }
            (Matcher::UidList(list), AttrKind::CodeSet) => {
                let ors: Vec<String> = list
                    .iter()
                    .map(|v| {
                        let p = self.p(Param::Text(format!("%/{}/%", like_escape(v))));
                        format!("{c} LIKE {p} ESCAPE '!'")
                    })
                    .collect();
                self.conds.push(format!("({})", ors.join(" OR ")));
            }
            (Matcher::UidList(list), _) => {
                let ps: Vec<String> = list
                    .iter()
                    .map(|v| self.p(Param::Text(v.clone())))
                    .collect();
                self.conds.push(format!("{c} IN ({})", ps.join(", ")));
            }
            (Matcher::Fuzzy(words), _) => {
                for w in words {
                    if a.tag == 0x0010_0010 {
                        let p = self.p(Param::Text(format!("%^{}%", like_escape(w))));
                        self.conds
                            .push(format!("st.patient_name_fuzzy LIKE {p} ESCAPE '!'"));
                    } else {
                        let p = self.p(Param::Text(format!("%{}%", like_escape(w))));
                        self.conds.push(format!("LOWER({c}) LIKE {p} ESCAPE '!'"));
                    }
                }
            }
        }
    }

    /// Restricts to the studies `scope` may see (`st` is the studies table).
    fn scope(&mut self, scope: &Scope) {
        match scope {
            Scope::All => {}
            Scope::Site(site) => {
                let p = self.p(Param::Text(site.clone()));
                self.conds.push(format!("st.site_id = {p}"));
            }
            Scope::Granted(user) => {
                let p = self.p(Param::Text(user.clone()));
                self.conds.push(format!(
                    "st.study_uid IN (SELECT g.study_uid FROM grants g WHERE g.username = {p})"
                ));
            }
            Scope::Nothing => self.conds.push("1 = 0".to_owned()),
        }
    }

    fn where_clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        }
    }

    fn bind(
        self,
        mut q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        for p in self.params {
            q = match p {
                Param::Text(s) => q.bind(s),
                Param::Int(i) => q.bind(i),
            };
        }
        q
    }
}

fn from_clause(level: Level) -> &'static str {
    match level {
        Level::Patient | Level::Study => " FROM studies st",
        Level::Series => " FROM series se JOIN studies st ON st.study_uid = se.study_uid",
        Level::Image => {
            " FROM instances i JOIN series se ON se.series_uid = i.series_uid JOIN studies st ON st.study_uid = i.study_uid"
        }
    }
}

fn build(q: &Query, scope: &Scope) -> Sql {
    let mut sql = Sql {
        conds: Vec::new(),
        params: Vec::new(),
    };
    for (a, m) in &q.keys {
        sql.add(a, m);
    }
    sql.scope(scope);
    sql
}

fn get_text(row: &AnyRow, idx: usize, kind: AttrKind) -> Option<String> {
    if kind == AttrKind::Integer {
        return row
            .try_get::<Option<i64>, _>(idx)
            .ok()
            .flatten()
            .map(|v| v.to_string());
    }
    row.try_get::<Option<String>, _>(idx).ok().flatten()
}

fn limit_clause(q: &Query, sql: &mut Sql) -> String {
    let limit = q.limit.unwrap_or(1_000_000).min(1_000_000) as i64;
    let l = sql.p(Param::Int(limit));
    let o = sql.p(Param::Int(q.offset.min(i64::MAX as u64) as i64));
    format!(" LIMIT {l} OFFSET {o}")
}

pub(crate) async fn find(db: &Db, q: &Query, scope: &Scope) -> Result<Vec<QueryRow>, StoreError> {
    if q.level == Level::Patient {
        return find_patients(db, q, scope).await;
    }
    // Every indexed attribute of this level and the levels above it.
    let cols: Vec<&Attr> = ATTRS.iter().filter(|a| a.level <= q.level).collect();
    let select: Vec<String> = cols.iter().map(|a| col(a)).collect();
    let order = match q.level {
        Level::Patient | Level::Study => {
            " ORDER BY st.study_date DESC, st.study_time DESC, st.study_uid"
        }
        Level::Series => " ORDER BY se.series_number, se.series_uid",
        Level::Image => " ORDER BY i.instance_number, i.sop_uid",
    };
    let mut sql = build(q, scope);
    let lim = limit_clause(q, &mut sql);
    let text = format!(
        "SELECT {}{}{}{}{}",
        select.join(", "),
        from_clause(q.level),
        sql.where_clause(),
        order,
        lim
    );
    let rows = sql
        .bind(sqlx::query(sqlx::AssertSqlSafe(text)))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut values = Vec::with_capacity(cols.len());
            for (idx, a) in cols.iter().enumerate() {
                if let Some(v) = get_text(row, idx, a.kind) {
                    let v = if a.kind == AttrKind::CodeSet {
                        v.trim_matches('/').replace('/', "\\")
                    } else {
                        v
                    };
                    values.push((a.tag, v));
                }
            }
            QueryRow { values }
        })
        .collect())
}

async fn find_patients(db: &Db, q: &Query, scope: &Scope) -> Result<Vec<QueryRow>, StoreError> {
    let cols: Vec<&Attr> = ATTRS.iter().filter(|a| a.level == Level::Patient).collect();
    let select: Vec<String> = cols.iter().map(|a| col(a)).collect();
    let mut sql = build(q, scope);
    let lim = limit_clause(q, &mut sql);
    let text = format!(
        "SELECT {}, COUNT(*){}{} GROUP BY {} ORDER BY st.patient_id{}",
        select.join(", "),
        from_clause(Level::Study),
        sql.where_clause(),
        select.join(", "),
        lim
    );
    let rows = sql
        .bind(sqlx::query(sqlx::AssertSqlSafe(text)))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut values = Vec::new();
            for (idx, a) in cols.iter().enumerate() {
                if let Some(v) = get_text(row, idx, a.kind) {
                    values.push((a.tag, v));
                }
            }
            if let Ok(n) = row.try_get::<i64, _>(cols.len()) {
                values.push((
                    meridian_core::attrs::NUMBER_OF_PATIENT_RELATED_STUDIES,
                    n.to_string(),
                ));
            }
            QueryRow { values }
        })
        .collect())
}

const INSTANCE_COLS: &str = "i.sop_uid, i.series_uid, i.study_uid, i.sop_class, i.transfer_syntax, i.object_key, i.size, i.frames";

fn instance_ref(row: &AnyRow) -> Result<InstanceRef, sqlx::Error> {
    Ok(InstanceRef {
        sop_uid: row.try_get(0)?,
        series_uid: row.try_get(1)?,
        study_uid: row.try_get(2)?,
        sop_class: row.try_get(3)?,
        transfer_syntax: row.try_get(4)?,
        key: row.try_get(5)?,
        size: row.try_get(6)?,
        frames: row.try_get::<Option<i64>, _>(7)?.unwrap_or(1),
    })
}

/// Whether a study exists within `scope` (the same scope condition as every read).
pub(crate) async fn sees_study(db: &Db, study: &str, scope: &Scope) -> Result<bool, StoreError> {
    let mut sql = Sql {
        conds: Vec::new(),
        params: Vec::new(),
    };
    let p = sql.p(Param::Text(study.to_owned()));
    sql.conds.push(format!("st.study_uid = {p}"));
    sql.scope(scope);
    let text = format!("SELECT st.study_uid FROM studies st{}", sql.where_clause());
    let row = sql
        .bind(sqlx::query(sqlx::AssertSqlSafe(text)))
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

pub(crate) async fn instances(
    db: &Db,
    study: Option<&str>,
    series: Option<&str>,
    sop: Option<&str>,
    scope: &Scope,
) -> Result<Vec<InstanceRef>, StoreError> {
    let mut sql = Sql {
        conds: Vec::new(),
        params: Vec::new(),
    };
    for (c, v) in [
        ("i.study_uid", study),
        ("i.series_uid", series),
        ("i.sop_uid", sop),
    ] {
        if let Some(v) = v {
            let p = sql.p(Param::Text(v.to_owned()));
            sql.conds.push(format!("{c} = {p}"));
        }
    }
    sql.scope(scope);
    let text = format!(
        "SELECT {INSTANCE_COLS} FROM instances i LEFT JOIN series se ON se.series_uid = i.series_uid LEFT JOIN studies st ON st.study_uid = i.study_uid{} ORDER BY se.series_number, i.series_uid, i.instance_number, i.sop_uid",
        sql.where_clause()
    );
    let rows = sql
        .bind(sqlx::query(sqlx::AssertSqlSafe(text)))
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(instance_ref)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

pub(crate) async fn instances_for_query(
    db: &Db,
    q: &Query,
    scope: &Scope,
) -> Result<Vec<InstanceRef>, StoreError> {
    let sql = build(q, scope);
    let text = format!(
        "SELECT {INSTANCE_COLS}{}{} ORDER BY se.series_number, i.series_uid, i.instance_number, i.sop_uid",
        from_clause(Level::Image),
        sql.where_clause()
    );
    let rows = sql
        .bind(sqlx::query(sqlx::AssertSqlSafe(text)))
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(instance_ref)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}
