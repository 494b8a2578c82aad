//! A structural pre-scan of untrusted DICOM data sets.
//!
//! Before any untrusted data set is handed to a full parser, this walks every
//! element header (recursing into sequences, items and encapsulated pixel
//! data) and checks that every declared length fits inside its container and
//! under the element size limit, and that nesting is bounded. This keeps the
//! later parse bounded in memory and time: a malformed header that declares
//! gigabytes is refused here in microseconds.

use thiserror::Error;

/// Why a data set was refused by the scan.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScanError {
    #[error("data set truncated: element ({0:04X},{1:04X}) header at offset {2} runs past the end")]
    TruncatedHeader(u16, u16, usize),
    #[error("element ({0:04X},{1:04X}) declares length {2} but only {3} bytes remain")]
    LengthPastEnd(u16, u16, u64, usize),
    #[error("element ({0:04X},{1:04X}) of {2} bytes exceeds the element size limit of {3} bytes")]
    ElementTooLarge(u16, u16, u64, u64),
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("undefined length on element ({0:04X},{1:04X}) that cannot have one")]
    BadUndefinedLength(u16, u16),
    #[error("missing sequence or item delimiter")]
    MissingDelimiter,
    #[error("invalid VR bytes at offset {0}")]
    BadVr(usize),
    #[error(
        "element ({0:04X},{1:04X}) has VR UN with undefined length (CP-246), which is not accepted"
    )]
    UndefinedLengthUn(u16, u16),
    #[error("unexpected tag ({0:04X},{1:04X}) inside a sequence")]
    BadItem(u16, u16),
}

/// Encoding of the data set being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 24;

struct Scanner {
    max_element: u64,
    pixel_data: std::cell::Cell<Option<usize>>,
}

fn u16_at(b: &[u8], i: usize, be: bool) -> u16 {
    let x = [b[i], b[i + 1]];
    if be {
        u16::from_be_bytes(x)
    } else {
        u16::from_le_bytes(x)
    }
}

fn u32_at(b: &[u8], i: usize, be: bool) -> u32 {
    let x = [b[i], b[i + 1], b[i + 2], b[i + 3]];
    if be {
        u32::from_be_bytes(x)
    } else {
        u32::from_le_bytes(x)
    }
}

/// VRs that use the 4-byte length form in explicit VR encoding.
fn long_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"SV"
            | b"UV"
    )
}

/// Scans a data set (no preamble, no file meta group). `max_element` bounds
/// any single element's value length.
pub fn scan_dataset(data: &[u8], enc: Encoding, max_element: u64) -> Result<ScanInfo, ScanError> {
    let s = Scanner {
        max_element,
        pixel_data: std::cell::Cell::new(None),
    };
    let end = s.elements(data, 0, data.len(), enc, 0, false)?;
    debug_assert!(end <= data.len());
    Ok(ScanInfo {
        pixel_data_offset: s.pixel_data.get(),
    })
}

/// The offset of the top-level Pixel Data element when only `prefix` of a
/// data set has arrived: `Some` once every element before it is present and
/// well formed (what follows is not looked at), `None` if the prefix ends,
/// or is malformed, before it. The header found this way must still be
/// checked against the whole data set with [`scan_dataset`] once it is complete.
pub fn pixel_data_in_prefix(prefix: &[u8], enc: Encoding, max_element: u64) -> Option<usize> {
    let s = Scanner {
        max_element,
        pixel_data: std::cell::Cell::new(None),
    };
    // The walk stops with an error at the end of the prefix; the offset is
    // recorded as soon as the element's tag is read, after every earlier
    // element passed.
    let _ = s.elements(prefix, 0, prefix.len(), enc, 0, false);
    s.pixel_data.get()
}

/// What the scan learned about the data set's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanInfo {
    /// Offset of the top-level Pixel Data element header, if present.
    pub pixel_data_offset: Option<usize>,
}

impl Scanner {
    /// Walks elements in `data[pos..end]`. When `in_undefined_item` is true, stops
    /// after an item delimitation item and returns the position after it.
    fn elements(
        &self,
        data: &[u8],
        mut pos: usize,
        end: usize,
        enc: Encoding,
        depth: usize,
        in_undefined_item: bool,
    ) -> Result<usize, ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::TooDeep(MAX_DEPTH));
        }
        while pos < end {
            if end - pos < 8 {
                // Trailing padding of fewer than 8 bytes at the end of a data set is garbage.
                let (g, e) = if end - pos >= 4 {
                    (
                        u16_at(data, pos, enc.big_endian),
                        u16_at(data, pos + 2, enc.big_endian),
                    )
                } else {
                    (0, 0)
                };
                return Err(ScanError::TruncatedHeader(g, e, pos));
            }
            let group = u16_at(data, pos, enc.big_endian);
            let elem = u16_at(data, pos + 2, enc.big_endian);
            if depth == 0 && group == 0x7FE0 && elem == 0x0010 && self.pixel_data.get().is_none() {
                self.pixel_data.set(Some(pos));
            }
            if group == 0xFFFE {
                if elem == 0xE00D && in_undefined_item {
                    return Ok(pos + 8);
                }
                return Err(ScanError::BadItem(group, elem));
            }
            let (vr, len, header) = if enc.explicit_vr {
                let vr = [data[pos + 4], data[pos + 5]];
                if !vr.iter().all(|c| c.is_ascii_uppercase()) {
                    return Err(ScanError::BadVr(pos + 4));
                }
                if long_vr(vr) {
                    if end - pos < 12 {
                        return Err(ScanError::TruncatedHeader(group, elem, pos));
                    }
                    (Some(vr), u32_at(data, pos + 8, enc.big_endian), 12)
                } else {
                    (
                        Some(vr),
                        u32::from(u16_at(data, pos + 6, enc.big_endian)),
                        8,
                    )
                }
            } else {
                (None, u32_at(data, pos + 4, enc.big_endian), 8)
            };
            pos += header;
            if len == UNDEFINED {
                let is_pixel = group == 0x7FE0 && elem == 0x0010;
                match vr {
                    Some(v) if &v == b"SQ" => {
                        pos = self.sequence(data, pos, end, enc, depth + 1)?
                    }
                    // UN of undefined length holds an implicit VR sequence (CP-246); the
                    // downstream parser does not decode it safely, so it is refused.
                    Some(v) if &v == b"UN" => {
                        return Err(ScanError::UndefinedLengthUn(group, elem));
                    }
                    _ if is_pixel => pos = self.fragments(data, pos, end, enc)?,
                    None => pos = self.sequence(data, pos, end, enc, depth + 1)?,
                    _ => return Err(ScanError::BadUndefinedLength(group, elem)),
                }
                continue;
            }
            let len64 = u64::from(len);
            if len64 > self.max_element {
                return Err(ScanError::ElementTooLarge(
                    group,
                    elem,
                    len64,
                    self.max_element,
                ));
            }
            let len = len as usize;
            if len > end - pos {
                return Err(ScanError::LengthPastEnd(group, elem, len64, end - pos));
            }
            if vr.is_some_and(|v| &v == b"SQ") && len > 0 {
                self.defined_sequence(data, pos, pos + len, enc, depth + 1)?;
            }
            pos += len;
        }
        if in_undefined_item {
            return Err(ScanError::MissingDelimiter);
        }
        Ok(pos)
    }

    fn item_header(
        &self,
        data: &[u8],
        pos: usize,
        end: usize,
        enc: Encoding,
    ) -> Result<(u16, u16, u32), ScanError> {
        if end - pos < 8 {
            return Err(ScanError::MissingDelimiter);
        }
        Ok((
            u16_at(data, pos, enc.big_endian),
            u16_at(data, pos + 2, enc.big_endian),
            u32_at(data, pos + 4, enc.big_endian),
        ))
    }

    /// Items of a sequence of undefined length, up to its delimiter.
    fn sequence(
        &self,
        data: &[u8],
        mut pos: usize,
        end: usize,
        enc: Encoding,
        depth: usize,
    ) -> Result<usize, ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::TooDeep(MAX_DEPTH));
        }
        loop {
            let (g, e, len) = self.item_header(data, pos, end, enc)?;
            pos += 8;
            match (g, e) {
                (0xFFFE, 0xE0DD) => return Ok(pos),
                (0xFFFE, 0xE000) => pos = self.item(data, pos, end, enc, depth, len, g, e)?,
                _ => return Err(ScanError::BadItem(g, e)),
            }
        }
    }

    /// Items of a sequence of defined length, exactly filling `pos..end`.
    fn defined_sequence(
        &self,
        data: &[u8],
        mut pos: usize,
        end: usize,
        enc: Encoding,
        depth: usize,
    ) -> Result<(), ScanError> {
        while pos < end {
            let (g, e, len) = self.item_header(data, pos, end, enc)?;
            pos += 8;
            if (g, e) != (0xFFFE, 0xE000) {
                return Err(ScanError::BadItem(g, e));
            }
            pos = self.item(data, pos, end, enc, depth, len, g, e)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn item(
        &self,
        data: &[u8],
        pos: usize,
        end: usize,
        enc: Encoding,
        depth: usize,
        len: u32,
        g: u16,
        e: u16,
    ) -> Result<usize, ScanError> {
        if len == UNDEFINED {
            self.elements(data, pos, end, enc, depth + 1, true)
        } else {
            let l = len as usize;
            if l > end - pos {
                return Err(ScanError::LengthPastEnd(g, e, u64::from(len), end - pos));
            }
            self.elements(data, pos, pos + l, enc, depth + 1, false)?;
            Ok(pos + l)
        }
    }

    /// Encapsulated pixel data fragments up to the sequence delimiter.
    fn fragments(
        &self,
        data: &[u8],
        mut pos: usize,
        end: usize,
        enc: Encoding,
    ) -> Result<usize, ScanError> {
        loop {
            let (g, e, len) = self.item_header(data, pos, end, enc)?;
            pos += 8;
            match (g, e) {
                (0xFFFE, 0xE0DD) => return Ok(pos),
                (0xFFFE, 0xE000) => {
                    let l = u64::from(len);
                    if len == UNDEFINED || l as usize > end - pos {
                        return Err(ScanError::LengthPastEnd(g, e, l, end - pos));
                    }
                    pos += len as usize;
                }
                _ => return Err(ScanError::BadItem(g, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
    const IMPLICIT: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
    };

    fn el_explicit(g: u16, e: u16, vr: &[u8; 2], val: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(g.to_le_bytes());
        v.extend(e.to_le_bytes());
        v.extend(vr);
        if long_vr(*vr) {
            v.extend([0, 0]);
            v.extend((val.len() as u32).to_le_bytes());
        } else {
            v.extend((val.len() as u16).to_le_bytes());
        }
        v.extend(val);
        v
    }

    #[test]
    fn accepts_simple_and_nested() {
        let mut d = el_explicit(0x0008, 0x0018, b"UI", b"1.2.3\0");
        let inner = el_explicit(0x0008, 0x0100, b"SH", b"ABCD");
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend((inner.len() as u32).to_le_bytes());
        item.extend(&inner);
        d.extend(el_explicit(0x0008, 0x1115, b"SQ", &item));
        assert!(scan_dataset(&d, EXPLICIT, 1 << 30).is_ok());
    }

    #[test]
    fn rejects_length_past_end() {
        let mut d = el_explicit(0x0010, 0x0010, b"PN", b"DOE^JOHN");
        d.truncate(d.len() - 3);
        assert!(matches!(
            scan_dataset(&d, EXPLICIT, 1 << 30),
            Err(ScanError::LengthPastEnd(0x0010, 0x0010, 8, 5))
        ));
    }

    #[test]
    fn rejects_huge_declared_length_implicit() {
        let mut d = vec![0x10, 0x00, 0x10, 0x00];
        d.extend(0xFFFF_FFF0u32.to_le_bytes());
        d.extend(b"DOE");
        assert!(scan_dataset(&d, IMPLICIT, 1 << 30).is_err());
    }

    #[test]
    fn rejects_missing_delimiter_and_deep_nesting() {
        // Undefined-length SQ with no delimiter.
        let mut d = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0];
        d.extend(UNDEFINED.to_le_bytes());
        assert!(scan_dataset(&d, EXPLICIT, 1 << 30).is_err());
        // Deeply nested undefined-length items.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend([0x08, 0x00, 0x15, 0x11]);
            deep.extend(UNDEFINED.to_le_bytes());
            deep.extend([0xFE, 0xFF, 0x00, 0xE0]);
            deep.extend(UNDEFINED.to_le_bytes());
        }
        assert_eq!(
            scan_dataset(&deep, IMPLICIT, 1 << 30),
            Err(ScanError::TooDeep(MAX_DEPTH))
        );
    }

    #[test]
    fn element_size_limit() {
        let d = el_explicit(0x7FE0, 0x0010, b"OW", &[0u8; 64]);
        assert!(matches!(
            scan_dataset(&d, EXPLICIT, 32),
            Err(ScanError::ElementTooLarge(..))
        ));
        assert_eq!(
            scan_dataset(&d, EXPLICIT, 64),
            Ok(ScanInfo {
                pixel_data_offset: Some(0)
            })
        );
    }
}
