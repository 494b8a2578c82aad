//! Reconciliation: which order a stable study belongs to.
//!
//! By (site, accession number) first; otherwise by (site, patient ID + issuer,
//! modality, order date within the contract's window) when exactly one open order fits.
//! Patient IDs are compared only within the same issuer: never merged across issuers.

use serde::{Deserialize, Serialize};

use crate::model::Millis;

/// What reconciliation needs from a study.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyFacts {
    pub site: String,
    pub accession: String,
    pub patient_id: String,
    pub issuer: String,
    pub modalities: Vec<String>,
    /// Study date/time, else arrival.
    pub at: Millis,
}

/// What reconciliation needs from an order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFacts {
    pub id: String,
    pub site: String,
    pub accession: String,
    pub patient_id: String,
    pub issuer: String,
    pub modality: String,
    pub ordered_at: Millis,
    /// Already matched to a study, or cancelled.
    pub closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Match {
    Accession {
        order: String,
    },
    Patient {
        order: String,
    },
    /// Nothing fits: to the coordinators' queue.
    None,
    /// Several orders fit: to the queue, naming them.
    Ambiguous {
        orders: Vec<String>,
    },
}

/// Matches `study` against `orders` (any site; only the study's site is considered).
pub fn reconcile(study: &StudyFacts, orders: &[OrderFacts], window_days: u32) -> Match {
    let same_site = || orders.iter().filter(|o| o.site == study.site && !o.closed);
    if !study.accession.trim().is_empty() {
        let by_acc: Vec<&OrderFacts> = same_site()
            .filter(|o| o.accession == study.accession)
            .collect();
        match by_acc.as_slice() {
            [one] => {
                return Match::Accession {
                    order: one.id.clone(),
                };
            }
            [] => {}
            many => {
                return Match::Ambiguous {
                    orders: many.iter().map(|o| o.id.clone()).collect(),
                };
            }
        }
    }
    if study.patient_id.trim().is_empty() {
        return Match::None;
    }
    let window = i64::from(window_days) * 86_400_000;
    let fits: Vec<&OrderFacts> = same_site()
        .filter(|o| {
            o.patient_id == study.patient_id
                && o.issuer == study.issuer
                && (o.modality.is_empty()
                    || study
                        .modalities
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(&o.modality)))
                && (o.ordered_at - study.at).abs() <= window
        })
        .collect();
    match fits.as_slice() {
        [one] => Match::Patient {
            order: one.id.clone(),
        },
        [] => Match::None,
        many => Match::Ambiguous {
            orders: many.iter().map(|o| o.id.clone()).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, acc: &str, pid: &str, issuer: &str) -> OrderFacts {
        OrderFacts {
            id: id.into(),
            site: "a".into(),
            accession: acc.into(),
            patient_id: pid.into(),
            issuer: issuer.into(),
            modality: "CT".into(),
            ordered_at: 0,
            closed: false,
        }
    }

    #[test]
    fn accession_first_then_patient_within_issuer() {
        let orders = vec![
            order("1", "ACC1", "12345", "HOSP-A"),
            order("2", "ACC2", "12345", "HOSP-B"),
        ];
        let mut s = StudyFacts {
            site: "a".into(),
            accession: "ACC2".into(),
            patient_id: "12345".into(),
            issuer: "HOSP-A".into(),
            modalities: vec!["CT".into()],
            at: 3_600_000,
        };
        assert_eq!(
            reconcile(&s, &orders, 2),
            Match::Accession { order: "2".into() }
        );
        s.accession.clear();
        assert_eq!(
            reconcile(&s, &orders, 2),
            Match::Patient { order: "1".into() }
        );
        // Same ID under another issuer is another patient.
        s.issuer = "HOSP-C".into();
        assert_eq!(reconcile(&s, &orders, 2), Match::None);
        // Another site's order never matches.
        s.issuer = "HOSP-A".into();
        s.site = "b".into();
        assert_eq!(reconcile(&s, &orders, 2), Match::None);
    }

    #[test]
    fn two_candidates_are_ambiguous() {
        let orders = vec![order("1", "", "7", "X"), order("2", "", "7", "X")];
        let s = StudyFacts {
            site: "a".into(),
            patient_id: "7".into(),
            issuer: "X".into(),
            modalities: vec!["CT".into()],
            ..StudyFacts::default()
        };
        assert!(matches!(reconcile(&s, &orders, 2), Match::Ambiguous { .. }));
    }
}
