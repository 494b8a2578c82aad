//! HL7 v2 ER7 ("pipe and hat") messages: bounded parsing, field access, escape sequences.
//!
//! [`parse`] checks the limits, takes the delimiters from MSH-1/MSH-2, reads MSH-18 from the raw
//! bytes, decodes the whole message in that character set (see [`crate::charset`]) and splits
//! it into segments (separated by `\r`, `\n` or `\r\n`; blank lines are ignored) and fields.
//! Repetitions, components and subcomponents are split, and escape sequences decoded, only
//! when a value is read ([`Message::get`], [`Segment::get_rep`]).
//!
//! Escape sequences (with the message's own escape character, usually `\`): `\F\ \S\ \T\ \R\ \E\`
//! (and `\P\` when MSH-2 declares a truncation character) give the delimiter; `\Xhh..\` gives the
//! bytes, decoded in the message's character set; `\.br\` gives a line feed; `\H\` and `\N\`
//! (highlighting on/off) are dropped; anything else, and an unterminated escape, is kept as is.
//!
//! Indexes are 1-based as in the standard (`PID-3.4.1` is `get("PID", 1, 3, 4, 1)`); index 0
//! or an absent value reads as `""`. MSH-1 and MSH-2 read as the delimiters themselves.

use std::fmt;

use thiserror::Error;

use crate::charset::{self, Charset};

/// Size limits applied by [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// Most segments in one message (default 1000).
    pub max_segments: usize,
    /// Longest field, in bytes of decoded text, including its repetitions (default 64 KiB).
    pub max_field_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_segments: 1000,
            max_field_bytes: 64 << 10,
        }
    }
}

/// Why a message could not be parsed. Every variant makes the message unacceptable (AR).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("message exceeds {limit} bytes ({size} received)")]
    TooLarge { size: usize, limit: usize },
    #[error("message does not start with an MSH segment")]
    NoMsh,
    #[error("MSH-1/MSH-2 encoding characters are missing or invalid")]
    BadDelimiters,
    #[error("unsupported character set in MSH-18: {0:?}")]
    UnsupportedCharset(String),
    #[error("message bytes are not valid {charset} (MSH-18)")]
    InvalidText { charset: &'static str },
    #[error("message has more than {limit} segments")]
    TooManySegments { limit: usize },
    #[error("segment {index} has no valid segment name")]
    BadSegment { index: usize },
    #[error("{segment}-{field} (segment {index}) exceeds {limit} bytes")]
    FieldTooLong {
        segment: String,
        /// Position of the segment in the message (1-based).
        index: usize,
        /// Occurrence of this segment ID (1-based).
        occurrence: usize,
        field: usize,
        limit: usize,
    },
}

/// The delimiters of one message (MSH-1 and MSH-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// The v2.7 truncation character, when MSH-2 has a fifth character.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    /// `|^~\&`
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

/// A hierarchic designator (HD) from MSH-3 to MSH-6, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hd {
    pub namespace: String,
    pub universal_id: String,
    pub universal_id_type: String,
}

/// The message header (MSH), decoded. Absent fields are `""`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// MSH-3
    pub sending_application: Hd,
    /// MSH-4
    pub sending_facility: Hd,
    /// MSH-5
    pub receiving_application: Hd,
    /// MSH-6
    pub receiving_facility: Hd,
    /// MSH-7.1, raw HL7 TS.
    pub datetime: String,
    /// MSH-9.1, e.g. `ORM`
    pub message_type: String,
    /// MSH-9.2, e.g. `O01`
    pub trigger_event: String,
    /// MSH-9.3, e.g. `ORM_O01` (often empty before v2.3.1)
    pub message_structure: String,
    /// MSH-10
    pub control_id: String,
    /// MSH-11.1 (`P`, `D`, `T`)
    pub processing_id: String,
    /// MSH-12.1, e.g. `2.5.1`
    pub version: String,
    /// MSH-18, first repetition, as written (`""` when absent).
    pub charset: String,
    /// The character set the message was actually decoded with.
    pub encoding: Charset,
}

#[derive(Clone, Debug)]
struct RawSegment {
    name: String,
    /// `fields[0]` is field 1. For MSH, field 1 is the field separator, field 2 MSH-2.
    fields: Vec<String>,
}

/// A parsed message. Values are decoded on access.
#[derive(Clone, Debug)]
pub struct Message {
    delims: Delimiters,
    encoding: Charset,
    segments: Vec<RawSegment>,
    header: Header,
}

/// One segment of a [`Message`].
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    raw: &'a RawSegment,
    delims: &'a Delimiters,
    encoding: Charset,
}

impl fmt::Debug for Segment<'_> {
    /// Only the name: field values may be patient data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.raw.name)
            .finish_non_exhaustive()
    }
}

fn nth(s: &str, sep: char, n: usize) -> &str {
    match n.checked_sub(1) {
        Some(i) => s.split(sep).nth(i).unwrap_or(""),
        None => "",
    }
}

impl<'a> Segment<'a> {
    /// The segment ID, e.g. `PID`.
    pub fn name(&self) -> &'a str {
        &self.raw.name
    }

    /// Number of fields present (the last non-empty or empty field written).
    pub fn field_count(&self) -> usize {
        self.raw.fields.len()
    }

    /// A field exactly as received (escapes and delimiters intact); `""` if absent.
    pub fn raw_field(&self, field: usize) -> &'a str {
        field
            .checked_sub(1)
            .and_then(|i| self.raw.fields.get(i))
            .map_or("", String::as_str)
    }

    fn is_msh_delims(&self, field: usize) -> bool {
        self.raw.name == "MSH" && (field == 1 || field == 2)
    }

    /// Number of repetitions of a field (0 when the field is empty or absent).
    pub fn repetitions(&self, field: usize) -> usize {
        let raw = self.raw_field(field);
        if raw.is_empty() {
            0
        } else if self.is_msh_delims(field) {
            1
        } else {
            raw.split(self.delims.repetition).count()
        }
    }

    /// A component or subcomponent of the first repetition, decoded.
    pub fn get(&self, field: usize, component: usize, subcomponent: usize) -> String {
        self.get_rep(field, 1, component, subcomponent)
    }

    /// A component or subcomponent of a given repetition, decoded.
    pub fn get_rep(
        &self,
        field: usize,
        repetition: usize,
        component: usize,
        subcomponent: usize,
    ) -> String {
        let raw = self.raw_field(field);
        if self.is_msh_delims(field) {
            return if repetition == 1 && component == 1 && subcomponent == 1 {
                raw.to_owned()
            } else {
                String::new()
            };
        }
        let rep = nth(raw, self.delims.repetition, repetition);
        let comp = nth(rep, self.delims.component, component);
        let sub = nth(comp, self.delims.subcomponent, subcomponent);
        unescape(sub, self.delims, self.encoding)
    }
}

impl Message {
    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }

    fn view<'a>(&'a self, raw: &'a RawSegment) -> Segment<'a> {
        Segment {
            raw,
            delims: &self.delims,
            encoding: self.encoding,
        }
    }

    /// All segments, in order (the first is MSH).
    pub fn all_segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.segments.iter().map(|s| self.view(s))
    }

    /// The segments with this ID, in order.
    pub fn segments<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Segment<'a>> + 'a {
        self.all_segments().filter(move |s| s.name() == name)
    }

    /// The `occurrence`-th (1-based) segment with this ID.
    pub fn segment(&self, name: &str, occurrence: usize) -> Option<Segment<'_>> {
        let i = occurrence.checked_sub(1)?;
        self.segments
            .iter()
            .filter(|s| s.name == name)
            .nth(i)
            .map(|s| self.view(s))
    }

    /// `get("PID", 1, 3, 1, 1)`: first repetition of PID-3.1.1 of the first PID, decoded; `""`
    /// when absent.
    pub fn get(
        &self,
        segment: &str,
        occurrence: usize,
        field: usize,
        component: usize,
        subcomponent: usize,
    ) -> String {
        self.segment(segment, occurrence)
            .map(|s| s.get(field, component, subcomponent))
            .unwrap_or_default()
    }

    /// Like [`Message::get`], for a given repetition.
    pub fn get_rep(
        &self,
        segment: &str,
        occurrence: usize,
        field: usize,
        repetition: usize,
        component: usize,
        subcomponent: usize,
    ) -> String {
        self.segment(segment, occurrence)
            .map(|s| s.get_rep(field, repetition, component, subcomponent))
            .unwrap_or_default()
    }
}

/// Decodes escape sequences in one leaf value.
pub fn unescape(s: &str, d: &Delimiters, cs: Charset) -> String {
    let esc = d.escape;
    if !s.contains(esc) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // unterminated: literal
            out.push_str(&rest[start..]);
            return out;
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(esc),
            "P" if d.truncation.is_some() => out.extend(d.truncation),
            "H" | "N" => {}
            ".br" => out.push('\n'),
            _ => match hex_bytes(seq) {
                Some(bytes) => out.push_str(&charset::decode_escaped_bytes(&bytes, cs)),
                None => {
                    out.push(esc);
                    out.push_str(seq);
                    out.push(esc);
                }
            },
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    out
}

fn hex_bytes(seq: &str) -> Option<Vec<u8>> {
    let hex = seq.strip_prefix('X')?.as_bytes();
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|p| {
            let hi = char::from(p[0]).to_digit(16)?;
            let lo = char::from(p[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// Escapes a value for writing into an ER7 message with these delimiters. Control characters
/// become `\Xhh\`.
pub fn escape(s: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let code = if c == d.escape {
            Some('E')
        } else if c == d.field {
            Some('F')
        } else if c == d.component {
            Some('S')
        } else if c == d.subcomponent {
            Some('T')
        } else if c == d.repetition {
            Some('R')
        } else if Some(c) == d.truncation {
            Some('P')
        } else {
            None
        };
        if let Some(code) = code {
            out.push(d.escape);
            out.push(code);
            out.push(d.escape);
        } else if c.is_control() && c.is_ascii() {
            out.push(d.escape);
            out.push_str(&format!("X{:02X}", c as u32));
            out.push(d.escape);
        } else {
            out.push(c);
        }
    }
    out
}

/// Skips a UTF-8 BOM and leading whitespace.
pub(crate) fn trim_start(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    let start = raw
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(raw.len());
    &raw[start..]
}

fn valid_delim(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

/// Reads MSH-1/MSH-2 from raw bytes (after [`trim_start`]).
pub(crate) fn raw_delimiters(raw: &[u8]) -> Result<Delimiters, ParseError> {
    if !raw.starts_with(b"MSH") {
        return Err(ParseError::NoMsh);
    }
    let fs = *raw.get(3).ok_or(ParseError::BadDelimiters)?;
    if !valid_delim(fs) {
        return Err(ParseError::BadDelimiters);
    }
    let enc: &[u8] = raw
        .get(4..)
        .map(|r| {
            let end = r
                .iter()
                .position(|&b| b == fs || b == b'\r' || b == b'\n')
                .unwrap_or(r.len());
            &r[..end]
        })
        .unwrap_or_default();
    if !(4..=5).contains(&enc.len()) || !enc.iter().all(|&b| valid_delim(b)) {
        return Err(ParseError::BadDelimiters);
    }
    let mut all = vec![fs];
    all.extend_from_slice(enc);
    for (i, b) in all.iter().enumerate() {
        if all[..i].contains(b) {
            return Err(ParseError::BadDelimiters);
        }
    }
    Ok(Delimiters {
        field: char::from(fs),
        component: char::from(enc[0]),
        repetition: char::from(enc[1]),
        escape: char::from(enc[2]),
        subcomponent: char::from(enc[3]),
        truncation: enc.get(4).map(|&b| char::from(b)),
    })
}

/// The raw bytes of MSH-`n` (n ≥ 3) from the first line, before decoding.
pub(crate) fn raw_msh_field<'a>(raw: &'a [u8], d: &Delimiters, n: usize) -> &'a [u8] {
    let line_end = raw
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(raw.len());
    // fields as bytes: [MSH, MSH-2, MSH-3, ...]: MSH-n is index n-1
    raw[..line_end]
        .split(|&b| u32::from(b) == d.field as u32)
        .nth(n.saturating_sub(1))
        .unwrap_or_default()
}

/// Parses one message. See the module documentation.
pub fn parse(raw: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if raw.len() > limits.max_message_bytes {
        return Err(ParseError::TooLarge {
            size: raw.len(),
            limit: limits.max_message_bytes,
        });
    }
    let raw = trim_start(raw);
    let delims = raw_delimiters(raw)?;

    // MSH-18, first repetition, first component, from bytes.
    let msh18 = raw_msh_field(raw, &delims, 18);
    let msh18 = msh18
        .split(|&b| u32::from(b) == delims.repetition as u32)
        .next()
        .unwrap_or_default();
    let msh18 = msh18
        .split(|&b| u32::from(b) == delims.component as u32)
        .next()
        .unwrap_or_default();
    let declared_name = String::from_utf8_lossy(msh18).trim().to_owned();
    let declared = if msh18.is_ascii() {
        charset::lookup(&declared_name)
    } else {
        None
    };
    let Some(declared) = declared else {
        return Err(ParseError::UnsupportedCharset(
            declared_name.chars().take(40).collect(),
        ));
    };
    let (text, encoding) =
        charset::decode(raw, declared).map_err(|charset| ParseError::InvalidText { charset })?;

    let mut segments: Vec<RawSegment> = Vec::new();
    for line in text.split(['\r', '\n']) {
        if line.trim().is_empty() {
            continue;
        }
        if segments.len() >= limits.max_segments {
            return Err(ParseError::TooManySegments {
                limit: limits.max_segments,
            });
        }
        let index = segments.len() + 1;
        let seg = parse_segment(line, index, &delims, limits).map_err(|e| match e {
            ParseError::FieldTooLong {
                segment,
                index,
                field,
                limit,
                ..
            } => ParseError::FieldTooLong {
                occurrence: segments.iter().filter(|s| s.name == segment).count() + 1,
                segment,
                index,
                field,
                limit,
            },
            other => other,
        })?;
        segments.push(seg);
    }
    let Some(first) = segments.first() else {
        return Err(ParseError::NoMsh);
    };
    if first.name != "MSH" {
        return Err(ParseError::NoMsh);
    }
    let msh = Segment {
        raw: first,
        delims: &delims,
        encoding,
    };
    let hd = |f: usize| Hd {
        namespace: msh.get(f, 1, 1),
        universal_id: msh.get(f, 2, 1),
        universal_id_type: msh.get(f, 3, 1),
    };
    let header = Header {
        sending_application: hd(3),
        sending_facility: hd(4),
        receiving_application: hd(5),
        receiving_facility: hd(6),
        datetime: msh.get(7, 1, 1),
        message_type: msh.get(9, 1, 1).trim().to_owned(),
        trigger_event: msh.get(9, 2, 1).trim().to_owned(),
        message_structure: msh.get(9, 3, 1).trim().to_owned(),
        control_id: msh.get(10, 1, 1),
        processing_id: msh.get(11, 1, 1).trim().to_owned(),
        version: msh.get(12, 1, 1).trim().to_owned(),
        charset: declared_name,
        encoding,
    };
    Ok(Message {
        delims,
        encoding,
        segments,
        header,
    })
}

fn parse_segment(
    line: &str,
    index: usize,
    d: &Delimiters,
    limits: &Limits,
) -> Result<RawSegment, ParseError> {
    let bytes = line.as_bytes();
    let name_ok = bytes.len() >= 3
        && bytes[..3]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && line[3..].chars().next().is_none_or(|c| c == d.field);
    if !name_ok {
        return Err(ParseError::BadSegment { index });
    }
    let name = line[..3].to_owned();
    let mut parts = line.split(d.field);
    parts.next(); // the name
    let mut fields: Vec<String> = Vec::new();
    if name == "MSH" {
        fields.push(d.field.to_string());
    }
    for part in parts {
        if part.len() > limits.max_field_bytes {
            return Err(ParseError::FieldTooLong {
                field: fields.len() + 1,
                segment: name,
                index,
                occurrence: 0,
                limit: limits.max_field_bytes,
            });
        }
        fields.push(part.to_owned());
    }
    // trailing empty fields carry nothing
    while fields.last().is_some_and(String::is_empty) {
        fields.pop();
    }
    Ok(RawSegment { name, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORM: &str = "MSH|^~\\&|RIS|GENERAL HOSP^1.2.3^ISO|MERIDIAN|TELE|20240105083000||ORM^O01|MSG00001|P|2.3\r\
PID|1||123456^^^GH&1.2.3&ISO^MR~999^^^OTHER||O'Brien\\S\\x^Mary^Anne^^Dr||19800214|F\r\
ORC|NW|PL1|FL1\r\
OBR|1|PL1|FL1|CTHEAD^CT Head \\T\\ Neck\\F\\w/o^L||||||||||||||ACC1\r";

    fn p(s: &str) -> Message {
        parse(s.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn header_and_access() {
        let m = p(ORM);
        let h = m.header();
        assert_eq!(h.sending_application.namespace, "RIS");
        assert_eq!(h.sending_facility.namespace, "GENERAL HOSP");
        assert_eq!(h.sending_facility.universal_id, "1.2.3");
        assert_eq!(h.receiving_facility.namespace, "TELE");
        assert_eq!(
            (
                h.message_type.as_str(),
                h.trigger_event.as_str(),
                h.control_id.as_str()
            ),
            ("ORM", "O01", "MSG00001")
        );
        assert_eq!((h.processing_id.as_str(), h.version.as_str()), ("P", "2.3"));
        assert_eq!(h.datetime, "20240105083000");
        assert_eq!(h.charset, "");
        assert_eq!(m.get("MSH", 1, 1, 1, 1), "|");
        assert_eq!(m.get("MSH", 1, 2, 1, 1), "^~\\&");
        assert_eq!(m.get("PID", 1, 3, 1, 1), "123456");
        assert_eq!(m.get("PID", 1, 3, 4, 1), "GH");
        assert_eq!(m.get("PID", 1, 3, 4, 2), "1.2.3");
        assert_eq!(m.get_rep("PID", 1, 3, 2, 1, 1), "999");
        assert_eq!(m.segment("PID", 1).unwrap().repetitions(3), 2);
        assert_eq!(m.get("PID", 1, 5, 1, 1), "O'Brien^x");
        assert_eq!(m.get("OBR", 1, 4, 2, 1), "CT Head & Neck|w/o");
        assert_eq!(m.get("OBR", 1, 18, 1, 1), "ACC1");
        assert_eq!(m.get("OBR", 1, 99, 1, 1), "");
        assert_eq!(m.get("OBR", 2, 1, 1, 1), "");
        assert_eq!(m.get("PID", 1, 0, 1, 1), "");
        assert_eq!(m.segments("OBR").count(), 1);
        assert_eq!(m.all_segments().count(), 4);
    }

    #[test]
    fn line_endings() {
        for sep in ["\n", "\r\n", "\r\r\n\n"] {
            let s = ORM.replace('\r', sep);
            let m = p(&s);
            assert_eq!(m.all_segments().count(), 4, "{sep:?}");
            assert_eq!(m.get("OBR", 1, 18, 1, 1), "ACC1");
        }
    }

    #[test]
    fn escapes() {
        let d = Delimiters::default();
        let u = |s: &str| unescape(s, &d, Charset::Utf8);
        assert_eq!(u("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"), "a|b^c&d~e\\f");
        assert_eq!(u("line1\\X0D\\\\X0A\\line2"), "line1\r\nline2");
        assert_eq!(u("x\\.br\\y"), "x\ny");
        assert_eq!(u("\\H\\bold\\N\\"), "bold");
        assert_eq!(u("\\XC3BC\\"), "ü");
        assert_eq!(unescape("\\XFC\\", &d, Charset::Latin1), "ü");
        assert_eq!(u("C:\\temp\\x"), "C:\\temp\\x");
        assert_eq!(u("\\Zfoo\\"), "\\Zfoo\\");
        assert_eq!(u("\\X0\\"), "\\X0\\");
        assert_eq!(u("\\XZZ\\"), "\\XZZ\\");
        assert_eq!(u("open\\F"), "open\\F");
        assert_eq!(u("\\\\"), "\\\\");
        let raw = "a|b^c&d~e\\f\r\n";
        assert_eq!(u(&escape(raw, &d)), raw);
        assert_eq!(escape("a|b", &d), "a\\F\\b");
    }

    #[test]
    fn custom_delimiters() {
        let s = "MSH#:*!$%#APP#FAC#####ADT:A08#C1#P#2.7\rPID###12!S!x:::ISS##Doe:John%Jr\r";
        let m = p(s);
        let d = m.delimiters();
        assert_eq!(
            (d.field, d.component, d.repetition, d.escape, d.subcomponent),
            ('#', ':', '*', '!', '$')
        );
        assert_eq!(d.truncation, Some('%'));
        assert_eq!(m.header().message_type, "ADT");
        assert_eq!(m.header().trigger_event, "A08");
        assert_eq!(m.header().control_id, "C1");
        assert_eq!(m.get("PID", 1, 3, 1, 1), "12:x");
        assert_eq!(m.get("PID", 1, 3, 4, 1), "ISS");
        assert_eq!(m.get("MSH", 1, 2, 1, 1), ":*!$%");
    }

    #[test]
    fn truncation_char_standard_five() {
        let m = p("MSH|^~\\&#|A|B|||||ADT^A08|1|P|2.7\rPID|||1\\P\\2\r");
        assert_eq!(m.get("PID", 1, 3, 1, 1), "1#2");
    }

    #[test]
    fn latin1_declared() {
        let mut raw =
            b"MSH|^~\\&|RIS|H|||20240101||ADT^A08|X1|P|2.5|||||DE|8859/1\rPID|1||42^^^H||M"
                .to_vec();
        raw.push(0xFC);
        raw.extend_from_slice(b"ller^Hans\r");
        let m = parse(&raw, &Limits::default()).unwrap();
        assert_eq!(m.get("PID", 1, 5, 1, 1), "Müller");
        assert_eq!(m.header().charset, "8859/1");
        assert_eq!(m.header().encoding, Charset::Latin1);
    }

    #[test]
    fn charset_default_and_errors() {
        let mut raw = b"MSH|^~\\&|RIS|H|||20240101||ADT^A08|X1|P|2.5\rPID|1||42||M".to_vec();
        raw.push(0xFC);
        raw.extend_from_slice(b"ller\r");
        let m = parse(&raw, &Limits::default()).unwrap();
        assert_eq!(m.get("PID", 1, 5, 1, 1), "Müller");
        assert_eq!(m.header().encoding, Charset::Latin1);

        let utf8 = "MSH|^~\\&|RIS|H|||20240101||ADT^A08|X1|P|2.5|||||DE|UNICODE UTF-8\rPID|1||42||Müller\r";
        assert_eq!(p(utf8).get("PID", 1, 5, 1, 1), "Müller");

        let mut bad =
            b"MSH|^~\\&|RIS|H|||20240101||ADT^A08|X1|P|2.5|||||DE|UNICODE UTF-8\rPID|1||42||M"
                .to_vec();
        bad.push(0xFC);
        assert_eq!(
            parse(&bad, &Limits::default()).unwrap_err(),
            ParseError::InvalidText { charset: "UTF-8" }
        );
        let unknown = b"MSH|^~\\&|RIS|H|||20240101||ADT^A08|X1|P|2.5|||||DE|UNICODE UTF-16\r";
        assert_eq!(
            parse(unknown, &Limits::default()).unwrap_err(),
            ParseError::UnsupportedCharset("UNICODE UTF-16".into())
        );
        let iso15 = b"MSH|^~\\&|RIS|H|||20240101||ADT^A08|X1|P|2.5|||||DE|8859/15~ISO IR87\rPID|1||42||\xa4\r";
        let m = parse(iso15, &Limits::default()).unwrap();
        assert_eq!(m.get("PID", 1, 5, 1, 1), "€");
        assert_eq!(m.header().charset, "8859/15");
    }

    #[test]
    fn malformed() {
        let l = Limits::default();
        assert_eq!(parse(b"", &l).unwrap_err(), ParseError::NoMsh);
        assert_eq!(parse(b"PID|1\r", &l).unwrap_err(), ParseError::NoMsh);
        assert_eq!(parse(b"MSH", &l).unwrap_err(), ParseError::BadDelimiters);
        assert_eq!(parse(b"MSH|", &l).unwrap_err(), ParseError::BadDelimiters);
        assert_eq!(parse(b"MSH|^~", &l).unwrap_err(), ParseError::BadDelimiters);
        assert_eq!(
            parse(b"MSH|^~\\^|", &l).unwrap_err(),
            ParseError::BadDelimiters
        );
        assert_eq!(
            parse(b"MSHA^~\\&", &l).unwrap_err(),
            ParseError::BadDelimiters
        );
        assert_eq!(
            parse(b"MSH|^~\\&|\rP\xffD|1\r", &l).unwrap_err(),
            ParseError::BadSegment { index: 2 }
        );
        assert_eq!(
            parse(b"MSH|^~\\&|\rPIDX|1\r", &l).unwrap_err(),
            ParseError::BadSegment { index: 2 }
        );
        // a bare MSH with delimiters only is a (useless) message
        let m = parse(b"\xEF\xBB\xBF\r\nMSH|^~\\&", &l).unwrap();
        assert_eq!(m.header().control_id, "");
    }

    #[test]
    fn absurd_sizes() {
        let l = Limits::default();
        // 4 MiB of segment separators, 1 MiB + 1 of one field, 200k segments
        let seps = vec![b'\r'; 4 << 20];
        assert!(matches!(parse(&seps, &l), Err(ParseError::TooLarge { .. })));
        let mut huge = b"MSH|^~\\&|".to_vec();
        huge.resize(l.max_message_bytes + 1, b'x');
        assert!(matches!(parse(&huge, &l), Err(ParseError::TooLarge { .. })));
        let many = format!("MSH|^~\\&\r{}", "ZZZ|\r".repeat(200_000));
        let loose = Limits {
            max_message_bytes: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(
            parse(many.as_bytes(), &loose).unwrap_err(),
            ParseError::TooManySegments { limit: 1000 }
        );
        let wide = format!("MSH|^~\\&\rNTE|1||{}\r", "^".repeat(70_000));
        assert!(matches!(
            parse(wide.as_bytes(), &l),
            Err(ParseError::FieldTooLong { .. })
        ));
        // blank lines do not count as segments
        let blank = format!("MSH|^~\\&{}\rPID|1\r", "\r\n".repeat(5000));
        assert_eq!(
            parse(blank.as_bytes(), &l).unwrap().all_segments().count(),
            2
        );
    }

    #[test]
    fn limits() {
        let small = Limits {
            max_message_bytes: 100,
            max_segments: 3,
            max_field_bytes: 10,
        };
        let big = format!("MSH|^~\\&|{}", "x".repeat(200));
        assert_eq!(
            parse(big.as_bytes(), &small).unwrap_err(),
            ParseError::TooLarge {
                size: big.len(),
                limit: 100
            }
        );
        let many = "MSH|^~\\&\rNTE|1\rNTE|2\rNTE|3\r";
        assert_eq!(
            parse(many.as_bytes(), &small).unwrap_err(),
            ParseError::TooManySegments { limit: 3 }
        );
        let long = "MSH|^~\\&\rNTE|1||01234567890\r";
        assert_eq!(
            parse(long.as_bytes(), &small).unwrap_err(),
            ParseError::FieldTooLong {
                segment: "NTE".into(),
                index: 2,
                occurrence: 1,
                field: 3,
                limit: 10
            }
        );
    }
}
