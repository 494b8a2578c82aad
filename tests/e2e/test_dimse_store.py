"""DIMSE storage and retrieval, end to end: C-ECHO, C-STORE in every transfer
syntax, C-GET and C-MOVE back byte-identical, duplicates, concurrency, PDU size.

Peers: DCMTK (echoscu, storescu, dcmsend, getscu, movescu, storescp) and
pynetdicom (for what DCMTK 3.6.7 cannot do: HTJ2K, raw data set bytes, exact
status codes). Data: real files from pydicom and pydicom-data, copied with new
UIDs so that each test owns its studies on the shared module server.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import HTJ2KLossless, generate_uid
from pynetdicom import build_context
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

import dicomfiles as df
from conftest import Server

TESTFILES = df.TEST_FILES


def _pid(tag: str) -> str:
    return f"E2E-{tag}-{df.token()}"


# ---------------------------------------------------------------------------
# C-ECHO
# ---------------------------------------------------------------------------

def test_dimse_echo_dcmtk_and_pynetdicom(server):
    cp = df.dcmtk_echo(server)
    assert cp.returncode == 0
    assert df.c_echo(server) == 0x0000


@pytest.mark.parametrize("calling", ["CT_SCANNER_01", "X", "RURAL_CLINIC_016"])
def test_dimse_any_calling_ae_title_is_accepted(server, calling):
    with df.association(server, [build_context("1.2.840.10008.1.1")], calling_aet=calling) as assoc:
        assert assoc.send_c_echo().Status == 0x0000


# ---------------------------------------------------------------------------
# C-STORE in every transfer syntax, C-GET back byte-identical
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case_id,dir_key,name,ts,sender,get_opt", df.TS_CASES, ids=[c[0] for c in df.TS_CASES])
def test_dimse_store_and_get_every_transfer_syntax(server, tmp_path, case_id, dir_key, name, ts, sender, get_opt):
    src = df.ts_case_path(dir_key, name)
    inst = df.make_instance(src, tmp_path / "in" / f"{case_id}.dcm", patient_id=_pid("TS"))
    assert inst.transfer_syntax == ts

    df.send(server, inst, sender)

    rows = df.c_find(server, "IMAGE", {
        "StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid,
        "SOPInstanceUID": inst.sop_uid, "SOPClassUID": "",
    })
    assert [r.SOPInstanceUID for r in rows] == [inst.sop_uid]
    assert rows[0].SOPClassUID == inst.sop_class

    keys = {"StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid, "SOPInstanceUID": inst.sop_uid}
    if get_opt:
        files = df.getscu(server, tmp_path / "get", {"QueryRetrieveLevel": "IMAGE", **keys}, ts_option=get_opt)
    else:
        final, files = df.c_get(server, "IMAGE", keys, tmp_path / "get", storage=[(inst.sop_class, ts)])
        assert final.get("Status") == 0x0000, f"C-GET final status {final}"
    got = df.index_by_sop(files)
    assert list(got) == [inst.sop_uid], f"C-GET returned {list(got)}"
    df.assert_same_instance(inst.path, got[inst.sop_uid])


def test_dimse_store_and_get_htj2k(server, tmp_path):
    """HTJ2K (DCMTK 3.6.7 does not know it): a real codestream from OpenJPH,
    sent and retrieved with pynetdicom in HTJ2K Lossless."""
    inst = df.make_htj2k_instance(tmp_path / "htj2k.dcm", _pid("HTJ2K"))
    status = df.c_store_raw(server, inst.path)
    assert status.get("Status") == 0x0000, f"C-STORE HTJ2K: {status}"

    final, files = df.c_get(server, "IMAGE", {
        "StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid, "SOPInstanceUID": inst.sop_uid,
    }, tmp_path / "get", storage=[(MRImageStorage, HTJ2KLossless)])
    assert final.get("Status") == 0x0000, f"C-GET final status {final}"
    assert len(files) == 1
    df.assert_same_instance(inst.path, files[0])
    assert df.data_set_bytes(files[0]) == df.data_set_bytes(inst.path)


RAW_CASES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1"),
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
]


@pytest.mark.parametrize("name,ts", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_dimse_stored_as_received_data_set_bytes(server, tmp_path, name, ts):
    """Sent byte for byte (pynetdicom does not re-encode), retrieved in the
    same transfer syntax: the encoded data set is identical to the byte."""
    inst = df.make_instance(TESTFILES / name, tmp_path / name, patient_id=_pid("RAW"))
    status = df.c_store_raw(server, inst.path)
    assert status.get("Status") == 0x0000, f"C-STORE: {status}"
    final, files = df.c_get(server, "IMAGE", {
        "StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid, "SOPInstanceUID": inst.sop_uid,
    }, tmp_path / "get", storage=[(inst.sop_class, ts)])
    assert final.get("Status") == 0x0000, f"C-GET final status {final}"
    assert len(files) == 1
    sent, got = df.data_set_bytes(inst.path), df.data_set_bytes(files[0])
    assert len(got) == len(sent) and got == sent, f"data set bytes differ ({len(sent)} sent, {len(got)} back)"


# ---------------------------------------------------------------------------
# A multi-series study for C-GET / C-MOVE at every level
# ---------------------------------------------------------------------------

def _mixed_study(tmp_path: Path, pid: str) -> dict:
    """One study: CT series (3 x CT_small, explicit LE), MR series in JPEG-LS
    (2 x MR_small_jpeg_ls_lossless) and an MR series in JPEG 2000 lossless (1)."""
    study = generate_uid()
    d = tmp_path / "study"
    ct = df.make_series(TESTFILES / "CT_small.dcm", d, 3, patient_id=pid, study_uid=study)
    jls = df.make_series(TESTFILES / "MR_small_jpeg_ls_lossless.dcm", d, 2, patient_id=pid, study_uid=study)
    j2k = df.make_series(TESTFILES / "MR_small_jp2klossless.dcm", d, 1, patient_id=pid, study_uid=study)
    return {"study": study, "pid": pid, "ct": ct, "jls": jls, "j2k": j2k, "all": ct + jls + j2k}


@pytest.fixture(scope="module")
def mixed_study(server, tmp_path_factory):
    s = _mixed_study(tmp_path_factory.mktemp("mixed"), _pid("MIX"))
    df.dcmsend(server, [i.path for i in s["all"]])
    assert df.count_study_instances(server, StudyInstanceUID=s["study"]) == 6
    return s


def _assert_received(expected, files):
    """Exactly `expected` arrived; compressed ones byte-identical in their
    syntax; uncompressed ones (sent by DCMTK, which offers all three
    uncompressed syntaxes) equal in content."""
    got = df.index_by_sop(files)
    assert sorted(got) == sorted(i.sop_uid for i in expected), (
        f"received {len(got)} instances, expected {len(expected)}")
    for i in expected:
        df.assert_same_instance(i.path, got[i.sop_uid], same_ts=False)


def test_dimse_get_study_level(server, mixed_study, tmp_path):
    # getscu proposes one context per SOP class (one preferred TS + the
    # uncompressed ones), so a study in one transfer syntax: 2 CT series.
    pid = _pid("GETS")
    study = generate_uid()
    ct = (df.make_series(TESTFILES / "CT_small.dcm", tmp_path / "ct", 2, patient_id=pid, study_uid=study)
          + df.make_series(TESTFILES / "CT_small.dcm", tmp_path / "ct", 3, patient_id=pid, study_uid=study))
    df.storescu(server, [i.path for i in ct])
    files = df.getscu(server, tmp_path / "get-ct", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study},
                      ts_option="+xe")
    _assert_received(ct, files)

    # pynetdicom offers the mixed study's three transfer syntaxes exactly (two
    # contexts for MR): the whole study comes back, each instance as stored.
    s = mixed_study
    final, files = df.c_get(server, "STUDY", {"StudyInstanceUID": s["study"]}, tmp_path / "all", storage=[
        (CTImageStorage, "1.2.840.10008.1.2.1"),
        (MRImageStorage, "1.2.840.10008.1.2.4.80"),
        (MRImageStorage, "1.2.840.10008.1.2.4.90"),
    ])
    assert final.get("Status") == 0x0000, f"C-GET final status {final}"
    assert final.get("NumberOfFailedSuboperations", 0) == 0
    _assert_received(s["all"], files)


def test_dimse_get_series_level(server, mixed_study, tmp_path):
    s = mixed_study
    files = df.getscu(server, tmp_path / "jls", {
        "QueryRetrieveLevel": "SERIES", "StudyInstanceUID": s["study"],
        "SeriesInstanceUID": s["jls"][0].series_uid}, ts_option="+xt")
    _assert_received(s["jls"], files)


def test_dimse_get_image_level(server, mixed_study, tmp_path):
    s = mixed_study
    target = s["ct"][1]
    files = df.getscu(server, tmp_path / "img", {
        "QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": s["study"],
        "SeriesInstanceUID": target.series_uid, "SOPInstanceUID": target.sop_uid}, ts_option="+xe")
    _assert_received([target], files)


def test_dimse_get_patient_root(server, mixed_study, tmp_path):
    s = mixed_study
    files = df.getscu(server, tmp_path / "j2k", {
        "QueryRetrieveLevel": "SERIES", "PatientID": s["pid"], "StudyInstanceUID": s["study"],
        "SeriesInstanceUID": s["j2k"][0].series_uid}, ts_option="+xv", model="-P")
    _assert_received(s["j2k"], files)


MOVE_CASES = [
    ("-S", "STUDY", "all"),
    ("-S", "SERIES", "jls"),
    ("-S", "IMAGE", "j2k"),
    ("-P", "PATIENT", "all"),
    ("-P", "STUDY", "all"),
]


@pytest.mark.parametrize("model,level,subset", MOVE_CASES, ids=[f"{m[1]}{m[0]}-{l}" for m, l, _ in MOVE_CASES])
def test_dimse_move_to_storescp(server, mixed_study, tmp_path, model, level, subset):
    s = mixed_study
    expected = s[subset]
    keys = {"QueryRetrieveLevel": level}
    if model == "-P":
        keys["PatientID"] = s["pid"]
    if level in ("STUDY", "SERIES", "IMAGE"):
        keys["StudyInstanceUID"] = s["study"]
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = expected[0].series_uid
    if level == "IMAGE":
        keys["SOPInstanceUID"] = expected[0].sop_uid
    out = tmp_path / "dest"
    with df.storescp(server.move_dest_port, out, aet=server.move_dest_aet):
        cp = df.movescu(server, server.move_dest_aet, keys, model=model)
    assert cp.returncode == 0
    _assert_received(expected, list(out.rglob("*")))


def _send_move(server, model_uid, keys: dict, dest: str) -> list[Dataset]:
    ident = Dataset()
    for k, v in keys.items():
        setattr(ident, k, v)
    statuses = []
    with df.association(server, [build_context(model_uid)]) as assoc:
        for status, _ in assoc.send_c_move(ident, dest, model_uid):
            statuses.append(status)
    return statuses


def test_dimse_move_unknown_destination_fails_a801(server, mixed_study):
    for model_uid, keys in (
        (StudyRootQueryRetrieveInformationModelMove,
         {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": mixed_study["study"]}),
        (PatientRootQueryRetrieveInformationModelMove,
         {"QueryRetrieveLevel": "PATIENT", "PatientID": mixed_study["pid"]}),
    ):
        statuses = _send_move(server, model_uid, keys, "NOSUCHAE")
        assert statuses, "no C-MOVE response"
        final = statuses[-1]
        assert final.get("Status") == 0xA801, f"C-MOVE to unknown AE: {final}"
    assert df.c_echo(server) == 0x0000


def test_dimse_move_reports_suboperation_counts(server, mixed_study, tmp_path):
    statuses = []
    with df.storescp(server.move_dest_port, tmp_path / "dest", aet=server.move_dest_aet):
        statuses = _send_move(server, StudyRootQueryRetrieveInformationModelMove,
                              {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": mixed_study["study"],
                               "SeriesInstanceUID": mixed_study["ct"][0].series_uid}, server.move_dest_aet)
    final = statuses[-1]
    assert final.get("Status") == 0x0000, f"C-MOVE final: {final}"
    assert final.get("NumberOfCompletedSuboperations") == 3
    assert final.get("NumberOfFailedSuboperations", 0) == 0
    _assert_received(mixed_study["ct"], list((tmp_path / "dest").rglob("*")))


# ---------------------------------------------------------------------------
# Duplicates
# ---------------------------------------------------------------------------

def _ok_or_warning(status: Dataset) -> bool:
    s = status.get("Status")
    return s == 0x0000 or (s is not None and 0xB000 <= s <= 0xBFFF)


def _get_one(server, inst, tmp_path, name) -> Dataset:
    final, files = df.c_get(server, "IMAGE", {
        "StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid, "SOPInstanceUID": inst.sop_uid,
    }, tmp_path / name, storage=[(inst.sop_class, inst.transfer_syntax)])
    assert final.get("Status") == 0x0000, f"C-GET: {final}"
    assert len(files) == 1, f"C-GET of one instance returned {len(files)} files"
    return pydicom.dcmread(files[0])


def test_dimse_resend_same_instance_never_duplicates(server, tmp_path):
    pid = _pid("DUP")
    study = generate_uid()
    a = df.make_instance(TESTFILES / "CT_small.dcm", tmp_path / "a.dcm", patient_id=pid, study_uid=study,
                         ImageComments="first copy")
    b = df.make_instance(TESTFILES / "CT_small.dcm", tmp_path / "b.dcm", patient_id=pid, study_uid=study)

    df.storescu(server, [a.path, b.path])
    assert df.count_study_instances(server, StudyInstanceUID=study) == 2

    # Again, over DCMTK and over pynetdicom, several times.
    df.storescu(server, [a.path, a.path, b.path])
    df.dcmsend(server, [a.path])
    for _ in range(2):
        assert _ok_or_warning(df.c_store_raw(server, a.path))

    assert df.count_study_instances(server, StudyInstanceUID=study) == 2
    rows = df.c_find(server, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": a.series_uid,
                                       "SOPInstanceUID": ""})
    assert sorted(r.SOPInstanceUID for r in rows) == [a.sop_uid]
    series = df.c_find(server, "SERIES", {"StudyInstanceUID": study, "SeriesInstanceUID": "",
                                          "NumberOfSeriesRelatedInstances": ""})
    assert sorted(int(r.NumberOfSeriesRelatedInstances) for r in series) == [1, 1]


def test_dimse_duplicate_keep_first_is_default(server, tmp_path):
    pid = _pid("KEEP")
    first = df.make_instance(TESTFILES / "MR_small.dcm", tmp_path / "first.dcm", patient_id=pid,
                             ImageComments="version one")
    second = df.make_instance(TESTFILES / "MR_small.dcm", tmp_path / "second.dcm", patient_id=pid,
                              study_uid=first.study_uid, series_uid=first.series_uid, sop_uid=first.sop_uid,
                              ImageComments="version two")
    assert _ok_or_warning(df.c_store_raw(server, first.path))
    assert _ok_or_warning(df.c_store_raw(server, second.path))
    assert df.count_study_instances(server, StudyInstanceUID=first.study_uid) == 1
    assert _get_one(server, first, tmp_path, "g").ImageComments == "version one"


def test_dimse_duplicate_policy_replace(tmp_path):
    srv = Server(extra_args=["--duplicate-policy", "replace"])
    try:
        pid = _pid("REPL")
        first = df.make_instance(TESTFILES / "MR_small.dcm", tmp_path / "first.dcm", patient_id=pid,
                                 ImageComments="version one")
        second = df.make_instance(TESTFILES / "MR_small.dcm", tmp_path / "second.dcm", patient_id=pid,
                                  study_uid=first.study_uid, series_uid=first.series_uid, sop_uid=first.sop_uid,
                                  ImageComments="version two")
        assert _ok_or_warning(df.c_store_raw(srv, first.path))
        assert _ok_or_warning(df.c_store_raw(srv, second.path))
        assert df.count_study_instances(srv, StudyInstanceUID=first.study_uid) == 1
        got = _get_one(srv, first, tmp_path, "g")
        assert got.ImageComments == "version two"
        df.assert_same_instance(second.path, tmp_path / "g" / f"{first.sop_uid}.dcm")
        assert srv.alive()
    finally:
        srv.cleanup()


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------

def test_dimse_concurrent_associations(server, tmp_path):
    """8 storescu processes at once, 6 instances each (3 CT + 3 MR in
    its own study): all succeed, all 48 are findable."""
    prefix = f"E2E-CONC-{df.token()}"
    batches = []
    for n in range(8):
        study = generate_uid()
        d = tmp_path / f"b{n}"
        pid = f"{prefix}-{n}"
        insts = (df.make_series(TESTFILES / "CT_small.dcm", d, 3, patient_id=pid, study_uid=study)
                 + df.make_series(TESTFILES / "MR_small.dcm", d, 3, patient_id=pid, study_uid=study))
        batches.append((study, insts))

    procs = []
    t0 = time.time()
    for study, insts in batches:
        args = [df.dcmtk("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port)]
        args += [str(i.path) for i in insts]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=df.tool_env()))
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        outputs.append((p.returncode, out))
    elapsed = time.time() - t0
    for rc, out in outputs:
        assert rc == 0, f"storescu failed ({rc}):\n{out[-3000:]}"
    for study, insts in batches:
        assert df.count_study_instances(server, StudyInstanceUID=study) == 6
    rows = df.c_find(server, "STUDY", {"PatientID": f"{prefix}-*", "StudyInstanceUID": "",
                                       "NumberOfStudyRelatedInstances": ""})
    assert len(rows) == 8
    assert sum(int(r.NumberOfStudyRelatedInstances) for r in rows) == 48
    assert elapsed < 60
    assert server.alive()


# ---------------------------------------------------------------------------
# PDU size
# ---------------------------------------------------------------------------

def test_dimse_max_pdu_option(tmp_path):
    srv = Server(extra_args=["--max-pdu", "16384"])
    try:
        with df.association(srv, [build_context("1.2.840.10008.1.1")]) as assoc:
            assert assoc.acceptor.maximum_length == 16384
        # A 2 MB image goes through in 16 KiB fragments and comes back intact.
        # (getscu's A-ASSOCIATE-RQ, with ~120 storage contexts, is ~17 kB: the
        # limit is on P-DATA PDUs, the association request must still be read.)
        inst = df.make_instance(df.data_store_dir() / "MR2_UNCR.dcm", tmp_path / "mr2.dcm", patient_id=_pid("PDU"))
        df.storescu(srv, [inst.path], extra=["-pdu", "131072"])
        files = df.getscu(srv, tmp_path / "get", {
            "QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": inst.study_uid,
            "SeriesInstanceUID": inst.series_uid, "SOPInstanceUID": inst.sop_uid}, ts_option="+xe")
        _assert_received([inst], files)
    finally:
        srv.cleanup()


def _streamed(server) -> float:
    import requests
    text = requests.get(f"{server.http_url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("meridian_instances_streamed_total"))


def test_dimse_data_set_streamed_to_its_file_while_it_arrives(tmp_path):
    """On an association with few others open, a C-STORE data set is written
    to its file while it arrives, then parsed and checked whole as any
    other: the file is the same byte for byte. A deflated data set (whose
    header cannot be read before it is whole) takes the ordinary path, and a
    refused one leaves no file."""
    srv = Server()
    try:
        before = _streamed(srv)
        ct = df.make_instance(TESTFILES / "CT_small.dcm", tmp_path / "ct.dcm", patient_id=_pid("STREAM"))
        assert df.c_store_raw(srv, ct.path).get("Status") == 0x0000
        assert _streamed(srv) == before + 1, "the CT was not streamed"
        dfl = df.make_instance(TESTFILES / "image_dfl.dcm", tmp_path / "dfl.dcm", patient_id=_pid("STREAM"))
        assert df.c_store_raw(srv, dfl.path).get("Status") == 0x0000
        assert _streamed(srv) == before + 1, "a deflated data set cannot be streamed"
        # Truncated in its pixel data: the header streams, the whole is refused.
        raw = ct.path.read_bytes()
        bad = tmp_path / "truncated.dcm"
        bad.write_bytes(raw[: len(raw) - 5000])
        assert df.c_store_raw(srv, bad).get("Status") != 0x0000
        files = df.stored_dcm_files(srv.data_dir)
        assert len(files) == 2, [str(f) for f in files]
        final, got = df.c_get(srv, "IMAGE", {
            "StudyInstanceUID": ct.study_uid, "SeriesInstanceUID": ct.series_uid, "SOPInstanceUID": ct.sop_uid,
        }, tmp_path / "get", storage=[(ct.sop_class, "1.2.840.10008.1.2.1")])
        assert final.get("Status") == 0x0000 and len(got) == 1
        assert df.data_set_bytes(got[0]) == df.data_set_bytes(ct.path)
    finally:
        srv.cleanup()
