//! MLLP (Minimal Lower Layer Protocol, release 1) over TCP: a listener and a client helper.
//!
//! A frame is `0x0B <message> 0x1C 0x0D`. The listener:
//! - takes connections while fewer than [`MllpConfig::max_connections`] are open; one more is
//!   accepted and closed at once (logged), so the sender fails fast instead of hanging;
//! - on each connection, reads frames and answers each message before reading the next
//!   (messages are handled one at a time, in order; pipelined frames simply wait);
//! - parses ([`crate::er7::parse`]) and interprets ([`crate::inbound::interpret`]) the message;
//!   a parse error is answered AR ([`crate::ack::nak_unparsed`]), an interpretation error
//!   AR/AE; only a well-formed, interpreted message reaches [`Sink::accept`], whose `Ok`
//!   answers AA and `Err` AE (AR if `reject`). A panicking sink is answered AE 207;
//! - a frame larger than [`MllpConfig::max_message`] is not buffered: its first bytes are kept
//!   (to read MSH for the answer), the rest is discarded up to the end block and the message is
//!   answered AR, ERR 207 "message exceeds N bytes"; the connection stays open. A start block
//!   met while discarding means the framing is lost: the connection is closed;
//! - between frames, CR, LF, space and tab are skipped; any other byte outside a frame (a
//!   non-MLLP client, e.g. HTTP or TLS) closes the connection. A start block inside a frame
//!   discards the unfinished message (the sender gave up on it) and starts a new one. The end
//!   block ends a frame; the CR after it is skipped as whitespace;
//! - closes a connection after [`MllpConfig::idle_timeout`] without a byte received, or when
//!   writing an answer takes longer than that;
//! - logs each message at `info` (peer, MSH-9, MSH-10, acknowledgement code, error code),
//!   never field values of other segments (no patient data).
//!
//! [`serve`] runs until its future is dropped, which also ends every connection task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::ack;
use crate::er7::{self, Header, Limits, ParseError};
use crate::error::Hl7Error;
use crate::inbound::{self, Inbound};

/// Start block.
pub const SB: u8 = 0x0B;
/// End block.
pub const EB: u8 = 0x1C;
/// Carriage return after the end block.
pub const CR: u8 = 0x0D;

/// Where interpreted messages go.
pub trait Sink: Send + Sync + 'static {
    /// Called once for each well-formed, interpreted message, with all its items (one per
    /// order group, see [`crate::inbound`]). Return `Ok` only after the message's effect is
    /// durable; the listener then answers AA. `Err` is answered AE (AR if `reject`).
    fn accept(
        &self,
        peer: SocketAddr,
        header: &Header,
        msg: Vec<Inbound>,
    ) -> impl Future<Output = Result<(), Hl7Error>> + Send;
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct MllpConfig {
    /// Largest message accepted inside a frame, in bytes (default 1 MiB). The parser's
    /// [`Limits::max_message_bytes`] applies too; the smaller one wins.
    pub max_message: usize,
    /// Close a connection after this long without receiving a byte (default 10 minutes).
    pub idle_timeout: Duration,
    /// Most connections open at once (default 64).
    pub max_connections: usize,
    /// Parser limits.
    pub limits: Limits,
}

impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            max_message: 1 << 20,
            idle_timeout: Duration::from_secs(600),
            max_connections: 64,
            limits: Limits::default(),
        }
    }
}

/// Accepts connections on `listener` and serves them until the returned future is dropped.
/// Errors of `accept` itself (e.g. out of file descriptors) are logged and retried after a
/// short pause; this function only returns if the listener's address cannot be read.
pub async fn serve<S: Sink>(
    listener: TcpListener,
    sink: Arc<S>,
    cfg: MllpConfig,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(%local, max_connections = cfg.max_connections, "HL7 MLLP listener started");
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "HL7 MLLP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    warn!(%peer, limit = cfg.max_connections, "HL7 MLLP connection refused: too many connections");
                    drop(stream);
                    continue;
                };
                let sink = Arc::clone(&sink);
                let cfg = Arc::clone(&cfg);
                tasks.spawn(async move {
                    debug!(%peer, "HL7 MLLP connection opened");
                    connection(stream, peer, sink, cfg).await;
                    debug!(%peer, "HL7 MLLP connection closed");
                    drop(permit);
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    warn!("HL7 MLLP connection task panicked");
                }
            }
        }
    }
}

enum State {
    Outside,
    InFrame,
    /// Over the size limit; `total` bytes of the frame seen so far.
    Discarding {
        total: usize,
    },
}

async fn connection<S: Sink>(
    mut stream: TcpStream,
    peer: SocketAddr,
    sink: Arc<S>,
    cfg: Arc<MllpConfig>,
) {
    let max = cfg.max_message.min(cfg.limits.max_message_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame: Vec<u8> = Vec::new();
    let mut state = State::Outside;
    loop {
        let n = match timeout(cfg.idle_timeout, stream.read(&mut buf)).await {
            Err(_) => {
                debug!(%peer, "HL7 MLLP connection idle; closing");
                return;
            }
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "HL7 MLLP read failed");
                return;
            }
            Ok(Ok(0)) => {
                if !matches!(state, State::Outside) {
                    warn!(%peer, "HL7 MLLP peer closed the connection inside a frame");
                }
                return;
            }
            Ok(Ok(n)) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match state {
                State::Outside => {
                    let skip = chunk
                        .iter()
                        .position(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
                        .unwrap_or(chunk.len());
                    chunk = &chunk[skip..];
                    match chunk.first() {
                        None => {}
                        Some(&SB) => {
                            chunk = &chunk[1..];
                            frame.clear();
                            state = State::InFrame;
                        }
                        Some(_) => {
                            warn!(%peer, "HL7 MLLP data outside a frame; closing the connection");
                            return;
                        }
                    }
                }
                State::InFrame => {
                    let stop = chunk.iter().position(|&b| b == EB || b == SB);
                    let part = &chunk[..stop.unwrap_or(chunk.len())];
                    let room = max.saturating_sub(frame.len());
                    if part.len() > room {
                        frame.extend_from_slice(&part[..room]);
                        state = State::Discarding {
                            total: frame.len() + (part.len() - room),
                        };
                        chunk = &chunk[part.len()..];
                        continue;
                    }
                    frame.extend_from_slice(part);
                    chunk = &chunk[part.len()..];
                    match chunk.first() {
                        Some(&EB) => {
                            chunk = &chunk[1..];
                            state = State::Outside;
                            let reply = handle(&frame, peer, sink.as_ref(), &cfg.limits).await;
                            frame.clear();
                            if !write_frame(&mut stream, &reply, cfg.idle_timeout, peer).await {
                                return;
                            }
                        }
                        Some(_) => {
                            warn!(%peer, "HL7 MLLP start block inside a frame; unfinished message discarded");
                            chunk = &chunk[1..];
                            frame.clear();
                        }
                        None => {}
                    }
                }
                State::Discarding { total } => {
                    let stop = chunk.iter().position(|&b| b == EB || b == SB);
                    let len = stop.unwrap_or(chunk.len());
                    let total = total.saturating_add(len);
                    chunk = &chunk[len..];
                    match chunk.first() {
                        Some(&EB) => {
                            chunk = &chunk[1..];
                            state = State::Outside;
                            let err = ParseError::TooLarge {
                                size: total,
                                limit: max,
                            };
                            let reply = ack::nak_unparsed(&frame, &err);
                            log_outcome(peer, &scrape_label(&frame), Err(&Hl7Error::from(&err)));
                            frame.clear();
                            if !write_frame(&mut stream, &reply, cfg.idle_timeout, peer).await {
                                return;
                            }
                        }
                        Some(_) => {
                            warn!(%peer, "HL7 MLLP start block inside an oversized frame; framing lost, closing");
                            return;
                        }
                        None => state = State::Discarding { total },
                    }
                }
            }
        }
    }
}

async fn write_frame(
    stream: &mut TcpStream,
    reply: &[u8],
    limit: Duration,
    peer: SocketAddr,
) -> bool {
    let mut out = Vec::with_capacity(reply.len() + 3);
    out.push(SB);
    out.extend_from_slice(reply);
    out.extend_from_slice(&[EB, CR]);
    match timeout(limit, async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await
    {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "HL7 MLLP write failed");
            false
        }
        Err(_) => {
            debug!(%peer, "HL7 MLLP write timed out");
            false
        }
    }
}

/// Type and control ID for the log, from a message that may not parse: printable, bounded.
struct Label {
    message_type: String,
    control_id: String,
}

fn clean(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect()
}

fn label(h: &Header) -> Label {
    Label {
        message_type: clean(&format!("{}^{}", h.message_type, h.trigger_event), 24),
        control_id: clean(&h.control_id, 40),
    }
}

fn scrape_label(raw: &[u8]) -> Label {
    let raw = er7::trim_start(raw);
    match er7::raw_delimiters(raw) {
        Ok(d) => {
            let f = |n| String::from_utf8_lossy(er7::raw_msh_field(raw, &d, n)).into_owned();
            Label {
                message_type: clean(&f(9), 24),
                control_id: clean(&f(10), 40),
            }
        }
        Err(_) => Label {
            message_type: String::new(),
            control_id: String::new(),
        },
    }
}

fn log_outcome(peer: SocketAddr, l: &Label, outcome: Result<(), &Hl7Error>) {
    match outcome {
        Ok(()) => info!(
            %peer,
            message_type = %l.message_type,
            control_id = %l.control_id,
            ack = "AA",
            "HL7 message accepted"
        ),
        Err(e) => info!(
            %peer,
            message_type = %l.message_type,
            control_id = %l.control_id,
            ack = if e.reject { "AR" } else { "AE" },
            code = e.code,
            location = %e.location.as_ref().map(|l| l.to_string()).unwrap_or_default(),
            "HL7 message not accepted"
        ),
    }
}

/// Parses, interprets, hands over to the sink; returns the acknowledgement.
async fn handle<S: Sink>(raw: &[u8], peer: SocketAddr, sink: &S, limits: &Limits) -> Vec<u8> {
    let msg = match er7::parse(raw, limits) {
        Ok(m) => m,
        Err(e) => {
            log_outcome(peer, &scrape_label(raw), Err(&Hl7Error::from(&e)));
            return ack::nak_unparsed(raw, &e);
        }
    };
    let header = msg.header();
    let outcome = match inbound::interpret(&msg) {
        Err(e) => Err(e),
        Ok(items) => AssertUnwindSafe(sink.accept(peer, header, items))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                warn!(%peer, "HL7 sink panicked");
                Err(Hl7Error::internal(
                    "internal error while storing the message",
                ))
            }),
    };
    log_outcome(peer, &label(header), outcome.as_ref().map(|_| ()));
    ack::ack(header, outcome.as_ref().map(|_| ()))
}

/// Sends one framed message on `stream` and returns the reply without its framing.
/// Bytes before the reply's start block are skipped; bytes after its end block that arrived
/// in the same read (normally just the CR) are discarded. Fails with `InvalidData` when the
/// reply exceeds `max_reply` bytes and `UnexpectedEof` when the peer closes first.
pub async fn send<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    msg: &[u8],
    max_reply: usize,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(msg.len() + 3);
    out.push(SB);
    out.extend_from_slice(msg);
    out.extend_from_slice(&[EB, CR]);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut reply = Vec::new();
    let mut started = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the MLLP reply",
            ));
        }
        let mut chunk = &buf[..n];
        if !started {
            match chunk.iter().position(|&b| b == SB) {
                Some(i) => {
                    started = true;
                    chunk = &chunk[i + 1..];
                }
                None => continue,
            }
        }
        let end = chunk.iter().position(|&b| b == EB);
        let part = &chunk[..end.unwrap_or(chunk.len())];
        if reply.len() + part.len() > max_reply {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("MLLP reply exceeds {max_reply} bytes"),
            ));
        }
        reply.extend_from_slice(part);
        if end.is_some() {
            return Ok(reply);
        }
    }
}
