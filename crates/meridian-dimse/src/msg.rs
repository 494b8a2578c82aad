//! DIMSE messages (PS3.7): command sets and the P-DATA exchange.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::{Association, AsyncAssociation};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

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
}

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

/// Receives the next DIMSE message, reassembling command and data fragments.
/// Data beyond `max_data` bytes is read and discarded (`overflow`).
/// `size_hint` is the expected data set size (e.g. the previous one on this
/// association: a series' images are alike), so the buffer is sized once
/// instead of grown and copied.
pub async fn receive<A, S>(
    assoc: &mut A,
    max_data: usize,
    size_hint: usize,
) -> Result<Incoming, DimseError>
where
    A: AsyncAssociation<S> + Association + Send,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut cmd: Vec<u8> = Vec::new();
    let mut command: Option<InMemDicomObject> = None;
    let mut data: Vec<u8> = Vec::new();
    let mut overflow = false;
    #[allow(unused_assignments)]
    let mut pc_id = 0u8;
    loop {
        let pdu = AsyncAssociation::receive(assoc).await?;
        match pdu {
            Pdu::PData { data: pdvs } => {
                for pdv in pdvs {
                    pc_id = pdv.presentation_context_id;
                    match pdv.value_type {
                        PDataValueType::Command => {
                            if cmd.len() + pdv.data.len() > 64 * 1024 {
                                return Err(DimseError::BadCommand(
                                    "command set larger than 64 KiB".into(),
                                ));
                            }
                            cmd.extend_from_slice(&pdv.data);
                            if pdv.is_last {
                                let ts =
                                    TransferSyntaxRegistry.get(IMPLICIT_LE).ok_or_else(|| {
                                        DimseError::BadCommand("no implicit VR LE".into())
                                    })?;
                                let obj =
                                    InMemDicomObject::read_dataset_with_ts(cmd.as_slice(), ts)
                                        .map_err(|e| DimseError::BadCommand(e.to_string()))?;
                                let has_data = get_u16(&obj, tags::COMMAND_DATA_SET_TYPE)
                                    .unwrap_or(NO_DATASET)
                                    != NO_DATASET;
                                if !has_data {
                                    return Ok(Incoming::Message(Message {
                                        pc_id,
                                        command: obj,
                                        data: None,
                                        overflow: false,
                                    }));
                                }
                                command = Some(obj);
                            }
                        }
                        PDataValueType::Data => {
                            if command.is_none() {
                                return Err(DimseError::Unexpected("data before command".into()));
                            }
                            if !overflow && data.len() + pdv.data.len() > max_data {
                                overflow = true;
                                data = Vec::new();
                            }
                            let is_last = pdv.is_last;
                            if !overflow {
                                if data.is_empty() {
                                    // The first fragment: take it, and leave room for a few more.
                                    data = pdv.data;
                                    if !is_last {
                                        let want = if size_hint > data.len() {
                                            size_hint + size_hint / 64
                                        } else {
                                            data.len() * 8
                                        };
                                        data.reserve(want.min(max_data).saturating_sub(data.len()));
                                    }
                                } else {
                                    data.extend_from_slice(&pdv.data);
                                }
                            }
                            if is_last {
                                let command = command
                                    .take()
                                    .ok_or_else(|| DimseError::Unexpected("no command".into()))?;
                                let data = if overflow {
                                    None
                                } else {
                                    Some(std::mem::take(&mut data))
                                };
                                return Ok(Incoming::Message(Message {
                                    pc_id,
                                    command,
                                    data,
                                    overflow,
                                }));
                            }
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                AsyncAssociation::send(assoc, &Pdu::ReleaseRP).await?;
                return Ok(Incoming::Released);
            }
            Pdu::AbortRQ { .. } => return Ok(Incoming::Aborted),
            other => {
                return Err(DimseError::Unexpected(
                    other.short_description().to_string(),
                ));
            }
        }
    }
}

/// Sends a command (and optional data set) on a presentation context,
/// splitting data into PDUs no larger than the peer accepts.
pub async fn send<A, S>(
    assoc: &mut A,
    pc_id: u8,
    command: Vec<u8>,
    data: Option<&[u8]>,
) -> Result<(), DimseError>
where
    A: AsyncAssociation<S> + Association + Send,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer_max = assoc.peer_max_pdu_length();
    let chunk = if peer_max == 0 {
        1 << 20
    } else {
        (peer_max as usize).saturating_sub(6).max(1024)
    };
    let mut pos = 0;
    while pos < command.len() || pos == 0 {
        let end = (pos + chunk).min(command.len());
        AsyncAssociation::send(
            assoc,
            &Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type: PDataValueType::Command,
                    is_last: end == command.len(),
                    data: command[pos..end].to_vec(),
                }],
            },
        )
        .await?;
        pos = end;
        if pos >= command.len() {
            break;
        }
    }
    if let Some(d) = data {
        let mut pos = 0;
        loop {
            let end = (pos + chunk).min(d.len());
            AsyncAssociation::send(
                assoc,
                &Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: pc_id,
                        value_type: PDataValueType::Data,
                        is_last: end == d.len(),
                        data: d[pos..end].to_vec(),
                    }],
                },
            )
            .await?;
            pos = end;
            if pos >= d.len() {
                break;
            }
        }
    }
    Ok(())
}
