//! How a DICOMweb access is named in the audit trail (the record itself is
//! written by the guard in `auth`).

use axum::http::Method;

pub(crate) fn kind(method: &Method, path: &str) -> &'static str {
    if method == Method::POST {
        return "STOW-RS";
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if path.contains("/rendered") || path.contains("/thumbnail") {
        "WADO-RS rendered"
    } else if last == "metadata" {
        "WADO-RS metadata"
    } else if path.contains("/frames/") {
        "WADO-RS frames"
    } else if path.contains("/bulkdata/") {
        "WADO-RS bulkdata"
    } else if matches!(last, "studies" | "series" | "instances") {
        "QIDO-RS"
    } else {
        "WADO-RS retrieve"
    }
}

/// The study UID in a DICOMweb path, if any and valid.
pub(crate) fn study_of(path: &str) -> Option<String> {
    let mut it = path.split('/');
    it.find(|s| *s == "studies")?;
    let uid = it.next()?;
    meridian_core::validate_uid(uid).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_studies() {
        assert_eq!(kind(&Method::GET, "/dicom-web/studies"), "QIDO-RS");
        assert_eq!(
            kind(&Method::GET, "/dicom-web/studies/1.2/series/1.3/metadata"),
            "WADO-RS metadata"
        );
        assert_eq!(kind(&Method::POST, "/dicom-web/studies"), "STOW-RS");
        assert_eq!(
            kind(
                &Method::GET,
                "/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/1"
            ),
            "WADO-RS frames"
        );
        assert_eq!(
            study_of("/dicom-web/studies/1.2.3/series"),
            Some("1.2.3".into())
        );
        assert_eq!(study_of("/dicom-web/studies/..%2F/series"), None);
        assert_eq!(study_of("/dicom-web/series"), None);
    }
}
