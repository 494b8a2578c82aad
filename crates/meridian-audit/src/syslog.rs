//! Syslog framing of audit messages for an audit repository (IHE ATNA
//! ITI-20 "Record Audit Event", DICOM PS3.15 "Audit Trail Message
//! Transmission Profile - SYSLOG-TLS"): an RFC 5424 message carried over
//! TLS with RFC 5425 octet-counting framing.

use crate::codes::iso8601_utc;

/// PRI of audit messages: facility 10 (security/authorization messages)
/// times 8, plus severity 5 (notice, "normal but significant"), as IHE
/// ITI TF-2 (ITI-20, syslog message fields) asks for audit messages.
pub const PRI: u8 = 10 * 8 + 5;

/// RFC 5424 APP-NAME of Meridian's messages.
pub const APP_NAME: &str = "meridian";

/// The MSGID IHE ITI-20 assigns to audit messages in the RFC 3881 / DICOM
/// PS3.15 A.5 XML format. (DICOM itself names no MSGID; audit repositories
/// key on this one.)
pub const MSGID_IHE: &str = "IHE+RFC-3881";

/// Keeps an RFC 5424 header field to `max` printable US-ASCII characters
/// (33..=126); a field with nothing left is the NILVALUE `-`.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if f.is_empty() { "-".to_owned() } else { f }
}

/// An RFC 5424 syslog message: `<85>1 TIMESTAMP HOSTNAME meridian - MSGID - MSG`.
///
/// No PROCID and no structured data (NILVALUEs); the message follows
/// without a BOM (IHE ITI CP-477 advises against it) and is UTF-8.
pub fn rfc5424(msg: &str, host: &str, at_ms: i64, msgid: &str) -> String {
    format!(
        "<{PRI}>1 {} {} {APP_NAME} - {} - {msg}",
        iso8601_utc(at_ms),
        header_field(host, 255),
        header_field(msgid, 32),
    )
}

/// RFC 5425 (syslog over TLS) octet-counting frame: `MSG-LEN SP SYSLOG-MSG`,
/// the length in bytes, in decimal.
pub fn rfc5425_frame(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header() {
        let m = rfc5424(
            "<AuditMessage/>",
            "pacs-1.example.org",
            1_714_564_800_250,
            MSGID_IHE,
        );
        assert_eq!(
            m,
            "<85>1 2024-05-01T12:00:00.250Z pacs-1.example.org meridian - IHE+RFC-3881 - <AuditMessage/>"
        );
        let m = rfc5424("x", "", 0, "a b\u{e9}");
        assert_eq!(m, "<85>1 1970-01-01T00:00:00.000Z - meridian - a_b_ - x");
        let long = "h".repeat(300);
        let m = rfc5424("x", &long, 0, &"m".repeat(40));
        let fields: Vec<&str> = m.split(' ').collect();
        assert_eq!(fields[2].len(), 255);
        assert_eq!(fields[5].len(), 32);
    }

    #[test]
    fn octet_counting() {
        assert_eq!(rfc5425_frame("abc"), b"3 abc");
        assert_eq!(rfc5425_frame(""), b"0 ");
        // Length in bytes, not characters.
        assert_eq!(rfc5425_frame("é✓"), "5 é✓".as_bytes());
    }
}
