//! Audit records as FHIR R4 `AuditEvent` resources (and a `searchset`
//! Bundle of them), following the DICOM mapping: `type` and `subtype` are
//! the PS3.15 A.5.3 EventID and EventTypeCode from the DCM coding scheme.
//!
//! Each resource carries an entity for the record's place in the hash chain
//! (`seq`, `hash`, `prev_hash`), so an exported event can be checked against
//! the tamper-evident log it came from.

use base64::Engine;
use serde_json::{Value, json};

use crate::Record;
use crate::codes::{
    self, Code, DCM_SYSTEM, Direction, ROLE_APPLICATION, ROLE_DESTINATION, ROLE_SOURCE,
};

/// The identifier system of records in Meridian's audit log; the value is the record's `seq`.
pub const AUDIT_LOG_SYSTEM: &str = "urn:meridian:audit-log";
/// The observer, and the application agent, of every exported event.
pub const OBSERVER: &str = "Meridian";

const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

fn dcm(c: Code) -> Value {
    json!({"system": DCM_SYSTEM, "code": c.code, "display": c.display})
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// The FHIR resource id of a record.
pub fn resource_id(r: &Record) -> String {
    format!("meridian-audit-{}", r.seq)
}

/// One record as a FHIR R4 `AuditEvent`.
pub fn to_fhir(r: &Record) -> Value {
    let e = &r.event;
    let class = codes::classify(e);
    let outcome = codes::outcome_of(e, &class);

    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": resource_id(r),
        "type": dcm(class.event_id),
        "action": class.action,
        "recorded": codes::iso8601_utc(e.at_ms),
        "outcome": outcome.to_string(),
        "agent": agents(r, class.direction),
        "source": {
            "observer": {"display": OBSERVER},
            "type": [coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entities(r, class.query),
    });
    if let Some(t) = class.type_code {
        ev["subtype"] = json!([dcm(t)]);
    }
    if !e.outcome.is_empty() {
        ev["outcomeDesc"] = json!(e.outcome);
    }
    ev
}

fn agents(r: &Record, direction: Direction) -> Value {
    let e = &r.event;
    let actor = if e.actor.is_empty() {
        "unknown"
    } else {
        &e.actor
    };
    let mut user = json!({
        "who": {"identifier": {"value": actor}, "display": actor},
        "name": actor,
        "requestor": true,
    });
    if !e.role.is_empty() {
        user["role"] = json!([{"text": e.role}]);
    }
    if let Some(nap) = codes::network_access_point(&e.source) {
        user["network"] = json!({"address": nap.id, "type": nap.type_code});
    }
    let mut meridian = json!({
        "type": {"coding": [dcm(ROLE_APPLICATION)]},
        "who": {"display": OBSERVER},
        "name": OBSERVER,
        "requestor": false,
    });
    match direction {
        Direction::None => {}
        // The requestor of a C-MOVE names the destination; it need not be one.
        Direction::Out => {
            meridian["type"] = json!({"coding": [dcm(ROLE_SOURCE), dcm(ROLE_APPLICATION)]});
        }
        Direction::In => {
            user["type"] = json!({"coding": [dcm(ROLE_SOURCE)]});
            meridian["type"] = json!({"coding": [dcm(ROLE_DESTINATION), dcm(ROLE_APPLICATION)]});
        }
    }
    json!([user, meridian])
}

fn entities(r: &Record, query: bool) -> Value {
    let e = &r.event;
    let mut out = Vec::new();
    if let Some(pid) = &e.patient_id {
        let mut ident = json!({"value": pid});
        if let Some(issuer) = &e.issuer {
            ident["assigner"] = json!({"display": issuer});
        }
        out.push(json!({
            "what": {"identifier": ident},
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    if let Some(study) = &e.study_uid {
        let mut ent = json!({
            "what": {"identifier": {"system": "urn:dicom:uid", "value": format!("urn:oid:{study}")}},
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "3", "Report"),
        });
        if let Some(acc) = &e.accession {
            ent["detail"] = json!([{"type": "Accession Number", "valueString": acc}]);
        }
        out.push(ent);
    }
    if query && !e.detail.is_empty() {
        out.push(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "description": codes::action_target(&e.action),
            "query": base64::engine::general_purpose::STANDARD.encode(&e.detail),
        }));
    }
    let mut chain = vec![
        json!({"type": "seq", "valueString": r.seq.to_string()}),
        json!({"type": "hash", "valueString": r.hash}),
        json!({"type": "prev_hash", "valueString": r.prev_hash}),
        json!({"type": "action", "valueString": e.action}),
    ];
    if !e.detail.is_empty() {
        chain.push(json!({"type": "detail", "valueString": e.detail}));
    }
    out.push(json!({
        "what": {"identifier": {"system": AUDIT_LOG_SYSTEM, "value": r.seq.to_string()}},
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "13", "Security Resource"),
        "name": "Meridian audit log",
        "description": format!("audit record {} of the hash chain", r.seq),
        "detail": chain,
    }));
    Value::Array(out)
}

/// Records as a FHIR R4 `searchset` Bundle of `AuditEvent`s, in the given order.
pub fn to_fhir_bundle(records: &[Record]) -> Value {
    let entries: Vec<Value> = records
        .iter()
        .map(|r| json!({"resource": to_fhir(r), "search": {"mode": "match"}}))
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": records.len(),
        "entry": entries,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{AuditEvent, GENESIS, seal};

    /// Representative records: one per kind of action Meridian audits.
    pub(crate) fn samples() -> Vec<Record> {
        let study = Some("1.2.826.0.1.3680043.8.498.1".to_owned());
        let patient = |e: AuditEvent| AuditEvent {
            patient_id: Some("PAT-001".into()),
            issuer: Some("HOSP".into()),
            study_uid: study.clone(),
            accession: Some("ACC<&>\"'1".into()),
            ..e
        };
        let base = |action: &str, outcome: &str| AuditEvent {
            at_ms: 1_714_564_800_250,
            actor: "anonymous".into(),
            role: "none".into(),
            action: action.into(),
            source: "127.0.0.1:54321".into(),
            outcome: outcome.into(),
            ..Default::default()
        };
        let events = vec![
            AuditEvent {
                detail: "PatientID=PAT-001&StudyDate=20240101-".into(),
                ..base("QIDO-RS GET /dicom-web/studies", "200")
            },
            patient(base(
                "WADO-RS retrieve GET /dicom-web/studies/{study}",
                "200",
            )),
            patient(base(
                "WADO-RS rendered GET /dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered",
                "200",
            )),
            patient(base(
                "WADO-RS metadata GET /dicom-web/studies/{study}/metadata",
                "404",
            )),
            patient(base("STOW-RS POST /dicom-web/studies", "503")),
            AuditEvent {
                actor: "FINDSCU".into(),
                role: "dicom-ae".into(),
                source: "[::1]:40001".into(),
                detail: "QueryRetrieveLevel=STUDY PatientName=DOE^*".into(),
                ..base("C-FIND STUDY", "0x0000")
            },
            AuditEvent {
                actor: "MOVESCU".into(),
                role: "dicom-ae".into(),
                detail: "destination=STORESCP".into(),
                ..patient(base("C-MOVE", "0xB000"))
            },
            AuditEvent {
                actor: "GETSCU".into(),
                role: "dicom-ae".into(),
                ..patient(base("C-GET", "0xC000"))
            },
            AuditEvent {
                actor: "STORESCU".into(),
                role: "dicom-ae".into(),
                detail: "instances=3".into(),
                ..patient(base("C-STORE", "0x0000"))
            },
            AuditEvent {
                actor: "alice".into(),
                role: "radiologist".into(),
                ..base("LOGIN", "success")
            },
            AuditEvent {
                actor: "mallory".into(),
                role: String::new(),
                source: "203.0.113.9:5050".into(),
                ..base("LOGIN-FAILED", "failed")
            },
            AuditEvent {
                actor: "alice".into(),
                role: "radiologist".into(),
                ..base("LOGOUT", "success")
            },
            AuditEvent {
                actor: "bob".into(),
                role: "referrer".into(),
                ..patient(base(
                    "DENIED WADO-RS retrieve GET /dicom-web/studies/{study}",
                    "403",
                ))
            },
            AuditEvent {
                actor: "root".into(),
                role: "admin".into(),
                detail: "role radiologist granted to alice".into(),
                ..base("ADMIN user update", "success")
            },
            AuditEvent {
                actor: "auditor".into(),
                role: "auditor".into(),
                detail: "from=2024-01-01&actor=bob".into(),
                ..base("AUDIT-SEARCH", "200")
            },
        ];
        let mut prev = GENESIS.to_owned();
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let r = seal(&prev, i as i64 + 1, e);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn query_event() {
        let r = &samples()[0];
        let v = to_fhir(r);
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["id"], "meridian-audit-1");
        assert_eq!(v["type"]["system"], DCM_SYSTEM);
        assert_eq!(v["type"]["code"], "110112");
        assert_eq!(v["action"], "E");
        assert_eq!(v["recorded"], "2024-05-01T12:00:00.250Z");
        assert_eq!(v["outcome"], "0");
        assert_eq!(v["agent"][0]["name"], "anonymous");
        assert_eq!(v["agent"][0]["requestor"], true);
        assert_eq!(v["agent"][0]["role"][0]["text"], "none");
        assert_eq!(v["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(v["agent"][0]["network"]["type"], "2");
        assert_eq!(v["agent"][1]["requestor"], false);
        assert_eq!(v["source"]["observer"]["display"], "Meridian");
        assert!(v.get("subtype").is_none());
        let entities = v["entity"].as_array().unwrap();
        assert_eq!(entities.len(), 2, "query and chain, no patient or study");
        assert_eq!(entities[0]["role"]["code"], "24");
        assert_eq!(entities[0]["description"], "/dicom-web/studies");
        let q = base64::engine::general_purpose::STANDARD
            .decode(entities[0]["query"].as_str().unwrap())
            .unwrap();
        assert_eq!(q, b"PatientID=PAT-001&StudyDate=20240101-");
    }

    #[test]
    fn study_access_names_patient_study_and_chain() {
        let r = &samples()[1];
        let v = to_fhir(r);
        assert_eq!(v["type"]["code"], "110103");
        assert_eq!(v["action"], "R");
        let ents = v["entity"].as_array().unwrap();
        assert_eq!(ents[0]["role"]["code"], "1");
        assert_eq!(ents[0]["what"]["identifier"]["value"], "PAT-001");
        assert_eq!(ents[0]["what"]["identifier"]["assigner"]["display"], "HOSP");
        assert_eq!(
            ents[1]["what"]["identifier"]["value"],
            "urn:oid:1.2.826.0.1.3680043.8.498.1"
        );
        assert_eq!(ents[1]["detail"][0]["valueString"], "ACC<&>\"'1");
        let chain = &ents[2];
        assert_eq!(chain["what"]["identifier"]["system"], AUDIT_LOG_SYSTEM);
        assert_eq!(chain["what"]["identifier"]["value"], "2");
        assert_eq!(chain["detail"][1]["valueString"], r.hash.as_str());
        assert_eq!(chain["detail"][2]["valueString"], r.prev_hash.as_str());
    }

    #[test]
    fn outcomes_and_subtypes() {
        let s = samples();
        let by_action = |a: &str| to_fhir(s.iter().find(|r| r.event.action == a).unwrap());
        assert_eq!(
            by_action("WADO-RS metadata GET /dicom-web/studies/{study}/metadata")["outcome"],
            "4"
        );
        let stow = by_action("STOW-RS POST /dicom-web/studies");
        assert_eq!(stow["outcome"], "8");
        assert_eq!(stow["outcomeDesc"], "503");
        assert_eq!(stow["type"]["code"], "110107");
        assert_eq!(stow["agent"][0]["type"]["coding"][0]["code"], "110153");
        let mv = by_action("C-MOVE");
        assert_eq!(mv["type"]["code"], "110106");
        assert_eq!(mv["outcome"], "4");
        assert_eq!(mv["agent"][1]["type"]["coding"][0]["code"], "110153");
        let failed = by_action("LOGIN-FAILED");
        assert_eq!(failed["type"]["code"], "110114");
        assert_eq!(failed["subtype"][0]["code"], "110122");
        assert_eq!(failed["outcome"], "4");
        assert!(failed["agent"][0].get("role").is_none());
        assert_eq!(by_action("LOGOUT")["subtype"][0]["code"], "110123");
        let denied = by_action("DENIED WADO-RS retrieve GET /dicom-web/studies/{study}");
        assert_eq!(denied["type"]["code"], "110113");
        assert_eq!(denied["subtype"][0]["code"], "110132");
        assert_eq!(denied["outcome"], "4");
        assert_eq!(by_action("AUDIT-SEARCH")["type"]["code"], "110101");
        assert_eq!(
            by_action("ADMIN user update")["subtype"][0]["code"],
            "110129"
        );
        let find = by_action("C-FIND STUDY");
        assert_eq!(find["agent"][0]["network"]["address"], "::1");
    }

    #[test]
    fn bundle_is_a_searchset() {
        let s = samples();
        let b = to_fhir_bundle(&s);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "searchset");
        assert_eq!(b["total"], s.len());
        assert_eq!(b["entry"].as_array().unwrap().len(), s.len());
        assert_eq!(b["entry"][3]["resource"]["id"], "meridian-audit-4");
        assert_eq!(b["entry"][0]["search"]["mode"], "match");
        assert_eq!(to_fhir_bundle(&[])["total"], 0);
    }

    /// Writes the samples as FHIR JSON for external validation
    /// (`tests/e2e/test_fhir_audit_samples.py`) when `MERIDIAN_FHIR_SAMPLES_DIR` is set.
    #[test]
    fn fhir_samples() {
        let Some(dir) = std::env::var_os("MERIDIAN_FHIR_SAMPLES_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = samples();
        for r in &s {
            let path = dir.join(format!("auditevent-{:02}.json", r.seq));
            std::fs::write(path, serde_json::to_vec_pretty(&to_fhir(r)).unwrap()).unwrap();
        }
        std::fs::write(
            dir.join("bundle.json"),
            serde_json::to_vec_pretty(&to_fhir_bundle(&s)).unwrap(),
        )
        .unwrap();
    }
}
