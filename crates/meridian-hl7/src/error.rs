//! Errors reported back to the sender in the acknowledgement (HL7 table 0357 codes).

use std::fmt;

use thiserror::Error;

use crate::er7::ParseError;

/// HL7 table 0357 ("message error condition codes") values used by this crate.
pub mod codes {
    /// Segment sequence error (also: a required segment is missing).
    pub const SEGMENT_SEQUENCE: u16 = 100;
    /// Required field missing.
    pub const REQUIRED_FIELD_MISSING: u16 = 101;
    /// Data type error (also: a field longer than allowed, bytes invalid in the character set).
    pub const DATA_TYPE: u16 = 102;
    /// Table value not found (also: unknown MSH-18 character set, unknown ORC-1).
    pub const TABLE_VALUE_NOT_FOUND: u16 = 103;
    /// Unsupported message type.
    pub const UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
    /// Unsupported event code.
    pub const UNSUPPORTED_EVENT: u16 = 201;
    /// Unsupported processing id.
    pub const UNSUPPORTED_PROCESSING_ID: u16 = 202;
    /// Unsupported version id.
    pub const UNSUPPORTED_VERSION: u16 = 203;
    /// Application internal error (also: message too large, too many segments).
    pub const INTERNAL: u16 = 207;

    /// The standard text of a code (ERR-3.2).
    pub fn text(code: u16) -> &'static str {
        match code {
            0 => "Message accepted",
            SEGMENT_SEQUENCE => "Segment sequence error",
            REQUIRED_FIELD_MISSING => "Required field missing",
            DATA_TYPE => "Data type error",
            TABLE_VALUE_NOT_FOUND => "Table value not found",
            UNSUPPORTED_MESSAGE_TYPE => "Unsupported message type",
            UNSUPPORTED_EVENT => "Unsupported event code",
            UNSUPPORTED_PROCESSING_ID => "Unsupported processing id",
            UNSUPPORTED_VERSION => "Unsupported version id",
            204 => "Unknown key identifier",
            205 => "Duplicate key identifier",
            206 => "Application record locked",
            _ => "Application internal error",
        }
    }
}

/// Where an error is (ERR-2). `0` means "not given" for `sequence`, `field` and `component`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Segment ID, e.g. `PID`.
    pub segment: String,
    /// 1-based occurrence of that segment in the message.
    pub sequence: u32,
    /// Field position.
    pub field: u32,
    /// Component number.
    pub component: u32,
}

impl Location {
    pub fn new(segment: &str, sequence: u32, field: u32, component: u32) -> Self {
        Location {
            segment: segment.to_owned(),
            sequence,
            field,
            component,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segment)?;
        if self.field > 0 {
            write!(f, "-{}", self.field)?;
            if self.component > 0 {
                write!(f, ".{}", self.component)?;
            }
        }
        Ok(())
    }
}

/// An error to acknowledge: `reject` true answers AR (the message as such is not acceptable:
/// unparseable, unsupported type, event, version or processing id), false answers AE (its
/// content is wrong or the application failed).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("HL7 error {code}: {text}")]
pub struct Hl7Error {
    /// HL7 table 0357 code, see [`codes`].
    pub code: u16,
    pub location: Option<Location>,
    /// Human-readable detail (ERR-8). Must not contain patient data.
    pub text: String,
    pub reject: bool,
}

impl Hl7Error {
    /// An AE error.
    pub fn error(code: u16, text: impl Into<String>) -> Self {
        Hl7Error {
            code,
            location: None,
            text: text.into(),
            reject: false,
        }
    }

    /// An AR error.
    pub fn reject(code: u16, text: impl Into<String>) -> Self {
        Hl7Error {
            reject: true,
            ..Hl7Error::error(code, text)
        }
    }

    /// An AE with code 207, for the application's own failures.
    pub fn internal(text: impl Into<String>) -> Self {
        Hl7Error::error(codes::INTERNAL, text)
    }

    /// Sets the location.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }
}

impl From<&ParseError> for Hl7Error {
    /// Every parse error rejects the message (AR).
    fn from(e: &ParseError) -> Self {
        let text = e.to_string();
        match e {
            ParseError::TooLarge { .. } | ParseError::TooManySegments { .. } => {
                Hl7Error::reject(codes::INTERNAL, text)
            }
            ParseError::NoMsh => {
                Hl7Error::reject(codes::SEGMENT_SEQUENCE, text).at(Location::new("MSH", 1, 0, 0))
            }
            ParseError::BadDelimiters => {
                Hl7Error::reject(codes::DATA_TYPE, text).at(Location::new("MSH", 1, 2, 0))
            }
            ParseError::UnsupportedCharset(_) => {
                Hl7Error::reject(codes::TABLE_VALUE_NOT_FOUND, text)
                    .at(Location::new("MSH", 1, 18, 0))
            }
            ParseError::InvalidText { .. } => {
                Hl7Error::reject(codes::DATA_TYPE, text).at(Location::new("MSH", 1, 18, 0))
            }
            ParseError::BadSegment { .. } => Hl7Error::reject(codes::SEGMENT_SEQUENCE, text),
            ParseError::FieldTooLong {
                segment,
                occurrence,
                field,
                ..
            } => {
                let field = u32::try_from(*field).unwrap_or(0);
                let seq = u32::try_from(*occurrence).unwrap_or(0);
                Hl7Error::reject(codes::DATA_TYPE, text).at(Location::new(segment, seq, field, 0))
            }
        }
    }
}
