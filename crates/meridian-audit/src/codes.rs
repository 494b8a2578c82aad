//! How a record is classified for export: the DICOM event (PS3.15 A.5.3,
//! codes from the DCM coding scheme of PS3.16), its action code and outcome,
//! and the small conversions (time, network address) both export formats share.

use crate::AuditEvent;

/// FHIR's URI for DICOM's DCM coding scheme.
pub const DCM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// A code from DICOM's DCM coding scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    /// The code meaning.
    pub display: &'static str,
}

const fn dcm(code: &'static str, display: &'static str) -> Code {
    Code { code, display }
}

pub const APPLICATION_ACTIVITY: Code = dcm("110100", "Application Activity");
pub const AUDIT_LOG_USED: Code = dcm("110101", "Audit Log Used");
pub const INSTANCES_ACCESSED: Code = dcm("110103", "DICOM Instances Accessed");
pub const EXPORT: Code = dcm("110106", "Export");
pub const IMPORT: Code = dcm("110107", "Import");
pub const QUERY: Code = dcm("110112", "Query");
pub const SECURITY_ALERT: Code = dcm("110113", "Security Alert");
pub const USER_AUTHENTICATION: Code = dcm("110114", "User Authentication");

pub const LOGIN: Code = dcm("110122", "Login");
pub const LOGOUT: Code = dcm("110123", "Logout");
pub const SECURITY_CONFIGURATION: Code = dcm("110129", "Security Configuration");
pub const RESTRICTED_FUNCTION: Code = dcm("110132", "Use of Restricted Function");

/// Active participant roles (PS3.16 CID 402).
pub const ROLE_APPLICATION: Code = dcm("110150", "Application");
pub const ROLE_DESTINATION: Code = dcm("110152", "Destination Role ID");
pub const ROLE_SOURCE: Code = dcm("110153", "Source Role ID");

/// Where patient data moved, seen from Meridian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Nothing moved in or out (a query, a read, a login).
    None,
    /// Data left Meridian for the actor (C-MOVE: the actor is the requestor, Meridian the source).
    Out,
    /// Data entered Meridian from the actor (STOW-RS, C-STORE).
    In,
}

/// The export classification of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventClass {
    /// EventID (FHIR `type`).
    pub event_id: Code,
    /// EventTypeCode (FHIR `subtype`), where the event has one.
    pub type_code: Option<Code>,
    /// EventActionCode: C, R, U, D or E.
    pub action: &'static str,
    /// The action itself reports a failure (a failed login, a denial): its
    /// outcome is at least a minor failure whatever the status says.
    pub failure: bool,
    pub direction: Direction,
    /// A query: the record's detail holds the query keys.
    pub query: bool,
}

const fn class(event_id: Code, action: &'static str) -> EventClass {
    EventClass {
        event_id,
        type_code: None,
        action,
        failure: false,
        direction: Direction::None,
        query: false,
    }
}

const QUERY_CLASS: EventClass = EventClass {
    query: true,
    ..class(QUERY, "E")
};
const ACCESS_CLASS: EventClass = class(INSTANCES_ACCESSED, "R");
const EXPORT_CLASS: EventClass = EventClass {
    direction: Direction::Out,
    ..class(EXPORT, "R")
};
const IMPORT_CLASS: EventClass = EventClass {
    direction: Direction::In,
    ..class(IMPORT, "C")
};
const LOGIN_CLASS: EventClass = EventClass {
    type_code: Some(LOGIN),
    ..class(USER_AUTHENTICATION, "E")
};

/// The first word of a record's action, and its class. The first word is
/// matched exactly (ASCII case-insensitively): `LOGIN` and `LOGIN-FAILED`
/// are different words.
const RULES: &[(&str, EventClass)] = &[
    // DICOMweb (meridian-web's audit middleware).
    ("QIDO-RS", QUERY_CLASS),
    ("WADO-RS", ACCESS_CLASS),
    ("STOW-RS", IMPORT_CLASS),
    // DIMSE (meridian-dimse's SCP).
    ("C-FIND", QUERY_CLASS),
    ("C-GET", ACCESS_CLASS),
    ("C-MOVE", EXPORT_CLASS),
    ("C-STORE", IMPORT_CLASS),
    // Accounts and the security layer.
    ("LOGIN", LOGIN_CLASS),
    (
        "LOGIN-FAILED",
        EventClass {
            failure: true,
            ..LOGIN_CLASS
        },
    ),
    (
        "LOGOUT",
        EventClass {
            type_code: Some(LOGOUT),
            ..class(USER_AUTHENTICATION, "E")
        },
    ),
    (
        "DENIED",
        EventClass {
            type_code: Some(RESTRICTED_FUNCTION),
            failure: true,
            ..class(SECURITY_ALERT, "E")
        },
    ),
    (
        "ADMIN",
        EventClass {
            type_code: Some(SECURITY_CONFIGURATION),
            ..class(SECURITY_ALERT, "E")
        },
    ),
    ("AUDIT-SEARCH", class(AUDIT_LOG_USED, "R")),
];

/// Classifies a record by the first word of its action. An action this
/// table does not know is an access to instances if it names a study, and
/// application activity otherwise.
pub fn classify(e: &AuditEvent) -> EventClass {
    let word = e.action.split_whitespace().next().unwrap_or("");
    RULES
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(word))
        .map(|(_, c)| *c)
        .unwrap_or(if e.study_uid.is_some() {
            ACCESS_CLASS
        } else {
            class(APPLICATION_ACTIVITY, "E")
        })
}

/// The EventOutcomeIndicator (RFC 3881, PS3.15 A.5.1; FHIR `outcome`) of a
/// record: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
///
/// The outcome string is an HTTP status (`200`, `404`, `503`), a DIMSE
/// status (`0x0000`, `0xC000`), or a word (`success`, `denied`, `failed`).
/// Anything else is 0, as the schema asks for an unknown or ambiguous status.
pub fn outcome_indicator(outcome: &str) -> u8 {
    let s = outcome.split_whitespace().next().unwrap_or("");
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return match u16::from_str_radix(hex, 16) {
            Ok(status) => dimse_indicator(status),
            Err(_) => 0,
        };
    }
    if s.len() == 3
        && let Ok(status) = s.parse::<u16>()
    {
        return match status {
            100..=399 => 0,
            400..=499 => 4,
            500..=599 => 8,
            _ => 0,
        };
    }
    match s.to_ascii_lowercase().as_str() {
        "denied" | "forbidden" | "unauthorized" | "refused" | "rejected" | "failed" | "failure"
        | "invalid" | "cancelled" | "canceled" => 4,
        "error" => 8,
        "unavailable" => 12,
        _ => 0,
    }
}

/// DIMSE status classes (PS3.7 Annex C).
fn dimse_indicator(status: u16) -> u8 {
    match status {
        // Success and pending.
        0x0000 | 0xFF00 | 0xFF01 => 0,
        // Warnings (coercion, sub-operations with failures), cancel, refused: not authorized.
        0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF | 0xFE00 | 0x0124 => 4,
        // Failures: out of resources, no such SOP class, unable to process, ...
        _ => 8,
    }
}

/// The record's outcome as exported: the status's indicator, raised to a
/// minor failure for actions that are failures by nature.
pub fn outcome_of(e: &AuditEvent, c: &EventClass) -> u8 {
    let o = outcome_indicator(&e.outcome);
    if c.failure { o.max(4) } else { o }
}

/// ISO 8601 / RFC 3339 UTC time with milliseconds, e.g. `2024-05-01T12:00:00.250Z`.
pub fn iso8601_utc(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000);
    let ms = at_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A network access point: an IP address (type 2) or a machine name (type 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAccessPoint {
    pub id: String,
    /// NetworkAccessPointTypeCode: `1` machine name, `2` IP address.
    pub type_code: &'static str,
}

/// The network access point of a record's source (`IP:port`, `[IPv6]:port`,
/// a bare address, or a host name with or without a port), without the port.
pub fn network_access_point(source: &str) -> Option<NetworkAccessPoint> {
    use std::net::{IpAddr, SocketAddr};
    let s = source.trim();
    if s.is_empty() {
        return None;
    }
    let ip = s
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| s.parse::<IpAddr>())
        .or_else(|_| s.trim_start_matches('[').trim_end_matches(']').parse());
    if let Ok(ip) = ip {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        return Some(NetworkAccessPoint {
            id: ip.to_string(),
            type_code: "2",
        });
    }
    let host = match s.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => h,
        _ => s,
    };
    Some(NetworkAccessPoint {
        id: host.to_owned(),
        type_code: "1",
    })
}

/// What follows the action's kind words: the DICOMweb route or the query level.
pub fn action_target(action: &str) -> &str {
    match action.find(" /") {
        Some(i) => &action[i + 1..],
        None => action
            .split_once(char::is_whitespace)
            .map(|(_, rest)| rest.trim())
            .filter(|r| !r.is_empty())
            .unwrap_or(action),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str) -> AuditEvent {
        AuditEvent {
            action: action.into(),
            ..Default::default()
        }
    }

    #[test]
    fn actions_map_to_dicom_events() {
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("QIDO-RS GET /dicom-web/studies", "110112", None, "E"),
            ("C-FIND STUDY", "110112", None, "E"),
            (
                "WADO-RS retrieve GET /dicom-web/studies/{study}",
                "110103",
                None,
                "R",
            ),
            (
                "WADO-RS rendered GET /dicom-web/studies/{study}/rendered",
                "110103",
                None,
                "R",
            ),
            (
                "WADO-RS metadata GET /dicom-web/studies/{study}/metadata",
                "110103",
                None,
                "R",
            ),
            ("WADO-RS frames GET /x/frames/{f}", "110103", None, "R"),
            ("C-GET", "110103", None, "R"),
            ("C-MOVE", "110106", None, "R"),
            ("STOW-RS POST /dicom-web/studies", "110107", None, "C"),
            ("C-STORE", "110107", None, "C"),
            ("LOGIN", "110114", Some("110122"), "E"),
            ("LOGIN-FAILED", "110114", Some("110122"), "E"),
            ("login-failed bob", "110114", Some("110122"), "E"),
            ("LOGOUT", "110114", Some("110123"), "E"),
            (
                "DENIED QIDO-RS GET /dicom-web/studies",
                "110113",
                Some("110132"),
                "E",
            ),
            ("ADMIN user create", "110113", Some("110129"), "E"),
            ("AUDIT-SEARCH", "110101", None, "R"),
            ("SOMETHING-NEW", "110100", None, "E"),
            ("", "110100", None, "E"),
        ];
        for (action, id, sub, act) in cases {
            let c = classify(&ev(action));
            assert_eq!(c.event_id.code, *id, "{action}");
            assert_eq!(c.type_code.map(|t| t.code), *sub, "{action}");
            assert_eq!(c.action, *act, "{action}");
        }
        let unknown_with_study = AuditEvent {
            study_uid: Some("1.2.3".into()),
            ..ev("SOMETHING-NEW")
        };
        assert_eq!(classify(&unknown_with_study).event_id, INSTANCES_ACCESSED);
        assert!(classify(&ev("C-FIND STUDY")).query);
        assert!(!classify(&ev("C-GET")).query);
        assert_eq!(classify(&ev("C-MOVE")).direction, Direction::Out);
        assert_eq!(classify(&ev("STOW-RS POST /x")).direction, Direction::In);
    }

    #[test]
    fn outcomes_map_to_indicators() {
        let cases: &[(&str, u8)] = &[
            ("200", 0),
            ("204", 0),
            ("304", 0),
            ("400", 4),
            ("403", 4),
            ("404", 4),
            ("500", 8),
            ("503", 8),
            ("0x0000", 0),
            ("0xFF00", 0),
            ("0xB000", 4),
            ("0xFE00", 4),
            ("0x0124", 4),
            ("0xA700", 8),
            ("0xC000", 8),
            ("0x0122", 8),
            ("0xZZZZ", 0),
            ("success", 0),
            ("Denied", 4),
            ("failed", 4),
            ("error", 8),
            ("unavailable", 12),
            ("200 OK", 0),
            ("", 0),
            ("whatever", 0),
        ];
        for (s, want) in cases {
            assert_eq!(outcome_indicator(s), *want, "{s:?}");
        }
        let failed_login = AuditEvent {
            outcome: "200".into(),
            ..ev("LOGIN-FAILED")
        };
        assert_eq!(outcome_of(&failed_login, &classify(&failed_login)), 4);
        let denied_5xx = AuditEvent {
            outcome: "503".into(),
            ..ev("DENIED x")
        };
        assert_eq!(outcome_of(&denied_5xx, &classify(&denied_5xx)), 8);
    }

    #[test]
    fn times_are_utc_iso8601() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601_utc(1_714_564_800_250), "2024-05-01T12:00:00.250Z");
        assert_eq!(iso8601_utc(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso8601_utc(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn sources_lose_their_ports() {
        let nap = |s| network_access_point(s).map(|n| (n.id, n.type_code));
        assert_eq!(nap("127.0.0.1:54321"), Some(("127.0.0.1".into(), "2")));
        assert_eq!(nap("[::1]:443"), Some(("::1".into(), "2")));
        assert_eq!(nap("[::ffff:10.0.0.7]:443"), Some(("10.0.0.7".into(), "2")));
        assert_eq!(nap("fe80::1"), Some(("fe80::1".into(), "2")));
        assert_eq!(nap("10.1.2.3"), Some(("10.1.2.3".into(), "2")));
        assert_eq!(
            nap("modality.local:104"),
            Some(("modality.local".into(), "1"))
        );
        assert_eq!(nap("modality"), Some(("modality".into(), "1")));
        assert_eq!(nap(""), None);
    }

    #[test]
    fn targets() {
        assert_eq!(
            action_target("QIDO-RS GET /dicom-web/studies"),
            "/dicom-web/studies"
        );
        assert_eq!(action_target("C-FIND STUDY"), "STUDY");
        assert_eq!(action_target("C-MOVE"), "C-MOVE");
    }
}
