//! Whether a reader may read a case now, and why not.

use jiff::{Timestamp, civil::Date};
use serde::{Deserialize, Serialize};

use crate::model::{Case, Millis, ReadScope, Reader, Site, State};

/// Why a reader is not eligible. One reader may fail several ways; all are reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    NoLicence { jurisdiction: String },
    LicenceExpired { jurisdiction: String, expired: Date },
    NoCredential { site: String },
    CredentialExpired { site: String, expired: Date },
    PrelimOnly { site: String },
    Modality { modality: String },
    Subspecialty { subspecialty: String },
    OffShift,
    AtCapacity { load: u32, max: u32 },
    Residency { region: String },
    Offline,
    Released,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoLicence { jurisdiction } => write!(f, "no licence in {jurisdiction}"),
            Reason::LicenceExpired {
                jurisdiction,
                expired,
            } => write!(f, "licence in {jurisdiction} expired {expired}"),
            Reason::NoCredential { site } => write!(f, "not credentialed at {site}"),
            Reason::CredentialExpired { site, expired } => {
                write!(f, "credential at {site} expired {expired}")
            }
            Reason::PrelimOnly { site } => {
                write!(f, "preliminary-only at {site}, which needs a final read")
            }
            Reason::Modality { modality } => write!(f, "does not read {modality}"),
            Reason::Subspecialty { subspecialty } => write!(f, "not a {subspecialty} reader"),
            Reason::OffShift => f.write_str("off shift"),
            Reason::AtCapacity { load, max } => write!(f, "at capacity ({load}/{max} studies)"),
            Reason::Residency { region } => {
                write!(
                    f,
                    "working from {region}, outside the site's data-residency regions"
                )
            }
            Reason::Offline => f.write_str("offline"),
            Reason::Released => f.write_str("already released this study"),
        }
    }
}

/// A reader's state at one instant: presence, shift, current load. Computed once per
/// routing pass (see [`crate::routing::World::presence`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    pub on_shift: bool,
    /// Open cases assigned to the reader.
    pub load: u32,
    pub load_rvu: f64,
}

/// The UTC civil date of `now`.
pub fn today(now: Millis) -> Date {
    Timestamp::from_millisecond(now)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
        .unwrap_or(Date::MIN)
}

/// The scope a case needs from its reader at `site`.
pub fn needed_scope(site: &Site, case: &Case) -> ReadScope {
    if site.contract.prelim_accepted && case.state != State::Preliminary {
        ReadScope::Prelim
    } else {
        ReadScope::Final
    }
}

/// Everything that makes `reader` ineligible for `case` on `day` (UTC) given their
/// `presence` (empty = eligible). `count_load`: whether the load cap applies (not for a
/// case the reader already holds).
pub fn check(
    reader: &Reader,
    presence: &Presence,
    site: &Site,
    case: &Case,
    day: Date,
    count_load: bool,
) -> Vec<Reason> {
    let mut why = Vec::new();
    site_reasons(reader, site, day, Some(needed_scope(site, case)), &mut why);
    if !reader
        .modalities
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&case.modality))
    {
        why.push(Reason::Modality {
            modality: case.modality.clone(),
        });
    }
    if let Some(sub) = &case.subspecialty
        && site
            .contract
            .required_subspecialties
            .iter()
            .any(|r| r.eq_ignore_ascii_case(sub))
        && !has_sub(reader, sub)
    {
        why.push(Reason::Subspecialty {
            subspecialty: sub.clone(),
        });
    }
    if !presence.on_shift {
        why.push(Reason::OffShift);
    }
    if !presence.online {
        why.push(Reason::Offline);
    }
    if count_load && presence.load >= reader.max_concurrent {
        why.push(Reason::AtCapacity {
            load: presence.load,
            max: reader.max_concurrent,
        });
    }
    if case.released_by.iter().any(|r| r == &reader.id) {
        why.push(Reason::Released);
    }
    why
}

/// The site-level reasons (licence in the site's jurisdiction, active credential at the
/// site with scope `needed` if given, data residency), appended to `why`.
fn site_reasons(
    reader: &Reader,
    site: &Site,
    day: Date,
    needed: Option<ReadScope>,
    why: &mut Vec<Reason>,
) {
    let lic: Vec<_> = reader
        .licences
        .iter()
        .filter(|l| l.jurisdiction.eq_ignore_ascii_case(&site.jurisdiction))
        .collect();
    if lic.is_empty() {
        why.push(Reason::NoLicence {
            jurisdiction: site.jurisdiction.clone(),
        });
    } else if !lic.iter().any(|l| l.expires >= day) {
        let expired = lic.iter().map(|l| l.expires).max().unwrap_or(Date::MIN);
        why.push(Reason::LicenceExpired {
            jurisdiction: site.jurisdiction.clone(),
            expired,
        });
    }
    let creds: Vec<_> = reader
        .credentials
        .iter()
        .filter(|c| c.site == site.id)
        .collect();
    let active: Vec<_> = creds.iter().filter(|c| c.expires >= day).collect();
    if creds.is_empty() {
        why.push(Reason::NoCredential {
            site: site.id.clone(),
        });
    } else if active.is_empty() {
        let expired = creds.iter().map(|c| c.expires).max().unwrap_or(Date::MIN);
        why.push(Reason::CredentialExpired {
            site: site.id.clone(),
            expired,
        });
    } else if let Some(needed) = needed
        && !active.iter().any(|c| c.scope >= needed)
    {
        why.push(Reason::PrelimOnly {
            site: site.id.clone(),
        });
    }
    if !site.residency.is_empty()
        && !site
            .residency
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&reader.region))
    {
        why.push(Reason::Residency {
            region: reader.region.clone(),
        });
    }
}

/// Whether the reader may read at `site` at all on `day` (licence, credential of any
/// scope, residency): the sites whose queues a worklist looks at.
pub fn may_read_at(reader: &Reader, site: &Site, day: Date) -> bool {
    let mut why = Vec::new();
    site_reasons(reader, site, day, None, &mut why);
    why.is_empty()
}

pub fn has_sub(reader: &Reader, sub: &str) -> bool {
    reader
        .subspecialties
        .iter()
        .any(|s| s.eq_ignore_ascii_case(sub))
}

/// Licences and credentials expiring within `days` of `now` (or already expired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiring {
    pub reader: String,
    pub kind: &'static str,
    /// Jurisdiction (licence) or site (credential).
    pub of: String,
    pub expires: Date,
}

pub fn expiring(readers: &[Reader], now: Millis, days: i32) -> Vec<Expiring> {
    let day = today(now);
    let horizon = day
        .checked_add(jiff::Span::new().days(days.clamp(0, 3650)))
        .unwrap_or(Date::MAX);
    let mut out = Vec::new();
    for r in readers {
        for l in &r.licences {
            if l.expires <= horizon {
                out.push(Expiring {
                    reader: r.id.clone(),
                    kind: "licence",
                    of: l.jurisdiction.clone(),
                    expires: l.expires,
                });
            }
        }
        for c in &r.credentials {
            if c.expires <= horizon {
                out.push(Expiring {
                    reader: r.id.clone(),
                    kind: "credential",
                    of: c.site.clone(),
                    expires: c.expires,
                });
            }
        }
    }
    out.sort_by(|a, b| (a.expires, &a.reader).cmp(&(b.expires, &b.reader)));
    out
}
