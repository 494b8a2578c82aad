"""C-FIND end to end: Patient Root and Study Root at PATIENT/STUDY/SERIES/IMAGE,
single values, `*`/`?` wildcards, date ranges, UID lists, universal matching,
return keys (counts, ModalitiesInStudy), and patient names in the character
sets real sites send (Latin-1, UTF-8, ISO 2022 Japanese and Korean, GB18030,
Cyrillic, Greek, Arabic, Hebrew), queried in UTF-8 and in their own charset.

The catalogue is built from real files (CT_small, MR_small, a Comprehensive
SR, pydicom's charset_files) copied with fresh UIDs and a per-run token in
every PatientID, and sent with DCMTK storescu. pynetdicom makes the queries so
that the identifiers come back decoded by pydicom.
"""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import build_context

import dicomfiles as df

TESTFILES = df.TEST_FILES
CHARSETS = df.CHARSET_FILES


# ---------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------

class Catalogue:
    pass


@pytest.fixture(scope="module")
def cat(server, tmp_path_factory) -> Catalogue:
    """Two patients, three studies:

    A: s1 2020-01-15 "CT HEAD"  CT series (3) + SR series (1)
       s2 2021-06-20 "MR KNEE"  MR series (2)
    B: s3 2019-12-31 "MR BRAIN" MR series (1) + CT series (1)
    """
    d = tmp_path_factory.mktemp("catalogue")
    c = Catalogue()
    c.t = df.token()
    c.pid_a, c.pid_b = f"QRY{c.t}-A", f"QRY{c.t}-B"
    c.name_a, c.name_b = f"QRY{c.t}^ALPHA", f"QRY{c.t}^BETA"
    c.s1, c.s2, c.s3 = generate_uid(), generate_uid(), generate_uid()
    c.acc = {c.s1: f"A{c.t}1", c.s2: f"A{c.t}2", c.s3: f"A{c.t}3"}
    c.date = {c.s1: "20200115", c.s2: "20210620", c.s3: "20191231"}
    c.desc = {c.s1: "CT HEAD", c.s2: "MR KNEE", c.s3: "MR BRAIN"}

    def study_attrs(study, pid, name):
        # The same demographics on every instance of a patient (the source
        # files disagree on PatientSex).
        return dict(patient_id=pid, study_uid=study, PatientName=name, PatientSex="O", PatientBirthDate="19700101",
                    StudyDate=c.date[study], AccessionNumber=c.acc[study], StudyDescription=c.desc[study])

    c.s1_ct = df.make_series(TESTFILES / "CT_small.dcm", d, 3, SeriesNumber=1, **study_attrs(c.s1, c.pid_a, c.name_a))
    c.s1_sr = df.make_series(TESTFILES / "test-SR.dcm", d, 1, SeriesNumber=2, **study_attrs(c.s1, c.pid_a, c.name_a))
    c.s2_mr = df.make_series(TESTFILES / "MR_small.dcm", d, 2, SeriesNumber=1, **study_attrs(c.s2, c.pid_a, c.name_a))
    c.s3_mr = df.make_series(TESTFILES / "MR_small.dcm", d, 1, SeriesNumber=1, **study_attrs(c.s3, c.pid_b, c.name_b))
    c.s3_ct = df.make_series(TESTFILES / "CT_small.dcm", d, 1, SeriesNumber=2, **study_attrs(c.s3, c.pid_b, c.name_b))
    everything = c.s1_ct + c.s1_sr + c.s2_mr + c.s3_mr + c.s3_ct
    df.storescu(server, [i.path for i in everything])
    c.count = {c.s1: 4, c.s2: 2, c.s3: 2}
    c.series_count = {c.s1: 2, c.s2: 1, c.s3: 2}
    c.modalities = {c.s1: {"CT", "SR"}, c.s2: {"MR"}, c.s3: {"CT", "MR"}}
    return c


def _studies(server, cat, **keys) -> set[str]:
    """Study UIDs matching `keys`, scoped to this run's patients."""
    keys.setdefault("PatientID", f"QRY{cat.t}-*")
    rows = df.c_find(server, "STUDY", {"StudyInstanceUID": "", **keys})
    uids = [r.StudyInstanceUID for r in rows]
    assert len(uids) == len(set(uids)), f"a study was returned twice: {uids}"
    return set(uids)


def _multi(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


# ---------------------------------------------------------------------------
# Patient level
# ---------------------------------------------------------------------------

def test_dimse_find_patient_root_patient_level(server, cat):
    rows = df.c_find(server, "PATIENT", {"PatientID": cat.pid_a, "PatientName": ""}, model="patient")
    assert len(rows) == 1
    assert rows[0].PatientID == cat.pid_a
    assert str(rows[0].PatientName) == cat.name_a
    assert rows[0].QueryRetrieveLevel == "PATIENT"

    rows = df.c_find(server, "PATIENT", {"PatientID": f"QRY{cat.t}-?", "PatientName": ""}, model="patient")
    assert sorted((r.PatientID, str(r.PatientName)) for r in rows) == [(cat.pid_a, cat.name_a), (cat.pid_b, cat.name_b)]

    rows = df.c_find(server, "PATIENT", {"PatientID": "", "PatientName": f"QRY{cat.t}^B*"}, model="patient")
    assert [r.PatientID for r in rows] == [cat.pid_b]


def test_dimse_find_no_match_is_success_with_no_results(server, cat):
    assert df.c_find(server, "STUDY", {"PatientID": f"QRY{cat.t}-NOBODY", "StudyInstanceUID": ""}) == []
    assert df.c_find(server, "PATIENT", {"PatientID": f"QRY{cat.t}-NOBODY"}, model="patient") == []


# ---------------------------------------------------------------------------
# Study level: single values, wildcards, ranges, lists, universal matching
# ---------------------------------------------------------------------------

def test_dimse_find_study_single_values(server, cat):
    assert _studies(server, cat, PatientID=cat.pid_a) == {cat.s1, cat.s2}
    assert _studies(server, cat, PatientID=cat.pid_b) == {cat.s3}
    assert _studies(server, cat, AccessionNumber=cat.acc[cat.s2]) == {cat.s2}
    assert _studies(server, cat, StudyInstanceUID=cat.s3) == {cat.s3}
    assert _studies(server, cat, StudyDate="20210620") == {cat.s2}
    assert _studies(server, cat, PatientName=cat.name_b) == {cat.s3}


@pytest.mark.parametrize("query,expected", [
    ("20200101-", {"s1", "s2"}),
    ("-20201231", {"s1", "s3"}),
    ("20200101-20201231", {"s1"}),
    ("20191231-20200115", {"s1", "s3"}),  # both bounds inclusive
    ("20190101-20191230", set()),
    ("20210620", {"s2"}),
])
def test_dimse_find_study_date_range(server, cat, query, expected):
    assert _studies(server, cat, StudyDate=query) == {getattr(cat, s) for s in expected}


@pytest.mark.parametrize("keyword,pattern,expected", [
    ("PatientName", "QRY{t}^AL*", {"s1", "s2"}),
    ("PatientName", "QRY{t}^BET?", {"s3"}),
    ("PatientName", "*{t}^*A", {"s1", "s2", "s3"}),
    ("StudyDescription", "MR*", {"s2", "s3"}),
    ("StudyDescription", "*KNEE", {"s2"}),
    ("StudyDescription", "?T HEAD", {"s1"}),
    ("StudyDescription", "MR ?????", {"s3"}),
    ("AccessionNumber", "A{t}*", {"s1", "s2", "s3"}),
    ("PatientID", "QRY{t}-*", {"s1", "s2", "s3"}),
])
def test_dimse_find_study_wildcards(server, cat, keyword, pattern, expected):
    assert _studies(server, cat, **{keyword: pattern.format(t=cat.t)}) == {getattr(cat, s) for s in expected}


def test_dimse_find_study_uid_list(server, cat):
    assert _studies(server, cat, StudyInstanceUID=f"{cat.s1}\\{cat.s3}") == {cat.s1, cat.s3}
    assert _studies(server, cat, StudyInstanceUID=[cat.s2, cat.s3, generate_uid()]) == {cat.s2, cat.s3}


def test_dimse_find_study_universal_matching_returns_values(server, cat):
    rows = df.c_find(server, "STUDY", {
        "PatientID": f"QRY{cat.t}-*", "PatientName": "", "StudyInstanceUID": "", "StudyDate": "",
        "AccessionNumber": "", "StudyDescription": "",
    })
    got = {r.StudyInstanceUID: r for r in rows}
    assert set(got) == {cat.s1, cat.s2, cat.s3}
    for s in (cat.s1, cat.s2, cat.s3):
        r = got[s]
        assert r.QueryRetrieveLevel == "STUDY"
        assert r.StudyDate == cat.date[s]
        assert r.AccessionNumber == cat.acc[s]
        assert r.StudyDescription == cat.desc[s]
        assert str(r.PatientName) == (cat.name_b if s == cat.s3 else cat.name_a)


def test_dimse_find_study_return_keys_counts_and_modalities(server, cat):
    rows = df.c_find(server, "STUDY", {
        "PatientID": f"QRY{cat.t}-*", "StudyInstanceUID": "", "NumberOfStudyRelatedInstances": "",
        "NumberOfStudyRelatedSeries": "", "ModalitiesInStudy": "",
    })
    got = {r.StudyInstanceUID: r for r in rows}
    assert set(got) == {cat.s1, cat.s2, cat.s3}
    for s in got:
        assert int(got[s].NumberOfStudyRelatedInstances) == cat.count[s], s
        assert int(got[s].NumberOfStudyRelatedSeries) == cat.series_count[s], s
        assert set(_multi(got[s].ModalitiesInStudy)) == cat.modalities[s], s


def test_dimse_find_only_requested_keys_plus_level(server, cat):
    rows = df.c_find(server, "STUDY", {"StudyInstanceUID": cat.s2, "StudyDate": ""})
    assert len(rows) == 1
    kws = {e.keyword for e in rows[0] if e.tag.group != 0x0000}
    # Nothing beyond the keys asked for (plus the level, charset and retrieve AE).
    assert kws <= {"QueryRetrieveLevel", "StudyInstanceUID", "StudyDate", "SpecificCharacterSet",
                   "RetrieveAETitle", "InstanceAvailability", "TimezoneOffsetFromUTC"}, kws


# ---------------------------------------------------------------------------
# Series and image level
# ---------------------------------------------------------------------------

def test_dimse_find_series_level(server, cat):
    rows = df.c_find(server, "SERIES", {
        "StudyInstanceUID": cat.s1, "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": "",
        "NumberOfSeriesRelatedInstances": "",
    })
    got = sorted((r.Modality, int(r.NumberOfSeriesRelatedInstances), r.SeriesInstanceUID) for r in rows)
    assert got == sorted([("CT", 3, cat.s1_ct[0].series_uid), ("SR", 1, cat.s1_sr[0].series_uid)])
    assert all(r.QueryRetrieveLevel == "SERIES" for r in rows)

    rows = df.c_find(server, "SERIES", {"StudyInstanceUID": cat.s3, "SeriesInstanceUID": "", "Modality": "MR"})
    assert [r.SeriesInstanceUID for r in rows] == [cat.s3_mr[0].series_uid]

    rows = df.c_find(server, "SERIES", {"StudyInstanceUID": cat.s3, "Modality": "",
                                        "SeriesInstanceUID": f"{cat.s3_mr[0].series_uid}\\{cat.s3_ct[0].series_uid}"})
    assert sorted(r.Modality for r in rows) == ["CT", "MR"]


def test_dimse_find_image_level(server, cat):
    ct = cat.s1_ct
    rows = df.c_find(server, "IMAGE", {
        "StudyInstanceUID": cat.s1, "SeriesInstanceUID": ct[0].series_uid, "SOPInstanceUID": "",
        "SOPClassUID": "", "InstanceNumber": "",
    })
    assert sorted((int(r.InstanceNumber), r.SOPInstanceUID) for r in rows) == [(i + 1, x.sop_uid) for i, x in enumerate(ct)]
    assert {r.SOPClassUID for r in rows} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert all(r.QueryRetrieveLevel == "IMAGE" for r in rows)

    rows = df.c_find(server, "IMAGE", {
        "StudyInstanceUID": cat.s1, "SeriesInstanceUID": ct[0].series_uid,
        "SOPInstanceUID": f"{ct[0].sop_uid}\\{ct[2].sop_uid}",
    })
    assert sorted(r.SOPInstanceUID for r in rows) == sorted([ct[0].sop_uid, ct[2].sop_uid])

    rows = df.c_find(server, "IMAGE", {
        "StudyInstanceUID": cat.s1, "SeriesInstanceUID": ct[0].series_uid, "SOPInstanceUID": "", "InstanceNumber": "2",
    })
    assert [r.SOPInstanceUID for r in rows] == [ct[1].sop_uid]


def test_dimse_find_patient_root_lower_levels(server, cat):
    rows = df.c_find(server, "STUDY", {"PatientID": cat.pid_a, "StudyInstanceUID": "", "StudyDate": ""},
                     model="patient")
    assert {r.StudyInstanceUID for r in rows} == {cat.s1, cat.s2}

    rows = df.c_find(server, "SERIES", {"PatientID": cat.pid_b, "StudyInstanceUID": cat.s3, "SeriesInstanceUID": "",
                                        "Modality": ""}, model="patient")
    assert sorted(r.Modality for r in rows) == ["CT", "MR"]

    rows = df.c_find(server, "IMAGE", {"PatientID": cat.pid_a, "StudyInstanceUID": cat.s2,
                                       "SeriesInstanceUID": cat.s2_mr[0].series_uid, "SOPInstanceUID": ""},
                     model="patient")
    assert sorted(r.SOPInstanceUID for r in rows) == sorted(i.sop_uid for i in cat.s2_mr)


def test_dimse_find_dcmtk_findscu(server, cat, tmp_path):
    """DCMTK findscu gets the same answer (its responses written as files)."""
    cp = df.run([df.dcmtk("findscu"), "-S", "-aec", server.ae_title, "-X", "-od", tmp_path,
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={cat.pid_a}", "-k", "StudyInstanceUID",
                 "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", server.dicom_port], timeout=30)
    rsp = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert {(r.StudyInstanceUID, int(r.NumberOfStudyRelatedInstances)) for r in rsp} == {
        (cat.s1, 4), (cat.s2, 2)}, cp.stdout + cp.stderr


def test_dimse_find_invalid_level_is_a_failure(server, cat):
    ident = Dataset()
    ident.QueryRetrieveLevel = "WARD"
    ident.PatientID = cat.pid_a
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as SF

    with df.association(server, [build_context(SF)]) as assoc:
        results = list(assoc.send_c_find(ident, SF))
    statuses = [s.get("Status") for s, _ in results]
    final = statuses[-1] if statuses else None
    assert final is not None and (0xA900 <= final <= 0xA9FF or 0xC000 <= final <= 0xCFFF), (
        f"C-FIND with QueryRetrieveLevel WARD: statuses {[hex(s) for s in statuses if s is not None]}")
    assert df.c_echo(server) == 0x0000


# ---------------------------------------------------------------------------
# Character sets
# ---------------------------------------------------------------------------

# (id, source file, PatientName to write or None to keep the file's own bytes,
#  SpecificCharacterSet to write or None to keep)
CHARSET_CASES = [
    ("latin1-rewritten", TESTFILES / "CT_small.dcm", "Müller^François", "ISO_IR 100"),
    ("utf8-rewritten", TESTFILES / "CT_small.dcm", "Ødegård^Zoë=李^娜", "ISO_IR 192"),
    ("latin1-german", CHARSETS / "chrGerm.dcm", None, None),
    ("utf8-chinese", CHARSETS / "chrX1.dcm", None, None),
    ("gb18030", CHARSETS / "chrX2.dcm", None, None),
    ("iso2022-ir87-japanese", CHARSETS / "chrH31.dcm", None, None),
    ("iso2022-ir13-ir87-japanese", CHARSETS / "chrH32.dcm", None, None),
    ("iso2022-ir87-japanese-cr", CHARSETS / "chrJapMultiExplicitIR6.dcm", None, None),
    ("iso2022-ir149-korean", CHARSETS / "chrKoreanMulti.dcm", None, None),
    ("iso2022-ir149-korean-groups", CHARSETS / "chrI2.dcm", None, None),
    ("cyrillic", CHARSETS / "chrRuss.dcm", None, None),
    ("greek", CHARSETS / "chrGreek.dcm", None, None),
    ("arabic", CHARSETS / "chrArab.dcm", None, None),
    ("hebrew", CHARSETS / "chrHbrw.dcm", None, None),
]


@pytest.fixture(scope="module")
def charset_studies(server, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("charsets")
    t = df.token()
    out = {}
    for cid, src, name, charset in CHARSET_CASES:
        attrs = {}
        if charset:
            attrs["SpecificCharacterSet"] = charset
        if name:
            attrs["PatientName"] = name
        inst = df.make_instance(src, d / f"{cid}.dcm", patient_id=f"CHR{t}-{cid}", **attrs)
        ds = pydicom.dcmread(inst.path)
        out[cid] = {"inst": inst, "name": str(ds.PatientName), "charset": ds.SpecificCharacterSet}
        assert out[cid]["name"] and out[cid]["name"] != "", cid
    df.storescu(server, [v["inst"].path for v in out.values()])
    return out


@pytest.mark.parametrize("cid", [c[0] for c in CHARSET_CASES])
def test_dimse_find_charset_name_comes_back_decoded(server, charset_studies, cid):
    case = charset_studies[cid]
    rows = df.c_find(server, "STUDY", {"PatientID": case["inst"].patient_id, "PatientName": "",
                                       "StudyInstanceUID": ""})
    assert len(rows) == 1
    assert rows[0].StudyInstanceUID == case["inst"].study_uid
    assert str(rows[0].PatientName) == case["name"], (
        f"stored {case['name']!r} in {case['charset']}, C-FIND answered {str(rows[0].PatientName)!r} "
        f"in {rows[0].get('SpecificCharacterSet')}")


@pytest.mark.parametrize("query_charset", ["utf8", "native"])
@pytest.mark.parametrize("cid", [c[0] for c in CHARSET_CASES])
def test_dimse_find_by_non_ascii_name(server, charset_studies, cid, query_charset):
    """Matching on the name itself, with the query in UTF-8 or in the
    instance's own character set; exact value and a leading-prefix wildcard."""
    case = charset_studies[cid]
    charset = "ISO_IR 192" if query_charset == "utf8" else case["charset"]
    name = case["name"]
    for pattern in (name, name[:3] + "*"):
        rows = df.c_find(server, "STUDY", {"PatientName": pattern, "PatientID": case["inst"].patient_id,
                                           "StudyInstanceUID": ""}, charset=charset)
        assert [r.StudyInstanceUID for r in rows] == [case["inst"].study_uid], (
            f"PatientName={pattern!r} (query in {charset}) did not find {cid}")
    # And without the PatientID scope, the exact name finds exactly this patient.
    rows = df.c_find(server, "PATIENT", {"PatientName": name, "PatientID": ""}, model="patient", charset=charset)
    assert [r.PatientID for r in rows] == [case["inst"].patient_id]
