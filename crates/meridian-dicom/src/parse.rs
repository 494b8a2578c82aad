//! Bounded parsing of untrusted DICOM input and extraction of the indexed
//! attributes.

use std::borrow::Cow;

use dicom_core::Tag;
use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use meridian_core::attrs::{ATTRS, AttrKind};
use meridian_core::validate_uid;
use thiserror::Error;

use crate::scan::{self, Encoding, ScanError};

/// Input size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted object (file or data set), in bytes.
    pub max_object: usize,
    /// Largest accepted single element value, in bytes.
    pub max_element: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_object: 1 << 30,
            max_element: 1 << 30,
        }
    }
}

/// Why an instance was refused. Each variant maps to a DIMSE status and an
/// HTTP failure reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("object of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("not a DICOM Part 10 file: {0}")]
    NotDicom(&'static str),
    #[error("malformed file meta information: {0}")]
    BadMeta(String),
    #[error("unsupported transfer syntax {0}")]
    UnsupportedTransferSyntax(String),
    #[error("malformed data set: {0}")]
    Malformed(String),
    #[error("missing required attribute {0}")]
    Missing(&'static str),
    #[error("invalid UID in {0}: {1}")]
    BadUid(&'static str, String),
    #[error("{0} in the data set does not match {1}")]
    Mismatch(&'static str, &'static str),
}

impl From<ScanError> for ParseError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::ElementTooLarge(..) => ParseError::Malformed(e.to_string()),
            other => ParseError::Malformed(other.to_string()),
        }
    }
}

impl ParseError {
    /// The DIMSE C-STORE failure status for this error (PS3.4 Table B.2-1).
    pub fn dimse_status(&self) -> u16 {
        match self {
            ParseError::TooLarge(..) => 0xA700,
            ParseError::Missing(_) | ParseError::BadUid(..) | ParseError::Mismatch(..) => 0xA900,
            ParseError::UnsupportedTransferSyntax(_) => 0xC000,
            ParseError::NotDicom(_) | ParseError::BadMeta(_) | ParseError::Malformed(_) => 0xC000,
        }
    }

    /// A short machine-readable reason, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::TooLarge(..) => "too_large",
            ParseError::NotDicom(_) => "not_dicom",
            ParseError::BadMeta(_) => "bad_meta",
            ParseError::UnsupportedTransferSyntax(_) => "unsupported_transfer_syntax",
            ParseError::Malformed(_) => "malformed",
            ParseError::Missing(_) => "missing_attribute",
            ParseError::BadUid(..) => "invalid_uid",
            ParseError::Mismatch(..) => "mismatch",
        }
    }
}

/// What the index needs to know about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceInfo {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    /// Decoded values of catalogue attributes present in the data set.
    pub values: Vec<(u32, String)>,
}

impl InstanceInfo {
    pub fn get(&self, tag: u32) -> Option<&str> {
        self.values
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_str())
    }
}

/// The parts of a Part 10 file's meta group Meridian uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10 {
    pub transfer_syntax: String,
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    /// Offset of the data set after the meta group.
    pub dataset_offset: usize,
}

fn trim_value(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// Splits a Part 10 file into its meta information and data set offset,
/// without trusting any length in it.
pub fn split_part10(bytes: &[u8]) -> Result<Part10, ParseError> {
    if bytes.len() < 132 {
        return Err(ParseError::NotDicom(
            "shorter than the 128-byte preamble and DICM prefix",
        ));
    }
    if &bytes[128..132] != b"DICM" {
        return Err(ParseError::NotDicom("no DICM prefix after the preamble"));
    }
    let mut pos = 132;
    let mut out = Part10 {
        transfer_syntax: String::new(),
        sop_class_uid: None,
        sop_instance_uid: None,
        dataset_offset: 0,
    };
    let mut group_end: Option<usize> = None;
    loop {
        if let Some(end) = group_end
            && pos >= end
        {
            break;
        }
        if bytes.len() < pos + 8 {
            break;
        }
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let elem = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = [bytes[pos + 4], bytes[pos + 5]];
        let (len, hdr) = if matches!(&vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC" | b"UR") {
            if bytes.len() < pos + 12 {
                return Err(ParseError::BadMeta("truncated element header".into()));
            }
            (
                u32::from_le_bytes([
                    bytes[pos + 8],
                    bytes[pos + 9],
                    bytes[pos + 10],
                    bytes[pos + 11],
                ]) as usize,
                12,
            )
        } else if vr.iter().all(u8::is_ascii_uppercase) {
            (
                u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize,
                8,
            )
        } else {
            return Err(ParseError::BadMeta(
                "meta group is not explicit VR little endian".into(),
            ));
        };
        let start = pos + hdr;
        if len > bytes.len().saturating_sub(start) || len > 1 << 20 {
            return Err(ParseError::BadMeta(format!(
                "element (0002,{elem:04X}) length {len} runs past the end"
            )));
        }
        let val = &bytes[start..start + len];
        match elem {
            0x0000 if len == 4 => {
                let gl = u32::from_le_bytes([val[0], val[1], val[2], val[3]]) as usize;
                group_end = Some(start + 4 + gl);
            }
            0x0002 => out.sop_class_uid = Some(trim_value(val)),
            0x0003 => out.sop_instance_uid = Some(trim_value(val)),
            0x0010 => out.transfer_syntax = trim_value(val),
            _ => {}
        }
        pos = start + len;
    }
    if let Some(end) = group_end
        && end != pos
    {
        return Err(ParseError::BadMeta(
            "group length does not match the meta elements".into(),
        ));
    }
    if out.transfer_syntax.is_empty() {
        return Err(ParseError::BadMeta(
            "no TransferSyntaxUID (0002,0010)".into(),
        ));
    }
    out.dataset_offset = pos;
    Ok(out)
}

/// Parses a data set in the given transfer syntax: scans it structurally,
/// then decodes it fully. The returned object is safe to use.
pub fn parse_dataset(
    data: &[u8],
    ts_uid: &str,
    limits: &Limits,
) -> Result<InMemDicomObject, ParseError> {
    parse_dataset_with(data, ts_uid, limits, true)
}

/// Like [`parse_dataset`], but decodes only the elements before the
/// top-level Pixel Data (the whole data set is still scanned): what indexing
/// needs, without copying the pixels.
pub fn parse_header(
    data: &[u8],
    ts_uid: &str,
    limits: &Limits,
) -> Result<InMemDicomObject, ParseError> {
    parse_dataset_with(data, ts_uid, limits, false)
}

/// A transfer syntax's entry, the encoding the scanner needs, and whether
/// the data set is deflated.
fn syntax(
    ts_uid: &str,
) -> Result<(&'static dicom_encoding::TransferSyntax, Encoding, bool), ParseError> {
    let ts_uid = ts_uid.trim_end_matches(['\0', ' ']);
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| ParseError::UnsupportedTransferSyntax(ts_uid.to_owned()))?;
    let enc = Encoding {
        explicit_vr: ts_uid != "1.2.840.10008.1.2",
        big_endian: ts.endianness() == dicom_encoding::transfer_syntax::Endianness::Big,
    };
    let deflated = matches!(ts.codec(), dicom_encoding::Codec::Dataset(_));
    Ok((ts, enc, deflated))
}

fn parse_dataset_with(
    data: &[u8],
    ts_uid: &str,
    limits: &Limits,
    pixels: bool,
) -> Result<InMemDicomObject, ParseError> {
    if data.len() > limits.max_object {
        return Err(ParseError::TooLarge(data.len(), limits.max_object));
    }
    let (ts, enc, deflated) = syntax(ts_uid)?;
    let inflated: Cow<[u8]>;
    let body: &[u8] = if deflated {
        inflated = Cow::Owned(inflate_bounded(data, limits.max_object)?);
        &inflated
    } else {
        data
    };
    let info = scan::scan_dataset(body, enc, limits.max_element)?;
    let body = match info.pixel_data_offset {
        Some(off) if !pixels => &body[..off],
        _ => body,
    };
    let obj = if deflated {
        // Already inflated and scanned: decode as explicit VR little endian.
        let ele = TransferSyntaxRegistry
            .get("1.2.840.10008.1.2.1")
            .ok_or_else(|| ParseError::UnsupportedTransferSyntax("1.2.840.10008.1.2.1".into()))?;
        InMemDicomObject::read_dataset_with_ts(body, ele)
    } else {
        InMemDicomObject::read_dataset_with_ts(body, ts)
    };
    obj.map_err(|e| ParseError::Malformed(e.to_string()))
}

/// The instance's facts from the first bytes of a data set still arriving
/// (`prefix`, in transfer syntax `ts_uid`), once everything before Pixel
/// Data is there, with the offset of Pixel Data; `None` before that, for a
/// deflated data set, or when the header is not acceptable (the complete
/// data set then gets the real error). Lets a receiver name and start the
/// instance's file early; [`scan_whole`] checks the complete data set.
pub fn peek_info(prefix: &[u8], ts_uid: &str, limits: &Limits) -> Option<(InstanceInfo, usize)> {
    let (ts, enc, deflated) = syntax(ts_uid).ok()?;
    if deflated {
        return None;
    }
    let off = scan::pixel_data_in_prefix(prefix, enc, limits.max_element)?;
    let obj = InMemDicomObject::read_dataset_with_ts(&prefix[..off], ts).ok()?;
    Some((
        extract(&obj, ts_uid.trim_end_matches(['\0', ' '])).ok()?,
        off,
    ))
}

/// The checks [`parse_header`] makes of a complete, not deflated data set
/// before decoding its header (size limit, every element's structure),
/// returning the offset of Pixel Data. When it equals the offset
/// [`peek_info`] found in a prefix of the same bytes, the header is those
/// same bytes and the peeked facts are the data set's: it need not be
/// decoded again.
pub fn scan_whole(data: &[u8], ts_uid: &str, limits: &Limits) -> Result<Option<usize>, ParseError> {
    if data.len() > limits.max_object {
        return Err(ParseError::TooLarge(data.len(), limits.max_object));
    }
    let (_, enc, deflated) = syntax(ts_uid)?;
    if deflated {
        return Ok(None);
    }
    Ok(scan::scan_dataset(data, enc, limits.max_element)?.pixel_data_offset)
}

fn inflate_bounded(data: &[u8], max: usize) -> Result<Vec<u8>, ParseError> {
    use std::io::Read;
    let mut out = Vec::new();
    let dec = flate2::read::DeflateDecoder::new(data);
    dec.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ParseError::Malformed(format!("deflate: {e}")))?;
    if out.len() > max {
        return Err(ParseError::TooLarge(out.len(), max));
    }
    Ok(out)
}

/// Reads an element as a trimmed string (multiple values joined with `\`).
pub fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    if e.header().is_empty() {
        return None;
    }
    let s = e.to_str().ok()?;
    let s = s.trim_end_matches(['\0', ' ']).trim_start();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Reads a text element, repairing ISO 2022 multi-byte values (see [`crate::charset`]).
pub fn get_text(obj: &InMemDicomObject, tag: Tag, charset: &str) -> Option<String> {
    get_str(obj, tag).map(|v| crate::charset::fix(&v, charset))
}

/// The data set's SpecificCharacterSet, all values joined with `\`.
pub fn charset_of(obj: &InMemDicomObject) -> String {
    get_str(obj, tags::SPECIFIC_CHARACTER_SET).unwrap_or_default()
}

fn required_uid(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &'static str,
) -> Result<String, ParseError> {
    let raw = get_str(obj, tag).ok_or(ParseError::Missing(name))?;
    validate_uid(&raw)
        .map(str::to_owned)
        .map_err(|e| ParseError::BadUid(name, format!("{raw:?}: {e}")))
}

/// Extracts the identity and indexed attributes of a parsed instance.
pub fn extract(obj: &InMemDicomObject, ts_uid: &str) -> Result<InstanceInfo, ParseError> {
    let sop_class_uid = required_uid(obj, tags::SOP_CLASS_UID, "SOPClassUID")?;
    let sop_instance_uid = required_uid(obj, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    let study_uid = required_uid(obj, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series_uid = required_uid(obj, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    let mut values = Vec::new();
    let charset = charset_of(obj);
    for a in ATTRS {
        if matches!(
            a.column,
            "num_series" | "num_instances" | "modalities" | "transfer_syntax"
        ) {
            continue;
        }
        let tag = Tag((a.tag >> 16) as u16, (a.tag & 0xFFFF) as u16);
        if let Some(v) = get_text(obj, tag, &charset) {
            let v = match a.kind {
                AttrKind::PersonName => meridian_core::query::normalize_pn(&v),
                AttrKind::Integer => match v.trim().parse::<i64>() {
                    Ok(n) => n.to_string(),
                    Err(_) => continue,
                },
                AttrKind::Time => v.replace(':', ""),
                _ => v,
            };
            values.push((a.tag, v));
        }
    }
    Ok(InstanceInfo {
        sop_class_uid,
        sop_instance_uid,
        study_uid,
        series_uid,
        transfer_syntax: ts_uid.trim_end_matches(['\0', ' ']).to_owned(),
        values,
    })
}

/// Parses and checks a whole Part 10 file. Returns the data set's offset,
/// the parsed object and its index information.
pub fn parse_part10(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(Part10, InMemDicomObject, InstanceInfo), ParseError> {
    if bytes.len() > limits.max_object {
        return Err(ParseError::TooLarge(bytes.len(), limits.max_object));
    }
    let p10 = split_part10(bytes)?;
    let obj = parse_header(&bytes[p10.dataset_offset..], &p10.transfer_syntax, limits)?;
    let info = extract(&obj, &p10.transfer_syntax)?;
    if p10
        .sop_instance_uid
        .as_deref()
        .is_some_and(|m| m != info.sop_instance_uid)
    {
        return Err(ParseError::Mismatch(
            "SOPInstanceUID",
            "MediaStorageSOPInstanceUID",
        ));
    }
    Ok((p10, obj, info))
}

/// Implementation Class UID Meridian writes in file meta groups.
pub const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1541.1";
pub const IMPLEMENTATION_VERSION: &str = "MERIDIAN_010";

/// Builds a Part 10 file around a data set received over the network,
/// keeping the data set bytes exactly as received.
pub fn build_part10(
    dataset: &[u8],
    info: &InstanceInfo,
    source_ae: &str,
) -> Result<Vec<u8>, ParseError> {
    let mut out = part10_header(info, source_ae)?;
    out.extend_from_slice(dataset);
    Ok(out)
}

/// The preamble, `DICM` and file meta group of a Part 10 file for a data set
/// received over the network; the data set follows unchanged.
pub fn part10_header(info: &InstanceInfo, source_ae: &str) -> Result<Vec<u8>, ParseError> {
    let mut b = FileMetaTableBuilder::new()
        .transfer_syntax(info.transfer_syntax.as_str())
        .media_storage_sop_class_uid(info.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(info.sop_instance_uid.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION);
    let ae = source_ae.trim();
    if !ae.is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|c| (0x20..0x7F).contains(&c) && c != b'\\')
    {
        b = b.source_application_entity_title(ae);
    }
    let meta = b.build().map_err(|e| ParseError::BadMeta(e.to_string()))?;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| ParseError::BadMeta(e.to_string()))?;
    Ok(out)
}
