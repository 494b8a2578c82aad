//! Acknowledgements (original mode): `MSH`, `MSA` and, on error, `ERR`.
//!
//! - MSH: `|^~\&`; sending and receiving application/facility swapped; MSH-7 now (UTC, with
//!   `+0000`); MSH-9 `ACK^<trigger>^ACK` (`ACK^<trigger>` for v2.3 and older, whose MSG has two
//!   components); MSH-10 a new control ID; MSH-11 and MSH-12 copied (`P` and `2.5` when absent);
//!   MSH-18 copied, and the acknowledgement is encoded in the character set the message was
//!   decoded with (characters it cannot represent become `?`).
//! - MSA-1 `AA`, `AE` ([`Hl7Error::reject`] false) or `AR` (true); MSA-2 the original MSH-10;
//!   MSA-3 the error text for v2.4 and older.
//! - ERR (v2.5 layout): ERR-2 location `SEG^seq^field^1^component` (ERL: the fourth component
//!   is the field repetition), ERR-3 `code^text^HL70357`, ERR-4 `E`, ERR-8 the detail text;
//!   for v2.4 and older also ERR-1 (ELD `SEG^seq^field^code&text&HL70357`).
//!
//! Every value is escaped; segments end with `\r`.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::charset::{self, Charset};
use crate::er7::{self, Delimiters, Hd, Header, ParseError};
use crate::error::{Hl7Error, codes};

fn now_ts() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A new message control ID: `M` + milliseconds since the epoch (hex) + a counter; ≤ 20 chars.
fn new_control_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("M{:x}{:04x}", millis & 0xfff_ffff_ffff, n)
}

fn version_before(version: &str, major: u32, minor: u32) -> bool {
    let mut it = version.split('.').map(|p| p.trim().parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

fn hd(h: &Hd, d: &Delimiters) -> String {
    let parts = [
        er7::escape(&h.namespace, d),
        er7::escape(&h.universal_id, d),
        er7::escape(&h.universal_id_type, d),
    ];
    let len = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    parts[..len].join("^")
}

/// Builds the acknowledgement of a message whose header was read.
pub fn ack(header: &Header, outcome: Result<(), &Hl7Error>) -> Vec<u8> {
    let d = Delimiters::default();
    let e = |s: &str| er7::escape(s, &d);
    let version = if header.version.is_empty() {
        "2.5"
    } else {
        header.version.as_str()
    };
    let old = version_before(version, 2, 5);
    let processing = if header.processing_id.is_empty() {
        "P"
    } else {
        header.processing_id.as_str()
    };
    let trigger = e(&header.trigger_event);
    let msg_type = if trigger.is_empty() {
        "ACK".to_owned()
    } else if version_before(version, 2, 3) || version == "2.3" {
        format!("ACK^{trigger}")
    } else {
        format!("ACK^{trigger}^ACK")
    };
    let mut msh = vec![
        "MSH".to_owned(),
        "^~\\&".to_owned(),
        hd(&header.receiving_application, &d),
        hd(&header.receiving_facility, &d),
        hd(&header.sending_application, &d),
        hd(&header.sending_facility, &d),
        now_ts(),
        String::new(),
        msg_type,
        new_control_id(),
        e(processing),
        e(version),
    ];
    if !header.charset.is_empty() {
        msh.resize(17, String::new());
        msh.push(e(&header.charset));
    }
    let mut out = msh.join("|");
    out.push('\r');

    let control = e(&header.control_id);
    match outcome {
        Ok(()) => {
            out.push_str(&format!("MSA|AA|{control}\r"));
        }
        Err(err) => {
            let code = if err.reject { "AR" } else { "AE" };
            let text = e(&err.text);
            if old {
                out.push_str(&format!("MSA|{code}|{control}|{text}\r"));
            } else {
                out.push_str(&format!("MSA|{code}|{control}\r"));
            }
            out.push_str(&err_segment(err, old, &d));
        }
    }
    charset::encode(&out, header.encoding)
}

fn err_segment(err: &Hl7Error, old: bool, d: &Delimiters) -> String {
    let e = |s: &str| er7::escape(s, d);
    let code_text = e(codes::text(err.code));
    let (erl, seg, seq, field) = match &err.location {
        Some(l) => {
            let seg = e(&l.segment);
            let nz = |n: u32| {
                if n == 0 { String::new() } else { n.to_string() }
            };
            let mut parts = vec![seg.clone(), nz(l.sequence), nz(l.field)];
            if l.field > 0 {
                parts.push("1".into());
                if l.component > 0 {
                    parts.push(l.component.to_string());
                }
            }
            let len = parts
                .iter()
                .rposition(|p| !p.is_empty())
                .map_or(0, |i| i + 1);
            (parts[..len].join("^"), seg, nz(l.sequence), nz(l.field))
        }
        None => (String::new(), String::new(), String::new(), String::new()),
    };
    let eld = if old {
        format!("{seg}^{seq}^{field}^{}&{code_text}&HL70357", err.code)
    } else {
        String::new()
    };
    let fields = [
        "ERR".to_owned(),
        eld,
        erl,
        format!("{}^{code_text}^HL70357", err.code),
        "E".to_owned(),
        String::new(),
        String::new(),
        String::new(),
        e(&err.text),
    ];
    let mut s = fields.join("|");
    s.push('\r');
    s
}

/// Keeps printable ASCII, at most `max` characters.
fn scrub(b: &[u8], max: usize) -> String {
    b.iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .take(max)
        .map(|&b| char::from(b))
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Best-effort rejection (AR with ERR) of a message that could not be parsed: whatever of MSH
/// can be read from the raw bytes (printable ASCII only) is used for the header.
pub fn nak_unparsed(raw: &[u8], err: &ParseError) -> Vec<u8> {
    let raw = er7::trim_start(raw);
    let mut header = Header {
        sending_application: Hd::default(),
        sending_facility: Hd::default(),
        receiving_application: Hd::default(),
        receiving_facility: Hd::default(),
        datetime: String::new(),
        message_type: String::new(),
        trigger_event: String::new(),
        message_structure: String::new(),
        control_id: String::new(),
        processing_id: String::new(),
        version: String::new(),
        charset: String::new(),
        encoding: Charset::Utf8,
    };
    if let Ok(d) = er7::raw_delimiters(raw) {
        let comp = |n: usize, c: usize| -> String {
            let f = er7::raw_msh_field(raw, &d, n);
            let part = f
                .split(|&b| u32::from(b) == d.component as u32)
                .nth(c - 1)
                .unwrap_or_default();
            scrub(part, 64)
        };
        let ns = |n: usize| Hd {
            namespace: comp(n, 1),
            ..Hd::default()
        };
        header.sending_application = ns(3);
        header.sending_facility = ns(4);
        header.receiving_application = ns(5);
        header.receiving_facility = ns(6);
        header.message_type = comp(9, 1);
        header.trigger_event = comp(9, 2);
        header.control_id = comp(10, 1);
        header.processing_id = comp(11, 1);
        header.version = comp(12, 1);
        let cs = comp(18, 1);
        if charset::lookup(&cs).is_some() {
            header.charset = cs;
        }
    }
    let e = Hl7Error::from(err);
    ack(&header, Err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::er7::{Limits, parse};
    use crate::error::Location;
    use crate::testmsg::{omi_v251, orm_v23};

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn aa() {
        let m = parse(omi_v251().as_bytes(), &Limits::default()).unwrap();
        let a = text(ack(m.header(), Ok(())));
        let back = parse(a.as_bytes(), &Limits::default()).unwrap();
        let h = back.header();
        assert_eq!(h.sending_application.namespace, "MERIDIAN");
        assert_eq!(h.sending_facility.namespace, "TELE");
        assert_eq!(h.receiving_application.namespace, "RIS");
        assert_eq!(h.receiving_facility.namespace, "CLINIC");
        assert_eq!(h.receiving_facility.universal_id, "2.16.840.1.113883.3.1");
        assert_eq!(
            (
                h.message_type.as_str(),
                h.trigger_event.as_str(),
                h.message_structure.as_str()
            ),
            ("ACK", "O23", "ACK")
        );
        assert_ne!(h.control_id, "OMI778");
        assert!(h.control_id.len() <= 20, "{}", h.control_id);
        assert_eq!(
            (h.processing_id.as_str(), h.version.as_str()),
            ("P", "2.5.1")
        );
        assert_eq!(h.charset, "UNICODE UTF-8");
        assert_eq!(h.datetime.len(), 19);
        assert_eq!(back.get("MSA", 1, 1, 1, 1), "AA");
        assert_eq!(back.get("MSA", 1, 2, 1, 1), "OMI778");
        assert!(back.segment("ERR", 1).is_none());
    }

    #[test]
    fn ae_with_err_escaped() {
        let m = parse(omi_v251().as_bytes(), &Limits::default()).unwrap();
        let err = Hl7Error::error(101, "PID-3 missing | really ^ & ~ \\ \r bad")
            .at(Location::new("PID", 1, 3, 1));
        let a = text(ack(m.header(), Err(&err)));
        assert_eq!(a.matches('\r').count(), 3, "{a:?}");
        let back = parse(a.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(back.get("MSA", 1, 1, 1, 1), "AE");
        assert_eq!(back.segment("ERR", 1).unwrap().raw_field(2), "PID^1^3^1^1");
        assert_eq!(back.get("ERR", 1, 3, 1, 1), "101");
        assert_eq!(back.get("ERR", 1, 3, 2, 1), "Required field missing");
        assert_eq!(back.get("ERR", 1, 3, 3, 1), "HL70357");
        assert_eq!(back.get("ERR", 1, 4, 1, 1), "E");
        assert_eq!(
            back.get("ERR", 1, 8, 1, 1),
            "PID-3 missing | really ^ & ~ \\ \r bad"
        );
        assert_eq!(back.get("ERR", 1, 1, 1, 1), "");
    }

    #[test]
    fn ar_v23_has_eld_and_msa3() {
        let m = parse(orm_v23().as_bytes(), &Limits::default()).unwrap();
        let err = Hl7Error::reject(200, "no").at(Location::new("MSH", 1, 9, 1));
        let a = text(ack(m.header(), Err(&err)));
        let back = parse(a.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(back.header().message_type, "ACK");
        assert_eq!(back.header().trigger_event, "O01");
        assert_eq!(back.header().message_structure, "");
        assert_eq!(back.get("MSA", 1, 1, 1, 1), "AR");
        assert_eq!(back.get("MSA", 1, 3, 1, 1), "no");
        assert_eq!(back.get("ERR", 1, 1, 1, 1), "MSH");
        assert_eq!(back.get("ERR", 1, 1, 3, 1), "9");
        assert_eq!(back.get("ERR", 1, 1, 4, 1), "200");
        assert_eq!(back.get("ERR", 1, 3, 1, 1), "200");
    }

    #[test]
    fn latin1_ack_is_latin1() {
        let raw =
            b"MSH|^~\\&|RIS|M\xfcnchen|||20240101||ADT^A08|X1|P|2.5|||||DE|8859/1\rPID|1||42\r";
        let m = parse(raw, &Limits::default()).unwrap();
        let a = ack(m.header(), Ok(()));
        assert!(a.windows(7).any(|w| w == b"M\xfcnchen"));
        let back = parse(&a, &Limits::default()).unwrap();
        assert_eq!(back.header().receiving_facility.namespace, "München");
    }

    #[test]
    fn nak_unparsed_best_effort() {
        let raw = b"MSH|^~\\&|RIS|GH|ME|TELE|2024||ORM^O01|C\x01TRL9|P|2.5.1\rP\xffD|x\r";
        let e = parse(raw, &Limits::default()).unwrap_err();
        let a = nak_unparsed(raw, &e);
        let back = parse(&a, &Limits::default()).unwrap();
        assert_eq!(back.get("MSA", 1, 1, 1, 1), "AR");
        assert_eq!(back.get("MSA", 1, 2, 1, 1), "CTRL9");
        assert_eq!(back.header().receiving_application.namespace, "RIS");
        assert_eq!(back.get("ERR", 1, 3, 1, 1), "100");

        for junk in [
            &b""[..],
            b"garbage",
            b"MSH",
            b"MSH|^~\\&|x|||||||||||||||EBCDIC\r",
            &[0u8; 64],
        ] {
            let e = parse(junk, &Limits::default()).unwrap_err();
            let a = nak_unparsed(junk, &e);
            let back = parse(&a, &Limits::default()).unwrap();
            assert_eq!(back.get("MSA", 1, 1, 1, 1), "AR");
            assert_eq!(back.header().version, "2.5");
        }
        let big = ParseError::TooLarge { size: 5, limit: 4 };
        let a = text(nak_unparsed(b"MSH|^~\\&|A", &big));
        assert!(
            a.contains("ERR|||207^Application internal error^HL70357|E||||message exceeds 4 bytes"),
            "{a}"
        );
    }
}
