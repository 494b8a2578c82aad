//! Character sets named in MSH-18 (HL7 table 0211) and the decoding of a whole message.
//!
//! MSH-18 is read from the raw bytes before anything is decoded: every supported character set
//! is ASCII-compatible, so the field and repetition separators found as bytes are reliable.
//! Only the first repetition of MSH-18 (the default character set) is used; ISO 2022 code
//! extensions (further repetitions, `\C..\`/`\M..\` escapes) are not interpreted.
//!
//! | MSH-18 (spaces, `_` and `-` ignored, any case) | decoded as |
//! |---|---|
//! | empty, `ASCII`, `ISO IR6` | UTF-8 if the whole message is valid UTF-8, else ISO 8859-1 ([`Charset::Utf8`] / [`Charset::Latin1`]) |
//! | `8859/1`, `ISO IR100`, `ISO 8859-1` | ISO 8859-1 (every byte is the code point of the same value) |
//! | `8859/2`..`8859/8`, `8859/15` (and `ISO IR101`, `109`, `110`, `144`, `127`, `126`, `138`, `203`) | ISO 8859-n |
//! | `8859/9`, `ISO IR148` | windows-1254 (identical to ISO 8859-9 in 0xA0–0xFF) |
//! | `UNICODE UTF-8`, `UNICODE`, `UTF-8`, `ISO IR192` | UTF-8, strict |
//! | `GB 18030-2000`, `BIG-5`, `KS X 1001` | GB 18030, Big5, EUC-KR |
//! | anything else (UTF-16/32, ISO 2022 Japanese, ...) | rejected: [`crate::er7::ParseError::UnsupportedCharset`] |
//!
//! A declared character set is strict: bytes that are not valid in it reject the message
//! ([`crate::er7::ParseError::InvalidText`]) rather than silently altering a patient's name.

use encoding_rs::Encoding;

/// The character set a message was (or an acknowledgement will be) encoded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// UTF-8.
    Utf8,
    /// ISO 8859-1: byte value = code point.
    Latin1,
    /// Another ASCII-compatible, stateless encoding.
    Other(&'static Encoding),
}

/// What MSH-18 asks for, before the bytes are seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declared {
    /// Empty or ASCII: UTF-8 when valid, else Latin-1.
    Default,
    Exact(Charset),
}

impl Charset {
    /// A short name for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Latin1 => "ISO-8859-1",
            Charset::Other(e) => e.name(),
        }
    }
}

/// Looks an MSH-18 value up. `None`: not supported.
pub(crate) fn lookup(value: &str) -> Option<Declared> {
    let norm: String = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let iso8859 = norm
        .strip_prefix("8859/")
        .or_else(|| norm.strip_prefix("ISO8859/"))
        .or_else(|| norm.strip_prefix("ISO8859"));
    if let Some(part) = iso8859 {
        return iso_8859(part);
    }
    let ir = norm.strip_prefix("ISOIR").and_then(|n| match n {
        "6" => Some("ASCII"),
        "100" => Some("1"),
        "101" => Some("2"),
        "109" => Some("3"),
        "110" => Some("4"),
        "144" => Some("5"),
        "127" => Some("6"),
        "126" => Some("7"),
        "138" => Some("8"),
        "148" => Some("9"),
        "203" => Some("15"),
        "192" => Some("UTF8"),
        _ => None,
    });
    match ir {
        Some("ASCII") => return Some(Declared::Default),
        Some("UTF8") => return Some(Declared::Exact(Charset::Utf8)),
        Some(part) => return iso_8859(part),
        None => {}
    }
    match norm.as_str() {
        "" | "ASCII" | "USASCII" => Some(Declared::Default),
        "UNICODEUTF8" | "UNICODE" | "UTF8" => Some(Declared::Exact(Charset::Utf8)),
        "GB180302000" | "GB18030" => Some(Declared::Exact(Charset::Other(encoding_rs::GB18030))),
        "BIG5" => Some(Declared::Exact(Charset::Other(encoding_rs::BIG5))),
        "KSX1001" => Some(Declared::Exact(Charset::Other(encoding_rs::EUC_KR))),
        _ => None,
    }
}

fn iso_8859(part: &str) -> Option<Declared> {
    let enc = match part {
        "1" => return Some(Declared::Exact(Charset::Latin1)),
        "2" => encoding_rs::ISO_8859_2,
        "3" => encoding_rs::ISO_8859_3,
        "4" => encoding_rs::ISO_8859_4,
        "5" => encoding_rs::ISO_8859_5,
        "6" => encoding_rs::ISO_8859_6,
        "7" => encoding_rs::ISO_8859_7,
        "8" => encoding_rs::ISO_8859_8,
        "9" => encoding_rs::WINDOWS_1254,
        "15" => encoding_rs::ISO_8859_15,
        _ => return None,
    };
    Some(Declared::Exact(Charset::Other(enc)))
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decodes `bytes`; `Err(charset name)` when they are not valid in the declared set.
pub(crate) fn decode(bytes: &[u8], declared: Declared) -> Result<(String, Charset), &'static str> {
    match declared {
        Declared::Default => match std::str::from_utf8(bytes) {
            Ok(s) => Ok((s.to_owned(), Charset::Utf8)),
            Err(_) => Ok((latin1(bytes), Charset::Latin1)),
        },
        Declared::Exact(cs) => decode_exact(bytes, cs).map(|s| (s, cs)).ok_or(cs.name()),
    }
}

fn decode_exact(bytes: &[u8], cs: Charset) -> Option<String> {
    match cs {
        Charset::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_owned),
        Charset::Latin1 => Some(latin1(bytes)),
        Charset::Other(enc) => enc
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|c| c.into_owned()),
    }
}

/// Decodes the bytes of a `\Xhh..\` escape: in the message's character set, falling back to
/// Latin-1 (never fails, never panics).
pub(crate) fn decode_escaped_bytes(bytes: &[u8], cs: Charset) -> String {
    decode_exact(bytes, cs).unwrap_or_else(|| latin1(bytes))
}

/// Encodes `text` in `cs`; characters the set cannot represent become `?`.
pub(crate) fn encode(text: &str, cs: Charset) -> Vec<u8> {
    match cs {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Latin1 => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect(),
        Charset::Other(enc) => {
            let mut out = Vec::with_capacity(text.len());
            let mut buf = [0u8; 4];
            for c in text.chars() {
                if c.is_ascii() {
                    out.push(c as u8);
                    continue;
                }
                let (bytes, _, had_errors) = enc.encode(c.encode_utf8(&mut buf));
                if had_errors {
                    out.push(b'?');
                } else {
                    out.extend_from_slice(&bytes);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(lookup(""), Some(Declared::Default));
        assert_eq!(lookup("ASCII"), Some(Declared::Default));
        assert_eq!(lookup("8859/1"), Some(Declared::Exact(Charset::Latin1)));
        assert_eq!(lookup("ISO IR100"), Some(Declared::Exact(Charset::Latin1)));
        assert_eq!(lookup("ISO_IR 100"), Some(Declared::Exact(Charset::Latin1)));
        assert_eq!(
            lookup("8859/15"),
            Some(Declared::Exact(Charset::Other(encoding_rs::ISO_8859_15)))
        );
        assert_eq!(
            lookup("UNICODE UTF-8"),
            Some(Declared::Exact(Charset::Utf8))
        );
        assert_eq!(lookup("ISO IR192"), Some(Declared::Exact(Charset::Utf8)));
        assert_eq!(lookup("UNICODE UTF-16"), None);
        assert_eq!(lookup("8859/12"), None);
        assert_eq!(lookup("EBCDIC"), None);
    }

    #[test]
    fn decoding() {
        let (s, cs) = decode(b"M\xfcller", Declared::Default).unwrap();
        assert_eq!((s.as_str(), cs), ("Müller", Charset::Latin1));
        let (s, cs) = decode("Müller".as_bytes(), Declared::Default).unwrap();
        assert_eq!((s.as_str(), cs), ("Müller", Charset::Utf8));
        assert!(decode(b"M\xfcller", Declared::Exact(Charset::Utf8)).is_err());
        let (s, _) = decode(
            b"\xa4",
            Declared::Exact(Charset::Other(encoding_rs::ISO_8859_15)),
        )
        .unwrap();
        assert_eq!(s, "€");
        assert_eq!(encode("Müller€", Charset::Latin1), b"M\xfcller?");
        assert_eq!(
            encode("€ü", Charset::Other(encoding_rs::ISO_8859_15)),
            b"\xa4\xfc"
        );
    }
}
