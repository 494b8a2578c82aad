//! DICOM JSON (PS3.18 Annex F) for metadata and query results.

use base64::Engine;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as J, json};

/// Binary values up to this size are inlined; larger ones become BulkDataURIs.
pub const INLINE_BINARY_MAX: usize = 256;

/// Renders one attribute value for DICOM JSON from a decoded string
/// (multi-values separated by `\`).
pub fn string_attr(vr: &str, value: &str) -> J {
    let vals: Vec<J> = value
        .split('\\')
        .map(|v| {
            let v = v.trim_end_matches(['\0', ' ']);
            match vr {
                "PN" => pn_json(v),
                "IS" => v.trim().parse::<i64>().map(J::from).unwrap_or(J::Null),
                "DS" => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(J::Number))
                    .unwrap_or(J::Null),
                "US" | "UL" | "SS" | "SL" => {
                    v.trim().parse::<i64>().map(J::from).unwrap_or(J::Null)
                }
                _ if v.is_empty() => J::Null,
                _ => J::String(v.to_owned()),
            }
        })
        .collect();
    if vals.iter().all(J::is_null) && value.is_empty() {
        json!({ "vr": vr })
    } else {
        json!({ "vr": vr, "Value": vals })
    }
}

fn pn_json(v: &str) -> J {
    if v.is_empty() {
        return J::Null;
    }
    let mut m = Map::new();
    for (i, group) in v.split('=').enumerate() {
        let key = match i {
            0 => "Alphabetic",
            1 => "Ideographic",
            2 => "Phonetic",
            _ => break,
        };
        if !group.is_empty() {
            m.insert(key.to_owned(), J::String(group.to_owned()));
        }
    }
    J::Object(m)
}

/// Formats a tag as eight upper-case hex digits.
pub fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.0, tag.1)
}

fn is_binary(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

/// Converts a data set to DICOM JSON. Large binary values become
/// `BulkDataURI`s under `bulk_base` (`{bulk_base}/{tag}[/{item}/{tag}...]`).
pub fn to_json(obj: &InMemDicomObject, bulk_base: &str) -> J {
    let charset = crate::parse::charset_of(obj);
    J::Object(dataset_json(obj, bulk_base, "", &charset))
}

fn dataset_json(
    obj: &InMemDicomObject,
    bulk_base: &str,
    path: &str,
    charset: &str,
) -> Map<String, J> {
    let mut m = Map::new();
    for e in obj.iter() {
        let tag = e.header().tag;
        if tag.0 == 0x0002 || tag.1 == 0x0000 {
            continue;
        }
        let key = tag_key(tag);
        let vr = e.vr();
        let vr_s = vr.to_string();
        let elem_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}/{key}")
        };
        let v = match e.value() {
            Value::Sequence(seq) => {
                let items: Vec<J> = seq
                    .items()
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        J::Object(dataset_json(
                            item,
                            bulk_base,
                            &format!("{elem_path}/{i}"),
                            charset,
                        ))
                    })
                    .collect();
                if items.is_empty() {
                    json!({"vr": "SQ"})
                } else {
                    json!({"vr": "SQ", "Value": items})
                }
            }
            Value::PixelSequence(_) => {
                json!({"vr": vr_s, "BulkDataURI": format!("{bulk_base}/{elem_path}")})
            }
            Value::Primitive(p) => primitive_json(vr, vr_s, p, bulk_base, &elem_path, charset),
        };
        m.insert(key, v);
    }
    m
}

fn primitive_json(
    vr: VR,
    vr_s: &str,
    p: &PrimitiveValue,
    bulk_base: &str,
    elem_path: &str,
    charset: &str,
) -> J {
    if matches!(p, PrimitiveValue::Empty) {
        return json!({ "vr": vr_s });
    }
    if is_binary(vr) {
        let bytes = p.to_bytes();
        if bytes.len() > INLINE_BINARY_MAX || elem_path.ends_with("7FE00010") {
            return json!({"vr": vr_s, "BulkDataURI": format!("{bulk_base}/{elem_path}")});
        }
        return json!({"vr": vr_s, "InlineBinary": base64::engine::general_purpose::STANDARD.encode(&bytes)});
    }
    match vr {
        VR::AT => {
            let vals: Vec<J> = match p {
                PrimitiveValue::Tags(t) => t.iter().map(|t| J::String(tag_key(*t))).collect(),
                _ => vec![],
            };
            json!({"vr": "AT", "Value": vals})
        }
        VR::FL | VR::FD => {
            let vals: Vec<J> = p
                .to_multi_float64()
                .map(|v| {
                    v.into_iter()
                        .map(|f| {
                            serde_json::Number::from_f64(f)
                                .map(J::Number)
                                .unwrap_or(J::Null)
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({"vr": vr_s, "Value": vals})
        }
        VR::US | VR::SS | VR::UL | VR::SL | VR::SV | VR::UV => {
            let vals: Vec<J> = p
                .to_multi_int::<i64>()
                .map(|v| v.into_iter().map(J::from).collect())
                .unwrap_or_default();
            json!({"vr": vr_s, "Value": vals})
        }
        _ => {
            let s = crate::charset::fix(&p.to_multi_str().join("\\"), charset);
            let s = if vr == VR::PN {
                s.split('\\')
                    .map(meridian_core::query::normalize_pn)
                    .collect::<Vec<_>>()
                    .join("\\")
            } else {
                s
            };
            string_attr(vr_s, &s)
        }
    }
}

/// Finds the raw value of the element at a bulk data path (`TAG[/ITEM/TAG...]`).
pub fn bulk_at(obj: &InMemDicomObject, path: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut cur = obj;
    let mut i = 0;
    loop {
        let tag = parse_tag(parts.get(i)?)?;
        let e = cur.get(tag)?;
        if i + 1 == parts.len() {
            return match e.value() {
                Value::Primitive(p) => Some(p.to_bytes().into_owned()),
                Value::PixelSequence(ps) => Some(
                    ps.fragments()
                        .iter()
                        .flat_map(|f| f.iter().copied())
                        .collect(),
                ),
                Value::Sequence(_) => None,
            };
        }
        let idx: usize = parts.get(i + 1)?.parse().ok()?;
        match e.value() {
            Value::Sequence(seq) => cur = seq.items().get(idx)?,
            _ => return None,
        }
        i += 2;
    }
}

/// Parses eight hex digits into a tag.
pub fn parse_tag(s: &str) -> Option<Tag> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let n = u32::from_str_radix(s, 16).ok()?;
    Some(Tag((n >> 16) as u16, (n & 0xFFFF) as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_names_split_into_groups() {
        let j = string_attr("PN", "Yamada^Tarou=山田^太郎=やまだ^たろう");
        assert_eq!(j["Value"][0]["Alphabetic"], "Yamada^Tarou");
        assert_eq!(j["Value"][0]["Ideographic"], "山田^太郎");
        assert_eq!(j["Value"][0]["Phonetic"], "やまだ^たろう");
    }

    #[test]
    fn numbers_are_numbers() {
        assert_eq!(string_attr("IS", "12")["Value"][0], 12);
        assert_eq!(string_attr("DS", "1.5\\2")["Value"][1], 2.0);
        assert_eq!(string_attr("CS", "CT\\MR")["Value"][1], "MR");
        assert!(string_attr("LO", "").get("Value").is_none());
    }

    #[test]
    fn tags_parse() {
        assert_eq!(parse_tag("7FE00010"), Some(Tag(0x7FE0, 0x0010)));
        assert_eq!(parse_tag("../etc"), None);
    }
}
