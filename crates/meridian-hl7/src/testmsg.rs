//! Realistic test messages, built field by field so positions are right.

/// One segment from (field number, raw value) pairs; `\r` terminated.
pub(crate) fn seg(name: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut out = name.to_owned();
    for i in 1..=last {
        out.push('|');
        if let Some((_, v)) = fields.iter().find(|(n, _)| *n == i) {
            out.push_str(v);
        }
    }
    out.push('\r');
    out
}

/// MSH from field 3 on (MSH-1 and MSH-2 are `|^~\&`).
pub(crate) fn msh(fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(2);
    let mut out = "MSH|^~\\&".to_owned();
    for i in 3..=last {
        out.push('|');
        if let Some((_, v)) = fields.iter().find(|(n, _)| *n == i) {
            out.push_str(v);
        }
    }
    out.push('\r');
    out
}

pub(crate) fn orm_v23() -> String {
    [
        msh(&[
            (3, "RIS"),
            (4, "GENERAL HOSP"),
            (5, "MERIDIAN"),
            (6, "TELE"),
            (7, "20240105083000"),
            (9, "ORM^O01"),
            (10, "MSG00001"),
            (11, "P"),
            (12, "2.3"),
        ]),
        seg(
            "PID",
            &[
                (1, "1"),
                (3, "123456^^^GH^MR"),
                (5, "O'Brien^Mary^Anne^Jr^Dr"),
                (7, "19800214083000"),
                (8, "F"),
                (11, "1 Main St^^Town"),
            ],
        ),
        seg(
            "PV1",
            &[
                (1, "1"),
                (2, "E"),
                (3, "ED^BAY3^1"),
                (7, "1234^Welby^Marcus"),
            ],
        ),
        seg(
            "ORC",
            &[
                (1, "NW"),
                (2, "PL1001"),
                (3, "FL2002"),
                (5, "SC"),
                (7, "^^^20240105083000^^S"),
                (9, "20240105082900"),
                (12, "7777^House^Gregory^^^Dr"),
            ],
        ),
        seg(
            "OBR",
            &[
                (1, "1"),
                (2, "PL1001"),
                (3, "FL2002"),
                (4, "CTHEAD^CT Head w/o contrast^L"),
                (6, "20240105082000"),
                (15, "^^^HEAD"),
                (16, "8888^Quinn^Michaela"),
                (18, "ACC5005"),
                (24, "CT"),
                (27, "^^^^^R"),
                (31, "^Fall, rule out bleed"),
            ],
        ),
        seg("NTE", &[(1, "1"), (3, "patient on anticoagulants")]),
    ]
    .concat()
}

pub(crate) fn omi_v251() -> String {
    [
        msh(&[
            (3, "RIS"),
            (4, "CLINIC^2.16.840.1.113883.3.1^ISO"),
            (5, "MERIDIAN"),
            (6, "TELE"),
            (7, "20240105090000"),
            (9, "OMI^O23^OMI_O23"),
            (10, "OMI778"),
            (11, "P"),
            (12, "2.5.1"),
            (15, "AL"),
            (16, "NE"),
            (18, "UNICODE UTF-8"),
        ]),
        seg(
            "PID",
            &[
                (1, "1"),
                (3, "P-42^^^CLINIC&2.16.840.1.113883.3.1&ISO^MR"),
                (5, "Müller^Jürgen"),
                (7, "19651231"),
                (8, "M"),
            ],
        ),
        seg("PV1", &[(1, "1"), (2, "O"), (3, "RAD^^^CLINIC")]),
        seg(
            "ORC",
            &[
                (1, "NW"),
                (2, "PO-9"),
                (3, "FO-9"),
                (9, "20240105085900"),
                (12, "555^Grey^Meredith"),
            ],
        ),
        seg("TQ1", &[(1, "1"), (9, "A")]),
        seg(
            "OBR",
            &[
                (1, "1"),
                (2, "PO-9"),
                (3, "FO-9"),
                (4, "MRKNEE^MR Knee left^LOCAL"),
                (13, "Knee pain after sports"),
                (24, "MR"),
                (27, "^^^^^R"),
                (46, "KNEE"),
            ],
        ),
        seg(
            "IPC",
            &[
                (1, "ACC-OMI-1"),
                (2, "PO-9"),
                (3, "1.2.826.0.1.3680043.2.1125.1.1"),
                (4, "1.2.826.0.1.3680043.2.1125.1.1.1"),
                (5, "MR"),
                (9, "KNEE^Knee"),
            ],
        ),
    ]
    .concat()
}

pub(crate) fn adt_a08() -> String {
    [
        msh(&[
            (3, "ADT"),
            (4, "GH"),
            (5, "MERIDIAN"),
            (6, "TELE"),
            (7, "20240106101000"),
            (9, "ADT^A08^ADT_A01"),
            (10, "ADT1"),
            (11, "P"),
            (12, "2.4"),
        ]),
        seg("EVN", &[(1, "A08"), (2, "20240106101000")]),
        seg(
            "PID",
            &[
                (1, "1"),
                (3, "123456^^^GH^MR"),
                (5, "Smith^John^Q^III^Mr"),
                (7, "19721103"),
                (8, "M"),
            ],
        ),
        seg("PV1", &[(1, "1"), (2, "I"), (3, "W2^201^A")]),
    ]
    .concat()
}

pub(crate) fn cancel() -> String {
    [
        msh(&[
            (3, "RIS"),
            (4, "GENERAL HOSP"),
            (5, "MERIDIAN"),
            (6, "TELE"),
            (7, "20240105093000"),
            (9, "ORM^O01"),
            (10, "MSG00002"),
            (11, "P"),
            (12, "2.3"),
        ]),
        seg(
            "PID",
            &[(1, "1"), (3, "123456^^^GH^MR"), (5, "O'Brien^Mary")],
        ),
        seg("ORC", &[(1, "CA"), (2, "PL1001"), (3, "FL2002")]),
    ]
    .concat()
}

#[test]
fn builders() {
    assert_eq!(seg("NTE", &[(1, "1"), (3, "x")]), "NTE|1||x\r");
    assert_eq!(
        msh(&[(3, "A"), (5, "B"), (9, "ORM^O01")]),
        "MSH|^~\\&|A||B||||ORM^O01\r"
    );
}
