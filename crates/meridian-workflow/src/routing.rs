//! The routing engine: who reads what, in which order, and why.
//!
//! Pure and deterministic: [`plan`] takes the whole state ([`World`]) and the clock and
//! returns what to change ([`Plan`]); the caller persists it. Policy:
//! - candidates: ready, unassigned cases at push-mode sites the group covers now
//!   (the contract's coverage windows), earliest deadline first
//!   (then priority, then base time, then UID);
//! - eligibility: [`crate::eligibility::check`] (licence, credential and scope,
//!   modality, required subspecialty, shift, presence, load cap, residency);
//! - choice among the eligible: a reader already holding an open study of the same
//!   patient, then one with the subspecialty triage asked for, then the lowest load in
//!   RVUs, then the fewest studies, then the reader id;
//! - escalation before assignment: an assigned but unopened case is released when its
//!   reader is off shift or offline, when it stayed unopened past the contract's limit,
//!   or when it is at risk (less time left than its reading time) and still unopened
//!   [`AT_RISK_GRACE`] after assignment; opened cases at risk
//!   or breached are flagged to operations; expired locks are dropped.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::eligibility::{self, Presence, Reason, has_sub, today};
use crate::model::{Case, Lock, MINUTE, Millis, Mode, Reader, Site, State};
use crate::shift;
use crate::sla::{self, SlaState};

/// Everything routing looks at. Inputs are explicit so a simulator can drive it.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub sites: BTreeMap<String, Site>,
    pub readers: Vec<Reader>,
    /// Reader ids currently online (signed in to the worklist recently).
    pub online: HashSet<String>,
    /// Open cases (ready, assigned, opened, preliminary).
    pub cases: Vec<Case>,
}

/// How many ineligible readers an explanation names per group of reasons.
pub const NAMES_PER_GROUP: usize = 25;
/// How long an assigned, unopened case at risk stays with its reader before it is
/// taken back (at most the contract's unopened limit).
pub const AT_RISK_GRACE: Millis = 5 * MINUTE;
/// How many eligible readers (best first) an explanation lists.
pub const MAX_ELIGIBLE: usize = 25;
/// How many groups of ineligible readers (largest first) an explanation lists; the rest
/// are counted. Keeps every stored explanation small at thousands of readers.
pub const MAX_GROUPS: usize = 12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub reader: String,
    pub load: u32,
    pub load_rvu: f64,
    /// Holds an open study of the same patient.
    pub related: bool,
    /// Has the subspecialty triage asked for.
    pub subspecialty: bool,
}

/// Ineligible readers sharing the same reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    pub reasons: Vec<Reason>,
    pub count: usize,
    /// Up to [`NAMES_PER_GROUP`] of them, by id.
    pub readers: Vec<String>,
}

/// Why a case went to whom: stored with every assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub at: Millis,
    pub chosen: Option<String>,
    /// One sentence.
    pub summary: String,
    /// Eligible readers, best first.
    pub eligible: Vec<Candidate>,
    pub ineligible: Vec<Excluded>,
    /// Eligible readers beyond the [`MAX_ELIGIBLE`] listed.
    #[serde(default)]
    pub more_eligible: usize,
    /// Ineligible readers in groups beyond the [`MAX_GROUPS`] listed.
    #[serde(default)]
    pub more_ineligible: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub study_uid: String,
    pub reader: String,
    pub explanation: Explanation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseWhy {
    ReaderOffShift,
    ReaderOffline,
    Unopened,
    AtRisk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub study_uid: String,
    pub reader: String,
    pub why: ReleaseWhy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlagWhy {
    AtRisk,
    Breached,
    NoEligibleReader,
    Reassigned,
}

/// Something operations should look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub study_uid: String,
    pub why: FlagWhy,
}

/// What one routing pass decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub releases: Vec<Release>,
    /// Locks that expired (study UIDs).
    pub expired_locks: Vec<String>,
    pub assignments: Vec<Assignment>,
    /// Cases no eligible reader could take, with why (for the operations view).
    pub unassigned: Vec<(String, Explanation)>,
    pub flags: Vec<Flag>,
}

/// Whether the group covers `site` at `now` (its contract's coverage windows, in the
/// site's time zone; none = always). Outside coverage nothing is assigned or claimed.
pub fn covered(site: &Site, now: Millis) -> bool {
    site.contract.coverage.is_empty()
        || shift::in_windows(&site.contract.coverage, &site.time_zone, now)
}

/// Earliest deadline first; ties by priority, base time, UID.
pub fn edf_key(c: &Case) -> (Millis, crate::model::Priority, Millis, &str) {
    (c.deadline, c.priority, c.base_at, c.study_uid.as_str())
}

impl World {
    pub fn reader(&self, id: &str) -> Option<&Reader> {
        self.readers.iter().find(|r| r.id == id)
    }

    /// Each reader's presence at `now`: shift, online, load from the open cases.
    pub fn presence(&self, now: Millis) -> HashMap<String, Presence> {
        let mut p: HashMap<String, Presence> = self
            .readers
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    Presence {
                        online: self.online.contains(&r.id),
                        on_shift: shift::on_shift(r, now),
                        load: 0,
                        load_rvu: 0.0,
                    },
                )
            })
            .collect();
        for c in &self.cases {
            if let Some(r) = holder(c)
                && let Some(pr) = p.get_mut(r)
            {
                pr.load += 1;
                pr.load_rvu += c.rvu;
            }
        }
        p
    }

    /// For each patient key, the readers holding an open case of that patient.
    pub fn patients(&self) -> HashMap<String, HashSet<String>> {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for c in &self.cases {
            if let Some(r) = holder(c) {
                m.entry(c.patient_key.clone())
                    .or_default()
                    .insert(r.to_string());
            }
        }
        m
    }
}

/// The reader a case counts against: its assignee while assigned or opened.
fn holder(c: &Case) -> Option<&str> {
    match c.state {
        State::Assigned | State::Opened => c.assigned_to.as_deref(),
        _ => None,
    }
}

/// Ranks the eligible readers for `case` and explains the choice. `related`: readers
/// holding an open case of the same patient.
pub fn explain(
    readers: &[Reader],
    presence: &HashMap<String, Presence>,
    related: Option<&HashSet<String>>,
    site: &Site,
    case: &Case,
    now: Millis,
) -> Explanation {
    let day = today(now);
    let mut eligible = Vec::new();
    // Hashed, not ordered: the groups are sorted below by (count, reasons), a total
    // order over distinct reason lists, so the map's order does not show.
    let mut groups: HashMap<Vec<Reason>, Excluded> = HashMap::new();
    let idle = Presence::default();
    for r in readers {
        let p = presence.get(&r.id).unwrap_or(&idle);
        let why = eligibility::check(r, p, site, case, day, true);
        if why.is_empty() {
            eligible.push(Candidate {
                reader: r.id.clone(),
                load: p.load,
                load_rvu: p.load_rvu,
                related: related.is_some_and(|s| s.contains(&r.id)),
                subspecialty: case.subspecialty.as_deref().is_some_and(|s| has_sub(r, s)),
            });
        } else {
            // Look up before inserting: most readers fall into an existing group, and the
            // key would otherwise be cloned for every one of them.
            let g = match groups.get_mut(&why) {
                Some(g) => g,
                None => groups.entry(why.clone()).or_insert_with(|| Excluded {
                    reasons: why,
                    count: 0,
                    readers: Vec::new(),
                }),
            };
            g.count += 1;
            if g.readers.len() < NAMES_PER_GROUP {
                g.readers.push(r.id.clone());
            }
        }
    }
    eligible.sort_by(|a, b| {
        b.related
            .cmp(&a.related)
            .then(b.subspecialty.cmp(&a.subspecialty))
            .then(a.load_rvu.total_cmp(&b.load_rvu))
            .then(a.load.cmp(&b.load))
            .then(a.reader.cmp(&b.reader))
    });
    let mut ineligible: Vec<Excluded> = groups.into_values().collect();
    ineligible.sort_by(|a, b| b.count.cmp(&a.count).then(a.reasons.cmp(&b.reasons)));
    let more_ineligible = ineligible.iter().skip(MAX_GROUPS).map(|g| g.count).sum();
    ineligible.truncate(MAX_GROUPS);
    let n_eligible = eligible.len();
    let chosen = eligible.first().map(|c| c.reader.clone());
    let summary = match eligible.first() {
        None => format!(
            "no eligible reader among {} for {} {} at {} (licence {}, deadline in {} min)",
            readers.len(),
            case.priority,
            case.modality,
            site.id,
            site.jurisdiction,
            (case.deadline - now) / MINUTE
        ),
        Some(c) => {
            let why = if c.related {
                "already reads another open study of this patient".to_string()
            } else if c.subspecialty {
                format!(
                    "{} reader with the lowest load ({:.1} RVU)",
                    case.subspecialty.as_deref().unwrap_or_default(),
                    c.load_rvu
                )
            } else {
                format!("lowest load ({:.1} RVU, {} studies)", c.load_rvu, c.load)
            };
            format!(
                "{} of {} eligible readers (licensed in {}, credentialed at {}, reads {}, on shift, under cap): {}",
                c.reader, n_eligible, site.jurisdiction, site.id, case.modality, why
            )
        }
    };
    let more_eligible = n_eligible.saturating_sub(MAX_ELIGIBLE);
    eligible.truncate(MAX_ELIGIBLE);
    Explanation {
        at: now,
        chosen,
        summary,
        eligible,
        ineligible,
        more_eligible,
        more_ineligible,
    }
}

/// One routing pass at `now`.
pub fn plan(world: &World, now: Millis) -> Plan {
    let mut out = Plan::default();
    let mut presence = world.presence(now);
    let mut patients = world.patients();
    // Released cases, with the reader not to offer them to again.
    let mut released: HashMap<&str, Option<String>> = HashMap::new();

    for c in &world.cases {
        if c.lock.as_ref().is_some_and(|l| l.expires <= now) {
            out.expired_locks.push(c.study_uid.clone());
        }
        let Some(site) = world.sites.get(&c.site) else {
            continue;
        };
        let sla = sla::state(c, now);
        if c.state == State::Assigned
            && c.opened_at.is_none()
            && let Some(r) = c.assigned_to.as_deref()
        {
            let p = presence.get(r);
            let unopened_for = c.assigned_at.map_or(0, |a| now - a);
            let limit = i64::from(site.contract.unopened_minutes.max(1)) * MINUTE;
            let grace = limit.min(AT_RISK_GRACE);
            let why = if !p.is_some_and(|p| p.on_shift) {
                Some(ReleaseWhy::ReaderOffShift)
            } else if !p.is_some_and(|p| p.online) {
                Some(ReleaseWhy::ReaderOffline)
            } else if sla != SlaState::OnTrack && unopened_for >= grace {
                // At risk and still not opened a while after assignment (a case
                // assigned already at risk gets that while to be opened).
                Some(ReleaseWhy::AtRisk)
            } else if unopened_for >= limit {
                Some(ReleaseWhy::Unopened)
            } else {
                None
            };
            if let Some(why) = why {
                out.releases.push(Release {
                    study_uid: c.study_uid.clone(),
                    reader: r.to_string(),
                    why,
                });
                if let Some(p) = presence.get_mut(r) {
                    p.load = p.load.saturating_sub(1);
                    p.load_rvu -= c.rvu;
                }
                if let Some(s) = patients.get_mut(&c.patient_key) {
                    s.remove(r);
                }
                let away = matches!(why, ReleaseWhy::ReaderOffShift | ReleaseWhy::ReaderOffline);
                released.insert(c.study_uid.as_str(), (!away).then(|| r.to_string()));
                if !away {
                    out.flags.push(Flag {
                        study_uid: c.study_uid.clone(),
                        why: FlagWhy::Reassigned,
                    });
                }
                continue;
            }
        }
        match sla {
            SlaState::AtRisk if c.state.is_open() => out.flags.push(Flag {
                study_uid: c.study_uid.clone(),
                why: FlagWhy::AtRisk,
            }),
            SlaState::Breached if c.state.is_open() => out.flags.push(Flag {
                study_uid: c.study_uid.clone(),
                why: FlagWhy::Breached,
            }),
            _ => {}
        }
    }

    // Candidates: ready push-mode cases, plus the ones just released.
    let mut todo: Vec<Case> = world
        .cases
        .iter()
        .filter(|c| {
            let push = world
                .sites
                .get(&c.site)
                .is_some_and(|s| s.contract.mode == Mode::Push && covered(s, now));
            let ready = (c.state == State::Ready && c.assigned_to.is_none())
                || released.contains_key(c.study_uid.as_str());
            push && ready && c.locked_by(now).is_none()
        })
        .cloned()
        .collect();
    for c in &mut todo {
        if let Some(r) = released.get(c.study_uid.as_str()) {
            c.state = State::Ready;
            c.assigned_to = None;
            c.assigned_at = None;
            c.released_by.extend(r.iter().cloned());
        }
    }
    todo.sort_by(|a, b| edf_key(a).cmp(&edf_key(b)));

    for c in todo {
        let Some(site) = world.sites.get(&c.site) else {
            continue;
        };
        let e = explain(
            &world.readers,
            &presence,
            patients.get(&c.patient_key),
            site,
            &c,
            now,
        );
        match e.chosen.clone() {
            Some(r) => {
                if let Some(p) = presence.get_mut(&r) {
                    p.load += 1;
                    p.load_rvu += c.rvu;
                }
                patients
                    .entry(c.patient_key.clone())
                    .or_default()
                    .insert(r.clone());
                out.assignments.push(Assignment {
                    study_uid: c.study_uid.clone(),
                    reader: r,
                    explanation: e,
                });
            }
            None => {
                out.flags.push(Flag {
                    study_uid: c.study_uid.clone(),
                    why: FlagWhy::NoEligibleReader,
                });
                out.unassigned.push((c.study_uid.clone(), e));
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
pub enum ClaimError {
    #[error("no such open study")]
    NotFound,
    #[error("the study is locked by another reader")]
    Locked,
    #[error("the study is assigned to another reader")]
    AssignedElsewhere,
    #[error("not eligible: {0}")]
    Ineligible(String),
    #[error("the study is not open for reading (state {0})")]
    NotOpen(State),
    #[error("unknown reader or site")]
    Unknown,
    #[error("the group does not cover this site now")]
    NotCovered,
}

/// A reader takes a case (pull), or opens one assigned to them (push): the reading lock
/// for `lock_ms`. Exactly one active lock per case; the same reader renews it.
pub fn claim(
    world: &World,
    reader_id: &str,
    study_uid: &str,
    now: Millis,
    lock_ms: Millis,
) -> Result<(Lock, Explanation), ClaimError> {
    let case = world
        .cases
        .iter()
        .find(|c| c.study_uid == study_uid)
        .ok_or(ClaimError::NotFound)?;
    if !matches!(
        case.state,
        State::Ready | State::Assigned | State::Opened | State::Preliminary
    ) {
        return Err(ClaimError::NotOpen(case.state));
    }
    if let Some(other) = case.locked_by(now)
        && other != reader_id
    {
        return Err(ClaimError::Locked);
    }
    let mine = case.assigned_to.as_deref() == Some(reader_id);
    if case.assigned_to.is_some() && !mine && matches!(case.state, State::Assigned | State::Opened)
    {
        return Err(ClaimError::AssignedElsewhere);
    }
    let reader = world.reader(reader_id).ok_or(ClaimError::Unknown)?;
    let site = world.sites.get(&case.site).ok_or(ClaimError::Unknown)?;
    if !covered(site, now) {
        return Err(ClaimError::NotCovered);
    }
    let presence = world.presence(now);
    let mut p = presence.get(reader_id).cloned().unwrap_or_default();
    // Claiming is an act of presence.
    p.online = true;
    let why = eligibility::check(reader, &p, site, case, today(now), !mine);
    // Released-by does not stop a reader who chooses to take the study back.
    let why: Vec<Reason> = why.into_iter().filter(|r| *r != Reason::Released).collect();
    if !why.is_empty() {
        let text: Vec<String> = why.iter().map(ToString::to_string).collect();
        return Err(ClaimError::Ineligible(text.join("; ")));
    }
    let e = Explanation {
        at: now,
        chosen: Some(reader_id.to_string()),
        summary: if mine {
            format!("{reader_id} opened the study assigned to them")
        } else {
            format!(
                "{reader_id} claimed it (licensed in {}, credentialed at {}, reads {}, on shift, under cap)",
                site.jurisdiction, site.id, case.modality
            )
        },
        eligible: Vec::new(),
        ineligible: Vec::new(),
        more_eligible: 0,
        more_ineligible: 0,
    };
    Ok((
        Lock {
            reader: reader_id.to_string(),
            expires: now.saturating_add(lock_ms),
        },
        e,
    ))
}
