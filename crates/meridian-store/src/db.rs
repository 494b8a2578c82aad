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

/// The settings of every connection to the SQLite index, the pool's and
/// the index writer's own.
pub(crate) const SQLITE_PRAGMAS: &[&str] = &[
    // WAL with FULL sync: a commit is durable when it returns.
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 10000",
    // DICOM matching is case-sensitive; make LIKE agree with PostgreSQL.
    "PRAGMA case_sensitive_like = ON",
    "PRAGMA cache_size = -65536",
    // No commit copies the WAL back into the database file (an automatic
    // checkpoint ran inside whichever commit crossed 1 000 pages: an ingest
    // group's or a request's audit record, tens of ms). `checkpoints` does
    // it in the background instead.
    "PRAGMA wal_autocheckpoint = 0",
];

/// The `sqlite:` URL of the index file `path` (created if missing). The
/// path is percent-encoded, as sqlx decodes it: a directory name with `?`,
/// `#` or `%` in it names that directory, not another file. A path that is
/// not UTF-8 is refused.
pub(crate) fn sqlite_url(path: &std::path::Path) -> Result<String, StoreError> {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const RESERVED: &AsciiSet = &CONTROLS.add(b'%').add(b'?').add(b'#');
    let p = path.to_str().ok_or_else(|| {
        StoreError::Config(format!(
            "the index path {} is not UTF-8: give --database-url",
            path.display()
        ))
    })?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        utf8_percent_encode(p, RESERVED)
    ))
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
                    for pragma in SQLITE_PRAGMAS {
                        conn.execute(*pragma).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        Ok(Db { pool, kind })
    }

    /// The file SQLite opened for the index, as SQLite names it (`None` on
    /// PostgreSQL or for an in-memory database).
    pub async fn sqlite_file(&self) -> Result<Option<std::path::PathBuf>, StoreError> {
        if self.kind != DbKind::Sqlite {
            return Ok(None);
        }
        let (file,): (String,) =
            sqlx::query_as("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&self.pool)
                .await?;
        Ok((!file.is_empty()).then(|| file.into()))
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
    use super::{Db, MIGRATIONS, sqlite_url};

    /// The index file of a data directory whose name holds URL syntax is
    /// that file, as SQLite opened it; an in-memory index has none.
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_file_of_a_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["plain", "a?b#c", "100%41", "é b"] {
            let file = dir.path().join(name).join("index.db");
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            let db = Db::connect(&sqlite_url(&file).expect("url"))
                .await
                .expect("connect");
            let opened = db.sqlite_file().await.expect("file").expect("a file");
            assert_eq!(
                opened.canonicalize().expect("opened"),
                file.canonicalize().expect("created"),
                "{name}"
            );
        }
        let memory = Db::connect("sqlite::memory:").await.expect("memory");
        assert_eq!(memory.sqlite_file().await.expect("file"), None);
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
