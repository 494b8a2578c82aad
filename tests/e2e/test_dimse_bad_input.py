"""Malformed and unacceptable C-STORE input, end to end.

Every bad data set must be answered with a DIMSE failure status carrying an
ErrorComment (0xA7xx out of resources / too large, 0xA9xx data set does not
match / missing or invalid UIDs, 0xC000-0xCFFF cannot understand), quickly,
with nothing stored or indexed, and the server must go on answering C-ECHO and
C-FIND. The bad bytes are sent with pynetdicom exactly as built here (its
chunked mode streams a file's data set without decoding it); the unsupported
SOP class goes through DCMTK's storescu.
"""
from __future__ import annotations

import random
import re
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import build_context

import dicomfiles as df

TESTFILES = df.TEST_FILES

# Building invalid UIDs on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")

A7 = (0xA700, 0xA7FF)  # Refused: out of resources (incl. too large)
A9 = (0xA900, 0xA9FF)  # Error: data set does not match SOP class
CX = (0xC000, 0xCFFF)  # Error: cannot understand


def _good_ds(pid: str) -> pydicom.Dataset:
    """MR_small (a real 64x64 MR) with fresh UIDs and `pid`."""
    ds = pydicom.dcmread(TESTFILES / "MR_small.dcm")
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = pid
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    return ds


def _pid() -> str:
    return f"E2E-BAD-{df.token()}"


def _total_instances(server) -> int:
    return df.count_study_instances(server)


class Baseline:
    """What the server holds before a bad input; checked again afterwards."""

    def __init__(self, server):
        self.server = server
        self.instances = _total_instances(server)
        self.files = len(df.stored_dcm_files(server.data_dir))

    def assert_unchanged(self, *, pid: str | None = None, study_uid: str | None = None):
        s = self.server
        assert s.alive(), f"meridian died:\n{s.log_text()}"
        assert df.c_echo(s) == 0x0000
        if pid:
            assert df.c_find(s, "STUDY", {"PatientID": pid, "StudyInstanceUID": ""}) == []
            assert df.c_find(s, "PATIENT", {"PatientID": pid}, model="patient") == []
        if study_uid:
            assert df.c_find(s, "STUDY", {"StudyInstanceUID": study_uid}) == []
            assert df.c_find(s, "SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": ""}) == []
        assert _total_instances(s) == self.instances, "a rejected instance was indexed"
        assert len(df.stored_dcm_files(s.data_dir)) == self.files, "a rejected instance left a file in the store"


def assert_failure(status, allowed, what: str):
    assert "Status" in status, (
        f"{what}: no C-STORE response (association aborted or timed out) instead of a failure status")
    code = status.Status
    assert any(lo <= code <= hi for lo, hi in allowed), (
        f"{what}: status 0x{code:04X}, wanted one of " + ", ".join(f"0x{lo:04X}-0x{hi:04X}" for lo, hi in allowed))
    comment = status.get("ErrorComment", "")
    assert str(comment).strip(), f"{what}: failure status 0x{code:04X} without an ErrorComment"


def _send_raw(server, tmp_path: Path, name: str, data: bytes, *, sop_uid: str, sop_class: str = MRImageStorage,
              ts: str = ExplicitVRLittleEndian, max_seconds: float = 10):
    path = df.write_raw_file(tmp_path / f"{name}.dcm", sop_class, sop_uid, ts, data)
    t0 = time.monotonic()
    status = df.c_store_raw(server, path, timeout=max_seconds + 5)
    elapsed = time.monotonic() - t0
    assert elapsed < max_seconds, f"{name}: the server took {elapsed:.1f}s to answer"
    return status


# ---------------------------------------------------------------------------
# Control: the same route accepts a good data set
# ---------------------------------------------------------------------------

def test_dimse_bad_input_control_good_raw_dataset_is_accepted(server, tmp_path):
    before = Baseline(server)
    ds = _good_ds(_pid())
    status = _send_raw(server, tmp_path, "good", df.encode_dataset(ds), sop_uid=ds.SOPInstanceUID)
    assert status.get("Status") == 0x0000, status
    assert _total_instances(server) == before.instances + 1
    assert df.c_find(server, "STUDY", {"StudyInstanceUID": ds.StudyInstanceUID}) != []


# ---------------------------------------------------------------------------
# Not DICOM at all / truncated / lying lengths
# ---------------------------------------------------------------------------

def _garbage_random(ds):
    return random.Random(20240601).randbytes(4096)


def _garbage_text(ds):
    return b"This is not a DICOM data set, it is a text file.\r\n" * 80


def _empty(ds):
    return b""


def _truncated_in_pixel_data(ds):
    return df.encode_dataset(ds)[:-1000]


def _truncated_in_element_header(ds):
    data = df.encode_dataset(ds)
    rows = data.index(struct.pack("<HH", 0x0028, 0x0010) + b"US")
    return data[:rows + 5]  # tag and half of the VR/length


def _patient_name_length_past_end(ds):
    data = df.encode_dataset(ds)
    at = data.index(struct.pack("<HH", 0x0010, 0x0010) + b"PN")
    # 2-byte length field: 0xFFF0 bytes, far more than the ~9 kB that follow.
    return data[:at + 6] + struct.pack("<H", 0xFFF0) + data[at + 8:]


def _pixel_data_length_4gb(ds):
    data = df.encode_dataset(ds)
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00")
    return data[:at + 8] + struct.pack("<I", 0xFFFFFFF0) + data[at + 12:]


def _sequence_length_past_end(ds):
    """A defined-length sequence (0008,1140) claiming 1 GB, holding one small
    item, inserted in tag order."""
    before, after = pydicom.Dataset(), pydicom.Dataset()
    for elem in ds:
        (before if elem.tag < 0x00081140 else after).add(elem)
    ref = df.explicit_le_element(0x0008, 0x1150, "UI", b"1.2.840.10008.5.1.4.1.1.4\x00")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(ref)) + ref
    seq = df.explicit_le_element(0x0008, 0x1140, "SQ", item, length=0x40000000)
    return df.encode_dataset(before) + seq + df.encode_dataset(after)


UNPARSABLE = [
    ("garbage-random-bytes", _garbage_random, [A9, CX]),
    ("garbage-text", _garbage_text, [A9, CX]),
    ("empty-data-set", _empty, [A9, CX]),
    ("truncated-in-pixel-data", _truncated_in_pixel_data, [A9, CX]),
    ("truncated-in-element-header", _truncated_in_element_header, [A9, CX]),
    ("patient-name-length-past-end", _patient_name_length_past_end, [A9, CX]),
    ("pixel-data-length-4GB", _pixel_data_length_4gb, [A7, A9, CX]),
    ("sequence-length-1GB", _sequence_length_past_end, [A7, A9, CX]),
]


@pytest.mark.parametrize("name,build,allowed", UNPARSABLE, ids=[c[0] for c in UNPARSABLE])
def test_dimse_bad_input_unparsable_data_set(server, tmp_path, name, build, allowed):
    before = Baseline(server)
    pid = _pid()
    ds = _good_ds(pid)
    status = _send_raw(server, tmp_path, name, build(ds), sop_uid=ds.SOPInstanceUID, max_seconds=5)
    assert_failure(status, allowed, name)
    before.assert_unchanged(pid=pid, study_uid=ds.StudyInstanceUID)


def test_dimse_bad_input_pydicom_truncated_file(server, tmp_path):
    """pydicom's MR_truncated.dcm: Pixel Data declares 8192 bytes, the file ends early."""
    before = Baseline(server)
    src = TESTFILES / "MR_truncated.dcm"
    meta, data = df.split_file(src)
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    status = _send_raw(server, tmp_path, "MR_truncated", data, sop_uid=meta.MediaStorageSOPInstanceUID,
                       sop_class=meta.MediaStorageSOPClassUID, max_seconds=5)
    assert_failure(status, [A9, CX], "MR_truncated.dcm")
    before.assert_unchanged(study_uid=ds.StudyInstanceUID)


def test_dimse_bad_input_un_sequence_is_rejected_quickly(server, tmp_path):
    """pydicom's UN_sequence.dcm (674 bytes: an undefined-length UN element
    holding implicit-VR items with bogus lengths) once made dicom-rs allocate
    3.6 GB. It must be refused within seconds, without a memory blow-up."""
    before = Baseline(server)
    src = TESTFILES / "UN_sequence.dcm"
    assert src.stat().st_size == 674
    t0 = time.monotonic()
    status = df.c_store_raw(server, src, timeout=10)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"UN_sequence.dcm took {elapsed:.1f}s"
    assert_failure(status, [A7, A9, CX], "UN_sequence.dcm")
    before.assert_unchanged()
    peak = _peak_rss_mib(server)
    assert peak < 1024, f"meridian's peak RSS reached {peak} MiB"


def _peak_rss_mib(server) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# ---------------------------------------------------------------------------
# Missing and invalid UIDs
# ---------------------------------------------------------------------------

MISSING = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]


@pytest.mark.parametrize("keyword", MISSING)
def test_dimse_bad_input_missing_uid(server, tmp_path, keyword):
    before = Baseline(server)
    pid = _pid()
    ds = _good_ds(pid)
    sop_uid, study_uid = ds.SOPInstanceUID, ds.StudyInstanceUID
    delattr(ds, keyword)
    status = _send_raw(server, tmp_path, f"no-{keyword}", df.encode_dataset(ds), sop_uid=sop_uid)
    assert_failure(status, [A9, CX], f"missing {keyword}")
    before.assert_unchanged(pid=pid, study_uid=study_uid)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_dimse_bad_input_empty_uid(server, tmp_path, keyword):
    before = Baseline(server)
    pid = _pid()
    ds = _good_ds(pid)
    study_uid = ds.StudyInstanceUID
    setattr(ds, keyword, "")
    status = _send_raw(server, tmp_path, f"empty-{keyword}", df.encode_dataset(ds), sop_uid=ds.SOPInstanceUID)
    assert_failure(status, [A9, CX], f"empty {keyword}")
    before.assert_unchanged(pid=pid, study_uid=study_uid if keyword != "StudyInstanceUID" else None)


INVALID_UIDS = [
    ("StudyInstanceUID", "1.2.840.abc.5", "letters"),
    ("StudyInstanceUID", "1.2." + "3" * 70, "longer-than-64"),
    ("StudyInstanceUID", "1.02.3", "leading-zero-component"),
    ("StudyInstanceUID", "1.2..3", "empty-component"),
    ("SeriesInstanceUID", "1.02.3.4", "leading-zero-component"),
    ("SeriesInstanceUID", "1.2.3.4 5", "space"),
    ("SOPInstanceUID", "1.2.3.X4", "letters"),
    ("SOPInstanceUID", "1.2.03", "leading-zero-component"),
]


@pytest.mark.parametrize("keyword,value,why", INVALID_UIDS, ids=[f"{k}-{w}" for k, _, w in INVALID_UIDS])
def test_dimse_bad_input_invalid_uid(server, tmp_path, keyword, value, why):
    before = Baseline(server)
    pid = _pid()
    ds = _good_ds(pid)
    study_uid = ds.StudyInstanceUID
    ds[keyword].value = value
    sop_uid = value if keyword == "SOPInstanceUID" else ds.SOPInstanceUID
    status = _send_raw(server, tmp_path, f"{keyword}-{why}", df.encode_dataset(ds), sop_uid=sop_uid)
    assert_failure(status, [A9, CX], f"{keyword} {value!r} ({why})")
    before.assert_unchanged(pid=pid, study_uid=study_uid if keyword != "StudyInstanceUID" else None)


# ---------------------------------------------------------------------------
# One bad instance among good ones on one association
# ---------------------------------------------------------------------------

def test_dimse_bad_input_association_survives_a_failure(server, tmp_path):
    before = Baseline(server)
    pid = _pid()
    study = generate_uid()
    good = []
    for i in range(2):
        ds = _good_ds(pid)
        ds.StudyInstanceUID = study
        good.append(df.write_raw_file(tmp_path / f"good{i}.dcm", MRImageStorage, ds.SOPInstanceUID,
                                      ExplicitVRLittleEndian, df.encode_dataset(ds)))
    bad_ds = _good_ds(pid)
    bad_ds.StudyInstanceUID = study
    bad = df.write_raw_file(tmp_path / "bad.dcm", MRImageStorage, bad_ds.SOPInstanceUID, ExplicitVRLittleEndian,
                            _truncated_in_element_header(bad_ds))
    statuses = df.c_store_raw_many(server, [good[0], bad, good[1]])
    assert statuses[0].get("Status") == 0x0000
    assert_failure(statuses[1], [A9, CX], "truncated data set between two good ones")
    assert statuses[2].get("Status") == 0x0000, "the association was unusable after a failed C-STORE"
    assert df.count_study_instances(server, StudyInstanceUID=study) == 2
    assert _total_instances(server) == before.instances + 2
    rows = df.c_find(server, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": bad_ds.SeriesInstanceUID,
                                       "SOPInstanceUID": ""})
    assert rows == []


# ---------------------------------------------------------------------------
# Unsupported SOP class
# ---------------------------------------------------------------------------

UNSUPPORTED_SOP_CLASS = "1.2.826.0.1.3680043.8.498.1.424242"  # not a storage SOP class


def test_dimse_bad_input_unsupported_sop_class_dcmsend(server, tmp_path):
    """DCMTK reports that the server accepted no presentation context for the
    file. (storescu refuses an unknown SOP class before connecting, so this is
    dcmsend with --no-uid-checks, which proposes the file's SOP class as is.)"""
    before = Baseline(server)
    pid = _pid()
    ds = pydicom.dcmread(TESTFILES / "CT_small.dcm")
    ds.SOPClassUID = UNSUPPORTED_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = UNSUPPORTED_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = pid
    path = tmp_path / "unsupported.dcm"
    ds.save_as(path, enforce_file_format=True)

    cp = df.run([df.dcmtk("dcmsend"), "-v", "--no-uid-checks", "-aec", server.ae_title,
                 "127.0.0.1", server.dicom_port, path], timeout=30, check=False)
    out = cp.stdout + cp.stderr
    assert re.search(r"NOT sent to the peer\s*:\s*1", out), out[-3000:]
    assert "No Acceptable Presentation Contexts" in out or "no acceptable pres" in out, out[-3000:]
    assert "with status SUCCESS" not in out
    before.assert_unchanged(pid=pid, study_uid=ds.StudyInstanceUID)


def test_dimse_bad_input_unsupported_sop_class_context_rejected(server):
    """The presentation context itself is rejected (abstract syntax not
    supported), or the whole association is, if it was the only one."""
    from pynetdicom import AE

    ae = AE(ae_title="E2E-SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.requested_contexts = [build_context(UNSUPPORTED_SOP_CLASS), build_context("1.2.840.10008.1.1")]
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    try:
        if assoc.is_established:
            rejected = [cx.abstract_syntax for cx in assoc.rejected_contexts]
            accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
            assert UNSUPPORTED_SOP_CLASS in rejected and UNSUPPORTED_SOP_CLASS not in accepted
            assert "1.2.840.10008.1.1" in accepted
            assert assoc.send_c_echo().Status == 0x0000
        else:
            pytest.fail("association with a supported Verification context was rejected")
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    assert server.alive()
