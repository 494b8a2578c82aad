//! What an inbound message means: new/updated/cancelled orders and patient updates.
//!
//! Supported messages (anything else is rejected, AR):
//!
//! | MSH-9 | MSH-12 | result |
//! |---|---|---|
//! | `ORM^O01` | 2.3 – 2.5.x | one [`Inbound`] per order group (ORC-1 `NW`, `XO`, `CA`/`OC`/`DC`) |
//! | `OMI^O23` | 2.5 – 2.9 | the same |
//! | `ADT^A08`, `ADT^A31` | 2.3 – 2.9 | one [`Inbound::PatientUpdate`] |
//!
//! A known type with another event (`ADT^A99`, `ORM^O02`) gives 201, an unknown type 200, a
//! version outside the range or unreadable 203, MSH-11 other than `P`, `D`, `T` gives 202, an
//! empty MSH-10 gives 101; all of them AR.
//!
//! **Order groups.** Every ORC starts an order group; the first OBR, TQ1 and IPC after it belong
//! to it (further OBR/IPC of the same group, NTE, OBX, DG1, ... are ignored). All groups are
//! returned, in message order, so a two-procedure order is never half-read. Patient data comes
//! from the first PID and PV1 and is copied into every group.
//!
//! **Field rules** (values are trimmed; empty and the HL7 null `""` read as `None`):
//! - accession: OMI: IPC-1.1; otherwise, and for ORM: OBR-18.1, else ORC-3.1, else OBR-3.1;
//! - placer_order: ORC-2.1 else OBR-2.1; filler_order: ORC-3.1 else OBR-3.1;
//! - priority (raw code, normally S/A/R/P/T): v2.5+: TQ1-9.1 when present; else ORC-7.6, else
//!   OBR-27.6;
//! - modality: OMI: IPC-5.1, else OBR-24.1 (the diagnostic service section, e.g. `CT`; raw);
//! - body_part: OBR-15.4.1 (specimen source: body site), else OBR-46.1 (first repetition); raw;
//! - reason_for_exam: OBR-31.2, else OBR-31.1, else OBR-13 (13.2 then 13.1 from v2.7, where it
//!   is coded; 13.1 before);
//! - ordering physician: ORC-12 if it has an ID or a family name, else OBR-16: `Family^Given`
//!   (XCN-2.1, XCN-3) and the ID (XCN-1);
//! - order_datetime: ORC-9.1 else OBR-6.1 (raw TS); study_instance_uid: IPC-3.1 (raw);
//! - patient_name: PID-5 (first repetition) as DICOM PN `Family^Given^Middle^Prefix^Suffix`
//!   (XPN-1.1, 2, 3, 5, 4), trailing empty components dropped; `^ = \` and control characters
//!   inside a component become spaces;
//! - birth_date: the first 8 characters of PID-7 when they are digits, else `None`.
//!
//! **Required** (AE when missing): a PID with PID-3.1 (101; no PID: 100), at least one ORC (100),
//! ORC-1 (101; an unknown code: 103), an OBR in each `NW`/`XO` group (100), and an accession or
//! placer order number in each group (101).

use crate::er7::{Message, Segment};
use crate::error::{Hl7Error, Location, codes};

/// An interpreted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// ORC-1 `NW`.
    NewOrder(OrderFields),
    /// ORC-1 `XO`.
    UpdateOrder(OrderFields),
    /// ORC-1 `CA`, `OC` or `DC`.
    CancelOrder(OrderFields),
    /// ADT^A08 / ADT^A31.
    PatientUpdate(PatientFields),
}

/// One order group, flattened. Plain data, no interpretation beyond the field rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderFields {
    /// ORC-1 as received (`NW`, `XO`, `CA`, `OC`, `DC`).
    pub order_control: String,
    /// MSH-4.1
    pub sending_facility: Option<String>,
    pub placer_order: Option<String>,
    pub filler_order: Option<String>,
    pub accession: Option<String>,
    /// PID-3.1 (first repetition). Never empty.
    pub patient_id: String,
    /// PID-3.4.1, else PID-3.4.2.
    pub issuer: Option<String>,
    /// DICOM PN.
    pub patient_name: Option<String>,
    /// YYYYMMDD
    pub birth_date: Option<String>,
    /// PID-8.1
    pub sex: Option<String>,
    /// PV1-2.1
    pub patient_class: Option<String>,
    /// PV1-3.1 (point of care, e.g. `ED`)
    pub patient_location: Option<String>,
    /// OBR-4.1
    pub procedure_code: Option<String>,
    /// OBR-4.2
    pub procedure_text: Option<String>,
    /// OBR-4.3
    pub procedure_coding_system: Option<String>,
    pub modality: Option<String>,
    pub body_part: Option<String>,
    pub priority: Option<String>,
    pub reason_for_exam: Option<String>,
    /// DICOM PN `Family^Given`.
    pub ordering_physician: Option<String>,
    pub ordering_physician_id: Option<String>,
    pub order_datetime: Option<String>,
    pub study_instance_uid: Option<String>,
}

/// Patient demographics from an ADT message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatientFields {
    /// PID-3.1 (first repetition). Never empty.
    pub patient_id: String,
    pub issuer: Option<String>,
    /// DICOM PN.
    pub name: Option<String>,
    pub birth_date: Option<String>,
    pub sex: Option<String>,
    /// MSH-4.1
    pub sending_facility: Option<String>,
}

type Version = (u32, u32);

fn parse_version(v: &str) -> Option<Version> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    for p in parts {
        p.parse::<u32>().ok()?;
    }
    Some((major, minor))
}

fn opt(s: String) -> Option<String> {
    let t = s.trim();
    if t.is_empty() || t == "\"\"" {
        None
    } else if t.len() == s.len() {
        Some(s)
    } else {
        Some(t.to_owned())
    }
}

fn first_some<const N: usize>(candidates: [&dyn Fn() -> Option<String>; N]) -> Option<String> {
    candidates.iter().find_map(|f| f())
}

/// Interprets a parsed message. See the module documentation for the rules.
pub fn interpret(msg: &Message) -> Result<Vec<Inbound>, Hl7Error> {
    let h = msg.header();
    if h.control_id.trim().is_empty() {
        return Err(Hl7Error::reject(
            codes::REQUIRED_FIELD_MISSING,
            "MSH-10 message control ID is empty",
        )
        .at(Location::new("MSH", 1, 10, 0)));
    }
    if !matches!(h.processing_id.as_str(), "P" | "D" | "T") {
        return Err(Hl7Error::reject(
            codes::UNSUPPORTED_PROCESSING_ID,
            "MSH-11 processing ID must be P, D or T",
        )
        .at(Location::new("MSH", 1, 11, 1)));
    }
    let version = parse_version(&h.version);
    let bad_version = || {
        Hl7Error::reject(
            codes::UNSUPPORTED_VERSION,
            format!(
                "version {:?} is not supported for {}^{}",
                clip(&h.version),
                clip(&h.message_type),
                clip(&h.trigger_event)
            ),
        )
        .at(Location::new("MSH", 1, 12, 1))
    };
    let in_range = |lo: Version, hi: Version| version.is_some_and(|v| v >= lo && v <= hi);
    let ty = h.message_type.to_ascii_uppercase();
    let ev = h.trigger_event.to_ascii_uppercase();
    match (ty.as_str(), ev.as_str()) {
        ("ORM", "O01") => {
            if !in_range((2, 3), (2, 5)) {
                return Err(bad_version());
            }
            orders(msg, false, version.unwrap_or_default())
        }
        ("OMI", "O23") => {
            if !in_range((2, 5), (2, 9)) {
                return Err(bad_version());
            }
            orders(msg, true, version.unwrap_or_default())
        }
        ("ADT", "A08" | "A31") => {
            if !in_range((2, 3), (2, 9)) {
                return Err(bad_version());
            }
            patient(msg).map(|p| vec![Inbound::PatientUpdate(p)])
        }
        ("ORM" | "OMI" | "ADT", _) => Err(Hl7Error::reject(
            codes::UNSUPPORTED_EVENT,
            format!("event {:?} is not supported for {ty}", clip(&ev)),
        )
        .at(Location::new("MSH", 1, 9, 2))),
        _ => Err(Hl7Error::reject(
            codes::UNSUPPORTED_MESSAGE_TYPE,
            format!("message type {:?} is not supported", clip(&ty)),
        )
        .at(Location::new("MSH", 1, 9, 1))),
    }
}

/// Sender-controlled text echoed in an error: bounded, printable.
fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(20)
        .collect::<String>()
}

/// DICOM PN from components, trailing empty ones dropped.
fn pn(parts: &[String]) -> Option<String> {
    let clean: Vec<String> = parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if matches!(c, '^' | '=' | '\\') || c.is_control() {
                        ' '
                    } else {
                        c
                    }
                })
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .collect();
    let len = clean.iter().rposition(|p| !p.is_empty())? + 1;
    let joined = clean[..len].join("^");
    if joined == "\"\"" { None } else { Some(joined) }
}

struct Patient {
    id: String,
    issuer: Option<String>,
    name: Option<String>,
    birth_date: Option<String>,
    sex: Option<String>,
}

fn read_patient(msg: &Message) -> Result<Patient, Hl7Error> {
    let Some(pid) = msg.segment("PID", 1) else {
        return Err(
            Hl7Error::error(codes::SEGMENT_SEQUENCE, "PID segment is missing")
                .at(Location::new("PID", 1, 0, 0)),
        );
    };
    let Some(id) = opt(pid.get(3, 1, 1)) else {
        return Err(Hl7Error::error(
            codes::REQUIRED_FIELD_MISSING,
            "PID-3.1 patient identifier is empty",
        )
        .at(Location::new("PID", 1, 3, 1)));
    };
    let issuer = opt(pid.get(3, 4, 1)).or_else(|| opt(pid.get(3, 4, 2)));
    let name = pn(&[
        pid.get(5, 1, 1),
        pid.get(5, 2, 1),
        pid.get(5, 3, 1),
        pid.get(5, 5, 1),
        pid.get(5, 4, 1),
    ]);
    let dob = pid.get(7, 1, 1);
    let dob = dob.trim();
    let birth_date = match dob.get(..8) {
        Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => Some(d.to_owned()),
        _ => {
            if !dob.is_empty() && dob != "\"\"" {
                tracing::debug!("PID-7 is not a full YYYYMMDD date; birth date ignored");
            }
            None
        }
    };
    Ok(Patient {
        id,
        issuer,
        name,
        birth_date,
        sex: opt(pid.get(8, 1, 1)),
    })
}

fn patient(msg: &Message) -> Result<PatientFields, Hl7Error> {
    let p = read_patient(msg)?;
    Ok(PatientFields {
        patient_id: p.id,
        issuer: p.issuer,
        name: p.name,
        birth_date: p.birth_date,
        sex: p.sex,
        sending_facility: opt(msg.header().sending_facility.namespace.clone()),
    })
}

struct Group<'a> {
    seq: u32,
    orc: Segment<'a>,
    obr: Option<Segment<'a>>,
    tq1: Option<Segment<'a>>,
    ipc: Option<Segment<'a>>,
}

fn orders(msg: &Message, omi: bool, version: Version) -> Result<Vec<Inbound>, Hl7Error> {
    let patient = read_patient(msg)?;
    let pv1 = msg.segment("PV1", 1);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut orc_seq = 0u32;
    for seg in msg.all_segments() {
        match seg.name() {
            "ORC" => {
                orc_seq += 1;
                groups.push(Group {
                    seq: orc_seq,
                    orc: seg,
                    obr: None,
                    tq1: None,
                    ipc: None,
                });
            }
            name @ ("OBR" | "TQ1" | "IPC") => {
                let Some(g) = groups.last_mut() else {
                    return Err(Hl7Error::error(
                        codes::SEGMENT_SEQUENCE,
                        format!("{name} segment before the first ORC"),
                    )
                    .at(Location::new(name, 1, 0, 0)));
                };
                let slot = match name {
                    "OBR" => &mut g.obr,
                    "TQ1" => &mut g.tq1,
                    _ => &mut g.ipc,
                };
                slot.get_or_insert(seg);
            }
            _ => {}
        }
    }
    if groups.is_empty() {
        return Err(Hl7Error::error(
            codes::SEGMENT_SEQUENCE,
            "no ORC segment (order group) found",
        )
        .at(Location::new("ORC", 1, 0, 0)));
    }
    let facility = opt(msg.header().sending_facility.namespace.clone());
    let pv1_get = |f: usize| pv1.and_then(|s| opt(s.get(f, 1, 1)));
    let mut out = Vec::with_capacity(groups.len());
    for g in &groups {
        let orc = g.orc;
        let control = orc.get(1, 1, 1).trim().to_ascii_uppercase();
        let loc = |f: u32, c: u32| Location::new("ORC", g.seq, f, c);
        if control.is_empty() {
            return Err(Hl7Error::error(
                codes::REQUIRED_FIELD_MISSING,
                "ORC-1 order control is empty",
            )
            .at(loc(1, 0)));
        }
        let kind: fn(OrderFields) -> Inbound = match control.as_str() {
            "NW" => Inbound::NewOrder,
            "XO" => Inbound::UpdateOrder,
            "CA" | "OC" | "DC" => Inbound::CancelOrder,
            _ => {
                return Err(Hl7Error::error(
                    codes::TABLE_VALUE_NOT_FOUND,
                    format!("ORC-1 order control {:?} is not supported", clip(&control)),
                )
                .at(loc(1, 0)));
            }
        };
        let obr_get = |f: usize, c: usize, s: usize| g.obr.and_then(|o| opt(o.get(f, c, s)));
        let orc_get = |f: usize, c: usize, s: usize| opt(orc.get(f, c, s));
        let ipc_get = |f: usize, c: usize| {
            if omi {
                g.ipc.and_then(|i| opt(i.get(f, c, 1)))
            } else {
                None
            }
        };
        if g.obr.is_none() && matches!(control.as_str(), "NW" | "XO") {
            return Err(Hl7Error::error(
                codes::SEGMENT_SEQUENCE,
                format!("order group {} has no OBR segment", g.seq),
            )
            .at(Location::new("OBR", g.seq, 0, 0)));
        }
        let placer_order = orc_get(2, 1, 1).or_else(|| obr_get(2, 1, 1));
        let filler_order = orc_get(3, 1, 1).or_else(|| obr_get(3, 1, 1));
        let accession = first_some([
            &|| ipc_get(1, 1),
            &|| obr_get(18, 1, 1),
            &|| orc_get(3, 1, 1),
            &|| obr_get(3, 1, 1),
        ]);
        if accession.is_none() && placer_order.is_none() {
            return Err(Hl7Error::error(
                codes::REQUIRED_FIELD_MISSING,
                "neither an accession number (IPC-1, OBR-18, ORC-3, OBR-3) nor a placer order \
                 number (ORC-2, OBR-2) is present",
            )
            .at(loc(2, 1)));
        }
        let tq1_priority = || {
            if version >= (2, 5) {
                g.tq1.and_then(|t| opt(t.get(9, 1, 1)))
            } else {
                None
            }
        };
        let priority = first_some([&tq1_priority, &|| orc_get(7, 6, 1), &|| obr_get(27, 6, 1)]);
        let reason = first_some([&|| obr_get(31, 2, 1), &|| obr_get(31, 1, 1), &|| {
            if version >= (2, 7) {
                obr_get(13, 2, 1).or_else(|| obr_get(13, 1, 1))
            } else {
                obr_get(13, 1, 1)
            }
        }]);
        let (physician, physician_id) = ordering_physician(orc, g.obr);
        let fields = OrderFields {
            order_control: control.clone(),
            sending_facility: facility.clone(),
            placer_order,
            filler_order,
            accession,
            patient_id: patient.id.clone(),
            issuer: patient.issuer.clone(),
            patient_name: patient.name.clone(),
            birth_date: patient.birth_date.clone(),
            sex: patient.sex.clone(),
            patient_class: pv1_get(2),
            patient_location: pv1_get(3),
            procedure_code: obr_get(4, 1, 1),
            procedure_text: obr_get(4, 2, 1),
            procedure_coding_system: obr_get(4, 3, 1),
            modality: ipc_get(5, 1).or_else(|| obr_get(24, 1, 1)),
            body_part: obr_get(15, 4, 1).or_else(|| obr_get(46, 1, 1)),
            priority,
            reason_for_exam: reason,
            ordering_physician: physician,
            ordering_physician_id: physician_id,
            order_datetime: orc_get(9, 1, 1).or_else(|| obr_get(6, 1, 1)),
            study_instance_uid: ipc_get(3, 1),
        };
        out.push(kind(fields));
    }
    Ok(out)
}

fn ordering_physician(
    orc: Segment<'_>,
    obr: Option<Segment<'_>>,
) -> (Option<String>, Option<String>) {
    let read = |s: Segment<'_>, f: usize| {
        let id = opt(s.get(f, 1, 1));
        let name = pn(&[s.get(f, 2, 1), s.get(f, 3, 1)]);
        (name, id)
    };
    let from_orc = read(orc, 12);
    if from_orc.0.is_some() || from_orc.1.is_some() {
        return from_orc;
    }
    obr.map(|o| read(o, 16)).unwrap_or((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::er7::{Limits, parse};

    use crate::testmsg::{adt_a08, cancel, omi_v251, orm_v23};

    fn run(s: &str) -> Result<Vec<Inbound>, Hl7Error> {
        interpret(&parse(s.as_bytes(), &Limits::default()).unwrap())
    }

    fn one_order(s: &str) -> (String, OrderFields) {
        let v = run(s).unwrap();
        assert_eq!(v.len(), 1);
        match v.into_iter().next().unwrap() {
            Inbound::NewOrder(o) => ("new".into(), o),
            Inbound::UpdateOrder(o) => ("update".into(), o),
            Inbound::CancelOrder(o) => ("cancel".into(), o),
            Inbound::PatientUpdate(_) => panic!("patient update"),
        }
    }

    #[test]
    fn interprets_orm_v23() {
        let (kind, o) = one_order(&orm_v23());
        assert_eq!(kind, "new");
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            o,
            OrderFields {
                order_control: "NW".into(),
                sending_facility: s("GENERAL HOSP"),
                placer_order: s("PL1001"),
                filler_order: s("FL2002"),
                accession: s("ACC5005"),
                patient_id: "123456".into(),
                issuer: s("GH"),
                patient_name: s("O'Brien^Mary^Anne^Dr^Jr"),
                birth_date: s("19800214"),
                sex: s("F"),
                patient_class: s("E"),
                patient_location: s("ED"),
                procedure_code: s("CTHEAD"),
                procedure_text: s("CT Head w/o contrast"),
                procedure_coding_system: s("L"),
                modality: s("CT"),
                body_part: s("HEAD"),
                priority: s("S"),
                reason_for_exam: s("Fall, rule out bleed"),
                ordering_physician: s("House^Gregory"),
                ordering_physician_id: s("7777"),
                order_datetime: s("20240105082900"),
                study_instance_uid: None,
            }
        );
    }

    #[test]
    fn orm_priority_from_obr_and_accession_fallback() {
        let m = orm_v23()
            .replace("^^^20240105083000^^S", "")
            .replace("ACC5005", "");
        let (_, o) = one_order(&m);
        assert_eq!(o.priority.as_deref(), Some("R"));
        assert_eq!(o.accession.as_deref(), Some("FL2002"));
    }

    #[test]
    fn interprets_omi_v251() {
        let (kind, o) = one_order(&omi_v251());
        assert_eq!(kind, "new");
        assert_eq!(o.accession.as_deref(), Some("ACC-OMI-1"));
        assert_eq!(
            o.study_instance_uid.as_deref(),
            Some("1.2.826.0.1.3680043.2.1125.1.1")
        );
        assert_eq!(o.modality.as_deref(), Some("MR"));
        assert_eq!(o.priority.as_deref(), Some("A"));
        assert_eq!(o.patient_id, "P-42");
        assert_eq!(o.issuer.as_deref(), Some("CLINIC"));
        assert_eq!(o.patient_name.as_deref(), Some("Müller^Jürgen"));
        assert_eq!(o.reason_for_exam.as_deref(), Some("Knee pain after sports"));
        assert_eq!(o.body_part.as_deref(), Some("KNEE"));
        assert_eq!(o.ordering_physician.as_deref(), Some("Grey^Meredith"));
        assert_eq!(o.patient_class.as_deref(), Some("O"));
        assert_eq!(o.patient_location.as_deref(), Some("RAD"));
        assert_eq!(o.order_datetime.as_deref(), Some("20240105085900"));
    }

    #[test]
    fn interprets_adt_a08() {
        let v = run(&adt_a08()).unwrap();
        assert_eq!(
            v,
            vec![Inbound::PatientUpdate(PatientFields {
                patient_id: "123456".into(),
                issuer: Some("GH".into()),
                name: Some("Smith^John^Q^Mr^III".into()),
                birth_date: Some("19721103".into()),
                sex: Some("M".into()),
                sending_facility: Some("GH".into()),
            })]
        );
        let a31 = adt_a08().replace("ADT^A08^ADT_A01", "ADT^A31^ADT_A05");
        assert!(matches!(run(&a31).unwrap()[0], Inbound::PatientUpdate(_)));
    }

    #[test]
    fn interprets_cancel() {
        let (kind, o) = one_order(&cancel());
        assert_eq!(kind, "cancel");
        assert_eq!(o.placer_order.as_deref(), Some("PL1001"));
        assert_eq!(o.accession.as_deref(), Some("FL2002"));
        for c in ["OC", "DC"] {
            let (kind, _) = one_order(&cancel().replace("ORC|CA", &format!("ORC|{c}")));
            assert_eq!(kind, "cancel");
        }
        let (kind, _) = one_order(&orm_v23().replace("ORC|NW", "ORC|XO"));
        assert_eq!(kind, "update");
    }

    #[test]
    fn several_groups() {
        let two = format!(
            "{}ORC|NW|PL1002|FL2003\r{}",
            orm_v23(),
            crate::testmsg::seg(
                "OBR",
                &[
                    (1, "2"),
                    (2, "PL1002"),
                    (3, "FL2003"),
                    (4, "CTCSP^CT C-spine"),
                    (18, "ACC5006")
                ]
            )
        );
        let v = run(&two).unwrap();
        assert_eq!(v.len(), 2);
        let Inbound::NewOrder(second) = &v[1] else {
            panic!()
        };
        assert_eq!(second.accession.as_deref(), Some("ACC5006"));
        assert_eq!(second.patient_id, "123456");
        assert_eq!(second.procedure_code.as_deref(), Some("CTCSP"));
    }

    #[test]
    fn errors() {
        let code = |s: &str| {
            let e = run(s).unwrap_err();
            (e.code, e.reject, e.location.map(|l| l.to_string()))
        };
        let loc = |s: &str| Some(s.to_owned());
        assert_eq!(
            code(&orm_v23().replace("123456^^^GH^MR", "^^^GH^MR")),
            (101, false, loc("PID-3.1"))
        );
        assert_eq!(
            code(&omi_v251().replace("OMI^O23^OMI_O23", "ORU^R01^ORU_R01")),
            (200, true, loc("MSH-9.1"))
        );
        assert_eq!(
            code(&adt_a08().replace("ADT^A08", "ADT^A99")),
            (201, true, loc("MSH-9.2"))
        );
        assert_eq!(
            code(&orm_v23().replace("|P|2.3", "|X|2.3")),
            (202, true, loc("MSH-11.1"))
        );
        assert_eq!(
            code(&orm_v23().replace("|P|2.3", "|P|2.2")),
            (203, true, loc("MSH-12.1"))
        );
        assert_eq!(
            code(&omi_v251().replace("|P|2.5.1", "|P|2.4")),
            (203, true, loc("MSH-12.1"))
        );
        assert_eq!(
            code(&orm_v23().replace("|MSG00001|", "||")),
            (101, true, loc("MSH-10"))
        );
        assert_eq!(
            code(&orm_v23().replace("ORC|NW", "ORC|SC")),
            (103, false, loc("ORC-1"))
        );
        assert_eq!(
            code(&orm_v23().replace("ORC|NW", "ORC|")),
            (101, false, loc("ORC-1"))
        );
        assert_eq!(
            code(&cancel().replace("ORC|CA|PL1001|FL2002", "ORC|CA")),
            (101, false, loc("ORC-2.1"))
        );
        let no_orc: String = orm_v23()
            .split('\r')
            .filter(|l| !l.starts_with("ORC") && !l.starts_with("OBR"))
            .collect::<Vec<_>>()
            .join("\r");
        assert_eq!(code(&no_orc), (100, false, loc("ORC")));
        let no_pid: String = orm_v23()
            .split('\r')
            .filter(|l| !l.starts_with("PID"))
            .collect::<Vec<_>>()
            .join("\r");
        assert_eq!(code(&no_pid), (100, false, loc("PID")));
        let no_obr: String = orm_v23()
            .split('\r')
            .filter(|l| !l.starts_with("OBR"))
            .collect::<Vec<_>>()
            .join("\r");
        assert_eq!(code(&no_obr), (100, false, loc("OBR")));
    }

    #[test]
    fn null_and_odd_values() {
        let m = orm_v23()
            .replace("19800214083000", "1980")
            .replace("|F|", "|\"\"|");
        let (_, o) = one_order(&m);
        assert_eq!(o.birth_date, None);
        assert_eq!(o.sex, None);
        let m = orm_v23().replace("O'Brien^Mary^Anne^Jr^Dr", "A\\S\\B=C^^");
        let (_, o) = one_order(&m);
        assert_eq!(o.patient_name.as_deref(), Some("A B C"));
    }
}
