//! ID token validation (OpenID Connect Core 1.0, 3.1.3.7): signature against the provider's
//! JWKS, `iss`, `aud`/`azp`, `exp`/`nbf`/`iat`, `nonce`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::IdTokenError;

/// Allowed clock skew between Meridian and the provider, seconds.
pub const CLOCK_LEEWAY_SECS: u64 = 60;

/// The parts of the JOSE header that matter here.
#[derive(Debug)]
pub(crate) struct JoseHeader {
    pub alg: Algorithm,
    pub alg_name: String,
    pub kid: Option<String>,
}

/// Parses the protected header without trusting anything: rejects `alg: none` (and an empty
/// signature) and the HMAC algorithms (a shared-secret signature proves nothing about the
/// provider to a confidential client here, and a public client has no secret).
pub(crate) fn header(token: &str) -> Result<JoseHeader, IdTokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let raw = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| IdTokenError::Malformed("header is not base64url".into()))?;
    let value: Value = serde_json::from_slice(&raw)
        .map_err(|_| IdTokenError::Malformed("header is not JSON".into()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| IdTokenError::Malformed("header is not a JSON object".into()))?;
    let alg_name = obj
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| IdTokenError::Malformed("header has no alg".into()))?
        .to_owned();
    if alg_name.eq_ignore_ascii_case("none") || sig.is_empty() {
        return Err(IdTokenError::Unsigned);
    }
    if obj.contains_key("crit") {
        // No extension is understood here, so a critical one must fail (RFC 7515, 4.1.11).
        return Err(IdTokenError::Malformed("unsupported crit header".into()));
    }
    let alg = match alg_name.as_str() {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(IdTokenError::UnsupportedAlgorithm(alg_name)),
    };
    let kid = obj.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok(JoseHeader { alg, alg_name, kid })
}

/// Parses a JWKS document leniently: keys this crate cannot use (encryption keys, unknown key
/// types) are skipped rather than failing the whole set.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    Ok(keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter(|k| !matches!(k.algorithm, AlgorithmParameters::Other(_)))
        .collect())
}

fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(ka) = jwk.common.key_algorithm {
        let same = matches!(
            (ka, alg),
            (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::RS384, Algorithm::RS384)
                | (KeyAlgorithm::RS512, Algorithm::RS512)
                | (KeyAlgorithm::PS256, Algorithm::PS256)
                | (KeyAlgorithm::PS384, Algorithm::PS384)
                | (KeyAlgorithm::PS512, Algorithm::PS512)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::ES384, Algorithm::ES384)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        );
        if !same {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// The keys that may have signed a token with this header: same `kid` (when the header has
/// one), a signing key, of the algorithm's type.
pub(crate) fn candidate_keys(keys: &[Jwk], h: &JoseHeader) -> Vec<DecodingKey> {
    keys.iter()
        .filter(|k| match &h.kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .filter(|k| key_fits(k, h.alg))
        .filter_map(|k| DecodingKey::from_jwk(k).ok())
        .collect()
}

/// What the token must say.
pub(crate) struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// Verifies the signature with one of `keys` and validates the claims.
pub(crate) fn validate(
    token: &str,
    h: &JoseHeader,
    keys: &[DecodingKey],
    want: &Expected<'_>,
) -> Result<Map<String, Value>, IdTokenError> {
    let mut v = Validation::new(h.alg);
    v.leeway = CLOCK_LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    // iss and aud are checked below, with the OIDC rules and clearer errors.
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

    let mut last = IdTokenError::UnknownKey {
        kid: h.kid.clone(),
        alg: h.alg_name.clone(),
    };
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, &v) {
            Ok(data) => return check_claims(data.claims, want),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = match e.kind() {
                    K::InvalidSignature
                    | K::InvalidEcdsaKey
                    | K::InvalidEddsaKey
                    | K::InvalidRsaKey(_)
                    | K::InvalidKeyFormat => IdTokenError::BadSignature,
                    K::ExpiredSignature => return Err(IdTokenError::Expired),
                    K::ImmatureSignature => return Err(IdTokenError::NotYetValid),
                    K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => {
                        return Err(IdTokenError::MissingClaim(c.clone()));
                    }
                    K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
                        return Err(IdTokenError::UnsupportedAlgorithm(h.alg_name.clone()));
                    }
                    K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => {
                        return Err(IdTokenError::Malformed(e.to_string()));
                    }
                    _ => IdTokenError::BadSignature,
                };
            }
        }
    }
    Err(last)
}

fn check_claims(
    claims: Map<String, Value>,
    want: &Expected<'_>,
) -> Result<Map<String, Value>, IdTokenError> {
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if iss != want.issuer {
        return Err(IdTokenError::WrongIssuer {
            expected: want.issuer.to_owned(),
            found: iss.to_owned(),
        });
    }

    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(IdTokenError::MissingClaim("aud".into())),
    };
    if !audiences.contains(&want.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == want.client_id => {}
        Some(_) => return Err(IdTokenError::WrongAuthorizedParty),
        // Several audiences: azp is required (Core 3.1.3.7, 4 and 5).
        None if audiences.len() > 1 => return Err(IdTokenError::WrongAuthorizedParty),
        None => {}
    }

    match claims.get("iat") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(iat) if iat <= (want.now + CLOCK_LEEWAY_SECS) as f64 => {}
            Some(_) => return Err(IdTokenError::IssuedInFuture),
            None => return Err(IdTokenError::MissingClaim("iat".into())),
        },
        _ => return Err(IdTokenError::MissingClaim("iat".into())),
    }

    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(IdTokenError::MissingClaim("sub".into())),
    }

    let nonce = claims
        .get("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if nonce.is_empty() || !bool::from(nonce.as_bytes().ct_eq(want.nonce.as_bytes())) {
        return Err(IdTokenError::WrongNonce);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn alg_none_is_rejected_in_any_spelling() {
        for alg in ["none", "None", "NONE"] {
            let t = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64("{}"));
            assert_eq!(header(&t).unwrap_err(), IdTokenError::Unsigned);
        }
        let t = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(header(&t).unwrap_err(), IdTokenError::Unsigned);
    }

    #[test]
    fn hmac_and_unknown_algorithms_are_rejected() {
        for alg in ["HS256", "HS512", "RSA-OAEP", ""] {
            let t = format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}"}}"#)),
                b64("{}")
            );
            assert!(
                matches!(header(&t), Err(IdTokenError::UnsupportedAlgorithm(_))),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.c2ln",
            "e30.e30.c2ln",
            "W10.e30.c2ln",
        ] {
            assert!(matches!(header(t), Err(IdTokenError::Malformed(_))), "{t}");
        }
        let crit = format!("{}.e30.c2ln", b64(r#"{"alg":"RS256","crit":["exp"]}"#));
        assert!(matches!(header(&crit), Err(IdTokenError::Malformed(_))));
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"XYZ","kid":"odd"},
            {"kty":"EC","kid":"ec","crv":"P-256","x":"AQ","y":"AQ","use":"sig"}
        ]}"#;
        let keys = parse_jwks(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].common.key_id.as_deref(), Some("ec"));
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"nope").is_err());
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn want() -> Expected<'static> {
        Expected {
            issuer: "https://idp.example",
            client_id: "meridian",
            nonce: "n-1",
            now: 1_000_000,
        }
    }

    #[test]
    fn claim_rules() {
        let ok = serde_json::json!({"iss":"https://idp.example","aud":"meridian","sub":"u","iat":1_000_000,"nonce":"n-1"});
        assert!(check_claims(claims(ok.clone()), &want()).is_ok());

        let mut c = claims(ok.clone());
        c.insert("aud".into(), serde_json::json!(["other", "meridian"]));
        // Several audiences without azp: rejected even though aud contains the client.
        assert_eq!(
            check_claims(c.clone(), &want()).unwrap_err(),
            IdTokenError::WrongAuthorizedParty
        );
        c.insert("azp".into(), "meridian".into());
        assert!(check_claims(c.clone(), &want()).is_ok());
        c.insert("azp".into(), "other".into());
        assert_eq!(
            check_claims(c, &want()).unwrap_err(),
            IdTokenError::WrongAuthorizedParty
        );

        let mut c = claims(ok.clone());
        c.insert("aud".into(), serde_json::json!(["other"]));
        assert_eq!(
            check_claims(c, &want()).unwrap_err(),
            IdTokenError::WrongAudience
        );

        let mut c = claims(ok.clone());
        c.insert("iss".into(), "https://idp.example/".into());
        assert!(matches!(
            check_claims(c, &want()),
            Err(IdTokenError::WrongIssuer { .. })
        ));

        let mut c = claims(ok.clone());
        c.insert("iat".into(), (1_000_000 + CLOCK_LEEWAY_SECS + 5).into());
        assert_eq!(
            check_claims(c, &want()).unwrap_err(),
            IdTokenError::IssuedInFuture
        );

        let mut c = claims(ok.clone());
        c.remove("iat");
        assert_eq!(
            check_claims(c, &want()).unwrap_err(),
            IdTokenError::MissingClaim("iat".into())
        );

        for bad in [
            serde_json::json!("n-2"),
            serde_json::json!(""),
            serde_json::json!(1),
        ] {
            let mut c = claims(ok.clone());
            c.insert("nonce".into(), bad);
            assert_eq!(
                check_claims(c, &want()).unwrap_err(),
                IdTokenError::WrongNonce
            );
        }
        let mut c = claims(ok);
        c.remove("nonce");
        assert_eq!(
            check_claims(c, &want()).unwrap_err(),
            IdTokenError::WrongNonce
        );
    }
}
