//! ISO 2022 code extension (PS3.5 6.1.2.5) for Japanese (IR 13/87/159),
//! Korean (IR 149) and Chinese (IR 58) data sets.
//!
//! dicom-rs decodes values in these character sets as if each byte were
//! one Latin-1 character, leaving the escape sequences in the text. This
//! module re-reads those bytes with the escape sequences interpreted.

use encoding_rs::{EUC_KR, GBK, ISO_2022_JP, SHIFT_JIS};

/// Whether a SpecificCharacterSet value uses ISO 2022 multi-byte code extensions.
pub fn is_iso2022_multibyte(charset: &str) -> bool {
    ["IR 87", "IR 159", "IR 149", "IR 58", "IR 13"]
        .iter()
        .any(|c| charset.contains(c))
        && charset.contains("2022")
}

/// Repairs a value decoded byte-per-char by dicom-rs, given the data set's
/// SpecificCharacterSet. Values without escape sequences or high bytes are
/// returned as they are.
pub fn fix(decoded: &str, charset: &str) -> String {
    if !is_iso2022_multibyte(charset) || decoded.is_ascii() && !decoded.contains('\u{1b}') {
        return decoded.to_owned();
    }
    let mut bytes = Vec::with_capacity(decoded.len());
    for c in decoded.chars() {
        let u = c as u32;
        if (0xFF61..=0xFF9F).contains(&u) {
            // Half-width katakana already decoded from JIS X 0201 (IR 13): back to its byte.
            bytes.push((u - 0xFF61 + 0xA1) as u8);
            continue;
        }
        if u > 0xFF {
            // Not a byte-per-char decoding: leave it alone.
            return decoded.to_owned();
        }
        bytes.push(u as u8);
    }
    decode_iso2022(&bytes, charset)
}

#[derive(Clone, Copy, PartialEq)]
enum G0 {
    Ascii,
    Jis0208,
    Jis0212,
}

#[derive(Clone, Copy, PartialEq)]
enum G1 {
    Latin1,
    Katakana,
    Ksx1001,
    Gb2312,
}

/// Decodes ISO 2022 bytes. The first value of the character set decides
/// the initial G1 set.
pub fn decode_iso2022(b: &[u8], charset: &str) -> String {
    let first = charset.split('\\').next().unwrap_or("").trim();
    let initial_g1 = if first.contains("IR 13") {
        G1::Katakana
    } else if first.contains("IR 149") {
        G1::Ksx1001
    } else if first.contains("IR 58") {
        G1::Gb2312
    } else {
        G1::Latin1
    };
    let (mut g0, mut g1) = (G0::Ascii, initial_g1);
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0x1B {
            let rest = &b[i + 1..];
            let (len, change) = match rest {
                [b'(', b'B', ..] | [b'(', b'J', ..] => (3, Some((Some(G0::Ascii), None))),
                [b'$', b'B', ..] | [b'$', b'@', ..] => (3, Some((Some(G0::Jis0208), None))),
                [b'$', b'(', b'D', ..] => (4, Some((Some(G0::Jis0212), None))),
                [b')', b'I', ..] => (3, Some((None, Some(G1::Katakana)))),
                [b'$', b')', b'C', ..] => (4, Some((None, Some(G1::Ksx1001)))),
                [b'$', b')', b'A', ..] => (4, Some((None, Some(G1::Gb2312)))),
                [b'-', _, ..] => (3, Some((None, Some(G1::Latin1)))),
                _ => (1, None),
            };
            if let Some((a, c)) = change {
                if let Some(a) = a {
                    g0 = a;
                }
                if let Some(c) = c {
                    g1 = c;
                }
            }
            i += len;
            continue;
        }
        // A run of bytes in the same half (GL or GR) up to the next escape.
        let high = b[i] >= 0x80;
        let start = i;
        while i < b.len() && b[i] != 0x1B && (b[i] >= 0x80) == high {
            i += 1;
        }
        let run = &b[start..i];
        if !high {
            match g0 {
                G0::Ascii => out.extend(run.iter().map(|&c| c as char)),
                G0::Jis0208 | G0::Jis0212 => {
                    let mut v = Vec::with_capacity(run.len() + 6);
                    v.extend_from_slice(if g0 == G0::Jis0208 {
                        b"\x1b$B"
                    } else {
                        b"\x1b$(D"
                    });
                    v.extend_from_slice(run);
                    v.extend_from_slice(b"\x1b(B");
                    out.push_str(&ISO_2022_JP.decode_without_bom_handling(&v).0);
                }
            }
        } else {
            match g1 {
                G1::Latin1 => out.extend(run.iter().map(|&c| c as char)),
                G1::Katakana => out.push_str(&SHIFT_JIS.decode_without_bom_handling(run).0),
                G1::Ksx1001 => out.push_str(&EUC_KR.decode_without_bom_handling(run).0),
                G1::Gb2312 => out.push_str(&GBK.decode_without_bom_handling(run).0),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_ir87() {
        // "Yamada^Tarou=山田^太郎" as in PS3.5 H.3.1.
        let raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B";
        assert_eq!(
            decode_iso2022(raw, "\\ISO 2022 IR 87"),
            "Yamada^Tarou=山田^太郎"
        );
    }

    #[test]
    fn japanese_ir13_katakana() {
        let raw = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3";
        assert_eq!(
            decode_iso2022(raw, "ISO 2022 IR 13\\ISO 2022 IR 87"),
            "ﾔﾏﾀﾞ^ﾀﾛｳ"
        );
    }

    #[test]
    fn korean_ir149() {
        // "Hong^Gildong=洪^吉洞" (PS3.5 I.2).
        let raw = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7";
        assert_eq!(
            decode_iso2022(raw, "\\ISO 2022 IR 149"),
            "Hong^Gildong=洪^吉洞"
        );
    }

    #[test]
    fn fix_roundtrips_byte_per_char_strings() {
        let s: String = b"\x1b$)C\xb1\xe8".iter().map(|&b| b as char).collect();
        assert_eq!(fix(&s, "\\ISO 2022 IR 149"), "김");
        assert_eq!(fix("plain", "\\ISO 2022 IR 149"), "plain");
        assert_eq!(fix("Müller", "ISO_IR 100"), "Müller");
        // dicom-rs decodes IR 13 katakana itself but leaves IR 87 escapes as bytes.
        assert_eq!(
            fix(
                "ﾔﾏﾀﾞ^ﾀﾛｳ=\u{1b}$B;3ED\u{1b}(J",
                "ISO 2022 IR 13\\ISO 2022 IR 87"
            ),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田"
        );
    }
}
