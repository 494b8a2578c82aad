//! Errors. No variant carries a token, a code, a client secret or a PKCE verifier.

/// Why an OpenID Connect operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The configuration cannot work (bad URL, plain http to a non-loopback host, ...).
    #[error("OIDC configuration: {0}")]
    Config(String),
    /// The provider could not be reached, or the connection failed.
    #[error("OIDC {what}: request failed: {source}")]
    Http {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an unexpected HTTP status.
    #[error("OIDC {what}: the provider answered HTTP {status}")]
    Status { what: &'static str, status: u16 },
    /// A response was larger than this client accepts.
    #[error("OIDC {what}: response larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    /// A response was not what the protocol says it is.
    #[error("OIDC {what}: malformed response: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The discovery document names another issuer than the configured one.
    #[error(
        "OIDC discovery: the provider calls itself {found:?}, but the configured issuer is {expected:?} (they must be identical)"
    )]
    IssuerMismatch { expected: String, found: String },
    /// The `state` of the callback is not the one of this login (CSRF, or a stale tab).
    #[error("OIDC login: the callback's state does not match this login")]
    StateMismatch,
    /// The login was started too long ago.
    #[error("OIDC login: expired (started more than {max_minutes} minutes ago)")]
    LoginExpired { max_minutes: i64 },
    /// The token endpoint refused the authorization code (unknown, expired, already used,
    /// wrong PKCE verifier, bad client credentials, ...).
    #[error("OIDC token endpoint refused the request (HTTP {status}): {error}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    TokenRejected {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// The ID token failed validation.
    #[error("OIDC ID token rejected: {0}")]
    IdToken(#[from] IdTokenError),
    /// The userinfo response contradicts the ID token.
    #[error("OIDC userinfo: {0}")]
    Userinfo(String),
}

/// Why an ID token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    #[error("unsigned token (alg \"none\")")]
    Unsigned,
    #[error(
        "signature algorithm {0:?} is not accepted (RS256/384/512, PS256/384/512, ES256/384, EdDSA are)"
    )]
    UnsupportedAlgorithm(String),
    #[error("no key in the provider's JWKS matches (kid {kid:?}, alg {alg})")]
    UnknownKey { kid: Option<String>, alg: String },
    #[error("signature does not verify against the provider's key")]
    BadSignature,
    #[error("expired (exp is in the past)")]
    Expired,
    #[error("not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("issued in the future (iat)")]
    IssuedInFuture,
    #[error("iss {found:?} is not the issuer {expected:?}")]
    WrongIssuer { expected: String, found: String },
    #[error("aud does not contain this client's id")]
    WrongAudience,
    #[error("azp is not this client's id")]
    WrongAuthorizedParty,
    #[error("nonce does not match this login")]
    WrongNonce,
    #[error("required claim {0:?} is missing or malformed")]
    MissingClaim(String),
}
