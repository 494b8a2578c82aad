//! Database connection (sqlx `Any`) and the embedded migration runner.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::StoreError;

/// Which database backs the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) struct Db {
    pub pool: AnyPool,
    pub kind: DbKind,
}

/// How often the WAL is checkpointed in the background (SQLite).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// WAL frames (4 KiB pages: 64 MiB) past which a checkpoint also starts the
/// WAL over.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// Migrations, in order. Each is portable SQL run in one transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_archive.sql")),
    (2, include_str!("../migrations/0002_audit.sql")),
    (3, include_str!("../migrations/0003_security.sql")),
    (4, include_str!("../migrations/0004_workflow.sql")),
    (5, include_str!("../migrations/0005_attachments.sql")),
    (6, include_str!("../migrations/0006_explain_key.sql")),
    (7, include_str!("../migrations/0007_study_order.sql")),
    (
        8,
        include_str!("../migrations/0008_drop_studies_updated.sql"),
    ),
];

/// The file of a `sqlite:` URL (`None` for another database or an
/// in-memory one).
pub(crate) fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

impl Db {
    pub async fn connect(url: &str) -> Result<Db, StoreError> {
        install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            DbKind::Postgres
        } else {
            return Err(StoreError::Config(
                "database URL must start with sqlite: or postgres:".into(),
            ));
        };
        let mut opts =
            AnyPoolOptions::new().max_connections(if kind == DbKind::Sqlite { 8 } else { 16 });
        if kind == DbKind::Sqlite {
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL with FULL sync: a commit is durable when it returns.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // DICOM matching is case-sensitive; make LIKE agree with PostgreSQL.
                    conn.execute("PRAGMA case_sensitive_like = ON").await?;
                    conn.execute("PRAGMA cache_size = -65536").await?;
                    // No commit copies the WAL back into the database file
                    // (an automatic checkpoint ran inside whichever commit
                    // crossed 1 000 pages: an ingest group's or a request's
                    // audit record, tens of ms). `checkpoints` does it in
                    // the background instead.
                    conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        Ok(Db { pool, kind })
    }

    /// Begins a transaction that will write: on SQLite it takes the write
    /// lock at once (`BEGIN IMMEDIATE`), so a read-then-write transaction
    /// never fails with SQLITE_BUSY_SNAPSHOT when several processes share
    /// the file.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.kind {
            DbKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DbKind::Postgres => self.pool.begin().await?,
        })
    }

    /// SQLite: copies committed WAL frames back into the database file every
    /// `CHECKPOINT_EVERY`, on a pool connection of its own and without
    /// blocking readers or the writer (PASSIVE), so that no commit pays for
    /// it. Runs as long as the pool is open.
    pub fn spawn_checkpoints(&self) {
        if self.kind != DbKind::Sqlite {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let passive: Result<(i64, i64, i64), _> =
                    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_one(&pool)
                        .await;
                // While commits keep coming, a passive checkpoint can go on
                // missing the last frames, and the WAL is only started over
                // once one has copied them all: under sustained ingest it
                // grew past 220 MB in 20 s. Past `WAL_RESTART_FRAMES` a
                // RESTART checkpoint copies what is left (little, after the
                // passive one) while holding writers back a moment, so the
                // next commit writes from the start of the WAL again.
                let restart = match passive {
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                        false
                    }
                    Ok((_, log, _)) => log > WAL_RESTART_FRAMES,
                };
                if restart {
                    match restart_wal(&pool).await {
                        Err(sqlx::Error::PoolClosed) => return,
                        Err(e) => {
                            tracing::info!(error = %e, "WAL restart checkpoint not done; will retry")
                        }
                        Ok(()) => {}
                    }
                }
            }
        });
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.pool
            .execute("CREATE TABLE IF NOT EXISTS meridian_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.begin_write().await?;
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM meridian_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                tx.rollback().await?;
                continue;
            }
            for stmt in split_statements(sql) {
                tx.execute(sqlx::AssertSqlSafe(stmt))
                    .await
                    .map_err(|e| StoreError::Migration(*version, e.to_string()))?;
            }
            sqlx::query("INSERT INTO meridian_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// A RESTART checkpoint on a connection that waits at most 100 ms for
/// readers: new writers wait while it is pending, so a long reader (an fsck,
/// an export) makes it give up quickly rather than hold ingest back.
async fn restart_wal(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let mut c = pool.acquire().await?;
    c.execute("PRAGMA busy_timeout = 100").await?;
    let done = c.execute("PRAGMA wal_checkpoint(RESTART)").await;
    if c.execute("PRAGMA busy_timeout = 10000").await.is_err() {
        // Never hand a connection with the short timeout back to the pool.
        drop(c.detach());
    }
    done.map(|_| ())
}

/// Splits a migration into statements (no semicolons inside literals in our SQL).
fn split_statements(sql: &str) -> Vec<String> {
    let no_comments: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    no_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{MIGRATIONS, sqlite_file};

    #[test]
    fn sqlite_file_of_a_url() {
        let f = |u: &str| sqlite_file(u).map(|p| p.display().to_string());
        assert_eq!(
            f("sqlite:///d/index.db?mode=rwc").as_deref(),
            Some("/d/index.db")
        );
        assert_eq!(
            f("sqlite://./data/index.db").as_deref(),
            Some("./data/index.db")
        );
        assert_eq!(f("sqlite:rel.db").as_deref(), Some("rel.db"));
        assert_eq!(f("sqlite::memory:"), None);
        assert_eq!(f("sqlite://"), None);
        assert_eq!(f("postgres://u@h/db"), None);
    }

    /// Every file in `migrations/` is in `MIGRATIONS`, numbered as named and
    /// in order: a file added to the folder but not to the list would never run.
    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
            .expect("migrations dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                let n: i64 = name[..4].parse().expect("NNNN_ prefix");
                (n, std::fs::read_to_string(&p).expect("read"))
            })
            .collect();
        files.sort();
        let listed: Vec<(i64, String)> = MIGRATIONS
            .iter()
            .map(|(n, sql)| (*n, (*sql).to_owned()))
            .collect();
        assert_eq!(listed, files);
    }
}
