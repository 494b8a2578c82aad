//! Audit records as DICOM audit messages: the XML of PS3.15 A.5 (the
//! RFC 3881-derived schema of A.5.1), with the event of A.5.3 that the
//! record's action maps to.
//!
//! Elements come in the schema's order; attributes and text are escaped.
//! The schema requires a ParticipantObjectName or a ParticipantObjectQuery
//! in every participant object: the audit record keeps no patient name, so
//! the patient and study carry an empty name (the value is not recorded).

use std::fmt::Write;

use base64::Engine;

use crate::Record;
use crate::codes::{self, Code, Direction, ROLE_APPLICATION, ROLE_DESTINATION, ROLE_SOURCE};
use crate::fhir::{AUDIT_LOG_SYSTEM, OBSERVER};

/// The coding scheme designator of Meridian's own role names (a private
/// scheme: PS3.16 reserves designators starting with `99` for local use).
pub const LOCAL_SCHEME: &str = "99MERIDIAN";

/// Escapes text for XML content and for attribute values in double or
/// single quotes. Characters XML 1.0 cannot carry (most C0 controls, lone
/// surrogates cannot occur in `str`, U+FFFE/U+FFFF) become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept literally, attribute-value normalisation would turn them into spaces.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One `name="value"` attribute, escaped, with a leading space.
fn attr(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, " {name}=\"{}\"", escape(value));
}

/// A coded value element (`CodedValueType`: csd-code, codeSystemName, originalText).
fn coded(out: &mut String, element: &str, code: &str, scheme: &str, meaning: &str) {
    let _ = write!(out, "<{element}");
    attr(out, "csd-code", code);
    attr(out, "codeSystemName", scheme);
    attr(out, "originalText", meaning);
    out.push_str("/>");
}

fn dcm(out: &mut String, element: &str, c: Code) {
    coded(out, element, c.code, "DCM", c.display);
}

struct Object<'a> {
    id: &'a str,
    type_code: &'a str,
    role: &'a str,
    /// ParticipantObjectIDTypeCode: (code, scheme, meaning).
    id_type: (&'a str, &'a str, &'a str),
    /// ParticipantObjectName, or else ParticipantObjectQuery (base64).
    name: Option<&'a str>,
    query: Option<&'a str>,
    details: Vec<(&'a str, String)>,
    accession: Option<&'a str>,
}

fn object(out: &mut String, o: &Object) {
    let b64 = base64::engine::general_purpose::STANDARD;
    out.push_str("<ParticipantObjectIdentification");
    attr(out, "ParticipantObjectID", o.id);
    attr(out, "ParticipantObjectTypeCode", o.type_code);
    attr(out, "ParticipantObjectTypeCodeRole", o.role);
    out.push('>');
    coded(
        out,
        "ParticipantObjectIDTypeCode",
        o.id_type.0,
        o.id_type.1,
        o.id_type.2,
    );
    match (o.name, o.query) {
        (_, Some(q)) => {
            let _ = write!(
                out,
                "<ParticipantObjectQuery>{}</ParticipantObjectQuery>",
                b64.encode(q)
            );
        }
        (name, None) => {
            let _ = write!(
                out,
                "<ParticipantObjectName>{}</ParticipantObjectName>",
                escape(name.unwrap_or(""))
            );
        }
    }
    for (t, v) in &o.details {
        out.push_str("<ParticipantObjectDetail");
        attr(out, "type", t);
        attr(out, "value", &b64.encode(v));
        out.push_str("/>");
    }
    if let Some(acc) = o.accession {
        out.push_str("<ParticipantObjectDescription><Accession");
        attr(out, "Number", acc);
        out.push_str("/></ParticipantObjectDescription>");
    }
    out.push_str("</ParticipantObjectIdentification>");
}

/// One record as a DICOM audit message (PS3.15 A.5), without an XML declaration
/// (syslog carries it as UTF-8 text; see [`document`] for a standalone file).
pub fn to_dicom_audit_message(r: &Record) -> String {
    let e = &r.event;
    let class = codes::classify(e);
    let outcome = codes::outcome_of(e, &class);
    let mut out = String::with_capacity(1536);

    out.push_str("<AuditMessage><EventIdentification");
    attr(&mut out, "EventActionCode", class.action);
    attr(&mut out, "EventDateTime", &codes::iso8601_utc(e.at_ms));
    attr(&mut out, "EventOutcomeIndicator", &outcome.to_string());
    out.push('>');
    dcm(&mut out, "EventID", class.event_id);
    if let Some(t) = class.type_code {
        dcm(&mut out, "EventTypeCode", t);
    }
    if !e.outcome.is_empty() {
        let _ = write!(
            out,
            "<EventOutcomeDescription>{}</EventOutcomeDescription>",
            escape(&e.outcome)
        );
    }
    out.push_str("</EventIdentification>");

    // The actor: a user, a token or a calling AE title.
    let actor = if e.actor.is_empty() {
        "unknown"
    } else {
        &e.actor
    };
    out.push_str("<ActiveParticipant");
    attr(&mut out, "UserID", actor);
    attr(&mut out, "UserIsRequestor", "true");
    if let Some(nap) = codes::network_access_point(&e.source) {
        attr(&mut out, "NetworkAccessPointID", &nap.id);
        attr(&mut out, "NetworkAccessPointTypeCode", nap.type_code);
    }
    out.push('>');
    if !e.role.is_empty() {
        coded(&mut out, "RoleIDCode", &e.role, LOCAL_SCHEME, &e.role);
    }
    // The sender of STOW-RS or C-STORE is the source. (The requestor of a
    // C-MOVE names the destination; it need not be one.)
    if class.direction == Direction::In {
        dcm(&mut out, "RoleIDCode", ROLE_SOURCE);
    }
    out.push_str("</ActiveParticipant>");

    // Meridian, the application that served or refused the request.
    out.push_str("<ActiveParticipant");
    attr(&mut out, "UserID", OBSERVER);
    attr(&mut out, "UserIsRequestor", "false");
    out.push('>');
    dcm(&mut out, "RoleIDCode", ROLE_APPLICATION);
    match class.direction {
        Direction::None => {}
        Direction::Out => dcm(&mut out, "RoleIDCode", ROLE_SOURCE),
        Direction::In => dcm(&mut out, "RoleIDCode", ROLE_DESTINATION),
    }
    out.push_str("</ActiveParticipant>");

    out.push_str("<AuditSourceIdentification");
    attr(&mut out, "AuditSourceID", OBSERVER);
    out.push('>');
    // 4: application server process.
    out.push_str("<AuditSourceTypeCode csd-code=\"4\"/>");
    out.push_str("</AuditSourceIdentification>");

    if let Some(pid) = &e.patient_id {
        let mut details = Vec::new();
        if let Some(issuer) = &e.issuer {
            details.push(("IssuerOfPatientID", issuer.clone()));
        }
        object(
            &mut out,
            &Object {
                id: pid,
                type_code: "1",
                role: "1",
                id_type: ("2", "RFC-3881", "Patient Number"),
                name: None,
                query: None,
                details,
                accession: None,
            },
        );
    }
    if let Some(study) = &e.study_uid {
        object(
            &mut out,
            &Object {
                id: study,
                type_code: "2",
                role: "3",
                id_type: ("110180", "DCM", "Study Instance UID"),
                name: None,
                query: None,
                details: Vec::new(),
                accession: e.accession.as_deref(),
            },
        );
    }
    if class.query && !e.detail.is_empty() {
        object(
            &mut out,
            &Object {
                id: codes::action_target(&e.action),
                type_code: "2",
                role: "24",
                id_type: ("10", "RFC-3881", "Search Criteria"),
                name: None,
                query: Some(&e.detail),
                details: Vec::new(),
                accession: None,
            },
        );
    }
    // The record's place in the tamper-evident log.
    let mut details = vec![
        ("seq", r.seq.to_string()),
        ("hash", r.hash.clone()),
        ("prev_hash", r.prev_hash.clone()),
        ("action", e.action.clone()),
    ];
    if !e.detail.is_empty() {
        details.push(("detail", e.detail.clone()));
    }
    let id = format!("{AUDIT_LOG_SYSTEM}:{}", r.seq);
    object(
        &mut out,
        &Object {
            id: &id,
            type_code: "2",
            role: "13",
            id_type: ("12", "RFC-3881", "URI"),
            name: Some("Meridian audit log"),
            query: None,
            details,
            accession: None,
        },
    );
    out.push_str("</AuditMessage>");
    out
}

/// An audit message as a standalone XML document (with its declaration).
pub fn document(message: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{message}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::tests::samples;

    fn parse(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}"))
    }

    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
        n.children()
            .find(|c| c.has_tag_name(name))
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\ny\u{1}"), "x&#10;y\u{fffd}");
        assert_eq!(escape("Ünïcode ✓"), "Ünïcode ✓");
        // What the parser reads back is what was escaped.
        let hostile = "]]><!-- \"' &amp; \t\r\n<x/>";
        let xml = format!(
            "<a v=\"{}\" w='{}'>{}</a>",
            escape(hostile),
            escape(hostile),
            escape(hostile)
        );
        let doc = parse(&xml);
        assert_eq!(doc.root_element().attribute("v"), Some(hostile));
        assert_eq!(doc.root_element().attribute("w"), Some(hostile));
        assert_eq!(doc.root_element().text(), Some(hostile));
    }

    #[test]
    fn every_sample_is_well_formed_with_its_event() {
        for r in samples() {
            let xml = to_dicom_audit_message(&r);
            let doc = parse(&xml);
            let root = doc.root_element();
            assert_eq!(root.tag_name().name(), "AuditMessage");
            let ei = child(root, "EventIdentification");
            let class = codes::classify(&r.event);
            assert_eq!(
                child(ei, "EventID").attribute("csd-code"),
                Some(class.event_id.code)
            );
            assert_eq!(ei.attribute("EventActionCode"), Some(class.action));
            assert_eq!(
                ei.attribute("EventDateTime"),
                Some("2024-05-01T12:00:00.250Z")
            );
            // Element order of the schema.
            let order: Vec<&str> = root
                .children()
                .filter(|n| n.is_element())
                .map(|n| n.tag_name().name())
                .collect();
            assert_eq!(order[0], "EventIdentification");
            assert_eq!(&order[1..3], ["ActiveParticipant", "ActiveParticipant"]);
            assert_eq!(order[3], "AuditSourceIdentification");
            assert!(
                order[4..]
                    .iter()
                    .all(|n| *n == "ParticipantObjectIdentification")
            );
            // The chain object ties the message to the log.
            let chain = root
                .children()
                .rfind(|n| n.has_tag_name("ParticipantObjectIdentification"))
                .unwrap();
            assert_eq!(
                chain.attribute("ParticipantObjectID"),
                Some(format!("urn:meridian:audit-log:{}", r.seq).as_str())
            );
            let hash = chain
                .children()
                .find(|n| n.attribute("type") == Some("hash"))
                .unwrap();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(hash.attribute("value").unwrap())
                .unwrap();
            assert_eq!(decoded, r.hash.as_bytes());
        }
    }

    #[test]
    fn patient_and_study_objects() {
        let r = &samples()[1];
        let xml = to_dicom_audit_message(r);
        let doc = parse(&xml);
        let root = doc.root_element();
        let ap = child(root, "ActiveParticipant");
        assert_eq!(ap.attribute("UserID"), Some("anonymous"));
        assert_eq!(ap.attribute("UserIsRequestor"), Some("true"));
        assert_eq!(ap.attribute("NetworkAccessPointID"), Some("127.0.0.1"));
        assert_eq!(ap.attribute("NetworkAccessPointTypeCode"), Some("2"));
        let objs: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("ParticipantObjectIdentification"))
            .collect();
        assert_eq!(objs.len(), 3);
        let (patient, study) = (objs[0], objs[1]);
        assert_eq!(patient.attribute("ParticipantObjectID"), Some("PAT-001"));
        assert_eq!(patient.attribute("ParticipantObjectTypeCode"), Some("1"));
        assert_eq!(
            patient.attribute("ParticipantObjectTypeCodeRole"),
            Some("1")
        );
        assert_eq!(
            child(patient, "ParticipantObjectIDTypeCode").attribute("csd-code"),
            Some("2")
        );
        assert_eq!(
            study.attribute("ParticipantObjectID"),
            Some("1.2.826.0.1.3680043.8.498.1")
        );
        assert_eq!(study.attribute("ParticipantObjectTypeCode"), Some("2"));
        assert_eq!(study.attribute("ParticipantObjectTypeCodeRole"), Some("3"));
        assert_eq!(
            child(study, "ParticipantObjectIDTypeCode").attribute("csd-code"),
            Some("110180")
        );
        let acc = child(child(study, "ParticipantObjectDescription"), "Accession");
        assert_eq!(acc.attribute("Number"), Some("ACC<&>\"'1"));
    }

    #[test]
    fn login_failure_and_query() {
        let s = samples();
        let failed = s.iter().find(|r| r.event.action == "LOGIN-FAILED").unwrap();
        let xml = to_dicom_audit_message(failed);
        let doc = parse(&xml);
        let ei = child(doc.root_element(), "EventIdentification");
        assert_eq!(ei.attribute("EventOutcomeIndicator"), Some("4"));
        assert_eq!(
            child(ei, "EventTypeCode").attribute("csd-code"),
            Some("110122")
        );
        assert_eq!(child(ei, "EventOutcomeDescription").text(), Some("failed"));

        let find = s.iter().find(|r| r.event.action == "C-FIND STUDY").unwrap();
        let xml = to_dicom_audit_message(find);
        let doc = parse(&xml);
        let q = doc
            .root_element()
            .children()
            .find(|n| n.attribute("ParticipantObjectTypeCodeRole") == Some("24"))
            .unwrap();
        assert_eq!(q.attribute("ParticipantObjectID"), Some("STUDY"));
        let text = child(q, "ParticipantObjectQuery").text().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap(),
            find.event.detail.as_bytes()
        );
        let ap = child(doc.root_element(), "ActiveParticipant");
        assert_eq!(ap.attribute("NetworkAccessPointID"), Some("::1"));
    }

    #[test]
    fn document_parses() {
        let r = &samples()[0];
        let d = document(&to_dicom_audit_message(r));
        assert!(d.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AuditMessage>"));
        parse(&d);
    }

    /// Writes the samples as XML documents for schema validation
    /// (`tests/e2e/test_dicom_audit_samples.py`) when `MERIDIAN_DICOM_SAMPLES_DIR` is set.
    #[test]
    fn dicom_samples() {
        let Some(dir) = std::env::var_os("MERIDIAN_DICOM_SAMPLES_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for r in samples() {
            let path = dir.join(format!("auditmessage-{:02}.xml", r.seq));
            std::fs::write(path, document(&to_dicom_audit_message(&r))).unwrap();
        }
    }
}
