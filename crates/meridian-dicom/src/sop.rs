//! SOP classes and transfer syntaxes Meridian accepts.

use crate::storage_classes::STORAGE_SOP_CLASSES;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// Whether a SOP class UID is a standard storage SOP class.
pub fn is_storage_sop_class(uid: &str) -> bool {
    let uid = uid.trim_end_matches(['\0', ' ']);
    STORAGE_SOP_CLASSES.iter().any(|(u, _)| *u == uid)
}

/// Every standard storage SOP class UID (retired ones included: old modalities send them).
pub fn storage_sop_classes() -> Vec<&'static str> {
    STORAGE_SOP_CLASSES.iter().map(|(u, _)| *u).collect()
}

/// Transfer syntaxes accepted for storage (kept as received): every one the
/// registry knows, whether or not a codec is built in, since the bytes are
/// archived unchanged.
pub fn storage_transfer_syntaxes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = TransferSyntaxRegistry.iter().map(|ts| ts.uid()).collect();
    // Preferred order: explicit LE first, then implicit, then the rest.
    v.sort_by_key(|uid| match *uid {
        "1.2.840.10008.1.2.1" => 0,
        "1.2.840.10008.1.2" => 1,
        _ => 2,
    });
    v
}

/// Uncompressed transfer syntaxes, for command-only services and retrieval.
pub const UNCOMPRESSED: &[&str] = &["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes() {
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.3.1"));
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.88.11"));
        assert!(!is_storage_sop_class("1.2.840.10008.1.1"));
        assert!(!is_storage_sop_class("1.2.840.10008.5.1.4.1.2.2.1"));
        assert!(storage_sop_classes().len() > 100);
        assert!(storage_transfer_syntaxes().contains(&"1.2.840.10008.1.2.4.80"));
    }
}
