//! The storage suite. Runs on SQLite by default and on PostgreSQL when
//! `MERIDIAN_DATABASE_URL=postgres://...` is set (CI runs both against a real
//! local server). Each test gets its own database.

use bytes::Bytes;
use meridian_core::Query;
use meridian_core::attrs::{Level, by_keyword};
use meridian_dicom::InstanceInfo;
use meridian_store::Scope;
use meridian_store::{DuplicatePolicy, Store, StoreConfig, StoreOutcome};

struct Env {
    store: Store,
    _dir: tempfile::TempDir,
    url: Option<String>,
}

async fn pg_url_for_test() -> Option<String> {
    let base = std::env::var("MERIDIAN_DATABASE_URL").ok()?;
    assert!(
        base.starts_with("postgres"),
        "MERIDIAN_DATABASE_URL must be a postgres:// URL"
    );
    // A fresh database per test, created through the base URL.
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    // Unique across runs too (pids repeat): process, counter and clock.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "meridian_t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        nanos % 1_000_000_000_000
    );
    let pool = sqlx::AnyPool::connect(&base)
        .await
        .expect("REQUIRED PEER: cannot connect to PostgreSQL at MERIDIAN_DATABASE_URL");
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create database");
    pool.close().await;
    let (head, tail) = match base.split_once('?') {
        Some((h, t)) => (h.to_owned(), format!("?{t}")),
        None => (base.clone(), String::new()),
    };
    let cut = head.rfind('/').expect("database URL has a path");
    Some(format!("{}/{}{}", &head[..cut], name, tail))
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn env_with(policy: DuplicatePolicy) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url_for_test().await;
    let cfg = StoreConfig {
        data_dir: dir.path().to_owned(),
        database_url: url.clone(),
        duplicate_policy: policy,
        fsync: true,
    };
    Env {
        store: Store::open(&cfg).await.unwrap(),
        _dir: dir,
        url,
    }
}

async fn env() -> Env {
    env_with(DuplicatePolicy::KeepFirst).await
}

fn info(study: &str, series: &str, sop: &str, extra: &[(u32, &str)]) -> InstanceInfo {
    let mut values = vec![
        (0x0010_0010, "DOE^JOHN".to_owned()),
        (0x0010_0020, "P1".to_owned()),
        (0x0008_0060, "CT".to_owned()),
        (0x0008_0020, "20240115".to_owned()),
    ];
    for (t, v) in extra {
        values.retain(|(x, _)| x != t);
        values.push((*t, (*v).to_owned()));
    }
    InstanceInfo {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        sop_instance_uid: sop.into(),
        study_uid: study.into(),
        series_uid: series.into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        values,
    }
}

fn q(level: Level, keys: &[(&str, &str)]) -> Query {
    let mut q = Query::new(level);
    for (k, v) in keys {
        q.add_key(by_keyword(k).unwrap(), v, false).unwrap();
    }
    q
}

#[tokio::test(flavor = "multi_thread")]
async fn store_and_find_at_every_level() {
    let e = env().await;
    let s = &e.store;
    for n in 0..3 {
        s.store(
            "site-a",
            info(
                "1.2.3",
                "1.2.3.1",
                &format!("1.2.3.1.{n}"),
                &[(0x0020_0013, &n.to_string())],
            ),
            Bytes::from(vec![n as u8; 100]),
        )
        .await
        .unwrap();
    }
    s.store(
        "site-a",
        info("1.2.3", "1.2.3.2", "1.2.3.2.1", &[(0x0008_0060, "SR")]),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    s.store(
        "site-a",
        info(
            "1.2.4",
            "1.2.4.1",
            "1.2.4.1.1",
            &[
                (0x0010_0010, "ROE^JANE"),
                (0x0010_0020, "P2"),
                (0x0008_0020, "20230610"),
                (0x0008_0060, "MR"),
            ],
        ),
        Bytes::from_static(b"y"),
    )
    .await
    .unwrap();

    let studies = s.find(&q(Level::Study, &[]), &Scope::All).await.unwrap();
    assert_eq!(studies.len(), 2);
    let st = studies
        .iter()
        .find(|r| r.get(0x0020_000D) == Some("1.2.3"))
        .unwrap();
    assert_eq!(st.get(0x0020_1208), Some("4"));
    assert_eq!(st.get(0x0020_1206), Some("2"));
    assert_eq!(st.get(0x0008_0061), Some("CT\\SR"));

    assert_eq!(
        s.find(&q(Level::Study, &[("PatientName", "DOE*")]), &Scope::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.find(&q(Level::Study, &[("PatientName", "doe*")]), &Scope::All)
            .await
            .unwrap()
            .len(),
        0,
        "matching is case-sensitive"
    );
    assert_eq!(
        s.find(&q(Level::Study, &[("PatientName", "?OE^JA*")]), &Scope::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.find(&q(Level::Study, &[("StudyDate", "20240101-")]), &Scope::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.find(&q(Level::Study, &[("StudyDate", "-20231231")]), &Scope::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.find(
            &q(Level::Study, &[("StudyDate", "20230101-20241231")]),
            &Scope::All
        )
        .await
        .unwrap()
        .len(),
        2
    );
    assert_eq!(
        s.find(
            &q(Level::Study, &[("ModalitiesInStudy", "SR")]),
            &Scope::All
        )
        .await
        .unwrap()
        .len(),
        1
    );
    assert_eq!(
        s.find(
            &q(Level::Study, &[("ModalitiesInStudy", "MR\\SR")]),
            &Scope::All
        )
        .await
        .unwrap()
        .len(),
        2
    );
    assert_eq!(
        s.find(
            &q(Level::Study, &[("StudyInstanceUID", "1.2.3\\1.2.4\\1.9")]),
            &Scope::All
        )
        .await
        .unwrap()
        .len(),
        2
    );
    assert_eq!(
        s.find(
            &q(Level::Series, &[("StudyInstanceUID", "1.2.3")]),
            &Scope::All
        )
        .await
        .unwrap()
        .len(),
        2
    );
    let series = s
        .find(&q(Level::Series, &[("Modality", "CT")]), &Scope::All)
        .await
        .unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].get(0x0020_1209), Some("3"));
    let imgs = s
        .find(
            &q(Level::Image, &[("SeriesInstanceUID", "1.2.3.1")]),
            &Scope::All,
        )
        .await
        .unwrap();
    assert_eq!(
        imgs.iter()
            .map(|r| r.get(0x0008_0018).unwrap())
            .collect::<Vec<_>>(),
        ["1.2.3.1.0", "1.2.3.1.1", "1.2.3.1.2"]
    );
    let patients = s
        .find(&q(Level::Patient, &[("PatientID", "P1")]), &Scope::All)
        .await
        .unwrap();
    assert_eq!(patients.len(), 1);
    assert_eq!(
        patients[0].get(meridian_core::attrs::NUMBER_OF_PATIENT_RELATED_STUDIES),
        Some("1")
    );

    // limit / offset
    let mut page = q(Level::Image, &[]);
    page.limit = Some(2);
    page.offset = 1;
    assert_eq!(s.find(&page, &Scope::All).await.unwrap().len(), 2);

    // fuzzy
    let mut fz = Query::new(Level::Study);
    fz.add_key(by_keyword("PatientName").unwrap(), "jan", true)
        .unwrap();
    assert_eq!(s.find(&fz, &Scope::All).await.unwrap().len(), 1);

    // retrieval lists
    assert_eq!(
        s.instances(Some("1.2.3"), None, None, &Scope::All)
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        s.instances(
            Some("1.2.3"),
            Some("1.2.3.1"),
            Some("1.2.3.1.1"),
            &Scope::All
        )
        .await
        .unwrap()
        .len(),
        1
    );
    let refs = s
        .instances(
            Some("1.2.3"),
            Some("1.2.3.1"),
            Some("1.2.3.1.1"),
            &Scope::All,
        )
        .await
        .unwrap();
    assert_eq!(
        s.read(&refs[0].key).await.unwrap(),
        Bytes::from(vec![1u8; 100])
    );
    let _ = &e.url;
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcard_metacharacters_are_literal_in_sql() {
    let e = env().await;
    e.store
        .store(
            "site-a",
            info("1.5", "1.5.1", "1.5.1.1", &[(0x0010_0010, "100%_SURE")]),
            Bytes::from_static(b"a"),
        )
        .await
        .unwrap();
    e.store
        .store(
            "site-a",
            info("1.6", "1.6.1", "1.6.1.1", &[(0x0010_0010, "100XYSURE")]),
            Bytes::from_static(b"a"),
        )
        .await
        .unwrap();
    assert_eq!(
        e.store
            .find(&q(Level::Study, &[("PatientName", "100%_*")]), &Scope::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        e.store
            .find(
                &q(Level::Study, &[("PatientName", "' OR 1=1 --")]),
                &Scope::All
            )
            .await
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_never_duplicate() {
    let e = env().await;
    let a = info("1.7", "1.7.1", "1.7.1.1", &[]);
    assert_eq!(
        e.store
            .store("site-a", a.clone(), Bytes::from_static(b"first"))
            .await
            .unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(
        e.store
            .store("site-a", a.clone(), Bytes::from_static(b"second"))
            .await
            .unwrap(),
        StoreOutcome::Duplicate
    );
    let refs = e
        .store
        .instances(None, None, Some("1.7.1.1"), &Scope::All)
        .await
        .unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(
        e.store.read(&refs[0].key).await.unwrap(),
        Bytes::from_static(b"first")
    );
    assert_eq!(e.store.counts().await.unwrap(), (1, 1, 1));
    // Concurrent re-sends of one new instance: exactly one row, one file.
    let b = info("1.8", "1.8.1", "1.8.1.1", &[]);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = e.store.clone();
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            s.store("site-a", b, Bytes::from(vec![i; 10]))
                .await
                .unwrap()
        }));
    }
    let outcomes: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == StoreOutcome::Stored)
            .count(),
        1
    );
    assert_eq!(e.store.counts().await.unwrap(), (2, 2, 2));
    let report = e.store.fsck().await.unwrap();
    assert!(report.is_consistent());
    assert!(
        report.orphans.is_empty(),
        "losing copies must be deleted: {:?}",
        report.orphans
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_policy_replaces() {
    let e = env_with(DuplicatePolicy::Replace).await;
    let a = info("1.9", "1.9.1", "1.9.1.1", &[]);
    e.store
        .store("site-a", a.clone(), Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(
        e.store
            .store("site-a", a, Bytes::from_static(b"second"))
            .await
            .unwrap(),
        StoreOutcome::Replaced
    );
    let refs = e
        .store
        .instances(None, None, Some("1.9.1.1"), &Scope::All)
        .await
        .unwrap();
    assert_eq!(
        e.store.read(&refs[0].key).await.unwrap(),
        Bytes::from_static(b"second")
    );
    assert_eq!(e.store.counts().await.unwrap(), (1, 1, 1));
    assert!(e.store.fsck().await.unwrap().orphans.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stable_event_fires_once_across_nodes_and_survives_restart() {
    let e = env().await;
    e.store
        .store(
            "site-a",
            info("2.1", "2.1.1", "2.1.1.1", &[]),
            Bytes::from_static(b"a"),
        )
        .await
        .unwrap();
    // A second "node" on the same database (and same data dir).
    let cfg = StoreConfig {
        data_dir: e._dir.path().to_owned(),
        database_url: e.url.clone(),
        duplicate_policy: DuplicatePolicy::KeepFirst,
        fsync: true,
    };
    let other = Store::open(&cfg).await.unwrap();
    let now = meridian_store::now_ms();
    // Not yet quiet long enough.
    assert!(e.store.sweep_stable(60_000, now).await.unwrap().is_empty());
    // Both nodes sweep concurrently later: exactly one fires.
    let later = now + 61_000;
    let (a, b) = tokio::join!(
        e.store.sweep_stable(60_000, later),
        other.sweep_stable(60_000, later)
    );
    assert_eq!(a.unwrap().len() + b.unwrap().len(), 1);
    assert!(
        e.store
            .sweep_stable(60_000, later + 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        e.store.study_stable_at("2.1").await.unwrap(),
        Some(Some(later))
    );
    let evs = e.store.events_since(0).await.unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].kind, "stable");
    // A new instance makes it unstable again; it fires again later.
    e.store
        .store(
            "site-a",
            info("2.1", "2.1.1", "2.1.1.2", &[]),
            Bytes::from_static(b"b"),
        )
        .await
        .unwrap();
    assert_eq!(e.store.study_stable_at("2.1").await.unwrap(), Some(None));
    let after = meridian_store::now_ms() + 61_000;
    assert_eq!(other.sweep_stable(60_000, after).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_missing_files() {
    let e = env().await;
    e.store
        .store(
            "site-a",
            info("3.1", "3.1.1", "3.1.1.1", &[]),
            Bytes::from_static(b"a"),
        )
        .await
        .unwrap();
    e.store
        .store(
            "site-a",
            info("3.1", "3.1.1", "3.1.1.2", &[]),
            Bytes::from_static(b"b"),
        )
        .await
        .unwrap();
    assert!(e.store.fsck().await.unwrap().is_consistent());
    let refs = e
        .store
        .instances(None, None, Some("3.1.1.2"), &Scope::All)
        .await
        .unwrap();
    std::fs::remove_file(e.store.blobs().local_path(&refs[0].key).unwrap()).unwrap();
    let r = e.store.fsck().await.unwrap();
    assert!(!r.is_consistent());
    assert_eq!(r.missing.len(), 1);
    assert_eq!(r.missing[0].0, "3.1.1.2");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_uids_never_become_keys() {
    let e = env().await;
    let bad = info("1.2.3", "1.2.3.1", "../../etc/passwd", &[]);
    assert!(
        e.store
            .store("site-a", bad, Bytes::from_static(b"x"))
            .await
            .is_err()
    );
    assert_eq!(e.store.counts().await.unwrap(), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_stores_group_commit() {
    let e = env().await;
    let mut tasks = Vec::new();
    for n in 0..400 {
        let s = e.store.clone();
        tasks.push(tokio::spawn(async move {
            s.store(
                "site-a",
                info(
                    "4.1",
                    &format!("4.1.{}", n % 4),
                    &format!("4.1.{}.{n}", n % 4),
                    &[],
                ),
                Bytes::from(vec![0u8; 64]),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StoreOutcome::Stored);
    }
    assert_eq!(e.store.counts().await.unwrap(), (1, 4, 400));
    let st = e
        .store
        .find(&q(Level::Study, &[]), &Scope::All)
        .await
        .unwrap();
    assert_eq!(st[0].get(0x0020_1208), Some("400"));
    assert_eq!(st[0].get(0x0020_1206), Some("4"));
}

/// One burst that lands in a few groups: two series of different
/// modalities, re-sends, another site trying to add to the study, a second
/// site's own study and a file that never became durable. Each instance gets
/// the outcome it would get alone, and the counters add up.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_groups_commit_like_single_stores() {
    let e = env().await;
    let s = &e.store;
    s.put_site("site-a", "Site A").await.unwrap();
    s.put_site("site-b", "Site B").await.unwrap();
    let mut tasks = Vec::new();
    let spawn = |site: &'static str, i: InstanceInfo, body: &'static [u8]| {
        let st = s.clone();
        tokio::spawn(async move { st.store(site, i, Bytes::from_static(body)).await })
    };
    for n in 0..20 {
        let i = info(
            "6.1",
            "6.1.1",
            &format!("6.1.1.{n}"),
            &[(0x0008_0060, "CT")],
        );
        tasks.push(("a-ct", spawn("site-a", i, b"ct")));
    }
    for n in 0..5 {
        let i = info(
            "6.1",
            "6.1.2",
            &format!("6.1.2.{n}"),
            &[(0x0008_0060, "SR")],
        );
        tasks.push(("a-sr", spawn("site-a", i, b"sr")));
    }
    for n in 0..10 {
        let i = info(
            "6.2",
            "6.2.1",
            &format!("6.2.1.{n}"),
            &[(0x0008_0060, "MR")],
        );
        tasks.push(("b-mr", spawn("site-b", i, b"mr")));
    }
    let mut outcomes: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (what, t) in tasks {
        let r = t.await.unwrap();
        outcomes.entry(what).or_default().push(format!("{r:?}"));
    }
    for (what, rs) in &outcomes {
        assert!(rs.iter().all(|r| r == "Ok(Stored)"), "{what}: {rs:?}");
    }
    // Second burst: re-sends (duplicates), site B reaching into A's study,
    // and new instances of A, all at once.
    let mut tasks = Vec::new();
    for n in 0..5 {
        let i = info(
            "6.1",
            "6.1.1",
            &format!("6.1.1.{n}"),
            &[(0x0008_0060, "CT")],
        );
        tasks.push(("dup", spawn("site-a", i, b"again")));
        let i = info(
            "6.1",
            "6.1.3",
            &format!("6.1.3.{n}"),
            &[(0x0008_0060, "CT")],
        );
        tasks.push(("intruder", spawn("site-b", i, b"x")));
        let i = info(
            "6.1",
            "6.1.1",
            &format!("6.1.1.{}", 100 + n),
            &[(0x0008_0060, "CT")],
        );
        tasks.push(("new", spawn("site-a", i, b"ct")));
    }
    // A file that fails while its row is staged: no row, neighbours unharmed.
    let st = s.clone();
    let failing = tokio::task::spawn_blocking(move || {
        let i = info("6.1", "6.1.1", "6.1.1.999", &[(0x0008_0060, "CT")]);
        let key = Store::new_key(&i).unwrap();
        let (pending, fate) = st.queue_blocking("site-a", i, key, 1).unwrap();
        fate.report(false);
        pending
    })
    .await
    .unwrap();
    assert!(failing.committed().await.outcome().await.is_err());
    for (what, t) in tasks {
        let r = t.await.unwrap();
        match what {
            "dup" => assert_eq!(r.unwrap(), StoreOutcome::Duplicate),
            "intruder" => assert!(
                matches!(r, Err(meridian_store::StoreError::OtherSite)),
                "{r:?}"
            ),
            _ => assert_eq!(r.unwrap(), StoreOutcome::Stored),
        }
    }
    assert!(!s.contains("6.1.1.999").await.unwrap());
    assert!(!s.contains("6.1.3.0").await.unwrap());
    // 2 studies; series 6.1.1, 6.1.2, 6.2.1; 25 + 5 + 10 instances.
    assert_eq!(s.counts().await.unwrap(), (2, 3, 40));
    let st = s
        .find(
            &q(
                Level::Study,
                &[("StudyInstanceUID", "6.1"), ("ModalitiesInStudy", "")],
            ),
            &Scope::All,
        )
        .await
        .unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].get(0x0020_1208), Some("30"));
    assert_eq!(st[0].get(0x0020_1206), Some("2"));
    let mods = st[0].get(0x0008_0061).unwrap_or_default();
    assert!(mods.contains("CT") && mods.contains("SR"), "{mods}");
    let b = s
        .find(&q(Level::Study, &[]), &Scope::Site("site-b".into()))
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].get(0x0020_1208), Some("10"));
    let report = s.fsck().await.unwrap();
    assert!(report.is_consistent());
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
}

/// Property: for random archives and random C-FIND/QIDO keys, the SQL
/// translation returns exactly the studies the pure matching semantics
/// (`meridian_core::Query::matches`) select, on SQLite and PostgreSQL alike.
#[tokio::test(flavor = "multi_thread")]
async fn sql_matching_agrees_with_pure_semantics() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let e = env().await;
    let mut rng = StdRng::seed_from_u64(0x4d45_5249_4449_414e);
    let names = [
        "DOE^JOHN",
        "DOE^JANE",
        "doe^john",
        "ROE^RICHARD",
        "O'NEIL^SEAN",
        "100%_SURE^X",
        "MÜLLER^FRANÇOIS",
        "DOE",
        "D_E^J%HN",
        "山田^太郎",
    ];
    let ids = ["P1", "P2", "p1", "P10", "X_1", "X%1"];
    let mods = ["CT", "MR", "SR", "US"];
    // 120 studies with one or two series each.
    let mut truth: Vec<Vec<(u32, String)>> = Vec::new();
    for n in 0..120 {
        let study = format!("9.{n}");
        let name = names[rng.random_range(0..names.len())];
        let pid = ids[rng.random_range(0..ids.len())];
        let date = format!(
            "{}{:02}{:02}",
            rng.random_range(2020..2025),
            rng.random_range(1..13),
            rng.random_range(1..29)
        );
        let acc = format!("A{}", rng.random_range(0..40));
        let nseries = rng.random_range(1..3);
        let mut ms: Vec<&str> = Vec::new();
        for s in 0..nseries {
            let m = mods[rng.random_range(0..mods.len())];
            let extra = [
                (0x0010_0010, name),
                (0x0010_0020, pid),
                (0x0008_0020, date.as_str()),
                (0x0008_0050, acc.as_str()),
                (0x0008_0060, m),
            ];
            e.store
                .store(
                    "site-a",
                    info(
                        &study,
                        &format!("{study}.{s}"),
                        &format!("{study}.{s}.1"),
                        &extra,
                    ),
                    Bytes::from_static(b"x"),
                )
                .await
                .unwrap();
            if !ms.contains(&m) {
                ms.push(m);
            }
        }
        truth.push(vec![
            (0x0020_000D, study.clone()),
            (0x0010_0010, name.to_owned()),
            (0x0010_0020, pid.to_owned()),
            (0x0008_0020, date),
            (0x0008_0050, acc),
            (0x0008_0061, ms.join("\\")),
        ]);
    }
    let pattern = |rng: &mut StdRng, s: &str| -> String {
        let mut out: String = s.chars().filter(|_| rng.random_range(0..4) != 0).collect();
        for _ in 0..rng.random_range(0..3) {
            let at = rng.random_range(0..=out.chars().count());
            let pos = out
                .char_indices()
                .nth(at)
                .map(|(i, _)| i)
                .unwrap_or(out.len());
            out.insert(pos, if rng.random_bool(0.5) { '*' } else { '?' });
        }
        out
    };
    let mut non_empty = 0;
    for round in 0..300 {
        let mut q = Query::new(Level::Study);
        let mut keys: Vec<(&str, String, bool)> = Vec::new();
        match round % 6 {
            0 => keys.push((
                "PatientName",
                {
                    let k = rng.random_range(0..names.len());
                    pattern(&mut rng, names[k])
                },
                false,
            )),
            1 => keys.push((
                "PatientID",
                if rng.random_bool(0.5) {
                    ids[rng.random_range(0..ids.len())].to_owned()
                } else {
                    {
                        let k = rng.random_range(0..ids.len());
                        pattern(&mut rng, ids[k])
                    }
                },
                false,
            )),
            2 => {
                let a = rng.random_range(2020..2025);
                let b = rng.random_range(a..2026);
                let r = match rng.random_range(0..3) {
                    0 => format!("{a}0101-{b}1231"),
                    1 => format!("-{b}0630"),
                    _ => format!("{a}0701-"),
                };
                keys.push(("StudyDate", r, false));
            }
            3 => {
                let m = if rng.random_bool(0.7) {
                    mods[rng.random_range(0..4)].to_owned()
                } else {
                    format!(
                        "{}\\{}",
                        mods[rng.random_range(0..4)],
                        mods[rng.random_range(0..4)]
                    )
                };
                keys.push(("ModalitiesInStudy", m, false));
            }
            4 => {
                keys.push((
                    "PatientName",
                    names[rng.random_range(0..names.len())]
                        .split('^')
                        .next()
                        .unwrap_or("")
                        .to_lowercase(),
                    true,
                ));
                keys.push((
                    "AccessionNumber",
                    format!("A{}*", rng.random_range(0..5)),
                    false,
                ));
            }
            _ => {
                keys.push((
                    "PatientName",
                    {
                        let k = rng.random_range(0..names.len());
                        pattern(&mut rng, names[k])
                    },
                    false,
                ));
                keys.push((
                    "PatientID",
                    {
                        let k = rng.random_range(0..ids.len());
                        pattern(&mut rng, ids[k])
                    },
                    false,
                ));
            }
        }
        for (k, v, fuzzy) in &keys {
            q.add_key(by_keyword(k).unwrap(), v, *fuzzy).unwrap();
        }
        let mut got: Vec<String> = e
            .store
            .find(&q, &Scope::All)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0x0020_000D).unwrap().to_owned())
            .collect();
        got.sort();
        let mut want: Vec<String> = truth
            .iter()
            .filter(|row| q.matches(|t| row.iter().find(|(x, _)| *x == t).map(|(_, v)| v.clone())))
            .map(|row| row[0].1.clone())
            .collect();
        want.sort();
        assert_eq!(got, want, "round {round}: keys {keys:?}");
        if !want.is_empty() && want.len() < truth.len() {
            non_empty += 1;
        }
    }
    // The random queries must discriminate, not match all or nothing.
    assert!(
        non_empty > 100,
        "only {non_empty} of 300 queries selected a proper subset"
    );
}

/// The audit trail is one linear hash chain even with concurrent appends
/// from two nodes, names the study's patient, and `verify` finds tampering.
#[tokio::test(flavor = "multi_thread")]
async fn audit_chain_is_linear_and_tamper_evident() {
    use meridian_audit::{AuditEvent, VerifyError};
    let e = env().await;
    e.store
        .store(
            "site-a",
            info(
                "7.1",
                "7.1.1",
                "7.1.1.1",
                &[(0x0010_0021, "HOSP-A"), (0x0008_0050, "ACC7")],
            ),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    let cfg = StoreConfig {
        data_dir: e._dir.path().to_owned(),
        database_url: e.url.clone(),
        duplicate_policy: DuplicatePolicy::KeepFirst,
        fsync: true,
    };
    let other = Store::open(&cfg).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..60 {
        let s = if n % 2 == 0 {
            e.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.audit(AuditEvent {
                at_ms: n,
                actor: format!("node{}", n % 2),
                action: "QIDO".into(),
                study_uid: Some("7.1".into()),
                source: "127.0.0.1".into(),
                outcome: "200".into(),
                ..Default::default()
            })
            .await
            .unwrap()
        }));
    }
    let mut seqs: Vec<i64> = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    assert_eq!(e.store.verify_audit().await.unwrap(), Ok(60));
    let recs = e.store.audit_records(Some("7.1"), 10).await.unwrap();
    assert_eq!(recs[0].event.patient_id.as_deref(), Some("P1"));
    assert_eq!(recs[0].event.issuer.as_deref(), Some("HOSP-A"));
    assert_eq!(recs[0].event.accession.as_deref(), Some("ACC7"));

    // Tamper through the database, as an attacker with SQL access would.
    use sqlx::Executor;
    let url = e
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", e._dir.path().join("index.db").display()));
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let original = e.store.audit_records(None, 100).await.unwrap()[16]
        .event
        .actor
        .clone();
    pool.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 17")
        .await
        .unwrap();
    assert_eq!(
        e.store.verify_audit().await.unwrap(),
        Err(VerifyError::Altered { seq: 17 })
    );
    sqlx::query("UPDATE audit_log SET actor = $1 WHERE seq = 17")
        .bind(original)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(e.store.verify_audit().await.unwrap(), Ok(60));
    pool.execute("DELETE FROM audit_log WHERE seq = 30")
        .await
        .unwrap();
    assert_eq!(
        e.store.verify_audit().await.unwrap(),
        Err(VerifyError::Gap {
            previous: 29,
            missing_from: 30,
            found: 31
        })
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_studies() {
    let e = env().await;
    let s = &e.store;
    s.put_site("site-a", "Site A").await.unwrap();
    s.put_site("site-b", "Site B").await.unwrap();
    s.store(
        "site-a",
        info("5.1", "5.1.1", "5.1.1.1", &[]),
        Bytes::from_static(b"a"),
    )
    .await
    .unwrap();
    s.store(
        "site-b",
        info("5.2", "5.2.1", "5.2.1.1", &[]),
        Bytes::from_static(b"b"),
    )
    .await
    .unwrap();
    // Another site may not add to a study it does not own; nothing is stored.
    let err = s
        .store(
            "site-b",
            info("5.1", "5.1.2", "5.1.2.1", &[]),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, meridian_store::StoreError::OtherSite),
        "{err}"
    );
    assert!(!s.contains("5.1.2.1").await.unwrap());
    let a = Scope::Site("site-a".into());
    let study = |uid: &str| q(Level::Study, &[("StudyInstanceUID", uid)]);
    assert_eq!(s.find(&q(Level::Study, &[]), &a).await.unwrap().len(), 1);
    assert_eq!(s.find(&study("5.2"), &a).await.unwrap().len(), 0);
    assert_eq!(s.find(&q(Level::Image, &[]), &a).await.unwrap().len(), 1);
    assert_eq!(s.find(&q(Level::Patient, &[]), &a).await.unwrap().len(), 1);
    assert!(
        s.instances(Some("5.2"), None, None, &a)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.instances(Some("5.1"), None, None, &a)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.instances_for_query(&study("5.2"), &a)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.find(&q(Level::Study, &[]), &Scope::All)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        s.find(&q(Level::Study, &[]), &Scope::Nothing)
            .await
            .unwrap()
            .is_empty()
    );
    // Grants.
    let g = Scope::Granted("rad".into());
    assert!(s.find(&q(Level::Study, &[]), &g).await.unwrap().is_empty());
    s.grant("rad", "5.2", "admin").await.unwrap();
    let rows = s.find(&q(Level::Study, &[]), &g).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get(0x0020_000D), Some("5.2"));
    assert_eq!(
        s.instances(None, None, Some("5.2.1.1"), &g)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.revoke_grant("rad", "5.2").await.unwrap());
    assert!(
        s.instances(None, None, Some("5.2.1.1"), &g)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.study_site("5.1").await.unwrap(),
        Some(Some("site-a".into()))
    );
    assert_eq!(s.study_site("9.9").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_tokens_sessions_and_lockout() {
    use meridian_auth::Role;
    let e = env().await;
    let s = &e.store;
    s.put_site("site-a", "Site A").await.unwrap();
    s.put_site_ae("CT01", "site-a", Some("10.0.0.5"))
        .await
        .unwrap();
    assert!(s.put_site_ae("CT02", "nowhere", None).await.is_err());
    assert_eq!(
        s.sites().await.unwrap()[0].ae_titles,
        vec!["CT01".to_owned()]
    );
    s.add_user(
        "alice",
        Role::Site,
        Some("site-a"),
        Some("$argon2id$x"),
        None,
    )
    .await
    .unwrap();
    assert!(
        s.add_user("alice", Role::Admin, None, None, None)
            .await
            .is_err()
    );
    assert!(
        s.add_user("bad name", Role::Admin, None, None, None)
            .await
            .is_err()
    );
    let u = s.user("alice").await.unwrap().unwrap();
    assert_eq!(u.role, "site");
    assert_eq!(u.site_id.as_deref(), Some("site-a"));
    // Lockout after 3 failures.
    assert_eq!(s.login_failed("alice", 3, 60_000).await.unwrap(), 0);
    assert_eq!(s.login_failed("alice", 3, 60_000).await.unwrap(), 0);
    assert!(s.login_failed("alice", 3, 60_000).await.unwrap() > meridian_store::now_ms());
    s.login_succeeded("alice").await.unwrap();
    assert_eq!(s.user("alice").await.unwrap().unwrap().locked_until, 0);
    // TOTP steps cannot be replayed.
    s.set_totp_secret("alice", Some("JBSWY3DPEHPK3PXP"))
        .await
        .unwrap();
    assert!(s.use_totp_step("alice", 100).await.unwrap());
    assert!(!s.use_totp_step("alice", 100).await.unwrap());
    assert!(s.use_totp_step("alice", 101).await.unwrap());
    // Sessions end on disable.
    s.create_session("h1", "alice", "c1", meridian_store::now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(s.session("h1").await.unwrap().unwrap().username, "alice");
    s.create_session("h0", "alice", "c0", meridian_store::now_ms() - 1)
        .await
        .unwrap();
    assert!(s.session("h0").await.unwrap().is_none(), "expired");
    assert!(s.set_user_disabled("alice", true).await.unwrap());
    assert!(s.session("h1").await.unwrap().is_none());
    // Tokens.
    s.create_token(
        "abc",
        "hash",
        "gw",
        Role::Service,
        Some("site-a"),
        "admin",
        i64::MAX,
    )
    .await
    .unwrap();
    let t = s.token("abc").await.unwrap().unwrap();
    assert_eq!((t.role.as_str(), t.revoked_at), ("service", None));
    assert!(s.revoke_token("abc").await.unwrap());
    assert!(!s.revoke_token("abc").await.unwrap());
    assert!(s.token("abc").await.unwrap().unwrap().revoked_at.is_some());
    // OIDC users cannot take over a local account.
    assert!(
        s.upsert_oidc_user("alice", "sub-1", Role::Admin, None)
            .await
            .is_err()
    );
    let o = s
        .upsert_oidc_user("olga", "sub-2", Role::Radiologist, None)
        .await
        .unwrap();
    assert_eq!(o.role, "radiologist");
    let o = s
        .upsert_oidc_user("olga", "sub-2", Role::Auditor, None)
        .await
        .unwrap();
    assert_eq!(o.role, "auditor");
}

#[tokio::test]
async fn workflow_profiles_orders_and_cases() {
    use meridian_auth::Role;
    use meridian_store::workflow::{CaseEvent, OrderRow};
    use meridian_workflow::model::{Case, Lock, Priority, Reader, Site, State};
    let e = env().await;
    let s = &e.store;

    // Site profiles: created with their site, read back whole.
    let site: Site = serde_json::from_value(serde_json::json!({
        "id": "site-a", "jurisdiction": "US-TX", "time_zone": "America/Chicago",
        "hl7_facilities": ["RIS_A"], "contract": {"mode": "pull"},
        "triage": [{"name": "stroke", "keywords": ["stroke"], "priority": "stat"}]
    }))
    .unwrap();
    s.put_site_profile(&site).await.unwrap();
    assert_eq!(s.site_profile("site-a").await.unwrap(), Some(site.clone()));
    assert_eq!(s.site_profiles().await.unwrap(), vec![site.clone()]);
    assert!(
        s.sites()
            .await
            .unwrap()
            .iter()
            .any(|x| x.site_id == "site-a")
    );
    assert_eq!(s.site_profile("nowhere").await.unwrap(), None);

    // Readers must be radiologist users.
    let reader: Reader = serde_json::from_value(serde_json::json!({
        "id": "dr.a", "licences": [{"jurisdiction": "US-TX", "expires": "2030-01-01"}],
        "credentials": [{"site": "site-a", "scope": "final", "expires": "2030-01-01"}],
        "modalities": ["CT"]
    }))
    .unwrap();
    assert!(s.put_reader(&reader).await.is_err(), "no such user yet");
    s.add_user("dr.a", Role::Site, Some("site-a"), None, None)
        .await
        .unwrap();
    assert!(s.put_reader(&reader).await.is_err(), "not a radiologist");
    s.add_user("dr.b", Role::Radiologist, None, None, None)
        .await
        .unwrap();
    let mut rb = reader.clone();
    rb.id = "dr.b".into();
    s.put_reader(&rb).await.unwrap();
    assert_eq!(s.reader("dr.b").await.unwrap(), Some(rb.clone()));
    assert!(s.touch_reader("dr.b", 1234).await.unwrap());
    assert!(!s.touch_reader("dr.nobody", 1234).await.unwrap());
    assert_eq!(s.readers().await.unwrap(), vec![(rb.clone(), 1234)]);

    // Orders: a re-sent order (same placer number) updates, never duplicates.
    let o = OrderRow {
        site_id: "site-a".into(),
        accession: "ACC1".into(),
        placer: "PL1".into(),
        patient_id: "12345".into(),
        issuer: "HOSP_A".into(),
        priority: "routine".into(),
        modality: "CT".into(),
        ordered_at: 1_000,
        source: "hl7".into(),
        ..OrderRow::default()
    };
    let (first, created) = s.save_order(&o).await.unwrap();
    assert!(created && first.status == "active");
    let mut again = o.clone();
    again.priority = "stat".into();
    let (second, created) = s.save_order(&again).await.unwrap();
    assert!(!created && second.order_id == first.order_id);
    let got = s.order(&first.order_id).await.unwrap().unwrap();
    assert_eq!(got.priority, "stat");
    assert_eq!(
        s.find_order("site-a", "", "ACC1")
            .await
            .unwrap()
            .unwrap()
            .order_id,
        first.order_id
    );
    assert!(
        s.find_order("site-b", "PL1", "ACC1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.orders(Some("site-a"), "active", 10).await.unwrap().len(),
        1
    );
    assert_eq!(s.orders(None, "active", 10).await.unwrap().len(), 1);
    assert_eq!(
        s.orders(Some("site-b"), "active", 10).await.unwrap().len(),
        0
    );
    assert_eq!(
        s.patient_orders("site-a", "12345", "HOSP_A")
            .await
            .unwrap()
            .len(),
        1
    );
    // Same ID, other issuer: another patient.
    assert!(
        s.patient_orders("site-a", "12345", "HOSP_B")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.update_patient("site-a", "12345", "HOSP_B", "X^Y", "", "")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.update_patient("site-a", "12345", "HOSP_A", "DOE^JANE", "19700101", "F")
            .await
            .unwrap(),
        1
    );
    assert!(
        s.set_order_status(&first.order_id, "matched", None)
            .await
            .unwrap()
    );
    assert!(
        s.set_order_status(&first.order_id, "matched", Some("1.2.3"))
            .await
            .unwrap()
    );
    let got = s.order(&first.order_id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.status.as_str(),
            got.study_uid.as_deref(),
            got.patient_name.as_str()
        ),
        ("matched", Some("1.2.3"), "DOE^JANE")
    );

    // Cases: inserted once, changed only at the version read.
    let mut c = Case {
        study_uid: "1.2.3".into(),
        site: "site-a".into(),
        state: State::Ready,
        priority: Priority::Stat,
        protocol: Some("stroke".into()),
        subspecialty: None,
        modality: "CT".into(),
        patient_key: "site-a|HOSP_A|12345".into(),
        rvu: 1.5,
        base_at: 10,
        deadline: 1_800_010,
        reading_ms: 900_000,
        assigned_to: None,
        assigned_at: None,
        opened_at: None,
        lock: None,
        released_by: vec![],
    };
    let evs = vec![
        CaseEvent::new(&c, 5, "stable", "archive", String::new()),
        CaseEvent::new(&c, 5, "matched", "workflow", "by accession".into()),
    ];
    assert!(
        s.insert_case(&c, Some(&first.order_id), None, &evs)
            .await
            .unwrap()
    );
    assert!(!s.insert_case(&c, None, None, &evs).await.unwrap());
    let stored = s.case("1.2.3").await.unwrap().unwrap();
    assert_eq!(stored.case, c);
    assert_eq!(stored.version, 0);
    assert_eq!(s.ready_at("site-a", &[], 10).await.unwrap().len(), 1);
    assert_eq!(
        s.ready_at("site-a", &["MR".into(), "CT".into()], 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.ready_at("site-a", &["MR".into()], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.routing_cases().await.unwrap().len(), 1);
    assert_eq!(s.routing_cases().await.unwrap()[0].explanation, None);

    c.state = State::Opened;
    c.assigned_to = Some("dr.b".into());
    c.lock = Some(Lock {
        reader: "dr.b".into(),
        expires: 99,
    });
    c.released_by = vec!["dr.x".into(), "dr.y".into()];
    let expl = serde_json::json!({"summary": "dr.b claimed it"});
    let ev = CaseEvent::new(&c, 6, "claimed", "dr.b", String::new());
    assert!(
        s.update_case(
            &c,
            Some(&first.order_id),
            Some(&expl),
            &["at-risk".into()],
            0,
            std::slice::from_ref(&ev)
        )
        .await
        .unwrap()
    );
    // A second writer that read version 0 loses, and writes nothing.
    let mut other = c.clone();
    other.assigned_to = Some("dr.z".into());
    assert!(
        !s.update_case(&other, None, None, &[], 0, &[ev])
            .await
            .unwrap()
    );
    let stored = s.case("1.2.3").await.unwrap().unwrap();
    assert_eq!(stored.case, c);
    assert_eq!(
        (
            stored.version,
            stored.flags.clone(),
            stored.explanation.clone()
        ),
        (1, vec!["at-risk".to_owned()], Some(expl.clone()))
    );
    assert_eq!(
        stored.explain_key,
        Some(meridian_store::workflow::explain_key(&expl))
    );
    // An update without an explanation keeps the stored one.
    assert!(
        s.update_case(&c, Some(&first.order_id), None, &["at-risk".into()], 1, &[])
            .await
            .unwrap()
    );
    assert_eq!(
        s.case("1.2.3").await.unwrap().unwrap().explanation,
        Some(expl)
    );
    assert_eq!(s.assigned_to("dr.b").await.unwrap().len(), 1);
    assert!(s.ready_at("site-a", &[], 10).await.unwrap().is_empty());
    assert_eq!(
        s.cases_in(&[State::Opened], Some("site-a"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.cases_in(&[State::Opened], Some("site-b"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Events: in order, per study or all since an instant.
    let kinds: Vec<String> = s
        .case_events(0, "1.2.3", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["stable", "matched", "claimed"]);
    assert_eq!(s.case_events(6, "", 100).await.unwrap().len(), 1);

    // A stable study without a case is found (restart, missed event), with its facts.
    s.store(
        "site-a",
        info("2.9", "2.9.1", "2.9.1.1", &[(0x0008_0050, "ACC9")]),
        Bytes::from_static(b"a"),
    )
    .await
    .unwrap();
    // A study of a site without a workflow profile never gets a case, and
    // is not offered again and again (it would fill the page).
    s.store(
        "no-profile-site",
        info("2.8", "2.8.1", "2.8.1.1", &[]),
        Bytes::from_static(b"a"),
    )
    .await
    .unwrap();
    assert!(s.stable_without_case(10).await.unwrap().is_empty());
    let fired = s
        .sweep_stable(0, meridian_store::now_ms() + 1)
        .await
        .unwrap();
    let mut uids: Vec<&str> = fired.iter().map(|e| e.study_uid.as_str()).collect();
    uids.sort();
    assert_eq!(uids, ["2.8", "2.9"], "one sweep claims both, in one commit");
    assert_eq!(
        s.stable_without_case(10).await.unwrap(),
        vec!["2.9".to_owned()]
    );
    let f = s.study_facts("2.9").await.unwrap().unwrap();
    assert_eq!(
        (
            f.site_id.as_deref(),
            f.accession.as_str(),
            f.patient_id.as_str(),
            f.modalities.clone()
        ),
        (Some("site-a"), "ACC9", "P1", vec!["CT".to_owned()])
    );
    assert!(f.stable_at.is_some());

    // Study visibility goes through the same scope condition as every read.
    use meridian_store::Scope;
    assert!(s.sees_study("2.9", &Scope::All).await.unwrap());
    assert!(
        s.sees_study("2.9", &Scope::Site("site-a".into()))
            .await
            .unwrap()
    );
    assert!(
        !s.sees_study("2.9", &Scope::Site("site-b".into()))
            .await
            .unwrap()
    );
    assert!(
        !s.sees_study("2.9", &Scope::Granted("dr.b".into()))
            .await
            .unwrap()
    );
    s.grant("dr.b", "2.9", "test").await.unwrap();
    assert!(
        s.sees_study("2.9", &Scope::Granted("dr.b".into()))
            .await
            .unwrap()
    );
    assert!(!s.sees_study("2.9", &Scope::Nothing).await.unwrap());
    assert!(!s.sees_study("9.9.9", &Scope::All).await.unwrap());
}
