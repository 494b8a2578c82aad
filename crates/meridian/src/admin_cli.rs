//! `meridian user|token|site|grant`: administration from the command line,
//! straight on the index (the server may be running). Every change is audited
//! with the actor `cli:<OS user>`.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use meridian_auth::{Role, password, token};
use meridian_store::Store;

use crate::config::{ServeArgs, Settings};

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    pub cmd: UserCmd,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user. The password is read from stdin (one line) or, with
    /// --generate-password, generated and printed once.
    Add {
        username: String,
        /// admin, radiologist, site, referrer, auditor or service.
        #[arg(long)]
        role: String,
        /// The user's site (required for the site and referrer roles).
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        generate_password: bool,
    },
    /// List users.
    List,
    /// Disable a user (ends their sessions).
    Disable { username: String },
    /// Enable a disabled user.
    Enable { username: String },
    /// Set a new password (read from stdin) and lift a lockout.
    Password { username: String },
    /// Remove the TOTP second factor (a user who lost their device).
    ResetTotp { username: String },
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub cmd: TokenCmd,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token (printed once; only its hash is stored).
    Create {
        /// What it is for, e.g. "AI gateway".
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        /// Scope the token to one site.
        #[arg(long)]
        site: Option<String>,
        /// Lifetime in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
    /// List tokens (without secrets).
    List,
    /// Revoke a token by its id.
    Revoke { token_id: String },
}

#[derive(Args, Debug)]
pub struct SiteArgs {
    #[command(subcommand)]
    pub cmd: SiteCmd,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum SiteCmd {
    /// Create (or rename) a site and register calling AE titles to it.
    Add {
        site_id: String,
        #[arg(long)]
        name: Option<String>,
        /// Calling AE title of this site, AET or AET@IP (repeatable).
        #[arg(long = "ae")]
        aes: Vec<String>,
    },
    /// List sites and their AE titles.
    List,
    /// Unregister a calling AE title.
    RemoveAe { ae_title: String },
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The user (e.g. a radiologist).
    pub username: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Revoke instead of grant.
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

async fn audit(store: &Store, action: String, detail: String) -> Result<()> {
    store
        .audit(meridian_audit::AuditEvent {
            at_ms: meridian_store::now_ms(),
            actor: format!("cli:{}", os_user()),
            role: "admin".into(),
            action,
            source: "local".into(),
            outcome: "success".into(),
            detail,
            ..Default::default()
        })
        .await
        .context("writing the audit record")?;
    Ok(())
}

async fn open(serve: ServeArgs) -> Result<Store> {
    let s = Settings::resolve(serve, false)?;
    crate::open_store(&s).await
}

fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (input is shown; pipe it in to hide it): ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    password::check_rule(&pw).map_err(anyhow::Error::msg)?;
    Ok(pw)
}

fn role_for(role: &str, site: &Option<String>) -> Result<Role> {
    let r: Role = role.parse().map_err(anyhow::Error::msg)?;
    if r.needs_site() && site.is_none() {
        bail!("the {r} role needs --site");
    }
    Ok(r)
}

pub async fn user(a: UserArgs) -> Result<()> {
    let store = open(a.serve).await?;
    match a.cmd {
        UserCmd::Add {
            username,
            role,
            site,
            generate_password,
        } => {
            let r = role_for(&role, &site)?;
            let pw = if generate_password {
                password::generate()
            } else {
                read_password()?
            };
            let hash = password::hash(&pw).map_err(anyhow::Error::msg)?;
            store
                .add_user(&username, r, site.as_deref(), Some(&hash), None)
                .await?;
            audit(
                &store,
                "ADMIN CLI user add".into(),
                format!("{username} role={r} site={site:?}"),
            )
            .await?;
            println!(
                "created user {username} ({r}{})",
                site.as_deref()
                    .map(|s| format!(", site {s}"))
                    .unwrap_or_default()
            );
            if generate_password {
                println!("password: {pw}");
            }
        }
        UserCmd::List => {
            for u in store.users().await? {
                println!(
                    "{:<24} {:<12} site={:<12} {}{}",
                    u.username,
                    u.role,
                    u.site_id.as_deref().unwrap_or("-"),
                    if u.disabled { "disabled" } else { "active" },
                    if u.totp { " totp" } else { "" }
                );
            }
        }
        UserCmd::Disable { username } => {
            if !store.set_user_disabled(&username, true).await? {
                bail!("no user {username}");
            }
            audit(&store, "ADMIN CLI user disable".into(), username.clone()).await?;
            println!("disabled {username}");
        }
        UserCmd::Enable { username } => {
            if !store.set_user_disabled(&username, false).await? {
                bail!("no user {username}");
            }
            audit(&store, "ADMIN CLI user enable".into(), username.clone()).await?;
            println!("enabled {username}");
        }
        UserCmd::Password { username } => {
            let pw = read_password()?;
            let hash = password::hash(&pw).map_err(anyhow::Error::msg)?;
            if !store.set_password_hash(&username, &hash).await? {
                bail!("no user {username}");
            }
            audit(&store, "ADMIN CLI user password".into(), username.clone()).await?;
            println!("password changed for {username}");
        }
        UserCmd::ResetTotp { username } => {
            if !store.set_totp_secret(&username, None).await? {
                bail!("no user {username}");
            }
            audit(&store, "ADMIN CLI user reset-totp".into(), username.clone()).await?;
            println!("second factor removed for {username}");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn token(a: TokenArgs) -> Result<()> {
    let store = open(a.serve).await?;
    match a.cmd {
        TokenCmd::Create {
            name,
            role,
            site,
            days,
        } => {
            let r = role_for(&role, &site)?;
            let t = token::generate();
            let expires = meridian_store::now_ms() + i64::from(days.clamp(1, 3650)) * 86_400_000;
            store
                .create_token(
                    &t.id,
                    &t.secret_hash,
                    &name,
                    r,
                    site.as_deref(),
                    &format!("cli:{}", os_user()),
                    expires,
                )
                .await?;
            audit(
                &store,
                "ADMIN CLI token create".into(),
                format!("{} {name} role={r} site={site:?}", t.id),
            )
            .await?;
            eprintln!("token {} ({r}) created; it is shown once:", t.id);
            println!("{}", t.text);
        }
        TokenCmd::List => {
            for t in store.tokens().await? {
                println!(
                    "{} {:<20} {:<12} site={:<12} {}",
                    t.token_id,
                    t.name,
                    t.role,
                    t.site_id.as_deref().unwrap_or("-"),
                    if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at <= meridian_store::now_ms() {
                        "expired"
                    } else {
                        "live"
                    }
                );
            }
        }
        TokenCmd::Revoke { token_id } => {
            if !store.revoke_token(&token_id).await? {
                bail!("no live token {token_id}");
            }
            audit(&store, "ADMIN CLI token revoke".into(), token_id.clone()).await?;
            println!("revoked {token_id}");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn site(a: SiteArgs) -> Result<()> {
    let store = open(a.serve).await?;
    match a.cmd {
        SiteCmd::Add { site_id, name, aes } => {
            store
                .put_site(&site_id, name.as_deref().unwrap_or(&site_id))
                .await?;
            for ae in &aes {
                let (title, host) = match ae.split_once('@') {
                    Some((t, h)) => {
                        h.parse::<std::net::IpAddr>().with_context(|| {
                            format!("{ae}: the part after @ must be an IP address")
                        })?;
                        (t, Some(h))
                    }
                    None => (ae.as_str(), None),
                };
                store.put_site_ae(title, &site_id, host).await?;
            }
            audit(
                &store,
                "ADMIN CLI site add".into(),
                format!("{site_id} aes={aes:?}"),
            )
            .await?;
            println!("site {site_id}: {} AE title(s) registered", aes.len());
        }
        SiteCmd::List => {
            for s in store.sites().await? {
                println!("{:<16} {:<32} {}", s.site_id, s.name, s.ae_titles.join(" "));
            }
        }
        SiteCmd::RemoveAe { ae_title } => {
            if !store.delete_site_ae(&ae_title).await? {
                bail!("AE title {ae_title} is not registered");
            }
            audit(&store, "ADMIN CLI site remove-ae".into(), ae_title.clone()).await?;
            println!("unregistered {ae_title}");
        }
    }
    store.close().await;
    Ok(())
}

pub async fn grant(a: GrantArgs) -> Result<()> {
    let store = open(a.serve).await?;
    meridian_core::validate_uid(&a.study_uid).map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.revoke {
        if !store.revoke_grant(&a.username, &a.study_uid).await? {
            bail!("no such grant");
        }
        audit(
            &store,
            "ADMIN CLI grant revoke".into(),
            format!("{} {}", a.username, a.study_uid),
        )
        .await?;
        println!("revoked {} from {}", a.study_uid, a.username);
    } else {
        if store.user(&a.username).await?.is_none() {
            bail!("no user {}", a.username);
        }
        store
            .grant(&a.username, &a.study_uid, &format!("cli:{}", os_user()))
            .await?;
        audit(
            &store,
            "ADMIN CLI grant".into(),
            format!("{} {}", a.username, a.study_uid),
        )
        .await?;
        println!("granted {} to {}", a.study_uid, a.username);
    }
    store.close().await;
    Ok(())
}
