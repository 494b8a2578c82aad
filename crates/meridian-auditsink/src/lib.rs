//! Sends audit records to an audit repository: each record becomes a DICOM
//! audit message (PS3.15 A.5, `meridian_audit::dicom`) in an RFC 5424 syslog
//! message, sent over TLS with RFC 5425 framing (IHE ATNA ITI-20, DICOM
//! PS3.15 "Audit Trail Message Transmission Profile - SYSLOG-TLS").
//!
//! [`SyslogTls`] is one verified TLS connection setup (server checked
//! against a PEM CA bundle, optionally a client certificate for mutual TLS).
//! [`spawn`] starts a forwarder task; [`SinkHandle::send`] enqueues a record
//! without waiting. The queue is bounded: when the repository is away long
//! enough to fill it, records are dropped and counted
//! (`meridian_audit_syslog_dropped_total`); they remain in Meridian's own
//! audit log, which stays the record of truth. Sent messages are counted in
//! `meridian_audit_syslog_sent_total`.
//!
//! Delivery is at least once as far as TLS can tell: a batch is written
//! again on a new connection if writing or flushing it failed. Syslog has
//! no acknowledgement, so messages in flight when a connection breaks after
//! a successful write can still be lost; the `seq` and `hash` each message
//! carries let the repository side find both gaps and duplicates.
//!
//! TLS uses rustls with the *ring* provider, given explicitly: the
//! process-wide default provider does not matter here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use meridian_audit::{Record, dicom, syslog};
use prometheus::IntCounter;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

static SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "meridian_audit_syslog_sent_total",
        "Audit messages written to the syslog audit repository",
    )
    .expect("metric");
    prometheus::register(Box::new(c.clone())).ok();
    c
});
static DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "meridian_audit_syslog_dropped_total",
        "Audit messages not sent to the syslog audit repository because its queue was full",
    )
    .expect("metric");
    prometheus::register(Box::new(c.clone())).ok();
    c
});

/// Makes the syslog metrics appear on /metrics from start-up.
pub fn register_metrics() {
    LazyLock::force(&SENT);
    LazyLock::force(&DROPPED);
}

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("audit repository address {0:?}: expected HOST:PORT")]
    Address(String),
    #[error("audit repository server name {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Pem { path: PathBuf, msg: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("audit repository {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("audit repository {addr}: {what} timed out after {after:?}")]
    Timeout {
        addr: String,
        what: &'static str,
        after: Duration,
    },
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> SinkError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => SinkError::File {
            path: path.to_owned(),
            source,
        },
        e => SinkError::Pem {
            path: path.to_owned(),
            msg: e.to_string(),
        },
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(SinkError::Pem {
            path: path.to_owned(),
            msg: "no CERTIFICATE in this PEM file".into(),
        });
    }
    Ok(certs)
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6) into its host and port.
fn split_addr(addr: &str) -> Result<(&str, u16), SinkError> {
    let bad = || SinkError::Address(addr.to_owned());
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        addr.rsplit_once(':').ok_or_else(bad)?
    };
    if host.is_empty() || host.contains(':') && !addr.starts_with('[') {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// How to reach and verify one audit repository over TLS.
#[derive(Clone)]
pub struct SyslogTls {
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    connect_timeout: Duration,
}

impl std::fmt::Debug for SyslogTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTls")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl SyslogTls {
    /// The repository at `addr` (`HOST:PORT`), whose certificate must chain
    /// to a certificate in the PEM bundle `ca_pem` and name HOST.
    pub fn new(addr: &str, ca_pem: &Path) -> Result<Self, SinkError> {
        Self::build(addr, ca_pem, None)
    }

    /// As [`SyslogTls::new`], presenting a client certificate chain
    /// (`cert_pem`, leaf first) and its private key (`key_pem`: PKCS#8,
    /// PKCS#1 or SEC1) for mutual TLS.
    pub fn with_client_auth(
        addr: &str,
        ca_pem: &Path,
        cert_pem: &Path,
        key_pem: &Path,
    ) -> Result<Self, SinkError> {
        Self::build(addr, ca_pem, Some((cert_pem, key_pem)))
    }

    fn build(addr: &str, ca_pem: &Path, client: Option<(&Path, &Path)>) -> Result<Self, SinkError> {
        let (host, _) = split_addr(addr)?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| SinkError::ServerName(host.to_owned()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_pem)? {
            roots.add(cert).map_err(|e| SinkError::Pem {
                path: ca_pem.to_owned(),
                msg: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        Ok(SyslogTls {
            addr: addr.to_owned(),
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// Verifies the repository's certificate against `name` instead of the
    /// address's host (e.g. when connecting by IP address to a server whose
    /// certificate names only its DNS name).
    pub fn with_server_name(mut self, name: &str) -> Result<Self, SinkError> {
        self.server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| SinkError::ServerName(name.to_owned()))?;
        Ok(self)
    }

    /// The repository's `HOST:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Opens a TCP connection and completes the TLS handshake.
    pub async fn connect(&self) -> Result<SyslogConnection, SinkError> {
        let io = |source| SinkError::Io {
            addr: self.addr.clone(),
            source,
        };
        let handshake = async {
            let tcp = TcpStream::connect(&self.addr).await.map_err(io)?;
            tcp.set_nodelay(true).map_err(io)?;
            self.connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(io)
        };
        let stream = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| SinkError::Timeout {
                addr: self.addr.clone(),
                what: "connecting",
                after: self.connect_timeout,
            })??;
        Ok(SyslogConnection {
            stream,
            addr: self.addr.clone(),
        })
    }
}

/// An open TLS connection to an audit repository.
pub struct SyslogConnection {
    stream: TlsStream<TcpStream>,
    addr: String,
}

impl SyslogConnection {
    fn io(&self, source: std::io::Error) -> SinkError {
        SinkError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Writes RFC 5425 frames and flushes them to the socket.
    pub async fn write_frames(&mut self, frames: &[Vec<u8>]) -> Result<(), SinkError> {
        for f in frames {
            if let Err(e) = self.stream.write_all(f).await {
                return Err(self.io(e));
            }
        }
        if let Err(e) = self.stream.flush().await {
            return Err(self.io(e));
        }
        Ok(())
    }

    /// Sends one RFC 5424 message (framed here).
    pub async fn send(&mut self, syslog_message: &str) -> Result<(), SinkError> {
        self.write_frames(&[syslog::rfc5425_frame(syslog_message)])
            .await
    }

    /// Waits until the repository closes the connection (or it fails);
    /// data the repository sends is ignored.
    async fn closed(&mut self) -> std::io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            if self.stream.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Ends the TLS session (close_notify) and the connection.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Settings of a forwarder.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub tls: SyslogTls,
    /// HOSTNAME field of the syslog messages.
    pub hostname: String,
    /// Records held while the repository is slow or away; more are dropped.
    pub queue_capacity: usize,
    /// First and longest wait between connection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A write that takes longer breaks the connection (and is retried on a new one).
    pub write_timeout: Duration,
}

impl SinkConfig {
    /// Defaults: this machine's host name, 10,000 queued records, reconnect
    /// after 250 ms doubling up to 30 s, 30 s write timeout.
    pub fn new(tls: SyslogTls) -> Self {
        SinkConfig {
            tls,
            hostname: local_hostname(),
            queue_capacity: 10_000,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The kernel's host name, or the syslog NILVALUE.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicBool,
    last_drop_warning: Mutex<Option<Instant>>,
}

/// Counts of one forwarder (the Prometheus counters add up all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkStats {
    pub sent: u64,
    pub dropped: u64,
    pub queued: usize,
    pub connected: bool,
}

/// Enqueues records for a forwarder; cheap to clone. The forwarder ends
/// (closing its connection) when every handle is dropped and its queue is
/// sent.
#[derive(Clone)]
pub struct SinkHandle {
    tx: mpsc::Sender<Record>,
    shared: Arc<Shared>,
}

impl SinkHandle {
    /// Enqueues a record without waiting. Returns false, counting and
    /// (at most every 10 s) logging the drop, when the queue is full or the
    /// forwarder is gone.
    pub fn send(&self, r: &Record) -> bool {
        match self.tx.try_send(r.clone()) {
            Ok(()) => true,
            Err(e) => {
                DROPPED.inc();
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let why = match e {
                    TrySendError::Full(_) => "queue full",
                    TrySendError::Closed(_) => "forwarder stopped",
                };
                let mut last = self
                    .shared
                    .last_drop_warning
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        seq = r.seq,
                        dropped_total = dropped,
                        reason = why,
                        "audit record not forwarded to the syslog audit repository (it stays in the audit log)"
                    );
                }
                false
            }
        }
    }

    pub fn stats(&self) -> SinkStats {
        SinkStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            queued: self.tx.max_capacity() - self.tx.capacity(),
            connected: self.shared.connected.load(Ordering::Relaxed),
        }
    }
}

/// Starts a forwarder on the current Tokio runtime.
pub fn spawn(cfg: SinkConfig) -> SinkHandle {
    register_metrics();
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let shared = Arc::new(Shared::default());
    tokio::spawn(run(cfg, rx, shared.clone()));
    SinkHandle { tx, shared }
}

/// A record as an RFC 5425 frame of an RFC 5424 message carrying its DICOM audit message.
pub fn frame(r: &Record, hostname: &str) -> Vec<u8> {
    let msg = dicom::to_dicom_audit_message(r);
    syslog::rfc5425_frame(&syslog::rfc5424(
        &msg,
        hostname,
        r.event.at_ms,
        syslog::MSGID_IHE,
    ))
}

const BATCH: usize = 256;

async fn run(cfg: SinkConfig, mut rx: mpsc::Receiver<Record>, shared: Arc<Shared>) {
    let addr = cfg.tls.addr().to_owned();
    let mut backoff = cfg.backoff_min;
    // Frames taken from the queue and not yet written and flushed.
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut failures = 0u32;
    loop {
        if batch.is_empty() && rx.is_closed() && rx.is_empty() {
            return;
        }
        let mut conn = match cfg.tls.connect().await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                if failures == 1 || backoff >= cfg.backoff_max {
                    tracing::warn!(error = %e, retry_in = ?backoff, "audit repository unreachable");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        tracing::info!(addr = %addr, "audit repository connected");
        shared.connected.store(true, Ordering::Relaxed);
        loop {
            if batch.is_empty() {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(rec) => batch.push(frame(&rec, &cfg.hostname)),
                        None => {
                            shared.connected.store(false, Ordering::Relaxed);
                            conn.close().await;
                            return;
                        }
                    },
                    r = conn.closed() => {
                        match r {
                            Ok(()) => tracing::warn!(addr = %addr, "audit repository closed the connection"),
                            Err(e) => tracing::warn!(addr = %addr, error = %e, "audit repository connection failed"),
                        }
                        break;
                    }
                }
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(rec) => batch.push(frame(&rec, &cfg.hostname)),
                        Err(_) => break,
                    }
                }
            }
            match tokio::time::timeout(cfg.write_timeout, conn.write_frames(&batch)).await {
                Ok(Ok(())) => {
                    let n = batch.len() as u64;
                    SENT.inc_by(n);
                    shared.sent.fetch_add(n, Ordering::Relaxed);
                    batch.clear();
                    backoff = cfg.backoff_min;
                    failures = 0;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, pending = batch.len(), "audit repository write failed; reconnecting");
                    break;
                }
                Err(_) => {
                    tracing::warn!(addr = %addr, pending = batch.len(), "audit repository write timed out; reconnecting");
                    break;
                }
            }
        }
        shared.connected.store(false, Ordering::Relaxed);
        // A repository that accepts and then fails every write is retried with backoff too.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_addr("audit.example.org:6514").unwrap(),
            ("audit.example.org", 6514)
        );
        assert_eq!(split_addr("127.0.0.1:6514").unwrap(), ("127.0.0.1", 6514));
        assert_eq!(split_addr("[::1]:6514").unwrap(), ("::1", 6514));
        for bad in [
            "",
            "host",
            "host:",
            ":6514",
            "host:0",
            "host:99999",
            "::1:6514",
            "[::1]6514",
        ] {
            assert!(split_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_files_are_named() {
        let e = SyslogTls::new("localhost:6514", Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("meridian-auditsink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let e = SyslogTls::new("localhost:6514", &empty).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
