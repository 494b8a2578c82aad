//! The DIMSE SCP: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use dicom_core::value::Value;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::association::Association;
use dicom_ul::association::server::{
    AccessControl, AsyncServerAssociation, Negotiation, ServerAssociationOptions,
};
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};
use dicom_ul::pdu::{PresentationContextResultReason, RequestorRoles};
use meridian_auth::{Principal, PrincipalKind, Role, Scope};
use meridian_core::attrs::{self, Level};
use meridian_core::{Query, QueryError};
use meridian_dicom::parse::{self, Limits};
use meridian_dicom::sop;
use meridian_store::ingest::{Ingest, Input};
use meridian_store::{InstanceRef, Store};
use prometheus::IntGauge;
use std::collections::HashMap;
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::msg::{
    self, DimseError, Incoming, Message, Receiver, cmd, el_error_comment, el_u16, el_ui,
};
use crate::scu::StoreScu;

static OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new("meridian_open_associations", "Open DICOM associations").expect("metric");
    prometheus::register(Box::new(g.clone())).ok();
    g
});

/// Open associations up to which C-STORE data sets are streamed to their
/// files while they arrive: half the cores, at least one. Streaming shortens
/// each store (the write and the start of its writeback overlap the
/// transfer) but costs CPU (more, smaller writes): measured on 2 cores, +18 %
/// instances/s on one association, -5 % on eight, where the CPU is the limit.
static STREAM_UP_TO: LazyLock<i64> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1) as i64
});

tokio::task_local! {
    /// Who is on the other end of this association: its site and data scope.
    static CALLER: Principal;
    /// The status of the last response this association sent (for the audit record).
    static LAST_STATUS: std::cell::Cell<u16>;
    /// Instances stored in this association, by study (one audit record per study).
    static STORED: std::cell::RefCell<std::collections::BTreeMap<String, u32>>;
}

/// The data scope of this association's caller (nothing outside an association).
fn scope() -> Scope {
    CALLER.try_with(Principal::scope).unwrap_or(Scope::Nothing)
}

/// The site of this association's caller.
fn caller_site() -> Option<String> {
    CALLER.try_with(|p| p.site.clone()).ok().flatten()
}

/// The site a calling AE belongs to; the only site unknown AE titles reach is
/// the quarantine site, and only when configured.
pub const QUARANTINE_SITE: &str = "quarantine";

/// Calling AE title → (site, source IP it must connect from, if bound).
type AeMap = HashMap<String, (String, Option<IpAddr>)>;

/// Calling AE titles registered to sites (optionally bound to a source IP),
/// loaded from the index and reloaded on change.
#[derive(Clone, Default)]
pub struct AeRegistry {
    map: Arc<std::sync::RwLock<AeMap>>,
    quarantine: bool,
}

impl AeRegistry {
    pub fn new(quarantine_unknown: bool) -> AeRegistry {
        AeRegistry {
            map: Arc::default(),
            quarantine: quarantine_unknown,
        }
    }

    /// Replaces the registrations.
    pub fn load(&self, aes: Vec<meridian_store::accounts::SiteAe>) {
        let m: AeMap = aes
            .into_iter()
            .map(|a| {
                let ip = a.host.as_deref().and_then(|h| h.parse().ok());
                (a.ae_title, (a.site_id, ip))
            })
            .collect();
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = m;
    }

    /// The site of a calling AE, if it may connect from `ip`.
    pub fn site_of(&self, calling: &str, ip: IpAddr) -> Result<String, &'static str> {
        let m = self.map.read().unwrap_or_else(|e| e.into_inner());
        match m.get(calling.trim()) {
            Some((site, None)) => Ok(site.clone()),
            Some((site, Some(want))) if *want == ip => Ok(site.clone()),
            Some(_) => Err("calling AE title is registered for another address"),
            None if self.quarantine => Ok(QUARANTINE_SITE.to_owned()),
            None => Err("calling AE title is not registered to a site"),
        }
    }
}

/// The access decision of one association: the caller's site, or the calling AE
/// title and why it was refused.
type Decision = Result<String, (String, &'static str)>;

/// Association access control of one connection, which knows the peer's address:
/// a calling AE title that is not registered (without quarantine), or is bound to
/// another address, gets A-ASSOCIATE-RJ (permanent, calling AE title not
/// recognized). The decision is kept for the association (its site) or for the
/// audit record of the denial.
#[derive(Clone)]
pub struct AeCheck {
    registry: AeRegistry,
    peer: IpAddr,
    decision: Arc<OnceLock<Decision>>,
}

impl AccessControl for AeCheck {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        let decision = self
            .registry
            .site_of(calling, self.peer)
            .map_err(|why| (calling.to_owned(), why));
        let ok = decision.is_ok();
        if let Err((_, why)) = &decision {
            tracing::warn!(peer = %self.peer, calling = %calling, why, "association rejected");
        }
        // One request per connection: a second decision cannot happen; keep the first.
        let _ = self.decision.set(decision);
        if ok {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// The access control of the shared options, replaced on every connection by an
/// [`AeCheck`] for its peer; if it were ever asked, it would refuse.
#[derive(Clone, Copy)]
struct NoPeer;

impl AccessControl for NoPeer {
    fn check_access(
        &self,
        _this_ae_title: &str,
        _calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    }
}

fn set_status(status: u16) {
    let _ = LAST_STATUS.try_with(|c| c.set(status));
}

/// A DICOM peer that C-MOVE may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Peer {
    type Err = String;
    /// `AET@HOST:PORT`
    fn from_str(s: &str) -> Result<Peer, String> {
        let (ae, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("peer `{s}` is not AET@HOST:PORT"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("peer `{s}` has no :PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("peer `{s}` has a bad port"))?;
        if ae.is_empty() || ae.len() > 16 || host.is_empty() {
            return Err(format!(
                "peer `{s}`: AE title must be 1-16 characters and host non-empty"
            ));
        }
        Ok(Peer {
            ae_title: ae.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

/// SCP settings.
#[derive(Debug, Clone)]
pub struct ScpConfig {
    pub ae_title: String,
    pub max_pdu: u32,
    pub idle_timeout: Duration,
    pub max_associations: usize,
    pub peers: Vec<Peer>,
}

#[derive(Clone)]
struct RoleNegotiation;

impl Negotiation for RoleNegotiation {
    fn negotiate_roles(
        &self,
        sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<RequestorRoles> {
        // C-GET: the requester takes the SCP role for storage classes.
        sop::is_storage_sop_class(sop_class_uid).then_some(RequestorRoles {
            scu: scu_role,
            scp: scp_role,
        })
    }
}

/// The byte stream an association runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The association options shared by all connections (TCP, or TLS with its configuration).
type Template = ServerAssociationOptions<'static, NoPeer, RoleNegotiation>;
/// The association options of one connection, with its peer's access control.
type Options = ServerAssociationOptions<'static, AeCheck, RoleNegotiation>;

/// The running SCP.
pub struct Scp {
    cfg: ScpConfig,
    ingest: Ingest,
    options: Template,
    slots: Arc<Semaphore>,
    registry: AeRegistry,
}

const SERVICE_CLASSES: &[&str] = &[
    sop::VERIFICATION,
    sop::PATIENT_ROOT_FIND,
    sop::PATIENT_ROOT_MOVE,
    sop::PATIENT_ROOT_GET,
    sop::STUDY_ROOT_FIND,
    sop::STUDY_ROOT_MOVE,
    sop::STUDY_ROOT_GET,
];

impl Scp {
    pub fn new(cfg: ScpConfig, ingest: Ingest, registry: AeRegistry) -> Arc<Scp> {
        LazyLock::force(&OPEN);
        let mut options: Template = ServerAssociationOptions::new()
            .ae_access_control(NoPeer)
            .ae_title(cfg.ae_title.clone())
            .max_pdu_length(cfg.max_pdu)
            // Non-strict: an A-ASSOCIATE-RQ proposing ~120 storage contexts is
            // larger than a small max PDU, and must still be read. P-DATA
            // payloads stay bounded by the object size limit in msg::receive.
            .strict(false)
            .read_timeout(cfg.idle_timeout)
            .write_timeout(cfg.idle_timeout)
            .with_negotiation(RoleNegotiation);
        for a in SERVICE_CLASSES
            .iter()
            .copied()
            .chain(sop::storage_sop_classes())
        {
            options = options.with_abstract_syntax(a);
        }
        for ts in sop::storage_transfer_syntaxes() {
            options = options.with_transfer_syntax(ts);
        }
        let slots = Arc::new(Semaphore::new(cfg.max_associations.max(1)));
        Arc::new(Scp {
            cfg,
            ingest,
            options,
            slots,
            registry,
        })
    }

    fn store(&self) -> &Store {
        &self.ingest.store
    }

    /// Accepts associations until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.accept(listener, None).await
    }

    /// The options of one connection: `template` with the access control of `peer`.
    fn options_for(&self, template: &Template, peer: IpAddr) -> (Options, Arc<OnceLock<Decision>>) {
        let decision = Arc::new(OnceLock::new());
        let check = AeCheck {
            registry: self.registry.clone(),
            peer,
            decision: decision.clone(),
        };
        (template.clone().ae_access_control(check), decision)
    }

    /// Accepts associations over TLS (DICOM PS3.15 B.9, BCP 195) until the
    /// listener fails. `tls` decides versions, cipher suites and whether a
    /// client certificate is required; everything after the handshake (AE
    /// title check, site scope, slots, audit) is the same as [`Scp::serve`].
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        let options = Arc::new(self.options.clone().tls_config(tls));
        self.accept(listener, Some(options)).await
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<Template>>,
    ) -> std::io::Result<()> {
        loop {
            let (sock, peer) = listener.accept().await?;
            sock.set_nodelay(true).ok();
            let this = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(_slot) = this.slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many associations; closing connection");
                    return;
                };
                OPEN.inc();
                // The calling AE title is checked against the peer's address during
                // negotiation, so a refusal is an A-ASSOCIATE-RJ, over TCP and TLS alike.
                let (options, decision) =
                    this.options_for(tls.as_deref().unwrap_or(&this.options), peer.ip());
                let run = async {
                    match &tls {
                        None => {
                            this.refuse_tls_hello(&sock).await?;
                            let assoc = options.establish_async(sock).await;
                            this.association(assoc, &decision, peer).await
                        }
                        Some(_) => {
                            // dicom-ul bounds the A-ASSOCIATE-RQ read, not the
                            // TLS handshake before it: bound both.
                            let assoc = tokio::time::timeout(
                                this.cfg.idle_timeout,
                                options.establish_tls_async(sock),
                            )
                            .await
                            .map_err(|_| {
                                DimseError::Unexpected(
                                    "TLS handshake or association request timed out".into(),
                                )
                            })?;
                            this.association(assoc, &decision, peer).await
                        }
                    }
                };
                let run = STORED.scope(
                    Default::default(),
                    LAST_STATUS.scope(std::cell::Cell::new(0xFFFF), run),
                );
                if let Err(e) = run.await {
                    tracing::info!(%peer, tls = tls.is_some(), error = %error_chain(&e), "association ended with an error");
                }
                OPEN.dec();
            });
        }
    }

    /// A TLS client on the plain port: its ClientHello (record type 0x16)
    /// would be read as a PDU of some 16 MiB and hang until the idle timeout.
    /// An A-ASSOCIATE-RQ starts with 0x01.
    async fn refuse_tls_hello(&self, sock: &tokio::net::TcpStream) -> Result<(), DimseError> {
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.cfg.idle_timeout, sock.peek(&mut first)).await {
            Err(_) => Err(DimseError::Unexpected(
                "no association request before the idle timeout".into(),
            )),
            Ok(Ok(1)) if first[0] == 0x16 => Err(DimseError::Unexpected(
                "a TLS handshake on the plain DICOM port (DICOM TLS has its own port)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Serves a negotiated association, or audits the denial of a rejected one
    /// (`decision`: what [`AeCheck`] decided during negotiation).
    async fn association<S: Stream>(
        &self,
        established: Result<AsyncServerAssociation<S>, dicom_ul::association::Error>,
        decision: &OnceLock<Decision>,
        peer: SocketAddr,
    ) -> Result<(), DimseError> {
        let (mut assoc, site) = match (established, decision.get()) {
            (Ok(assoc), Some(Ok(site))) => (assoc, site.clone()),
            (established, Some(Err((calling, why)))) => {
                // A-ASSOCIATE-RJ has been sent (dicom-ul returns the rejection as an error).
                if let Ok(assoc) = established {
                    assoc.abort().await.ok();
                }
                self.audit(
                    calling,
                    peer,
                    "DENIED association".into(),
                    None,
                    "denied".into(),
                    (*why).into(),
                )
                .await;
                return Ok(());
            }
            (Err(e), _) => return Err(e.into()),
            (Ok(assoc), None) => {
                // Negotiation always asks the access control before accepting.
                assoc.abort().await.ok();
                return Err(DimseError::Unexpected(
                    "association accepted without an access decision".into(),
                ));
            }
        };
        let calling = assoc.peer_ae_title().trim().to_owned();
        tracing::debug!(%peer, calling = %calling, %site, "association accepted");
        let who = Principal {
            name: format!("ae:{calling}"),
            kind: PrincipalKind::Ae,
            role: Role::Service,
            site: Some(site),
        };
        let r = CALLER
            .scope(who, self.messages(&mut assoc, &calling, peer))
            .await;
        // One audit record per study whose instances arrived on this association.
        let stored = STORED
            .try_with(|s| std::mem::take(&mut *s.borrow_mut()))
            .unwrap_or_default();
        for (study, n) in stored {
            self.audit(
                &calling,
                peer,
                "C-STORE".into(),
                Some(study),
                "0x0000".into(),
                format!("{n} instances stored"),
            )
            .await;
        }
        r
    }

    /// Writes an audit record for a DIMSE access (errors are logged: the
    /// response has already been sent).
    async fn audit(
        &self,
        calling: &str,
        peer: SocketAddr,
        action: String,
        study: Option<String>,
        outcome: String,
        detail: String,
    ) {
        let ev = meridian_audit::AuditEvent {
            at_ms: meridian_store::now_ms(),
            actor: format!("ae:{calling}"),
            role: "service".into(),
            action,
            study_uid: study,
            source: peer.to_string(),
            outcome,
            detail: detail.chars().take(512).collect(),
            ..Default::default()
        };
        if let Err(e) = self.store().audit(ev).await {
            tracing::error!(error = %e, "audit record could not be written");
        }
    }

    /// The query level, study and keys of a C-FIND/C-MOVE/C-GET identifier, for the audit record.
    fn describe<S: Stream>(
        &self,
        assoc: &AsyncServerAssociation<S>,
        m: &Message,
    ) -> (Option<String>, String) {
        let ts = pc_ts(assoc, m.pc_id);
        match self.parse_identifier(&ts, m.data.as_deref()) {
            Ok((q, _)) => {
                let study = match q.key(0x0020_000D) {
                    Some(meridian_core::Matcher::Single(s)) => Some(s.clone()),
                    _ => None,
                };
                let keys: Vec<String> = q
                    .keys
                    .iter()
                    .filter(|(_, mt)| *mt != meridian_core::Matcher::Universal)
                    .map(|(a, mt)| format!("{}={mt:?}", a.keyword))
                    .collect();
                (study, format!("{} {}", q.level.as_dicom(), keys.join(" ")))
            }
            Err((_, why)) => (None, why),
        }
    }

    /// Serves DIMSE messages until release or abort; an unsupported command
    /// ends the association (the connection is dropped).
    async fn messages<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        calling: &str,
        peer: SocketAddr,
    ) -> Result<(), DimseError> {
        let max_data = self.ingest.limits.max_object;
        let mut rx = Receiver::new(self.cfg.idle_timeout);
        // C-STORE data sets go to their files while they arrive, when few
        // associations are open (see `STREAM_UP_TO`).
        let contexts: Vec<(u8, String)> = assoc
            .presentation_contexts()
            .iter()
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_owned()))
            .collect();
        let ingest = &self.ingest;
        let mut open_sink = |c: &dicom_object::InMemDicomObject, pc_id: u8| {
            if msg::get_u16(c, tags::COMMAND_FIELD) != Some(cmd::C_STORE_RQ)
                || OPEN.get() > *STREAM_UP_TO
            {
                return None;
            }
            let (_, ts) = contexts.iter().find(|(id, _)| *id == pc_id)?;
            let stream = ingest.stream(
                ts,
                &msg::get_string(c, tags::AFFECTED_SOP_CLASS_UID),
                &msg::get_string(c, tags::AFFECTED_SOP_INSTANCE_UID),
                calling,
            );
            Some(Box::new(StoreSink(stream)) as Box<dyn msg::DataSink>)
        };
        loop {
            let m = match rx.receive_with(assoc, max_data, &mut open_sink).await? {
                Incoming::Message(m) => m,
                Incoming::Released | Incoming::Aborted => return Ok(()),
            };
            let field = m.field();
            match field {
                cmd::C_ECHO_RQ => self.echo(assoc, &m).await?,
                cmd::C_STORE_RQ => self.c_store(assoc, &mut rx, m, calling).await?,
                cmd::C_FIND_RQ | cmd::C_MOVE_RQ | cmd::C_GET_RQ => {
                    let (study, detail) = self.describe(assoc, &m);
                    set_status(0xFFFF);
                    let action = match field {
                        cmd::C_FIND_RQ => {
                            self.c_find(assoc, &m).await?;
                            "C-FIND".to_owned()
                        }
                        cmd::C_MOVE_RQ => {
                            self.c_move(assoc, &m, calling).await?;
                            format!("C-MOVE to {}", m.str(tags::MOVE_DESTINATION).trim())
                        }
                        _ => {
                            self.c_get(assoc, &mut rx, &m).await?;
                            "C-GET".to_owned()
                        }
                    };
                    let status = LAST_STATUS.try_with(|c| c.get()).unwrap_or(0xFFFF);
                    self.audit(
                        calling,
                        peer,
                        action,
                        study,
                        format!("0x{status:04X}"),
                        detail,
                    )
                    .await;
                }
                cmd::C_CANCEL_RQ => {}
                other => {
                    tracing::warn!(%peer, "unsupported command 0x{other:04X}; aborting");
                    return Err(DimseError::Unexpected(format!(
                        "unsupported command 0x{other:04X}"
                    )));
                }
            }
        }
    }

    async fn echo<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        m: &Message,
    ) -> Result<(), DimseError> {
        let rsp = msg::encode_command(vec![
            el_ui(tags::AFFECTED_SOP_CLASS_UID, sop::VERIFICATION),
            el_u16(tags::COMMAND_FIELD, cmd::C_ECHO_RSP),
            el_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, m.message_id()),
            el_u16(tags::COMMAND_DATA_SET_TYPE, msg::NO_DATASET),
            el_u16(tags::STATUS, 0),
        ])?;
        msg::send(assoc, m.pc_id, rsp, None, self.cfg.idle_timeout).await
    }

    async fn c_store<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        rx: &mut Receiver,
        m: Message,
        calling: &str,
    ) -> Result<(), DimseError> {
        let sop_class = m.str(tags::AFFECTED_SOP_CLASS_UID);
        let sop_uid = m.str(tags::AFFECTED_SOP_INSTANCE_UID);
        let ts = pc_ts(assoc, m.pc_id);
        let message_id = m.message_id();
        let (status, comment) = match (m.data, m.overflow) {
            (_, true) => (
                0xA700,
                format!(
                    "object exceeds the limit of {} bytes",
                    self.ingest.limits.max_object
                ),
            ),
            (None, _) => (0xA900, "no data set".to_owned()),
            (Some(data), false) => {
                let data = bytes::Bytes::from(data);
                // Ingest drops its reference before it returns: the buffer
                // then comes back for the next message.
                let buffer = data.clone();
                let input = Input::Dataset {
                    data,
                    transfer_syntax: ts,
                    sop_class: sop_class.clone(),
                    sop_instance: sop_uid.clone(),
                    source_ae: calling.to_owned(),
                };
                let Some(site) = caller_site() else {
                    return Err(DimseError::Unexpected(
                        "no site for this association".into(),
                    ));
                };
                let stream = m.sink.and_then(|b| {
                    (b as Box<dyn std::any::Any + Send + Sync>)
                        .downcast::<StoreSink>()
                        .ok()
                });
                let result = self
                    .ingest
                    .ingest_streamed(&site, input, stream.map(|s| s.0))
                    .await;
                if let Ok(b) = buffer.try_into_mut() {
                    rx.recycle(b.into());
                }
                match result {
                    Ok((info, _)) => {
                        let _ = STORED
                            .try_with(|s| *s.borrow_mut().entry(info.study_uid).or_insert(0) += 1);
                        (0, String::new())
                    }
                    Err(e) => {
                        tracing::info!(sop = %sop_uid, error = %e, "C-STORE refused");
                        (e.dimse_status(), e.to_string())
                    }
                }
            }
        };
        let mut els = vec![
            el_ui(tags::AFFECTED_SOP_CLASS_UID, &sop_class),
            el_u16(tags::COMMAND_FIELD, cmd::C_STORE_RSP),
            el_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, message_id),
            el_u16(tags::COMMAND_DATA_SET_TYPE, msg::NO_DATASET),
            el_u16(tags::STATUS, status),
            el_ui(tags::AFFECTED_SOP_INSTANCE_UID, &sop_uid),
        ];
        if status != 0 {
            els.push(el_error_comment(&comment));
        }
        msg::send(
            assoc,
            m.pc_id,
            msg::encode_command(els)?,
            None,
            self.cfg.idle_timeout,
        )
        .await
    }

    /// Parses a query identifier into a query and the list of requested return keys.
    fn parse_identifier(
        &self,
        ts: &str,
        data: Option<&[u8]>,
    ) -> Result<(Query, InMemDicomObject), (u16, String)> {
        let data = data.ok_or((0xA900, "no identifier".to_owned()))?;
        let limits = Limits {
            max_object: 1 << 20,
            max_element: 1 << 16,
        };
        let obj = parse::parse_dataset(data, ts, &limits)
            .map_err(|e| (0xA900, format!("bad identifier: {e}")))?;
        let level_s = parse::get_str(&obj, tags::QUERY_RETRIEVE_LEVEL).unwrap_or_default();
        let level = Level::from_dicom(&level_s)
            .ok_or((0xA900, format!("bad QueryRetrieveLevel {level_s:?}")))?;
        let mut q = Query::new(level);
        let charset = parse::charset_of(&obj);
        for e in obj.iter() {
            let t = e.header().tag;
            let tag = (u32::from(t.0) << 16) | u32::from(t.1);
            if t.0 == 0x0000 || tag == 0x0008_0052 || tag == 0x0008_0005 {
                continue;
            }
            let Some(a) = attrs::by_tag(tag) else {
                continue;
            };
            if matches!(a.column, "num_series" | "num_instances") || a.tag == 0x0008_3002 {
                continue;
            }
            let v = meridian_dicom::charset::fix(
                &e.to_str().map(|s| s.into_owned()).unwrap_or_default(),
                &charset,
            );
            match q.add_key(a, &v, false) {
                Ok(()) => {}
                Err(QueryError::WrongLevel(..)) if v.trim_end_matches(['\0', ' ']).is_empty() => {}
                Err(err) => return Err((0xA900, err.to_string())),
            }
        }
        Ok((q, obj))
    }

    async fn c_find<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        m: &Message,
    ) -> Result<(), DimseError> {
        let ts = pc_ts(assoc, m.pc_id);
        let sop_class = m.str(tags::AFFECTED_SOP_CLASS_UID);
        let rsp =
            |status: u16, has_data: bool, comment: Option<&str>| -> Result<Vec<u8>, DimseError> {
                set_status(status);
                let mut els = vec![
                    el_ui(tags::AFFECTED_SOP_CLASS_UID, &sop_class),
                    el_u16(tags::COMMAND_FIELD, cmd::C_FIND_RSP),
                    el_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, m.message_id()),
                    el_u16(
                        tags::COMMAND_DATA_SET_TYPE,
                        if has_data { 0x0000 } else { msg::NO_DATASET },
                    ),
                    el_u16(tags::STATUS, status),
                ];
                if let Some(c) = comment {
                    els.push(el_error_comment(c));
                }
                msg::encode_command(els)
            };
        let (q, ident) = match self.parse_identifier(&ts, m.data.as_deref()) {
            Ok(x) => x,
            Err((status, comment)) => {
                return msg::send(
                    assoc,
                    m.pc_id,
                    rsp(status, false, Some(&comment))?,
                    None,
                    self.cfg.idle_timeout,
                )
                .await;
            }
        };
        let rows = match self.store().find(&q, &scope()).await {
            Ok(r) => r,
            Err(e) => {
                return msg::send(
                    assoc,
                    m.pc_id,
                    rsp(0xA700, false, Some(&e.to_string()))?,
                    None,
                    self.cfg.idle_timeout,
                )
                .await;
            }
        };
        for row in rows {
            let mut out = InMemDicomObject::new_empty();
            let mut utf8 = false;
            for e in ident.iter() {
                let t = e.header().tag;
                if t.0 == 0x0000 || t == tags::SPECIFIC_CHARACTER_SET {
                    continue;
                }
                let tag = (u32::from(t.0) << 16) | u32::from(t.1);
                let value = if tag == 0x0008_0052 {
                    Some(q.level.as_dicom().to_owned())
                } else if tag == 0x0008_0054 {
                    Some(self.cfg.ae_title.clone())
                } else if tag == 0x0008_0056 {
                    Some("ONLINE".to_owned())
                } else {
                    row.get(tag).map(str::to_owned)
                };
                let vr = attrs::by_tag(tag)
                    .and_then(|a| a.vr.parse::<VR>().ok())
                    .unwrap_or(e.vr());
                let el = match (value, vr) {
                    (_, VR::SQ) => DataElement::new(
                        t,
                        VR::SQ,
                        Value::from(
                            dicom_core::value::DataSetSequence::<InMemDicomObject>::empty(),
                        ),
                    ),
                    (Some(v), _) => {
                        if !v.is_ascii() {
                            utf8 = true;
                        }
                        let parts: Vec<String> = v.split('\\').map(str::to_owned).collect();
                        let pv = if parts.len() > 1 {
                            PrimitiveValue::Strs(parts.into())
                        } else {
                            PrimitiveValue::from(v)
                        };
                        DataElement::new(t, vr, pv)
                    }
                    (None, _) => DataElement::new(t, vr, PrimitiveValue::Empty),
                };
                out.put(el);
            }
            if utf8 {
                out.put(DataElement::new(
                    tags::SPECIFIC_CHARACTER_SET,
                    VR::CS,
                    PrimitiveValue::from("ISO_IR 192"),
                ));
            }
            let data = msg::encode_dataset(&out, &ts, utf8)?;
            msg::send(
                assoc,
                m.pc_id,
                rsp(0xFF00, true, None)?,
                Some(&data),
                self.cfg.idle_timeout,
            )
            .await?;
        }
        msg::send(
            assoc,
            m.pc_id,
            rsp(0x0000, false, None)?,
            None,
            self.cfg.idle_timeout,
        )
        .await
    }

    async fn c_move<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        m: &Message,
        calling: &str,
    ) -> Result<(), DimseError> {
        let ts = pc_ts(assoc, m.pc_id);
        let dest = m.str(tags::MOVE_DESTINATION);
        let mut rsp = RetrieveResponder::new(cmd::C_MOVE_RSP, m, self.cfg.idle_timeout);
        let Some(peer) = self.cfg.peers.iter().find(|p| p.ae_title == dest.trim()) else {
            return rsp
                .finish(
                    assoc,
                    0xA801,
                    Some(&format!("unknown move destination {dest:?}")),
                )
                .await;
        };
        let instances = match self.resolve(&ts, m.data.as_deref()).await {
            Ok(i) => i,
            Err((status, c)) => return rsp.finish(assoc, status, Some(&c)).await,
        };
        rsp.remaining = instances.len() as u16;
        if instances.is_empty() {
            return rsp.finish(assoc, 0, None).await;
        }
        let mut contexts: Vec<(String, Vec<String>)> = Vec::new();
        for i in &instances {
            let mut ts_list = vec![i.transfer_syntax.clone()];
            if msg_uncompressed(&i.transfer_syntax) {
                for t in sop::UNCOMPRESSED {
                    if !ts_list.iter().any(|x| x == t) {
                        ts_list.push((*t).to_owned());
                    }
                }
            }
            let entry = (i.sop_class.clone(), ts_list);
            if !contexts.contains(&entry) && contexts.len() < 120 {
                contexts.push(entry);
            }
        }
        let addr = format!("{}:{}", peer.host, peer.port);
        let mut scu = match StoreScu::connect(
            &addr,
            &peer.ae_title,
            &self.cfg.ae_title,
            &contexts,
            self.cfg.max_pdu,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                return rsp
                    .finish(
                        assoc,
                        0xA801,
                        Some(&format!("cannot associate with {dest}: {e}")),
                    )
                    .await;
            }
        };
        for inst in &instances {
            let ok = match self.prepare(inst).await {
                Ok((ds, stored_ts)) => {
                    let choice = scu
                        .context_for(&inst.sop_class, &stored_ts)
                        .map(|id| (id, stored_ts.clone()))
                        .or_else(|| {
                            scu.any_context_for(&inst.sop_class)
                                .into_iter()
                                .find(|(_, t)| msg_uncompressed(t) && msg_uncompressed(&stored_ts))
                        });
                    match choice {
                        Some((pc, ts_out)) => match transcode(&ds, &stored_ts, &ts_out) {
                            Ok(bytes) => match scu
                                .store(
                                    pc,
                                    &inst.sop_class,
                                    &inst.sop_uid,
                                    &bytes,
                                    Some((calling, m.message_id())),
                                )
                                .await
                            {
                                Ok(s) if s.is_success() => Outcome::Ok,
                                Ok(s) if s.is_warning() => Outcome::Warning,
                                Ok(_) => Outcome::Failed,
                                Err(e) => {
                                    tracing::warn!(error = %e, "C-MOVE sub-operation failed");
                                    Outcome::Failed
                                }
                            },
                            Err(_) => Outcome::Failed,
                        },
                        None => Outcome::Failed,
                    }
                }
                Err(_) => Outcome::Failed,
            };
            rsp.record(ok, &inst.sop_uid);
            rsp.pending(assoc).await?;
        }
        scu.release().await.ok();
        rsp.finish_counts(assoc).await
    }

    async fn c_get<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        rx: &mut Receiver,
        m: &Message,
    ) -> Result<(), DimseError> {
        let ts = pc_ts(assoc, m.pc_id);
        let mut rsp = RetrieveResponder::new(cmd::C_GET_RSP, m, self.cfg.idle_timeout);
        let instances = match self.resolve(&ts, m.data.as_deref()).await {
            Ok(i) => i,
            Err((status, c)) => return rsp.finish(assoc, status, Some(&c)).await,
        };
        rsp.remaining = instances.len() as u16;
        let mut next_id: u16 = 1000;
        for inst in &instances {
            let outcome = match self.prepare(inst).await {
                Ok((ds, stored_ts)) => {
                    let pcs: Vec<(u8, String)> = assoc
                        .presentation_contexts()
                        .iter()
                        .filter(|pc| {
                            pc.reason == PresentationContextResultReason::Acceptance
                                && pc.abstract_syntax.trim_end_matches('\0') == inst.sop_class
                        })
                        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_owned()))
                        .collect();
                    let choice = pcs
                        .iter()
                        .find(|(_, t)| *t == stored_ts)
                        .or_else(|| {
                            pcs.iter()
                                .find(|(_, t)| msg_uncompressed(t) && msg_uncompressed(&stored_ts))
                        })
                        .cloned();
                    match choice {
                        Some((pc, ts_out)) => match transcode(&ds, &stored_ts, &ts_out) {
                            Ok(bytes) => {
                                next_id = next_id.wrapping_add(1);
                                let command = msg::encode_command(vec![
                                    el_ui(tags::AFFECTED_SOP_CLASS_UID, &inst.sop_class),
                                    el_u16(tags::COMMAND_FIELD, cmd::C_STORE_RQ),
                                    el_u16(tags::MESSAGE_ID, next_id),
                                    el_u16(tags::PRIORITY, 0),
                                    el_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000),
                                    el_ui(tags::AFFECTED_SOP_INSTANCE_UID, &inst.sop_uid),
                                ])?;
                                msg::send(assoc, pc, command, Some(&bytes), self.cfg.idle_timeout)
                                    .await?;
                                match rx.receive(assoc, 1 << 20).await? {
                                    Incoming::Message(r) if r.field() == cmd::C_STORE_RSP => {
                                        let st = msg::get_u16(&r.command, tags::STATUS)
                                            .unwrap_or(0xFFFF);
                                        if st == 0 {
                                            Outcome::Ok
                                        } else if st == 1 || st & 0xF000 == 0xB000 {
                                            Outcome::Warning
                                        } else {
                                            Outcome::Failed
                                        }
                                    }
                                    Incoming::Message(r) if r.field() == cmd::C_CANCEL_RQ => {
                                        return rsp.finish(assoc, 0xFE00, None).await;
                                    }
                                    Incoming::Message(_) => Outcome::Failed,
                                    Incoming::Released | Incoming::Aborted => {
                                        return Err(DimseError::Aborted);
                                    }
                                }
                            }
                            Err(_) => Outcome::Failed,
                        },
                        None => Outcome::Failed,
                    }
                }
                Err(_) => Outcome::Failed,
            };
            rsp.record(outcome, &inst.sop_uid);
            rsp.pending(assoc).await?;
        }
        rsp.finish_counts(assoc).await
    }

    async fn resolve(
        &self,
        ts: &str,
        data: Option<&[u8]>,
    ) -> Result<Vec<InstanceRef>, (u16, String)> {
        let (q, _) = self.parse_identifier(ts, data)?;
        if q.keys
            .iter()
            .all(|(_, m)| *m == meridian_core::Matcher::Universal)
        {
            return Err((0xA900, "a retrieve needs at least one unique key".into()));
        }
        self.store()
            .instances_for_query(&q, &scope())
            .await
            .map_err(|e| (0xA701, e.to_string()))
    }

    /// Reads a stored file and returns its data set bytes and transfer syntax.
    /// The stored data set (without its meta group) and its transfer syntax.
    async fn prepare(&self, inst: &InstanceRef) -> Result<(bytes::Bytes, String), String> {
        let bytes = self
            .store()
            .read(&inst.key)
            .await
            .map_err(|e| e.to_string())?;
        let p10 = parse::split_part10(&bytes).map_err(|e| e.to_string())?;
        Ok((bytes.slice(p10.dataset_offset..), p10.transfer_syntax))
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Warning,
    Failed,
}

/// Tracks and sends C-MOVE / C-GET responses.
struct RetrieveResponder {
    field: u16,
    pc_id: u8,
    message_id: u16,
    sop_class: String,
    remaining: u16,
    completed: u16,
    failed: u16,
    warning: u16,
    failed_uids: Vec<String>,
    /// Write timeout of the association.
    idle: Duration,
}

impl RetrieveResponder {
    fn new(field: u16, m: &Message, idle: Duration) -> Self {
        RetrieveResponder {
            idle,
            field,
            pc_id: m.pc_id,
            message_id: m.message_id(),
            sop_class: m.str(tags::AFFECTED_SOP_CLASS_UID),
            remaining: 0,
            completed: 0,
            failed: 0,
            warning: 0,
            failed_uids: Vec::new(),
        }
    }

    fn record(&mut self, o: Outcome, uid: &str) {
        self.remaining = self.remaining.saturating_sub(1);
        match o {
            Outcome::Ok => self.completed += 1,
            Outcome::Warning => self.warning += 1,
            Outcome::Failed => {
                self.failed += 1;
                self.failed_uids.push(uid.to_owned());
            }
        }
    }

    fn command(
        &self,
        status: u16,
        counts: bool,
        has_data: bool,
        comment: Option<&str>,
    ) -> Result<Vec<u8>, DimseError> {
        set_status(status);
        let mut els = vec![
            el_ui(tags::AFFECTED_SOP_CLASS_UID, &self.sop_class),
            el_u16(tags::COMMAND_FIELD, self.field),
            el_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, self.message_id),
            el_u16(
                tags::COMMAND_DATA_SET_TYPE,
                if has_data { 0x0000 } else { msg::NO_DATASET },
            ),
            el_u16(tags::STATUS, status),
        ];
        if counts {
            if status == 0xFF00 {
                els.push(el_u16(
                    tags::NUMBER_OF_REMAINING_SUBOPERATIONS,
                    self.remaining,
                ));
            }
            els.push(el_u16(
                tags::NUMBER_OF_COMPLETED_SUBOPERATIONS,
                self.completed,
            ));
            els.push(el_u16(tags::NUMBER_OF_FAILED_SUBOPERATIONS, self.failed));
            els.push(el_u16(tags::NUMBER_OF_WARNING_SUBOPERATIONS, self.warning));
        }
        if let Some(c) = comment {
            els.push(el_error_comment(c));
        }
        msg::encode_command(els)
    }

    async fn pending<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
    ) -> Result<(), DimseError> {
        if self.remaining == 0 {
            return Ok(());
        }
        let c = self.command(0xFF00, true, false, None)?;
        msg::send(assoc, self.pc_id, c, None, self.idle).await
    }

    async fn finish<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        status: u16,
        comment: Option<&str>,
    ) -> Result<(), DimseError> {
        let c = self.command(status, status == 0 || status == 0xFE00, false, comment)?;
        msg::send(assoc, self.pc_id, c, None, self.idle).await
    }

    async fn finish_counts<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
    ) -> Result<(), DimseError> {
        if self.failed == 0 && self.warning == 0 {
            return self.finish(assoc, 0, None).await;
        }
        let status = if self.completed == 0 && self.warning == 0 {
            0xA702
        } else {
            0xB000
        };
        let mut ds = InMemDicomObject::new_empty();
        ds.put(DataElement::new(
            tags::FAILED_SOP_INSTANCE_UID_LIST,
            VR::UI,
            PrimitiveValue::Strs(self.failed_uids.clone().into()),
        ));
        let data = msg::encode_dataset(&ds, msg::IMPLICIT_LE, false)?;
        let has_data = !self.failed_uids.is_empty();
        let c = self.command(status, true, has_data, Some("some sub-operations failed"))?;
        msg::send(
            assoc,
            self.pc_id,
            c,
            has_data.then_some(data.as_slice()),
            self.idle,
        )
        .await
    }
}

/// A C-STORE data set written to its file while it arrives.
struct StoreSink(meridian_store::ingest::Stream);

impl msg::DataSink for StoreSink {
    fn feed(&mut self, all: &[u8]) {
        self.0.feed(all);
    }
    fn complete(&mut self) {
        self.0.complete();
    }
}

fn pc_ts<S>(assoc: &AsyncServerAssociation<S>, pc_id: u8) -> String {
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == pc_id)
        .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_owned())
        .unwrap_or_else(|| msg::IMPLICIT_LE.to_owned())
}

/// An error and its causes, `: `-separated (dicom-ul's TLS errors keep the
/// reason, e.g. a missing client certificate, in their source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}

fn msg_uncompressed(ts: &str) -> bool {
    matches!(
        ts,
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
    )
}

/// Re-encodes an uncompressed data set into another uncompressed transfer syntax.
pub fn transcode<'a>(ds: &'a [u8], from: &str, to: &str) -> Result<Cow<'a, [u8]>, String> {
    if from == to {
        return Ok(Cow::Borrowed(ds));
    }
    let obj = parse::parse_dataset(ds, from, &Limits::default()).map_err(|e| e.to_string())?;
    let utf8 =
        parse::get_str(&obj, tags::SPECIFIC_CHARACTER_SET).is_some_and(|c| c.contains("192"));
    msg::encode_dataset(&obj, to, utf8)
        .map(Cow::Owned)
        .map_err(|e| e.to_string())
}

#[allow(dead_code)]
fn tag_u32(t: Tag) -> u32 {
    (u32::from(t.0) << 16) | u32::from(t.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_store::accounts::SiteAe;

    fn registry(quarantine: bool) -> AeRegistry {
        let r = AeRegistry::new(quarantine);
        r.load(vec![
            SiteAe {
                ae_title: "FREE".into(),
                site_id: "a".into(),
                host: None,
            },
            SiteAe {
                ae_title: "BOUND".into(),
                site_id: "b".into(),
                host: Some("10.9.9.9".into()),
            },
        ]);
        r
    }

    fn check(r: &AeRegistry, calling: &str, ip: &str) -> (bool, Decision) {
        let c = AeCheck {
            registry: r.clone(),
            peer: ip.parse().expect("test address"),
            decision: Arc::default(),
        };
        let ok = c.check_access("MERIDIAN", calling, "MERIDIAN", None);
        if let Err(reason) = &ok {
            assert_eq!(
                *reason,
                AssociationRJServiceUserReason::CallingAETitleNotRecognized
            );
        }
        (ok.is_ok(), c.decision.get().cloned().expect("decided"))
    }

    #[test]
    fn a_bound_title_is_rejected_from_another_address() {
        let r = registry(false);
        assert_eq!(
            check(&r, "BOUND", "127.0.0.1"),
            (
                false,
                Err((
                    "BOUND".into(),
                    "calling AE title is registered for another address"
                ))
            )
        );
        assert_eq!(check(&r, "BOUND", "10.9.9.9"), (true, Ok("b".into())));
        assert_eq!(check(&r, "FREE  ", "127.0.0.1"), (true, Ok("a".into())));
    }

    #[test]
    fn unknown_titles_are_rejected_unless_quarantined() {
        let (ok, d) = check(&registry(false), "WHO", "127.0.0.1");
        assert!(!ok);
        assert_eq!(
            d,
            Err(("WHO".into(), "calling AE title is not registered to a site"))
        );
        let q = registry(true);
        assert_eq!(
            check(&q, "WHO", "127.0.0.1"),
            (true, Ok(QUARANTINE_SITE.into()))
        );
        // Quarantine does not open a bound title to other addresses.
        assert!(!check(&q, "BOUND", "127.0.0.1").0);
    }

    #[test]
    fn the_shared_options_refuse_without_a_peer() {
        assert!(NoPeer.check_access("A", "B", "C", None).is_err());
    }
}
