"""End-to-end DICOMweb (PS3.18) tests: STOW-RS, QIDO-RS, WADO-RS.

Drives the real `meridian serve` with the real `dicomweb-client` package and
`requests`, on real files from pydicom's test files and pydicom-data. Every
test writes instances under freshly generated UIDs so tests stay independent
on the shared module server; QIDO matching runs against its own server so
result sets are exact.
"""
import copy
import io
import json
import re
import uuid
from urllib.parse import urljoin

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from conftest import Server

pytestmark = pytest.mark.filterwarnings("ignore")

DICOM_JSON = "application/dicom+json"
PROBLEM_JSON = "application/problem+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
MULTIPART_OCTET = 'multipart/related; type="application/octet-stream"'
TIMEOUT = 60

# DICOM JSON tags used throughout
T_FAILED_SOP_SEQ = "00081198"
T_REF_SOP_SEQ = "00081199"
T_FAILURE_REASON = "00081197"
T_REF_SOP_CLASS = "00081150"
T_REF_SOP_INSTANCE = "00081155"
T_RETRIEVE_URL = "00081190"
T_STUDY_UID = "0020000D"
T_SERIES_UID = "0020000E"
T_SOP_UID = "00080018"
T_SOP_CLASS = "00080016"
T_PATIENT_NAME = "00100010"
T_PATIENT_ID = "00100020"
T_STUDY_DATE = "00080020"
T_ACCESSION = "00080050"
T_MODALITIES = "00080061"
T_MODALITY = "00080060"
T_STUDY_DESC = "00081030"
T_N_SERIES = "00201206"
T_N_STUDY_INSTANCES = "00201208"
T_N_SERIES_INSTANCES = "00201209"
T_PIXEL_DATA = "7FE00010"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def load(path) -> pydicom.Dataset:
    return pydicom.dcmread(str(path), force=True)


def renew(ds: pydicom.Dataset, study=None, series=None, sop=None, **attrs) -> pydicom.Dataset:
    """A deep copy of `ds` under new (or given) Study/Series/SOP Instance UIDs."""
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def encode(ds: pydicom.Dataset) -> bytes:
    """Exactly what dicomweb-client's store_instances() puts on the wire for `ds`."""
    with io.BytesIO() as buf:
        pydicom.dcmwrite(buf, ds)
        return buf.getvalue()


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def split_part10(data: bytes):
    """(file meta bytes, data set bytes) of a DICOM Part 10 file."""
    assert data[128:132] == b"DICM", "not a DICOM Part 10 stream (no DICM prefix)"
    pos = 132
    while pos + 8 <= len(data):
        group = int.from_bytes(data[pos:pos + 2], "little")
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    return data[:pos], data[pos:]


def dataset_body(data: bytes) -> bytes:
    return split_part10(data)[1]


def multipart_body(parts, boundary, part_type="application/dicom") -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def stow(server, parts, study=None, **kw) -> requests.Response:
    boundary = uuid.uuid4().hex
    url = f"{server.dicomweb_url}/studies" + (f"/{study}" if study else "")
    return requests.post(
        url,
        data=multipart_body(parts, boundary),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": DICOM_JSON,
        },
        timeout=TIMEOUT,
        **kw,
    )


def parse_multipart(resp: requests.Response):
    """[(headers, body)] of a multipart/related response."""
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.lower().startswith("multipart/related"), f"not multipart/related: {ctype!r}"
    m = re.search(r'boundary="?([^";]+)"?', ctype, re.I)
    assert m, f"no boundary in {ctype!r}"
    delim = b"\r\n--" + m.group(1).encode()
    segments = (b"\r\n" + resp.content).split(delim)
    parts = []
    for seg in segments[1:]:
        if seg.startswith(b"--"):
            break
        head, sep, body = seg.partition(b"\r\n\r\n")
        assert sep, "multipart part without header/body separator"
        headers = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.decode().strip().lower()] = v.decode().strip()
        parts.append((headers, body))
    return parts


def media_type(resp) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()


def json_items(resp: requests.Response):
    """QIDO result list (204 No Content == [])."""
    if resp.status_code == 204:
        return []
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    assert media_type(resp) in (DICOM_JSON, "application/json"), resp.headers.get("Content-Type")
    body = resp.json() if resp.content.strip() else []
    assert isinstance(body, list), f"expected a JSON array, got {type(body)}"
    return body


def seq(js: dict, tag: str):
    return (js.get(tag) or {}).get("Value") or []


def first(js: dict, tag: str):
    values = seq(js, tag)
    return values[0] if values else None


def pn(js: dict, tag: str = T_PATIENT_NAME):
    value = first(js, tag)
    return value.get("Alphabetic") if isinstance(value, dict) else value


def assert_problem(resp, statuses):
    assert resp.status_code in statuses, f"expected {statuses}, got {resp.status_code}: {resp.text[:300]}"
    assert media_type(resp) == PROBLEM_JSON, f"expected {PROBLEM_JSON}, got {resp.headers.get('Content-Type')!r}"
    body = resp.json()
    assert isinstance(body, dict)
    if "status" in body:
        assert int(body["status"]) == resp.status_code
    assert not resp.content.startswith(b"\x00" * 128), "error body looks like a DICOM file"


def get(url, accept, **kw) -> requests.Response:
    return requests.get(url, headers={"Accept": accept}, timeout=TIMEOUT, **kw)


def instance_url(server, study, series, sop) -> str:
    return f"{server.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}"


class Item:
    def __init__(self, ds: pydicom.Dataset):
        self.ds = ds
        self.data = encode(ds)
        self.study = ds.StudyInstanceUID
        self.series = ds.SeriesInstanceUID
        self.sop = ds.SOPInstanceUID
        self.ts = str(ds.file_meta.TransferSyntaxUID)

    def url(self, server) -> str:
        return instance_url(server, self.study, self.series, self.sop)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(server):
    return DICOMwebClient(url=server.dicomweb_url)


MR_VARIANTS = {
    "mr_explicit": "MR_small.dcm",
    "mr_implicit": "MR_small_implicit.dcm",
    "mr_bigendian": "MR_small_bigendian.dcm",
    "mr_rle": "MR_small_RLE.dcm",
    "mr_jpegls": "MR_small_jpeg_ls_lossless.dcm",
    "mr_j2k": "MR_small_jp2klossless.dcm",
}
EMRI_VARIANTS = {
    "emri": "emri_small.dcm",
    "emri_jpegls": "emri_small_jpeg_ls_lossless.dcm",
    "emri_rle": "emri_small_RLE.dcm",
}


@pytest.fixture(scope="module")
def corpus(server, client, testfiles, datastore):
    """Two studies stored with dicomweb-client, covering every common transfer syntax.

    study 1: CT (explicit LE, 1 instance) + MR series in 6 transfer syntaxes
    study 2: multi-frame MR (10 frames; native, JPEG-LS, RLE) + multi-frame US
             (JPEG baseline YBR_FULL_422, 30 frames)
    """
    items = {}
    study1, study2 = generate_uid(), generate_uid()
    ct_series, mr_series, emri_series, us_series = (generate_uid() for _ in range(4))
    # one patient per study, as a modality would send it
    p1 = dict(PatientName="E2E^WADO^ONE", PatientID="E2E-WADO-1", PatientBirthDate="19700101", PatientSex="O")
    p2 = dict(PatientName="E2E^WADO^TWO", PatientID="E2E-WADO-2", PatientBirthDate="19800101", PatientSex="O")
    items["ct"] = Item(renew(load(testfiles / "CT_small.dcm"), study1, ct_series, **p1))
    for name, fname in MR_VARIANTS.items():
        items[name] = Item(renew(load(testfiles / fname), study1, mr_series, **p1))
    for name, fname in EMRI_VARIANTS.items():
        items[name] = Item(renew(load(datastore / fname), study2, emri_series, **p2))
    items["us_jpeg"] = Item(renew(load(testfiles / "examples_ybr_color.dcm"), study2, us_series, **p2))

    responses = {}
    for study in (study1, study2):
        datasets = [it.ds for it in items.values() if it.study == study]
        responses[study] = client.store_instances(datasets)
    return {"items": items, "responses": responses, "study1": study1, "study2": study2}


# --------------------------------------------------------------------------
# STOW-RS
# --------------------------------------------------------------------------

def test_stow_single_instance_reports_reference(server, testfiles):
    item = Item(renew(load(testfiles / "CT_small.dcm")))
    resp = stow(server, [item.data])
    assert resp.status_code == 200, resp.text[:500]
    assert media_type(resp) == DICOM_JSON
    body = resp.json()
    if isinstance(body, list):  # tolerate an array holding the single response data set
        assert len(body) == 1
        body = body[0]
    refs = seq(body, T_REF_SOP_SEQ)
    assert len(refs) == 1
    assert first(refs[0], T_REF_SOP_INSTANCE) == item.sop
    assert first(refs[0], T_REF_SOP_CLASS) == str(item.ds.SOPClassUID)
    assert not seq(body, T_FAILED_SOP_SEQ), "nothing should have failed"


def test_stow_reference_retrieve_url_resolves(server, testfiles):
    item = Item(renew(load(testfiles / "MR_small.dcm")))
    resp = stow(server, [item.data])
    assert resp.status_code == 200
    ref = seq(resp.json(), T_REF_SOP_SEQ)[0]
    url = first(ref, T_RETRIEVE_URL)
    assert url, "ReferencedSOPSequence item lacks RetrieveURL (0008,1190)"
    assert item.sop in url
    got = get(urljoin(resp.url, url), MULTIPART_DICOM + "; transfer-syntax=*")
    assert got.status_code == 200
    parts = parse_multipart(got)
    assert len(parts) == 1
    assert dataset_body(parts[0][1]) == dataset_body(item.data)


def test_stow_via_client_every_transfer_syntax(corpus):
    """dicomweb-client's store_instances got a clean 200 for every transfer syntax."""
    for study, response in corpus["responses"].items():
        expected = {it.sop for it in corpus["items"].values() if it.study == study}
        referenced = {str(r.ReferencedSOPInstanceUID) for r in response.get("ReferencedSOPSequence", [])}
        assert referenced == expected
        assert len(response.get("FailedSOPSequence", [])) == 0


def test_stow_to_study_url(server, testfiles):
    study = generate_uid()
    series = generate_uid()
    items = [Item(renew(load(testfiles / f), study, series)) for f in ("MR_small.dcm", "MR_small_implicit.dcm")]
    resp = stow(server, [i.data for i in items], study=study)
    assert resp.status_code == 200, resp.text[:500]
    refs = {first(r, T_REF_SOP_INSTANCE) for r in seq(resp.json(), T_REF_SOP_SEQ)}
    assert refs == {i.sop for i in items}


def _bad_parts(testfiles, study):
    """(name, bytes, sop-or-None) for parts that must each be refused."""
    base = load(testfiles / "MR_small.dcm")

    no_study = renew(base)
    del no_study.StudyInstanceUID

    no_sop = renew(base)
    del no_sop.SOPInstanceUID
    del no_sop.file_meta.MediaStorageSOPInstanceUID

    bad_uid = renew(base)
    bad_uid.SOPInstanceUID = "1.2.840.abc.07.x"  # letters and a leading zero: not a UID
    bad_uid.file_meta.MediaStorageSOPInstanceUID = bad_uid.SOPInstanceUID

    other_study = renew(base)  # valid instance of another study, sent to /studies/{study}

    return [
        ("not-dicom", b"this is not a DICOM file, just some text" * 10, None),
        ("missing-study-uid", encode(no_study), no_study.get("SOPInstanceUID")),
        ("missing-sop-uid", encode(no_sop), None),
        ("invalid-uid", encode(bad_uid), None),
        ("UN_sequence.dcm", (testfiles / "UN_sequence.dcm").read_bytes(), None),
        ("study-mismatch", encode(other_study), other_study.SOPInstanceUID),
    ], other_study


def test_stow_partial_failure_is_202_and_stores_good_parts(server, testfiles):
    study, series = generate_uid(), generate_uid()
    good = [Item(renew(load(testfiles / f), study, series)) for f in ("MR_small.dcm", "MR_small_RLE.dcm")]
    bad, other_study = _bad_parts(testfiles, study)
    parts = [good[0].data] + [b[1] for b in bad] + [good[1].data]

    resp = stow(server, parts, study=study)
    assert resp.status_code == 202, f"{resp.status_code}: {resp.text[:500]}"
    assert media_type(resp) == DICOM_JSON
    body = resp.json()
    referenced = {first(r, T_REF_SOP_INSTANCE) for r in seq(body, T_REF_SOP_SEQ)}
    assert referenced == {g.sop for g in good}

    failed = seq(body, T_FAILED_SOP_SEQ)
    assert len(failed) == len(bad), f"each bad part must be reported: {json.dumps(failed)[:800]}"
    for item in failed:
        reason = first(item, T_FAILURE_REASON)
        assert isinstance(reason, int) and reason > 0, f"bad FailureReason in {item}"
    failed_sops = {first(i, T_REF_SOP_INSTANCE) for i in failed}
    assert other_study.SOPInstanceUID in failed_sops

    # the good parts are stored and retrievable, byte for byte
    for g in good:
        r = get(g.url(server), MULTIPART_DICOM + "; transfer-syntax=*")
        assert r.status_code == 200
        assert dataset_body(parse_multipart(r)[0][1]) == dataset_body(g.data)
    # the refused ones are not
    r = requests.get(f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": other_study.StudyInstanceUID},
                     headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert json_items(r) == []
    r = get(instance_url(server, other_study.StudyInstanceUID, other_study.SeriesInstanceUID,
                         other_study.SOPInstanceUID), MULTIPART_DICOM)
    assert r.status_code == 404
    r = requests.get(f"{server.dicomweb_url}/studies/{study}/instances", headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert {first(i, T_SOP_UID) for i in json_items(r)} == {g.sop for g in good}


@pytest.mark.parametrize("which", ["not-dicom", "missing-study-uid", "missing-sop-uid", "invalid-uid",
                                   "UN_sequence.dcm", "study-mismatch"])
def test_stow_all_failed_is_409(server, testfiles, which):
    study = generate_uid()
    bad, _ = _bad_parts(testfiles, study)
    part = dict((name, data) for name, data, _ in bad)[which]
    resp = stow(server, [part], study=study)
    assert resp.status_code == 409, f"{which}: {resp.status_code}: {resp.text[:500]}"
    assert media_type(resp) == DICOM_JSON
    failed = seq(resp.json(), T_FAILED_SOP_SEQ)
    assert len(failed) == 1
    assert first(failed[0], T_FAILURE_REASON)
    assert not seq(resp.json(), T_REF_SOP_SEQ)


def test_stow_client_partial_and_conflict(client, testfiles):
    study = generate_uid()
    good = renew(load(testfiles / "CT_small.dcm"), study)
    stranger = renew(load(testfiles / "MR_small.dcm"))
    result = client.store_instances([good, stranger], study_instance_uid=study)
    assert [str(r.ReferencedSOPInstanceUID) for r in result.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert len(result.FailedSOPSequence) == 1
    assert int(result.FailedSOPSequence[0].FailureReason) > 0

    with pytest.raises(requests.HTTPError) as exc:
        client.store_instances([renew(load(testfiles / "MR_small.dcm"))], study_instance_uid=study)
    assert exc.value.response.status_code == 409


@pytest.mark.parametrize("ctype", [
    "application/json",
    "text/plain",
    "application/octet-stream",
    "multipart/form-data; boundary=xyz",
])
def test_stow_wrong_content_type_is_415(server, testfiles, ctype):
    data = (testfiles / "CT_small.dcm").read_bytes()
    body = multipart_body([data], "xyz") if "boundary" in ctype else data
    resp = requests.post(f"{server.dicomweb_url}/studies", data=body, headers={"Content-Type": ctype},
                         timeout=TIMEOUT)
    assert_problem(resp, {415})


def test_stow_empty_multipart_is_rejected(server):
    boundary = "emptyboundary"
    resp = requests.post(
        f"{server.dicomweb_url}/studies",
        data=f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=TIMEOUT,
    )
    assert resp.status_code in (400, 409), f"{resp.status_code}: {resp.text[:300]}"


def test_stow_large_instance_chunked_roundtrip(server, client, datastore):
    """A 2 MB MR goes up with chunked transfer encoding (dicomweb-client > 1 MB) and comes back intact."""
    ds = renew(load(datastore / "MR2_UNCR.dcm"))
    result = client.store_instances([ds])
    assert [str(r.ReferencedSOPInstanceUID) for r in result.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    r = get(instance_url(server, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
            MULTIPART_DICOM + "; transfer-syntax=*")
    assert r.status_code == 200
    assert dataset_body(parse_multipart(r)[0][1]) == dataset_body(encode(ds))


def test_stow_same_instance_twice_is_not_duplicated(server, testfiles):
    item = Item(renew(load(testfiles / "CT_small.dcm")))
    assert stow(server, [item.data]).status_code == 200
    again = stow(server, [item.data])
    assert again.status_code in (200, 202, 409)
    r = requests.get(f"{server.dicomweb_url}/studies/{item.study}/instances", headers={"Accept": DICOM_JSON},
                     timeout=TIMEOUT)
    assert [first(i, T_SOP_UID) for i in json_items(r)] == [item.sop]
    r = requests.get(f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": item.study},
                     headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    studies = json_items(r)
    assert len(studies) == 1
    assert int(first(studies[0], T_N_STUDY_INSTANCES)) == 1
    r = get(item.url(server), MULTIPART_DICOM + "; transfer-syntax=*")
    assert len(parse_multipart(r)) == 1


# --------------------------------------------------------------------------
# QIDO-RS (own server: exact result sets)
# --------------------------------------------------------------------------

class QidoCorpus:
    pass


@pytest.fixture(scope="module")
def qido(testfiles):
    srv = Server()
    try:
        c = QidoCorpus()
        c.server = srv
        c.url = srv.dicomweb_url
        c.client = DICOMwebClient(url=srv.dicomweb_url)
        c.studies = {}
        c.series = {}
        c.instances = {}

        def study(key, name, pid, date, acc, desc, files):
            uid = generate_uid()
            c.studies[key] = uid
            datasets = []
            for series_key, fnames in files.items():
                suid = generate_uid()
                c.series[series_key] = suid
                for i, f in enumerate(fnames):
                    ds = renew(load(testfiles / f), uid, suid, PatientName=name, PatientID=pid, StudyDate=date,
                               AccessionNumber=acc, StudyDescription=desc, InstanceNumber=i + 1)
                    c.instances.setdefault(series_key, []).append(ds.SOPInstanceUID)
                    datasets.append(ds)
            res = c.client.store_instances(datasets)
            assert len(res.ReferencedSOPSequence) == len(datasets)

        study("A", "DOE^JOHN", "MRDN-A1", "20200315", "ACCA1", "CHEST CT",
              {"A-CT": ["CT_small.dcm"], "A-MR": ["MR_small.dcm", "MR_small_implicit.dcm"]})
        study("B", "DOE^JANE", "MRDN-B2", "20210610", "ACCB2", "BRAIN MR", {"B-MR": ["MR_small_RLE.dcm"]})
        study("C", "SMITH^ALICE", "MRDN-C3", "20191231", "ACCC3", "HAND CR",
              {"C-CR": ["dicomdirtests/77654033/CR1/6154"]})
        study("D", "VANDOE^MARY", "MRDN-D4", "20220101", "ACCD4", "KNEE MR", {"D-MR": ["MR_small_expb.dcm"]})
        c.by_uid = {v: k for k, v in c.studies.items()}
        yield c
        assert srv.alive(), f"meridian died during QIDO tests:\n{srv.log_text()}"
    finally:
        srv.cleanup()


def qido_get(c, path, params=None):
    resp = requests.get(f"{c.url}{path}", params=params, headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    return json_items(resp)


def study_keys(c, results):
    keys = [c.by_uid.get(first(r, T_STUDY_UID), first(r, T_STUDY_UID)) for r in results]
    assert len(keys) == len(set(keys)), f"duplicate studies in result: {keys}"
    return set(keys)


def test_qido_all_studies_default_attributes(qido):
    resp = requests.get(f"{qido.url}/studies", headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert resp.status_code == 200
    assert media_type(resp) == DICOM_JSON
    results = json_items(resp)
    assert study_keys(qido, results) == {"A", "B", "C", "D"}
    for tag in (T_STUDY_UID, T_PATIENT_NAME, T_PATIENT_ID, T_STUDY_DATE, T_ACCESSION, T_MODALITIES,
                T_N_SERIES, T_N_STUDY_INSTANCES, T_RETRIEVE_URL):
        for r in results:
            assert tag in r, f"study result lacks {tag}: {sorted(r)}"
    a = next(r for r in results if first(r, T_STUDY_UID) == qido.studies["A"])
    assert a[T_PATIENT_NAME]["vr"] == "PN"
    assert pn(a) == "DOE^JOHN"
    assert first(a, T_PATIENT_ID) == "MRDN-A1"
    assert first(a, T_STUDY_DATE) == "20200315"
    assert first(a, T_ACCESSION) == "ACCA1"
    assert set(seq(a, T_MODALITIES)) == {"CT", "MR"}
    assert int(first(a, T_N_SERIES)) == 2
    assert int(first(a, T_N_STUDY_INSTANCES)) == 3


def test_qido_study_retrieve_url_resolves(qido):
    a = qido_get(qido, "/studies", {"StudyInstanceUID": qido.studies["A"]})[0]
    url = urljoin(f"{qido.url}/studies", first(a, T_RETRIEVE_URL))
    assert url.rstrip("/").endswith(f"/studies/{qido.studies['A']}")
    resp = get(url, MULTIPART_DICOM + "; transfer-syntax=*")
    assert resp.status_code == 200
    assert len(parse_multipart(resp)) == 3


@pytest.mark.parametrize("params,expected", [
    ({"PatientName": "DOE*"}, {"A", "B"}),
    ({"PatientName": "*DOE*"}, {"A", "B", "D"}),
    ({"PatientName": "DOE^JOHN"}, {"A"}),
    ({"PatientName": "DOE^J?HN"}, {"A"}),
    ({"PatientID": "MRDN-B2"}, {"B"}),
    ({"PatientID": "MRDN"}, set()),
    ({"00100020": "MRDN-C3"}, {"C"}),
    ({"StudyDate": "20200101-20201231"}, {"A"}),
    ({"StudyDate": "-20200101"}, {"C"}),
    ({"StudyDate": "20210101-"}, {"B", "D"}),
    ({"StudyDate": "20210610"}, {"B"}),
    ({"ModalitiesInStudy": "CT"}, {"A"}),
    ({"ModalitiesInStudy": "MR"}, {"A", "B", "D"}),
    ({"ModalitiesInStudy": "CR"}, {"C"}),
    ({"AccessionNumber": "ACCB2"}, {"B"}),
    ({"PatientName": "DOE*", "StudyDate": "20210101-"}, {"B"}),
    ({"PatientName": "NOBODY*"}, set()),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_qido_study_matching(qido, params, expected):
    assert study_keys(qido, qido_get(qido, "/studies", params)) == expected


@pytest.mark.parametrize("sep", [",", "\\"])
def test_qido_study_uid_list(qido, sep):
    uids = sep.join([qido.studies["A"], qido.studies["C"]])
    assert study_keys(qido, qido_get(qido, "/studies", {"StudyInstanceUID": uids})) == {"A", "C"}


@pytest.mark.parametrize("name,expected", [
    ("doe", {"A", "B"}),
    ("DOE", {"A", "B"}),
    ("jo", {"A"}),
    ("mar", {"D"}),
    ("smith", {"C"}),
    ("oe", set()),
])
def test_qido_fuzzy_patient_name_via_client(qido, name, expected):
    results = qido.client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": name})
    assert study_keys(qido, results) == expected


def test_qido_client_filters_and_fields(qido):
    results = qido.client.search_for_studies(search_filters={"PatientID": "MRDN-A1"}, fields=["StudyDescription"])
    assert study_keys(qido, results) == {"A"}
    assert first(results[0], T_STUDY_DESC) == "CHEST CT"
    results = qido.client.search_for_studies(search_filters={"00100020": "MRDN-D4"}, fields=["00081030"])
    assert study_keys(qido, results) == {"D"}
    assert first(results[0], T_STUDY_DESC) == "KNEE MR"


@pytest.mark.parametrize("includefield", ["StudyDescription", "00081030", "all", "00081030,00080090"])
def test_qido_includefield(qido, includefield):
    results = qido_get(qido, "/studies", {"PatientID": "MRDN-B2", "includefield": includefield})
    assert len(results) == 1
    assert first(results[0], T_STUDY_DESC) == "BRAIN MR"


def test_qido_limit_offset(qido):
    page1 = qido.client.search_for_studies(limit=2)
    page2 = qido.client.search_for_studies(limit=2, offset=2)
    page3 = qido.client.search_for_studies(limit=2, offset=4)
    assert len(page1) == 2 and len(page2) == 2 and page3 == []
    assert study_keys(qido, page1) | study_keys(qido, page2) == {"A", "B", "C", "D"}
    assert not study_keys(qido, page1) & study_keys(qido, page2)
    assert len(qido_get(qido, "/studies", {"limit": 1})) == 1
    assert len(qido_get(qido, "/studies", {"offset": 3})) == 1


def test_qido_empty_result(qido):
    resp = requests.get(f"{qido.url}/studies", params={"PatientID": "NO-SUCH-PATIENT"},
                        headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert resp.status_code in (200, 204)
    assert json_items(resp) == []
    assert qido.client.search_for_studies(search_filters={"PatientID": "NO-SUCH-PATIENT"}) == []


def test_qido_series_of_study(qido):
    results = qido.client.search_for_series(study_instance_uid=qido.studies["A"])
    assert {first(r, T_SERIES_UID) for r in results} == {qido.series["A-CT"], qido.series["A-MR"]}
    by_uid = {first(r, T_SERIES_UID): r for r in results}
    assert first(by_uid[qido.series["A-CT"]], T_MODALITY) == "CT"
    assert first(by_uid[qido.series["A-MR"]], T_MODALITY) == "MR"
    assert int(first(by_uid[qido.series["A-MR"]], T_N_SERIES_INSTANCES)) == 2
    assert int(first(by_uid[qido.series["A-CT"]], T_N_SERIES_INSTANCES)) == 1
    mr = qido.client.search_for_series(study_instance_uid=qido.studies["A"], search_filters={"Modality": "MR"})
    assert [first(r, T_SERIES_UID) for r in mr] == [qido.series["A-MR"]]


def test_qido_all_series(qido):
    results = qido_get(qido, "/series")
    assert {first(r, T_SERIES_UID) for r in results} == set(qido.series.values())
    cr = qido_get(qido, "/series", {"Modality": "CR"})
    assert [first(r, T_SERIES_UID) for r in cr] == [qido.series["C-CR"]]
    assert first(cr[0], T_STUDY_UID) == qido.studies["C"]
    one = qido_get(qido, "/series", {"SeriesInstanceUID": qido.series["B-MR"]})
    assert [first(r, T_SERIES_UID) for r in one] == [qido.series["B-MR"]]


def test_qido_series_matched_on_study_attributes(qido):
    results = qido_get(qido, "/series", {"PatientID": "MRDN-A1"})
    assert {first(r, T_SERIES_UID) for r in results} == {qido.series["A-CT"], qido.series["A-MR"]}
    results = qido_get(qido, "/series", {"StudyDate": "20210101-", "Modality": "MR"})
    assert {first(r, T_SERIES_UID) for r in results} == {qido.series["B-MR"], qido.series["D-MR"]}


def test_qido_instances_levels(qido):
    a_all = qido_get(qido, f"/studies/{qido.studies['A']}/instances")
    assert {first(r, T_SOP_UID) for r in a_all} == set(qido.instances["A-CT"] + qido.instances["A-MR"])
    for r in a_all:
        assert first(r, T_SOP_CLASS)
    a_mr = qido.client.search_for_instances(study_instance_uid=qido.studies["A"],
                                            series_instance_uid=qido.series["A-MR"])
    assert {first(r, T_SOP_UID) for r in a_mr} == set(qido.instances["A-MR"])
    everything = qido_get(qido, "/instances")
    assert {first(r, T_SOP_UID) for r in everything} == {s for v in qido.instances.values() for s in v}
    target = qido.instances["A-MR"][1]
    one = qido_get(qido, "/instances", {"SOPInstanceUID": target})
    assert [first(r, T_SOP_UID) for r in one] == [target]
    assert first(one[0], T_STUDY_UID) == qido.studies["A"]
    assert first(one[0], T_SERIES_UID) == qido.series["A-MR"]
    ct = qido_get(qido, "/instances", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"})
    assert [first(r, T_SOP_UID) for r in ct] == qido.instances["A-CT"]


def test_qido_unknown_study_children(qido):
    resp = requests.get(f"{qido.url}/studies/{generate_uid()}/series", headers={"Accept": DICOM_JSON},
                        timeout=TIMEOUT)
    if resp.status_code == 404:
        assert media_type(resp) == PROBLEM_JSON
    else:
        assert json_items(resp) == []


@pytest.mark.parametrize("params", [{"limit": "abc"}, {"offset": "-1"}, {"StudyDate": "2020-01-01xx"}])
def test_qido_invalid_parameters_are_400(qido, params):
    resp = requests.get(f"{qido.url}/studies", params=params, headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert_problem(resp, {400})


# --------------------------------------------------------------------------
# Character sets (names decoded into JSON)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("charset,name,alphabetic,ideographic", [
    ("ISO_IR 100", "Müller^Jürgen", "Müller^Jürgen", None),
    ("ISO_IR 192", "Yamada^Tarou=山田^太郎", "Yamada^Tarou", "山田^太郎"),
])
def test_names_are_decoded(server, client, testfiles, charset, name, alphabetic, ideographic):
    ds = renew(load(testfiles / "MR_small.dcm"), SpecificCharacterSet=charset, PatientID="CHARSET-" + uuid.uuid4().hex[:8])
    ds.PatientName = name
    raw = encode(ds)
    assert alphabetic.encode("utf-8") not in raw or charset == "ISO_IR 192"
    client.store_instances([ds])
    study = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
    assert len(study) == 1
    value = first(study[0], T_PATIENT_NAME)
    assert value["Alphabetic"] == alphabetic
    if ideographic:
        assert value.get("Ideographic") == ideographic
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert first(meta, T_PATIENT_NAME)["Alphabetic"] == alphabetic
    if ideographic:
        assert first(meta, T_PATIENT_NAME).get("Ideographic") == ideographic


# --------------------------------------------------------------------------
# WADO-RS: instances
# --------------------------------------------------------------------------

def _by_sop(parts):
    out = {}
    for _, body in parts:
        ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        out[ds.SOPInstanceUID] = body
    return out


def test_retrieve_study_byte_identical(server, corpus):
    study = corpus["study1"]
    expected = {it.sop: it for it in corpus["items"].values() if it.study == study}
    resp = get(f"{server.dicomweb_url}/studies/{study}", MULTIPART_DICOM + "; transfer-syntax=*")
    assert resp.status_code == 200
    ctype = resp.headers["Content-Type"].lower()
    assert ctype.startswith("multipart/related") and "application/dicom" in ctype
    got = _by_sop(parse_multipart(resp))
    assert set(got) == set(expected)
    for sop, item in expected.items():
        assert dataset_body(got[sop]) == dataset_body(item.data), f"{sop} ({item.ts}) differs"
        assert pydicom.dcmread(io.BytesIO(got[sop])).file_meta.TransferSyntaxUID == item.ts


def test_retrieve_series_byte_identical(server, corpus):
    items = [corpus["items"][k] for k in EMRI_VARIANTS]
    study, series = items[0].study, items[0].series
    resp = get(f"{server.dicomweb_url}/studies/{study}/series/{series}", MULTIPART_DICOM + "; transfer-syntax=*")
    assert resp.status_code == 200
    got = _by_sop(parse_multipart(resp))
    assert set(got) == {i.sop for i in items}
    for item in items:
        assert dataset_body(got[item.sop]) == dataset_body(item.data)


@pytest.mark.parametrize("name", ["ct"] + list(MR_VARIANTS) + list(EMRI_VARIANTS) + ["us_jpeg"])
def test_retrieve_instance_as_stored(server, corpus, name):
    item = corpus["items"][name]
    resp = get(item.url(server), MULTIPART_DICOM + "; transfer-syntax=*")
    assert resp.status_code == 200
    parts = parse_multipart(resp)
    assert len(parts) == 1
    headers, body = parts[0]
    assert headers.get("content-type", "application/dicom").startswith("application/dicom")
    assert dataset_body(body) == dataset_body(item.data)
    assert str(pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID) == item.ts


def test_retrieve_instance_default_accept_explicit_le(server, corpus):
    item = corpus["items"]["ct"]
    resp = get(item.url(server), MULTIPART_DICOM)
    assert resp.status_code == 200
    assert dataset_body(parse_multipart(resp)[0][1]) == dataset_body(item.data)


def test_retrieve_in_another_syntax_is_transcoded_or_406(server, corpus):
    """Asking for Explicit VR LE of a JPEG-LS instance: real Explicit VR LE, or 406 - never mislabelled."""
    item, native = corpus["items"]["mr_jpegls"], corpus["items"]["mr_explicit"]
    resp = get(item.url(server), MULTIPART_DICOM + "; transfer-syntax=1.2.840.10008.1.2.1")
    if resp.status_code == 406:
        assert media_type(resp) == PROBLEM_JSON
        return
    assert resp.status_code == 200
    ds = pydicom.dcmread(io.BytesIO(parse_multipart(resp)[0][1]))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.SOPInstanceUID == item.sop
    assert ds.PixelData == native.ds.PixelData


def test_retrieve_instance_via_client(server, client, corpus):
    for name in ("ct", "mr_jpegls", "emri_rle"):
        item = corpus["items"][name]
        ds = client.retrieve_instance(item.study, item.series, item.sop)
        assert ds.SOPInstanceUID == item.sop
        assert ds.PatientName == item.ds.PatientName
        assert ds.PixelData == item.ds.PixelData
    study = client.retrieve_study(corpus["study2"])
    assert {d.SOPInstanceUID for d in study} == {i.sop for i in corpus["items"].values() if i.study == corpus["study2"]}


# --------------------------------------------------------------------------
# WADO-RS: metadata and bulk data
# --------------------------------------------------------------------------

NUMERIC_VRS = {"DS", "IS", "FL", "FD", "US", "SS", "UL", "SL", "SV", "UV"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def _assert_json_equal(expected: dict, got: dict, path=""):
    """Compare two DICOM JSON data sets element by element (values, VRs, sequences)."""
    skip = {"FFFCFFFC"}
    exp_tags = {t for t in expected if not t.endswith("0000") and not t.startswith("0002") and t not in skip}
    got_tags = {t for t in got if not t.endswith("0000") and not t.startswith("0002")}
    missing = exp_tags - got_tags
    assert not missing, f"{path} metadata lacks {sorted(missing)}"
    for tag in sorted(exp_tags):
        e, g = expected[tag], got[tag]
        where = f"{path}{tag}"
        assert g.get("vr") == e["vr"], f"{where}: VR {g.get('vr')} != {e['vr']}"
        vr = e["vr"]
        if vr in BINARY_VRS:
            if "Value" in e or "InlineBinary" in e:
                assert "InlineBinary" in g or "BulkDataURI" in g, f"{where}: binary value missing"
            continue
        ev, gv = e.get("Value", []), g.get("Value", [])
        assert len(ev) == len(gv), f"{where}: {ev!r} vs {gv!r}"
        if vr == "SQ":
            for i, (ei, gi) in enumerate(zip(ev, gv)):
                _assert_json_equal(ei, gi, f"{where}[{i}].")
        elif vr in NUMERIC_VRS:
            for a, b in zip(ev, gv):
                assert abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a))), f"{where}: {ev} vs {gv}"
        elif vr == "PN":
            for a, b in zip(ev, gv):
                assert {k: v for k, v in a.items() if v} == {k: v for k, v in b.items() if v}, f"{where}"
        else:
            norm = lambda v: v.rstrip(" \x00") if isinstance(v, str) else v  # noqa: E731
            assert [norm(x) for x in ev] == [norm(x) for x in gv], f"{where}: {ev!r} vs {gv!r}"


def test_instance_metadata_matches_dataset(server, client, corpus):
    item = corpus["items"]["ct"]
    resp = get(item.url(server) + "/metadata", DICOM_JSON)
    assert resp.status_code == 200
    assert media_type(resp) == DICOM_JSON
    body = resp.json()
    assert isinstance(body, list) and len(body) == 1
    meta = body[0]
    expected = item.ds.to_json_dict(bulk_data_threshold=10 ** 9)
    _assert_json_equal(expected, meta)
    pixel = meta[T_PIXEL_DATA]
    assert "BulkDataURI" in pixel and "InlineBinary" not in pixel
    assert pn(meta) == str(item.ds.PatientName)
    # and through dicomweb-client
    via_client = client.retrieve_instance_metadata(item.study, item.series, item.sop)
    assert first(via_client, T_SOP_UID) == item.sop
    assert "BulkDataURI" in via_client[T_PIXEL_DATA]


def test_study_and_series_metadata(server, client, corpus):
    items = corpus["items"]
    study1 = [i for i in items.values() if i.study == corpus["study1"]]
    meta = client.retrieve_study_metadata(corpus["study1"])
    assert {first(m, T_SOP_UID) for m in meta} == {i.sop for i in study1}
    for m in meta:
        assert first(m, T_STUDY_UID) == corpus["study1"]
        assert "BulkDataURI" in m[T_PIXEL_DATA]
    mr = [items[k] for k in MR_VARIANTS]
    meta = client.retrieve_series_metadata(mr[0].study, mr[0].series)
    assert {first(m, T_SOP_UID) for m in meta} == {i.sop for i in mr}
    for m in meta:
        assert pn(m) == "E2E^WADO^ONE"
        assert int(first(m, "00280010")) == 64
    resp = get(f"{server.dicomweb_url}/studies/{corpus['study2']}/metadata", DICOM_JSON)
    assert resp.status_code == 200 and media_type(resp) == DICOM_JSON
    assert len(resp.json()) == len([i for i in items.values() if i.study == corpus["study2"]])


def _bulk_uris(meta: dict):
    return {tag: el["BulkDataURI"] for tag, el in meta.items() if isinstance(el, dict) and "BulkDataURI" in el}


def test_bulkdata_uris_resolve(server, corpus):
    item = corpus["items"]["ct"]
    meta_url = item.url(server) + "/metadata"
    meta = get(meta_url, DICOM_JSON).json()[0]
    uris = _bulk_uris(meta)
    assert T_PIXEL_DATA in uris
    for tag, uri in uris.items():
        url = urljoin(meta_url, uri)
        resp = get(url, MULTIPART_OCTET)
        assert resp.status_code == 200, f"{tag} -> {url}: {resp.status_code}"
        parts = parse_multipart(resp)
        assert len(parts) == 1
        original = item.ds[int(tag, 16)]
        if tag == T_PIXEL_DATA:
            assert parts[0][1] == item.ds.PixelData
        elif isinstance(original.value, bytes):
            assert parts[0][1].rstrip(b"\x00") == original.value.rstrip(b"\x00")


def test_bulkdata_pixel_data_of_multiframe_is_whole_value(server, corpus):
    """The PixelData BulkDataURI of a 10-frame instance resolves to all ten frames, not one."""
    item = corpus["items"]["emri"]
    meta_url = item.url(server) + "/metadata"
    meta = get(meta_url, DICOM_JSON).json()[0]
    url = urljoin(meta_url, meta[T_PIXEL_DATA]["BulkDataURI"])
    resp = get(url, MULTIPART_OCTET)
    assert resp.status_code == 200
    assert b"".join(body for _, body in parse_multipart(resp)) == item.ds.PixelData


def test_bulkdata_via_client(server, client, corpus):
    item = corpus["items"]["mr_explicit"]
    meta = client.retrieve_instance_metadata(item.study, item.series, item.sop)
    uri = urljoin(item.url(server) + "/metadata", meta[T_PIXEL_DATA]["BulkDataURI"])
    # dicomweb-client sends `Host: 127.0.0.1` (no port) and Meridian builds URIs from Host, so the
    # authority in this URI is port-less; keep its path, which is what this test checks.
    uri = re.sub(r"^https?://[^/]+", server.http_url, uri)
    data = client.retrieve_bulkdata(uri, media_types=("application/octet-stream",))
    assert data == [item.ds.PixelData]


# --------------------------------------------------------------------------
# WADO-RS: frames
# --------------------------------------------------------------------------

def _frames(server, item, numbers, accept):
    url = item.url(server) + "/frames/" + ",".join(str(n) for n in numbers)
    resp = get(url, accept)
    assert resp.status_code == 200, f"{url}: {resp.status_code} {resp.text[:300]}"
    return resp, [body for _, body in parse_multipart(resp)]


def test_frames_uncompressed_single(server, client, corpus):
    item = corpus["items"]["ct"]
    frames = client.retrieve_instance_frames(item.study, item.series, item.sop, [1],
                                             media_types=("application/octet-stream",))
    assert frames == [item.ds.PixelData]


def test_frames_uncompressed_multiframe(server, client, corpus):
    item = corpus["items"]["emri"]
    size = 64 * 64 * 2
    resp, frames = _frames(server, item, [1, 2], MULTIPART_OCTET)
    assert 'application/octet-stream' in resp.headers["Content-Type"]
    assert frames == [item.ds.PixelData[0:size], item.ds.PixelData[size:2 * size]]
    frames = client.retrieve_instance_frames(item.study, item.series, item.sop, [10, 5],
                                             media_types=("application/octet-stream",))
    assert frames == [item.ds.PixelData[9 * size:10 * size], item.ds.PixelData[4 * size:5 * size]]


@pytest.mark.parametrize("name,reference,numbers", [
    ("emri_jpegls", "emri", [1, 2]),
    ("emri_rle", "emri", [3, 7]),
    ("mr_jpegls", "mr_explicit", [1]),
    ("mr_rle", "mr_explicit", [1]),
    ("mr_j2k", "mr_explicit", [1]),
    ("mr_bigendian", "mr_explicit", [1]),
])
def test_frames_decompressed_lossless_equal_native(server, client, corpus, name, reference, numbers):
    """Lossless compressed frames asked as octet-stream decode to the native pixels, byte for byte."""
    item, ref = corpus["items"][name], corpus["items"][reference]
    size = int(ref.ds.Rows) * int(ref.ds.Columns) * 2
    frames = client.retrieve_instance_frames(item.study, item.series, item.sop, numbers,
                                             media_types=("application/octet-stream",))
    assert [len(f) for f in frames] == [size] * len(numbers)
    assert frames == [ref.ds.PixelData[(n - 1) * size:n * size] for n in numbers]


def test_frames_decompressed_lossy_shape(server, corpus):
    item = corpus["items"]["us_jpeg"]
    resp, frames = _frames(server, item, [1, 2], MULTIPART_OCTET)
    assert len(frames) == 2
    assert [len(f) for f in frames] == [240 * 320 * 3] * 2
    assert frames[0] != frames[1]


def _stored_frames(item):
    return list(generate_frames(item.ds.PixelData, number_of_frames=int(item.ds.get("NumberOfFrames", 1) or 1)))


@pytest.mark.parametrize("name,numbers,media,ts", [
    ("emri_jpegls", [1, 2], "image/jls", None),
    ("emri_jpegls", [4], "image/jls", "1.2.840.10008.1.2.4.80"),
    ("mr_jpegls", [1], "image/jls", "1.2.840.10008.1.2.4.80"),
    ("mr_j2k", [1], "image/jp2", "1.2.840.10008.1.2.4.90"),
    ("us_jpeg", [5, 1], "image/jpeg", "1.2.840.10008.1.2.4.50"),
])
def test_frames_compressed_passthrough(server, client, corpus, name, numbers, media, ts):
    """Asking for the stored syntax returns the stored bitstream untouched."""
    item = corpus["items"][name]
    stored = _stored_frames(item)
    media_types = ((media, ts),) if ts else (media,)
    frames = client.retrieve_instance_frames(item.study, item.series, item.sop, numbers, media_types=media_types)
    assert len(frames) == len(numbers)
    for n, got in zip(numbers, frames):
        want = stored[n - 1]
        # a part may carry the fragment's even-length pad byte or not
        assert got == want or got.rstrip(b"\x00") == want.rstrip(b"\x00"), f"frame {n} differs"
    accept = f'multipart/related; type="{media}"' + (f"; transfer-syntax={ts}" if ts else "")
    resp, _ = _frames(server, item, numbers, accept)
    assert media in resp.headers["Content-Type"]


@pytest.mark.parametrize("frames", ["11", "0", "1,99"])
def test_frames_out_of_range(server, corpus, frames):
    item = corpus["items"]["emri"]
    resp = get(item.url(server) + f"/frames/{frames}", MULTIPART_OCTET)
    assert_problem(resp, {400, 404})


# --------------------------------------------------------------------------
# WADO-RS: errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("template,accept", [
    ("/studies/{x}", MULTIPART_DICOM),
    ("/studies/{x}/metadata", DICOM_JSON),
    ("/studies/{s}/series/{x}", MULTIPART_DICOM),
    ("/studies/{s}/series/{x}/metadata", DICOM_JSON),
    ("/studies/{s}/series/{se}/instances/{x}", MULTIPART_DICOM),
    ("/studies/{s}/series/{se}/instances/{x}/metadata", DICOM_JSON),
    ("/studies/{s}/series/{se}/instances/{x}/frames/1", MULTIPART_OCTET),
    ("/studies/{x}/series/{se}/instances/{i}", MULTIPART_DICOM),
])
def test_unknown_uid_is_404_problem(server, corpus, template, accept):
    item = corpus["items"]["ct"]
    path = template.format(x=generate_uid(), s=item.study, se=item.series, i=item.sop)
    assert_problem(get(server.dicomweb_url + path, accept), {404})


def test_series_of_another_study_is_404(server, corpus):
    a, b = corpus["items"]["ct"], corpus["items"]["emri"]
    assert a.study != b.study
    resp = get(f"{server.dicomweb_url}/studies/{a.study}/series/{b.series}", MULTIPART_DICOM)
    assert_problem(resp, {404})
    resp = get(instance_url(server, a.study, b.series, b.sop) + "/metadata", DICOM_JSON)
    assert_problem(resp, {404})


def test_server_still_alive(server):
    assert server.alive()
    assert requests.get(f"{server.http_url}/healthz", timeout=TIMEOUT).status_code == 200
