//! Random input never panics: parse, interpret, ack and nak_unparsed.

use proptest::prelude::*;

use crate::ack::{ack, nak_unparsed};
use crate::er7::{Limits, parse};
use crate::inbound::interpret;
use crate::testmsg::{adt_a08, cancel, omi_v251, orm_v23};

fn small_limits() -> Limits {
    Limits {
        max_message_bytes: 4096,
        max_segments: 40,
        max_field_bytes: 512,
    }
}

fn exercise(raw: &[u8]) {
    for limits in [Limits::default(), small_limits()] {
        match parse(raw, &limits) {
            Ok(m) => {
                // every accessor on every segment, including odd indexes
                for s in m.all_segments() {
                    for f in 0..=s.field_count() + 1 {
                        for r in 0..=s.repetitions(f) + 1 {
                            for c in 0..4 {
                                let _ = s.get_rep(f, r, c, 1);
                                let _ = s.get_rep(f, r, c, 2);
                            }
                        }
                    }
                }
                let outcome = interpret(&m);
                let a = ack(m.header(), outcome.as_ref().map(|_| ()));
                let back = parse(&a, &Limits::default());
                prop_assert_ok(back.is_ok());
            }
            Err(e) => {
                let a = nak_unparsed(raw, &e);
                prop_assert_ok(parse(&a, &Limits::default()).is_ok());
            }
        }
    }
}

fn prop_assert_ok(ok: bool) {
    assert!(ok, "an acknowledgement we built does not parse");
}

/// Pieces that make random input look like HL7.
fn hl7ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"MSH|^~\\&|".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"|".to_vec()),
        Just(b"^".to_vec()),
        Just(b"~".to_vec()),
        Just(b"&".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"\\X".to_vec()),
        Just(b"\\F\\".to_vec()),
        Just(b"PID|".to_vec()),
        Just(b"ORC|NW|".to_vec()),
        Just(b"OBR|".to_vec()),
        Just(b"IPC|".to_vec()),
        Just(b"TQ1|".to_vec()),
        Just(b"ORM^O01".to_vec()),
        Just(b"OMI^O23".to_vec()),
        Just(b"8859/1".to_vec()),
        Just(b"UNICODE UTF-8".to_vec()),
        Just(b"2.5.1".to_vec()),
        Just(vec![0xFC]),
        Just(vec![0xC3, 0xBC]),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        Just(orm_v23()),
        Just(omi_v251()),
        Just(adt_a08()),
        Just(cancel()),
    ];
    (
        base,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..12),
    )
        .prop_map(|(m, edits)| {
            let mut b = m.into_bytes();
            for (at, byte, op) in edits {
                if b.is_empty() {
                    break;
                }
                let i = at.index(b.len());
                match op {
                    0 => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ => {
                        b.remove(i);
                    }
                }
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes(raw in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&raw);
    }

    #[test]
    fn random_bytes_after_msh(raw in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut m = b"MSH|^~\\&|".to_vec();
        m.extend_from_slice(&raw);
        exercise(&m);
    }

    #[test]
    fn hl7_like(raw in hl7ish()) {
        exercise(&raw);
    }

    #[test]
    fn mutated_real_messages(raw in mutated()) {
        exercise(&raw);
    }
}
