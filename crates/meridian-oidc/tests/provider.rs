//! The whole login against a real OpenID provider: the certified `oidc-provider` npm package,
//! run by `tests/oidc/provider.mjs` on loopback. The browser's part (the provider's login and
//! consent forms) is played with plain HTTP requests and a cookie store; the redirect to
//! Meridian's callback is captured, not followed.
//!
//! Needs `node` and `tests/browser/node_modules/oidc-provider` (scripts/install-peers). Without
//! them the tests are skipped with a loud warning, except under CI (env `CI` set), where they
//! fail.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use meridian_oidc::{IdTokenError, Identity, OidcClient, OidcConfig, OidcError, groups};
use reqwest::Url;
use reqwest::redirect::Policy;

const SECRET: &str = "provider-test-secret";
const REDIRECT: &str = "http://127.0.0.1:9/auth/oidc/callback";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether node and oidc-provider are there. Missing: a loud SKIPPED warning and `false`,
/// or, under CI (env `CI` set), a panic naming the missing peer.
fn peers_present() -> bool {
    let root = workspace_root();
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(node, Ok(s) if s.success()) {
        missing.push("`node` (Node.js) on PATH".to_owned());
    }
    let modules = std::env::var_os("MERIDIAN_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/browser/node_modules"));
    if !modules.join("oidc-provider/package.json").is_file() {
        missing.push(format!(
            "npm package `oidc-provider` in {} (run scripts/install-peers, or `npm ci` in tests/browser)",
            modules.display()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("real OpenID provider peer missing: {}", missing.join("; "));
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{msg} (CI is set, so this fails instead of skipping)");
    }
    // Straight to the process's stderr: the test harness captures eprintln! of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!! SKIPPED (meridian-oidc provider test): {msg} !!!!!!!!!!\n"
    );
    false
}

/// A running `tests/oidc/provider.mjs`; killed on drop.
struct Provider {
    child: Child,
    issuer: String,
    log: PathBuf,
}

impl Provider {
    fn start(extra: &[&str]) -> Provider {
        let root = workspace_root();
        let log = std::env::temp_dir().join(format!(
            "meridian-oidc-provider-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("node")
            .arg(root.join("tests/oidc/provider.mjs"))
            .args(["--port", "0", "--client-id", "meridian"])
            .args(["--redirect-uri", REDIRECT])
            .args(extra)
            .current_dir(&root)
            // The provider exits when its stdin closes: no orphan if this test process dies.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node tests/oidc/provider.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => match line.strip_prefix("READY ") {
                Some(issuer) => issuer.trim().to_owned(),
                None => panic!(
                    "provider.mjs printed {line:?} instead of READY (log: {})",
                    log.display()
                ),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "provider.mjs did not print READY within 30 s; its stderr:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Provider { child, issuer, log }
    }

    fn config(&self, secret: Option<&str>) -> OidcConfig {
        OidcConfig::new(
            self.issuer.clone(),
            "meridian",
            secret.map(str::to_owned),
            REDIRECT,
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "provider.mjs stderr ({}):\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Where the provider sent the browser back to Meridian.
#[derive(Debug)]
struct Callback {
    code: String,
    state: String,
    iss: Option<String>,
}

/// Outcome of playing the browser up to the redirect to Meridian.
#[derive(Debug)]
enum Browser {
    Callback(Callback),
    /// The provider showed its login form again, with this error.
    LoginRefused(String),
}

/// Plays the browser: follows the provider's redirects, fills the login form, confirms
/// consent, and stops at the redirect to `REDIRECT`.
async fn browse(auth_url: &str, user: &str, password: &str) -> Browser {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .build()
        .unwrap();
    let mut url = Url::parse(auth_url).unwrap();
    let mut post: Option<Vec<(&str, &str)>> = None;
    let mut logged_in = false;
    for _ in 0..12 {
        let req = match post.take() {
            Some(form) => http.post(url.clone()).form(&form),
            None => http.get(url.clone()),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers()["location"].to_str().unwrap().to_owned();
            let next = url.join(&location).unwrap();
            if next.as_str().starts_with(REDIRECT) {
                let q = |k: &str| {
                    next.query_pairs()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.into_owned())
                };
                if let Some(err) = q("error") {
                    panic!(
                        "the provider redirected back with error {err}: {:?}",
                        q("error_description")
                    );
                }
                return Browser::Callback(Callback {
                    code: q("code").expect("code in the callback"),
                    state: q("state").expect("state in the callback"),
                    iss: q("iss"),
                });
            }
            url = next;
            continue;
        }
        let body = resp.text().await.unwrap();
        assert!(status.is_success(), "HTTP {status} at {url}:\n{body}");
        if let Some(action) = form_action(&body, "login-form") {
            if logged_in {
                let error = between(&body, "id=\"error\" class=\"error\">", "<").unwrap_or("?");
                return Browser::LoginRefused(error.to_owned());
            }
            logged_in = true;
            url = url.join(&action).unwrap();
            post = Some(vec![("login", user), ("password", password)]);
        } else if let Some(action) = form_action(&body, "consent-form") {
            url = url.join(&action).unwrap();
            post = Some(vec![]);
        } else {
            panic!("unexpected page at {url}:\n{body}");
        }
    }
    panic!("no redirect to {REDIRECT} after 12 steps");
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// The `action` of `<form id="{id}" ...>`, HTML entities undone.
fn form_action(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    let action = between(tag, "action=\"", "\"")?;
    Some(action.replace("&amp;", "&"))
}

async fn login(client: &OidcClient, user: &str) -> Identity {
    let (url, pending) = client.begin();
    let Browser::Callback(cb) = browse(&url, user, &format!("{user}-password")).await else {
        panic!("login as {user} refused");
    };
    client.finish(&pending, &cb.code, &cb.state).await.unwrap()
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn confidential_client_rs256_claims_in_the_id_token() {
    if !peers_present() {
        return;
    }
    install_crypto();
    let p = Provider::start(&["--client-secret", SECRET]);
    let client = OidcClient::discover(p.config(Some(SECRET))).await.unwrap();

    let (url, pending) = client.begin();
    for part in [
        "response_type=code",
        "client_id=meridian",
        "scope=openid+profile+email+groups",
        "code_challenge_method=S256",
        &format!("state={}", pending.state),
    ] {
        assert!(url.contains(part), "{part} not in {url}");
    }
    let Browser::Callback(cb) = browse(&url, "alice", "alice-password").await else {
        panic!("alice refused")
    };
    assert_eq!(cb.iss.as_deref(), Some(p.issuer.as_str()));
    let alice = client.finish(&pending, &cb.code, &cb.state).await.unwrap();
    assert_eq!(alice.subject, "alice");
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.issuer, p.issuer);
    assert_eq!(groups(&alice.claims, "groups"), ["radiologists"]);
    assert_eq!(alice.claims["email"], "alice@example.org");
    assert!(!alice.claims.contains_key("meridian_site"));

    let bob = login(&client, "bob").await;
    assert_eq!(bob.username, "bob");
    assert_eq!(groups(&bob.claims, "groups"), ["site-a-techs"]);
    assert_eq!(bob.claims["meridian_site"], "site-a");
    assert_eq!(groups(&bob.claims, "meridian_site"), ["site-a"]);

    let carol = login(&client, "carol").await;
    assert_eq!(carol.username, "carol");
    assert_eq!(groups(&carol.claims, "groups"), ["staff"]);
}

#[tokio::test]
async fn es256_client_secret_post_claims_from_userinfo() {
    if !peers_present() {
        return;
    }
    install_crypto();
    let p = Provider::start(&[
        "--client-secret",
        SECRET,
        "--token-auth",
        "client_secret_post",
        "--id-token-alg",
        "ES256",
        "--claims-in",
        "userinfo",
    ]);
    // Discovery offers only client_secret_post (and none): the client must pick post, or
    // the provider would refuse the code exchange.
    let client = OidcClient::discover(p.config(Some(SECRET))).await.unwrap();
    let bob = login(&client, "bob").await;
    assert_eq!(bob.subject, "bob");
    // The ID token held only sub (oidc-provider's conforming default); the rest came from
    // the userinfo endpoint.
    assert_eq!(bob.username, "bob");
    assert_eq!(groups(&bob.claims, "groups"), ["site-a-techs"]);
    assert_eq!(bob.claims["meridian_site"], "site-a");
}

#[tokio::test]
async fn public_client_with_pkce_only() {
    if !peers_present() {
        return;
    }
    install_crypto();
    let p = Provider::start(&["--token-auth", "none"]);
    let client = OidcClient::discover(p.config(None)).await.unwrap();
    let alice = login(&client, "alice").await;
    assert_eq!(alice.username, "alice");
    assert_eq!(groups(&alice.claims, "groups"), ["radiologists"]);
}

#[tokio::test]
async fn rejections_by_the_real_provider() {
    if !peers_present() {
        return;
    }
    install_crypto();
    let p = Provider::start(&["--client-secret", SECRET]);
    let client = OidcClient::discover(p.config(Some(SECRET))).await.unwrap();

    // Wrong password: the provider shows its form again; no code.
    let (url, _) = client.begin();
    match browse(&url, "alice", "bob-password").await {
        Browser::LoginRefused(msg) => assert!(msg.contains("Invalid"), "{msg}"),
        other => panic!("expected a refused login, got {other:?}"),
    }

    // Wrong state: refused before the code is spent; the right state then works.
    let (url, pending) = client.begin();
    let Browser::Callback(cb) = browse(&url, "alice", "alice-password").await else {
        panic!()
    };
    let (_, other) = client.begin();
    let r = client.finish(&pending, &cb.code, &other.state).await;
    assert!(matches!(r, Err(OidcError::StateMismatch)), "{r:?}");
    let r = client.finish(&other, &cb.code, &cb.state).await;
    assert!(matches!(r, Err(OidcError::StateMismatch)), "{r:?}");
    client.finish(&pending, &cb.code, &cb.state).await.unwrap();

    // Replayed code: the provider refuses it the second time.
    let r = client.finish(&pending, &cb.code, &cb.state).await;
    match r {
        Err(OidcError::TokenRejected {
            status: 400, error, ..
        }) => assert_eq!(error, "invalid_grant"),
        other => panic!("expected invalid_grant for a replayed code, got {other:?}"),
    }

    // Wrong nonce (the ID token was issued for another login's nonce).
    let (url, pending) = client.begin();
    let Browser::Callback(cb) = browse(&url, "bob", "bob-password").await else {
        panic!()
    };
    let mut tampered = pending.clone();
    tampered.nonce = client.begin().1.nonce;
    let r = client.finish(&tampered, &cb.code, &cb.state).await;
    assert!(
        matches!(r, Err(OidcError::IdToken(IdTokenError::WrongNonce))),
        "{r:?}"
    );

    // Wrong PKCE verifier: the provider refuses the code.
    let (url, pending) = client.begin();
    let Browser::Callback(cb) = browse(&url, "bob", "bob-password").await else {
        panic!()
    };
    let mut tampered = pending.clone();
    tampered.verifier = client.begin().1.verifier;
    let r = client.finish(&tampered, &cb.code, &cb.state).await;
    match r {
        Err(OidcError::TokenRejected { error, .. }) => assert_eq!(error, "invalid_grant"),
        other => panic!("expected invalid_grant for a wrong verifier, got {other:?}"),
    }

    // Wrong client secret.
    let wrong = OidcClient::discover(p.config(Some("not-the-secret")))
        .await
        .unwrap();
    let (url, pending) = wrong.begin();
    let Browser::Callback(cb) = browse(&url, "carol", "carol-password").await else {
        panic!()
    };
    let r = wrong.finish(&pending, &cb.code, &cb.state).await;
    match r {
        Err(OidcError::TokenRejected {
            status: 401, error, ..
        }) => assert_eq!(error, "invalid_client"),
        other => panic!("expected invalid_client, got {other:?}"),
    }
    // Errors never carry the code or the secret.
    let shown = format!(
        "{}",
        wrong
            .finish(&pending, &cb.code, &cb.state)
            .await
            .unwrap_err()
    );
    assert!(
        !shown.contains(&cb.code) && !shown.contains("not-the-secret"),
        "{shown}"
    );

    // Issuer spelled differently from what the provider says (localhost vs 127.0.0.1).
    let mut cfg = p.config(Some(SECRET));
    cfg.issuer = cfg.issuer.replace("127.0.0.1", "localhost");
    let r = OidcClient::discover(cfg).await;
    assert!(matches!(r, Err(OidcError::IssuerMismatch { .. })), "{r:?}");
}
