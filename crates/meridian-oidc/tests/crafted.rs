//! `finish` against crafted ID tokens: a stand-in provider on loopback (axum) serves the
//! discovery document, a JWKS and a token endpoint that hands out whatever token the test
//! signed with locally generated keys (`tests/keys/*.pem`, test-only, made with
//! `openssl genpkey`). The real provider (oidc-provider) never issues bad tokens, so the
//! rejection paths are driven from here; `tests/provider.rs` covers the real flow.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meridian_oidc::{IdTokenError, OidcClient, OidcConfig, OidcError, PendingLogin};
use serde_json::{Value, json};

const RSA_A: &str = include_str!("keys/rsa-a.pem");
const RSA_B: &str = include_str!("keys/rsa-b.pem");
const EC_A: &str = include_str!("keys/ec-a.pem");
const CLIENT_ID: &str = "meridian";
const SECRET: &str = "s3cret:with+special/chars";

#[derive(Default)]
struct Mock {
    issuer: String,
    /// JWKS served on the next fetches, in order; the last one stays.
    jwks: Vec<Value>,
    jwks_hits: usize,
    /// Body of the next token response.
    token_response: Value,
    /// What the token endpoint saw.
    token_requests: Vec<TokenRequest>,
    userinfo: Option<(StatusCode, Value)>,
    discovery_extra: Value,
}

type Shared = Arc<Mutex<Mock>>;
/// The Authorization header and the form of one token request.
type TokenRequest = (Option<String>, Vec<(String, String)>);

async fn discovery(State(m): State<Shared>) -> Json<Value> {
    let m = m.lock().unwrap();
    let i = &m.issuer;
    let mut d = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/auth"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/me"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    });
    if let Value::Object(extra) = &m.discovery_extra {
        for (k, v) in extra {
            d[k] = v.clone();
        }
    }
    Json(d)
}

async fn jwks_route(State(m): State<Shared>) -> Response {
    let mut m = m.lock().unwrap();
    let idx = m.jwks_hits.min(m.jwks.len().saturating_sub(1));
    m.jwks_hits += 1;
    Json(m.jwks[idx].clone()).into_response()
}

async fn token(
    State(m): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut m = m.lock().unwrap();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    m.token_requests.push((auth, form));
    Json(m.token_response.clone()).into_response()
}

async fn userinfo(State(m): State<Shared>) -> Response {
    match m.lock().unwrap().userinfo.clone() {
        Some((status, body)) => (status, Json(body)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

struct Idp {
    state: Shared,
    issuer: String,
    _server: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start(jwks: Vec<Value>) -> Idp {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state: Shared = Arc::new(Mutex::new(Mock {
            issuer: issuer.clone(),
            jwks,
            ..Mock::default()
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_route))
            .route("/token", post(token))
            .route("/me", get(userinfo))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Idp {
            state,
            issuer,
            _server: server,
        }
    }

    fn config(&self) -> OidcConfig {
        OidcConfig::new(
            self.issuer.clone(),
            CLIENT_ID,
            Some(SECRET.to_owned()),
            "http://127.0.0.1:9/auth/oidc/callback",
        )
    }

    async fn client(&self) -> OidcClient {
        OidcClient::discover(self.config()).await.unwrap()
    }

    fn set(&self, f: impl FnOnce(&mut Mock)) {
        f(&mut self.state.lock().unwrap())
    }

    fn jwks_hits(&self) -> usize {
        self.state.lock().unwrap().jwks_hits
    }

    fn answer_id_token(&self, id_token: &str) {
        self.set(|m| {
            m.token_response =
                json!({"access_token": "at-1", "token_type": "Bearer", "id_token": id_token})
        });
    }

    /// Standard claims for `pending`, valid now.
    fn claims(&self, pending: &PendingLogin) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "aud": CLIENT_ID, "sub": "u-1", "nonce": pending.nonce,
            "iat": now, "exp": now + 300,
            "preferred_username": "alice", "groups": ["radiologists"],
        })
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Key {
    enc: EncodingKey,
    alg: Algorithm,
    kid: String,
}

impl Key {
    fn rsa(pem: &str, kid: &str) -> Key {
        Key {
            enc: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            alg: Algorithm::RS256,
            kid: kid.into(),
        }
    }
    fn ec(pem: &str, kid: &str) -> Key {
        Key {
            enc: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            alg: Algorithm::ES256,
            kid: kid.into(),
        }
    }
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.enc, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

fn jwks_of(keys: &[&Key]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

fn rejected(r: Result<meridian_oidc::Identity, OidcError>) -> IdTokenError {
    match r {
        Err(OidcError::IdToken(e)) => e,
        Err(e) => panic!("expected an ID token rejection, got {e}"),
        Ok(id) => panic!(
            "expected an ID token rejection, got a login as {}",
            id.username
        ),
    }
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_log_in() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let ec = Key::ec(EC_A, "ec-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa, &ec])]).await;
    let client = idp.client().await;
    for key in [&rsa, &ec] {
        let (url, pending) = client.begin();
        assert!(url.starts_with(&format!("{}/auth?", idp.issuer)));
        // `groups` is not in the mock's scopes_supported: not asked for.
        assert!(url.contains("scope=openid+profile+email&"), "{url}");
        idp.answer_id_token(&key.sign(&idp.claims(&pending)));
        let id = client
            .finish(&pending, "code-1", &pending.state)
            .await
            .unwrap();
        assert_eq!(id.subject, "u-1");
        assert_eq!(id.username, "alice");
        assert_eq!(id.issuer, idp.issuer);
        assert_eq!(
            meridian_oidc::groups(&id.claims, "groups"),
            ["radiologists"]
        );
    }
    // client_secret_basic, with id and secret form-urlencoded before base64 (RFC 6749 2.3.1),
    // and the PKCE verifier and redirect_uri in the form.
    let m = idp.state.lock().unwrap();
    let (auth, form) = &m.token_requests[0];
    let basic = auth.as_deref().unwrap().strip_prefix("Basic ").unwrap();
    let decoded = String::from_utf8(STANDARD.decode(basic).unwrap()).unwrap();
    assert_eq!(decoded, "meridian:s3cret%3Awith%2Bspecial%2Fchars");
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("grant_type"), Some("authorization_code"));
    assert_eq!(get("code"), Some("code-1"));
    assert_eq!(
        get("redirect_uri"),
        Some("http://127.0.0.1:9/auth/oidc/callback")
    );
    assert_eq!(get("code_verifier").map(str::len), Some(43));
    assert_eq!(get("client_secret"), None);
}

#[tokio::test]
async fn tampered_signature_or_payload_or_foreign_key_is_rejected() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let ec = Key::ec(EC_A, "ec-a");
    // Another key pretending to be rsa-a.
    let impostor = Key::rsa(RSA_B, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa, &ec])]).await;
    let client = idp.client().await;

    for key in [&rsa, &ec] {
        let (_, pending) = client.begin();
        let token = key.sign(&idp.claims(&pending));
        // Flip one bit of the signature.
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[5] ^= 0x01;
        idp.answer_id_token(&format!("{head}.{}", URL_SAFE_NO_PAD.encode(raw)));
        let r = client.finish(&pending, "c", &pending.state).await;
        assert_eq!(rejected(r), IdTokenError::BadSignature);

        // Same signature, other claims (a group added).
        let mut claims = idp.claims(&pending);
        claims["groups"] = json!(["radiologists", "admins"]);
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_payload;
        idp.answer_id_token(&parts.join("."));
        let r = client.finish(&pending, "c", &pending.state).await;
        assert_eq!(rejected(r), IdTokenError::BadSignature);
    }

    let (_, pending) = client.begin();
    idp.answer_id_token(&impostor.sign(&idp.claims(&pending)));
    let r = client.finish(&pending, "c", &pending.state).await;
    assert_eq!(rejected(r), IdTokenError::BadSignature);
}

#[tokio::test]
async fn claim_checks() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa])]).await;
    let client = idp.client().await;
    let now = now() as i64;

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, IdTokenError)> = vec![
        (
            "wrong audience",
            Box::new(|c| c["aud"] = json!("other-client")),
            IdTokenError::WrongAudience,
        ),
        (
            "audience list without us",
            Box::new(|c| c["aud"] = json!(["a", "b"])),
            IdTokenError::WrongAudience,
        ),
        (
            "several audiences, no azp",
            Box::new(|c| c["aud"] = json!([CLIENT_ID, "other"])),
            IdTokenError::WrongAuthorizedParty,
        ),
        (
            "azp of another client",
            Box::new(|c| c["azp"] = json!("other")),
            IdTokenError::WrongAuthorizedParty,
        ),
        (
            "wrong issuer",
            Box::new(|c| c["iss"] = json!("http://127.0.0.1:1")),
            IdTokenError::WrongIssuer {
                expected: idp.issuer.clone(),
                found: "http://127.0.0.1:1".into(),
            },
        ),
        (
            "wrong nonce",
            Box::new(|c| c["nonce"] = json!("another-login")),
            IdTokenError::WrongNonce,
        ),
        (
            "no nonce",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
            IdTokenError::WrongNonce,
        ),
        (
            "expired",
            Box::new(move |c| c["exp"] = json!(now - 3600)),
            IdTokenError::Expired,
        ),
        (
            "not yet valid",
            Box::new(move |c| c["nbf"] = json!(now + 3600)),
            IdTokenError::NotYetValid,
        ),
        (
            "issued in the future",
            Box::new(move |c| c["iat"] = json!(now + 3600)),
            IdTokenError::IssuedInFuture,
        ),
        (
            "no exp",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            IdTokenError::MissingClaim("exp".into()),
        ),
        (
            "no sub",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            IdTokenError::MissingClaim("sub".into()),
        ),
        (
            "empty sub",
            Box::new(|c| c["sub"] = json!("")),
            IdTokenError::MissingClaim("sub".into()),
        ),
    ];
    for (name, edit, want) in cases {
        let (_, pending) = client.begin();
        let mut claims = idp.claims(&pending);
        edit(&mut claims);
        idp.answer_id_token(&rsa.sign(&claims));
        let r = client.finish(&pending, "c", &pending.state).await;
        assert_eq!(rejected(r), want, "{name}");
    }

    // Within the leeway: accepted; several audiences with azp = us: accepted.
    let (_, pending) = client.begin();
    let mut claims = idp.claims(&pending);
    claims["exp"] = json!(now - 30);
    claims["iat"] = json!(now + 30);
    claims["aud"] = json!(["other", CLIENT_ID]);
    claims["azp"] = json!(CLIENT_ID);
    idp.answer_id_token(&rsa.sign(&claims));
    client.finish(&pending, "c", &pending.state).await.unwrap();
}

#[tokio::test]
async fn unsigned_and_hmac_tokens_are_rejected() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa])]).await;
    let client = idp.client().await;

    let (_, pending) = client.begin();
    let claims = serde_json::to_vec(&idp.claims(&pending)).unwrap();
    let body = URL_SAFE_NO_PAD.encode(&claims);
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","kid":"rsa-a"}"#] {
        let unsigned = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
        idp.answer_id_token(&unsigned);
        let r = client.finish(&pending, "c", &pending.state).await;
        assert_eq!(rejected(r), IdTokenError::Unsigned);
    }
    // RS256 header, no signature.
    let stripped = format!(
        "{}.{body}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"rsa-a"}"#)
    );
    idp.answer_id_token(&stripped);
    let r = client.finish(&pending, "c", &pending.state).await;
    assert_eq!(rejected(r), IdTokenError::Unsigned);

    // HS256 "signed" with the client secret (or with the public key's bytes): never accepted.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &idp.claims(&pending),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    idp.answer_id_token(&hs);
    let r = client.finish(&pending, "c", &pending.state).await;
    assert_eq!(
        rejected(r),
        IdTokenError::UnsupportedAlgorithm("HS256".into())
    );
}

#[tokio::test]
async fn unknown_kid_refetches_the_jwks_once() {
    let old = Key::rsa(RSA_A, "2024-key");
    let new = Key::rsa(RSA_B, "2025-key");
    // Discovery sees only the old key; the provider has rotated by the time of the login.
    let idp = Idp::start(vec![jwks_of(&[&old]), jwks_of(&[&new])]).await;
    let client = idp.client().await;
    assert_eq!(idp.jwks_hits(), 1);

    let (_, pending) = client.begin();
    idp.answer_id_token(&new.sign(&idp.claims(&pending)));
    let id = client.finish(&pending, "c", &pending.state).await.unwrap();
    assert_eq!(id.subject, "u-1");
    assert_eq!(idp.jwks_hits(), 2);

    // The refreshed set is kept: no further fetch for the new key.
    let (_, pending) = client.begin();
    idp.answer_id_token(&new.sign(&idp.claims(&pending)));
    client.finish(&pending, "c", &pending.state).await.unwrap();
    assert_eq!(idp.jwks_hits(), 2);

    // A kid nobody publishes: one refetch, then a clear error.
    let stranger = Key::ec(EC_A, "nobody");
    let (_, pending) = client.begin();
    idp.answer_id_token(&stranger.sign(&idp.claims(&pending)));
    let r = client.finish(&pending, "c", &pending.state).await;
    assert_eq!(
        rejected(r),
        IdTokenError::UnknownKey {
            kid: Some("nobody".into()),
            alg: "ES256".into()
        }
    );
    assert_eq!(idp.jwks_hits(), 3);
}

#[tokio::test]
async fn userinfo_is_merged_checked_and_optional() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa])]).await;
    let client = idp.client().await;

    // Claims only userinfo has are added; the ID token wins where both have one.
    idp.set(|m| {
        m.userinfo = Some((
            StatusCode::OK,
            json!({"sub": "u-1", "meridian_site": "site-a", "preferred_username": "mallory"}),
        ))
    });
    let (_, pending) = client.begin();
    idp.answer_id_token(&rsa.sign(&idp.claims(&pending)));
    let id = client.finish(&pending, "c", &pending.state).await.unwrap();
    assert_eq!(id.claims["meridian_site"], "site-a");
    assert_eq!(id.username, "alice");

    // Userinfo about someone else: the login fails.
    idp.set(|m| m.userinfo = Some((StatusCode::OK, json!({"sub": "u-2", "groups": ["admins"]}))));
    let (_, pending) = client.begin();
    idp.answer_id_token(&rsa.sign(&idp.claims(&pending)));
    let r = client.finish(&pending, "c", &pending.state).await;
    assert!(matches!(r, Err(OidcError::Userinfo(_))), "{r:?}");

    // Userinfo down: the ID token's claims are enough.
    idp.set(|m| m.userinfo = Some((StatusCode::INTERNAL_SERVER_ERROR, json!({}))));
    let (_, pending) = client.begin();
    idp.answer_id_token(&rsa.sign(&idp.claims(&pending)));
    let id = client.finish(&pending, "c", &pending.state).await.unwrap();
    assert!(!id.claims.contains_key("meridian_site"));

    // username falls back to email, then sub.
    idp.set(|m| m.userinfo = None);
    let (_, pending) = client.begin();
    let mut claims = idp.claims(&pending);
    claims.as_object_mut().unwrap().remove("preferred_username");
    claims["email"] = json!("alice@example.org");
    idp.answer_id_token(&rsa.sign(&claims));
    let id = client.finish(&pending, "c", &pending.state).await.unwrap();
    assert_eq!(id.username, "alice@example.org");
    claims.as_object_mut().unwrap().remove("email");
    let (_, pending) = client.begin();
    claims["nonce"] = json!(pending.nonce);
    idp.answer_id_token(&rsa.sign(&claims));
    let id = client.finish(&pending, "c", &pending.state).await.unwrap();
    assert_eq!(id.username, "u-1");
}

#[tokio::test]
async fn token_endpoint_and_callback_errors() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa])]).await;
    let client = idp.client().await;

    // No id_token (e.g. openid not granted).
    idp.set(|m| m.token_response = json!({"access_token": "x", "token_type": "Bearer"}));
    let (_, pending) = client.begin();
    let r = client.finish(&pending, "c", &pending.state).await;
    assert!(
        matches!(
            r,
            Err(OidcError::Malformed {
                what: "token endpoint",
                ..
            })
        ),
        "{r:?}"
    );

    // State checks come before any request.
    let requests = idp.state.lock().unwrap().token_requests.len();
    for bad in ["", "x", &pending.state[1..], &format!("{}x", pending.state)] {
        let r = client.finish(&pending, "c", bad).await;
        assert!(matches!(r, Err(OidcError::StateMismatch)), "{bad:?}: {r:?}");
    }
    let mut old = pending.clone();
    old.created_ms -= meridian_oidc::PENDING_LOGIN_TTL_MS + 1;
    let r = client.finish(&old, "c", &old.state).await;
    assert!(matches!(r, Err(OidcError::LoginExpired { .. })), "{r:?}");
    assert_eq!(idp.state.lock().unwrap().token_requests.len(), requests);

    // A PendingLogin survives a round trip through JSON (kept server-side between requests).
    let json = serde_json::to_string(&pending).unwrap();
    let back: PendingLogin = serde_json::from_str(&json).unwrap();
    assert_eq!(back.state, pending.state);
    assert_eq!(back.verifier, pending.verifier);
}

#[tokio::test]
async fn client_secret_post_when_basic_is_not_offered() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa])]).await;
    idp.set(|m| {
        m.discovery_extra = json!({"token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"]})
    });
    let client = idp.client().await;
    let (_, pending) = client.begin();
    idp.answer_id_token(&rsa.sign(&idp.claims(&pending)));
    client.finish(&pending, "c", &pending.state).await.unwrap();
    {
        let m = idp.state.lock().unwrap();
        let (auth, form) = m.token_requests.last().unwrap();
        assert!(auth.is_none());
        assert!(form.contains(&("client_id".into(), CLIENT_ID.into())));
        assert!(form.contains(&("client_secret".into(), SECRET.into())));
    }

    idp.set(|m| {
        m.discovery_extra = json!({"token_endpoint_auth_methods_supported": ["private_key_jwt"]})
    });
    let r = OidcClient::discover(idp.config()).await;
    assert!(matches!(r, Err(OidcError::Config(_))));
}

#[tokio::test]
async fn discovery_is_checked() {
    let rsa = Key::rsa(RSA_A, "rsa-a");
    let idp = Idp::start(vec![jwks_of(&[&rsa])]).await;

    // The issuer must be exactly what the provider says.
    let mut cfg = idp.config();
    cfg.issuer.push('/');
    let r = OidcClient::discover(cfg).await;
    assert!(matches!(r, Err(OidcError::IssuerMismatch { .. })), "{r:?}");

    // Endpoints over plain http to a non-loopback host are refused.
    idp.set(|m| m.discovery_extra = json!({"token_endpoint": "http://idp.example.org/token"}));
    let r = OidcClient::discover(idp.config()).await;
    assert!(
        matches!(&r, Err(OidcError::Config(m)) if m.contains("token_endpoint")),
        "{r:?}"
    );

    // No PKCE S256: refused.
    idp.set(|m| m.discovery_extra = json!({"code_challenge_methods_supported": ["plain"]}));
    let r = OidcClient::discover(idp.config()).await;
    assert!(matches!(r, Err(OidcError::Config(_))), "{r:?}");

    // An oversized JWKS is not read to the end.
    let big = json!({"keys": [rsa.jwk()], "padding": "x".repeat(600 * 1024)});
    idp.set(|m| {
        m.discovery_extra = json!({});
        m.jwks = vec![big];
    });
    let r = OidcClient::discover(idp.config()).await;
    assert!(
        matches!(r, Err(OidcError::TooLarge { what: "jwks", .. })),
        "{r:?}"
    );

    // Issuer over plain http to a non-loopback host: refused before any request.
    let cfg = OidcConfig::new("http://idp.example.org", "c", None, "https://m/cb");
    assert!(matches!(
        OidcClient::discover(cfg).await,
        Err(OidcError::Config(_))
    ));

    // Nothing listening: a transport error naming the step.
    let cfg = OidcConfig::new("http://127.0.0.1:1", "c", None, "https://m/cb");
    let e = OidcClient::discover(cfg).await.err().unwrap();
    assert!(
        matches!(
            e,
            OidcError::Http {
                what: "discovery",
                ..
            }
        ),
        "{e}"
    );
}
