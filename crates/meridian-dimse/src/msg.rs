//! DIMSE messages (PS3.7): command sets and the P-DATA exchange.

use bytes::{Buf, BufMut, BytesMut};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::{Association, AsyncAssociation};
use dicom_ul::pdu::Pdu;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Command field values (PS3.7 E.1).
pub mod cmd {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// CommandDataSetType value meaning "no data set".
pub const NO_DATASET: u16 = 0x0101;

#[derive(Debug, Error)]
pub enum DimseError {
    #[error("upper layer: {0}")]
    Ul(#[from] dicom_ul::association::Error),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed command set: {0}")]
    BadCommand(String),
    #[error("unexpected PDU: {0}")]
    Unexpected(String),
    #[error("peer aborted the association")]
    Aborted,
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// One received DIMSE message.
pub struct Message {
    pub pc_id: u8,
    pub command: InMemDicomObject,
    /// The data set, if any. `None` with `overflow` set when it exceeded the limit.
    pub data: Option<Vec<u8>>,
    pub overflow: bool,
    /// The sink that was fed the data set while it arrived (see
    /// [`Receiver::receive_with`]), when the whole data set went through it.
    pub sink: Option<Box<dyn DataSink>>,
}

/// Takes a message's data set while it arrives.
pub trait DataSink: Send + Sync + std::any::Any {
    /// `all`: the data set received so far (each call sees it grown by the
    /// fragment just read).
    fn feed(&mut self, all: &[u8]);
    /// The last fragment has been fed: the data set is complete.
    fn complete(&mut self) {}
}

/// Opens a [`DataSink`] for a message whose command set (and presentation
/// context) has just arrived and announces a data set, or declines.
pub type OpenSink<'a> = dyn FnMut(&InMemDicomObject, u8) -> Option<Box<dyn DataSink>> + Send + 'a;

impl Message {
    pub fn field(&self) -> u16 {
        get_u16(&self.command, tags::COMMAND_FIELD).unwrap_or(0)
    }
    pub fn message_id(&self) -> u16 {
        get_u16(&self.command, tags::MESSAGE_ID).unwrap_or(0)
    }
    pub fn str(&self, tag: Tag) -> String {
        get_string(&self.command, tag)
    }
}

/// What `receive` got.
pub enum Incoming {
    Message(Message),
    Released,
    Aborted,
}

pub fn get_u16(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag)?.to_int::<u16>().ok()
}

pub fn get_string(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        })
        .unwrap_or_default()
}

/// Builds a command set (implicit VR little endian, with group length).
pub fn encode_command(elements: Vec<DataElement<InMemDicomObject>>) -> Result<Vec<u8>, DimseError> {
    let obj = InMemDicomObject::command_from_element_iter(elements);
    encode_dataset(&obj, IMPLICIT_LE, false)
}

/// Encodes a data set in a transfer syntax (UTF-8 text when `utf8`).
pub fn encode_dataset(
    obj: &InMemDicomObject,
    ts_uid: &str,
    utf8: bool,
) -> Result<Vec<u8>, DimseError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| DimseError::Encode(format!("unknown transfer syntax {ts_uid}")))?;
    let mut out = Vec::new();
    let cs = if utf8 {
        SpecificCharacterSet::ISO_IR_192
    } else {
        SpecificCharacterSet::default()
    };
    obj.write_dataset_with_ts_cs(&mut out, ts, cs)
        .map_err(|e| DimseError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn el_u16(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

pub fn el_ui(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tag,
        VR::UI,
        PrimitiveValue::from(v.trim_end_matches(['\0', ' '])),
    )
}

pub fn el_ae(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::AE, PrimitiveValue::from(v))
}

/// An Error Comment (0000,0902): LO, at most 64 characters.
pub fn el_error_comment(msg: &str) -> DataElement<InMemDicomObject> {
    let mut s: String = msg
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
        .take(64)
        .collect();
    if s.is_empty() {
        s.push_str("error");
    }
    DataElement::new(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(s))
}

/// The largest command set accepted (a C-FIND identifier travels as data).
const MAX_COMMAND: usize = 64 * 1024;
/// The largest PDU other than P-DATA-TF read after association (A-RELEASE
/// and A-ABORT carry 4 bytes).
const MAX_CONTROL_PDU: usize = 64 * 1024;
/// Payload left in a PDV at or above which the rest is read from the socket
/// straight into the message buffer instead of through the read buffer.
const DIRECT_READ: usize = 16 * 1024;
/// Read-buffer capacity kept between reads.
const READ_CHUNK: usize = 64 * 1024;
/// The most buffer reserved ahead of bytes that have not arrived yet.
const GUESS_MAX: usize = 64 << 20;
/// The most PDV bytes a P-DATA-TF may carry past the end of a message
/// (they are kept in the read buffer for the next one).
const MAX_CARRY: usize = 1 << 20;
/// Data buffers up to this size are kept for the association's next message.
const KEEP_BUFFER: usize = 16 << 20;

/// The receiving side of an association: reads PDUs from the association's
/// socket and read buffer (the same state dicom-ul's own `receive` uses, so
/// the two can alternate at PDU boundaries) and reassembles DIMSE messages.
///
/// P-DATA payloads are copied once, from the socket (or the read buffer)
/// into the message buffer; no PDU is ever held whole, so memory is bounded
/// by the data limit whatever PDU lengths a peer announces.
pub struct Receiver {
    /// A read that waits longer than this for bytes ends the association.
    pub idle: Duration,
    /// The last data set's size: a series' images are alike, so the next
    /// buffer is sized once instead of grown and copied.
    size_hint: usize,
    /// A data buffer given back by [`Receiver::recycle`] (its pages are
    /// already mapped: no page faults to fill it again).
    spare: Vec<u8>,
}

impl Receiver {
    pub fn new(idle: Duration) -> Receiver {
        Receiver {
            idle,
            size_hint: 0,
            spare: Vec::new(),
        }
    }

    /// Gives a message's data buffer back for the next message.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= KEEP_BUFFER && buf.capacity() > self.spare.capacity() {
            buf.clear();
            self.spare = buf;
        }
    }

    /// Receives the next DIMSE message, reassembling command and data
    /// fragments. Data beyond `max_data` bytes is read and discarded
    /// (`overflow`).
    pub async fn receive<A, S>(
        &mut self,
        assoc: &mut A,
        max_data: usize,
    ) -> Result<Incoming, DimseError>
    where
        A: AsyncAssociation<S> + Association + Send,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.receive_with(assoc, max_data, &mut |_, _| None).await
    }

    /// [`Receiver::receive`], offering each data set to `open_sink` once its
    /// command set is in: a sink it returns is fed every fragment as it
    /// arrives and comes back with the message. A data set over the limit
    /// drops its sink.
    pub async fn receive_with<A, S>(
        &mut self,
        assoc: &mut A,
        max_data: usize,
        open_sink: &mut OpenSink<'_>,
    ) -> Result<Incoming, DimseError>
    where
        A: AsyncAssociation<S> + Association + Send,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (stream, buf) = assoc.get_mut();
        let mut wire = Wire {
            stream,
            buf,
            idle: self.idle,
        };
        let mut msg = Reassembly {
            started: false,
            cmd: Vec::new(),
            command: None,
            data: Vec::new(),
            overflow: false,
            pc_id: 0,
            sink: None,
        };
        let control = loop {
            wire.fill(6).await?;
            let pdu_type = wire.buf[0];
            let len = be_u32(&wire.buf[2..6]) as usize;
            if pdu_type != 0x04 {
                if len > MAX_CONTROL_PDU {
                    return Err(DimseError::Unexpected(format!(
                        "PDU type 0x{pdu_type:02X} of {len} bytes"
                    )));
                }
                wire.fill(6 + len).await?;
                let raw = wire.buf.split_to(6 + len);
                break raw;
            }
            wire.buf.advance(6);
            let mut left = len;
            while left > 0 {
                if left < 6 {
                    return Err(DimseError::Unexpected(
                        "P-DATA-TF with a truncated PDV item".into(),
                    ));
                }
                wire.fill(6).await?;
                let item = be_u32(&wire.buf[0..4]) as usize;
                let pc_id = wire.buf[4];
                let header = wire.buf[5];
                if item < 2 || item > left - 4 {
                    return Err(DimseError::Unexpected(format!(
                        "PDV item of {item} bytes in a P-DATA-TF of {left} bytes left"
                    )));
                }
                wire.buf.advance(6);
                left -= 4 + item;
                let n = item - 2;
                if msg.started && msg.pc_id != pc_id {
                    return Err(DimseError::Unexpected(format!(
                        "message fragments on presentation contexts {} and {pc_id}",
                        msg.pc_id
                    )));
                }
                msg.started = true;
                msg.pc_id = pc_id;
                let is_last = header & 0x02 != 0;
                let is_data = header & 0x01 == 0;
                let done = if !is_data {
                    if msg.cmd.len() + n > MAX_COMMAND {
                        return Err(DimseError::BadCommand(
                            "command set larger than 64 KiB".into(),
                        ));
                    }
                    wire.read_into(&mut msg.cmd, n).await?;
                    if is_last {
                        let no_data = msg.command_complete()?;
                        if let (false, Some(c)) = (no_data, msg.command.as_ref()) {
                            msg.sink = open_sink(c, pc_id);
                        }
                        no_data
                    } else {
                        false
                    }
                } else {
                    if msg.command.is_none() {
                        return Err(DimseError::Unexpected("data before command".into()));
                    }
                    if !msg.overflow && msg.data.len() + n > max_data {
                        msg.overflow = true;
                        msg.data = Vec::new();
                        msg.sink = None;
                    }
                    if msg.overflow {
                        wire.skip(n).await?;
                    } else {
                        if msg.data.capacity() == 0 {
                            msg.data = std::mem::take(&mut self.spare);
                            // Room for the whole data set when its size is
                            // known from the last one, else a few fragments.
                            // (A guess from one fragment stays modest: the
                            // peer has not sent the bytes yet.)
                            let want = if is_last {
                                n
                            } else if self.size_hint > n {
                                self.size_hint + self.size_hint / 64
                            } else {
                                n.saturating_mul(8).min(GUESS_MAX)
                            };
                            msg.data.reserve(want.min(max_data));
                        }
                        wire.read_into(&mut msg.data, n).await?;
                        if let Some(sink) = msg.sink.as_mut() {
                            sink.feed(&msg.data);
                            if is_last {
                                sink.complete();
                            }
                        }
                    }
                    is_last
                };
                if done {
                    if left > 0 {
                        // More PDVs in this PDU belong to the next message:
                        // leave them in the read buffer as a P-DATA-TF of their own.
                        if left > MAX_CARRY {
                            return Err(DimseError::Unexpected(format!(
                                "{left} bytes of P-DATA-TF after the end of a message"
                            )));
                        }
                        wire.fill(left).await?;
                        wire.unread_pdata_header(left);
                    }
                    if !msg.overflow && msg.command.is_some() && !msg.data.is_empty() {
                        self.size_hint = msg.data.len();
                    }
                    return msg.finish(is_data);
                }
            }
        };
        match control[0] {
            0x05 => {
                AsyncAssociation::send(assoc, &Pdu::ReleaseRP).await?;
                Ok(Incoming::Released)
            }
            0x07 => Ok(Incoming::Aborted),
            t => Err(DimseError::Unexpected(format!(
                "unexpected PDU type 0x{t:02X}"
            ))),
        }
    }
}

/// A message being reassembled.
struct Reassembly {
    /// A fragment has arrived (its context is `pc_id`).
    started: bool,
    cmd: Vec<u8>,
    command: Option<InMemDicomObject>,
    data: Vec<u8>,
    overflow: bool,
    pc_id: u8,
    sink: Option<Box<dyn DataSink>>,
}

impl Reassembly {
    /// Parses the complete command set; true when no data set follows.
    fn command_complete(&mut self) -> Result<bool, DimseError> {
        let ts = TransferSyntaxRegistry
            .get(IMPLICIT_LE)
            .ok_or_else(|| DimseError::BadCommand("no implicit VR LE".into()))?;
        let obj = InMemDicomObject::read_dataset_with_ts(self.cmd.as_slice(), ts)
            .map_err(|e| DimseError::BadCommand(e.to_string()))?;
        let has_data =
            get_u16(&obj, tags::COMMAND_DATA_SET_TYPE).unwrap_or(NO_DATASET) != NO_DATASET;
        self.command = Some(obj);
        Ok(!has_data)
    }

    /// The complete message; `with_data` when it ended with its data set
    /// (else its command said none follows).
    fn finish(self, with_data: bool) -> Result<Incoming, DimseError> {
        let command = self
            .command
            .ok_or_else(|| DimseError::Unexpected("no command".into()))?;
        let whole = with_data && !self.overflow;
        let data = whole.then_some(self.data);
        Ok(Incoming::Message(Message {
            pc_id: self.pc_id,
            command,
            data,
            overflow: self.overflow,
            sink: self.sink.filter(|_| whole),
        }))
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The association's socket and read buffer.
struct Wire<'a, S> {
    stream: &'a mut S,
    buf: &'a mut BytesMut,
    idle: Duration,
}

/// One read from the socket into `into`, bounded by the idle timeout.
async fn read_some<S: AsyncRead + Unpin, B: BufMut>(
    stream: &mut S,
    into: &mut B,
    idle: Duration,
) -> Result<usize, DimseError> {
    match tokio::time::timeout(idle, stream.read_buf(into)).await {
        Err(_) => Err(DimseError::Unexpected(format!(
            "no data from the peer for {} s",
            idle.as_secs()
        ))),
        Ok(Err(e)) => Err(DimseError::Io(e)),
        Ok(Ok(0)) => Err(DimseError::Unexpected(
            "connection closed by the peer".into(),
        )),
        Ok(Ok(n)) => Ok(n),
    }
}

impl<S: AsyncRead + Unpin> Wire<'_, S> {
    /// Until the read buffer holds at least `n` bytes.
    async fn fill(&mut self, n: usize) -> Result<(), DimseError> {
        while self.buf.len() < n {
            self.buf.reserve(READ_CHUNK.max(n - self.buf.len()));
            read_some(self.stream, self.buf, self.idle).await?;
        }
        Ok(())
    }

    /// Appends the next `n` payload bytes to `dst` (growing it as bytes
    /// arrive, not by what the peer announced).
    async fn read_into(&mut self, dst: &mut Vec<u8>, mut n: usize) -> Result<(), DimseError> {
        while n > 0 {
            if dst.capacity() - dst.len() < n.min(READ_CHUNK) {
                dst.reserve(n.min(GUESS_MAX));
            }
            if self.buf.is_empty() && n >= DIRECT_READ {
                let mut limited = BufMut::limit(&mut *dst, n);
                n -= read_some(self.stream, &mut limited, self.idle).await?;
                continue;
            }
            if self.buf.is_empty() {
                self.fill(1).await?;
            }
            let take = n.min(self.buf.len());
            dst.extend_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            n -= take;
        }
        Ok(())
    }

    /// Discards the next `n` payload bytes.
    async fn skip(&mut self, mut n: usize) -> Result<(), DimseError> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill(1).await?;
            }
            let take = n.min(self.buf.len());
            self.buf.advance(take);
            n -= take;
        }
        Ok(())
    }

    /// Puts a P-DATA-TF header before the `len` bytes at the front of the
    /// read buffer.
    fn unread_pdata_header(&mut self, len: usize) {
        let mut b = BytesMut::with_capacity(6 + self.buf.len());
        b.put_u8(0x04);
        b.put_u8(0);
        b.put_u32(len as u32);
        b.extend_from_slice(self.buf);
        *self.buf = b;
    }
}

/// Sends a command (and optional data set) on a presentation context,
/// splitting data into PDUs no larger than the peer accepts. Each PDU is
/// assembled once in a reused buffer and written to the association's
/// socket; a write that stalls longer than `timeout` ends the association.
pub async fn send<A, S>(
    assoc: &mut A,
    pc_id: u8,
    command: Vec<u8>,
    data: Option<&[u8]>,
    timeout: Duration,
) -> Result<(), DimseError>
where
    A: AsyncAssociation<S> + Association + Send,
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let peer_max = assoc.peer_max_pdu_length();
    // PDV payload per PDU: the peer's maximum less the PDV item header.
    let chunk = if peer_max == 0 {
        1 << 20
    } else {
        (peer_max as usize).saturating_sub(6).max(1024)
    };
    let (stream, _) = assoc.get_mut();
    let total = command.len() + data.map_or(0, <[u8]>::len);
    let mut pdu = Vec::with_capacity(12 + chunk.min(total));
    let parts = std::iter::once((true, command.as_slice())).chain(data.map(|d| (false, d)));
    for (is_command, bytes) in parts {
        let mut pos = 0;
        loop {
            let end = (pos + chunk).min(bytes.len());
            let n = end - pos;
            pdu.clear();
            pdu.extend_from_slice(&[0x04, 0]);
            pdu.extend_from_slice(&((n + 6) as u32).to_be_bytes());
            pdu.extend_from_slice(&((n + 2) as u32).to_be_bytes());
            pdu.push(pc_id);
            pdu.push(u8::from(is_command) | (u8::from(end == bytes.len()) << 1));
            pdu.extend_from_slice(&bytes[pos..end]);
            write_timed(stream, &pdu, timeout).await?;
            pos = end;
            if pos >= bytes.len() {
                break;
            }
        }
    }
    match tokio::time::timeout(timeout, stream.flush()).await {
        Ok(r) => r.map_err(DimseError::Io),
        Err(_) => Err(stall(timeout)),
    }
}

async fn write_timed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), DimseError> {
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(r) => r.map_err(DimseError::Io),
        Err(_) => Err(stall(timeout)),
    }
}

fn stall(timeout: Duration) -> DimseError {
    DimseError::Unexpected(format!("the peer read nothing for {} s", timeout.as_secs()))
}
