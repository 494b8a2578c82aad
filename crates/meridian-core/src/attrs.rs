//! The catalogue of attributes Meridian keeps in its index, shared by C-FIND
//! and QIDO-RS so both match identically.

use serde::Serialize;

/// Query/Retrieve level (PS3.4 C.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    /// Parses a QueryRetrieveLevel (0008,0052) value.
    pub fn from_dicom(s: &str) -> Option<Level> {
        match s.trim_end_matches(['\0', ' ']).trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" | "INSTANCE" => Some(Level::Image),
            _ => None,
        }
    }

    pub fn as_dicom(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

/// How an attribute's values are matched and encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AttrKind {
    /// Free text (LO, SH, CS, LT...): single value and wildcard matching.
    Text,
    /// Person name: like text, plus fuzzy matching.
    PersonName,
    /// Date (DA, YYYYMMDD): range matching.
    Date,
    /// Time (TM): range matching.
    Time,
    /// UID: single value or list matching, never wildcards.
    Uid,
    /// An integer computed or stored (IS/US): single value matching.
    Integer,
    /// A multi-valued code string kept as a set (ModalitiesInStudy).
    CodeSet,
}

/// One indexed attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attr {
    pub tag: u32,
    pub keyword: &'static str,
    pub vr: &'static str,
    pub kind: AttrKind,
    /// The lowest level whose table holds the attribute.
    pub level: Level,
    /// Column name in the index.
    pub column: &'static str,
}

const fn a(
    tag: u32,
    keyword: &'static str,
    vr: &'static str,
    kind: AttrKind,
    level: Level,
    column: &'static str,
) -> Attr {
    Attr {
        tag,
        keyword,
        vr,
        kind,
        level,
        column,
    }
}

use AttrKind::*;
use Level::*;

/// Every attribute Meridian indexes, by level.
pub static ATTRS: &[Attr] = &[
    // Patient (kept on the study row; patients are derived from studies)
    a(
        0x0010_0010,
        "PatientName",
        "PN",
        PersonName,
        Patient,
        "patient_name",
    ),
    a(0x0010_0020, "PatientID", "LO", Text, Patient, "patient_id"),
    a(
        0x0010_0021,
        "IssuerOfPatientID",
        "LO",
        Text,
        Patient,
        "issuer",
    ),
    a(
        0x0010_0030,
        "PatientBirthDate",
        "DA",
        Date,
        Patient,
        "birth_date",
    ),
    a(0x0010_0040, "PatientSex", "CS", Text, Patient, "sex"),
    // Study
    a(
        0x0020_000D,
        "StudyInstanceUID",
        "UI",
        Uid,
        Study,
        "study_uid",
    ),
    a(0x0008_0020, "StudyDate", "DA", Date, Study, "study_date"),
    a(0x0008_0030, "StudyTime", "TM", Time, Study, "study_time"),
    a(
        0x0008_0050,
        "AccessionNumber",
        "SH",
        Text,
        Study,
        "accession",
    ),
    a(
        0x0008_1030,
        "StudyDescription",
        "LO",
        Text,
        Study,
        "study_description",
    ),
    a(
        0x0008_0090,
        "ReferringPhysicianName",
        "PN",
        PersonName,
        Study,
        "referring_physician",
    ),
    a(0x0020_0010, "StudyID", "SH", Text, Study, "study_id"),
    a(
        0x0008_0061,
        "ModalitiesInStudy",
        "CS",
        CodeSet,
        Study,
        "modalities",
    ),
    a(
        0x0020_1206,
        "NumberOfStudyRelatedSeries",
        "IS",
        Integer,
        Study,
        "num_series",
    ),
    a(
        0x0020_1208,
        "NumberOfStudyRelatedInstances",
        "IS",
        Integer,
        Study,
        "num_instances",
    ),
    // Series
    a(
        0x0020_000E,
        "SeriesInstanceUID",
        "UI",
        Uid,
        Series,
        "series_uid",
    ),
    a(0x0008_0060, "Modality", "CS", Text, Series, "modality"),
    a(
        0x0020_0011,
        "SeriesNumber",
        "IS",
        Integer,
        Series,
        "series_number",
    ),
    a(
        0x0008_103E,
        "SeriesDescription",
        "LO",
        Text,
        Series,
        "series_description",
    ),
    a(
        0x0018_0015,
        "BodyPartExamined",
        "CS",
        Text,
        Series,
        "body_part",
    ),
    a(0x0008_0021, "SeriesDate", "DA", Date, Series, "series_date"),
    a(
        0x0040_0244,
        "PerformedProcedureStepStartDate",
        "DA",
        Date,
        Series,
        "pps_start_date",
    ),
    a(
        0x0020_1209,
        "NumberOfSeriesRelatedInstances",
        "IS",
        Integer,
        Series,
        "num_instances",
    ),
    // Instance
    a(0x0008_0018, "SOPInstanceUID", "UI", Uid, Image, "sop_uid"),
    a(0x0008_0016, "SOPClassUID", "UI", Uid, Image, "sop_class"),
    a(
        0x0020_0013,
        "InstanceNumber",
        "IS",
        Integer,
        Image,
        "instance_number",
    ),
    a(0x0028_0010, "Rows", "US", Integer, Image, "rows_"),
    a(0x0028_0011, "Columns", "US", Integer, Image, "columns_"),
    a(
        0x0028_0008,
        "NumberOfFrames",
        "IS",
        Integer,
        Image,
        "frames",
    ),
    a(
        0x0028_0100,
        "BitsAllocated",
        "US",
        Integer,
        Image,
        "bits_allocated",
    ),
    a(
        0x0008_3002,
        "AvailableTransferSyntaxUID",
        "UI",
        Uid,
        Image,
        "transfer_syntax",
    ),
];

/// NumberOfPatientRelatedStudies, computed at PATIENT level.
pub const NUMBER_OF_PATIENT_RELATED_STUDIES: u32 = 0x0020_1200;

/// Looks an attribute up by tag.
pub fn by_tag(tag: u32) -> Option<&'static Attr> {
    // NumberOfSeriesRelatedInstances and NumberOfStudyRelatedInstances are
    // distinct tags, so the first hit is the only hit.
    ATTRS.iter().find(|a| a.tag == tag)
}

/// Looks an attribute up by keyword (case-sensitive, as in PS3.6).
pub fn by_keyword(keyword: &str) -> Option<&'static Attr> {
    ATTRS.iter().find(|a| a.keyword == keyword)
}

/// Parses a QIDO attribute id: a keyword or eight hex digits (`00100010`).
pub fn parse_attribute_id(id: &str) -> Option<u32> {
    if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u32::from_str_radix(id, 16).ok();
    }
    if let Some(attr) = by_keyword(id) {
        return Some(attr.tag);
    }
    keyword_tag_extra(id)
}

/// Tags QIDO clients commonly name that are not in the index catalogue.
fn keyword_tag_extra(id: &str) -> Option<u32> {
    Some(match id {
        "SpecificCharacterSet" => 0x0008_0005,
        "RetrieveURL" => 0x0008_1190,
        "InstanceAvailability" => 0x0008_0056,
        "TimezoneOffsetFromUTC" => 0x0008_0201,
        "NumberOfPatientRelatedStudies" => NUMBER_OF_PATIENT_RELATED_STUDIES,
        "QueryRetrieveLevel" => 0x0008_0052,
        _ => return None,
    })
}

/// Attributes of a level and of the levels above it, as a QIDO/C-FIND
/// result at that level may return them.
pub fn attrs_up_to(level: Level) -> impl Iterator<Item = &'static Attr> {
    ATTRS.iter().filter(move |a| a.level <= level)
}

/// The default attributes of a QIDO-RS response at a level (PS3.18 Table 10.6.3-3..5).
pub fn qido_defaults(level: Level) -> &'static [u32] {
    match level {
        Level::Patient | Level::Study => &[
            0x0008_0020,
            0x0008_0030,
            0x0008_0050,
            0x0008_0061,
            0x0008_0090,
            0x0010_0010,
            0x0010_0020,
            0x0010_0030,
            0x0010_0040,
            0x0020_000D,
            0x0020_0010,
            0x0020_1206,
            0x0020_1208,
            0x0008_1030,
            0x0010_0021,
        ],
        Level::Series => &[
            0x0008_0060,
            0x0008_103E,
            0x0020_000E,
            0x0020_0011,
            0x0020_1209,
            0x0040_0244,
            0x0018_0015,
        ],
        Level::Image => &[
            0x0008_0016,
            0x0008_0018,
            0x0008_3002,
            0x0020_0013,
            0x0028_0010,
            0x0028_0011,
            0x0028_0100,
            0x0028_0008,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_keywords_are_unique() {
        for (i, x) in ATTRS.iter().enumerate() {
            for y in &ATTRS[i + 1..] {
                assert_ne!(x.tag, y.tag, "{}", x.keyword);
                assert_ne!(x.keyword, y.keyword);
            }
        }
    }

    #[test]
    fn attribute_ids_parse() {
        assert_eq!(parse_attribute_id("00100010"), Some(0x0010_0010));
        assert_eq!(parse_attribute_id("PatientName"), Some(0x0010_0010));
        assert_eq!(parse_attribute_id("RetrieveURL"), Some(0x0008_1190));
        assert_eq!(parse_attribute_id("NoSuchThing"), None);
        assert_eq!(parse_attribute_id("0010001G"), None);
    }

    #[test]
    fn levels_parse() {
        assert_eq!(Level::from_dicom("STUDY "), Some(Level::Study));
        assert_eq!(Level::from_dicom("IMAGE\0"), Some(Level::Image));
        assert_eq!(Level::from_dicom("FOO"), None);
    }
}
