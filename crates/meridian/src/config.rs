//! Settings: command-line flag > environment variable > TOML file > default.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use meridian_dicom::parse::Limits;
use meridian_dimse::Peer;
use meridian_store::DuplicatePolicy;
use serde::Deserialize;

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML file whose keys are the long flag names with `_` (e.g. data_dir = "...").
    #[arg(global = true, long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (index and instance files) [default: ./meridian-data, demo: ./meridian-demo-data].
    #[arg(global = true, long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8042].
    #[arg(global = true, long, env = "MERIDIAN_HTTP")]
    pub http: Option<String>,
    /// DICOM listen address [default: 127.0.0.1:11112].
    #[arg(global = true, long, env = "MERIDIAN_DICOM")]
    pub dicom: Option<String>,
    /// This server's AE title [default: MERIDIAN].
    #[arg(global = true, long, env = "MERIDIAN_AE_TITLE")]
    pub ae_title: Option<String>,
    /// Index database URL (sqlite://... or postgres://...) [default: SQLite in the data dir].
    #[arg(global = true, long, env = "MERIDIAN_DATABASE_URL")]
    pub database_url: Option<String>,
    /// C-MOVE destination, AET@HOST:PORT (repeatable; env: comma-separated).
    #[arg(
        global = true,
        long = "peer",
        env = "MERIDIAN_PEERS",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,
    /// Seconds without a new instance before a study is stable [default: 60].
    #[arg(global = true, long, env = "MERIDIAN_STABLE_AFTER")]
    pub stable_after: Option<u64>,
    /// Re-sent SOP Instance UID: keep-first or replace [default: keep-first].
    #[arg(global = true, long, env = "MERIDIAN_DUPLICATE_POLICY")]
    pub duplicate_policy: Option<String>,
    /// Largest PDU this SCP accepts, bytes [default: 65536].
    #[arg(global = true, long, env = "MERIDIAN_MAX_PDU")]
    pub max_pdu: Option<u32>,
    /// Association idle timeout, seconds [default: 60].
    #[arg(global = true, long, env = "MERIDIAN_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Maximum concurrent associations [default: 64].
    #[arg(global = true, long, env = "MERIDIAN_MAX_ASSOCIATIONS")]
    pub max_associations: Option<usize>,
    /// Largest accepted DICOM object, bytes [default: 1073741824].
    #[arg(global = true, long, env = "MERIDIAN_MAX_OBJECT")]
    pub max_object: Option<usize>,
    /// Largest accepted HTTP request body (STOW-RS), bytes [default: 4294967296].
    #[arg(global = true, long, env = "MERIDIAN_MAX_REQUEST")]
    pub max_request: Option<usize>,
    /// Directory of a prebuilt viewer (OHIF `dist`) to serve at `/`.
    #[arg(global = true, long, env = "MERIDIAN_VIEWER_DIR")]
    pub viewer_dir: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS on --http (and DICOM TLS with --dicom-tls).
    #[arg(global = true, long, env = "MERIDIAN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(global = true, long, env = "MERIDIAN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mutual TLS): required on the DICOM TLS port,
    /// verified when offered over HTTPS.
    #[arg(global = true, long, env = "MERIDIAN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// DICOM TLS listen address (BCP 195 profile), e.g. 127.0.0.1:2762 [default: off].
    #[arg(global = true, long, env = "MERIDIAN_DICOM_TLS")]
    pub dicom_tls: Option<String>,
    /// Calling AE titles not registered to a site: reject or quarantine [default: reject].
    #[arg(global = true, long, env = "MERIDIAN_UNKNOWN_AE")]
    pub unknown_ae: Option<String>,
    /// Public base URL of this server (for OIDC redirects), e.g. https://meridian.example.org.
    #[arg(global = true, long, env = "MERIDIAN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Session lifetime, hours [default: 12].
    #[arg(global = true, long, env = "MERIDIAN_SESSION_HOURS")]
    pub session_hours: Option<u64>,
    /// Longest time an HTTP request may take to be answered, seconds (408 after) [default: 600].
    #[arg(global = true, long, env = "MERIDIAN_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// OpenID Connect issuer URL (enables "Sign in with SSO").
    #[arg(global = true, long, env = "MERIDIAN_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// OIDC client ID.
    #[arg(global = true, long, env = "MERIDIAN_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// OIDC client secret (prefer the environment variable; never logged).
    #[arg(
        global = true,
        long,
        env = "MERIDIAN_OIDC_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub oidc_client_secret: Option<String>,
    /// ID-token claim holding the user's groups [default: groups].
    #[arg(global = true, long, env = "MERIDIAN_OIDC_ROLE_CLAIM")]
    pub oidc_role_claim: Option<String>,
    /// ID-token claim holding the user's site (for the `site` and `referrer` roles) [default: meridian_site].
    #[arg(global = true, long, env = "MERIDIAN_OIDC_SITE_CLAIM")]
    pub oidc_site_claim: Option<String>,
    /// IdP group to Meridian role, GROUP=ROLE (repeatable; env: comma-separated).
    #[arg(
        global = true,
        long = "oidc-role",
        env = "MERIDIAN_OIDC_ROLES",
        value_delimiter = ','
    )]
    pub oidc_roles: Vec<String>,
    /// Audit repository for DICOM audit messages over syslog TLS (RFC 5425), HOST:PORT.
    #[arg(global = true, long, env = "MERIDIAN_AUDIT_SYSLOG")]
    pub audit_syslog: Option<String>,
    /// PEM CA bundle that signs the audit repository's certificate.
    #[arg(global = true, long, env = "MERIDIAN_AUDIT_SYSLOG_CA")]
    pub audit_syslog_ca: Option<PathBuf>,
    /// HL7 v2 MLLP listen address for orders, e.g. 127.0.0.1:2575 [default: off; demo: 127.0.0.1:2575].
    #[arg(global = true, long, env = "MERIDIAN_HL7")]
    pub hl7: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http: Option<String>,
    dicom: Option<String>,
    ae_title: Option<String>,
    database_url: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    stable_after: Option<u64>,
    duplicate_policy: Option<String>,
    max_pdu: Option<u32>,
    idle_timeout: Option<u64>,
    max_associations: Option<usize>,
    max_object: Option<usize>,
    max_request: Option<usize>,
    viewer_dir: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    dicom_tls: Option<String>,
    unknown_ae: Option<String>,
    public_url: Option<String>,
    session_hours: Option<u64>,
    request_timeout: Option<u64>,
    oidc_issuer: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret: Option<String>,
    oidc_role_claim: Option<String>,
    oidc_site_claim: Option<String>,
    #[serde(default)]
    oidc_roles: Vec<String>,
    audit_syslog: Option<String>,
    audit_syslog_ca: Option<PathBuf>,
    hl7: Option<String>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub http: String,
    pub dicom: String,
    pub ae_title: String,
    pub database_url: Option<String>,
    pub peers: Vec<Peer>,
    pub stable_after_secs: u64,
    pub duplicate_policy: DuplicatePolicy,
    pub max_pdu: u32,
    pub idle_timeout_secs: u64,
    pub max_associations: usize,
    pub max_object: usize,
    pub max_request: usize,
    pub viewer_dir: Option<PathBuf>,
    /// HTTPS and DICOM TLS material, when configured.
    pub tls: Option<TlsFiles>,
    pub dicom_tls: Option<String>,
    pub quarantine_unknown_ae: bool,
    pub public_url: Option<String>,
    pub session_hours: u64,
    /// HTTP request timeout, seconds.
    pub request_timeout_secs: u64,
    pub oidc: Option<OidcSettings>,
    pub audit_syslog: Option<String>,
    pub audit_syslog_ca: Option<PathBuf>,
    /// HL7 MLLP listen address (None: off).
    pub hl7: Option<String>,
}

/// Certificate, key and optional client CA (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A secret that never appears in logs or Debug output.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// OpenID Connect login settings.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub role_claim: String,
    pub site_claim: String,
    /// IdP group → Meridian role.
    pub roles: Vec<(String, String)>,
}

impl Settings {
    pub fn resolve(a: ServeArgs, demo: bool) -> Result<Settings> {
        let f: FileConfig = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let peers_raw = if a.peers.is_empty() { f.peers } else { a.peers };
        let peers = peers_raw
            .iter()
            .map(|p| p.parse::<Peer>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        let policy = a
            .duplicate_policy
            .or(f.duplicate_policy)
            .unwrap_or_else(|| "keep-first".into());
        let ae_title = a
            .ae_title
            .or(f.ae_title)
            .unwrap_or_else(|| "MERIDIAN".into());
        if ae_title.is_empty()
            || ae_title.len() > 16
            || !ae_title.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        {
            bail!("AE title must be 1-16 printable characters without spaces or backslashes");
        }
        let default_viewer = demo
            .then(|| PathBuf::from(".cache/ohif/dist"))
            .filter(|p| p.join("index.html").exists());
        let s = Settings {
            data_dir: a.data_dir.or(f.data_dir).unwrap_or_else(|| {
                PathBuf::from(if demo {
                    "./meridian-demo-data"
                } else {
                    "./meridian-data"
                })
            }),
            http: a.http.or(f.http).unwrap_or_else(|| "127.0.0.1:8042".into()),
            dicom: a
                .dicom
                .or(f.dicom)
                .unwrap_or_else(|| "127.0.0.1:11112".into()),
            ae_title,
            database_url: a.database_url.or(f.database_url),
            peers,
            stable_after_secs: a.stable_after.or(f.stable_after).unwrap_or(60),
            duplicate_policy: policy.parse().map_err(anyhow::Error::msg)?,
            max_pdu: a
                .max_pdu
                .or(f.max_pdu)
                .unwrap_or(65536)
                .clamp(4096, 16 << 20),
            idle_timeout_secs: a.idle_timeout.or(f.idle_timeout).unwrap_or(60).max(1),
            max_associations: a
                .max_associations
                .or(f.max_associations)
                .unwrap_or(64)
                .max(1),
            max_object: a.max_object.or(f.max_object).unwrap_or(1 << 30),
            max_request: a.max_request.or(f.max_request).unwrap_or(4 << 30),
            viewer_dir: a.viewer_dir.or(f.viewer_dir).or(default_viewer),
            tls: match (a.tls_cert.or(f.tls_cert), a.tls_key.or(f.tls_key)) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca: a.tls_client_ca.or(f.tls_client_ca),
                }),
                (None, None) => None,
                _ => bail!("--tls-cert and --tls-key go together"),
            },
            dicom_tls: a.dicom_tls.or(f.dicom_tls),
            quarantine_unknown_ae: match a
                .unknown_ae
                .or(f.unknown_ae)
                .as_deref()
                .unwrap_or("reject")
            {
                "reject" => false,
                "quarantine" => true,
                other => bail!("--unknown-ae must be reject or quarantine, not {other:?}"),
            },
            public_url: a
                .public_url
                .or(f.public_url)
                .map(|u| u.trim_end_matches('/').to_owned()),
            session_hours: a
                .session_hours
                .or(f.session_hours)
                .unwrap_or(12)
                .clamp(1, 24 * 30),
            request_timeout_secs: a
                .request_timeout
                .or(f.request_timeout)
                .unwrap_or(600)
                .clamp(1, 24 * 3600),
            oidc: match (
                a.oidc_issuer.or(f.oidc_issuer),
                a.oidc_client_id.or(f.oidc_client_id),
            ) {
                (Some(issuer), Some(client_id)) => {
                    let raw = if a.oidc_roles.is_empty() {
                        f.oidc_roles
                    } else {
                        a.oidc_roles
                    };
                    let roles = raw
                        .iter()
                        .map(|m| {
                            m.split_once('=')
                                .map(|(g, r)| (g.trim().to_owned(), r.trim().to_owned()))
                                .with_context(|| format!("--oidc-role {m:?} is not GROUP=ROLE"))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Some(OidcSettings {
                        issuer: issuer.trim_end_matches('/').to_owned(),
                        client_id,
                        client_secret: a.oidc_client_secret.or(f.oidc_client_secret).map(Secret),
                        role_claim: a
                            .oidc_role_claim
                            .or(f.oidc_role_claim)
                            .unwrap_or_else(|| "groups".into()),
                        site_claim: a
                            .oidc_site_claim
                            .or(f.oidc_site_claim)
                            .unwrap_or_else(|| "meridian_site".into()),
                        roles,
                    })
                }
                (None, None) => None,
                _ => bail!("--oidc-issuer and --oidc-client-id go together"),
            },
            audit_syslog: a.audit_syslog.or(f.audit_syslog),
            audit_syslog_ca: a.audit_syslog_ca.or(f.audit_syslog_ca),
            hl7: a
                .hl7
                .or(f.hl7)
                .or_else(|| demo.then(|| "127.0.0.1:2575".to_owned()))
                .filter(|a| a != "off"),
        };
        if s.dicom_tls.is_some() && s.tls.is_none() {
            bail!("--dicom-tls needs --tls-cert and --tls-key");
        }
        if let Some(v) = &s.viewer_dir
            && !v.join("index.html").exists()
        {
            bail!(
                "--viewer-dir {} has no index.html (see docs/viewer.md)",
                v.display()
            );
        }
        Ok(s)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_object: self.max_object,
            max_element: self.max_object as u64,
        }
    }
}
