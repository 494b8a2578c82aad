//! `meridian import`, `meridian send`, `meridian fsck`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use meridian_dicom::parse;
use meridian_dimse::StoreScu;
use meridian_store::StoreOutcome;
use meridian_store::ingest::{Ingest, Input};

use crate::config::{ServeArgs, Settings};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Files or directories (recursive).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The site (tenant) the studies belong to; created if missing.
    #[arg(long, default_value = "local")]
    pub site: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Destination, AET@HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Our calling AE title.
    #[arg(long, default_value = "MERIDIAN")]
    pub aet: String,
    /// Files or directories (recursive).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub cmd: AuditCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCmd {
    /// Walk the hash chain; name the first altered, missing or reordered record.
    Verify(FsckArgs),
    /// Print audit records as JSON lines, oldest first.
    List {
        /// Only records of this study.
        #[arg(long)]
        study: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

pub async fn audit(a: AuditArgs) -> Result<()> {
    match a.cmd {
        AuditCmd::Verify(f) => {
            let s = Settings::resolve(f.serve, false)?;
            let store = crate::open_store(&s).await?;
            let t = std::time::Instant::now();
            let r = store.verify_audit().await?;
            store.close().await;
            match r {
                Ok(n) => {
                    println!(
                        "audit trail intact: {n} records verified in {:.2?}",
                        t.elapsed()
                    );
                    Ok(())
                }
                Err(e) => bail!("audit trail BROKEN: {e}"),
            }
        }
        AuditCmd::List {
            study,
            limit,
            serve,
        } => {
            let s = Settings::resolve(serve, false)?;
            let store = crate::open_store(&s).await?;
            for r in store.audit_records(study.as_deref(), limit).await? {
                println!("{}", serde_json::to_string(&r)?);
            }
            store.close().await;
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct FsckArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Every regular file under the given paths, sorted.
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
        for e in walkdir::WalkDir::new(p).follow_links(false) {
            let e = e.with_context(|| format!("walking {}", p.display()))?;
            if e.file_type().is_file() {
                out.push(e.into_path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn bar(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

pub async fn import(a: ImportArgs) -> Result<()> {
    let s = Settings::resolve(a.serve, false)?;
    let store = crate::open_store(&s).await?;
    let ingest = Ingest::new(store.clone(), s.limits(), 4);
    if !store.site_exists(&a.site).await? {
        store.put_site(&a.site, &a.site).await?;
    }
    let site = a.site.clone();
    let files = collect(&a.paths)?;
    let pb = bar(files.len(), "import");
    let max = s.max_object as u64;
    let results: Vec<(PathBuf, Result<StoreOutcome, String>)> = futures::stream::iter(files)
        .map(|f| {
            let ingest = ingest.clone();
            let pb = pb.clone();
            let site = site.clone();
            async move {
                let r = async {
                    let len = tokio::fs::metadata(&f)
                        .await
                        .map_err(|e| e.to_string())?
                        .len();
                    if len > max {
                        return Err(format!("{len} bytes exceeds the object limit"));
                    }
                    let bytes = tokio::fs::read(&f).await.map_err(|e| e.to_string())?;
                    ingest
                        .ingest(
                            &site,
                            Input::Part10 {
                                bytes: Bytes::from(bytes),
                                expect_study: None,
                            },
                        )
                        .await
                        .map(|(_, o)| o)
                        .map_err(|e| e.to_string())
                }
                .await;
                pb.inc(1);
                (f, r)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    pb.finish_and_clear();
    let (mut stored, mut dup, mut failed) = (0, 0, 0);
    for (f, r) in &results {
        match r {
            Ok(StoreOutcome::Stored) | Ok(StoreOutcome::Replaced) => stored += 1,
            Ok(StoreOutcome::Duplicate) => dup += 1,
            Err(e) => {
                failed += 1;
                eprintln!("skipped {}: {e}", f.display());
            }
        }
    }
    println!(
        "imported {stored}, already present {dup}, refused {failed} (of {} files) into {}",
        results.len(),
        s.data_dir.display()
    );
    store.close().await;
    if failed > 0 && stored + dup == 0 {
        bail!("nothing imported");
    }
    Ok(())
}

struct SendFile {
    path: PathBuf,
    sop_class: String,
    sop_uid: String,
    ts: String,
}

pub async fn send(a: SendArgs) -> Result<()> {
    let peer: meridian_dimse::Peer = a.to.parse().map_err(anyhow::Error::msg)?;
    let files = collect(&a.paths)?;
    let mut items = Vec::new();
    let mut skipped = 0;
    for f in files {
        let head = read_head(&f).with_context(|| format!("reading {}", f.display()))?;
        match parse::split_part10(&head) {
            Ok(p) => match (p.sop_class_uid, p.sop_instance_uid) {
                (Some(c), Some(i)) if !c.is_empty() && !i.is_empty() => items.push(SendFile {
                    path: f,
                    sop_class: c,
                    sop_uid: i,
                    ts: p.transfer_syntax,
                }),
                _ => {
                    skipped += 1;
                    eprintln!(
                        "skipped {}: no SOP class/instance in the meta group",
                        f.display()
                    );
                }
            },
            Err(e) => {
                skipped += 1;
                eprintln!("skipped {}: {e}", f.display());
            }
        }
    }
    if items.is_empty() {
        bail!("no DICOM files to send");
    }
    // One presentation context per (SOP class, transfer syntax), at most 128 per association.
    let mut contexts: BTreeMap<(String, String), ()> = BTreeMap::new();
    for i in &items {
        contexts.insert((i.sop_class.clone(), i.ts.clone()), ());
    }
    let ctx_list: Vec<(String, Vec<String>)> = contexts
        .keys()
        .map(|(c, t)| (c.clone(), vec![t.clone()]))
        .collect();
    if ctx_list.len() > 128 {
        bail!("more than 128 distinct SOP class / transfer syntax pairs; send in smaller batches");
    }
    let addr = format!("{}:{}", peer.host, peer.port);
    let mut scu = StoreScu::connect(&addr, &peer.ae_title, &a.aet, &ctx_list, 65536)
        .await
        .with_context(|| format!("associating with {}", a.to))?;
    let pb = bar(items.len(), "send");
    let (mut ok, mut failed) = (0usize, 0usize);
    for it in &items {
        let Some(pc) = scu.context_for(&it.sop_class, &it.ts) else {
            failed += 1;
            pb.println(format!(
                "not sent {}: the peer refused {} in {}",
                it.path.display(),
                it.sop_class,
                it.ts
            ));
            pb.inc(1);
            continue;
        };
        let bytes = tokio::fs::read(&it.path).await?;
        let p = parse::split_part10(&bytes)?;
        let st = scu
            .store(
                pc,
                &it.sop_class,
                &it.sop_uid,
                &bytes[p.dataset_offset..],
                None,
            )
            .await?;
        if st.is_success() || st.is_warning() {
            ok += 1;
        } else {
            failed += 1;
            pb.println(format!(
                "failed {}: status 0x{:04X} {}",
                it.path.display(),
                st.status,
                st.comment
            ));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    scu.release().await.ok();
    println!("sent {ok}, failed {failed}, skipped {skipped}");
    if failed > 0 {
        bail!("{failed} instances were not stored by {}", a.to);
    }
    Ok(())
}

/// Reads the first 64 KiB of a file: enough for the meta group.
fn read_head(p: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if n == buf.len() {
            break;
        }
    }
    buf.truncate(n);
    Ok(buf)
}

pub async fn fsck(a: FsckArgs) -> Result<()> {
    let s = Settings::resolve(a.serve, false)?;
    let store = crate::open_store(&s).await?;
    let r = store.fsck().await?;
    println!(
        "checked {} indexed instances in {}",
        r.checked,
        s.data_dir.display()
    );
    for (sop, key) in &r.missing {
        println!("MISSING file for instance {sop} ({key})");
    }
    for (sop, key, want, got) in &r.wrong_size {
        println!("WRONG SIZE for instance {sop} ({key}): index says {want} bytes, file has {got}");
    }
    for key in &r.orphans {
        println!("stray file with no index row (harmless; left by an interrupted store): {key}");
    }
    store.close().await;
    if r.is_consistent() {
        println!("consistent: every indexed instance has its file");
        Ok(())
    } else {
        bail!(
            "{} missing and {} wrong-size files",
            r.missing.len(),
            r.wrong_size.len()
        )
    }
}
