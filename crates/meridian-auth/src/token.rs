//! API tokens: `mrd_<id>_<secret>`. The id is public (listing, revocation);
//! only the SHA-256 of the secret is stored. Sessions use the same secret
//! generator and hash.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new random secret, 32 bytes as lowercase hex.
pub fn secret() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    hex::encode(b)
}

/// SHA-256 of a secret, hex. Secrets carry 256 bits of entropy, so a fast hash suffices.
pub fn hash_secret(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Constant-time comparison of two hex digests.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A new API token.
pub struct NewToken {
    /// Public id (listing, revocation).
    pub id: String,
    /// The whole token, shown once.
    pub text: String,
    /// What is stored: the SHA-256 of the secret part.
    pub secret_hash: String,
}

/// A new token.
pub fn generate() -> NewToken {
    let mut id = [0u8; 6];
    rand::fill(&mut id);
    let id = hex::encode(id);
    let secret = secret();
    NewToken {
        text: format!("mrd_{id}_{secret}"),
        secret_hash: hash_secret(&secret),
        id,
    }
}

/// Splits a presented token into (id, secret); None if malformed.
pub fn parse(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("mrd_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, 12) && hexy(secret, 64)).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format() {
        let t = generate();
        let (pid, sec) = parse(&t.text).expect("parses");
        assert_eq!(pid, t.id);
        assert_eq!(hash_secret(sec), t.secret_hash);
        assert!(parse("mrd_zz_00").is_none());
        assert!(parse("Bearer x").is_none());
        assert!(same(&hash_secret("a"), &hash_secret("a")));
        assert!(!same(&hash_secret("a"), &hash_secret("b")));
    }
}
