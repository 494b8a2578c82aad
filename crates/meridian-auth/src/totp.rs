//! TOTP second factor (RFC 6238, HMAC-SHA1, 30 s steps, 6 digits), as
//! authenticator apps implement it; secrets are base32 (RFC 4648).

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const STEP: u64 = 30;

/// A new random secret, base32 without padding (160 bits).
pub fn new_secret() -> String {
    let mut b = [0u8; 20];
    rand::fill(&mut b);
    data_encoding::BASE32_NOPAD.encode(&b)
}

fn decode(secret_b32: &str) -> Option<Vec<u8>> {
    let s: String = secret_b32
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    data_encoding::BASE32_NOPAD.decode(s.as_bytes()).ok()
}

/// The code for a counter (RFC 4226 HOTP).
pub fn hotp(key: &[u8], counter: u64) -> Option<u32> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).ok()?;
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    Some(bin % 1_000_000)
}

/// The code at `unix_secs`.
pub fn code_at(secret_b32: &str, unix_secs: u64) -> Option<u32> {
    hotp(&decode(secret_b32)?, unix_secs / STEP)
}

/// Accepts the code of the current step or one step either side (clock skew).
/// Returns the matched step so a caller can refuse its reuse.
pub fn verify(secret_b32: &str, code: &str, unix_secs: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let key = decode(secret_b32)?;
    let now = unix_secs / STEP;
    [now.saturating_sub(1), now, now + 1]
        .into_iter()
        .find(|&c| hotp(&key, c) == Some(want))
}

/// The `otpauth://` URI authenticator apps import (as a QR code or text).
pub fn uri(secret_b32: &str, user: &str, issuer: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(user),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", 8 digits there; we use 6
        // (the low 6 digits of the same truncated value).
        let key = b"12345678901234567890";
        let b32 = data_encoding::BASE32_NOPAD.encode(key);
        for (t, eight) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(code_at(&b32, t), Some(eight % 1_000_000), "t={t}");
        }
        let c = format!("{:06}", code_at(&b32, 1234567890).unwrap_or(0));
        assert!(verify(&b32, &c, 1234567890 + 29).is_some());
        assert!(verify(&b32, &c, 1234567890 + 90).is_none());
        assert!(verify(&b32, "12345", 0).is_none());
        assert!(uri(&b32, "a b", "Meridian").starts_with("otpauth://totp/Meridian:a%20b?"));
    }
}
