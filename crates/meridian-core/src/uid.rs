//! DICOM UID validation (PS3.5 §9.1).
//!
//! A UID is at most 64 characters of digits and dots, made of components that
//! are non-empty and have no leading zero (except the single digit `0`).
//! Only validated UIDs may ever become part of a storage key or a path.

use thiserror::Error;

/// Why a UID was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UidError {
    #[error("UID is empty")]
    Empty,
    #[error("UID is longer than 64 characters ({0})")]
    TooLong(usize),
    #[error("UID contains a character other than digits and dots")]
    BadChar,
    #[error("UID has an empty component")]
    EmptyComponent,
    #[error("UID component has a leading zero")]
    LeadingZero,
}

/// Validates a UID, after trimming the trailing NUL/space padding DICOM allows.
/// Returns the trimmed UID.
pub fn validate_uid(raw: &str) -> Result<&str, UidError> {
    let uid = raw.trim_end_matches(['\0', ' ']);
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > 64 {
        return Err(UidError::TooLong(uid.len()));
    }
    for comp in uid.split('.') {
        if comp.is_empty() {
            return Err(UidError::EmptyComponent);
        }
        if !comp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UidError::BadChar);
        }
        if comp.len() > 1 && comp.starts_with('0') {
            return Err(UidError::LeadingZero);
        }
    }
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_real_uids() {
        assert_eq!(
            validate_uid("1.2.840.10008.1.2.1"),
            Ok("1.2.840.10008.1.2.1")
        );
        assert_eq!(validate_uid("1.2.3.0\0"), Ok("1.2.3.0"));
        assert_eq!(validate_uid("2.25.0"), Ok("2.25.0"));
    }

    #[test]
    fn rejects_bad_uids() {
        assert_eq!(validate_uid(""), Err(UidError::Empty));
        assert_eq!(validate_uid("1.02.3"), Err(UidError::LeadingZero));
        assert_eq!(validate_uid("1..3"), Err(UidError::EmptyComponent));
        assert_eq!(validate_uid(".1.3"), Err(UidError::EmptyComponent));
        assert_eq!(validate_uid("1.2.a"), Err(UidError::BadChar));
        assert_eq!(
            validate_uid("../../etc/passwd"),
            Err(UidError::EmptyComponent)
        );
        assert_eq!(validate_uid("1/2"), Err(UidError::BadChar));
        assert!(matches!(
            validate_uid(&"1.".repeat(40)),
            Err(UidError::TooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn valid_uids_only_contain_digits_and_dots(s in "\\PC{0,80}") {
            if let Ok(uid) = validate_uid(&s) {
                prop_assert!(uid.len() <= 64);
                prop_assert!(uid.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
                prop_assert!(!uid.contains(".."));
                prop_assert!(!uid.starts_with('.') && !uid.ends_with('.'));
            }
        }

        #[test]
        fn generated_uids_validate(comps in proptest::collection::vec(0u64..1_000_000, 1..8)) {
            let uid = comps.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(".");
            if uid.len() <= 64 {
                prop_assert_eq!(validate_uid(&uid), Ok(uid.as_str()));
            }
        }
    }
}
