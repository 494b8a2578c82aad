//! Transport security: rustls server configurations for HTTPS and DICOM TLS,
//! and the HTTPS listener.
//!
//! Both follow BCP 195 (RFC 9325), as DICOM's BCP 195 TLS Secure Transport
//! Connection Profile (PS3.15 B.9) asks: TLS 1.2 and 1.3 only, and *ring*'s
//! default cipher suites, all of them ECDHE key exchange with AEAD ciphers
//! (AES-GCM, ChaCha20-Poly1305). The crypto provider is *ring*, given
//! explicitly, so that no other provider is ever linked or picked.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsFiles;

/// Whether a client must present a certificate signed by `--tls-client-ca`
/// (only when that CA is configured; without it, no client certificate is asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// Asked for and verified when offered; a client without one still connects
    /// (HTTPS: browsers and token-carrying gateways alike).
    Optional,
    /// A client without a valid certificate fails the handshake (DICOM TLS).
    Required,
}

/// The protocol versions BCP 195 allows.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Builds a server configuration from PEM files: the certificate chain (leaf
/// first), its private key (PKCS#8, PKCS#1 or SEC1) and the optional client CA bundle.
pub fn server_config(
    files: &TlsFiles,
    client: ClientCert,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pem_error(&files.key, "--tls-key", "private key", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .context("TLS 1.2 and 1.3 with the ring provider")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "--tls-client-ca")? {
                roots.add(c).with_context(|| {
                    format!("--tls-client-ca {}: unusable CA certificate", ca.display())
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = match client {
                ClientCert::Optional => v.allow_unauthenticated(),
                ClientCert::Required => v,
            };
            builder.with_client_cert_verifier(
                v.build()
                    .with_context(|| format!("--tls-client-ca {}: no usable CA", ca.display()))?,
            )
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "--tls-cert {} and --tls-key {} do not form a usable certificate and key",
            files.cert.display(),
            files.key.display()
        )
    })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, flag, "certificates", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, flag, "certificates", e))?;
    if certs.is_empty() {
        bail!(
            "{flag} {}: no CERTIFICATE block in this PEM file",
            path.display()
        );
    }
    Ok(certs)
}

fn pem_error(
    path: &Path,
    flag: &str,
    what: &str,
    e: rustls_pki_types::pem::Error,
) -> anyhow::Error {
    match e {
        rustls_pki_types::pem::Error::Io(io) => {
            anyhow::Error::new(io).context(format!("{flag} {}: cannot read", path.display()))
        }
        rustls_pki_types::pem::Error::NoItemsFound => {
            anyhow::anyhow!("{flag} {}: no {what} in this PEM file", path.display())
        }
        e => anyhow::anyhow!("{flag} {}: not valid PEM {what}: {e:?}", path.display()),
    }
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 256;

/// An [`axum::serve::Listener`] of TLS connections.
///
/// Handshakes run in their own tasks, so a slow or silent client never holds
/// up the others; a failed handshake (a plain HTTP request, an old protocol
/// version, an untrusted client certificate) is logged at debug and dropped.
/// Dropping the listener (graceful shutdown) stops accepting.
pub struct HttpsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl HttpsListener {
    pub fn new(tcp: TcpListener, cfg: Arc<ServerConfig>) -> std::io::Result<HttpsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let tls = TlsAcceptor::from(cfg);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let (sock, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // As axum::serve does: per-connection errors are
                        // transient; others (out of file descriptors) get a pause.
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::ConnectionReset
                        ) {
                            tracing::error!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; closing connection");
                    continue;
                };
                sock.set_nodelay(true).ok();
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(sock)).await {
                        Ok(Ok(stream)) => {
                            // Err: the listener is gone (shutting down).
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(HttpsListener {
            rx,
            local,
            acceptor,
        })
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (it does not, short of a panic): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("meridian-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_files_are_named() {
        let f = TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        };
        let e = format!(
            "{:#}",
            server_config(&f, ClientCert::Optional, &[]).unwrap_err()
        );
        assert!(e.contains("--tls-cert /nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn not_pem_is_named() {
        let d = tmp("notpem");
        let f = files(&d, "hello\n", "world\n");
        let e = format!(
            "{:#}",
            server_config(&f, ClientCert::Optional, &[]).unwrap_err()
        );
        assert!(
            e.contains("cert.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn key_missing_is_named() {
        let d = tmp("nokey");
        // A syntactically valid PEM certificate block is enough to reach the key.
        let f = files(
            &d,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
            "no key here\n",
        );
        let e = format!(
            "{:#}",
            server_config(&f, ClientCert::Optional, &[]).unwrap_err()
        );
        assert!(
            e.contains("--tls-key") && e.contains("key.pem") && e.contains("no private key"),
            "{e}"
        );
        std::fs::remove_dir_all(d).ok();
    }
}
