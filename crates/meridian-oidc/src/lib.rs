//! OpenID Connect login for Meridian: the authorization code flow with PKCE (S256), for a
//! confidential client (`client_secret_basic` or `client_secret_post`, as the provider's
//! discovery document allows) or a public one (no secret).
//!
//! ```text
//! OidcClient::discover(cfg)          GET {issuer}/.well-known/openid-configuration, GET jwks_uri
//! client.begin() -> (url, pending)   redirect the browser to url; keep pending server-side, by state
//! client.finish(&pending, code, state) on the callback: state check, code exchange, ID token
//!                                    validation, userinfo merge -> Identity
//! ```
//!
//! Transport: reqwest over rustls with the `ring` provider (built here, not installed process
//! wide) and the operating system's trust store (rustls-platform-verifier). Plain `http` is
//! accepted only for loopback issuers and endpoints (tests). Redirects are never followed and
//! every response body is size-limited. Nothing here logs or returns a token, a code, a client
//! secret or a PKCE verifier.

mod error;
mod idtoken;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::{Host, Url};

pub use error::{IdTokenError, OidcError};
pub use idtoken::CLOCK_LEEWAY_SECS;

/// Scopes asked for unless the configuration says otherwise. Scopes other than `openid` that
/// the provider's discovery document does not list in `scopes_supported` (when it has that
/// list) are left out, so `groups` is asked for only where the provider knows it.
pub const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];

/// How long a login may take between [`OidcClient::begin`] and [`OidcClient::finish`].
pub const PENDING_LOGIN_TTL_MS: i64 = 10 * 60 * 1000;

/// Largest response body accepted from the provider.
const MAX_BODY: usize = 512 * 1024;

/// What Meridian knows about its OpenID provider.
#[derive(Clone)]
pub struct OidcConfig {
    /// The issuer identifier, exactly as the provider states it (`iss`), e.g.
    /// `https://login.example.org/realms/meridian`. `http` only for loopback hosts.
    pub issuer: String,
    pub client_id: String,
    /// `None` for a public client (PKCE only).
    pub client_secret: Option<String>,
    /// Meridian's callback, e.g. `https://meridian.example.org/auth/oidc/callback`.
    pub redirect_uri: String,
    /// Defaults to [`DEFAULT_SCOPES`]; `openid` is always sent.
    pub scopes: Vec<String>,
}

impl OidcConfig {
    /// A configuration with the [`DEFAULT_SCOPES`].
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Option<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret,
            redirect_uri: redirect_uri.into(),
            scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// A login in progress: keep it server-side, keyed by `state`, until the callback.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier (a secret until the code is exchanged).
    pub verifier: String,
    /// When [`OidcClient::begin`] made it, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// Who logged in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// `sub`: the provider's stable identifier of the user (unique per issuer).
    pub subject: String,
    pub issuer: String,
    /// `preferred_username`, else `email`, else `sub`.
    pub username: String,
    /// The ID token's claims, with those only the userinfo endpoint returned merged in (the
    /// ID token wins where both have a claim).
    pub claims: Map<String, Value>,
}

/// The values of a group-like claim: an array of strings, or a single string (one group).
/// `claim` may be a dotted path into nested objects (e.g. Keycloak's `realm_access.roles`)
/// when no top-level claim has that exact name. Empty values are dropped.
pub fn groups(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    let value = claims.get(claim).or_else(|| {
        let mut parts = claim.split('.');
        let mut v = claims.get(parts.next()?)?;
        for p in parts {
            v = v.as_object()?.get(p)?;
        }
        Some(v)
    });
    let mut out = Vec::new();
    let mut push = |s: &str| {
        let s = s.trim();
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    };
    match value {
        Some(Value::String(s)) => push(s),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).for_each(push),
        _ => {}
    }
    out
}

/// An OpenID provider, discovered. Cheap to clone (shared state).
#[derive(Clone)]
pub struct OidcClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: OidcConfig,
    http: reqwest::Client,
    authorization_endpoint: Url,
    token_endpoint: Url,
    userinfo_endpoint: Option<Url>,
    jwks_uri: Url,
    token_auth: TokenAuth,
    scope: String,
    keys: RwLock<Arc<Vec<Jwk>>>,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("OidcClient")
            .field("issuer", &i.cfg.issuer)
            .field("client_id", &i.cfg.client_id)
            .field("token_auth", &i.token_auth.name())
            .field("scope", &i.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenAuth {
    Basic,
    Post,
    None,
}

impl TokenAuth {
    fn name(self) -> &'static str {
        match self {
            TokenAuth::Basic => "client_secret_basic",
            TokenAuth::Post => "client_secret_post",
            TokenAuth::None => "none",
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    jwks_uri: String,
    #[serde(default)]
    response_types_supported: Vec<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// No `Debug`: it holds tokens.
#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: Option<String>,
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    error_description: Option<String>,
}

impl OidcClient {
    /// Fetches the provider's discovery document and JWKS, and checks them against `cfg`.
    pub async fn discover(cfg: OidcConfig) -> Result<OidcClient, OidcError> {
        let issuer = check_url("issuer", &cfg.issuer)?;
        if issuer.query().is_some() {
            return Err(OidcError::Config(format!(
                "issuer {:?} must not have a query",
                cfg.issuer
            )));
        }
        let redirect = Url::parse(&cfg.redirect_uri)
            .map_err(|e| OidcError::Config(format!("redirect_uri {:?}: {e}", cfg.redirect_uri)))?;
        if !matches!(redirect.scheme(), "https" | "http") || redirect.fragment().is_some() {
            return Err(OidcError::Config(format!(
                "redirect_uri {:?} must be an absolute http(s) URL without a fragment",
                cfg.redirect_uri
            )));
        }
        if cfg.client_id.is_empty() {
            return Err(OidcError::Config("client_id is empty".into()));
        }
        if cfg.client_secret.as_deref() == Some("") {
            return Err(OidcError::Config(
                "client_secret is empty (leave it unset for a public client)".into(),
            ));
        }
        let http = http_client()?;

        let well_known = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let well_known = check_url("discovery URL", &well_known)?;
        let body = get(&http, "discovery", well_known, None).await?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| OidcError::Malformed {
            what: "discovery",
            detail: e.to_string(),
        })?;
        if d.issuer != cfg.issuer {
            return Err(OidcError::IssuerMismatch {
                expected: cfg.issuer.clone(),
                found: d.issuer,
            });
        }
        let authorization_endpoint =
            check_url("authorization_endpoint", &d.authorization_endpoint)?;
        let token_endpoint = check_url(
            "token_endpoint",
            d.token_endpoint
                .as_deref()
                .ok_or_else(|| OidcError::Malformed {
                    what: "discovery",
                    detail: "no token_endpoint (the authorization code flow needs one)".into(),
                })?,
        )?;
        let userinfo_endpoint = d
            .userinfo_endpoint
            .as_deref()
            .map(|u| check_url("userinfo_endpoint", u))
            .transpose()?;
        let jwks_uri = check_url("jwks_uri", &d.jwks_uri)?;
        if !d.response_types_supported.is_empty()
            && !d.response_types_supported.iter().any(|r| r == "code")
        {
            return Err(OidcError::Config(
                "the provider does not support response_type=code".into(),
            ));
        }
        if let Some(m) = &d.code_challenge_methods_supported
            && !m.iter().any(|m| m == "S256")
        {
            return Err(OidcError::Config(
                "the provider does not support PKCE with S256".into(),
            ));
        }

        let token_auth = match &cfg.client_secret {
            None => TokenAuth::None,
            Some(_) => {
                // Absent: client_secret_basic is the default (Discovery 1.0, section 3).
                let methods = d
                    .token_endpoint_auth_methods_supported
                    .unwrap_or_else(|| vec!["client_secret_basic".into()]);
                if methods.iter().any(|m| m == "client_secret_basic") {
                    TokenAuth::Basic
                } else if methods.iter().any(|m| m == "client_secret_post") {
                    TokenAuth::Post
                } else {
                    return Err(OidcError::Config(format!(
                        "the token endpoint takes none of client_secret_basic, client_secret_post (it offers {methods:?})"
                    )));
                }
            }
        };

        let mut scopes: Vec<&str> = vec!["openid"];
        for s in cfg.scopes.iter().map(String::as_str) {
            if s.is_empty() || scopes.contains(&s) {
                continue;
            }
            match &d.scopes_supported {
                Some(supported) if !supported.iter().any(|x| x == s) => {
                    tracing::info!(
                        scope = s,
                        "oidc: scope not offered by the provider; not asked for"
                    );
                }
                _ => scopes.push(s),
            }
        }
        let scope = scopes.join(" ");

        let keys = fetch_jwks(&http, &jwks_uri).await?;
        tracing::debug!(
            issuer = %cfg.issuer,
            token_auth = token_auth.name(),
            scope = %scope,
            keys = keys.len(),
            "oidc: provider discovered"
        );
        Ok(OidcClient {
            inner: Arc::new(Inner {
                cfg,
                http,
                authorization_endpoint,
                token_endpoint,
                userinfo_endpoint,
                jwks_uri,
                token_auth,
                scope,
                keys: RwLock::new(Arc::new(keys)),
            }),
        })
    }

    /// Starts a login: the provider URL to send the browser to, and what to keep for the
    /// callback (fresh random state, nonce and PKCE verifier; the S256 challenge is in the URL).
    pub fn begin(&self) -> (String, PendingLogin) {
        let pending = PendingLogin {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            created_ms: now_ms(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        let i = &self.inner;
        let mut url = i.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &i.cfg.client_id)
            .append_pair("redirect_uri", &i.cfg.redirect_uri)
            .append_pair("scope", &i.scope)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        (url.into(), pending)
    }

    /// Completes a login from the callback's `code` and `state`: checks the state, exchanges
    /// the code (with the PKCE verifier), validates the ID token, merges userinfo claims.
    pub async fn finish(
        &self,
        pending: &PendingLogin,
        code: &str,
        returned_state: &str,
    ) -> Result<Identity, OidcError> {
        if pending.state.is_empty()
            || !bool::from(pending.state.as_bytes().ct_eq(returned_state.as_bytes()))
        {
            return Err(OidcError::StateMismatch);
        }
        if now_ms().saturating_sub(pending.created_ms) > PENDING_LOGIN_TTL_MS {
            return Err(OidcError::LoginExpired {
                max_minutes: PENDING_LOGIN_TTL_MS / 60_000,
            });
        }
        if code.is_empty() {
            return Err(OidcError::Malformed {
                what: "callback",
                detail: "empty code".into(),
            });
        }

        let tokens = self.exchange(pending, code).await?;
        let id_token = tokens.id_token.as_deref().ok_or(OidcError::Malformed {
            what: "token endpoint",
            detail: "no id_token in the response (was the openid scope granted?)".into(),
        })?;
        let mut claims = self.validate_id_token(id_token, &pending.nonce).await?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();

        if let (Some(endpoint), Some(access_token)) = (
            &self.inner.userinfo_endpoint,
            tokens.access_token.as_deref(),
        ) {
            let bearer = tokens
                .token_type
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case("bearer"));
            if bearer {
                self.merge_userinfo(endpoint, access_token, &subject, &mut claims)
                    .await?;
            }
        }

        let username = ["preferred_username", "email"]
            .iter()
            .find_map(|c| {
                claims
                    .get(*c)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or(&subject)
            .to_owned();
        Ok(Identity {
            subject,
            issuer: self.inner.cfg.issuer.clone(),
            username,
            claims,
        })
    }

    async fn exchange(
        &self,
        pending: &PendingLogin,
        code: &str,
    ) -> Result<TokenResponse, OidcError> {
        let i = &self.inner;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &i.cfg.redirect_uri),
            ("code_verifier", &pending.verifier),
        ];
        let secret = i.cfg.client_secret.as_deref().unwrap_or_default();
        let mut req = i.http.post(i.token_endpoint.clone());
        match i.token_auth {
            TokenAuth::Basic => {
                // RFC 6749, 2.3.1: both parts form-urlencoded before base64.
                let user: String =
                    url::form_urlencoded::byte_serialize(i.cfg.client_id.as_bytes()).collect();
                let pass: String =
                    url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                let basic = STANDARD.encode(format!("{user}:{pass}"));
                req = req.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
            }
            TokenAuth::Post => {
                form.push(("client_id", &i.cfg.client_id));
                form.push(("client_secret", secret));
            }
            TokenAuth::None => form.push(("client_id", &i.cfg.client_id)),
        }
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|source| OidcError::Http {
                what: "token endpoint",
                source: source.without_url(),
            })?;
        let status = resp.status();
        let body = read_limited(resp, "token endpoint").await?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<TokenError>(&body) {
                Ok(e) => OidcError::TokenRejected {
                    status: status.as_u16(),
                    error: truncate(&e.error, 100),
                    description: e.error_description.map(|d| truncate(&d, 300)),
                },
                Err(_) => OidcError::Status {
                    what: "token endpoint",
                    status: status.as_u16(),
                },
            });
        }
        serde_json::from_slice(&body).map_err(|_| OidcError::Malformed {
            what: "token endpoint",
            detail: "the response is not a JSON token response".into(),
        })
    }

    async fn validate_id_token(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        let header = idtoken::header(token)?;
        let mut keys = idtoken::candidate_keys(&self.keys(), &header);
        if keys.is_empty() {
            // The provider may have rotated its keys since discovery: look once more.
            tracing::info!(kid = ?header.kid, "oidc: no matching key in the cached JWKS; refetching");
            let fresh = fetch_jwks(&self.inner.http, &self.inner.jwks_uri).await?;
            keys = idtoken::candidate_keys(&fresh, &header);
            *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        }
        let want = idtoken::Expected {
            issuer: &self.inner.cfg.issuer,
            client_id: &self.inner.cfg.client_id,
            nonce,
            now: (now_ms() / 1000).max(0) as u64,
        };
        Ok(idtoken::validate(token, &header, &keys, &want)?)
    }

    fn keys(&self) -> Arc<Vec<Jwk>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds the userinfo claims the ID token lacks. The endpoint is optional: if it fails, the
    /// login goes on with the ID token's claims (logged); a response about another subject
    /// fails the login.
    async fn merge_userinfo(
        &self,
        endpoint: &Url,
        access_token: &str,
        subject: &str,
        claims: &mut Map<String, Value>,
    ) -> Result<(), OidcError> {
        let info = match get(
            &self.inner.http,
            "userinfo",
            endpoint.clone(),
            Some(access_token),
        )
        .await
        .and_then(|body| {
            serde_json::from_slice::<Map<String, Value>>(&body).map_err(|_| OidcError::Malformed {
                what: "userinfo",
                detail: "not a JSON object (signed or encrypted userinfo is not supported)".into(),
            })
        }) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "oidc: userinfo unavailable; using the ID token's claims only");
                return Ok(());
            }
        };
        if info.get("sub").and_then(Value::as_str) != Some(subject) {
            return Err(OidcError::Userinfo(
                "the response is about another subject than the ID token".into(),
            ));
        }
        for (k, v) in info {
            claims.entry(k).or_insert(v);
        }
        Ok(())
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(a)) => a.is_loopback(),
        Some(Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// A URL this client will send requests to: https, or http to a loopback host; no
/// credentials, no fragment.
fn check_url(what: &str, raw: &str) -> Result<Url, OidcError> {
    let u = Url::parse(raw).map_err(|e| OidcError::Config(format!("{what} {raw:?}: {e}")))?;
    match u.scheme() {
        "https" if u.host().is_some() => {}
        "http" if is_loopback(&u) => {}
        "http" => {
            return Err(OidcError::Config(format!(
                "{what} {raw:?} must use https (plain http only for 127.0.0.1, ::1 or localhost)"
            )));
        }
        _ => {
            return Err(OidcError::Config(format!(
                "{what} {raw:?} is not an https URL"
            )));
        }
    }
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err(OidcError::Config(format!(
            "{what} {raw:?} must not have credentials or a fragment"
        )));
    }
    Ok(u)
}

/// reqwest over rustls with the ring provider and the platform's trust store. The provider is
/// passed explicitly: nothing is installed process-wide.
fn http_client() -> Result<reqwest::Client, OidcError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| OidcError::Config(format!("TLS trust store: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcError::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("meridian-oidc/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))
}

async fn get(
    http: &reqwest::Client,
    what: &'static str,
    url: Url,
    bearer: Option<&str>,
) -> Result<Vec<u8>, OidcError> {
    let mut req = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|source| OidcError::Http { what, source })?;
    if !resp.status().is_success() {
        return Err(OidcError::Status {
            what,
            status: resp.status().as_u16(),
        });
    }
    read_limited(resp, what).await
}

async fn read_limited(
    mut resp: reqwest::Response,
    what: &'static str,
) -> Result<Vec<u8>, OidcError> {
    let too_large = OidcError::TooLarge {
        what,
        limit: MAX_BODY,
    };
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| OidcError::Http { what, source })?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn fetch_jwks(http: &reqwest::Client, uri: &Url) -> Result<Vec<Jwk>, OidcError> {
    let body = get(http, "jwks", uri.clone(), None).await?;
    let keys = idtoken::parse_jwks(&body).map_err(|detail| OidcError::Malformed {
        what: "jwks",
        detail,
    })?;
    if keys.is_empty() {
        return Err(OidcError::Malformed {
            what: "jwks",
            detail: "no usable signing key".into(),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn groups_from_arrays_strings_and_paths() {
        let c = map(serde_json::json!({
            "groups": ["radiologists", " site-a-techs ", "", 7, "radiologists"],
            "single": "readers",
            "realm_access": {"roles": ["admin"]},
            "a.b": "dotted-name",
            "a": {"b": "nested"},
            "num": 3
        }));
        assert_eq!(groups(&c, "groups"), ["radiologists", "site-a-techs"]);
        assert_eq!(groups(&c, "single"), ["readers"]);
        assert_eq!(groups(&c, "realm_access.roles"), ["admin"]);
        assert_eq!(groups(&c, "a.b"), ["dotted-name"]);
        assert!(groups(&c, "num").is_empty());
        assert!(groups(&c, "missing").is_empty());
        assert!(groups(&c, "realm_access.missing").is_empty());
    }

    #[test]
    fn url_rules() {
        for ok in [
            "https://idp.example.org/realms/x",
            "http://127.0.0.1:8080",
            "http://localhost:9/x",
            "http://[::1]:9",
            "http://127.1.2.3",
        ] {
            assert!(check_url("issuer", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.org",
            "http://10.0.0.1",
            "http://localhost.example.org",
            "ftp://127.0.0.1",
            "https://user:pw@idp.example.org",
            "https://idp.example.org/#x",
            "not a url",
        ] {
            assert!(
                matches!(check_url("issuer", bad), Err(OidcError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let cfg = OidcConfig::new("https://i", "c", Some("hunter2".into()), "https://m/cb");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(cfg.scopes, DEFAULT_SCOPES);
        let p = PendingLogin {
            state: "st4te".into(),
            nonce: "n0nce".into(),
            verifier: "v3rifier".into(),
            created_ms: 1,
        };
        let d = format!("{p:?}");
        assert!(!d.contains("st4te") && !d.contains("n0nce") && !d.contains("v3rifier"));
    }

    #[test]
    fn random_tokens_are_pkce_verifiers() {
        let a = random_token();
        // RFC 7636: 43..=128 characters of [A-Za-z0-9-._~].
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(a, random_token());
    }

    #[test]
    fn truncation_is_char_safe() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééééé", 2), "éé...");
    }
}
