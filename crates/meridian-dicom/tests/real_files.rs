//! Parses every file in pydicom's and pydicom-data's test corpora (real
//! DICOM from many vendors) through the bounded parser. Needs the `pydicom`
//! and `pydicom-data` wheels (scripts/install-peers installs them).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use meridian_dicom::parse::{Limits, parse_part10};

fn python_dir(code: &str) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", code])
        .output()
        .expect("python3 must be installed (REQUIRED PEER)");
    assert!(
        out.status.success(),
        "REQUIRED PEER MISSING: {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn corpus() -> Vec<PathBuf> {
    let a = python_dir(
        "import pydicom,os;print(os.path.join(os.path.dirname(pydicom.__file__),'data','test_files'))",
    );
    let b = python_dir(
        "import data_store,os;print(os.path.join(os.path.dirname(data_store.__file__),'data'))",
    );
    let mut v = Vec::new();
    for d in [a, b] {
        for e in std::fs::read_dir(&d).expect("corpus dir").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "dcm") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn real_files_parse_or_fail_cleanly_and_fast() {
    let files = corpus();
    assert!(
        files.len() > 100,
        "expected the pydicom corpora, found {} files",
        files.len()
    );
    let limits = Limits::default();
    let mut ok = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let t = Instant::now();
        let r = parse_part10(&bytes, &limits);
        let dt = t.elapsed();
        assert!(dt < Duration::from_secs(2), "{} took {dt:?}", f.display());
        if r.is_ok() {
            ok += 1;
        }
    }
    // Most of the corpus is valid Part 10 with the identifying UIDs.
    assert!(
        ok * 10 > files.len() * 6,
        "only {ok} of {} parsed",
        files.len()
    );
}

#[test]
fn malformed_un_sequence_is_refused_quickly() {
    let dir = python_dir(
        "import pydicom,os;print(os.path.join(os.path.dirname(pydicom.__file__),'data','test_files'))",
    );
    let bytes = std::fs::read(dir.join("UN_sequence.dcm")).unwrap();
    let t = Instant::now();
    let r = parse_part10(&bytes, &Limits::default());
    assert!(r.is_err(), "UN_sequence.dcm must be refused");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn ct_extracts_index_attributes() {
    let dir = python_dir(
        "import pydicom,os;print(os.path.join(os.path.dirname(pydicom.__file__),'data','test_files'))",
    );
    let bytes = std::fs::read(dir.join("CT_small.dcm")).unwrap();
    let (_, _, info) = parse_part10(&bytes, &Limits::default()).unwrap();
    assert_eq!(info.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2");
    assert_eq!(info.get(0x0010_0010), Some("CompressedSamples^CT1"));
    assert_eq!(info.get(0x0008_0060), Some("CT"));
}

/// A receiver may name an instance from the first bytes of its data set
/// (`peek_info`): for every real file, at every cut, the peek either waits
/// (`None`) or agrees with the parse of the whole data set on every fact the
/// object key and the file meta group are built from; and once the data set
/// is whole it answers for every parsable file with pixel data.
#[test]
fn peeking_at_a_prefix_agrees_with_the_whole_data_set() {
    use meridian_dicom::parse::{peek_info, scan_whole, split_part10};
    let limits = Limits::default();
    let mut peeked_whole = 0;
    for f in corpus() {
        let bytes = std::fs::read(&f).unwrap();
        let Ok((_, _, full)) = parse_part10(&bytes, &limits) else {
            continue;
        };
        let p10 = split_part10(&bytes).unwrap();
        let data = &bytes[p10.dataset_offset..];
        let facts = |i: &meridian_dicom::InstanceInfo| {
            (
                i.study_uid.clone(),
                i.series_uid.clone(),
                i.sop_instance_uid.clone(),
                i.sop_class_uid.clone(),
                i.transfer_syntax.clone(),
            )
        };
        let mut cuts: Vec<usize> = (1..=16).map(|k| data.len() * k / 16).collect();
        cuts.extend(
            [0, 1, 7, 8, 100, 128, 1024, 4096]
                .into_iter()
                .filter(|c| *c < data.len()),
        );
        for cut in cuts {
            if let Some((p, off)) = peek_info(&data[..cut], &p10.transfer_syntax, &limits) {
                assert_eq!(facts(&p), facts(&full), "{} cut at {cut}", f.display());
                // The whole data set's scan finds Pixel Data where the peek did.
                assert_eq!(
                    scan_whole(data, &p10.transfer_syntax, &limits).ok(),
                    Some(Some(off)),
                    "{} cut at {cut}",
                    f.display()
                );
                if cut == data.len() {
                    peeked_whole += 1;
                }
            }
        }
    }
    assert!(
        peeked_whole > 50,
        "only {peeked_whole} whole data sets were peeked"
    );
}
