//! multipart/related bodies (RFC 2387) for WADO-RS responses.

use bytes::Bytes;

/// A fresh boundary.
pub fn boundary() -> String {
    format!(
        "meridian-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The header block preceding a part.
pub fn part_head(boundary: &str, content_type: &str, location: Option<&str>) -> Bytes {
    let mut s = format!("\r\n--{boundary}\r\nContent-Type: {content_type}\r\n");
    if let Some(l) = location {
        s.push_str(&format!("Content-Location: {l}\r\n"));
    }
    s.push_str("\r\n");
    Bytes::from(s)
}

/// The closing delimiter.
pub fn close(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

/// Content-Type of the whole multipart response.
pub fn content_type(boundary: &str, part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// Parses the media types (and their `type`/`transfer-syntax` parameters)
/// from an Accept header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AcceptItem {
    pub media: String,
    pub part_type: Option<String>,
    pub transfer_syntax: Option<String>,
}

pub fn parse_accept(h: Option<&str>) -> Vec<AcceptItem> {
    let Some(h) = h else { return Vec::new() };
    let mut out = Vec::new();
    // Split on commas that are not inside quotes.
    let mut items = Vec::new();
    let (mut cur, mut q) = (String::new(), false);
    for c in h.chars() {
        match c {
            '"' => {
                q = !q;
                cur.push(c);
            }
            ',' if !q => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    for it in items {
        let mut parts = it.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let mut a = AcceptItem {
            media,
            ..Default::default()
        };
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                let v = v.trim().trim_matches('"').to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "type" => a.part_type = Some(v.to_ascii_lowercase()),
                    "transfer-syntax" => a.transfer_syntax = Some(v),
                    _ => {}
                }
            }
        }
        out.push(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_parsing() {
        let v = parse_accept(Some(
            "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*, image/jpeg;q=0.5",
        ));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].media, "multipart/related");
        assert_eq!(v[0].part_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(v[0].transfer_syntax.as_deref(), Some("*"));
        assert_eq!(v[1].media, "image/jpeg");
    }
}
