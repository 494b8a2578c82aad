//! `meridian`: the thin binary over Meridian's crates.

mod admin_cli;
mod config;
mod demo;
mod tls;
mod tools;
mod workflow;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use meridian_dimse::{AeRegistry, Scp, ScpConfig};
use meridian_store::ingest::Ingest;
use meridian_store::{Store, StoreConfig};
use meridian_web::{AppState, WebConfig};

use crate::config::{ServeArgs, Settings};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian: open teleradiology platform (archive, DICOMweb, DIMSE)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: DIMSE SCP, DICOMweb, /healthz, /metrics.
    Serve(ServeArgs),
    /// Run the server on embedded storage with generated (synthetic) demo studies.
    Demo(ServeArgs),
    /// Import DICOM files or directories (recursive) into a data directory.
    Import(tools::ImportArgs),
    /// Send DICOM files or directories to a storage SCP (C-STORE SCU).
    Send(tools::SendArgs),
    /// Check that every indexed instance has its file, and report stray files.
    Fsck(tools::FsckArgs),
    /// The tamper-evident audit trail: `verify` walks the hash chain, `list` prints records.
    Audit(tools::AuditArgs),
    /// Users: add, list, disable, enable, password, reset-totp.
    User(admin_cli::UserArgs),
    /// API tokens for machines: create (shown once), list, revoke.
    Token(admin_cli::TokenArgs),
    /// Sites (tenants) and the calling AE titles registered to them.
    Site(admin_cli::SiteArgs),
    /// Grant a user (radiologist) access to a study, or revoke it.
    Grant(admin_cli::GrantArgs),
    /// Group administration: `import FILE` onboards sites and readers in bulk.
    Admin(workflow::AdminArgs),
}

fn main() -> Result<()> {
    // dicom-rs builds its errors with snafu, which captures a backtrace for each
    // one when RUST_BACKTRACE is set, and reading any data set from memory ends
    // on such an error (end of data): ~0.1 ms per message on the ingest path.
    // Library backtraces stay off unless asked for by name; panics keep theirs.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first statement of main, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process (ring); two would make TLS start-up panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(Settings::resolve(a, false)?, false).await,
            Cmd::Demo(a) => serve(Settings::resolve(a, true)?, true).await,
            Cmd::Import(a) => tools::import(a).await,
            Cmd::Send(a) => tools::send(a).await,
            Cmd::Fsck(a) => tools::fsck(a).await,
            Cmd::Audit(a) => tools::audit(a).await,
            Cmd::User(a) => admin_cli::user(a).await,
            Cmd::Token(a) => admin_cli::token(a).await,
            Cmd::Site(a) => admin_cli::site(a).await,
            Cmd::Grant(a) => admin_cli::grant(a).await,
            Cmd::Admin(a) => workflow::admin(a).await,
        }
    })
}

pub(crate) async fn open_store(s: &Settings) -> Result<Store> {
    let cfg = StoreConfig {
        data_dir: s.data_dir.clone(),
        database_url: s.database_url.clone(),
        duplicate_policy: s.duplicate_policy,
        fsync: true,
    };
    Store::open(&cfg)
        .await
        .with_context(|| format!("opening the archive in {}", s.data_dir.display()))
}

async fn serve(s: Settings, demo: bool) -> Result<()> {
    if meridian_web::UNGUARDED {
        unguarded_preflight(&s).await?;
    }
    let store = open_store(&s).await?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        * 2;
    let ingest = Ingest::new(store.clone(), s.limits(), workers);
    if s.quarantine_unknown_ae {
        store
            .put_site(
                meridian_dimse::QUARANTINE_SITE,
                "Quarantine (unregistered AE titles)",
            )
            .await?;
    }
    let registry = AeRegistry::new(s.quarantine_unknown_ae);
    registry.load(store.site_aes().await?);

    let scp = Scp::new(
        ScpConfig {
            ae_title: s.ae_title.clone(),
            max_pdu: s.max_pdu,
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
            max_associations: s.max_associations,
            peers: s.peers.clone(),
        },
        ingest.clone(),
        registry.clone(),
    );
    // HTTPS asks for a client certificate and verifies one when offered;
    // DICOM TLS requires one when --tls-client-ca is set (mutual TLS for gateways).
    let https_tls = match &s.tls {
        Some(f) => Some(tls::server_config(
            f,
            tls::ClientCert::Optional,
            &[b"http/1.1"],
        )?),
        None => None,
    };
    let dicom_tls_cfg = match (&s.tls, &s.dicom_tls) {
        (Some(f), Some(_)) => Some(tls::server_config(f, tls::ClientCert::Required, &[])?),
        _ => None,
    };
    let dicom = tokio::net::TcpListener::bind(&s.dicom)
        .await
        .with_context(|| format!("binding DICOM port {}", s.dicom))?;
    let dicom_tls = match (&s.dicom_tls, dicom_tls_cfg) {
        (Some(addr), Some(cfg)) => Some((
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding DICOM TLS port {addr}"))?,
            cfg,
        )),
        _ => None,
    };
    let http = tokio::net::TcpListener::bind(&s.http)
        .await
        .with_context(|| format!("binding HTTP port {}", s.http))?;
    let dicom_addr = dicom.local_addr()?;
    let dicom_tls_addr = dicom_tls
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()?;
    let http_addr = http.local_addr()?;
    if meridian_web::UNGUARDED {
        let bound = [Some(dicom_addr), dicom_tls_addr, Some(http_addr)];
        if let Some(a) = bound.into_iter().flatten().find(|a| !a.ip().is_loopback()) {
            bail!("this benchmark build (feature bench-unguarded) refuses to listen on {a}");
        }
    }
    let scheme = if https_tls.is_some() { "https" } else { "http" };

    let mut state = AppState::new(
        store.clone(),
        ingest.clone(),
        WebConfig {
            max_request: s.max_request,
            viewer_dir: s.viewer_dir.clone(),
            http_port: http_addr.port(),
            secure_cookies: s.tls.is_some(),
            session_ttl_ms: (s.session_hours * 3_600_000) as i64,
            request_timeout: Duration::from_secs(s.request_timeout_secs),
        },
    );
    if let Some(o) = &s.oidc {
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        let base = s
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{http_addr}"));
        let roles = o
            .roles
            .iter()
            .map(|(g, r)| {
                Ok((
                    g.clone(),
                    r.parse::<meridian_auth::Role>()
                        .map_err(anyhow::Error::msg)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let cfg = meridian_oidc::OidcConfig::new(
            o.issuer.clone(),
            o.client_id.clone(),
            o.client_secret.as_ref().map(|s| s.0.clone()),
            format!("{base}/auth/oidc/callback"),
        );
        state.oidc = Some(Arc::new(meridian_web::oidc::Oidc::new(
            cfg,
            o.role_claim.clone(),
            o.site_claim.clone(),
            roles,
        )));
        tracing::info!(issuer = %o.issuer, "single sign-on enabled");
    }
    if let Some(addr) = &s.audit_syslog {
        let ca = s
            .audit_syslog_ca
            .as_ref()
            .context("--audit-syslog needs --audit-syslog-ca (the repository's CA)")?;
        let tls = meridian_auditsink::SyslogTls::new(addr, ca)
            .with_context(|| format!("audit repository {addr}"))?;
        let sink = meridian_auditsink::spawn(meridian_auditsink::SinkConfig::new(tls));
        tokio::spawn(forward_audit(store.clone(), sink));
        tracing::info!(repository = %addr, "DICOM audit messages forwarded over syslog TLS");
    }
    // AE registrations: reloaded when the admin API changes them, and every
    // 10 s for changes made by other nodes or the CLI.
    {
        let (store, registry, changed) =
            (store.clone(), registry.clone(), state.ae_changed.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                match store.site_aes().await {
                    Ok(v) => registry.load(v),
                    Err(e) => tracing::warn!(error = %e, "reloading AE titles failed"),
                }
            }
        });
    }
    let hl7_addr = match &s.hl7 {
        Some(a) => Some(workflow::start_hl7(a, state.dispatch.clone(), demo).await?),
        None => None,
    };
    tokio::spawn(state.dispatch.clone().run());
    let app = meridian_web::router(state);

    tracing::info!(ae = %s.ae_title, %dicom_addr, ?dicom_tls_addr, ?hl7_addr, %http_addr, https = https_tls.is_some(), data_dir = %s.data_dir.display(), db = ?store.db_kind(), "meridian listening");
    let dimse_tls_task = match dicom_tls {
        Some((listener, cfg)) => tokio::spawn(scp.clone().serve_tls(listener, cfg)),
        None => tokio::spawn(std::future::pending::<std::io::Result<()>>()),
    };
    let dimse_task = tokio::spawn(scp.serve(dicom));
    let sweeper = tokio::spawn(stable_sweeper(store.clone(), s.stable_after_secs));
    let mut events = store.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            tracing::info!(study = %ev.study_uid, kind = %ev.kind, "study event");
        }
    });

    if demo {
        let logins = demo::accounts(&store).await?;
        registry.load(store.site_aes().await?);
        demo::banner(&s, http_addr, dicom_addr, dicom_tls_addr, hl7_addr, &logins);
        let ing = ingest.clone();
        tokio::spawn(async move {
            if let Err(e) = demo::load(&ing).await {
                tracing::error!(error = %e, "loading demo studies failed");
            }
        });
    } else {
        let tls_line = dicom_tls_addr
            .map(|a| format!("  DICOM TLS {}@{a}", s.ae_title))
            .unwrap_or_default();
        println!(
            "Meridian is running: DICOMweb {scheme}://{http_addr}/dicom-web  DICOM {}@{dicom_addr}{tls_line}",
            s.ae_title
        );
        if store.count_users().await? == 0 {
            let dd = s.data_dir.display();
            println!(
                "No users yet. Create the first administrator (the password is read from stdin):"
            );
            println!("  meridian user add admin --role admin --data-dir {dd}");
            println!("and register each sending site's AE titles, e.g.:");
            println!(
                "  meridian site add hospital-a --name \"Hospital A\" --ae CT_SCANNER_01 --data-dir {dd}"
            );
        }
    }

    // Handlers read the client address (audit, login throttling) from ConnectInfo<SocketAddr>.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
        match https_tls {
            Some(cfg) => {
                use axum::serve::ListenerExt;
                // No plain HTTP on a TLS port. `tap_io` (a no-op here) is how axum
                // gives a custom listener's SocketAddr to ConnectInfo.
                let listener = tls::HttpsListener::new(http, cfg)?.tap_io(|_| {});
                Box::pin(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown_signal())
                        .into_future(),
                )
            }
            None => {
                use axum::serve::ListenerExt;
                // Nagle off: a multipart response's last small write would otherwise wait
                // for the client's delayed ACK (~40 ms per WADO-RS retrieve).
                let listener = http.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY");
                    }
                });
                Box::pin(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown_signal())
                        .into_future(),
                )
            }
        };
    tokio::select! {
        r = server => r.context("HTTP server")?,
        r = dimse_task => { r.context("DIMSE task")?.context("DIMSE listener")?; }
        r = dimse_tls_task => { r.context("DICOM TLS task")?.context("DICOM TLS listener")?; }
    }
    sweeper.abort();
    store.close().await;
    tracing::info!("meridian stopped");
    Ok(())
}

/// Benchmark builds (feature `bench-unguarded`, no authorisation and no audit on the
/// HTTP side): a loud warning, and loopback listen addresses only.
async fn unguarded_preflight(s: &Settings) -> Result<()> {
    let banner = "WARNING: BENCHMARK BUILD (feature bench-unguarded): every HTTP request is \
        admitted as an administrator, without authentication, authorisation or audit records. \
        Never deploy this binary; it listens on loopback addresses only.";
    eprintln!("\n{}\n{banner}\n{}\n", "!".repeat(80), "!".repeat(80));
    tracing::warn!("{banner}");
    let addrs = [Some(&s.http), Some(&s.dicom), s.dicom_tls.as_ref()];
    for addr in addrs.into_iter().flatten() {
        let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr.as_str())
            .await
            .with_context(|| format!("resolving listen address {addr}"))?
            .collect();
        if resolved.is_empty() || resolved.iter().any(|a| !a.ip().is_loopback()) {
            bail!(
                "this benchmark build (feature bench-unguarded) listens on loopback addresses \
                 only, not {addr}"
            );
        }
    }
    Ok(())
}

/// Forwards new audit records (DICOM audit messages, RFC 5425) to the audit
/// repository, reading the durable log so every node's records are sent.
async fn forward_audit(store: Store, sink: meridian_auditsink::SinkHandle) {
    let mut last = store.audit_head().await.unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let f = meridian_store::AuditFilter {
            after_seq: Some(last),
            limit: Some(1000),
            ..Default::default()
        };
        match store.audit_search(&f).await {
            Ok(recs) => {
                for r in &recs {
                    sink.send(r);
                    last = r.seq;
                }
            }
            Err(e) if e.is_closed() => return,
            Err(e) => tracing::warn!(error = %e, "reading audit records to forward failed"),
        }
    }
}

/// Fires `stable` for studies quiet for `quiet` seconds. The state lives in
/// the index, so a restart resumes where it stopped.
async fn stable_sweeper(store: Store, quiet_secs: u64) {
    let quiet_ms = (quiet_secs * 1000) as i64;
    let period = Duration::from_millis((quiet_ms / 4).clamp(250, 5000) as u64);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match store.sweep_stable(quiet_ms, meridian_store::now_ms()).await {
            Err(e) if e.is_closed() => return,
            Err(e) => tracing::warn!(error = %e, "stable sweep failed"),
            Ok(_) => {}
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
