//! The tamper-evident audit trail, as pure functions: each record carries the
//! SHA-256 of its predecessor's hash and its own canonical content, so a
//! changed, deleted, inserted or reordered record breaks the chain at a
//! point `verify` names. Storage of the records lives in meridian-store.
//!
//! Export, also pure: FHIR R4 `AuditEvent` ([`fhir`]), DICOM audit messages
//! of PS3.15 A.5 ([`dicom`]), and their syslog framing ([`syslog`]); the
//! classification of actions and outcomes both share is in [`codes`].

pub mod codes;
pub mod dicom;
pub mod fhir;
pub mod syslog;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The hash that precedes the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One access to patient data, a login, a denial or a configuration change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditEvent {
    /// UTC milliseconds since the epoch.
    pub at_ms: i64,
    /// Who: user, token or calling AE title.
    pub actor: String,
    pub role: String,
    /// What was done, e.g. `QIDO GET /dicom-web/studies`, `C-FIND STUDY`.
    pub action: String,
    pub patient_id: Option<String>,
    pub issuer: Option<String>,
    pub study_uid: Option<String>,
    pub accession: Option<String>,
    /// From where: IP address (and port) of the client.
    pub source: String,
    /// e.g. `200`, `0x0000`, `denied`.
    pub outcome: String,
    /// Free detail (query keys, counts), bounded by the caller.
    pub detail: String,
}

/// An event sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

fn put(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt(buf: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            put(buf, v);
        }
    }
}

/// Unambiguous byte encoding of a record's content (length-prefixed fields).
pub fn canonical(seq: i64, e: &AuditEvent) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(b"meridian-audit-v1");
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&e.at_ms.to_be_bytes());
    for s in [&e.actor, &e.role, &e.action] {
        put(&mut b, s);
    }
    for s in [&e.patient_id, &e.issuer, &e.study_uid, &e.accession] {
        put_opt(&mut b, s);
    }
    for s in [&e.source, &e.outcome, &e.detail] {
        put(&mut b, s);
    }
    b
}

/// The hash of a record given its predecessor's hash.
pub fn chain_hash(prev_hash: &str, seq: i64, e: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical(seq, e));
    hex::encode(h.finalize())
}

/// Seals the next record after `prev_hash`.
pub fn seal(prev_hash: &str, seq: i64, event: AuditEvent) -> Record {
    let hash = chain_hash(prev_hash, seq, &event);
    Record {
        seq,
        event,
        prev_hash: prev_hash.to_owned(),
        hash,
    }
}

/// The first place the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error(
        "record {found} follows record {previous}: records {missing_from}..{found} are missing or out of order"
    )]
    Gap {
        previous: i64,
        missing_from: i64,
        found: i64,
    },
    #[error(
        "record {seq} does not link to its predecessor (deleted, inserted or reordered records)"
    )]
    BrokenLink { seq: i64 },
    #[error("record {seq} was altered: its content does not match its hash")]
    Altered { seq: i64 },
}

/// Incremental verifier: feed records in `seq` order.
#[derive(Debug, Clone)]
pub struct Verifier {
    last_seq: i64,
    last_hash: String,
    pub checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            last_seq: 0,
            last_hash: GENESIS.to_owned(),
            checked: 0,
        }
    }
}

impl Verifier {
    pub fn push(&mut self, r: &Record) -> Result<(), VerifyError> {
        if r.seq != self.last_seq + 1 {
            return Err(VerifyError::Gap {
                previous: self.last_seq,
                missing_from: self.last_seq + 1,
                found: r.seq,
            });
        }
        if r.prev_hash != self.last_hash {
            return Err(VerifyError::BrokenLink { seq: r.seq });
        }
        if chain_hash(&r.prev_hash, r.seq, &r.event) != r.hash {
            return Err(VerifyError::Altered { seq: r.seq });
        }
        self.last_seq = r.seq;
        self.last_hash = r.hash.clone();
        self.checked += 1;
        Ok(())
    }
}

/// Verifies a whole chain; returns the number of records.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<u64, VerifyError> {
    let mut v = Verifier::default();
    for r in records {
        v.push(r)?;
    }
    Ok(v.checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        let mut prev = GENESIS.to_owned();
        for seq in 1..=n {
            let e = AuditEvent {
                at_ms: seq * 1000,
                actor: "DCMSEND".into(),
                action: "C-FIND STUDY".into(),
                study_uid: Some(format!("1.2.{seq}")),
                outcome: "0x0000".into(),
                ..Default::default()
            };
            let r = seal(&prev, seq, e);
            prev = r.hash.clone();
            out.push(r);
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(50)), Ok(50));
        assert_eq!(verify(&chain(0)), Ok(0));
    }

    #[test]
    fn altered_record_is_named() {
        let mut c = chain(10);
        c[4].event.actor = "MALLORY".into();
        assert_eq!(verify(&c), Err(VerifyError::Altered { seq: 5 }));
    }

    #[test]
    fn deleted_record_is_named() {
        let mut c = chain(10);
        c.remove(6);
        assert_eq!(
            verify(&c),
            Err(VerifyError::Gap {
                previous: 6,
                missing_from: 7,
                found: 8
            })
        );
    }

    #[test]
    fn reordered_records_are_found() {
        let mut c = chain(10);
        c.swap(2, 3);
        assert!(matches!(verify(&c), Err(VerifyError::Gap { .. })));
        // Renumbering to hide the swap breaks the links instead.
        let mut c = chain(10);
        c.swap(2, 3);
        c[2].seq = 3;
        c[3].seq = 4;
        assert!(matches!(
            verify(&c),
            Err(VerifyError::BrokenLink { seq: 3 }) | Err(VerifyError::Altered { seq: 3 })
        ));
    }

    #[test]
    fn rehashing_a_record_breaks_its_successor() {
        let mut c = chain(10);
        c[4].event.detail = "forged".into();
        c[4].hash = chain_hash(&c[4].prev_hash, 5, &c[4].event);
        assert_eq!(verify(&c), Err(VerifyError::BrokenLink { seq: 6 }));
    }

    #[test]
    fn canonical_form_is_unambiguous() {
        let a = AuditEvent {
            actor: "ab".into(),
            role: "c".into(),
            ..Default::default()
        };
        let b = AuditEvent {
            actor: "a".into(),
            role: "bc".into(),
            ..Default::default()
        };
        assert_ne!(canonical(1, &a), canonical(1, &b));
        let c = AuditEvent {
            patient_id: None,
            ..Default::default()
        };
        let d = AuditEvent {
            patient_id: Some(String::new()),
            ..Default::default()
        };
        assert_ne!(canonical(1, &c), canonical(1, &d));
    }
}
