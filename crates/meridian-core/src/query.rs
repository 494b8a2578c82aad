//! The query model shared by C-FIND and QIDO-RS (PS3.4 C.2.2.2).
//!
//! A [`Query`] is a level, a list of matching keys, and the attributes to
//! return. The storage layer turns it into parameterised SQL; the pure
//! [`Matcher::matches`] defines the semantics and is what the property tests
//! hold the SQL translation to.

use thiserror::Error;

use crate::attrs::{self, Attr, AttrKind, Level};
use crate::uid::validate_uid;

/// How one attribute is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Universal matching: the key is a return key only.
    Universal,
    /// Single value matching (exact, case-sensitive).
    Single(String),
    /// Wildcard matching: `*` any run, `?` any one character.
    Wildcard(String),
    /// Range matching on dates/times: inclusive bounds, either may be open.
    Range(Option<String>, Option<String>),
    /// List of UID matching.
    UidList(Vec<String>),
    /// Fuzzy person-name matching: every given word is a case-insensitive
    /// prefix of some name component.
    Fuzzy(Vec<String>),
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    #[error("invalid UID in query: {0}")]
    BadUid(String),
    #[error("invalid range `{0}`")]
    BadRange(String),
    #[error("unsupported query attribute `{0}`")]
    UnknownAttribute(String),
    #[error("invalid value `{1}` for {0}")]
    BadValue(&'static str, String),
    #[error("attribute {0} cannot be matched at level {1:?}")]
    WrongLevel(&'static str, Level),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub level: Level,
    pub keys: Vec<(&'static Attr, Matcher)>,
    /// Extra return attributes (tags), besides the keys.
    pub include: Vec<u32>,
    /// `includefield=all`.
    pub include_all: bool,
    pub limit: Option<u64>,
    pub offset: u64,
}

impl Query {
    pub fn new(level: Level) -> Self {
        Query {
            level,
            keys: Vec::new(),
            include: Vec::new(),
            include_all: false,
            limit: None,
            offset: 0,
        }
    }

    /// Adds a matching key from its DICOM string value, as C-FIND and QIDO give it.
    /// `fuzzy` turns on fuzzy matching for person names.
    pub fn add_key(
        &mut self,
        attr: &'static Attr,
        raw: &str,
        fuzzy: bool,
    ) -> Result<(), QueryError> {
        if attr.level > self.level {
            // A key of a lower level than the query is not allowed (PS3.4 C.2.2.1).
            return Err(QueryError::WrongLevel(attr.keyword, self.level));
        }
        let m = parse_matcher(attr, raw, fuzzy)?;
        self.keys.retain(|(a, _)| a.tag != attr.tag);
        self.keys.push((attr, m));
        Ok(())
    }

    /// The matcher for a tag, if the query has a non-universal key on it.
    pub fn key(&self, tag: u32) -> Option<&Matcher> {
        self.keys
            .iter()
            .find(|(a, m)| a.tag == tag && *m != Matcher::Universal)
            .map(|(_, m)| m)
    }

    /// Whether the record's attribute values (by tag) all match. Pure semantics
    /// used for tests and for filtering attributes the SQL cannot.
    pub fn matches(&self, get: impl Fn(u32) -> Option<String>) -> bool {
        self.keys.iter().all(|(attr, m)| {
            let v = get(attr.tag);
            match v {
                Some(v) if attr.kind == AttrKind::CodeSet => {
                    v.split('\\').any(|part| m.matches(part))
                }
                Some(v) => m.matches(&v),
                None => *m == Matcher::Universal,
            }
        })
    }
}

fn trim(raw: &str) -> &str {
    raw.trim_end_matches(['\0']).trim()
}

/// Normalises a person name: trailing empty component groups and components
/// (`Wang^XiaoDong=王^小東=` → `Wang^XiaoDong=王^小東`) and padding removed.
pub fn normalize_pn(v: &str) -> String {
    let groups: Vec<String> = v
        .trim_end_matches(['\0', ' '])
        .split('=')
        .map(|g| g.trim_end_matches(['^', ' ']).to_owned())
        .collect();
    let keep = groups
        .iter()
        .rposition(|g| !g.is_empty())
        .map(|i| i + 1)
        .unwrap_or(0);
    groups[..keep].join("=")
}

/// Parses the matcher for an attribute from its request value.
pub fn parse_matcher(attr: &'static Attr, raw: &str, fuzzy: bool) -> Result<Matcher, QueryError> {
    let v = trim(raw);
    if v.is_empty() || v == "*" {
        return Ok(Matcher::Universal);
    }
    match attr.kind {
        AttrKind::Uid => {
            let list: Result<Vec<String>, QueryError> = v
                .split(['\\', ','])
                .map(|u| {
                    validate_uid(u.trim())
                        .map(str::to_owned)
                        .map_err(|_| QueryError::BadUid(u.to_owned()))
                })
                .collect();
            let list = list?;
            if list.len() == 1 {
                Ok(Matcher::Single(list.into_iter().next().unwrap_or_default()))
            } else {
                Ok(Matcher::UidList(list))
            }
        }
        AttrKind::Date | AttrKind::Time => {
            let digits_ok = |s: &str| {
                s.bytes().all(|b| {
                    b.is_ascii_digit() || (attr.kind == AttrKind::Time && (b == b'.' || b == b':'))
                })
            };
            if let Some((lo, hi)) = v.split_once('-') {
                let (lo, hi) = (lo.trim(), hi.trim());
                if (lo.is_empty() && hi.is_empty()) || !digits_ok(lo) || !digits_ok(hi) {
                    return Err(QueryError::BadRange(v.to_owned()));
                }
                let norm = |s: &str| (!s.is_empty()).then(|| s.replace(':', ""));
                Ok(Matcher::Range(norm(lo), norm(hi)))
            } else if v.contains(['*', '?']) {
                Ok(Matcher::Wildcard(v.to_owned()))
            } else if digits_ok(v) {
                Ok(Matcher::Single(v.replace(':', "")))
            } else {
                Err(QueryError::BadValue(attr.keyword, v.to_owned()))
            }
        }
        AttrKind::Integer => {
            v.parse::<i64>()
                .map_err(|_| QueryError::BadValue(attr.keyword, v.to_owned()))?;
            Ok(Matcher::Single(v.to_owned()))
        }
        AttrKind::PersonName if fuzzy => {
            let words: Vec<String> = v
                .split(['^', ' ', ','])
                .map(|w| w.trim_matches(['*', '?']).to_lowercase())
                .filter(|w| !w.is_empty())
                .collect();
            if words.is_empty() {
                Ok(Matcher::Universal)
            } else {
                Ok(Matcher::Fuzzy(words))
            }
        }
        AttrKind::Text | AttrKind::PersonName | AttrKind::CodeSet => {
            if v.contains(['*', '?']) {
                Ok(Matcher::Wildcard(v.to_owned()))
            } else if attr.kind == AttrKind::PersonName {
                Ok(Matcher::Single(normalize_pn(v)))
            } else if attr.kind == AttrKind::CodeSet && v.contains('\\') {
                // ModalitiesInStudy=CT\MR: any of them.
                Ok(Matcher::UidList(v.split('\\').map(str::to_owned).collect()))
            } else {
                Ok(Matcher::Single(v.to_owned()))
            }
        }
    }
}

impl Matcher {
    /// Whether `value` (one value, already decoded and trimmed) matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Universal => true,
            Matcher::Single(s) => value == s,
            Matcher::Wildcard(p) => wildcard_match(p.as_bytes(), value.as_bytes()),
            Matcher::Range(lo, hi) => {
                !value.is_empty()
                    && lo.as_deref().is_none_or(|lo| value >= lo)
                    && hi
                        .as_deref()
                        .is_none_or(|hi| value <= hi || value.starts_with(hi))
            }
            Matcher::UidList(list) => list.iter().any(|u| u == value),
            Matcher::Fuzzy(words) => {
                let comps: Vec<String> = value
                    .split(['^', ' ', '='])
                    .filter(|c| !c.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                words
                    .iter()
                    .all(|w| comps.iter().any(|c| c.starts_with(w.as_str())))
            }
        }
    }
}

/// Classic glob matching over characters (`*`, `?`), iterative with backtracking.
pub fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let p: Vec<char> = String::from_utf8_lossy(pattern).chars().collect();
    let t: Vec<char> = String::from_utf8_lossy(text).chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Looks up an attribute the query may match on, by tag.
pub fn matchable(tag: u32) -> Option<&'static Attr> {
    attrs::by_tag(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::by_keyword;
    use proptest::prelude::*;

    fn attr(k: &str) -> &'static Attr {
        by_keyword(k).unwrap()
    }

    #[test]
    fn parses_matchers() {
        let pn = attr("PatientName");
        assert_eq!(parse_matcher(pn, "", false), Ok(Matcher::Universal));
        assert_eq!(parse_matcher(pn, "*", false), Ok(Matcher::Universal));
        assert_eq!(
            parse_matcher(pn, "DOE*", false),
            Ok(Matcher::Wildcard("DOE*".into()))
        );
        assert_eq!(
            parse_matcher(pn, "DOE^JOHN", false),
            Ok(Matcher::Single("DOE^JOHN".into()))
        );
        assert_eq!(
            parse_matcher(pn, "doe", true),
            Ok(Matcher::Fuzzy(vec!["doe".into()]))
        );
        let d = attr("StudyDate");
        assert_eq!(
            parse_matcher(d, "20200101-20201231", false),
            Ok(Matcher::Range(
                Some("20200101".into()),
                Some("20201231".into())
            ))
        );
        assert_eq!(
            parse_matcher(d, "-20201231", false),
            Ok(Matcher::Range(None, Some("20201231".into())))
        );
        assert_eq!(
            parse_matcher(d, "20200101-", false),
            Ok(Matcher::Range(Some("20200101".into()), None))
        );
        assert!(parse_matcher(d, "2020x", false).is_err());
        assert!(parse_matcher(d, "-", false).is_err());
        let u = attr("StudyInstanceUID");
        assert_eq!(
            parse_matcher(u, "1.2.3\\1.2.4", false),
            Ok(Matcher::UidList(vec!["1.2.3".into(), "1.2.4".into()]))
        );
        assert_eq!(
            parse_matcher(u, "1.2.3,1.2.4", false),
            Ok(Matcher::UidList(vec!["1.2.3".into(), "1.2.4".into()]))
        );
        assert!(parse_matcher(u, "1.2.x", false).is_err());
    }

    #[test]
    fn matching_semantics() {
        assert!(Matcher::Wildcard("DOE*".into()).matches("DOE^JOHN"));
        assert!(!Matcher::Wildcard("DOE*".into()).matches("ADOE"));
        assert!(Matcher::Wildcard("D?E*N".into()).matches("DOE^JOHN"));
        assert!(Matcher::Wildcard("*".into()).matches(""));
        assert!(Matcher::Range(Some("20200101".into()), None).matches("20200101"));
        assert!(!Matcher::Range(Some("20200102".into()), None).matches("20200101"));
        assert!(!Matcher::Range(None, Some("2019".into())).matches(""));
        assert!(Matcher::Fuzzy(vec!["jo".into(), "do".into()]).matches("DOE^JOHN"));
        assert!(!Matcher::Fuzzy(vec!["oe".into()]).matches("DOE^JOHN"));
    }

    #[test]
    fn person_names_normalise() {
        assert_eq!(
            normalize_pn("Wang^XiaoDong=王^小東="),
            "Wang^XiaoDong=王^小東"
        );
        assert_eq!(normalize_pn("DOE^JOHN^^^"), "DOE^JOHN");
        assert_eq!(normalize_pn("=山田"), "=山田");
        assert_eq!(normalize_pn(""), "");
    }

    #[test]
    fn keys_below_the_level_are_refused() {
        let mut q = Query::new(Level::Study);
        assert!(q.add_key(attr("SOPInstanceUID"), "1.2.3", false).is_err());
        assert!(q.add_key(attr("PatientID"), "X", false).is_ok());
    }

    fn naive(p: &str, t: &str) -> bool {
        // Recursive reference implementation.
        fn go(p: &[char], t: &[char]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
                (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
                (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
                _ => false,
            }
        }
        let p: Vec<char> = p.chars().collect();
        let t: Vec<char> = t.chars().collect();
        go(&p, &t)
    }

    proptest! {
        #[test]
        fn wildcard_agrees_with_reference(p in "[ab*?^]{0,8}", t in "[ab^]{0,10}") {
            prop_assert_eq!(wildcard_match(p.as_bytes(), t.as_bytes()), naive(&p, &t));
        }

        #[test]
        fn literal_pattern_matches_itself(t in "[A-Z^ ]{0,20}") {
            prop_assert!(wildcard_match(t.as_bytes(), t.as_bytes()));
            let mut s = t.clone();
            s.push('*');
            let longer = format!("{}XYZ", t);
            prop_assert!(wildcard_match(s.as_bytes(), longer.as_bytes()));
        }

        #[test]
        fn ranges_include_bounds(a in 19000101u32..20991231, b in 19000101u32..20991231) {
            let (lo, hi) = (a.min(b).to_string(), a.max(b).to_string());
            let m = Matcher::Range(Some(lo.clone()), Some(hi.clone()));
            prop_assert!(m.matches(&lo));
            prop_assert!(m.matches(&hi));
        }
    }
}
