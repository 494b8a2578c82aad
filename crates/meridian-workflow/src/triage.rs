//! Triage: a study's priority comes from its order, then from per-site rules (data,
//! not code) that may raise it and set a protocol and a subspecialty. Every change
//! records its source, so an AI finding (a later source) raises priority the same way.

use serde::{Deserialize, Serialize};

use crate::model::Priority;

/// What triage looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// HL7 PV1-2 patient class (`E` emergency, `I` inpatient, `O` outpatient).
    pub patient_class: String,
    /// Point of care (PV1-3.1), e.g. `ED`.
    pub location: String,
    pub reason: String,
    pub modality: String,
    pub body_part: String,
    pub procedure: String,
}

/// A rule: all given conditions must hold (absent ones are ignored); then the rule
/// raises the priority to `priority` (never lowers it) and sets `protocol` and
/// `subspecialty` when given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rule {
    pub name: String,
    /// Patient classes or locations, any of which matches (case-insensitive).
    pub location: Vec<String>,
    /// Words or phrases in the reason for exam or procedure, any of which matches
    /// (case-insensitive, whole words).
    pub keywords: Vec<String>,
    pub modality: Vec<String>,
    pub body_part: Vec<String>,
    pub priority: Option<Priority>,
    pub protocol: Option<String>,
    pub subspecialty: Option<String>,
}

/// Where a priority (or protocol) came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    Order,
    Default,
    Rule(String),
    Ai(String),
    User(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Order => f.write_str("order"),
            Source::Default => f.write_str("default"),
            Source::Rule(n) => write!(f, "rule:{n}"),
            Source::Ai(n) => write!(f, "ai:{n}"),
            Source::User(n) => write!(f, "user:{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub from: Option<Priority>,
    pub to: Priority,
    pub protocol: Option<String>,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub priority: Priority,
    pub protocol: Option<String>,
    pub subspecialty: Option<String>,
    /// Every step that set or raised the priority or set the protocol, in order.
    pub changes: Vec<Change>,
}

fn any_eq(list: &[String], v: &str) -> bool {
    list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(v))
}

/// Whether `phrase` occurs in `text` on word boundaries, ignoring case.
pub fn has_phrase(text: &str, phrase: &str) -> bool {
    let text = text.to_lowercase();
    let phrase = phrase.trim().to_lowercase();
    if phrase.is_empty() {
        return false;
    }
    let bound = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    let mut from = 0;
    while let Some(i) = text[from..].find(&phrase) {
        let at = from + i;
        let end = at + phrase.len();
        if bound(text[..at].chars().next_back()) && bound(text[end..].chars().next()) {
            return true;
        }
        from = at + phrase.chars().next().map_or(1, char::len_utf8);
    }
    false
}

impl Rule {
    pub fn matches(&self, f: &Facts) -> bool {
        let loc = self.location.is_empty()
            || self.location.iter().any(|l| {
                l.eq_ignore_ascii_case(&f.location) || l.eq_ignore_ascii_case(&f.patient_class)
            });
        let kw = self.keywords.is_empty()
            || self
                .keywords
                .iter()
                .any(|k| has_phrase(&f.reason, k) || has_phrase(&f.procedure, k));
        loc && kw && any_eq(&self.modality, &f.modality) && any_eq(&self.body_part, &f.body_part)
    }
}

/// Applies `rules` to a study whose order gave `ordered` (None: no order priority, so
/// routine by default).
pub fn triage(ordered: Option<Priority>, facts: &Facts, rules: &[Rule]) -> Outcome {
    let mut out = Outcome {
        priority: ordered.unwrap_or(Priority::Routine),
        protocol: None,
        subspecialty: None,
        changes: vec![Change {
            from: None,
            to: ordered.unwrap_or(Priority::Routine),
            protocol: None,
            source: if ordered.is_some() {
                Source::Order
            } else {
                Source::Default
            },
        }],
    };
    for r in rules.iter().filter(|r| r.matches(facts)) {
        raise(
            &mut out,
            r.priority,
            r.protocol.clone(),
            Source::Rule(r.name.clone()),
        );
        if out.subspecialty.is_none() {
            out.subspecialty.clone_from(&r.subspecialty);
        }
    }
    out
}

/// Raises the priority (never lowers it) and sets the protocol if none is set,
/// recording the change when anything changed. AI findings come in through here.
pub fn raise(out: &mut Outcome, to: Option<Priority>, protocol: Option<String>, source: Source) {
    let new_priority = to.filter(|p| *p < out.priority);
    let new_protocol = protocol.filter(|_| out.protocol.is_none());
    if new_priority.is_none() && new_protocol.is_none() {
        return;
    }
    let from = out.priority;
    if let Some(p) = new_priority {
        out.priority = p;
    }
    if new_protocol.is_some() {
        out.protocol.clone_from(&new_protocol);
    }
    out.changes.push(Change {
        from: Some(from),
        to: out.priority,
        protocol: new_protocol,
        source,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stroke_rules() -> Vec<Rule> {
        vec![
            Rule {
                name: "code-stroke".into(),
                keywords: vec!["code stroke".into(), "stroke".into()],
                modality: vec!["CT".into(), "MR".into()],
                priority: Some(Priority::Stat),
                protocol: Some("stroke".into()),
                subspecialty: Some("neuro".into()),
                ..Rule::default()
            },
            Rule {
                name: "ed".into(),
                location: vec!["ED".into(), "E".into()],
                priority: Some(Priority::Urgent),
                ..Rule::default()
            },
        ]
    }

    #[test]
    fn keyword_raises_and_records_source() {
        let f = Facts {
            reason: "Code Stroke, left sided weakness".into(),
            modality: "CT".into(),
            location: "ED".into(),
            ..Facts::default()
        };
        let o = triage(Some(Priority::Routine), &f, &stroke_rules());
        assert_eq!(o.priority, Priority::Stat);
        assert_eq!(o.protocol.as_deref(), Some("stroke"));
        assert_eq!(o.subspecialty.as_deref(), Some("neuro"));
        assert_eq!(o.changes.len(), 2, "ED rule cannot lower STAT: no change");
        assert_eq!(o.changes[1].source, Source::Rule("code-stroke".into()));
        assert_eq!(o.changes[1].from, Some(Priority::Routine));
    }

    #[test]
    fn whole_words_only() {
        assert!(has_phrase("r/o PE.", "pe"));
        assert!(!has_phrase("pelvis pain", "pe"));
        assert!(!has_phrase("", "pe"));
        assert!(has_phrase("Trauma", "trauma"));
        assert!(has_phrase("ça et là PE", "pe"));
    }

    #[test]
    fn never_lowers() {
        let f = Facts {
            location: "ED".into(),
            ..Facts::default()
        };
        let o = triage(Some(Priority::Stat), &f, &stroke_rules());
        assert_eq!(o.priority, Priority::Stat);
        assert_eq!(o.changes.len(), 1);
    }

    #[test]
    fn ai_raises_like_a_rule() {
        let mut o = triage(None, &Facts::default(), &[]);
        assert_eq!(o.changes[0].source, Source::Default);
        raise(
            &mut o,
            Some(Priority::Stat),
            Some("haemorrhage".into()),
            Source::Ai("ich-detector".into()),
        );
        assert_eq!(o.priority, Priority::Stat);
        assert_eq!(
            o.changes.last().unwrap().source,
            Source::Ai("ich-detector".into())
        );
    }
}
