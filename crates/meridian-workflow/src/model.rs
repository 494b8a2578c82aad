//! The facts the workflow reasons over: sites and their contracts, readers and their
//! licences, credentials and shifts, orders, and open cases (studies to read).
//!
//! Every instant is milliseconds since the Unix epoch, UTC ([`Millis`]); every
//! calendar date (licence and credential expiry) is a civil date, valid through
//! its last day in UTC.

use std::collections::BTreeMap;

use jiff::civil::{Date, Time};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

pub const MINUTE: Millis = 60_000;

/// Reading priority. Ordered from most to least urgent (`Stat < Urgent < Routine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Stat,
    Urgent,
    Routine,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Stat, Priority::Urgent, Priority::Routine];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Stat => "stat",
            Priority::Urgent => "urgent",
            Priority::Routine => "routine",
        }
    }

    /// From an HL7 v2 priority code (table 0027: S stat, A ASAP, R routine,
    /// P pre-op, C callback, T timing critical) or a word.
    pub fn from_code(code: &str) -> Option<Priority> {
        match code.trim().to_ascii_uppercase().as_str() {
            "S" | "STAT" => Some(Priority::Stat),
            "A" | "ASAP" | "URGENT" | "P" | "C" | "T" | "HIGH" => Some(Priority::Urgent),
            "R" | "ROUTINE" | "" => Some(Priority::Routine),
            _ => None,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "stat" => Ok(Priority::Stat),
            "urgent" => Ok(Priority::Urgent),
            "routine" => Ok(Priority::Routine),
            _ => Err(format!("unknown priority {s:?} (stat, urgent, routine)")),
        }
    }
}

/// What a reader may sign at a facility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadScope {
    /// Preliminary reads only (typical of offshore night-hawk readers).
    Prelim,
    /// Final reads (and preliminary ones).
    Final,
}

/// Who moves studies to readers at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Meridian assigns each ready study to one reader.
    #[default]
    Push,
    /// Eligible readers claim studies from a shared list.
    Pull,
}

/// What happens to a stable study that matches no order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnorderedPolicy {
    /// Wait in the coordinators' queue until matched by hand.
    #[default]
    Hold,
    /// Read it under an automatically created routine order.
    Read,
}

/// A weekly window in a given time zone: `days` (0 = Monday … 6 = Sunday) from `start`
/// to `end` local time; an `end` at or before `start` runs past midnight into the
/// next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub days: Vec<u8>,
    pub start: Time,
    pub end: Time,
}

/// The service contract with a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contract {
    /// Turnaround in minutes per priority.
    pub sla_minutes: BTreeMap<Priority, u32>,
    /// Turnaround in minutes per protocol (e.g. `stroke`, `trauma`); the tighter of the
    /// protocol's and the priority's applies.
    pub protocol_sla_minutes: BTreeMap<String, u32>,
    /// When the group covers the site, in the site's time zone; empty = always.
    pub coverage: Vec<Window>,
    /// Whether a preliminary-only reader may read this site's studies.
    pub prelim_accepted: bool,
    pub mode: Mode,
    pub unordered: UnorderedPolicy,
    /// An assigned study not opened within this many minutes is reassigned.
    pub unopened_minutes: u32,
    /// Subspecialties a study must be read by when triage asks for them (e.g. `breast`,
    /// `paediatric`); other subspecialties are a preference only.
    pub required_subspecialties: Vec<String>,
    /// Days either side of the order's date within which a study may match it
    /// without an accession number.
    pub match_window_days: u32,
}

impl Default for Contract {
    fn default() -> Self {
        Contract {
            sla_minutes: BTreeMap::from([
                (Priority::Stat, 60),
                (Priority::Urgent, 240),
                (Priority::Routine, 1440),
            ]),
            protocol_sla_minutes: BTreeMap::new(),
            coverage: Vec::new(),
            prelim_accepted: false,
            mode: Mode::Push,
            unordered: UnorderedPolicy::Hold,
            unopened_minutes: 15,
            required_subspecialties: Vec::new(),
            match_window_days: 2,
        }
    }
}

/// A site (tenant) as the workflow sees it. The id is the security layer's site id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// IANA time zone, e.g. `America/Chicago`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Where a reader must be licensed: `US-TX`, `GB`, `KR`.
    pub jurisdiction: String,
    /// Where the site's data lives (e.g. `us`, `eu`, `kr`).
    #[serde(default)]
    pub data_region: String,
    /// Reader regions allowed to see identifiable data; empty = any region.
    #[serde(default)]
    pub residency: Vec<String>,
    /// HL7 sending facilities (MSH-4) that speak for this site.
    #[serde(default)]
    pub hl7_facilities: Vec<String>,
    #[serde(default)]
    pub contract: Contract,
    /// Relative value units per modality (`CT`) or procedure code; default 1.0.
    #[serde(default)]
    pub rvu: BTreeMap<String, f64>,
    /// Triage rules, applied in order.
    #[serde(default)]
    pub triage: Vec<crate::triage::Rule>,
}

fn utc() -> String {
    "UTC".into()
}

impl Site {
    /// RVUs of a study: procedure code first, then modality, else 1.0.
    pub fn rvu_of(&self, procedure_code: Option<&str>, modality: &str) -> f64 {
        procedure_code
            .and_then(|p| self.rvu.get(p))
            .or_else(|| self.rvu.get(modality))
            .copied()
            .unwrap_or(1.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Licence {
    pub jurisdiction: String,
    #[serde(default)]
    pub number: String,
    /// Last valid day.
    pub expires: Date,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub site: String,
    pub scope: ReadScope,
    /// Last valid day.
    pub expires: Date,
}

/// A one-off change to a reader's rota: `off` removes the interval from their shifts,
/// otherwise it adds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    pub from: Millis,
    pub to: Millis,
    #[serde(default)]
    pub off: bool,
}

/// A radiologist as the routing engine sees them. `id` is their Meridian user name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reader {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Where the reader works from (for residency rules), e.g. `us`, `eu`, `in`.
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub licences: Vec<Licence>,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    #[serde(default)]
    pub subspecialties: Vec<String>,
    /// Modalities read (`CT`, `MR`, …); empty = none.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// Recurring rota in the reader's time zone.
    #[serde(default)]
    pub shifts: Vec<Window>,
    #[serde(default)]
    pub exceptions: Vec<Exception>,
    #[serde(default = "default_cap")]
    pub max_concurrent: u32,
}

fn default_cap() -> u32 {
    10
}

/// Where a case is in its life. Open states are those before `Final`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Received,
    Stable,
    Unmatched,
    Ready,
    Assigned,
    Opened,
    Preliminary,
    Final,
    Delivered,
    Addended,
    Cancelled,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Received,
        State::Stable,
        State::Unmatched,
        State::Ready,
        State::Assigned,
        State::Opened,
        State::Preliminary,
        State::Final,
        State::Delivered,
        State::Addended,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::Stable => "stable",
            State::Unmatched => "unmatched",
            State::Ready => "ready",
            State::Assigned => "assigned",
            State::Opened => "opened",
            State::Preliminary => "preliminary",
            State::Final => "final",
            State::Delivered => "delivered",
            State::Addended => "addended",
            State::Cancelled => "cancelled",
        }
    }

    /// Still needs a reader's work (counts toward SLA and load).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            State::Ready | State::Assigned | State::Opened | State::Preliminary
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// A reading lock: exactly one per case, expiring unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub reader: String,
    pub expires: Millis,
}

/// A study that needs (or needed) reading, with what routing needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub study_uid: String,
    pub site: String,
    pub state: State,
    pub priority: Priority,
    pub protocol: Option<String>,
    /// Subspecialty triage asked for (required if the contract lists it as required).
    pub subspecialty: Option<String>,
    /// Primary modality (`CT`).
    pub modality: String,
    /// Same patient (site + issuer + ID): related studies go to one reader.
    pub patient_key: String,
    pub rvu: f64,
    /// Order time, else arrival.
    pub base_at: Millis,
    pub deadline: Millis,
    /// Expected reading time, for the at-risk test.
    pub reading_ms: Millis,
    pub assigned_to: Option<String>,
    pub assigned_at: Option<Millis>,
    pub opened_at: Option<Millis>,
    pub lock: Option<Lock>,
    /// Readers this case was taken from (not offered it again).
    #[serde(default)]
    pub released_by: Vec<String>,
}

impl Case {
    pub fn locked_by(&self, now: Millis) -> Option<&str> {
        self.lock
            .as_ref()
            .filter(|l| l.expires > now)
            .map(|l| l.reader.as_str())
    }
}
